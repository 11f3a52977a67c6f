//! Inference: ONNX Runtime sessions through the `ort` crate, on threads of their own.
//!
//! CPU-bound work stays off the timely worker threads (the same advice tokio gives for its
//! runtime): micro-batchers hand [`Batch`]es over a bounded queue to an [`InferencePool`], whose
//! threads each own one [`Scorer`] (an `ort::Session::run` needs `&mut self`) and write scores to
//! the sink. An inference error sends the batch's events to the dead-letter sink with the error,
//! rather than dropping them or stopping the topology.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Receiver;
use ndarray::ArrayView2;
use ort::session::Session;
use ort::value::TensorRef;
use weir_core::metrics::Stage;
use weir_core::{DeadLetter, DeadLetterSink, Metrics, ScoreSink};

use crate::batch::Batch;

/// Errors of model loading and inference.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The ONNX Runtime shared library could not be loaded.
    #[error("cannot load ONNX Runtime from `{path}`: {detail} (run `make setup`, or set ORT_DYLIB_PATH to libonnxruntime.so)")]
    Runtime {
        /// The library path tried.
        path: PathBuf,
        /// Loader message.
        detail: String,
    },
    /// The model file does not exist.
    #[error("model file not found: `{0}`")]
    ModelNotFound(PathBuf),
    /// ONNX Runtime rejected the model file.
    #[error("cannot load model `{path}`: {detail}")]
    ModelLoad {
        /// Model path.
        path: PathBuf,
        /// ONNX Runtime's message.
        detail: String,
    },
    /// The model does not fit the topology's configuration.
    #[error("model `{path}` does not match the topology: {detail}")]
    Mismatch {
        /// Model path.
        path: PathBuf,
        /// What differs.
        detail: String,
    },
    /// An execution provider name that weir does not know.
    #[error("unknown execution provider `{0}` (known: cuda, cpu)")]
    UnknownProvider(String),
    /// A run failed.
    #[error("inference failed: {0}")]
    Run(String),
}

/// An execution provider, in the order the topology lists them (`["cuda", "cpu"]` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionProvider {
    /// NVIDIA CUDA (needs the `onnxruntime-gpu` library and CUDA/cuDNN at run time).
    Cuda,
    /// ONNX Runtime's default CPU provider.
    Cpu,
}

impl std::str::FromStr for ExecutionProvider {
    type Err = InferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cuda" => Ok(Self::Cuda),
            "cpu" => Ok(Self::Cpu),
            other => Err(InferenceError::UnknownProvider(other.to_string())),
        }
    }
}

impl ExecutionProvider {
    /// The provider's name as configured (`"cuda"`, `"cpu"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Cuda => "cuda",
            Self::Cpu => "cpu",
        }
    }
}

/// What a topology says about its model.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Path of the `.onnx` file.
    pub path: PathBuf,
    /// Model version written next to every score (lineage).
    pub version: String,
    /// Feature names in the order the model expects them; must equal the model's `features`
    /// metadata property (comma-separated) written by the training script.
    pub features: Vec<String>,
    /// Input name; `None` = the model's only input.
    pub input: Option<String>,
    /// Output name; `None` = `probabilities` if present, else the first float output.
    pub output: Option<String>,
    /// Execution providers in order of preference; CPU is always the last resort.
    pub execution_providers: Vec<ExecutionProvider>,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
}

static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();

/// The default location of the ONNX Runtime shared library: `$ORT_DYLIB_PATH`, else
/// `.ort/libonnxruntime.so` in the current directory or next to the executable's workspace
/// (where `make setup` puts it).
pub fn default_runtime_path() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(".ort/libonnxruntime.so");
    if local.exists() {
        return local;
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/weir -> workspace root
        for anc in exe.ancestors().skip(1).take(4) {
            let p = anc.join(".ort/libonnxruntime.so");
            if p.exists() {
                return p;
            }
        }
    }
    // The workspace this was built from (the target dir may be elsewhere, e.g. a cache).
    if let Some(ws) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        let p = ws.join(".ort/libonnxruntime.so");
        if p.exists() {
            return p;
        }
    }
    local
}

