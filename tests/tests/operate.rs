//! What operators do while weir runs: change the micro-batch window live, sweep windows with
//! `weir tune`, and deploy with the repository's docker-compose file.

use std::time::Duration;

use weir_tests::{sample_sum, topology_file, wait_metrics};

fn set_batching(path: &std::path::Path, batching: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("[batching]\n").unwrap() + "[batching]\n".len();
    let end = start + text[start..].find("\n[").unwrap();
    let new = format!(
        "{}{batching}\nmax_inflight_batches = 4\n{}",
        &text[..start],
        &text[end..]
    );
    // Write then rename, as editors do, so that the reloader never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, new).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// (batches, rows) from the `weir_batch_rows` histogram.
fn batch_totals(body: &str) -> (f64, f64) {
    (
        sample_sum(body, "weir_batch_rows_count"),
        sample_sum(body, "weir_batch_rows_sum"),
    )
}

#[test]
fn editing_the_window_of_a_running_topology_changes_its_batches_and_scores_each_event_once() {
    let broker =
        weir_tests::BrokerProcess::start(&["transactions:4", "fraud-labels:4", "scores:4", "transactions-dlq:1"]);
    let dir = tempfile::tempdir().unwrap();
    let path = topology_file(
        dir.path(),
        &broker.brokers,
        "reload",
        "",
        "max_batch_rows = 8\nmax_wait = \"200ms\"\nmax_inflight_batches = 4",
    );
    let port = weir_tests::free_port();
    // One worker: one consumer in the group, so no rebalance re-reads events at start (that is
    // at-least-once, and this test checks that a reload neither drops nor repeats any).
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""), 1)
        .replacen("workers = 2", "workers = 1", 1);
    std::fs::write(&path, text).unwrap();
    let mut run = Guard(Some(
        weir_tests::weir()
            .args(["run", path.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    wait_metrics(port, Duration::from_secs(60), "the endpoint", |b| {
        b.contains("weir_batch_window_max_rows")
    });
    // Live traffic: ~2,000 transactions/s stamped with the wall clock, for about 8 s.
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

    // Phase 1: batches of at most 8 rows.
    let before = wait_metrics(port, Duration::from_secs(60), "1,500 scores", |b| {
        sample_sum(b, "weir_sink_scores_total") >= 1500.0
    });
    let (b1, r1) = batch_totals(&before);

    // An invalid edit is rejected and the window kept.
    set_batching(&path, "max_batch_rows = 0\nmax_wait = \"100ms\"");
    let body = wait_metrics(port, Duration::from_secs(5), "the rejected reload", |b| {
        b.lines()
            .any(|l| l.starts_with("weir_config_reloads_total{") && l.contains("rejected") && l.ends_with(" 1"))
    });
    assert_eq!(sample_sum(&body, "weir_batch_window_max_rows"), 8.0, "window kept");

    // A valid edit applies (the reloader polls the file about once a second; a loaded machine
    // may take longer, so wait for the condition rather than timing it).
    set_batching(&path, "max_batch_rows = 1024\nmax_wait = \"100ms\"");
    let at_change = wait_metrics(port, Duration::from_secs(60), "the applied reload", |b| {
        sample_sum(b, "weir_batch_window_max_rows") == 1024.0
    });
    assert!((sample_sum(&at_change, "weir_batch_window_max_wait_seconds") - 0.1).abs() < 1e-9);
    let (b2, r2) = batch_totals(&at_change);

    let gen = weir_tests::wait_with_timeout(generator.take(), Duration::from_secs(120));
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    let n: f64 = weir_tests::watermarks(&broker.brokers, "transactions", Duration::from_secs(10))
        .unwrap()
        .iter()
        .map(|(_, lo, hi)| (hi - lo) as f64)
        .sum();
    let after = wait_metrics(port, Duration::from_secs(60), "every transaction scored", |b| {
        sample_sum(b, "weir_sink_scores_total") >= n
    });
    let (b3, r3) = batch_totals(&after);
    weir_tests::sigterm(run.0.as_ref().unwrap());
    let out = weir_tests::wait_with_timeout(run.take(), Duration::from_secs(60));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("micro-batch window reloaded"),
        "the change is logged:\n{log}"
    );
    assert!(log.contains("reload rejected"), "the rejection is logged:\n{log}");

    let mean_before = r1 / b1;
    let mean_after = (r3 - r2) / (b3 - b2);
    eprintln!(
        "mean batch rows: {mean_before:.1} with max_batch_rows = 8, {mean_after:.1} after the reload; \
         {n} transactions"
    );
    assert!(mean_before <= 8.0, "{mean_before}");
    assert!(mean_after > 4.0 * mean_before, "{mean_before} -> {mean_after}");

    // Every transaction scored exactly once.
    let scores = weir_tests::scores_by_tx(&broker.brokers, "scores");
    assert_eq!(scores.len() as f64, n, "every transaction scored");
    let repeated: Vec<_> = scores.iter().filter(|(_, c)| **c != 1).collect();
    assert!(
        repeated.is_empty(),
        "scored more than once: {:?}",
        &repeated[..repeated.len().min(10)]
    );
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
fn tune_sweeps_windows_over_a_recording_and_recommends_one_within_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("recording.jsonl");
    let out = weir_tests::run_weir(
        &[
            "generate",
            "--out",
            recording.to_str().unwrap(),
            "--days",
            "4",
            "--customers",
            "500",
            "--terminals",
            "1000",
        ],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let topology = weir_tests::repo().join("topologies/fraud-scoring.toml");
    let results = dir.path().join("tune");
    let out = weir_tests::run_weir(
        &[
            "tune",
            topology.to_str().unwrap(),
            "--input",
            recording.to_str().unwrap(),
            "--max-batch-rows",
            "16,512",
            "--max-wait",
            "1ms,50ms",
            "--events",
            "3000",
            "--prime",
            "200",
            "--rate",
            "4000",
            "--p99",
            "40ms",
            "--out",
            results.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");

    let csv = std::fs::read_to_string(results.join("tune.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    let grid: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(grid, [("16", "1"), ("16", "50"), ("512", "1"), ("512", "50")], "{csv}");
    let num = |r: &[&str], i: usize| r[i].parse::<f64>().unwrap();
    for r in &rows {
        assert!(
            num(r, 4) > 0.0 && num(r, 4) <= 1.05 * num(r, 3),
            "throughput within what was offered: {r:?}"
        );
        assert!(num(r, 5) <= num(r, 6), "p50 <= p99: {r:?}");
        assert!(
            num(r, 7) >= 1.0 && num(r, 7) <= num(r, 0),
            "mean batch rows within max_batch_rows: {r:?}"
        );
        assert_eq!(r[8] == "true", num(r, 6) <= 40.0, "meets_p99_target matches p99: {r:?}");
    }
    // A 50 ms wait fills larger batches than a 1 ms one with room for 512 rows.
    assert!(num(&rows[3], 7) > num(&rows[2], 7), "{csv}");
    // The recommendation: the highest throughput among the settings within the target.
    let meeting: Vec<&Vec<&str>> = rows.iter().filter(|r| r[8] == "true").collect();
    let recommended: Vec<&Vec<&str>> = rows.iter().filter(|r| r[9] == "true").collect();
    if meeting.is_empty() {
        assert!(
            recommended.is_empty() && stdout.contains("No setting meets"),
            "{stdout}"
        );
    } else {
        assert_eq!(recommended.len(), 1, "{csv}");
        // The highest throughput within the target; within 2% of it, the lowest p99.
        let best = meeting.iter().map(|r| num(r, 4)).fold(0.0, f64::max);
        assert!(num(recommended[0], 4) >= 0.98 * best, "{csv}");
        let tied_p99 = meeting
            .iter()
            .filter(|r| num(r, 4) >= 0.98 * best)
            .map(|r| num(r, 6))
            .fold(f64::MAX, f64::min);
        assert_eq!(num(recommended[0], 6), tied_p99, "{csv}");
        assert!(
            stdout.contains(&format!("Recommended: max_batch_rows = {}", recommended[0][0])),
            "{stdout}"
        );
    }
    let md = std::fs::read_to_string(results.join("tune.md")).unwrap();
    assert_eq!(
        md.lines()
            .filter(|l| l.starts_with("| 16 |") || l.starts_with("| 512 |"))
            .count(),
        4,
        "{md}"
    );
    let svg = std::fs::read_to_string(results.join("tune.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "an SVG");
    for label in ["16/1ms", "16/50ms", "512/1ms", "512/50ms"] {
        assert!(svg.contains(label), "the plot labels {label}");
    }
}

/// The `weir_*` metric names weir exports (declared in core/src/metrics.rs).
fn exported_metrics() -> std::collections::BTreeSet<String> {
    let src = std::fs::read_to_string(weir_tests::repo().join("core/src/metrics.rs")).unwrap();
    src.split('"')
        .filter(|s| {
            s.starts_with("weir_")
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

fn yaml(path: &std::path::Path) -> serde_norway::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strings(v: &serde_norway::Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// The value following `flag` in a command line.
fn flag(args: &[String], flag: &str) -> Option<String> {
    args.iter().position(|a| a == flag).map(|i| args[i + 1].clone())
}

#[test]
fn the_compose_file_names_only_files_ports_and_topologies_that_exist_and_agree() {
    let repo = weir_tests::repo();
    let compose = yaml(&repo.join("docker-compose.yml"));
    let services = compose["services"].as_mapping().expect("services");
    let service = |name: &str| &compose["services"][name];
    for name in ["kafka", "weir", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "service {name}");
    }

    // Kafka: the official image in KRaft mode, one broker.
    let kafka = service("kafka");
    assert!(kafka["image"].as_str().unwrap().starts_with("apache/kafka:"));
    assert_eq!(
        kafka["environment"]["KAFKA_PROCESS_ROLES"].as_str(),
        Some("broker,controller")
    );
    // Two listeners: kafka:9092 for the containers, localhost:29092 (published) for the host.
    let kafka_port = "9092";
    let advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].as_str().unwrap();
    assert!(advertised.contains(&format!("//kafka:{kafka_port}")), "{advertised}");
    assert!(advertised.contains("//localhost:29092"), "{advertised}");
    let listeners = kafka["environment"]["KAFKA_LISTENERS"].as_str().unwrap();
    assert!(
        listeners.contains(":29092") && listeners.contains(&format!(":{kafka_port}")),
        "{listeners}"
    );
    assert!(strings(&kafka["ports"]).contains(&"29092:29092".to_string()));
    // The image is built once: one service builds it, the other runs it without pulling.
    let builders: Vec<&str> = services
        .iter()
        .filter(|(_, s)| !s["build"].is_null())
        .map(|(n, _)| n.as_str().unwrap())
        .collect();
    assert_eq!(builders, ["weir"], "one build");
    assert_eq!(service("generator")["image"], service("weir")["image"]);
    assert_eq!(service("generator")["pull_policy"].as_str(), Some("never"));

    // Every bind mount's source exists in the repository, and `build: .` has a Dockerfile.
    let mut mounts = Vec::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        for m in strings(&svc["volumes"]) {
            let source = m.split(':').next().unwrap().to_string();
            assert!(
                source.starts_with("./"),
                "{name}: bind mounts are repository paths: {m}"
            );
            assert!(
                repo.join(&source).exists(),
                "{name} mounts {source}, which is not in the repository"
            );
            mounts.push((name.to_string(), m));
        }
        if let Some(ctx) = svc["build"].as_str() {
            assert!(
                repo.join(ctx).join("Dockerfile").exists(),
                "{name}: build context {ctx} has a Dockerfile"
            );
        }
    }
    let dockerfile = std::fs::read_to_string(repo.join("Dockerfile")).unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        for src in line
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .split_last()
            .unwrap()
            .1
        {
            assert!(
                repo.join(src).exists(),
                "Dockerfile copies {src}, which is not in the repository"
            );
        }
    }
    assert!(
        dockerfile.contains("WORKDIR /weir"),
        "the topology paths below are relative to /weir"
    );

    // weir runs a topology of the repository against the compose broker, with its metrics port
    // published; the mounted topology file is that same file (live reload from the host).
    let weir = service("weir");
    let args = strings(&weir["command"]);
    assert_eq!(args[0], "run");
    let topology = repo.join(&args[1]);
    let check = weir_tests::run_weir(&["check", topology.to_str().unwrap()], Duration::from_secs(60));
    assert!(
        check.status.success(),
        "{}: {}",
        args[1],
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(flag(&args, "--brokers"), Some(format!("kafka:{kafka_port}")));
    let listen = flag(&args, "--metrics-listen").expect("weir serves metrics");
    let metrics_port = listen.rsplit(':').next().unwrap().to_string();
    assert!(strings(&weir["ports"]).contains(&format!("{metrics_port}:{metrics_port}")));
    // The topology's directory is mounted (not the file: an editor that replaces the file would
    // leave a file mount on the old inode and live reload would never see the edit).
    let dir = std::path::Path::new(&args[1])
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        mounts
            .iter()
            .any(|(s, m)| s == "weir" && *m == format!("./{dir}:/weir/{dir}:ro")),
        "{mounts:?}"
    );
    // Healthy while /readyz answers ready, on the metrics port; the image has curl for it.
    let health = strings(&weir["healthcheck"]["test"]).join(" ");
    assert!(health.contains(&format!("localhost:{metrics_port}/readyz")), "{health}");
    assert!(
        dockerfile.contains(" curl"),
        "the image installs curl for the healthcheck"
    );

    // The topics the topology reads and writes are the ones created, and the generator writes.
    let text = std::fs::read_to_string(&topology).unwrap();
    let cfg: toml::Table = toml::from_str(&text).unwrap();
    let topic = |section: &str| cfg[section]["topic"].as_str().unwrap().to_string();
    let init = strings(&service("kafka-init")["command"]).join(" ");
    for t in [topic("source"), topic("labels"), topic("sink"), topic("dead_letter")] {
        assert!(init.contains(&format!("{t}:")), "kafka-init creates {t}: {init}");
    }
    let gen = strings(&service("generator")["command"]);
    assert_eq!(flag(&gen, "--brokers"), Some(format!("kafka:{kafka_port}")));
    assert_eq!(flag(&gen, "--topic"), Some(topic("source")));
    assert_eq!(flag(&gen, "--labels-topic"), Some(topic("labels")));

    // Prometheus scrapes weir's metrics port.
    let prom_mount = mounts
        .iter()
        .find(|(s, _)| s == "prometheus")
        .expect("prometheus config")
        .1
        .clone();
    let prom_dir = repo.join(prom_mount.split(':').next().unwrap());
    assert!(
        prom_dir.is_dir(),
        "the prometheus config directory is mounted: {prom_mount}"
    );
    assert!(prom_mount.contains(":/etc/prometheus"), "{prom_mount}");
    let prom = yaml(&prom_dir.join("prometheus.yml"));
    for f in strings(&prom["rule_files"]) {
        assert!(prom_dir.join(&f).exists(), "rule file {f}");
    }
    assert!(strings(&prom["rule_files"]).contains(&"alerts.yml".to_string()));
    let targets: Vec<String> = prom["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s["static_configs"]
                .as_sequence()
                .unwrap()
                .iter()
                .flat_map(|c| strings(&c["targets"]))
        })
        .collect();
    // The single process and the `cluster` profile's processes, each on the port it listens on.
    let mut want = vec![format!("weir:{metrics_port}")];
    for name in ["weir-0", "weir-1"] {
        let cmd = strings(&service(name)["command"]);
        let listen = cmd
            .iter()
            .skip_while(|a| *a != "--metrics-listen")
            .nth(1)
            .expect("--metrics-listen");
        want.push(format!("{name}:{}", listen.rsplit(':').next().unwrap()));
        assert!(strings(&service(name)["profiles"]).contains(&"cluster".to_string()));
    }
    assert_eq!(targets, want);
    let prom_port = "9090";
    assert!(strings(&service("prometheus")["ports"]).contains(&format!("{prom_port}:{prom_port}")));

    // Grafana: provisioning mounted where Grafana reads it; the datasource is the Prometheus
    // service; the dashboard provider's path is where the dashboards are mounted.
    let grafana_mounts: Vec<(String, String)> = mounts
        .iter()
        .filter(|(s, _)| s == "grafana")
        .map(|(_, m)| {
            let mut p = m.split(':');
            (p.next().unwrap().to_string(), p.next().unwrap().to_string())
        })
        .collect();
    let host_of = |container: &str| {
        grafana_mounts
            .iter()
            .find(|(_, c)| c == container)
            .map(|(h, _)| repo.join(h))
            .unwrap_or_else(|| panic!("grafana mounts {container}: {grafana_mounts:?}"))
    };
    let provisioning = host_of("/etc/grafana/provisioning");
    let ds = yaml(&provisioning.join("datasources/prometheus.yml"));
    assert_eq!(
        ds["datasources"][0]["url"].as_str(),
        Some(format!("http://prometheus:{prom_port}").as_str())
    );
    // The dashboard imports into any Grafana: its datasource is a variable of the provisioned
    // datasource's type, not a fixed uid.
    let ds_type = ds["datasources"][0]["type"].as_str().unwrap().to_string();
    let provider = yaml(&provisioning.join("dashboards/weir.yml"));
    let dash_dir = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let dashboards = host_of(&dash_dir);

    // The dashboard: valid JSON, the panels the issue names, every query on the provisioned
    // datasource, and every metric it queries is one weir exports.
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboards.join("weir.json")).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == ds_type.as_str()),
        "a datasource variable: {vars:?}"
    );
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"]["uid"].as_str(), Some("${datasource}"));
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in ["Throughput", "latency", "batch rows", "lag", "Backpressure"] {
        assert!(
            titles.iter().any(|t| t.to_lowercase().contains(&want.to_lowercase())),
            "a panel for {want}: {titles:?}"
        );
    }
    let exported = exported_metrics();
    assert!(exported.contains("weir_consumer_lag_messages"), "{exported:?}");
    let mut used = std::collections::BTreeSet::new();
    for p in panels {
        assert_eq!(p["datasource"]["uid"].as_str(), Some("${datasource}"), "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"].as_str(), Some("${datasource}"), "{}", p["title"]);
            if p["type"] == "table" {
                assert_eq!(
                    t["instant"], true,
                    "a table panel reads instant queries: {}",
                    p["title"]
                );
            }
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("weir_") {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s).filter(|b| exported.contains(*b)))
                        .unwrap_or(word);
                    assert!(
                        exported.contains(base),
                        "the dashboard queries {word}, which weir does not export"
                    );
                    used.insert(base.to_string());
                }
            }
        }
    }
    assert!(
        used.contains("weir_end_to_end_latency_seconds") && used.contains("weir_batch_rows"),
        "{used:?}"
    );
    // Also the dashboard's p50/p99 quantiles.
    let all = serde_json::to_string(&dash).unwrap();
    assert!(all.contains("histogram_quantile(0.5") && all.contains("histogram_quantile(0.99"));

    // `docker-compose config` validates the file (Debian's docker-compose; `make test`'s set-up
    // installs it where it can).
    match std::process::Command::new("docker-compose")
        .current_dir(&repo)
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "docker-compose config: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!(
            "\n!!! SKIPPED: `docker-compose config` (docker-compose not installed: {e}); install it with `apt-get install docker-compose` !!!\n"
        ),
    }
}

