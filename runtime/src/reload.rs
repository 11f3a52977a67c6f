//! Live reload of the micro-batch window: editing `[batching]` in the topology file (or sending
//! SIGHUP) changes the window of the running topology within [`POLL_INTERVAL`] plus one
//! micro-batcher activation.
//!
//! The file is re-read every [`POLL_INTERVAL`] and compared byte for byte with the last version
//! seen (content, not modification time, whose resolution can hide two quick edits; the file is a
//! few kilobytes). A changed file is loaded and validated exactly as at start-up
//! ([`TopologyConfig::load`]):
//! - invalid (syntax, unknown field, `max_batch_rows = 0`, ...): rejected with the error naming
//!   the field, the running window is kept, `weir_config_reloads_total{result="rejected"}`;
//! - valid: `max_batch_rows` and `max_wait` are applied to the [`SharedWindow`] the
//!   micro-batchers read at each activation, the buffered-rows limit of backpressure follows
//!   (`2 * workers * max_batch_rows`), the change is logged with the old and new values,
//!   `weir_batch_window_max_rows` / `weir_batch_window_max_wait_seconds` show it, and
//!   `weir_config_reloads_total{result="applied"}` counts it.
//!
//! Only the window is live: a change anywhere else (including `[batching] max_inflight_batches`,
//! the capacity of the inference queue) is logged as needing a restart and otherwise ignored.
//! No event is dropped or repeated by a reload: the micro-batcher only changes where it cuts its
//! buffer.
//!
//! **Models** ([`Reloader::with_model_switch`]): a change of `[model]` (path, version, features,
//! input, output, execution providers) loads the new model beside the running one, one session
//! per inference thread, and validates it: it opens, its input width and `features` metadata
//! match `model.features`, and it scores a probe batch (zeros, ones) to finite values. Valid:
//! it is installed into the [`ModelSwitch`] and the threads take it between batches
//! (`weir_model_swaps_total{result="applied"}`, `weir_model_info` follows); invalid (missing,
//! corrupt, another width or feature order, NaN on the probe): rejected with the path and the
//! reason, the running model keeps scoring (`{result="rejected"}`). Going back to the previous
//! version takes its sessions back, which the threads kept: immediate, nothing loaded.
//!
//! A polling thread instead of a file-notification library: the check is one small read every
//! 250 ms, works the same on every file system (network mounts and editors that replace the file
//! included), and SIGHUP forces it at once.

use std::path::PathBuf;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weir_operators::inference::Scorer;
use weir_operators::model_switch::ModelSwitch;

use weir_core::periodic::Periodic;
use weir_core::{FlowControl, Metrics};
use weir_operators::micro_batch::{BatchWindow, SharedWindow};

use weir_topologies::TopologyConfig;

/// How often the topology file is re-read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Publishes `window` in the window gauges.
pub fn publish_window(metrics: &Metrics, window: BatchWindow) {
    metrics.window_max_rows.set(window.max_batch_rows as i64);
    metrics.window_max_wait.set(window.max_wait.as_secs_f64());
}

/// What a reload of the file did.
#[derive(Debug, Clone, PartialEq)]
pub enum ReloadOutcome {
    /// The window changed to this one.
    Applied(BatchWindow),
    /// The file is valid and the window is the same (other changes, if any, need a restart).
    Unchanged,
    /// The file is invalid; the message names the field.
    Rejected(String),
}

/// Watches a topology file and applies `[batching]` changes to a running topology.
pub struct Reloader {
    path: PathBuf,
    last_text: Option<Vec<u8>>,
    last_table: Option<toml::Table>,
    workers: usize,
    inflight_batches: usize,
    /// The running topology's window is the adaptive controller's (`max_wait = "auto"`).
    adaptive: bool,
    window: Arc<SharedWindow>,
    flow: Arc<FlowControl>,
    metrics: Arc<Metrics>,
    model: Option<ModelReload>,
}

/// What identifies the model a topology scores with.
#[derive(Debug, Clone, PartialEq)]
struct ModelKey {
    path: PathBuf,
    version: String,
    features: Vec<String>,
    input: Option<String>,
    output: Option<String>,
    providers: Vec<&'static str>,
}

impl ModelKey {
    fn of(cfg: &TopologyConfig) -> Self {
        Self {
            path: cfg.model_path(),
            version: cfg.model.version.clone(),
            features: cfg.model.features.clone(),
            input: cfg.model.input.clone(),
            output: cfg.model.output.clone(),
            providers: cfg.execution_providers().iter().map(|p| p.name()).collect(),
        }
    }
}

struct ModelReload {
    switch: Arc<ModelSwitch>,
    runtime: Option<PathBuf>,
    running: ModelKey,
}

