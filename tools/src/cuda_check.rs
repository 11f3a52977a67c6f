//! `weir check-cuda`: scores models through weir's own inference code
//! (`weir_operators::inference::OnnxScorer`) with the CUDA execution provider and with CPU, at
//! several batch sizes, and compares them: rows/s of each, the provider each session actually
//! registered (CUDA asked and CPU registered is "CUDA unavailable", never a silent fallback),
//! and the largest difference between CUDA's and CPU's scores.
//!
//! **Tolerance.** `|cuda - cpu| <= 1e-5 * max(|cpu|, 1e-3)`: 1e-5 relative, with scores below
//! 1e-3 compared at 1e-8 absolute (a probability of 1e-9 has no meaningful 5th digit). TF32 is
//! off (ort's default), so matrix products are full f32 on both.
//!
//! Exit status of the command: 0 checked, [`EXIT_NO_CUDA`] when CUDA could not be registered
//! (no GPU, or no CUDA build of ONNX Runtime: what `scripts/gpu/check.sh` says on a machine
//! without a GPU), 1 when a check failed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use weir_operators::inference::{init_runtime, ExecutionProvider, InferenceError, ModelSpec, OnnxScorer, Scorer};
use weir_topologies::config::TopologyConfig;

use crate::demo::DemoError;

/// Exit status when the CUDA execution provider could not be registered.
pub const EXIT_NO_CUDA: u8 = 4;

/// Relative tolerance of CUDA's scores against CPU's (see the module doc).
pub const TOLERANCE: f64 = 1e-5;

/// What to check.
#[derive(Debug, Clone)]
pub struct CudaCheckOptions {
    /// The topology whose features, input and output the models take.
    pub topology: PathBuf,
    /// Models to score (default: the topology's and `models/mlp-check/model.onnx`).
    pub models: Vec<PathBuf>,
    /// Batch sizes, rows.
    pub batches: Vec<usize>,
    /// Seconds of scoring per model, provider and batch size (at least 3 calls).
    pub seconds: f64,
    /// ONNX Runtime library (default: `ORT_DYLIB_PATH` or `.ort/libonnxruntime.so`).
    pub runtime: Option<PathBuf>,
}

/// One model at one batch size.
#[derive(Debug, Clone)]
pub struct BatchResult {
    /// Rows per batch.
    pub rows: usize,
    /// CPU rows/s.
    pub cpu_rows_per_s: f64,
    /// CUDA rows/s (`None` without CUDA).
    pub cuda_rows_per_s: Option<f64>,
    /// Largest `|cuda - cpu| / max(|cpu|, 1e-3)` over the batch (`None` without CUDA).
    pub max_rel_diff: Option<f64>,
}

/// One model.
#[derive(Debug, Clone)]
pub struct ModelResult {
    /// The model file.
    pub model: PathBuf,
    /// The provider the CUDA session registered (`cpu` when CUDA was unavailable).
    pub cuda_session_provider: &'static str,
    /// Per batch size.
    pub batches: Vec<BatchResult>,
}

/// The check's result.
#[derive(Debug, Clone)]
pub struct CudaCheckReport {
    /// Per model.
    pub models: Vec<ModelResult>,
    /// Why CUDA was unavailable, if it was.
    pub cuda_unavailable: Option<String>,
}

impl CudaCheckReport {
    /// Whether every CUDA score was within [`TOLERANCE`] of CPU's.
    pub fn within_tolerance(&self) -> bool {
        self.models
            .iter()
            .flat_map(|m| &m.batches)
            .all(|b| b.max_rel_diff.is_none_or(|d| d <= TOLERANCE))
    }

    /// The command's exit status (see the module doc).
    pub fn exit_status(&self) -> u8 {
        if self.cuda_unavailable.is_some() {
            EXIT_NO_CUDA
        } else if self.within_tolerance() {
            0
        } else {
            1
        }
    }

    /// The summary as printed.
    pub fn render(&self) -> String {
        let mut s = String::from("weir check-cuda: weir's inference code, CUDA execution provider against CPU\n");
        for m in &self.models {
            s += &format!(
                "  {} (CUDA session registered: {})\n",
                m.model.display(),
                m.cuda_session_provider
            );
            for b in &m.batches {
                s += &format!(
                    "    batch {:>6}: cpu {:>12.0} rows/s   cuda {:>14}   max relative difference {}\n",
                    b.rows,
                    b.cpu_rows_per_s,
                    b.cuda_rows_per_s.map_or("-".to_string(), |r| format!("{r:.0} rows/s")),
                    b.max_rel_diff.map_or("-".to_string(), |d| format!(
                        "{d:.2e} ({})",
                        if d <= TOLERANCE { "within 1e-5" } else { "OVER 1e-5" }
                    )),
                );
            }
        }
        match &self.cuda_unavailable {
            Some(why) => s += &format!(
                "  CUDA UNAVAILABLE: {why}\n  (exit status {EXIT_NO_CUDA}: CPU figures only; see the README's \"CUDA\" for what a GPU machine needs)\n"
            ),
            None if self.within_tolerance() => s += "  CUDA ok: every score within 1e-5 (relative) of CPU's\n",
            None => s += "  FAILED: CUDA's scores differ from CPU's by more than 1e-5 (relative)\n",
        }
        s
    }
}

