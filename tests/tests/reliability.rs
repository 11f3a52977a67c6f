//! Reliability on a real broker (nisshi processes, the `weir` binary): crashes, broker restarts,
//! bad input, overload, model trouble, graceful shutdown. Nothing may be lost.
//!
//! Each test prints what it measured (`reliability:` lines; `cargo test -- --nocapture`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use weir_connectors::kafka::admin::BulkProducer;
use weir_tests::{
    committed, create_topics, free_port, http_get, proc_status_kib, read_topic, run_weir, sample_sum, score_records,
    sigterm, topology_file, wait_metrics, wait_with_timeout, watermarks, weir, NisshiBroker, ScoreRecord,
};

const TX: &str = "transactions";

/// The tests of this file each run a broker and weir processes that use both cores; run in
/// parallel they starve each other (a crash test's progress polls then lag a whole run behind,
/// and its kills land after the last score). One at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// At a kill: score records per source event `(partition, offset)`, and the group's committed
/// offsets after it.
type KillSnapshot = (HashMap<(i32, i64), usize>, BTreeMap<i32, i64>);

/// Creates the topology's topics (4 partitions; one for dead letters) and generates `days` of
/// simulated transactions onto them (about 9,700 a day).
fn generate(brokers: &str, days: u32) {
    create_topics(
        brokers,
        &[
            (TX, 4),
            ("fraud-labels", 4),
            ("scores", 4),
            ("scores-reference", 4),
            ("transactions-dlq", 1),
        ],
    );
    let out = run_weir(
        &["generate", "--brokers", brokers, "--days", &days.to_string()],
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `(partition, offset)` of every record of the transactions topic, with its payload.
fn source_records(brokers: &str) -> BTreeMap<(i32, i64), Vec<u8>> {
    read_topic(brokers, TX, Duration::from_secs(120))
        .expect("read transactions")
        .into_iter()
        .map(|r| ((r.partition, r.offset), r.payload.unwrap_or_default()))
        .collect()
}

/// Spawns `weir run topology [args]` with its log in `log`.
fn spawn_run(topology: &Path, args: &[&str], log: &Path) -> Child {
    weir()
        .arg("run")
        .arg(topology)
        .args(args)
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("log file"))
        .spawn()
        .expect("spawn weir run")
}

/// Waits until `done()` or panics after `timeout`, checking that `child` is still running.
fn wait_for(child: &mut Child, log: &Path, timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "weir exited ({status}) while waiting for {what}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `weir run TOPOLOGY --until-end` (up to 300 s) and asserts it exits 0 without a panic
/// (`what` prefixes the failure message, followed by weir's stderr).
fn run_until_end(topo: &Path, what: &str) {
    let out = run_weir(
        &["run", topo.to_str().unwrap(), "--until-end"],
        Duration::from_secs(300),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Waits (up to 300 s) until the `scores` topic holds a score for `n` distinct transactions.
fn wait_all_scored(child: &mut Child, log: &Path, brokers: &str, n: usize) {
    wait_for(child, log, Duration::from_secs(300), "every transaction scored", || {
        score_records_count(brokers, "scores") as usize >= n
            && score_records(brokers, "scores")
                .iter()
                .map(|r| r.tx_id)
                .collect::<HashSet<_>>()
                .len()
                == n
    });
}

/// Score records per source event `(partition, offset)`.
fn records_per_event(records: &[ScoreRecord]) -> HashMap<(i32, i64), usize> {
    let mut counts = HashMap::new();
    for r in records {
        *counts.entry((r.partition, r.offset)).or_default() += 1;
    }
    counts
}

/// SIGTERM, then waits for exit: returns how long it took. Asserts exit status 0.
fn stop_gracefully(child: Child, log: &Path) -> Duration {
    let t0 = Instant::now();
    sigterm(&child);
    let out = wait_with_timeout(child, Duration::from_secs(180));
    let took = t0.elapsed();
    let log_text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(out.status.success(), "SIGTERM exits 0 ({}):\n{log_text}", out.status);
    assert!(!log_text.contains("panicked"), "no panic:\n{log_text}");
    // The drain completed (every event before the cutoff acknowledged), not the drain timeout.
    assert!(
        !log_text.contains("drain timeout"),
        "drained, not timed out:\n{log_text}"
    );
    took
}

fn score_records_count(brokers: &str, topic: &str) -> i64 {
    watermarks(brokers, topic, Duration::from_secs(10))
        .map(|w| w.iter().map(|(_, lo, hi)| hi - lo).sum())
        .unwrap_or(0)
}

/// The value of `field=` in the last log line containing `message`.
fn log_field(log: &Path, message: &str, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.contains(message))?;
    let start = line.find(&format!("{field}="))? + field.len() + 1;
    line[start..].split_whitespace().next()?.parse().ok()
}

/// (1) pipeline crash, (2) feature state after a crash, (7) graceful shutdown.
///
/// 200,000+ transactions on nisshi. A reference run scores them without interruption; then
/// another group scores them while being SIGKILLed four times at random points (three while it
/// scores, one at a random time after a start, which may fall in the replay), restarted each time,
/// and finally stopped with SIGTERM. Checks: every transaction scored at least once; every
/// duplicate is an event scored but not committed before a kill, and their number is exactly the
/// events in flight at the kills; commits never move back; every score (duplicates included)
/// equals the uninterrupted run's bit for bit (the feature state was rebuilt by replaying the
/// retained history); SIGTERM exits 0 promptly with every offset committed.
#[test]
fn sigkilled_runs_restart_without_loss_and_score_like_an_uninterrupted_run() {
    let _serial = serial();
    let days = std::env::var("WEIR_CRASH_DAYS")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(21);
    crash_runs(days, 4, false);
}

/// As above, with feature-state snapshots every 1 s (issue 14): after 60 simulated days of
/// history, each restart loads the latest snapshot and replays only the events after its cut
/// (asserted from its recovery log: the events it replays are at most those of the source at or
/// after the cut's margin), and every score still equals the uninterrupted run's.
#[test]
fn sigkilled_runs_restart_from_snapshots_replaying_only_what_came_after_them() {
    let _serial = serial();
    crash_runs(60, 2, true);
}

/// The event time (`tx_time_ms`) of a source payload, if it has one.
fn payload_time(payload: &[u8]) -> Option<i64> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()?
        .get("tx_time_ms")?
        .as_i64()
}

/// The files in a snapshot directory: (cut, `<stage>-<worker>-of-<workers>.snap`).
fn snapshot_files(dir: &Path) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for cut_dir in std::fs::read_dir(dir).into_iter().flatten().filter_map(|e| e.ok()) {
        let Some(cut) = cut_dir
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("cut-")?.parse().ok())
        else {
            continue;
        };
        for f in std::fs::read_dir(cut_dir.path())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            if let Some(name) = f.file_name().to_str().filter(|n| n.ends_with(".snap")) {
                out.push((cut, name.to_string()));
            }
        }
    }
    out
}

