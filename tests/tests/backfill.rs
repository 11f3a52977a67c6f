//! `weir backfill` against a real broker (nisshi): the same scores as the live path, bit for bit,
//! for exactly the transactions of the range; and a job killed part-way resumes to exactly the
//! range, each transaction once.
//!
//! Both need ListOffsets by timestamp, which librdkafka's mock cluster lacks.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use arrow::array::{Float32Array, Int64Array, TimestampMillisecondArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use weir_tests::{
    create_topics, read_topic, run_weir, sigint, sigterm, topology_file, wait_with_timeout, watermarks, weir,
    NisshiBroker,
};

const DAY_MS: i64 = 86_400_000;
/// 2018-04-01T00:00:00Z, the simulator's first day.
const START_MS: i64 = 1_522_540_800_000;

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

/// A broker with `days` of simulated traffic (and a few malformed events), and a topology file.
struct Setup {
    broker: NisshiBroker,
    dir: tempfile::TempDir,
    topology: PathBuf,
    /// tx_id -> event time (ms) of every well-formed transaction.
    txs: HashMap<u64, i64>,
}

/// `replace`: `key = value` lines replacing the line of the same key (and value) in the file.
fn setup(group: &str, days: u32, customers: u32, replace: &[(&str, &str)], extra_source: &str) -> Setup {
    let broker = NisshiBroker::start();
    create_topics(
        &broker.brokers,
        &[
            ("transactions", 4),
            ("fraud-labels", 4),
            ("scores", 4),
            ("transactions-dlq", 1),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let topology = topology_file(dir.path(), &broker.brokers, group, extra_source, "");
    let mut text = std::fs::read_to_string(&topology).unwrap();
    for (old, new) in replace {
        assert!(text.contains(old), "`{old}` not in the topology file");
        text = text.replacen(old, new, 1);
    }
    std::fs::write(&topology, text).unwrap();
    let out = run_weir(
        &[
            "generate",
            "--brokers",
            &broker.brokers,
            "--days",
            &days.to_string(),
            "--customers",
            &customers.to_string(),
            "--terminals",
            &(2 * customers).to_string(),
            "--seed",
            "11",
            "--malformed",
            "6",
        ],
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "generate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let txs = read_topic(&broker.brokers, "transactions", Duration::from_secs(120))
        .unwrap()
        .iter()
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref()?).ok()?;
            Some((v["tx_id"].as_u64()?, v["tx_time_ms"].as_i64()?))
        })
        .collect();
    Setup {
        broker,
        dir,
        topology,
        txs,
    }
}

/// Scores of a Parquet output directory: `(tx_id, event time ms, score bits)` of every row in
/// its complete files whose name starts with `prefix`.
fn parquet_scores(dir: &Path, prefix: &str) -> Vec<(u64, i64, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with(prefix) || !name.ends_with(".parquet") {
            continue;
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let ids = b.column_by_name("tx_id").unwrap();
            let ids = ids.as_any().downcast_ref::<Int64Array>().unwrap();
            let times = b.column_by_name("event_time").unwrap();
            let times = times.as_any().downcast_ref::<TimestampMillisecondArray>().unwrap();
            let scores = b.column_by_name("score").unwrap();
            let scores = scores.as_any().downcast_ref::<Float32Array>().unwrap();
            let offsets = b.column_by_name("source_offset").unwrap();
            assert!(offsets.as_any().downcast_ref::<Int64Array>().is_some());
            for i in 0..b.num_rows() {
                out.push((ids.value(i) as u64, times.value(i), scores.value(i).to_bits()));
            }
        }
    }
    out
}

/// `(tx_id, score bits)` of a score record as the Kafka sink writes it; the score is parsed from
/// its text (the shortest decimal that round-trips an f32), so it is exact.
fn kafka_score(payload: &[u8]) -> (u64, u32) {
    let text = std::str::from_utf8(payload).unwrap();
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let raw = text.split("\"score\":").nth(1).unwrap().split(',').next().unwrap();
    (v["tx_id"].as_u64().unwrap(), raw.parse::<f32>().unwrap().to_bits())
}

fn expected_in_range(txs: &HashMap<u64, i64>, from: i64, to: i64) -> Vec<u64> {
    let mut ids: Vec<u64> = txs
        .iter()
        .filter(|(_, &t)| t >= from && t < to)
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    ids
}

fn job_ids(state_dir: &Path) -> Vec<String> {
    std::fs::read_dir(state_dir)
        .map(|d| {
            d.filter_map(|e| {
                let n = e.ok()?.file_name().to_string_lossy().to_string();
                n.strip_suffix(".json").map(str::to_string)
            })
            .collect()
        })
        .unwrap_or_default()
}