/// Opens the model of `cfg` for every thread of `switch` and checks it scores a probe batch to
/// finite values (see the module doc).
///
/// # Errors
/// The reason, naming the path.
pub fn load_checked(cfg: &TopologyConfig, runtime: Option<PathBuf>) -> Result<Vec<Box<dyn Scorer>>, String> {
    let (mut scorers, _) = crate::runner::open_scorers(cfg, runtime).map_err(|e| e.to_string())?;
    let n = cfg.model.features.len();
    for s in &mut scorers {
        for fill in [0.0f32, 1.0] {
            let probe = ndarray::Array2::from_elem((8, n), fill);
            let scores = s
                .score(probe.view())
                .map_err(|e| format!("model `{}` fails on the probe batch: {e}", cfg.model_path().display()))?;
            if let Some(bad) = scores.iter().find(|v| !v.is_finite()) {
                return Err(format!(
                    "model `{}` scores the probe batch (all features {fill}) to {bad}, not a finite score",
                    cfg.model_path().display()
                ));
            }
        }
    }
    Ok(scorers)
}

impl Reloader {
    /// A reloader for the topology loaded from `path` as `cfg`, running with `window`.
    pub fn new(
        path: PathBuf,
        cfg: &TopologyConfig,
        window: Arc<SharedWindow>,
        flow: Arc<FlowControl>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let last_text = std::fs::read(&path).ok();
        let last_table = last_text.as_deref().and_then(|t| table_without(t, false));
        publish_window(&metrics, window.get());
        Self {
            path,
            last_text,
            last_table,
            workers: cfg.topology.workers,
            inflight_batches: cfg.batching.max_inflight_batches,
            adaptive: cfg.batching.adaptive,
            window,
            flow,
            metrics,
            model: None,
        }
    }

    /// Also hot-swaps the model (see the module doc): a valid `[model]` change is installed into
    /// `switch` (the inference threads' of the running topology), with ONNX Runtime at `runtime`
    /// (default: as at start-up).
    pub fn with_model_switch(
        mut self,
        cfg: &TopologyConfig,
        switch: Arc<ModelSwitch>,
        runtime: Option<PathBuf>,
    ) -> Self {
        self.model = Some(ModelReload {
            switch,
            runtime,
            running: ModelKey::of(cfg),
        });
        self.last_table = self.last_text.as_deref().and_then(|t| table_without(t, true));
        self
    }

    /// Applies a changed `[model]` of `cfg`, if hot swap is on.
    fn swap_model(&mut self, cfg: &TopologyConfig) {
        let Some(m) = self.model.as_mut() else { return };
        let key = ModelKey::of(cfg);
        if key == m.running {
            return;
        }
        let old = m.running.version.clone();
        let result = if m.switch.retired_version().as_deref() == Some(key.version.as_str())
            && m.switch.reinstate(&key.version)
        {
            Ok("the previous model's sessions, kept since the last swap")
        } else {
            load_checked(cfg, m.runtime.clone()).map(|scorers| {
                m.switch.install(scorers, &key.version);
                "loaded and checked on a probe batch"
            })
        };
        match result {
            Ok(how) => {
                self.metrics.model_swaps.with_label_values(&["applied"]).inc();
                self.metrics.model_info.with_label_values(&[old.as_str()]).set(0);
                self.metrics
                    .model_info
                    .with_label_values(&[key.version.as_str()])
                    .set(1);
                tracing::info!(
                    model = %key.path.display(),
                    version = %key.version,
                    previous = %old,
                    how,
                    "model swapped: the inference threads score with it from their next batch"
                );
                m.running = key;
            }
            Err(reason) => {
                self.metrics.model_swaps.with_label_values(&["rejected"]).inc();
                tracing::error!(
                    model = %key.path.display(),
                    version = %key.version,
                    running = %old,
                    reason = %reason,
                    "model swap rejected: the running model keeps scoring"
                );
            }
        }
    }