/// Loads ONNX Runtime from `path` (once per process; later calls return the same environment).
///
/// # Errors
/// [`InferenceError::Runtime`] if the library is missing or of a version ort rejects.
pub fn init_runtime(path: &Path) -> Result<&'static ort::environment::Environment, InferenceError> {
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    if !path.exists() {
        return Err(InferenceError::Runtime {
            path: path.to_path_buf(),
            detail: "file not found".into(),
        });
    }
    let builder = ort::init_from(path).map_err(|e| InferenceError::Runtime {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let env = builder
        .with_name("weir")
        .with_telemetry(false)
        .build()
        .map_err(|e| InferenceError::Runtime {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    Ok(ENV.get_or_init(|| env))
}

/// Something that scores a `[rows, n_features] f32` matrix: one probability per row.
pub trait Scorer: Send {
    /// Scores `x`, `[rows, n_features] f32`; returns `[rows] f32`.
    ///
    /// # Errors
    /// [`InferenceError::Run`] with the runtime's message.
    fn score(&mut self, x: ArrayView2<'_, f32>) -> Result<Vec<f32>, InferenceError>;
}

/// How to read a score out of the model's output tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputShape {
    /// `[rows]`: the score itself.
    Vector,
    /// `[rows, 1]`: the score itself.
    Column,
    /// `[rows, 2]`: class probabilities; the score is column 1 (fraud).
    TwoClass,
}

/// An ONNX Runtime session for one model, checked against a [`ModelSpec`].
pub struct OnnxScorer {
    session: Session,
    input: String,
    output: String,
    shape: OutputShape,
    n_features: usize,
    provider: ExecutionProvider,
}

impl OnnxScorer {
    /// Opens the model of `spec` with the first execution provider that registers, and checks
    /// its input (one float tensor `[-1, n_features]`), output and `features` metadata against
    /// `spec`. If CUDA is requested but unusable, logs a warning once per session and continues
    /// with the next provider (see [`OnnxScorer::provider`]).
    ///
    /// # Errors
    /// [`InferenceError::ModelNotFound`], [`InferenceError::ModelLoad`],
    /// [`InferenceError::Mismatch`] naming the difference.
    pub fn open(env: &ort::environment::Environment, spec: &ModelSpec) -> Result<Self, InferenceError> {
        if !spec.path.exists() {
            return Err(InferenceError::ModelNotFound(spec.path.clone()));
        }
        let load_err = |e: &dyn std::fmt::Display| InferenceError::ModelLoad {
            path: spec.path.clone(),
            detail: e.to_string(),
        };
        let mut chosen = ExecutionProvider::Cpu;
        let mut builder = Session::builder(env).map_err(|e| load_err(&e))?;
        builder = builder
            .with_intra_threads(spec.intra_threads.max(1))
            .map_err(|e| load_err(&e))?;
        for ep in &spec.execution_providers {
            match ep {
                ExecutionProvider::Cpu => {
                    chosen = ExecutionProvider::Cpu;
                    break;
                }
                ExecutionProvider::Cuda => {
                    let dispatch = ort::ep::CUDA::default().build().error_on_failure();
                    match builder.with_execution_providers([dispatch]) {
                        Ok(b) => {
                            builder = b;
                            chosen = ExecutionProvider::Cuda;
                            break;
                        }
                        Err(e) => {
                            // Once per process, not once per session.
                            static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                            if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                                tracing::debug!(provider = "cuda", error = %e, "execution provider unavailable; trying the next one");
                            }
                            builder = e.recover();
                        }
                    }
                }
            }
        }
        let session = builder.commit_from_file(&spec.path).map_err(|e| load_err(&e))?;
        let mismatch = |detail: String| InferenceError::Mismatch {
            path: spec.path.clone(),
            detail,
        };

        // Feature order: the model's metadata is its machine-readable card.
        let meta = session.metadata().map_err(|e| load_err(&e))?;
        let model_features = meta.custom("features");
        drop(meta);
        match model_features {
            Some(f) => {
                let model: Vec<&str> = f.split(',').map(str::trim).collect();
                if model != spec.features.iter().map(String::as_str).collect::<Vec<_>>() {
                    return Err(mismatch(format!(
                        "model.features {:?} differ from the model's feature order {:?}",
                        spec.features, model
                    )));
                }
            }
            None => {
                return Err(mismatch(
                    "the model has no `features` metadata property; the training script must record the feature order"
                        .into(),
                ))
            }
        }

        let inputs: Vec<String> = session.inputs().iter().map(|o| o.name().to_string()).collect();
        let input = match &spec.input {
            Some(name) => session.inputs().iter().find(|o| o.name() == name).ok_or_else(|| {
                mismatch(format!(
                    "model.input `{name}` is not an input of the model (inputs: {inputs:?})"
                ))
            })?,
            None if session.inputs().len() == 1 => &session.inputs()[0],
            None => {
                return Err(mismatch(format!(
                    "the model has several inputs {inputs:?}; set model.input"
                )))
            }
        };
        let in_shape = input.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
        if input.dtype().tensor_type() != Some(ort::value::TensorElementType::Float32)
            || in_shape.len() != 2
            || (in_shape[1] >= 0 && in_shape[1] as usize != spec.features.len())
        {
            return Err(mismatch(format!(
                "input `{}` is {:?}; expected a float tensor [batch, {}] for the {} configured features",
                input.name(),
                input.dtype(),
                spec.features.len(),
                spec.features.len()
            )));
        }
        let input_name = input.name().to_string();

        let outputs: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
        let output = match &spec.output {
            Some(name) => session.outputs().iter().find(|o| o.name() == name).ok_or_else(|| {
                mismatch(format!(
                    "model.output `{name}` is not an output of the model (outputs: {outputs:?})"
                ))
            })?,
            None => session
                .outputs()
                .iter()
                .find(|o| o.name() == "probabilities")
                .or_else(|| {
                    session
                        .outputs()
                        .iter()
                        .find(|o| o.dtype().tensor_type() == Some(ort::value::TensorElementType::Float32))
                })
                .ok_or_else(|| mismatch(format!("no float output among {outputs:?}; set model.output")))?,
        };
        let out_shape = output.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
        let shape = match out_shape.as_slice() {
            [_] => OutputShape::Vector,
            [_, 1] => OutputShape::Column,
            [_, 2] => OutputShape::TwoClass,
            _ => {
                return Err(mismatch(format!(
                    "output `{}` has shape {:?}; expected [batch], [batch, 1] or [batch, 2] float",
                    output.name(),
                    out_shape
                )))
            }
        };
        if output.dtype().tensor_type() != Some(ort::value::TensorElementType::Float32) {
            return Err(mismatch(format!(
                "output `{}` is not a float tensor: {:?}",
                output.name(),
                output.dtype()
            )));
        }
        let output_name = output.name().to_string();
        Ok(Self {
            session,
            input: input_name,
            output: output_name,
            shape,
            n_features: spec.features.len(),
            provider: chosen,
        })
    }

    /// The execution provider in use.
    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }
}

impl Scorer for OnnxScorer {
    fn score(&mut self, x: ArrayView2<'_, f32>) -> Result<Vec<f32>, InferenceError> {
        if x.ncols() != self.n_features {
            return Err(InferenceError::Run(format!(
                "batch has {} features, model {}",
                x.ncols(),
                self.n_features
            )));
        }
        let rows = x.nrows();
        let tensor = TensorRef::from_array_view(x).map_err(|e| InferenceError::Run(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| InferenceError::Run(e.to_string()))?;
        let out = outputs
            .get(&self.output)
            .ok_or_else(|| InferenceError::Run(format!("output `{}` missing", self.output)))?
            .try_extract_array::<f32>()
            .map_err(|e| InferenceError::Run(e.to_string()))?;
        let scores: Vec<f32> = match self.shape {
            OutputShape::Vector | OutputShape::Column => out.iter().copied().collect(),
            OutputShape::TwoClass => out.rows().into_iter().map(|r| r[1]).collect(),
        };
        if scores.len() != rows {
            return Err(InferenceError::Run(format!(
                "model returned {} scores for {rows} rows",
                scores.len()
            )));
        }
        Ok(scores)
    }
}

/// The dead letter of one row that could not be scored or written: its features (`[n_features]
/// f32`, model order) and its id as JSON (`id`, as it came), since the original event is no longer held.
fn row_letter(meta: &weir_core::RowMeta, features: &[f32], reason: &str, detail: String) -> DeadLetter {
    DeadLetter {
        lineage: meta.lineage,
        reason: reason.into(),
        detail,
        key: Some(meta.id.to_string().into_bytes()),
        payload: Some(
            serde_json::to_vec(&serde_json::json!({
                "id": meta.id,
                "event_time_ms": meta.event_time_ms,
                "features": features.iter().map(|f| if f.is_finite() { serde_json::json!(f) } else { serde_json::json!(f.to_string()) }).collect::<Vec<_>>(),
            }))
            .unwrap_or_default(),
        ),
        headers: Vec::new(),
        read_at_us: meta.read_at_us,
    }
}

/// Attempts of a score sink's `write` before its rows are dead-lettered (an enqueue error is
/// usually permanent: a record the client refuses).
const SINK_ATTEMPTS: u32 = 3;

/// Writes the scores of `batch` (or dead-letters its rows), so that every row ends acknowledged
/// by a sink and its partition's commits move on:
/// - an inference error dead-letters the whole batch (`reason = "inference"`);
/// - a non-finite score (NaN, ±inf: a model fed extreme inputs) is not a probability and not
///   valid JSON: that row is dead-lettered (`"inference"`, detail names the value), the others
///   are written;
/// - a sink that rejects the batch [`SINK_ATTEMPTS`] times has its rows dead-lettered
///   (`"sink"`, with the sink's error). Rows it wrote before failing may then have both a
///   score and a dead letter (at-least-once).
///
/// A dead letter the dead-letter sink rejects too is logged with its lineage; its event stays
/// unacknowledged (read again after a restart) and the sources stop once
/// [`weir_core::FlowControl::max_unacked`] such events accumulate.
pub fn deliver(
    batch: &Batch,
    result: Result<Vec<f32>, InferenceError>,
    sink: &dyn ScoreSink,
    dead_letters: &dyn DeadLetterSink,
    version: &str,
) {
    let letter_out = |letter: DeadLetter| {
        if let Err(e) = dead_letters.send(letter) {
            tracing::error!(error = %e, "dead-letter sink rejected a letter; its event stays unacknowledged");
        }
    };
    let result = result.and_then(|scores| match scores.len() == batch.len() {
        true => Ok(scores),
        false => Err(InferenceError::Run(format!(
            "the scorer returned {} scores for {} rows",
            scores.len(),
            batch.len()
        ))),
    });
    let scores = match result {
        Ok(scores) => scores,
        Err(e) => {
            tracing::error!(error = %e, rows = batch.len(), "inference failed; sending the batch to the dead-letter queue");
            for (meta, features) in batch.rows.iter().zip(batch.features.rows()) {
                letter_out(row_letter(meta, &features.to_vec(), "inference", e.to_string()));
            }
            return;
        }
    };
    let (mut rows, mut good) = (Vec::with_capacity(batch.len()), Vec::with_capacity(batch.len()));
    for ((meta, features), score) in batch.rows.iter().zip(batch.features.rows()).zip(&scores) {
        if score.is_finite() {
            rows.push(meta.clone());
            good.push(*score);
        } else {
            tracing::warn!(id = %meta.id, partition = meta.lineage.partition, offset = meta.lineage.offset, score = %score, "non-finite score dead-lettered");
            letter_out(row_letter(
                meta,
                &features.to_vec(),
                "inference",
                format!("the model returned a non-finite score ({score}) for this row"),
            ));
        }
    }
    if rows.is_empty() {
        return;
    }
    let mut last_error = None;
    for attempt in 1..=SINK_ATTEMPTS {
        match sink.write(&rows, &good, version) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, attempt, rows = rows.len(), "score sink rejected a batch");
                last_error = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(10 << attempt));
            }
        }
    }
    let e = last_error.expect("at least one attempt");
    tracing::error!(error = %e, rows = rows.len(), "score sink rejected a batch {SINK_ATTEMPTS} times; dead-lettering its rows");
    let by_lineage: std::collections::HashMap<_, _> = batch
        .rows
        .iter()
        .zip(batch.features.rows())
        .map(|(m, f)| (m.lineage, f.to_vec()))
        .collect();
    for meta in &rows {
        letter_out(row_letter(meta, &by_lineage[&meta.lineage], "sink", e.to_string()));
    }
}

