//! weir under a real Prometheus (Debian's `prometheus` package; `make test`'s set-up installs it
//! where it can): it scrapes a running `weir run` fed live traffic, and every expression of the
//! Grafana dashboard and of the alerting rules (`deploy/prometheus/alerts.yml`) returns data
//! through Prometheus's query API; a malformed event shows in `rate(weir_dead_letters_total[1m])`
//! and fires the dead-letter alert; `promtool check metrics` finds nothing to lint in a scrape.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_connectors::kafka::admin::BulkProducer;
use weir_tests::{free_port, http10_get, http_get, repo, topology_file, weir, BrokerProcess};

/// `prometheus` (or `$PROMETHEUS_BIN`), if installed.
fn prometheus_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PROMETHEUS_BIN") {
        return Some(PathBuf::from(p));
    }
    Command::new("prometheus")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("prometheus"))
}

/// The instant query `expr`'s result vector (panics on a query error: the expression is wrong).
fn query(port: u16, expr: &str) -> Vec<serde_json::Value> {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let path = format!("/api/v1/query?query={}", utf8_percent_encode(expr, NON_ALPHANUMERIC));
    let (status, body) = http10_get(port, &path).unwrap_or_else(|| panic!("Prometheus did not answer {expr}"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{expr}: {e}: {body}"));
    assert_eq!(status, 200, "{expr}: {body}");
    assert_eq!(v["status"], "success", "{expr}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Waits (up to `timeout`) until `expr` returns data; returns it.
fn wait_for_data(port: u16, expr: &str, timeout: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = query(port, expr);
        if !r.is_empty() {
            return r;
        }
        assert!(Instant::now() < deadline, "no data in {timeout:?} for: {expr}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `expr` of an alert rule without its final comparison (`SIGNAL OP THRESHOLD`, as
/// alerts.yml writes every rule).
fn signal(expr: &str) -> &str {
    let expr = expr.trim();
    let i = [" > ", " < ", " == ", " >= ", " <= ", " != "]
        .iter()
        .filter_map(|op| expr.rfind(op))
        .max()
        .unwrap_or_else(|| panic!("not SIGNAL OP THRESHOLD: {expr}"));
    &expr[..i]
}

fn dashboard_exprs(path: &Path, topology: &str) -> Vec<(String, String)> {
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap().replace("$topology", topology);
            out.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str().and_then(|q| q.strip_prefix("label_values(")) {
            // label_values(METRIC, LABEL): the variable's values come from METRIC.
            let metric = q.split(',').next().unwrap().trim();
            out.push((format!("variable {}", v["name"]), metric.to_string()));
        }
    }
    out
}

#[test]
fn a_real_prometheus_scrapes_weir_and_every_dashboard_and_alert_expression_returns_data() {
    let Some(prometheus) = prometheus_bin() else {
        eprintln!(
            "\n!!! SKIPPED: the real-Prometheus test: `prometheus` is not installed and could not be \
             (`apt-get install prometheus` needs root); set PROMETHEUS_BIN or install it !!!\n"
        );
        return;
    };
    let repo = repo();
    let broker = BrokerProcess::start(&["transactions:4", "fraud-labels:4", "scores:4", "transactions-dlq:1"]);
    let dir = tempfile::tempdir().unwrap();

    // Live traffic, stamped with the wall clock, for longer than the test runs (killed at the end).
    let _generator = Killed(
        weir()
            .args([
                "generate",
                "--brokers",
                &broker.brokers,
                "--days",
                "60",
                "--customers",
                "500",
            ])
            .args(["--terminals", "1000", "--rate", "300", "--realtime"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let path = topology_file(dir.path(), &broker.brokers, "prometheus", "", "");
    let metrics_port = free_port();
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "listen = \"\"",
        &format!("listen = \"127.0.0.1:{metrics_port}\""),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let _weir = Killed(
        weir()
            .args(["run", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("weir.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    // Prometheus, scraping every second, evaluating the shipped alerting rules every second.
    let prom_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: weir\n    static_configs:\n      - targets: [\"127.0.0.1:{metrics_port}\"]\n",
            repo.join("deploy/prometheus/alerts.yml").display()
        ),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while http10_get(prom_port, "/-/ready").map(|r| r.0) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not become ready:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let long = Duration::from_secs(180);
    // weir is scraped and scoring.
    wait_for_data(prom_port, "weir_ready == 1", long);
    wait_for_data(prom_port, "weir_sink_scores_total > 0", long);

    // promtool finds nothing to lint in a scrape.
    let (_, scrape) = http_get(metrics_port, "/metrics").expect("a scrape");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool comes with prometheus");
    promtool.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let lint = promtool.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // Every dashboard expression returns data.
    let topology = "fraud-scoring";
    for (panel, expr) in dashboard_exprs(&repo.join("deploy/grafana/dashboards/weir.json"), topology) {
        let r = wait_for_data(prom_port, &expr, long);
        eprintln!("dashboard {panel}: {expr} -> {} series", r.len());
    }
    // Every alert rule's signal returns data (its threshold is what the traffic decides).
    let rules: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(repo.join("deploy/prometheus/alerts.yml")).unwrap()).unwrap();
    let mut alerts = BTreeMap::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap().to_string();
            let expr = rule["expr"].as_str().unwrap().to_string();
            let r = wait_for_data(prom_port, signal(&expr), long);
            eprintln!("alert {name}: {} -> {} series", signal(&expr), r.len());
            alerts.insert(name, expr);
        }
    }
    for want in [
        "WeirConsumerLagGrowing",
        "WeirDeadLetters",
        "WeirBrokerUnreachable",
        "WeirNotReady",
        "WeirMemoryNearLimit",
        "WeirExecutionProviderFallback",
    ] {
        assert!(alerts.contains_key(want), "alert {want}: {alerts:?}");
    }

    // No dead letter so far; the series exist at 0 from start-up, so that the first malformed
    // event shows as an increase.
    let letters = query(prom_port, "sum(weir_dead_letters_total)");
    assert_eq!(letters[0]["value"][1], "0", "{letters:?}");
    assert!(query(prom_port, "ALERTS{alertname=\"WeirDeadLetters\"}").is_empty());
    let producer = BulkProducer::new(&broker.brokers, &BTreeMap::new()).unwrap();
    producer
        .send("transactions", Some(b"malformed"), b"{not json", None)
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    let r = wait_for_data(
        prom_port,
        "sum by (reason) (rate(weir_dead_letters_total{reason=\"json\"}[1m])) > 0",
        long,
    );
    eprintln!("first malformed event: {r:?}");
    let fired = wait_for_data(
        prom_port,
        "ALERTS{alertname=\"WeirDeadLetters\",alertstate=\"firing\",reason=\"json\"}",
        long,
    );
    eprintln!("fired: {fired:?}");
    drop(broker);
}