fn crash_runs(days: u32, n_kills: usize, snapshots: bool) {
    let broker = NisshiBroker::start();
    let b = broker.brokers.clone();
    generate(&b, days);
    let sources = source_records(&b);
    let ids: HashSet<u64> = score_ids(&sources);
    assert!(days < 21 || ids.len() >= 200_000, "{} transactions", ids.len());
    let dir = tempfile::tempdir().unwrap();

    // Reference: one uninterrupted run (bounded: to the end of the topic).
    let ref_dir = dir.path().join("reference");
    std::fs::create_dir_all(&ref_dir).unwrap();
    let reference_topo = topology_file(&ref_dir, &b, "reference", "", "");
    let text = std::fs::read_to_string(&reference_topo).unwrap();
    assert!(text.contains("topic = \"scores\""));
    std::fs::write(
        &reference_topo,
        text.replace("topic = \"scores\"", "topic = \"scores-reference\""),
    )
    .unwrap();
    let t0 = Instant::now();
    let out = run_weir(
        &["run", reference_topo.to_str().unwrap(), "--until-end"],
        Duration::from_secs(600),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference_secs = t0.elapsed().as_secs_f64();
    let reference: HashMap<u64, f64> = score_records(&b, "scores-reference")
        .into_iter()
        .map(|r| (r.tx_id, r.score))
        .collect();
    assert_eq!(
        reference.len(),
        ids.len(),
        "the reference scored every transaction once"
    );

    // The crashing run.
    let topo = topology_file(dir.path(), &b, "crash", "start = \"committed\"", "");
    let snap_dir = dir.path().join("snapshots");
    if snapshots {
        let mut text = std::fs::read_to_string(&topo).unwrap();
        assert!(!text.contains("[snapshot]"));
        text.push_str(&format!(
            "\n[snapshot]\ndir = {:?}\ninterval = \"1s\"\n",
            snap_dir.to_str().unwrap()
        ));
        std::fs::write(&topo, text).unwrap();
    }
    let mut replays_after_snapshot = Vec::new();
    // Per kill with snapshots: the newest cut a restart could use when it came.
    let mut usable_cuts: Vec<u64> = Vec::new();
    let mut usable_least: Vec<u64> = Vec::new();
    let seed: u64 = std::env::var("WEIR_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("reliability: kill points from seed {seed} (WEIR_TEST_SEED={seed} repeats them)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // Per kill: (score records per source event at the kill, committed offsets after it).
    let mut kills: Vec<KillSnapshot> = Vec::new();
    let mut recoveries = Vec::new();
    let mut mid_stream_kills = 0;
    for k in 0..n_kills {
        let log = dir.path().join(format!("run-{k}.log"));
        let before = score_records_count(&b, "scores");
        // The least cut the restart can load (None: the first run, which starts from none).
        let started_from = usable_least.last().copied();
        let mut child = spawn_run(&topo, &[], &log);
        // Nothing left to score (an earlier kill came after the last score): a kill anywhere.
        let delay = if k < 3 && (before as usize) < ids.len() {
            // While it scores: at a random point of its progress (after 2% to 30% of what is
            // left), not at a random time, so that a fast run is still killed mid-stream.
            let mut from = before;
            if snapshots {
                // And after it wrote a snapshot of its own, newer than what it started from and
                // usable by a restart: its cut a margin before the first event not committed.
                wait_for(
                    &mut child,
                    &log,
                    Duration::from_secs(120),
                    "a new usable snapshot",
                    || {
                        let resume = committed(&b, "crash", TX)
                            .iter()
                            .filter_map(|(p, c)| payload_time(sources.get(&(*p, *c))?))
                            .min();
                        let Some(resume) = resume else { return false };
                        // Each stage's worker's newest file a restart could use: all of them newer
                        // than what this run started from.
                        let files = snapshot_files(&snap_dir);
                        let usable = files
                            .iter()
                            .filter(|(c, _)| (*c as i64) <= resume - SNAPSHOT_MARGIN_MS)
                            .fold(BTreeMap::<&str, u64>::new(), |mut m, (c, name)| {
                                let e = m.entry(name.as_str()).or_default();
                                *e = (*e).max(*c);
                                m
                            });
                        let least = usable.values().min().copied();
                        let ready = usable.len() == 4
                            && least
                                > Some(
                                    started_from.unwrap_or_else(|| files.iter().map(|(c, _)| *c).min().unwrap_or(0)),
                                );
                        if ready {
                            usable_cuts.push(usable.values().max().copied().unwrap_or(0));
                            usable_least.push(least.unwrap_or(0));
                        }
                        ready
                    },
                );
                from = score_records_count(&b, "scores").max(before);
            }
            let left = (ids.len() as i64 - from).max(1000);
            let target = from + (left as f64 * rng.random_range(0.02..0.30)) as i64;
            wait_for(&mut child, &log, Duration::from_secs(120), "new scores", || {
                score_records_count(&b, "scores") > target
            });
            eprintln!("reliability: kill {k} after score record {target} of {}", ids.len());
            Duration::ZERO
        } else {
            // Anywhere after start, the replay included.
            Duration::from_millis(rng.random_range(200..2500))
        };
        std::thread::sleep(delay);
        assert!(child.try_wait().unwrap().is_none(), "run {k} exited before its kill");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let commits = committed(&b, "crash", TX);
        let counts = records_per_event(&score_records(&b, "scores"));
        // A kill meant to land mid-stream can come after the last score when the run outpaces
        // the test's polling (scores are acknowledged in bursts as the frontier passes): it is
        // still mid-stream while offsets are uncommitted (the restart must re-score those), and
        // at least one kill must be.
        let committed_all = commits.values().sum::<i64>() >= sources.len() as i64;
        if k < 3 && (counts.len() < ids.len() || !committed_all) {
            mid_stream_kills += 1;
        }
        for l in std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" WARN ") && !l.contains("execution provider"))
            .take(3)
        {
            eprintln!("reliability: run {k}: {}", &l[..l.len().min(300)]);
        }
        if let Some(s) = log_field(&log, "feature state rebuilt", "seconds") {
            recoveries.push(s);
        }
        if k > 0 && snapshots {
            replays_after_snapshot.push(check_snapshot_replay(&log, &sources, usable_cuts[k - 1]));
        }
        eprintln!(
            "reliability: kill {k} after {delay:?}: {} of {} events scored, {} committed",
            counts.len(),
            ids.len(),
            commits.values().sum::<i64>()
        );
        if let Some((_, prev)) = kills.last() {
            for (p, o) in prev {
                assert!(
                    commits.get(p).is_some_and(|c| c >= o),
                    "partition {p}: commit moved back from {o}"
                );
            }
        }
        kills.push((counts, commits));
    }

    assert!(
        days < 21 || mid_stream_kills > 0,
        "no kill happened mid-stream (all of {} transactions scored and committed at each kill)",
        ids.len()
    );

    // The last restart runs until every transaction is scored and its state is rebuilt (which
    // it is even when nothing is left to score), then SIGTERM.
    let log = dir.path().join("run-final.log");
    let mut child = spawn_run(&topo, &[], &log);
    wait_all_scored(&mut child, &log, &b, ids.len());
    wait_for(&mut child, &log, Duration::from_secs(120), "the state rebuilt", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("feature state rebuilt"))
    });
    let shutdown = stop_gracefully(child, &log);
    let final_recovery = log_field(&log, "feature state rebuilt", "seconds").expect("the last run rebuilt its state");
    let replayed = log_field(&log, "feature state rebuilt", "replayed_events").unwrap_or(0.0);
    recoveries.push(final_recovery);
    if snapshots {
        replays_after_snapshot.push(check_snapshot_replay(&log, &sources, usable_cuts[n_kills - 1]));
    }

    // At least once.
    let records = score_records(&b, "scores");
    let scored: HashSet<u64> = records.iter().map(|r| r.tx_id).collect();
    assert_eq!(scored.len(), ids.len(), "every transaction scored");
    assert!(scored.is_subset(&ids));
    // Duplicates: exactly the events scored but not committed at each kill.
    let counts = records_per_event(&records);
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let mut in_flight_at_kills = 0;
    let mut prev: HashMap<(i32, i64), usize> = HashMap::new();
    for (at_kill, commits) in &kills {
        for (key, n) in at_kill {
            let new = n - prev.get(key).copied().unwrap_or(0);
            if commits.get(&key.0).is_none_or(|c| key.1 >= *c) {
                in_flight_at_kills += new;
            }
        }
        prev = at_kill.clone();
    }
    for (key, n) in &counts {
        if *n > 1 {
            assert!(
                kills
                    .iter()
                    .any(|(at, c)| at.contains_key(key) && c.get(&key.0).is_none_or(|o| key.1 >= *o)),
                "event {key:?} scored {n} times but was never in flight at a kill"
            );
        }
    }
    assert_eq!(
        duplicates, in_flight_at_kills,
        "duplicates are exactly the events scored but uncommitted at the kills"
    );
    // Feature state: every score equals the uninterrupted run's, bit for bit.
    let differ: Vec<_> = records.iter().filter(|r| reference[&r.tx_id] != r.score).collect();
    if !differ.is_empty() {
        // Which run wrote them: the first kill whose snapshot holds as many records of the event.
        let mut seen: HashMap<(i32, i64), usize> = HashMap::new();
        let mut by_run = BTreeMap::new();
        for r in &records {
            let n = seen.entry((r.partition, r.offset)).or_default();
            *n += 1;
            let run = kills
                .iter()
                .position(|(at, _)| at.get(&(r.partition, r.offset)).copied().unwrap_or(0) >= *n);
            if reference[&r.tx_id] != r.score {
                *by_run
                    .entry(run.map_or("final".to_string(), |k| k.to_string()))
                    .or_insert(0) += 1;
            }
        }
        panic!(
            "{} scores differ from the uninterrupted run, by run {by_run:?}, e.g. {:?}",
            differ.len(),
            &differ[..differ.len().min(5)]
        );
    }
    // Graceful shutdown committed everything.
    let ends: BTreeMap<i32, i64> = watermarks(&b, TX, Duration::from_secs(10))
        .unwrap()
        .into_iter()
        .map(|(p, _, hi)| (p, hi))
        .collect();
    assert_eq!(committed(&b, "crash", TX), ends, "SIGTERM committed every offset");
    eprintln!(
        "reliability: {} transactions over {days} days, {n_kills} SIGKILLs, {duplicates} duplicates (= events in flight at the kills), \
         {} scores all equal to the uninterrupted run's ({reference_secs:.1} s); feature state rebuilt in {recoveries:?} s \
         (last: {replayed} events replayed); snapshots: {}; SIGTERM exit 0 in {:.2} s",
        ids.len(),
        records.len(),
        if snapshots {
            format!("(replayed, source events at or after the cut's margin, all before it) per restart {replays_after_snapshot:?}")
        } else {
            "none".into()
        },
        shutdown.as_secs_f64()
    );
}