fn rows_per_s(scorer: &mut OnnxScorer, x: &Array2<f32>, seconds: f64) -> Result<(f64, Vec<f32>), InferenceError> {
    let first = scorer.score(x.view())?; // warm-up, and the scores compared
    let (t0, mut calls) = (Instant::now(), 0u32);
    while calls < 3 || t0.elapsed() < Duration::from_secs_f64(seconds) {
        std::hint::black_box(scorer.score(x.view())?);
        calls += 1;
    }
    Ok(((calls as f64 * x.nrows() as f64) / t0.elapsed().as_secs_f64(), first))
}

/// Runs the check.
///
/// # Errors
/// [`DemoError`] if the topology or a model cannot be loaded on CPU, or scoring fails.
pub fn run_cuda_check(opts: &CudaCheckOptions) -> Result<CudaCheckReport, DemoError> {
    let cfg = TopologyConfig::load(&opts.topology)?;
    let runtime = opts
        .runtime
        .clone()
        .unwrap_or_else(weir_operators::inference::default_runtime_path);
    let env = init_runtime(&runtime).map_err(|e| DemoError::Usage(e.to_string()))?;
    let spec_for = |path: &PathBuf, ep: ExecutionProvider| ModelSpec {
        path: path.clone(),
        version: "check".into(),
        features: cfg.model.features.clone(),
        input: cfg.model.input.clone(),
        output: cfg.model.output.clone(),
        execution_providers: vec![ep],
        intra_threads: cfg.model.intra_threads,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let n = cfg.model.features.len();
    let mut report = CudaCheckReport {
        models: Vec::new(),
        cuda_unavailable: None,
    };
    for path in &opts.models {
        let mut cpu = OnnxScorer::open(env, &spec_for(path, ExecutionProvider::Cpu))
            .map_err(|e| DemoError::Usage(e.to_string()))?;
        let mut cuda = match OnnxScorer::open(env, &spec_for(path, ExecutionProvider::Cuda)) {
            Ok(s) if s.provider() == ExecutionProvider::Cuda => Some(s),
            Ok(_) => {
                report.cuda_unavailable.get_or_insert_with(|| {
                    let provider_lib = runtime.with_file_name("libonnxruntime_providers_cuda.so");
                    if provider_lib.exists() {
                        format!(
                            "{} has the CUDA provider ({}), but CUDA did not start: no GPU or driver, or the CUDA 13 / cuDNN 9 libraries are not on LD_LIBRARY_PATH",
                            runtime.display(),
                            provider_lib.display()
                        )
                    } else {
                        format!(
                            "{} is not a CUDA build of ONNX Runtime (no libonnxruntime_providers_cuda.so beside it): use the onnxruntime-gpu wheel's",
                            runtime.display()
                        )
                    }
                });
                None
            }
            Err(e) => {
                report.cuda_unavailable.get_or_insert_with(|| e.to_string());
                None
            }
        };
        let mut batches = Vec::new();
        for &rows in &opts.batches {
            // Features in the ranges the models saw: amounts up to a few hundred, counts, ratios.
            let x = Array2::from_shape_fn((rows, n), |(_, j)| match j {
                0 | 4 | 6 | 8 => rng.random_range(0.0f32..300.0),
                1 | 2 => rng.random_range(0.0f32..1.0).round(),
                3 | 5 | 7 | 9 | 11 | 13 => rng.random_range(0.0f32..30.0).floor(),
                _ => rng.random_range(0.0f32..1.0),
            });
            let (cpu_rate, cpu_scores) =
                rows_per_s(&mut cpu, &x, opts.seconds).map_err(|e| DemoError::Usage(e.to_string()))?;
            let (cuda_rate, diff) = match cuda.as_mut() {
                Some(c) => {
                    let (rate, scores) =
                        rows_per_s(c, &x, opts.seconds).map_err(|e| DemoError::Usage(e.to_string()))?;
                    let d = scores
                        .iter()
                        .zip(&cpu_scores)
                        .map(|(a, b)| ((*a as f64) - (*b as f64)).abs() / (*b as f64).abs().max(1e-3))
                        .fold(0.0, f64::max);
                    (Some(rate), Some(d))
                }
                None => (None, None),
            };
            batches.push(BatchResult {
                rows,
                cpu_rows_per_s: cpu_rate,
                cuda_rows_per_s: cuda_rate,
                max_rel_diff: diff,
            });
        }
        report.models.push(ModelResult {
            model: path.clone(),
            cuda_session_provider: cuda.as_ref().map_or("cpu", |c| c.provider().name()),
            batches,
        });
    }
    Ok(report)
}
