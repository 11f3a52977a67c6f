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
/// If it has not been built (run `cargo build --release -p weir-topologies --bin weir`, which
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
        "`{}` not found: build it first with `cargo build --release -p weir-topologies --bin weir` (make test does)",
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

/// Writes a topology file for `brokers` into `dir`: the repository's
/// `topologies/fraud-scoring.toml` (its features and model) with the brokers, group, a 100 ms
/// commit interval, test-friendly consumer timeouts, `extra_source` lines added to `[source]` and
/// `batching` lines replacing the `[batching]` table's body. Returns its path.
pub fn topology_file(dir: &Path, brokers: &str, group: &str, extra_source: &str, batching: &str) -> PathBuf {
    let base = std::fs::read_to_string(repo().join("topologies/fraud-scoring.toml")).expect("fraud-scoring.toml");
    let model = repo().join("models/fraud/model.onnx");
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