/// How far before the first event not committed a restart's snapshot cut must be, ms
/// (`source.allowed_lateness` 0 + `decode.allowed_future` 1 min).
const SNAPSHOT_MARGIN_MS: i64 = 60_000;

/// A restart with snapshots: the newest file it loaded is at least as new as `usable` (the
/// newest usable cut when the run before was killed), and it replays at most the source's
/// events at or after the margin of the least cut it loaded, fewer than all. Returns (replayed, events after the margin, all
/// events).
fn check_snapshot_replay(log: &Path, sources: &BTreeMap<(i32, i64), Vec<u8>>, usable: u64) -> (u64, usize, usize) {
    let msg = "feature state loaded from a snapshot";
    let cut = log_field(log, msg, "snapshot_cut_ms").unwrap_or_else(|| {
        panic!(
            "the restart loaded no snapshot: {}",
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("restart") || l.contains("snapshot"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    }) as i64;
    let newest = log_field(log, msg, "snapshot_max_cut_ms").expect("snapshot_max_cut_ms") as u64;
    assert!(
        newest >= usable,
        "the restart's newest file has cut {newest}, older than the usable {usable}"
    );
    let replayed = log_field(log, msg, "replay_events").expect("replay_events") as u64;
    let after = sources
        .values()
        .filter(|p| payload_time(p).is_some_and(|t| t >= cut - SNAPSHOT_MARGIN_MS))
        .count();
    assert!(
        replayed as usize <= after && after < sources.len(),
        "replayed {replayed} events, more than the {after} of {} at or after the snapshot's cut {cut} (- {SNAPSHOT_MARGIN_MS} ms)",
        sources.len()
    );
    (replayed, after, sources.len())
}

fn score_ids(sources: &BTreeMap<(i32, i64), Vec<u8>>) -> HashSet<u64> {
    sources
        .values()
        .filter_map(|p| serde_json::from_slice::<serde_json::Value>(p).ok()?["tx_id"].as_u64())
        .collect()
}

/// (3) broker restart: nisshi with sqlite storage is killed and restarted mid-stream.
#[test]
fn a_broker_restart_mid_stream_loses_nothing_and_readiness_follows_the_broker() {
    let _serial = serial();
    let mut broker = NisshiBroker::start_sqlite();
    let b = broker.brokers.clone();
    generate(&b, 4);
    let ids = score_ids(&source_records(&b));
    let dir = tempfile::tempdir().unwrap();
    let topo = topology_file(
        dir.path(),
        &b,
        "broker-restart",
        "",
        "max_batch_rows = 64\nmax_wait = \"5ms\"",
    );
    let port = free_port();
    let log = dir.path().join("run.log");
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_run(&topo, &["--metrics-listen", &listen], &log);
    wait_for(&mut child, &log, Duration::from_secs(60), "ready", || {
        http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    wait_for(&mut child, &log, Duration::from_secs(120), "2,000 scores", || {
        score_records_count(&b, "scores") >= 2_000
    });
    broker.kill();
    let killed = Instant::now();
    wait_for(&mut child, &log, Duration::from_secs(60), "/readyz 503", || {
        http_get(port, "/readyz").is_some_and(|(s, _)| s == 503)
    });
    let noticed = killed.elapsed();
    let body = wait_metrics(port, Duration::from_secs(60), "weir_broker_reachable 0", |m| {
        m.lines()
            .any(|l| l.starts_with("weir_broker_reachable{") && l.ends_with(" 0"))
    });
    let scored_at_kill = sample_sum(&body, "weir_sink_scores_total");
    assert!(
        child.try_wait().unwrap().is_none(),
        "weir survives the broker's absence"
    );
    broker.restart();
    let restarted = Instant::now();
    wait_for(&mut child, &log, Duration::from_secs(60), "ready again", || {
        http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    let ready_again = restarted.elapsed();
    wait_all_scored(&mut child, &log, &b, ids.len());
    let shutdown = stop_gracefully(child, &log);
    let records = score_records(&b, "scores");
    let scored: HashSet<u64> = records.iter().map(|r| r.tx_id).collect();
    assert_eq!(scored, ids, "every transaction scored, nothing else");
    eprintln!(
        "reliability: broker killed after {scored_at_kill} of {} scores, /readyz 503 after {noticed:?}, \
         ready {ready_again:?} after its restart; {} score records ({} duplicates); SIGTERM exit 0 in {shutdown:?}",
        ids.len(),
        records.len(),
        records.len() - ids.len()
    );
}

/// One malformed event of the corpus: its payload and the dead-letter reason it must get.
struct Bad {
    payload: Vec<u8>,
    reason: &'static str,
}

fn corpus(ts: i64) -> Vec<Bad> {
    let tx = |fields: &str| format!("{{\"tx_id\":{fields}}}").into_bytes();
    let bad = |payload: Vec<u8>, reason| Bad { payload, reason };
    let good_rest = format!("\"tx_time_ms\":{ts},\"customer_id\":1,\"terminal_id\":2,\"amount\":10.0");
    let mut c = vec![
        bad(
            format!("{{\"tx_id\":910000001,\"tx_time_ms\":{ts},\"custo").into_bytes(),
            "json",
        ),
        bad(b"{".to_vec(), "json"),
        bad(Vec::new(), "json"),
        bad(b"[1,2,3]".to_vec(), "schema"),
        bad(b"null".to_vec(), "schema"),
        bad(tx(&format!("\"abc\",{good_rest}")), "schema"),
        bad(
            tx(&format!(
                "910000002,\"tx_time_ms\":{ts},\"customer_id\":1,\"terminal_id\":2,\"amount\":\"12.5\""
            )),
            "schema",
        ),
        bad(
            tx(&format!(
                "910000003,\"tx_time_ms\":{ts},\"customer_id\":1,\"terminal_id\":2"
            )),
            "schema",
        ),
        bad(tx(&format!("910000004,{good_rest},\"coupon\":\"SAVE10\"")), "schema"),
        bad(
            tx(&format!(
                "910000005,\"tx_time_ms\":{ts},\"customer_id\":\"{}\",\"terminal_id\":2,\"amount\":1.0",
                "x".repeat(30_000)
            )),
            "schema",
        ),
        bad(
            tx(&format!("910000006,{good_rest},\"note\":\"{}\"", "y".repeat(200_000))),
            "too_large",
        ),
        bad(
            tx(&format!(
                "910000007,\"tx_time_ms\":{ts},\"customer_id\":1,\"terminal_id\":2,\"amount\":NaN"
            )),
            "json",
        ),
        bad(
            tx(&format!(
                "910000008,\"tx_time_ms\":{ts},\"customer_id\":1,\"terminal_id\":2,\"amount\":1e999"
            )),
            "json",
        ),
        bad(
            tx(&format!(
                "910000009,\"tx_time_ms\":{ts},\"customer_id\":1,\"terminal_id\":2,\"amount\":-5.0"
            )),
            "invalid_value",
        ),
        bad(
            tx("910000010,\"tx_time_ms\":4102444800000,\"customer_id\":1,\"terminal_id\":2,\"amount\":3.0"),
            "invalid_time",
        ),
        bad(
            tx("910000011,\"tx_time_ms\":-86400000,\"customer_id\":1,\"terminal_id\":2,\"amount\":3.0"),
            "invalid_time",
        ),
    ];
    // Invalid UTF-8 in a key (in an unknown field's value the unknown field is seen first: schema).
    let mut utf8 = b"{\"".to_vec();
    utf8.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    utf8.extend_from_slice(format!("\":1,\"tx_id\":910000012,{good_rest}}}").as_bytes());
    c.push(bad(utf8, "json"));
    c.push(bad(vec![0x00, 0x9f, 0x92, 0x96, 0xff], "json"));
    c
}

/// (4) bad input: a corpus of malformed events among good ones.
#[test]
fn every_malformed_event_lands_in_the_dead_letter_topic_with_its_reason_and_offset() {
    let _serial = serial();
    let broker = NisshiBroker::start();
    let b = broker.brokers.clone();
    generate(&b, 3);
    let last_ts = read_topic(&b, TX, Duration::from_secs(60))
        .unwrap()
        .iter()
        .filter_map(|r| r.timestamp_ms)
        .max()
        .unwrap();
    let corpus = corpus(last_ts);
    // Among good ones: each malformed event follows a copy of a good one (same partition by key).
    let good = read_topic(&b, TX, Duration::from_secs(60)).unwrap();
    let producer = BulkProducer::new(&b, &BTreeMap::new()).unwrap();
    for (i, bad) in corpus.iter().enumerate() {
        let key = format!("bad-{i}");
        let mut g: serde_json::Value = serde_json::from_slice(good[i].payload.as_deref().unwrap()).unwrap();
        g["tx_id"] = serde_json::json!(920_000_000 + i as u64);
        g["tx_time_ms"] = serde_json::json!(last_ts);
        producer
            .send(
                TX,
                Some(key.as_bytes()),
                &serde_json::to_vec(&g).unwrap(),
                Some(last_ts),
            )
            .unwrap();
        producer
            .send(TX, Some(key.as_bytes()), &bad.payload, Some(last_ts))
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let sources = source_records(&b);
    let bad_payloads: HashMap<&[u8], &Bad> = corpus.iter().map(|c| (c.payload.as_slice(), c)).collect();
    assert_eq!(bad_payloads.len(), corpus.len(), "distinct payloads");

    let dir = tempfile::tempdir().unwrap();
    let topo = topology_file(dir.path(), &b, "bad-input", "", "");
    run_until_end(&topo, "");

    let letters = read_topic(&b, "transactions-dlq", Duration::from_secs(60)).unwrap();
    assert_eq!(
        letters.len(),
        corpus.len(),
        "one dead letter per malformed event, no more"
    );
    let mut seen = HashSet::new();
    for l in &letters {
        let header = |k: &str| String::from_utf8(l.header(k).unwrap_or_default().to_vec()).unwrap();
        let payload = l.payload.clone().unwrap_or_default();
        let bad = bad_payloads
            .get(payload.as_slice())
            .unwrap_or_else(|| panic!("unexpected dead letter {}", String::from_utf8_lossy(&payload)));
        assert_eq!(
            header("weir.dlq.reason"),
            bad.reason,
            "reason of {}",
            String::from_utf8_lossy(&payload[..payload.len().min(80)])
        );
        assert!(!header("weir.dlq.detail").is_empty());
        assert_eq!(header("weir.source.topic"), TX);
        let at = (
            header("weir.source.partition").parse().unwrap(),
            header("weir.source.offset").parse().unwrap(),
        );
        assert_eq!(
            sources.get(&at),
            Some(&payload),
            "the source offset {at:?} holds the malformed event"
        );
        seen.insert(at);
    }
    assert_eq!(seen.len(), corpus.len());
    // Every good event scored, once.
    let scored = records_per_event(&score_records(&b, "scores"));
    let good_events: Vec<_> = sources.keys().filter(|k| !seen.contains(k)).collect();
    let missing = good_events.iter().filter(|k| !scored.contains_key(k)).count();
    assert_eq!(missing, 0, "good events without a score");
    assert_eq!(scored.len(), good_events.len());
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &corpus {
        *reasons.entry(c.reason).or_default() += 1;
    }
    eprintln!(
        "reliability: {} malformed events among {} good ones: all dead-lettered with reason and source offset ({reasons:?}), every good one scored",
        corpus.len(),
        good_events.len()
    );
}

fn model_topology(dir: &Path, brokers: &str, group: &str, model: &Path, features: Option<&str>) -> PathBuf {
    let topo = topology_file(dir, brokers, group, "", "max_batch_rows = 64\nmax_wait = \"5ms\"");
    let mut text = std::fs::read_to_string(&topo).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("path = ") && l.contains("model.onnx"))
        .unwrap()
        .to_string();
    text = text.replace(&line, &format!("path = \"{}\"", model.display()));
    if let Some(f) = features {
        let start = text.find("features = [").unwrap();
        let end = start + text[start..].find(']').unwrap() + 1;
        text.replace_range(start..end, f);
    }
    std::fs::write(&topo, text).unwrap();
    topo
}

/// (6) model trouble: corrupt and incompatible models fail start-up with a clear message; a batch
/// that fails inference at run time goes to the dead-letter topic with the error.
#[test]
fn model_trouble_fails_start_up_clearly_or_dead_letters_the_failed_batch() {
    let _serial = serial();
    let broker = NisshiBroker::start();
    let b = broker.brokers.clone();
    generate(&b, 2);
    let dir = tempfile::tempdir().unwrap();

    // Corrupt: bytes that are not an ONNX model.
    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"\x08\x07this is not a protobuf model \xff\xff\xff").unwrap();
    let topo = model_topology(dir.path(), &b, "corrupt", &corrupt, None);
    let out = run_weir(&["run", topo.to_str().unwrap()], Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("cannot load model `{}`", corrupt.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Incompatible: a valid model whose inputs are not the topology's features.
    let fixture = weir_tests::repo().join("tests/fixtures/out_of_range.onnx");
    let topo = model_topology(
        dir.path(),
        &b,
        "incompatible",
        &fixture,
        Some("features = [\"amount\", \"tx_during_weekend\"]"),
    );
    let out = run_weir(&["run", topo.to_str().unwrap()], Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&fixture.display().to_string()) && stderr.contains("model.features"),
        "{stderr}"
    );
    assert_eq!(score_records_count(&b, "scores"), 0, "nothing was scored");

    // Runtime failure: the fixture fails on a batch holding an amount of 2,000 or more.
    let last_ts = read_topic(&b, TX, Duration::from_secs(60))
        .unwrap()
        .iter()
        .filter_map(|r| r.timestamp_ms)
        .max()
        .unwrap();
    let producer = BulkProducer::new(&b, &BTreeMap::new()).unwrap();
    let poison: Vec<u64> = (0..3).map(|i| 930_000_000 + i).collect();
    for id in &poison {
        let tx = serde_json::json!({"tx_id": id, "tx_time_ms": last_ts, "customer_id": 1, "terminal_id": 2, "amount": 5000.0});
        producer
            .send(
                TX,
                Some(id.to_string().as_bytes()),
                &serde_json::to_vec(&tx).unwrap(),
                Some(last_ts),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let ids = score_ids(&source_records(&b));
    let topo = model_topology(dir.path(), &b, "runtime", &fixture, None);
    run_until_end(&topo, "the pipeline survives a failed batch: ");
    let letters = read_topic(&b, "transactions-dlq", Duration::from_secs(60)).unwrap();
    let mut failed = HashSet::new();
    for l in &letters {
        assert_eq!(l.header("weir.dlq.reason"), Some(&b"inference"[..]));
        let detail = String::from_utf8_lossy(l.header("weir.dlq.detail").unwrap()).to_string();
        assert!(
            detail.contains("out of bounds") || detail.contains("out of range") || detail.contains("idx"),
            "{detail}"
        );
        let v: serde_json::Value = serde_json::from_slice(l.payload.as_deref().unwrap()).unwrap();
        assert_eq!(
            v["features"].as_array().map(Vec::len),
            Some(15),
            "the letter keeps the features"
        );
        failed.insert(v["id"].as_u64().unwrap());
    }
    for id in &poison {
        assert!(failed.contains(id), "the failing transaction {id} is dead-lettered");
    }
    assert!(
        failed.len() <= poison.len() * 64,
        "only the failed batches ({} letters)",
        failed.len()
    );
    let scored: HashSet<u64> = score_records(&b, "scores").into_iter().map(|r| r.tx_id).collect();
    assert!(scored.is_disjoint(&failed));
    let union: HashSet<u64> = scored.union(&failed).copied().collect();
    assert_eq!(union, ids, "every transaction is scored or dead-lettered");
    eprintln!(
        "reliability: corrupt and incompatible models refused at start-up; {} poisoned transactions failed {} rows of batches, all dead-lettered with the error; {} scored",
        poison.len(),
        failed.len(),
        scored.len()
    );
}

/// (5) overload: transactions arrive much faster than the pipeline scores them.
#[test]
fn overload_grows_lag_not_memory_and_drops_nothing() {
    let _serial = serial();
    let broker = NisshiBroker::start();
    let b = broker.brokers.clone();
    create_topics(
        &b,
        &[(TX, 4), ("fraud-labels", 4), ("scores", 4), ("transactions-dlq", 1)],
    );
    let dir = tempfile::tempdir().unwrap();
    let limit_mib = 512u64;
    let topo = topology_file(
        dir.path(),
        &b,
        "overload",
        "max_in_flight_rows = 20000",
        "max_batch_rows = 256\nmax_wait = \"5ms\"\nmax_inflight_batches = 2",
    );
    let text = std::fs::read_to_string(&topo).unwrap();
    assert!(text.contains("max_memory = \"1GiB\""));
    std::fs::write(
        &topo,
        text.replace("max_memory = \"1GiB\"", &format!("max_memory = \"{limit_mib}MiB\"")),
    )
    .unwrap();
    let port = free_port();
    let log = dir.path().join("run.log");
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_run(&topo, &["--metrics-listen", &listen], &log);
    let pid = child.id();
    wait_for(&mut child, &log, Duration::from_secs(60), "ready", || {
        http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    // 21 days (200k+ transactions) produced as fast as the broker takes them.
    let t0 = Instant::now();
    let generator = weir()
        .args(["generate", "--brokers", &b, "--days", "21"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut generator = Some(generator);
    let mut produced_secs = 0.0;
    let mut max_lag = 0.0f64;
    let mut max_rss_kib = 0;
    let mut lag_after_production = None;
    loop {
        if let Some(g) = generator.as_mut() {
            if g.try_wait().unwrap().is_some() {
                let out = wait_with_timeout(generator.take().unwrap(), Duration::from_secs(5));
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                produced_secs = t0.elapsed().as_secs_f64();
            }
        }
        let Some((_, body)) = http_get(port, "/metrics") else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        // Lag of the transactions topic (the labels side input is read whole at start).
        let lag: f64 = body
            .lines()
            .filter(|l| l.starts_with("weir_consumer_lag_messages{") && l.contains("topic=\"transactions\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        max_lag = max_lag.max(lag);
        if generator.is_none() && lag_after_production.is_none() {
            lag_after_production = Some(lag);
        }
        max_rss_kib = max_rss_kib.max(proc_status_kib(pid, "VmRSS").unwrap_or(0));
        assert!(child.try_wait().unwrap().is_none(), "weir exited under overload");
        let scored = sample_sum(&body, "weir_sink_scores_total");
        if generator.is_none() && lag == 0.0 && scored > 0.0 {
            let ids = score_ids(&source_records(&b));
            if scored as usize >= ids.len() {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(400), "lag did not drain:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let drained_secs = t0.elapsed().as_secs_f64();
    let peak_kib = proc_status_kib(pid, "VmHWM").unwrap_or(max_rss_kib).max(max_rss_kib);
    let shutdown = stop_gracefully(child, &log);
    let ids = score_ids(&source_records(&b));
    let scored: HashSet<u64> = score_records(&b, "scores").into_iter().map(|r| r.tx_id).collect();
    assert_eq!(scored, ids, "nothing dropped");
    assert!(
        max_lag > 10_000.0,
        "the producer outran the pipeline (max lag {max_lag})"
    );
    assert!(
        peak_kib < limit_mib * 1024,
        "peak resident memory {peak_kib} KiB over the {limit_mib} MiB bound"
    );
    eprintln!(
        "reliability: overload: {} transactions produced in {produced_secs:.1} s, scored by {drained_secs:.1} s; \
         max lag {max_lag}, lag when production ended {lag_after_production:?}, drained to 0; \
         peak RSS {} MiB under max_memory {limit_mib} MiB; SIGTERM exit 0 in {shutdown:?}",
        ids.len(),
        peak_kib / 1024
    );
}
