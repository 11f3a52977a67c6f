//! Delivery guarantees through real processes: `weir broker`, `weir generate`, `weir run`.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use weir_tests::{run_weir, scores_by_tx, topology_file, tx_ids, wait_with_timeout, watermarks, weir, BrokerProcess};

// The embedded broker keeps at most 5 MiB per partition: 16 partitions hold ~250k records.
const TOPICS: [&str; 4] = ["transactions:16", "fraud-labels:16", "scores:16", "transactions-dlq:1"];

#[test]
fn every_transaction_is_scored_exactly_once() {
    let broker = BrokerProcess::start(&TOPICS);
    let out = run_weir(
        &["generate", "--brokers", &broker.brokers, "--days", "25"],
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let topo = topology_file(
        dir.path(),
        &broker.brokers,
        "exactly-once",
        "",
        "max_batch_rows = 256\nmax_wait = \"5ms\"",
    );
    let out = run_weir(
        &["run", topo.to_str().unwrap(), "--until-end", "--start", "earliest"],
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let ids = tx_ids(&broker.brokers, "transactions");
    assert!(ids.len() >= 200_000, "{} transactions", ids.len());
    let scores = scores_by_tx(&broker.brokers, "scores");
    let missing = ids.iter().filter(|id| !scores.contains_key(id)).count();
    let dup = scores.values().filter(|&&n| n > 1).count();
    let extra = scores.keys().filter(|id| !ids.contains(id)).count();
    assert_eq!((missing, dup, extra), (0, 0, 0), "missing, duplicated, unknown tx ids");
    assert_eq!(scores.len(), ids.len());
    for (_, lo, _) in watermarks(&broker.brokers, "scores", Duration::from_secs(10)).unwrap() {
        assert_eq!(lo, 0, "the broker kept every score record");
    }
}

/// Sum over partitions of the group's committed offsets on `transactions`.
fn committed_total(brokers: &str, group: &str) -> i64 {
    let out = run_weir(
        &[
            "offsets",
            "--brokers",
            brokers,
            "--group",
            group,
            "--topic",
            "transactions",
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok())
        .sum()
}

fn scored_count(brokers: &str) -> i64 {
    watermarks(brokers, "scores", Duration::from_secs(10))
        .map(|w| w.iter().map(|(_, lo, hi)| hi - lo).sum())
        .unwrap_or(0)
}

#[test]
fn a_killed_topology_restarts_from_committed_offsets_and_loses_nothing() {
    let broker = BrokerProcess::start(&TOPICS);
    let dir = tempfile::tempdir().unwrap();
    let topo = topology_file(
        dir.path(),
        &broker.brokers,
        "kill-restart",
        "start = \"committed\"",
        "max_batch_rows = 64\nmax_wait = \"5ms\"",
    );
    let topo = topo.to_str().unwrap().to_string();

    // Traffic keeps arriving while the topology is killed and restarted: 60,000 events at 15,000/s.
    let generator = weir()
        .args([
            "generate",
            "--brokers",
            &broker.brokers,
            "--days",
            "6",
            "--customers",
            "5000",
            "--rate",
            "15000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let spawn_run = || {
        weir()
            .args(["run", &topo])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = spawn_run();
    // Kill it mid-run: once it has written some scores.
    let deadline = Instant::now() + Duration::from_secs(60);
    while scored_count(&broker.brokers) < 5_000 {
        assert!(Instant::now() < deadline, "no scores from the first run");
        assert!(first.try_wait().unwrap().is_none(), "first run exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Once it has committed something (every 100 ms), SIGKILL (a no-op if it already ended).
    while committed_total(&broker.brokers, "kill-restart") <= 0 {
        assert!(
            Instant::now() < deadline + Duration::from_secs(120),
            "the first run committed nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = first.kill(); // SIGKILL
    let _ = first.wait();
    let at_kill = scored_count(&broker.brokers);
    // The first run committed offsets while it ran (only for acknowledged scores).
    let committed = committed_total(&broker.brokers, "kill-restart");
    assert!(committed > 0, "offsets were committed before the kill");
    assert!(
        committed <= at_kill,
        "never committed beyond what the sink acknowledged: {committed} > {at_kill}"
    );

    let second = spawn_run();
    let gen_out = wait_with_timeout(generator, Duration::from_secs(120));
    assert!(gen_out.status.success(), "{}", String::from_utf8_lossy(&gen_out.stderr));
    let ids: HashSet<u64> = tx_ids(&broker.brokers, "transactions").into_iter().collect();
    assert!(
        at_kill < ids.len() as i64,
        "killed mid-run: {at_kill} of {} scored",
        ids.len()
    );

    // Wait until every transaction has a score, then stop gracefully.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let scores = scores_by_tx(&broker.brokers, "scores");
        if ids.iter().all(|id| scores.contains_key(id)) {
            let dup: usize = scores.values().map(|n| n - 1).sum();
            eprintln!(
                "kill/restart: {} transactions, {at_kill} score records at the kill, {dup} duplicates after restart",
                ids.len()
            );
            // Duplicates are events re-read after the restart: those scored but not yet committed
            // at the kill (reliability.rs checks that count exactly on a real broker).
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} transactions scored after restart",
            scores.len(),
            ids.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // SIGTERM: drains, commits, exits 0.
    let pid = second.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = wait_with_timeout(second, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "graceful shutdown exits 0: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("scored"),
        "prints a summary"
    );
}
