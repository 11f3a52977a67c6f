//! One topology on a timely cluster of processes (issue 17), against a real broker (nisshi):
//! two processes of one worker score and commit exactly what one process of two workers does,
//! bit for bit, live and as a backfill to Parquet; a process killed mid-stream makes its peer
//! exit (status 3), and the restarted pair scores every event, duplicating only what was not
//! committed, with the scores of an uninterrupted run.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::array::{Float32Array, Int32Array, Int64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use weir_tests::{
    committed, create_topics, free_port, http_get, run_weir, sample_sum, score_records, sigterm, topology_file,
    wait_with_timeout, watermarks, weir, NisshiBroker, ScoreRecord,
};

/// The tests of this file each start processes that use both cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A broker with the topics, and the directory of the topology variants.
struct Setup {
    broker: NisshiBroker,
    dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let broker = NisshiBroker::start();
    create_topics(
        &broker.brokers,
        &[
            ("transactions", 4),
            ("fraud-labels", 4),
            ("transactions-dlq", 1),
            ("scores-ref", 4),
            ("scores-pair", 4),
            ("scores-killed", 4),
        ],
    );
    Setup {
        broker,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// The generator's arguments: 10 days of 1,000 cards (about 19,000 transactions), `rate` a
/// second (`None`: at once).
fn generate(brokers: &str, rate: Option<u32>) -> Child {
    let mut c = weir();
    c.args([
        "generate",
        "--brokers",
        brokers,
        "--days",
        "10",
        "--customers",
        "1000",
        "--terminals",
        "2000",
        "--seed",
        "17",
    ]);
    if let Some(r) = rate {
        c.args(["--rate", &r.to_string()]);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir generate")
}

/// A variant of `fraud-scoring.toml` in its own directory: consumer group `group`, scores to
/// `sink_topic`, `workers` workers per process. Returns its path.
fn topology(s: &Setup, name: &str, group: &str, sink_topic: &str, workers: usize) -> PathBuf {
    let dir = s.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = topology_file(&dir, &s.broker.brokers, group, "", "");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("topic = \"scores\"") && text.contains("workers = 2"));
    let text = text
        .replacen("topic = \"scores\"", &format!("topic = \"{sink_topic}\""), 1)
        .replacen("workers = 2", &format!("workers = {workers}"), 1);
    std::fs::write(&path, text).unwrap();
    path
}

/// `weir run` of `topology` (live), as process `process` of `peers` if given, serving metrics on
/// `metrics_port`.
fn run(topology: &Path, cluster: Option<(usize, &str)>, metrics_port: u16) -> Child {
    let mut c = weir();
    c.arg("run")
        .arg(topology)
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")]);
    if let Some((process, peers)) = cluster {
        c.args(["--process", &process.to_string(), "--peers", peers]);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir run")
}

fn peers() -> String {
    format!("127.0.0.1:{},127.0.0.1:{}", free_port(), free_port())
}

/// The end offsets of the transactions topic.
fn ends(brokers: &str) -> BTreeMap<i32, i64> {
    watermarks(brokers, "transactions", Duration::from_secs(30))
        .unwrap()
        .into_iter()
        .map(|(p, _, hi)| (p, hi))
        .collect()
}

/// Waits (generous deadline) until `group` committed every partition to its end: every event
/// scored and acknowledged.
fn wait_committed_to_end(brokers: &str, group: &str, children: &mut [&mut Child]) {
    let want = ends(brokers);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if committed(brokers, group, "transactions") == want {
            return;
        }
        for c in children.iter_mut() {
            if let Some(status) = c.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    use std::io::Read;
                    e.read_to_string(&mut err).ok();
                }
                panic!("a process exited ({status}) before committing everything:\n{err}");
            }
        }
        assert!(
            Instant::now() < deadline,
            "group {group} did not commit to {want:?}: {:?}",
            committed(brokers, group, "transactions")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops `children` (SIGTERM to the first only: the others must follow), checks each exits 0,
/// and returns their logs.
fn stop(mut children: Vec<Child>) -> Vec<String> {
    sigterm(&children[0]);
    let mut logs = Vec::new();
    for c in children.drain(..) {
        let out = wait_with_timeout(c, Duration::from_secs(120));
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "exit {:?}:\n{log}", out.status);
        logs.push(log);
    }
    logs
}

/// `(partition, offset) -> score` of a score topic; every record once.
fn scores_once(brokers: &str, topic: &str) -> BTreeMap<(i32, i64), f64> {
    let mut out = BTreeMap::new();
    for r in score_records(brokers, topic) {
        assert!(
            out.insert((r.partition, r.offset), r.score).is_none(),
            "{topic}: ({}, {}) scored twice",
            r.partition,
            r.offset
        );
    }
    out
}

#[test]
fn two_processes_score_and_commit_as_one_process_with_two_workers_and_survive_a_kill() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let brokers = s.broker.brokers.clone();

    // A pair started before the events arrive, one of them killed while they stream in; each
    // worker snapshots its share of the feature state into one directory, which the restarted
    // pair loads.
    let killed_file = topology(&s, "killed", "g-killed", "scores-killed", 1);
    let snapshots = s.dir.path().join("snapshots");
    let mut text = std::fs::read_to_string(&killed_file).unwrap();
    text.push_str(&format!(
        "\n[snapshot]\ndir = \"{}\"\ninterval = \"2s\"\nkeep = 3\n",
        snapshots.display()
    ));
    std::fs::write(&killed_file, text).unwrap();
    let cluster = peers();
    let (m0, m1) = (free_port(), free_port());
    let p0 = run(&killed_file, Some((0, &cluster)), m0);
    let mut p1 = run(&killed_file, Some((1, &cluster)), m1);
    let generator = generate(&brokers, Some(4000));
    // Process 1 scored a share: kill it (SIGKILL: no drain, no goodbye).
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let scored = http_get(m1, "/metrics")
            .map(|(_, b)| sample_sum(&b, "weir_sink_scores_total"))
            .unwrap_or(0.0);
        if scored >= 2000.0 {
            break;
        }
        assert!(Instant::now() < deadline, "process 1 scored {scored} events");
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = http_get(m1, "/metrics").map(|(_, b)| b).unwrap_or_default();
    assert!(
        body.lines()
            .any(|l| l.starts_with("weir_sink_scores_total{") && l.contains("process=\"1\"")),
        "each process's metrics carry its index:\n{body}"
    );
    p1.kill().unwrap();
    let killed_at = Instant::now();
    p1.wait().unwrap();
    let out = wait_with_timeout(p0, Duration::from_secs(60));
    let noticed = killed_at.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the survivor exits with status 3:\n{stderr}"
    );
    assert!(
        stderr.contains("lost cluster peer process 1 at"),
        "the survivor names the lost peer:\n{stderr}"
    );
    eprintln!("the survivor noticed the lost peer and exited {noticed:?} after the kill");
    let out = wait_with_timeout(generator, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "generate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed_at_kill = committed(&brokers, "g-killed", "transactions");
    let cuts = std::fs::read_dir(&snapshots).map(|d| d.count()).unwrap_or(0);
    let scored_before_restart = score_records(&brokers, "scores-killed").len();
    assert!(scored_before_restart > 0);

    // The pair restarted: it scores everything left.
    let (m0, m1) = (free_port(), free_port());
    let cluster = peers();
    let mut p0 = run(&killed_file, Some((0, &cluster)), m0);
    let mut p1 = run(&killed_file, Some((1, &cluster)), m1);
    wait_committed_to_end(&brokers, "g-killed", &mut [&mut p0, &mut p1]);
    for log in stop(vec![p0, p1]) {
        assert!(
            log.contains("feature state loaded from a snapshot"),
            "the restarted pair starts from the snapshot:\n{log}"
        );
    }

    // The reference: one process of two workers, uninterrupted.
    let reference_file = topology(&s, "reference", "g-ref", "scores-ref", 2);
    let mut r = run(&reference_file, None, free_port());
    wait_committed_to_end(&brokers, "g-ref", &mut [&mut r]);
    stop(vec![r]);

    // Two processes of one worker, uninterrupted; stopped by a SIGTERM to process 1 alone.
    let pair_file = topology(&s, "pair", "g-pair", "scores-pair", 1);
    let cluster = peers();
    let mut p0 = run(&pair_file, Some((0, &cluster)), free_port());
    let mut p1 = run(&pair_file, Some((1, &cluster)), free_port());
    wait_committed_to_end(&brokers, "g-pair", &mut [&mut p0, &mut p1]);
    stop(vec![p1, p0]);

    let ends = ends(&brokers);
    let events: i64 = ends.values().sum();
    let reference = scores_once(&brokers, "scores-ref");
    assert_eq!(reference.len() as i64, events, "the reference scores every event once");
    let pair = scores_once(&brokers, "scores-pair");
    assert_eq!(pair.len(), reference.len());
    for (k, v) in &reference {
        assert_eq!(
            pair.get(k).map(|p| p.to_bits()),
            Some(v.to_bits()),
            "2 x 1 and 1 x 2 score {k:?} alike"
        );
    }
    assert_eq!(committed(&brokers, "g-ref", "transactions"), ends);
    assert_eq!(
        committed(&brokers, "g-pair", "transactions"),
        committed(&brokers, "g-ref", "transactions"),
        "2 x 1 commits what 1 x 2 commits"
    );

    // The killed pair: every event scored, with the reference's score; a duplicate only where
    // the offset was not committed when the process died.
    let mut seen: HashMap<(i32, i64), usize> = HashMap::new();
    let records: Vec<ScoreRecord> = score_records(&brokers, "scores-killed");
    for r in &records {
        let k = (r.partition, r.offset);
        assert_eq!(
            reference.get(&k).map(|v| v.to_bits()),
            Some(r.score.to_bits()),
            "the killed pair scored {k:?} as an uninterrupted run"
        );
        *seen.entry(k).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), reference.len(), "the killed pair scored every event");
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).map(|(k, _)| *k).collect();
    for (p, o) in &duplicates {
        let c = committed_at_kill.get(p).copied().unwrap_or(0);
        assert!(
            *o >= c,
            "({p}, {o}) was committed ({c}) before the kill, yet scored again"
        );
    }
    eprintln!(
        "killed pair: {} records for {} events ({} scored before the restart, {} duplicates; {cuts} snapshot cuts at the kill)",
        records.len(),
        seen.len(),
        scored_before_restart,
        duplicates.len()
    );
}

