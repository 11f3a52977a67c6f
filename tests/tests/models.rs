//! Model lifecycle in a running topology (issue 19): a model swapped under load scores from a
//! batch boundary on, every event exactly once, each record with the version in force when its
//! batch ran; invalid models are rejected with the reason while the running one keeps scoring;
//! going back to the previous version takes its kept sessions.

use std::collections::BTreeMap;
use std::time::Duration;

use weir_tests::{sample_sum, topology_file, wait_metrics};

/// Replaces `key = ...` of `[model]` (the first such line after `[model]`), as an editor would
/// (write, then rename).
fn set_model(path: &std::path::Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("[model]\n").unwrap();
    let at = start + text[start..].find(&format!("\n{key} = ")).unwrap() + 1;
    let end = at + text[at..].find('\n').unwrap();
    let new = format!("{}{key} = {value}{}", &text[..at], &text[end..]);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, new).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn swaps(body: &str, result: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with("weir_model_swaps_total{") && l.contains(&format!("result=\"{result}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Kills the process if the test fails before handing it over.
struct Guard(Option<std::process::Child>);

impl Guard {
    fn take(&mut self) -> std::process::Child {
        self.0.take().expect("taken once")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_model_swapped_under_load_scores_each_event_once_with_the_version_in_force() {
    let broker =
        weir_tests::BrokerProcess::start(&["transactions:4", "fraud-labels:4", "scores:4", "transactions-dlq:1"]);
    let dir = tempfile::tempdir().unwrap();
    let path = topology_file(dir.path(), &broker.brokers, "swap", "", "");
    let port = weir_tests::free_port();
    // One worker: no rebalance at start re-reads events (this test counts them exactly).
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""), 1)
        .replacen("workers = 2", "workers = 1", 1);
    std::fs::write(&path, text).unwrap();
    let model = weir_tests::repo().join("models/fraud/model.onnx");
    let mut run = Guard(Some(
        weir_tests::weir()
            .args(["run", path.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    wait_metrics(port, Duration::from_secs(60), "the endpoint", |b| {
        b.contains("weir_model_swaps_total")
    });
    let mut generator = Guard(Some(
        weir_tests::weir()
            .args([
                "generate",
                "--brokers",
                &broker.brokers,
                "--days",
                "16",
                "--customers",
                "500",
                "--terminals",
                "1000",
                "--rate",
                "2000",
                "--realtime",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    wait_metrics(port, Duration::from_secs(60), "1,000 scores", |b| {
        sample_sum(b, "weir_sink_scores_total") >= 1000.0
    });

    // A new version (the same file, as a retrained model shipped under a new name would be).
    set_model(&path, "version", "\"fraud-handbook-v2\"");
    wait_metrics(port, Duration::from_secs(60), "the swap", |b| {
        swaps(b, "applied") >= 1.0
    });
    // Invalid models: missing, another feature order (the payments model). Each is rejected
    // and v2 keeps scoring.
    set_model(&path, "path", "\"/nonexistent/model.onnx\"");
    wait_metrics(port, Duration::from_secs(60), "a rejection", |b| {
        swaps(b, "rejected") >= 1.0
    });
    let payments = weir_tests::repo().join("models/card-payments/model.onnx");
    set_model(&path, "path", &format!("\"{}\"", payments.display()));
    let body = wait_metrics(port, Duration::from_secs(60), "a second rejection", |b| {
        swaps(b, "rejected") >= 2.0
    });
    let v2_at_rejections = sample_sum(
        &body
            .lines()
            .filter(|l| l.contains("fraud-handbook-v2"))
            .collect::<Vec<_>>()
            .join("\n"),
        "weir_model_scored_rows_total",
    );
    wait_metrics(port, Duration::from_secs(60), "v2 still scoring", |b| {
        b.lines()
            .filter(|l| l.starts_with("weir_model_scored_rows_total{") && l.contains("fraud-handbook-v2"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            > v2_at_rejections
    });
    // Back to v1 (the file's model again): its kept sessions, at once.
    set_model(&path, "path", &format!("\"{}\"", model.display()));
    set_model(&path, "version", "\"fraud-handbook-v1\"");
    wait_metrics(port, Duration::from_secs(60), "the rollback", |b| {
        swaps(b, "applied") >= 2.0
    });

    let gen = weir_tests::wait_with_timeout(generator.take(), Duration::from_secs(120));
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    let n: f64 = weir_tests::watermarks(&broker.brokers, "transactions", Duration::from_secs(10))
        .unwrap()
        .iter()
        .map(|(_, lo, hi)| (hi - lo) as f64)
        .sum();
    wait_metrics(port, Duration::from_secs(60), "every transaction scored", |b| {
        sample_sum(b, "weir_sink_scores_total") >= n
    });
    weir_tests::sigterm(run.0.as_ref().unwrap());
    let out = weir_tests::wait_with_timeout(run.take(), Duration::from_secs(60));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("/nonexistent/model.onnx") && log.contains("model swap rejected"),
        "{log}"
    );
    assert!(
        log.contains("previous model's sessions"),
        "the rollback took the kept sessions:\n{log}"
    );

    // Every transaction exactly once; per partition, the versions follow each other by offset
    // (a batch is scored whole by the model in force when it ran): v1, then v2, then v1.
    let records = score_versions(&broker.brokers);
    assert_eq!(records.len() as f64, n, "every transaction scored once");
    let mut by_partition: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for ((p, o), v) in records {
        by_partition.entry(p).or_default().push((o, v));
    }
    let mut seen_v2 = false;
    for (p, mut rows) in by_partition {
        rows.sort();
        let mut phases: Vec<&str> = Vec::new();
        for (_, v) in &rows {
            if phases.last() != Some(&v.as_str()) {
                phases.push(v);
            }
        }
        assert!(
            ["fraud-handbook-v1", "fraud-handbook-v2", "fraud-handbook-v1"].starts_with(&phases) || phases.is_empty(),
            "partition {p}: versions by offset {phases:?}"
        );
        seen_v2 |= phases.contains(&"fraud-handbook-v2");
    }
    assert!(seen_v2, "v2 scored some events");
}

/// `(partition, offset) -> model_version` of every score record; panics on a record twice.
fn score_versions(brokers: &str) -> BTreeMap<(i32, i64), String> {
    let mut out = BTreeMap::new();
    for r in weir_tests::read_topic(brokers, "scores", Duration::from_secs(120)).unwrap() {
        let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
        let key = (v["partition"].as_i64().unwrap() as i32, v["offset"].as_i64().unwrap());
        let version = v["model_version"].as_str().unwrap().to_string();
        assert!(out.insert(key, version).is_none(), "{key:?} scored twice");
    }
    out
}
