//! Helpers for end-to-end tests: the `weir` binary, a broker process, topology files.
//!
//! The tests run the release binary (`make test` builds it first): they exercise what a user
//! runs, including process crashes and signals.
#![deny(missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use weir_connectors::kafka::admin::{read_topic, watermarks, ConsumedRecord};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repo")
        .to_path_buf()
}

/// Path of the `weir` binary built in the same profile as this test.
///
/// # Panics
/// If it has not been built (run `cargo build --release -p weir-tools --bin weir`, which
/// `make test` does).
pub fn weir_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/weir
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("weir"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "`{}` not found: build it first with `cargo build --release -p weir-tools --bin weir` (make test does)",
        bin.display()
    );
    bin
}

/// A `weir` command with the repository as working directory and ONNX Runtime's library set.
pub fn weir() -> Command {
    let mut c = Command::new(weir_bin());
    c.current_dir(repo());
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        c.env("ORT_DYLIB_PATH", repo().join(".ort/libonnxruntime.so"));
    }
    c
}

/// Runs `weir args...` to completion (with a timeout) and returns its output.
///
/// # Panics
/// If it cannot start or runs longer than `timeout`.
pub fn run_weir(args: &[&str], timeout: Duration) -> Output {
    let child = weir()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    wait_with_timeout(child, timeout)
}

/// Waits for `child` up to `timeout`, killing it (and panicking) after that.
///
/// # Panics
/// On timeout.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "process timed out after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An embedded broker in its own process (`weir broker`), killed on drop.
pub struct BrokerProcess {
    child: Child,
    /// Bootstrap servers.
    pub brokers: String,
    _dir: tempfile::TempDir,
}

