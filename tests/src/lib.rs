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
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the repo").to_path_buf()
}

/// Path of the `weir` binary built in the same profile as this test.
///
/// # Panics
/// If it has not been built (run `cargo build --release -p weir-topologies --bin weir`, which
/// `make test` does).
pub fn weir_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/weir
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("weir")).expect("target dir");
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
    let child = weir().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn weir");
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
        Self { child, brokers, _dir: dir }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a topology file for `brokers` into `dir` using the repository's model, with `extra`
/// TOML appended to the `[source]` table; returns its path.
pub fn topology_file(dir: &Path, brokers: &str, group: &str, extra_source: &str, batching: &str) -> PathBuf {
    let model = repo().join("models/fraud/model.onnx");
    let text = format!(
        r#"
[topology]
name = "e2e"
workers = 2

[source]
brokers = "{brokers}"
topic = "transactions"
group_id = "{group}"
commit_interval = "100ms"
{extra_source}

[source.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"

[model]
path = "{}"
version = "fraud-raw-v1"
features = ["amount", "tx_hour", "tx_during_weekend", "tx_during_night"]

[batching]
{batching}
"#,
        model.display()
    );
    let path = dir.join("topology.toml");
    std::fs::write(&path, text).expect("write topology");
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