fn job_state(state_dir: &Path, id: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(state_dir.join(format!("{id}.json"))).unwrap()).unwrap()
}

#[test]
fn backfill_scores_equal_live_scores_bit_for_bit() {
    // idle_timeout: on a backlog every partition delivers well within 2 s; a partition declared
    // idle too early would make events of the live run late (see the Kafka source's docs).
    let s = setup("parity", 14, 1000, &[], "idle_timeout = \"2s\"");
    let brokers = s.broker.brokers.clone();
    let n = s.txs.len();
    assert!(n > 5_000, "{n} transactions");

    // Live: the topology as `weir run` runs it, over the whole history, until every transaction
    // is scored; then SIGTERM.
    let live = weir()
        .args(["run"])
        .arg(&s.topology)
        .args(["--brokers", &brokers])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let scored: i64 = watermarks(&brokers, "scores", Duration::from_secs(10))
            .unwrap()
            .iter()
            .map(|(_, lo, hi)| hi - lo)
            .sum();
        if scored >= n as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "live run scored {scored} of {n}");
        std::thread::sleep(Duration::from_millis(200));
    }
    sigterm(&live);
    let out = wait_with_timeout(live, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "weir run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut live_scores: HashMap<u64, u32> = HashMap::new();
    for r in read_topic(&brokers, "scores", Duration::from_secs(120)).unwrap() {
        let (id, bits) = kafka_score(&r.payload.unwrap());
        if let Some(prev) = live_scores.insert(id, bits) {
            assert_eq!(prev, bits, "a re-delivered live score of tx {id} differs");
        }
    }
    assert_eq!(live_scores.len(), n, "every transaction scored live");

    // Backfill one day (day 10 of 14: its 37-day warm-up reaches back to the first event).
    let (from, to) = (START_MS + 9 * DAY_MS, START_MS + 10 * DAY_MS);
    let out_dir = s.dir.path().join("out");
    let state_dir = s.dir.path().join("state");
    let backfill_day = |sink: &str| {
        run_weir(
            &[
                "backfill",
                s.topology.to_str().unwrap(),
                "--brokers",
                &brokers,
                "--from",
                &rfc3339(from),
                "--to",
                &rfc3339(to),
                "--sink",
                sink,
                "--state-dir",
                state_dir.to_str().unwrap(),
            ],
            Duration::from_secs(300),
        )
    };
    let out = backfill_day(&format!("parquet:{}", out_dir.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "backfill failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" done:"), "{stdout}");
    let rows = parquet_scores(&out_dir, "scores-bf-");
    let mut ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
    ids.sort_unstable();
    let expected = expected_in_range(&s.txs, from, to);
    assert!(expected.len() > 500, "{} transactions in the day", expected.len());
    assert_eq!(
        ids, expected,
        "the backfill holds exactly the day's transactions, each once"
    );
    let mut differ = 0;
    for (id, time, bits) in &rows {
        assert!(*time >= from && *time < to);
        if live_scores[id] != *bits {
            differ += 1;
            eprintln!(
                "tx {id}: live {} backfill {}",
                f32::from_bits(live_scores[id]),
                f32::from_bits(*bits)
            );
        }
    }
    assert_eq!(differ, 0, "{differ} of {} backfill scores differ from live", rows.len());
    eprintln!(
        "parity: {} transactions in range, all equal to live bit for bit\n{stdout}",
        rows.len()
    );

    let jobs = job_ids(&state_dir);
    assert_eq!(jobs.len(), 1);
    let state = job_state(&state_dir, &jobs[0]);
    assert_eq!(state["status"], "done");

    // The same day to a Kafka topic: the same transactions and scores.
    let out = backfill_day("kafka:backfill-scores");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut kafka_rows: Vec<(u64, u32)> = read_topic(&brokers, "backfill-scores", Duration::from_secs(60))
        .unwrap()
        .into_iter()
        .map(|r| kafka_score(&r.payload.unwrap()))
        .collect();
    kafka_rows.sort_unstable();
    assert_eq!(kafka_rows.iter().map(|r| r.0).collect::<Vec<_>>(), expected);
    assert!(kafka_rows.iter().all(|(id, bits)| live_scores[id] == *bits));
}

#[test]
fn a_killed_backfill_resumes_to_exactly_the_range() {
    // Small files and batches, so that some files are complete when the job is stopped; a small
    // in-flight limit, so that the sources are still reading then.
    let s = setup(
        "resume",
        24,
        1500,
        &[
            ("max_rows_per_file = 1000000", "max_rows_per_file = 1500"),
            ("max_batch_rows = 4096", "max_batch_rows = 500"),
        ],
        "max_in_flight_rows = 1000",
    );
    let brokers = s.broker.brokers.clone();
    let (from, to) = (START_MS + 10 * DAY_MS, START_MS + 23 * DAY_MS);
    let out_dir = s.dir.path().join("out");
    let state_dir = s.dir.path().join("state");
    let args = |resume: Option<&str>| -> Vec<String> {
        let mut a: Vec<String> = vec!["backfill".into()];
        match resume {
            None => a.extend([
                s.topology.to_string_lossy().to_string(),
                "--from".into(),
                rfc3339(from),
                "--to".into(),
                rfc3339(to),
                "--sink".into(),
                format!("parquet:{}", out_dir.display()),
            ]),
            Some(id) => a.extend(["--resume".into(), id.to_string()]),
        }
        a.extend([
            "--brokers".into(),
            brokers.clone(),
            "--state-dir".into(),
            state_dir.to_string_lossy().to_string(),
        ]);
        a
    };
    let complete_files = || parquet_file_count(&out_dir);
    let log = s.dir.path().join("backfill.log");
    // The in-flight limit is small next to one poll (1,024 records) and 4 partitions start
    // unread: the reads must still leave room for the partitions holding the watermark (the stall
    // escape, logged, is for limits too small for that; a stall here once cost 30 s per 1,000
    // events and timed the test out).
    let no_stall = |text: &str, phase: &str| {
        assert!(
            !text.contains("stalled the watermark"),
            "{phase}: the watermark stalled under the in-flight limit\n{text}"
        );
    };
    let wait_for_files = |child: &mut std::process::Child, at_least: usize| {
        let deadline = Instant::now() + Duration::from_secs(180);
        while complete_files() < at_least {
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!(
                    "{at_least} output files did not appear (exit {:?})\n{}",
                    child.try_wait(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    // 1. Ctrl-C after the first file: drains, records progress, exits non-zero as interrupted.
    let mut first = weir()
        .args(args(None))
        .env("WEIR_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_files(&mut first, 1);
    sigint(&first);
    let out = wait_with_timeout(first, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !out.status.success(),
        "an interrupted backfill does not report success: {stdout}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    no_stall(&std::fs::read_to_string(&log).unwrap(), "first run");
    let id = job_ids(&state_dir).pop().expect("a job state file");
    let state = job_state(&state_dir, &id);
    assert_eq!(state["status"], "interrupted", "{stdout}");
    let after_sigint = parquet_scores(&out_dir, &format!("scores-{id}-")).len();

    // 2. Resume, and SIGKILL it after it completed another file.
    let files_before = complete_files();
    let mut second = weir()
        .args(args(Some(&id)))
        .env("WEIR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_files(&mut second, files_before + 1);
    second.kill().unwrap(); // SIGKILL: no chance to record anything
    second.wait().unwrap();
    no_stall(&std::fs::read_to_string(&log).unwrap(), "first resume");
    let at_kill = parquet_scores(&out_dir, &format!("scores-{id}-")).len();

    // 3. Resume to the end.
    let out = run_weir(
        &args(Some(&id)).iter().map(String::as_str).collect::<Vec<_>>(),
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "resume failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    no_stall(&String::from_utf8_lossy(&out.stderr), "second resume");
    let rows = parquet_scores(&out_dir, &format!("scores-{id}-"));
    let expected = expected_in_range(&s.txs, from, to);
    assert!(
        at_kill < expected.len(),
        "the job was stopped part-way: {at_kill} of {} rows at the kill",
        expected.len()
    );
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for r in &rows {
        *count.entry(r.0).or_default() += 1;
    }
    let dups = count.values().filter(|&&c| c > 1).count();
    assert_eq!(dups, 0, "{dups} transactions written twice");
    let ids: Vec<u64> = count.keys().copied().collect();
    assert_eq!(ids, expected, "the union of the job's files is exactly the range");
    assert!(std::fs::read_dir(&out_dir).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".inprogress")));
    assert_eq!(job_state(&state_dir, &id)["status"], "done");
    eprintln!(
        "resume: {} rows in range; {after_sigint} after Ctrl-C, {at_kill} at the SIGKILL, 0 duplicates\n{stdout}",
        expected.len()
    );
}

fn parquet_file_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
            })
            .count()
        })
        .unwrap_or(0)
}
