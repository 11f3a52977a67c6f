//! Start-up errors name the problem; the README's demo command works.

use std::time::Duration;

use weir_tests::{free_port, http_get, repo, run_weir, sample_sum, topology_file, wait_with_timeout, weir};

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
fn the_decode_benchmark_runs_both_decoders_over_the_same_events() {
    let out = run_weir(&["bench-decode", "--events", "20000"], Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // Both decoders decoded every event (a failure is an error) and the ratio is theirs.
    assert!(text.contains("decode, 20000 JSON transactions"), "{text}");
    let num = |after: &str| -> f64 {
        let rest = &text[text.find(after).unwrap_or_else(|| panic!("{after}: {text}")) + after.len()..];
        rest.trim_start()
            .split(|c: char| c.is_whitespace() || c == ';')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (typed, declared, ratio) = (num("typed decoder"), num("declared schema"), num("ratio"));
    assert!(typed > 0.0 && declared > 0.0);
    assert!((ratio - declared / typed).abs() < 0.002, "{text}");
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
        "pipeline / raw bound",
        "raw Kafka input",
        "backfill / raw bound",
    ] {
        assert!(text.contains(needle), "bench output lacks `{needle}`:\n{text}");
    }
}

#[test]
fn the_latency_benchmark_measures_weir_beside_a_bare_consumer_and_producer() {
    let out = run_weir(
        &["bench-latency", "--rate", "2000", "--seconds", "1"],
        Duration::from_secs(300),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    // "  bare consumer + producer  read->ack p50     5.33 ms  p99    20.71 ms"
    let quantiles = |prefix: &str| -> (f64, f64) {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line:\n{text}"));
        let after = |key: &str| -> f64 {
            let rest = &line[line.find(key).unwrap() + key.len()..];
            rest.split_whitespace().next().unwrap().parse().unwrap()
        };
        (after("p50"), after("p99"))
    };
    for path in ["bare consumer", "weir (mean batch"] {
        let (p50, p99) = quantiles(path);
        assert!(p50 > 0.0 && p99 >= p50, "{path}: p50 {p50} p99 {p99}\n{text}");
    }
    assert!(text.contains("weir - bare"), "{text}");
    assert!(text.contains("2000 events at 2000 events/s"), "{text}");
}

#[test]
fn the_metrics_endpoint_serves_during_a_run() {
    let broker =
        weir_tests::BrokerProcess::start(&["transactions:4", "fraud-labels:4", "scores:4", "transactions-dlq:1"]);
    let out = run_weir(
        &[
            "generate",
            "--brokers",
            &broker.brokers,
            "--days",
            "3",
            "--customers",
            "500",
            "--terminals",
            "1000",
            "--malformed",
            "2",
        ],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Every message of the topic: transactions and the 2 malformed events.
    let n: f64 = weir_tests::watermarks(&broker.brokers, "transactions", Duration::from_secs(10))
        .unwrap()
        .iter()
        .map(|(_, lo, hi)| (hi - lo) as f64)
        .sum();
    let dir = tempfile::tempdir().unwrap();
    let path = topology_file(dir.path(), &broker.brokers, "metrics", "", "");
    let port = weir_tests::free_port();
    let text =
        std::fs::read_to_string(&path)
            .unwrap()
            .replacen("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""), 1);
    std::fs::write(&path, text).unwrap();
    let child = weir_tests::weir()
        .args(["run", path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut ready_seen = false;
    let mut last = String::new();
    let body = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "not every event was handled in time:\n{last}"
        );
        ready_seen |= http_get(port, "/readyz").is_some_and(|(s, _)| s == 200);
        if let Some((200, body)) = http_get(port, "/metrics") {
            let handled = sample_sum(&body, "weir_sink_scores_total") + sample_sum(&body, "weir_dead_letters_total");
            // Quiescent: every event read was scored or dead-lettered (a rebalance at start may
            // re-read some events: at-least-once, so compare with what was read).
            if handled >= n && handled == sample_sum(&body, "weir_source_events_total") {
                break body;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ready_seen, "/readyz answered 200 while running");
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    let events = sample_sum(&body, "weir_source_events_total");
    let scores = sample_sum(&body, "weir_sink_scores_total");
    let letters = sample_sum(&body, "weir_dead_letters_total");
    assert!(letters >= 2.0 && scores >= n - 2.0, "{body}");
    assert_eq!(events, scores + letters, "events in = scores out + dead letters");
    let batches = sample_sum(&body, "weir_batches_total");
    assert!(batches >= 1.0);
    assert_eq!(
        sample_sum(&body, "weir_batch_rows_count"),
        batches,
        "one batch-rows observation per batch"
    );
    assert_eq!(sample_sum(&body, "weir_batch_rows_sum"), scores, "{body}");
    assert!(
        body.lines().any(|l| l.starts_with("weir_model_info{")
            && l.contains("version=\"fraud-handbook-v1\"")
            && l.ends_with(" 1")),
        "{body}"
    );
    assert!(body.contains("weir_execution_provider_info{"), "{body}");
    for name in [
        "weir_batch_fill_wait_seconds_count",
        "weir_inference_batch_seconds_count",
        "weir_pipeline_latency_seconds_count",
    ] {
        assert!(sample_sum(&body, name) >= 1.0, "{name}: {body}");
    }
    // From the Kafka message timestamp (the generator's simulated 2018 times): one observation
    // per score, all of them older than a year.
    assert_eq!(sample_sum(&body, "weir_end_to_end_latency_seconds_count"), scores);
    assert!(sample_sum(&body, "weir_end_to_end_latency_seconds_sum") / scores > 365.0 * 86400.0);
    // Every flushed batch has a cause: size, time or drain.
    let causes: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("weir_batches_total{"))
        .filter_map(|l| l.split("cause=\"").nth(1)?.split('"').next())
        .collect();
    assert!(!causes.is_empty(), "{body}");
    assert!(
        causes.iter().all(|c| ["size", "time", "drain"].contains(c)),
        "{causes:?}"
    );
    // Operator labels.
    assert!(
        body.lines()
            .any(|l| l.starts_with("weir_batch_rows_count{") && l.contains("operator=\"micro_batch\"")),
        "{body}"
    );
    // The window in use, and the backpressure and in-flight gauges.
    assert_eq!(sample_sum(&body, "weir_batch_window_max_rows"), 256.0);
    assert!((sample_sum(&body, "weir_batch_window_max_wait_seconds") - 0.005).abs() < 1e-9);
    assert!(body.contains("weir_backpressure_paused_seconds_total{"), "{body}");
    assert!(body.contains("weir_inflight_batches{"), "{body}");
    // Consumer lag: one series per partition of the transactions topic, 0 once all is read.
    let lag_lines = |body: &str| -> Vec<String> {
        body.lines()
            .filter(|l| l.starts_with("weir_consumer_lag_messages{") && l.contains("topic=\"transactions\""))
            .map(str::to_string)
            .collect()
    };
    let body = weir_tests::wait_metrics(port, Duration::from_secs(10), "lag 0 on 4 partitions", |b| {
        let lines = lag_lines(b);
        lines.len() == 4 && lines.iter().all(|l| l.ends_with(" 0"))
    });
    let lag_lines = lag_lines(&body);
    assert_eq!(lag_lines.len(), 4, "{lag_lines:?}");
    assert!(lag_lines.iter().all(|l| l.ends_with(" 0")), "{lag_lines:?}");
    weir_tests::sigterm(&child);
    let out = weir_tests::wait_with_timeout(child, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        http_get(port, "/metrics").is_none(),
        "the endpoint stops with the topology"
    );
}

/// A port nothing listens on (bound, then released).
fn closed_port_brokers() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn an_unreachable_broker_is_named_with_its_field() {
    // Issue 13, item 13: 30 s of silence, then `BrokerTransportFailure` naming neither the
    // address nor `source.brokers`.
    let dir = tempfile::tempdir().unwrap();
    let brokers = closed_port_brokers();
    let path = topology_file(dir.path(), &brokers, "g", "", "");
    let out = run_weir(
        &["run", "--until-end", path.to_str().unwrap()],
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&brokers) && err.contains("source.brokers"), "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    // Overridden on the command line: the flag is named instead.
    let other = closed_port_brokers();
    let out = run_weir(
        &["run", "--until-end", "--brokers", &other, path.to_str().unwrap()],
        Duration::from_secs(120),
    );
    let err = stderr(&out);
    assert!(err.contains(&other) && err.contains("--brokers"), "{err}");
    // Live: it keeps retrying, saying so, and stops cleanly on SIGTERM.
    let log = dir.path().join("live.log");
    let child = weir()
        .args(["run", path.to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Kafka brokers unreachable; retrying") {
            assert!(text.contains(&brokers) && text.contains("source.brokers"), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no retry warning:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    weir_tests::sigterm(&child);
    let out = wait_with_timeout(child, Duration::from_secs(120));
    assert!(
        !out.status.success(),
        "a run that never reached its broker does not claim success"
    );
}

#[test]
fn check_builds_the_kafka_clients_and_names_a_bogus_property() {
    // Issue 13, item 14: a bogus librdkafka property passed `weir check`.
    let dir = tempfile::tempdir().unwrap();
    let path = topology_file(dir.path(), "127.0.0.1:1", "g", "", "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[sink.properties]", "[sink.properties]\n\"linger.mss\" = \"5\"");
    std::fs::write(&path, text).unwrap();
    for cmd in ["check", "run"] {
        let out = run_weir(&[cmd, path.to_str().unwrap()], Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("sink.properties") && err.contains("linger.mss"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn tools_find_their_default_topology_from_any_directory_and_start_quietly() {
    // Issue 13, item 16: the default topology was relative to the working directory; ONNX
    // Runtime printed ~86 INFO lines and a CUDA WARN on every start of a CPU-only machine.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = weir()
        .current_dir(elsewhere.path())
        .env("ORT_DYLIB_PATH", repo().join(".ort/libonnxruntime.so"))
        .env_remove("WEIR_LOG")
        .args([
            "bench-features",
            "--events",
            "2000",
            "--customers",
            "50",
            "--terminals",
            "100",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("events/s"));
    let out = weir()
        .env_remove("WEIR_LOG")
        .args(["check", "topologies/fraud-scoring.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        !err.contains("WARN") && !err.contains("ERROR"),
        "a CPU-only machine is the normal case:\n{err}"
    );
    assert!(err.lines().count() <= 2, "quiet start:\n{err}");
    let out = weir()
        .env_remove("WEIR_LOG")
        .args([
            "run",
            "--until-end",
            "--brokers",
            "127.0.0.1:1",
            "topologies/fraud-scoring.toml",
        ])
        .output()
        .unwrap();
    let err = stderr(&out);
    let model_lines = err.lines().filter(|l| l.contains("model loaded")).count();
    assert_eq!(model_lines, 1, "one INFO line names the provider:\n{err}");
    assert!(
        err.lines()
            .filter(|l| l.contains(" INFO ") && l.contains("ort"))
            .count()
            == 0,
        "{err}"
    );
}

#[test]
fn the_generator_fails_when_the_broker_refuses_records_and_realtime_labels_wait_until_due() {
    // Issue 13, item 15: `--realtime` stamped labels now + 7 days, nisshi refused them
    // (InvalidTimestamp) and the generator still exited 0.
    let broker = weir_tests::NisshiBroker::start();
    let b = broker.brokers.clone();
    let small = ["--days", "1", "--customers", "40", "--terminals", "80"];
    // Simulated days a month ahead: every record is stamped in the future and refused.
    let future =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(30 * 86_400)).to_string();
    let mut args = vec![
        "generate",
        "--brokers",
        &b,
        "--topic",
        "refused",
        "--labels-topic",
        "refused-labels",
        "--start",
        &future,
    ];
    args.extend(small);
    let out = run_weir(&args, Duration::from_secs(300));
    assert_eq!(
        out.status.code(),
        Some(2),
        "a generator that failed to deliver exits non-zero: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("not delivered"), "{}", stderr(&out));
    // Realtime: transactions now, labels only once due (never, within this run).
    let mut args = vec!["generate", "--brokers", &b, "--realtime", "--rate", "2000"];
    args.extend(small);
    let out = run_weir(&args, Duration::from_secs(300));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let sent: u64 = text
        .split("generated ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("summary: {text}"));
    assert!(sent > 0);
    let txs = weir_tests::read_topic(&b, "transactions", Duration::from_secs(60)).unwrap();
    assert_eq!(
        txs.len() as u64,
        sent,
        "every transaction the summary counts was delivered"
    );
    assert!(
        text.contains(&format!("0 labels ({sent} not yet due, not sent)")),
        "{text}"
    );
}