/// A challenger model (`[[shadow]]`): scores the same rows as the primary model, a `fraction`
/// of them chosen by a hash of the event id ([`sampled`]), into its own sink; its scores never
/// replace the primary's, and its failures never touch the primary's delivery.
pub struct Shadow {
    /// Version written next to its scores.
    pub version: String,
    /// Fraction of events it scores, `(0, 1]`.
    pub fraction: f64,
    /// Where its scores go (a sink whose acknowledgements do not commit anything).
    pub sink: Arc<dyn ScoreSink>,
    /// One session per inference thread.
    pub scorers: Vec<Box<dyn Scorer>>,
}

/// Whether the event `id` is among a `fraction` of events: xxh3 of its text below `fraction` of
/// the hash range. The same events in every run (live, replay, backfill).
pub fn sampled(id: &weir_core::EventId, fraction: f64) -> bool {
    if fraction >= 1.0 {
        return true;
    }
    let h = xxhash_rust::xxh3::xxh3_64(id.to_string().as_bytes());
    (h as f64) < fraction * u64::MAX as f64
}

/// One inference thread's share of a shadow: version, fraction, sink, its session.
type ThreadShadow = (String, f64, Arc<dyn ScoreSink>, Box<dyn Scorer>);

/// Scores the sampled rows of `batch` with one thread's session of a shadow model.
fn score_shadow(
    batch: &Batch,
    version: &str,
    fraction: f64,
    scorer: &mut dyn Scorer,
    sink: &dyn ScoreSink,
    metrics: &Metrics,
) {
    let idx: Vec<usize> = (0..batch.len())
        .filter(|&i| sampled(&batch.rows[i].id, fraction))
        .collect();
    if idx.is_empty() {
        return;
    }
    let x = batch.features.select(ndarray::Axis(0), &idx);
    match scorer.score(x.view()) {
        Ok(scores) => {
            let (rows, scores): (Vec<weir_core::RowMeta>, Vec<f32>) = idx
                .iter()
                .zip(scores)
                .filter(|(_, s)| s.is_finite())
                .map(|(&i, s)| (batch.rows[i].clone(), s))
                .unzip();
            for s in &scores {
                metrics
                    .score_distribution
                    .with_label_values(&[version])
                    .observe(*s as f64);
            }
            metrics
                .shadow_scored_rows
                .with_label_values(&[version])
                .inc_by(rows.len() as u64);
            if let Err(e) = sink.write(&rows, &scores, version) {
                tracing::warn!(version, error = %e, rows = rows.len(), "shadow sink rejected a batch");
            }
        }
        Err(e) => tracing::warn!(version, error = %e, "shadow model failed on a batch"),
    }
}

