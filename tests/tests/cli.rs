//! Start-up errors name the problem; the README's demo command works.

use std::time::Duration;

use weir_tests::{repo, run_weir, topology_file};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_config_fails_at_start_up_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = topology_file(dir.path(), "127.0.0.1:1", "g", "", "max_batch_rowz = 64");
    for cmd in ["check", "run"] {
        let out = run_weir(&[cmd, path.to_str().unwrap()], Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("batching.max_batch_rowz"), "{cmd}: {err}");
        assert!(err.contains(path.to_str().unwrap()), "names the file: {err}");
    }
    let path = topology_file(dir.path(), "127.0.0.1:1", "g", "", "max_wait = \"soon\"");
    let out = run_weir(&["run", path.to_str().unwrap()], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("batching.max_wait"), "{}", stderr(&out));
}

#[test]
fn a_missing_model_fails_at_start_up_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = topology_file(dir.path(), "127.0.0.1:1", "g", "", "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("model.onnx", "missing-model.onnx");
    std::fs::write(&path, text).unwrap();
    let out = run_weir(&["run", path.to_str().unwrap()], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let expected = repo().join("models/fraud/missing-model.onnx");
    assert!(
        err.contains(&format!("model file not found: `{}`", expected.display())),
        "{err}"
    );
}

#[test]
fn the_demo_prints_its_summary_and_scores_every_transaction_once() {
    let out = run_weir(&["demo"], Duration::from_secs(600));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for needle in [
        "events/s",
        "batches",
        "mean",
        "p50",
        "p99",
        "ROC AUC 0.",
        "card precision@100",
        "every transaction scored exactly once",
    ] {
        assert!(text.contains(needle), "summary lacks `{needle}`:\n{text}");
    }
    // At least 200,000 transactions: "generated     242,875 transactions".
    let generated: u64 = text
        .lines()
        .find(|l| l.trim_start().starts_with("generated"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|n| n.replace(',', "").parse().unwrap())
        .unwrap();
    assert!(generated >= 200_000, "{generated}");
}

#[test]
fn the_benchmark_reports_the_three_throughputs_and_their_ratio() {
    let out = run_weir(
        &["bench", "--days", "1", "--onnx-seconds", "0.2"],
        Duration::from_secs(300),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for needle in [
        "raw ONNX Runtime",
        "raw Kafka I/O",
        "pipeline end to end",
        "pipeline / slower raw limit",
    ] {
        assert!(text.contains(needle), "bench output lacks `{needle}`:\n{text}");
    }
}