    /// Re-reads the file if it changed (or `force`, for SIGHUP) and applies a valid window.
    /// Returns `None` when the file did not change.
    pub fn check(&mut self, force: bool) -> Option<ReloadOutcome> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) => {
                if force {
                    tracing::warn!(path = %self.path.display(), error = %e, "reload: cannot read the topology file; keeping the window");
                }
                return None;
            }
        };
        if !force && self.last_text.as_deref() == Some(text.as_slice()) {
            return None;
        }
        let outcome = match TopologyConfig::parse_file(&self.path, &text) {
            Err(e) => {
                let old = self.window.get();
                tracing::error!(
                    path = %self.path.display(),
                    error = %e,
                    max_batch_rows = old.max_batch_rows,
                    max_wait = ?old.max_wait,
                    "reload rejected: invalid topology file; keeping the running window"
                );
                self.metrics.config_reloads.with_label_values(&["rejected"]).inc();
                ReloadOutcome::Rejected(e.to_string())
            }
            Ok(cfg) => {
                self.swap_model(&cfg);
                let table = table_without(&text, self.model.is_some());
                if table != self.last_table {
                    tracing::warn!(path = %self.path.display(), "reload: only [batching] max_batch_rows and max_wait change live; other edits apply at the next restart");
                    self.last_table = table;
                }
                if cfg.batching.max_inflight_batches != self.inflight_batches {
                    tracing::warn!(
                        running = self.inflight_batches,
                        file = cfg.batching.max_inflight_batches,
                        "reload: max_inflight_batches (the inference queue's capacity) applies at the next restart"
                    );
                }
                let new = cfg.batching.window();
                let old = self.window.get();
                if self.adaptive || cfg.batching.adaptive {
                    if self.adaptive != cfg.batching.adaptive {
                        tracing::warn!(
                            path = %self.path.display(),
                            "reload: switching between max_wait = \"auto\" and a fixed window applies at the next restart"
                        );
                    }
                    ReloadOutcome::Unchanged
                } else if new == old {
                    ReloadOutcome::Unchanged
                } else {
                    self.window.set(new);
                    self.flow.set_high_water(2 * self.workers * new.max_batch_rows);
                    publish_window(&self.metrics, new);
                    self.metrics.config_reloads.with_label_values(&["applied"]).inc();
                    tracing::info!(
                        path = %self.path.display(),
                        old_max_batch_rows = old.max_batch_rows,
                        old_max_wait = ?old.max_wait,
                        max_batch_rows = new.max_batch_rows,
                        max_wait = ?new.max_wait,
                        "micro-batch window reloaded"
                    );
                    ReloadOutcome::Applied(new)
                }
            }
        };
        self.last_text = Some(text);
        Some(outcome)
    }

    /// Runs [`Reloader::check`] every [`POLL_INTERVAL`] on its own thread, and within 25 ms
    /// when `sighup` is set (it is cleared); stops when the returned thread is dropped.
    pub fn spawn(mut self, sighup: Arc<AtomicBool>) -> Periodic {
        const HUP_CHECK: Duration = Duration::from_millis(25);
        let mut waited = Duration::ZERO;
        Periodic::spawn("weir-reload", HUP_CHECK, move || {
            waited += HUP_CHECK;
            let hup = sighup.swap(false, Ordering::AcqRel);
            if hup || waited >= POLL_INTERVAL {
                if hup {
                    tracing::info!(path = %self.path.display(), "SIGHUP: reloading the topology file");
                }
                self.check(hup);
                waited = Duration::ZERO;
            }
        })
    }
}

/// The file's TOML without `[batching]` (to tell whether anything else changed); `None` if it
/// does not parse.
/// The file's table without what reloads live (`[batching]`, and `[model]` with hot swap).
fn table_without(text: &[u8], model: bool) -> Option<toml::Table> {
    let mut t: toml::Table = toml::from_str(std::str::from_utf8(text).ok()?).ok()?;
    t.remove("batching");
    if model {
        t.remove("model");
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(dir: &std::path::Path, batching: &str) -> PathBuf {
        let base =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../topologies/fraud-scoring.toml")).unwrap();
        let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fraud/model.onnx");
        let text = base
            .replace("path = \"../models/fraud/model.onnx\"", &format!("path = \"{model}\""))
            .replace("max_batch_rows = 256\nmax_wait = \"5ms\"", batching);
        let path = dir.join("t.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn applies_a_valid_window_and_rejects_an_invalid_edit() {
        let dir = tempfile::tempdir().unwrap();
        let path = setup(dir.path(), "max_batch_rows = 256\nmax_wait = \"5ms\"");
        let cfg = TopologyConfig::load(&path).unwrap();
        let window = Arc::new(SharedWindow::new(BatchWindow {
            max_batch_rows: 256,
            max_wait: Duration::from_millis(5),
        }));
        let flow = Arc::new(FlowControl::new(2 * 2 * 256));
        let metrics = Arc::new(Metrics::new("t"));
        let mut r = Reloader::new(path.clone(), &cfg, window.clone(), flow, metrics.clone());
        assert_eq!(r.check(false), None, "unchanged file");
        assert_eq!(metrics.window_max_rows.get(), 256);

        setup(dir.path(), "max_batch_rows = 1024\nmax_wait = \"20ms\"");
        let want = BatchWindow {
            max_batch_rows: 1024,
            max_wait: Duration::from_millis(20),
        };
        assert_eq!(r.check(false), Some(ReloadOutcome::Applied(want)));
        assert_eq!(window.get(), want);
        assert_eq!(metrics.window_max_rows.get(), 1024);
        assert!((metrics.window_max_wait.get() - 0.020).abs() < 1e-9);

        setup(dir.path(), "max_batch_rows = 0\nmax_wait = \"20ms\"");
        match r.check(false) {
            Some(ReloadOutcome::Rejected(e)) => assert!(e.contains("max_batch_rows"), "{e}"),
            other => panic!("{other:?}"),
        }
        setup(dir.path(), "max_batch_rows = 64\nmax_wait = \"soon\"");
        match r.check(false) {
            Some(ReloadOutcome::Rejected(e)) => assert!(e.contains("max_wait"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(window.get(), want, "the running window is kept");
        assert_eq!(metrics.config_reloads.with_label_values(&["rejected"]).get(), 2);
        assert_eq!(metrics.config_reloads.with_label_values(&["applied"]).get(), 1);
        // SIGHUP forces a re-read of an unchanged (still invalid) file.
        assert!(matches!(r.check(true), Some(ReloadOutcome::Rejected(_))));
    }
}