/// Threads that take batches from the micro-batchers' queue, score them and write the scores
/// (see [`deliver`]).
pub struct InferencePool {
    handles: Vec<JoinHandle<()>>,
}

impl InferencePool {
    /// Starts one thread per scorer. Each takes batches from `queue` until every sender is
    /// dropped and the queue is empty, then returns.
    pub fn spawn(
        scorers: Vec<Box<dyn Scorer>>,
        queue: Receiver<Batch>,
        sink: Arc<dyn ScoreSink>,
        dead_letters: Arc<dyn DeadLetterSink>,
        metrics: Arc<Metrics>,
        model_version: String,
    ) -> Self {
        Self::spawn_switchable(scorers, queue, sink, dead_letters, metrics, model_version, None)
    }

    /// As [`InferencePool::spawn`], the threads taking a new model from `switch` between
    /// batches (hot swap, [`crate::model_switch`]). Scores are counted per model version in
    /// `weir_model_scored_rows_total{version}`.
    pub fn spawn_switchable(
        scorers: Vec<Box<dyn Scorer>>,
        queue: Receiver<Batch>,
        sink: Arc<dyn ScoreSink>,
        dead_letters: Arc<dyn DeadLetterSink>,
        metrics: Arc<Metrics>,
        model_version: String,
        switch: Option<Arc<crate::model_switch::ModelSwitch>>,
    ) -> Self {
        Self::spawn_with_shadows(
            scorers,
            queue,
            sink,
            dead_letters,
            metrics,
            model_version,
            switch,
            Vec::new(),
        )
    }