impl BrokerProcess {
    /// Starts `weir broker` with `topics` (`name:partitions`).
    ///
    /// # Panics
    /// If it does not come up within 30 s.
    pub fn start(topics: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("bootstrap");
        let child = weir()
            .args(["broker", "--topics", &topics.join(","), "--bootstrap-file"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn weir broker");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !file.exists() {
            assert!(Instant::now() < deadline, "weir broker did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        let brokers = std::fs::read_to_string(&file).expect("bootstrap file");
        Self {
            child,
            brokers,
            _dir: dir,
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nisshi binary: `$NISSHI_BIN` (set by `make test`), else `~/.cache/weir/nisshi-0.8.1/bin/nisshi`,
/// else `nisshi` on the `PATH`.
pub fn nisshi_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("NISSHI_BIN") {
        return PathBuf::from(b);
    }
    let cached = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/weir/nisshi-0.8.1/bin/nisshi"))
        .filter(|p| p.exists());
    cached.unwrap_or_else(|| PathBuf::from("nisshi"))
}

/// A free TCP port on 127.0.0.1 (bound, then released), below Linux's ephemeral range
/// (32768-60999), so that an outgoing connection cannot take it between this call and the
/// server's bind; each call of a test process takes the next port from a start that depends on
/// the process id, so parallel tests (and test binaries) do not pick the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() * 61) % 10_000,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..2_000 {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (20_000 + (p - 20_000) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// A real Kafka-compatible broker: a nisshi process on a free port, killed on drop. Storage is in
/// memory, or sqlite in its own directory (survives [`NisshiBroker::restart`]).
pub struct NisshiBroker {
    child: Option<Child>,
    port: u16,
    sqlite: bool,
    dir: tempfile::TempDir,
    /// Bootstrap servers, `127.0.0.1:<port>`.
    pub brokers: String,
}

impl NisshiBroker {
    /// Starts nisshi with in-memory storage.
    ///
    /// # Panics
    /// If nisshi is missing (run `make nisshi`) or does not accept connections within 30 s.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts nisshi with sqlite storage (kill/restart tests).
    ///
    /// # Panics
    /// As [`NisshiBroker::start`].
    pub fn start_sqlite() -> Self {
        Self::start_with(true)
    }

    fn start_with(sqlite: bool) -> Self {
        let port = free_port();
        let mut b = Self {
            child: None,
            port,
            sqlite,
            dir: tempfile::tempdir().expect("temp dir"),
            brokers: format!("127.0.0.1:{port}"),
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let storage = if self.sqlite {
            "sqlite://nisshi.db"
        } else {
            "memory://nisshi/"
        };
        let log = std::fs::File::create(self.dir.path().join("nisshi.log")).expect("log file");
        let child = Command::new(nisshi_bin())
            .current_dir(self.dir.path())
            .args(["broker", "--cluster-id", "weir-test", "--listener-url", &url])
            .args([
                "--advertised-listener-url",
                &url,
                "--group-initial-rebalance-delay",
                "100ms",
            ])
            .args(["--storage-engine", storage])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nisshi (`{}`): {e}; install it with `make nisshi`",
                    nisshi_bin().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nisshi did not accept connections within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port (and, with sqlite, the same data).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NisshiBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a topology file for `brokers` into `dir`: the repository's
/// `topologies/fraud-scoring.toml` (its features and model) with the brokers, group, a 100 ms
/// commit interval, test-friendly consumer timeouts, `extra_source` lines added to `[source]` and
/// `batching` lines replacing the `[batching]` table's body. Returns its path.
pub fn topology_file(dir: &Path, brokers: &str, group: &str, extra_source: &str, batching: &str) -> PathBuf {
    topology_file_of("fraud-scoring.toml", dir, brokers, group, extra_source, batching)
}

/// As [`topology_file`], from the shipped topology `topologies/<name>` (its model path made
/// absolute).
pub fn topology_file_of(
    name: &str,
    dir: &Path,
    brokers: &str,
    group: &str,
    extra_source: &str,
    batching: &str,
) -> PathBuf {
    let base = std::fs::read_to_string(repo().join("topologies").join(name)).expect("a shipped topology");
    let mut out = String::new();
    let mut section = String::new();
    for line in base.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed.to_string();
            out.push_str(line);
            out.push('\n');
            match section.as_str() {
                "[source]" => {
                    out.push_str(&format!("brokers = \"{brokers}\"\ngroup_id = \"{group}\"\ncommit_interval = \"100ms\"\n{extra_source}\n"));
                }
                "[source.properties]" => {
                    out.push_str("\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n")
                }
                "[batching]" => out.push_str(&format!("{batching}\n")),
                _ => {}
            }
            continue;
        }
        let key = trimmed.split('=').next().unwrap_or("").trim();
        let replaced = match (section.as_str(), key) {
            ("[source]", "brokers" | "group_id" | "commit_interval") => true,
            ("[source]", k)
                if extra_source
                    .lines()
                    .any(|l| l.split('=').next().unwrap_or("").trim() == k) =>
            {
                true
            }
            ("[batching]", k) if !k.is_empty() && !k.starts_with('#') => !batching.trim().is_empty(),
            _ => false,
        };
        if replaced {
            continue;
        }
        if section == "[model]" && key == "path" {
            let rel = trimmed.split('"').nth(1).expect("a quoted model path");
            // Relative to topologies/: `../models/...` is the repository's `models/...`.
            let model = match rel.strip_prefix("../") {
                Some(r) => repo().join(r),
                None => repo().join("topologies").join(rel),
            };
            out.push_str(&format!("path = \"{}\"\n", model.display()));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    let path = dir.join("topology.toml");
    std::fs::write(&path, out).expect("write topology");
    path
}

/// `tx_id -> number of score records` in `topic`.
///
/// # Panics
/// If the topic cannot be read or a record is not a score.
pub fn scores_by_tx(brokers: &str, topic: &str) -> HashMap<u64, usize> {
    let mut out = HashMap::new();
    for r in read_topic(brokers, topic, Duration::from_secs(120)).expect("read scores") {
        let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().expect("payload")).expect("json");
        *out.entry(v["tx_id"].as_u64().expect("tx_id")).or_insert(0) += 1;
    }
    out
}

/// Every `tx_id` in the transactions `topic` (malformed records skipped).
///
/// # Panics
/// If the topic cannot be read.
pub fn tx_ids(brokers: &str, topic: &str) -> Vec<u64> {
    read_topic(brokers, topic, Duration::from_secs(120))
        .expect("read transactions")
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(r.payload.as_deref()?).ok()?["tx_id"].as_u64())
        .collect()
}

/// Creates `topics` (`(name, partitions)`) on a real broker with Kafka's CreateTopics, kept
/// forever (`retention.ms = -1`). Topics that exist already are left as they are.
///
/// # Panics
/// If the broker refuses or does not answer within 30 s.
pub fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    weir_connectors::kafka::admin::create_topics(brokers, topics, Duration::from_secs(30)).expect("create topics");
}

/// Sends SIGTERM to `child` (a graceful shutdown request).
///
/// # Panics
/// If `kill` cannot be run.
pub fn sigterm(child: &Child) {
    signal(child, "-TERM");
}

/// Sends SIGINT to `child` (Ctrl-C).
///
/// # Panics
/// If `kill` cannot be run.
pub fn sigint(child: &Child) {
    signal(child, "-INT");
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {}", child.id());
}

/// `GET path` on `127.0.0.1:port` (HTTP/1.1, connection closed): `(status, body)`, or `None` if
/// nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    get(port, path, "HTTP/1.1", "Connection: close\r\n")
}

/// As [`http_get`] in HTTP/1.0: the body ends with the connection and is never chunked (a Go
/// server such as Prometheus chunks larger HTTP/1.1 bodies).
pub fn http10_get(port: u16, path: &str) -> Option<(u16, String)> {
    get(port, path, "HTTP/1.0", "")
}

fn get(port: u16, path: &str, version: &str, headers: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} {version}\r\nHost: 127.0.0.1\r\n{headers}\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

/// The samples of metric `name` (any labels) in Prometheus text `body`, summed.
pub fn sample_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `/metrics` on `127.0.0.1:port` every 50 ms until `done(body)`, and returns that body.
///
/// # Panics
/// With the last body, after `timeout`.
pub fn wait_metrics(port: u16, timeout: Duration, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let body = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One score record of a score topic.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRecord {
    /// The transaction.
    pub tx_id: u64,
    /// Source partition of the scored event.
    pub partition: i32,
    /// Source offset of the scored event.
    pub offset: i64,
    /// The score, as written (the shortest decimal of an `f32`, so equal values are equal bits).
    pub score: f64,
}

/// Every score record of `topic`, in partition and offset order of the score topic.
///
/// # Panics
/// If the topic cannot be read or a record is not a score.
pub fn score_records(brokers: &str, topic: &str) -> Vec<ScoreRecord> {
    read_topic(brokers, topic, Duration::from_secs(120))
        .expect("read scores")
        .iter()
        .map(|r| {
            let v: serde_json::Value =
                serde_json::from_slice(r.payload.as_deref().expect("payload")).expect("score json");
            ScoreRecord {
                tx_id: v["tx_id"].as_u64().expect("tx_id"),
                partition: v["partition"].as_i64().expect("partition") as i32,
                offset: v["offset"].as_i64().expect("offset"),
                score: v["score"].as_f64().expect("score"),
            }
        })
        .collect()
}

/// The committed offsets of `group` on `topic`, `partition -> offset` (partitions without a
/// commit left out).
///
/// # Panics
/// If the broker does not answer.
pub fn committed(brokers: &str, group: &str, topic: &str) -> std::collections::BTreeMap<i32, i64> {
    weir_connectors::kafka::admin::committed_offsets(brokers, group, topic, Duration::from_secs(30))
        .expect("committed offsets")
        .into_iter()
        .filter_map(|(p, o)| Some((p, o?)))
        .collect()
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`: resident now; `VmHWM`: the peak), or `None`
/// once the process is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