/// The Kubernetes example of a cluster (deploy/kubernetes/weir-cluster.yaml): its `--peers` are
/// the StatefulSet's pods through its headless service, one per replica, on the port the pods
/// expose; the process index is the pod's ordinal.
#[test]
fn the_kubernetes_cluster_example_names_one_peer_per_replica() {
    let path = weir_tests::repo().join("deploy/kubernetes/weir-cluster.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<serde_norway::Value> = text
        .split("\n---\n")
        .map(|d| serde_norway::from_str(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect();
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("a {k}"));
    let (set, service) = (kind("StatefulSet"), kind("Service"));
    assert_eq!(set["spec"]["serviceName"], service["metadata"]["name"]);
    assert_eq!(
        service["spec"]["clusterIP"].as_str(),
        Some("None"),
        "a headless service"
    );
    let replicas = set["spec"]["replicas"].as_u64().unwrap();
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let args = strings(&container["args"]).join(" ");
    let peers: Vec<&str> = args
        .split_whitespace()
        .skip_while(|a| *a != "--peers")
        .nth(1)
        .expect("--peers")
        .split(',')
        .collect();
    assert_eq!(peers.len() as u64, replicas, "one peer per replica: {peers:?}");
    let name = set["metadata"]["name"].as_str().unwrap();
    let svc = service["metadata"]["name"].as_str().unwrap();
    let ports: Vec<u64> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    for (i, p) in peers.iter().enumerate() {
        let (host, port) = p.rsplit_once(':').unwrap();
        assert_eq!(host, format!("{name}-{i}.{svc}"), "peer {i} is pod {i}");
        assert!(ports.contains(&port.parse().unwrap()), "the pods expose {port}");
    }
    assert!(
        args.contains("--process \"${HOSTNAME##*-}\""),
        "the ordinal is the process: {args}"
    );
    assert_eq!(set["spec"]["podManagementPolicy"].as_str(), Some("Parallel"));
}