    /// As [`InferencePool::spawn_switchable`], each thread also scoring with its session of
    /// every [`Shadow`].
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_with_shadows(
        scorers: Vec<Box<dyn Scorer>>,
        queue: Receiver<Batch>,
        sink: Arc<dyn ScoreSink>,
        dead_letters: Arc<dyn DeadLetterSink>,
        metrics: Arc<Metrics>,
        model_version: String,
        switch: Option<Arc<crate::model_switch::ModelSwitch>>,
        shadows: Vec<Shadow>,
    ) -> Self {
        // Per thread: (version, fraction, sink, session) of each shadow.
        let mut per_thread: Vec<Vec<ThreadShadow>> = (0..scorers.len()).map(|_| Vec::new()).collect();
        for sh in shadows {
            for (t, s) in sh.scorers.into_iter().enumerate() {
                if let Some(v) = per_thread.get_mut(t) {
                    v.push((sh.version.clone(), sh.fraction, sh.sink.clone(), s));
                }
            }
        }
        let mut per_thread = per_thread.into_iter();
        let handles = scorers
            .into_iter()
            .enumerate()
            .map(|(i, scorer)| {
                let queue = queue.clone();
                let sink = sink.clone();
                let dead_letters = dead_letters.clone();
                let metrics = metrics.clone();
                let switch = switch.clone();
                let mut shadows = per_thread.next().unwrap_or_default();
                let mut current: crate::model_switch::Versioned = (scorer, model_version.clone());
                std::thread::Builder::new()
                    .name(format!("weir-inference-{i}"))
                    .spawn(move || {
                        let mut seen = 0u64;
                        for batch in queue.iter() {
                            if let Some(s) = &switch {
                                s.refresh(i, &mut seen, &mut current);
                            }
                            let (scorer, version) = (&mut current.0, current.1.as_str());
                            let t0 = Instant::now();
                            let n = batch.len();
                            metrics.record_stage_n(Stage::Queue, weir_core::clock::micros_since(batch.flushed_us), n);
                            let result = scorer.score(batch.features.view());
                            let took = t0.elapsed();
                            metrics.inference_seconds.observe(took.as_secs_f64());
                            metrics.record_stage_n(Stage::Inference, took.as_micros() as u64, n);
                            metrics.model_scored_rows.with_label_values(&[version]).inc_by(n as u64);
                            if let Ok(scores) = &result {
                                let h = metrics.score_distribution.with_label_values(&[version]);
                                for s in scores.iter().filter(|s| s.is_finite()) {
                                    h.observe(*s as f64);
                                }
                            }
                            deliver(&batch, result, &*sink, &*dead_letters, version);
                            for (v, fraction, shadow_sink, s) in &mut shadows {
                                score_shadow(&batch, v, *fraction, s.as_mut(), &**shadow_sink, &metrics);
                            }
                            metrics.inflight_batches.dec();
                        }
                    })
                    .expect("spawn inference thread")
            })
            .collect();
        Self { handles }
    }