/// `(partition, offset) -> score bits` of every row of the complete Parquet files in `dir`.
fn parquet_rows(dir: &Path) -> BTreeMap<(i32, i64), u32> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "parquet") {
            continue;
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let col = |n: &str| b.column_by_name(n).unwrap_or_else(|| panic!("column {n}")).clone();
            let (parts, offsets, scores) = (col("source_partition"), col("source_offset"), col("score"));
            let parts = parts.as_any().downcast_ref::<Int32Array>().unwrap();
            let offsets = offsets.as_any().downcast_ref::<Int64Array>().unwrap();
            let scores = scores.as_any().downcast_ref::<Float32Array>().unwrap();
            for i in 0..b.num_rows() {
                let k = (parts.value(i), offsets.value(i));
                assert!(out.insert(k, scores.value(i).to_bits()).is_none(), "{k:?} twice");
            }
        }
    }
    out
}

#[test]
fn a_backfill_on_two_processes_writes_what_one_process_writes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let brokers = s.broker.brokers.clone();
    let out = wait_with_timeout(generate(&brokers, None), Duration::from_secs(300));
    assert!(
        out.status.success(),
        "generate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from: Vec<String> = ends(&brokers).keys().map(|p| format!("{p}:0")).collect();
    let from = from.join(",");

    let one = topology(&s, "bf-one", "g-bf", "scores-ref", 2);
    let one_dir = s.dir.path().join("parquet-one");
    let state = s.dir.path().join("state");
    let out = run_weir(
        &[
            "backfill",
            one.to_str().unwrap(),
            "--from-offsets",
            &from,
            "--sink",
            &format!("parquet:{}", one_dir.display()),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "backfill: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pair = topology(&s, "bf-pair", "g-bf", "scores-ref", 1);
    let pair_dir = s.dir.path().join("parquet-pair");
    let cluster = peers();
    let spawn = |process: usize| {
        weir()
            .arg("backfill")
            .arg(&pair)
            .args(["--from-offsets", &from, "--job-id", "nightly"])
            .arg("--sink")
            .arg(format!("parquet:{}", pair_dir.display()))
            .arg("--state-dir")
            .arg(&state)
            .args(["--process", &process.to_string(), "--peers", &cluster])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weir backfill")
    };
    let (b0, b1) = (spawn(0), spawn(1));
    for b in [b0, b1] {
        let out = wait_with_timeout(b, Duration::from_secs(300));
        assert!(
            out.status.success(),
            "backfill: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for p in 0..2 {
        assert!(
            state.join(format!("nightly-p{p}.json")).exists(),
            "each process records its share of the job"
        );
    }

    let one = parquet_rows(&one_dir);
    let events: i64 = ends(&brokers).values().sum();
    assert_eq!(one.len() as i64, events, "one process scores every event once");
    assert_eq!(
        parquet_rows(&pair_dir),
        one,
        "2 x 1 writes the rows 1 x 2 writes, bit for bit"
    );
}

#[test]
fn a_process_that_cannot_reach_its_peers_names_them_and_gives_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let broker =
        weir_tests::BrokerProcess::start(&["transactions:2", "fraud-labels:2", "scores:2", "transactions-dlq:1"]);
    let dir = tempfile::tempdir().unwrap();
    let path = topology_file(dir.path(), &broker.brokers, "g-alone", "", "");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[cluster]\nconnect_timeout = \"1s\"\n");
    std::fs::write(&path, text).unwrap();
    let (p0, p1) = (free_port(), free_port());
    let peers = format!("127.0.0.1:{p0},127.0.0.1:{p1}");
    for (process, missing, why) in [(1, p0, "refused"), (0, p1, "has not connected")] {
        let out = run_weir(
            &[
                "run",
                path.to_str().unwrap(),
                "--process",
                &process.to_string(),
                "--peers",
                &peers,
            ],
            Duration::from_secs(120),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "process {process} gives up:\n{err}");
        assert!(
            err.contains(&format!("127.0.0.1:{missing}"))
                && err.contains("cluster.connect_timeout")
                && err.contains(why),
            "process {process} names the peer it could not reach:\n{err}"
        );
    }
}