    /// Waits for every inference thread to finish (after the queue's senders are dropped).
    pub fn join(self) {
        for h in self.handles {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_by_event_id_is_about_the_fraction_and_the_same_every_time() {
        let ids: Vec<weir_core::EventId> = (0..20_000i64).map(weir_core::EventId::Int).collect();
        let picked: Vec<bool> = ids.iter().map(|id| sampled(id, 0.1)).collect();
        let n = picked.iter().filter(|p| **p).count();
        assert!((1_700..2_300).contains(&n), "{n} of 20,000 at 0.1");
        assert_eq!(
            picked,
            ids.iter().map(|id| sampled(id, 0.1)).collect::<Vec<_>>(),
            "deterministic"
        );
        assert!(ids.iter().all(|id| sampled(id, 1.0)));
        let s = weir_core::EventId::Str(Box::new("7f3a".into()));
        assert_eq!(sampled(&s, 0.5), sampled(&s, 0.5));
    }
    use std::sync::Mutex;
    use std::time::Duration;
    use weir_core::{Lineage, RowMeta, SinkError};

    #[derive(Default)]
    struct Recorder {
        scores: Mutex<Vec<(u64, f32)>>,
        letters: Mutex<Vec<DeadLetter>>,
        fail_writes: bool,
    }

    impl ScoreSink for Recorder {
        fn write(&self, rows: &[RowMeta], scores: &[f32], _: &str) -> Result<(), SinkError> {
            if self.fail_writes {
                return Err(SinkError::Enqueue {
                    sink: "test".into(),
                    detail: "refused".into(),
                });
            }
            let mut s = self.scores.lock().unwrap();
            s.extend(
                rows.iter()
                    .zip(scores)
                    .map(|(r, v)| (r.id.as_int().unwrap() as u64, *v)),
            );
            Ok(())
        }
        fn flush(&self, _: Duration) -> Result<(), SinkError> {
            Ok(())
        }
        fn describe(&self) -> String {
            "test".into()
        }
    }

    impl DeadLetterSink for Recorder {
        fn send(&self, letter: DeadLetter) -> Result<(), SinkError> {
            self.letters.lock().unwrap().push(letter);
            Ok(())
        }
        fn flush(&self, _: Duration) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn batch(n: usize) -> Batch {
        Batch {
            flushed_us: 0,
            rows: (0..n)
                .map(|i| RowMeta {
                    lineage: Lineage {
                        partition: 0,
                        offset: i as i64,
                    },
                    id: weir_core::EventId::Int(i as i64),
                    event_time_ms: 0,
                    read_at_us: 0,
                })
                .collect(),
            features: ndarray::Array2::from_elem((n, 2), 1e30f32),
            cause: weir_core::metrics::FlushCause::Size,
        }
    }

    #[test]
    fn non_finite_scores_are_dead_lettered_never_written() {
        // Issue 13, item 5: a NaN was written as `"score":NaN`, invalid JSON.
        let (sink, dlq) = (Recorder::default(), Recorder::default());
        deliver(
            &batch(4),
            Ok(vec![0.5, f32::NAN, f32::INFINITY, 0.25]),
            &sink,
            &dlq,
            "v",
        );
        assert_eq!(*sink.scores.lock().unwrap(), vec![(0, 0.5), (3, 0.25)]);
        let letters = dlq.letters.lock().unwrap();
        assert_eq!(letters.len(), 2);
        assert!(letters
            .iter()
            .all(|l| l.reason == "inference" && l.detail.contains("non-finite")));
        assert_eq!(letters.iter().map(|l| l.lineage.offset).collect::<Vec<_>>(), vec![1, 2]);
        let v: serde_json::Value = serde_json::from_slice(letters[0].payload.as_deref().unwrap()).unwrap();
        assert_eq!(v["id"], 1);
    }

    #[test]
    fn a_batch_the_sink_rejects_is_dead_lettered_so_commits_move_on() {
        // Issue 13, item 3: a failed row was only logged; the ledger's prefix stopped there.
        let sink = Recorder {
            fail_writes: true,
            ..Recorder::default()
        };
        let dlq = Recorder::default();
        deliver(&batch(3), Ok(vec![0.1, 0.2, 0.3]), &sink, &dlq, "v");
        let letters = dlq.letters.lock().unwrap();
        assert_eq!(letters.len(), 3, "every row ends somewhere");
        assert!(letters
            .iter()
            .all(|l| l.reason == "sink" && l.detail.contains("refused")));
    }

    #[test]
    fn a_scorer_returning_too_few_scores_dead_letters_the_batch() {
        let (sink, dlq) = (Recorder::default(), Recorder::default());
        deliver(&batch(3), Ok(vec![0.1]), &sink, &dlq, "v");
        assert!(sink.scores.lock().unwrap().is_empty());
        assert_eq!(dlq.letters.lock().unwrap().len(), 3);
    }
}
