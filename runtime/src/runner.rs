//! Wires one timely dataflow from a [`TopologyConfig`] and runs it.
//!
//! ```text
//! Kafka ─> source ─> decode ─┬─> features ─> micro-batch ═╗ bounded queue (max_inflight_batches)
//!                            └─> dead letters ─> DLQ sink  ║
//!          inference threads (one ort session each) <══════╝ ─> score sink ─> acks ─> ledger ─> commits
//! ```
//!
//! Timely workers run source, decode, features, the score gate and micro-batching; inference
//! runs on its own threads. The score gate (between features and micro-batch) drops rows a
//! backfill only reads for warm-up (acknowledging them), and, after a shutdown request, rows
//! whose features were released only because a source stopped (see
//! [`FlowControl::freeze_at`]; they stay unacknowledged and are read again). A run ends when the source completes (bounded mode) or when shutdown is requested
//! (SIGINT/SIGTERM in `weir run`): sources stop reading, micro-batchers flush what they hold,
//! inference drains the queue, sinks flush, and the final offsets are committed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{ProbeHandle, StreamVec};
use weir_connectors::kafka::sink::{KafkaDeadLetterSink, KafkaScoreSink};
use weir_connectors::kafka::source::{kafka_source, EventTime, KafkaSourceConfig, SourceShared, StartPosition};
use weir_connectors::parquet::sink::ParquetScoreSink;
use weir_core::periodic::Periodic;
use weir_core::{DeadLetterSink, DeliveryLedger, FeatureRow, FlowControl, Lineage, Metrics, ScoreSink};
use weir_feature_store::{windowed_features_with, FeatureValues};
use weir_operators::decode::{decode_labels, decode_with};
use weir_operators::inference::{
    default_runtime_path, init_runtime, ExecutionProvider, InferenceError, InferencePool, ModelSpec, OnnxScorer, Scorer,
};
use weir_operators::micro_batch::{micro_batch, BatchWindow, SharedWindow};
pub use weir_topologies::plan::FeaturePlan;

use weir_topologies::config::TopologyConfig;

/// Errors starting or running a topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The model or the runtime could not be loaded, or they do not match the configuration.
    #[error(transparent)]
    Model(#[from] InferenceError),
    /// A connector failed to start.
    #[error(transparent)]
    Connector(#[from] weir_connectors::ConnectorError),
    /// A timely worker failed.
    #[error("dataflow worker failed: {0}")]
    Worker(String),
    /// A sink failed while flushing at the end.
    #[error(transparent)]
    Sink(#[from] weir_core::SinkError),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// The topology's client configuration is refused.
    #[error(transparent)]
    Config(#[from] weir_topologies::config::ConfigError),
}

/// Builds scorers; lets tests and benchmarks substitute the ONNX session.
pub type ScorerFactory = Arc<dyn Fn() -> Result<Box<dyn Scorer>, InferenceError> + Send + Sync>;

/// Decides whether the event at a source lineage is scored (`true`) or only feeds the feature
/// store (`false`: a backfill's warm-up, or what a previous attempt of the job completed).
pub type ScoreFilter = Arc<dyn Fn(Lineage) -> bool + Send + Sync>;

pub use weir_topologies::plan::{Mode, ReadRanges, SinkSpec};

/// How to run a topology, beyond its file.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Overrides `source.brokers` (and the sinks' brokers).
    pub brokers: Option<String>,
    /// How far to read: live (the default), up to the end seen at start, or offset ranges.
    pub mode: Mode,
    /// Overrides `source.start`.
    pub start: Option<StartPosition>,
    /// Overrides the topology's `[sink]`.
    pub sink: Option<SinkSpec>,
    /// Substitute scorer (tests: an artificially slow one).
    pub scorer: Option<ScorerFactory>,
    /// Flow control to share with the caller (to request shutdown, or observe buffered rows).
    pub flow: Option<Arc<FlowControl>>,
    /// Metrics to share with the caller.
    pub metrics: Option<Arc<Metrics>>,
    /// ONNX Runtime library (default: [`default_runtime_path`]).
    pub runtime: Option<PathBuf>,
    /// Score only the events it accepts; the others feed the feature store and are acknowledged.
    pub score_filter: Option<ScoreFilter>,
    /// Overrides `[batching]`: the micro-batch window and the batches queued for inference.
    pub window: Option<(BatchWindow, usize)>,
    /// The window to run with, shared with the caller so that it can change it while the
    /// topology runs ([`crate::reload::Reloader`]); its initial value replaces the window of
    /// `[batching]` (or of `window`).
    pub live_window: Option<Arc<SharedWindow>>,
    /// Names Parquet files `<prefix>-<seq>.parquet` (see [`ParquetScoreSink::with_prefix`]).
    pub parquet_prefix: Option<String>,
    /// Delivery ledger to share with the caller (a backfill records acknowledged ranges from it).
    pub ledger: Option<Arc<DeliveryLedger>>,
    /// The model switch the inference threads take new models from (hot swap: the caller's
    /// [`crate::reload::Reloader`] installs into it); `None`: the model of the file, fixed.
    pub model_switch: Option<Arc<weir_operators::model_switch::ModelSwitch>>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Events read by the sources.
    pub events_in: u64,
    /// Scores acknowledged by the sink.
    pub scored: u64,
    /// Events read only to warm up the feature store (not scored).
    pub warmup: u64,
    /// Events left unscored by a shutdown (their features were incomplete), read again later.
    pub held_back: u64,
    /// Dead letters acknowledged, by reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// Micro-batches flushed.
    pub batches: u64,
    /// Mean rows per micro-batch.
    pub mean_batch_rows: f64,
    /// Wall time from the start of the dataflow to the last acknowledgement.
    pub elapsed: Duration,
    /// Median read-to-acknowledgement latency, µs.
    pub p50_latency_us: u64,
    /// 99th percentile read-to-acknowledgement latency, µs.
    pub p99_latency_us: u64,
    /// Largest number of rows held by micro-batchers at once.
    pub max_buffered_rows: usize,
    /// Largest number of events between the sources and inference at once (decode, feature
    /// store, micro-batchers).
    pub max_in_flight_rows: usize,
    /// Time sources spent paused by backpressure (summed over sources).
    pub paused: Duration,
    /// Execution provider in use (`cuda`, `cpu`, or `custom` for a substituted scorer).
    pub execution_provider: String,
    /// The score sink, e.g. `kafka:scores`.
    pub sink: String,
    /// Per stage of a scored event (`weir_core::metrics::Stage`): name, p50 and p99, µs.
    pub stages_us: Vec<(&'static str, u64, u64)>,
}

impl RunReport {
    /// Events per second over the run.
    pub fn events_per_second(&self) -> f64 {
        self.events_in as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Opens one ONNX session per inference thread, checked against the configuration.
///
/// # Errors
/// [`InferenceError`] naming the missing file, the runtime path, or the mismatch.
pub fn open_scorers(
    cfg: &TopologyConfig,
    runtime: Option<PathBuf>,
) -> Result<(Vec<Box<dyn Scorer>>, ExecutionProvider), InferenceError> {
    let model_path = cfg.model_path();
    if !model_path.exists() {
        return Err(InferenceError::ModelNotFound(model_path));
    }
    let env = init_runtime(&runtime.unwrap_or_else(default_runtime_path))?;
    let spec = ModelSpec {
        path: model_path,
        version: cfg.model.version.clone(),
        features: cfg.model.features.clone(),
        input: cfg.model.input.clone(),
        output: cfg.model.output.clone(),
        execution_providers: cfg.execution_providers(),
        intra_threads: cfg.model.intra_threads,
    };
    let mut provider = ExecutionProvider::Cpu;
    let mut scorers: Vec<Box<dyn Scorer>> = Vec::new();
    for _ in 0..cfg.model.inference_threads {
        let s = OnnxScorer::open(env, &spec)?;
        provider = s.provider();
        scorers.push(Box::new(s));
    }
    Ok((scorers, provider))
}

/// The flow control `cfg` asks for: micro-batchers hold at most `2 * workers * max_batch_rows`
/// rows before sources pause, and at most `source.max_in_flight_rows` events are between the
/// sources and inference. `max_batch_rows`: the window in use (`[batching]` or `[backfill]`).
pub fn flow_control(cfg: &TopologyConfig, max_batch_rows: usize) -> FlowControl {
    FlowControl::with_in_flight_limit(2 * cfg.topology.workers * max_batch_rows, cfg.source.max_in_flight_rows)
}

/// The memory backstop of `topology.max_memory` (`limit`, bytes), given the resident set size
/// `rss` (bytes): above 90% of the limit, sources align ([`FlowControl::set_memory_pressure`]):
/// only the partitions holding the watermark back read, which releases the events the feature
/// store holds for it, and the others wait in their queues. Sources never stop altogether under
/// memory pressure: the held events wait for a watermark only reading can advance (a full stop
/// deadlocked, then let partitions turn idle, so features depended on timing). Pressure ends
/// once the events in flight drained (in flight, buffered and queued for inference all empty)
/// or the resident size fell below 80% of the limit (freed buffers are often kept by the
/// allocator rather than returned to the system).
pub fn guard_memory(flow: &FlowControl, metrics: &Metrics, rss: u64, limit: Option<u64>) {
    let Some(limit) = limit else { return };
    let drained = flow.in_flight() == 0 && flow.buffered_rows() == 0 && metrics.inflight_batches.get() == 0;
    if !flow.memory_pressure() && rss > limit / 10 * 9 {
        flow.set_memory_pressure(true);
        tracing::warn!(
            rss_bytes = rss,
            limit_bytes = limit,
            "resident memory above 90% of topology.max_memory: sources read only the partitions holding the watermark back"
        );
    } else if flow.memory_pressure() && (drained || rss < limit / 10 * 8) {
        flow.set_memory_pressure(false);
        tracing::info!(
            rss_bytes = rss,
            limit_bytes = limit,
            "memory pressure over: sources read every partition"
        );
    }
}

/// Waits until `brokers` answer, or fails: a bounded run (until-end, backfill) fails after
/// 10 s; a live run keeps trying, logging a warning naming the address every attempt, until
/// the brokers answer or shutdown is requested. `field` says where the brokers were configured.
///
/// # Errors
/// [`weir_connectors::ConnectorError::Unreachable`] naming the address and `field`.
pub fn wait_for_brokers(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    field: &str,
    live: bool,
    flow: &FlowControl,
) -> Result<(), weir_connectors::ConnectorError> {
    let timeout = Duration::from_secs(if live { 5 } else { 10 });
    loop {
        match weir_connectors::kafka::check_reachable(brokers, properties, field, timeout) {
            Ok(()) => return Ok(()),
            Err(e) if live && !flow.shutdown_requested() => {
                tracing::warn!(brokers, field, error = %e, "Kafka brokers unreachable; retrying");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Counts of rows the score gate kept from the micro-batchers.
#[derive(Debug, Default)]
pub struct GateCounts {
    /// Rows not selected for scoring (warm-up), acknowledged.
    pub warmup: std::sync::atomic::AtomicU64,
    /// Rows at or after the shutdown cutoff, left unacknowledged.
    pub held_back: std::sync::atomic::AtomicU64,
}

/// The score gate: passes the feature rows to be scored, as `[n_features] f32` rows. A row
/// whose processing time ([`FeatureValues::time`]) is at or after [`FlowControl::cutoff`] is
/// dropped unacknowledged (its features were released by a source stopping early and may be
/// incomplete: it is read again after a restart or resume); a row `filter` rejects (warm-up) is
/// acknowledged in `ledger` and dropped. Both leave the in-flight count.
pub fn score_gate<'s>(
    values: StreamVec<'s, u64, FeatureValues>,
    filter: Option<ScoreFilter>,
    flow: Arc<FlowControl>,
    ledger: Arc<DeliveryLedger>,
    counts: Arc<GateCounts>,
) -> StreamVec<'s, u64, FeatureRow> {
    use std::sync::atomic::Ordering::Relaxed;
    values.unary(Pipeline, "ScoreGate", move |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                let mut session = output.session(&cap);
                let cutoff = flow.cutoff();
                for fv in data.drain(..) {
                    if fv.time >= cutoff {
                        flow.remove_in_flight(1);
                        counts.held_back.fetch_add(1, Relaxed);
                    } else if filter.as_ref().is_some_and(|f| !f(fv.meta.lineage)) {
                        ledger.ack(fv.meta.lineage);
                        flow.remove_in_flight(1);
                        counts.warmup.fetch_add(1, Relaxed);
                    } else {
                        session.give(FeatureRow {
                            meta: fv.meta,
                            features: fv.values.iter().map(|v| *v as f32).collect(),
                        });
                    }
                }
            });
        }
    })
}

/// The feature vectors and the dead letters of one worker's sources.
pub type FeatureStreams<'s> = (
    timely::dataflow::StreamVec<'s, u64, FeatureValues>,
    timely::dataflow::StreamVec<'s, u64, weir_core::DeadLetter>,
);

/// Source(s) -> decode -> features, for one worker: the part of a topology shared by scoring
/// (`weir run`) and training-set export (`weir features export`). Returns the feature vectors
/// and the dead letters.
///
/// # Errors
/// A message if a Kafka source cannot start.
pub fn feature_dataflow<'s>(
    scope: timely::dataflow::Scope<'s, u64>,
    source: &KafkaSourceConfig,
    labels: Option<&KafkaSourceConfig>,
    plan: &FeaturePlan,
    shared: &SourceShared,
    snapshots: &weir_feature_store::keyed::Snapshots,
) -> Result<FeatureStreams<'s>, String> {
    let events = kafka_source(scope, source.clone(), shared.clone()).map_err(|e| e.to_string())?;
    let labels = match (labels, &plan.labels) {
        (Some(lc), Some((schema, layout))) => {
            let (spec, layout) = (plan.spec.clone(), layout.clone());
            Some(decode_labels(
                kafka_source(scope, lc.clone(), shared.clone()).map_err(|e| e.to_string())?,
                schema.clone(),
                move |values, available_at| spec.label_row(&layout, values, available_at),
            ))
        }
        _ => None,
    };
    let spec = plan.spec.clone();
    let (rows, letters) = decode_with(events, plan.decoder.clone(), move |meta, values| {
        spec.event_row(meta, values)
    });
    Ok((
        windowed_features_with(rows, labels, plan.spec.clone(), snapshots),
        letters,
    ))
}

/// In a cluster of several processes (`cluster`), sends each feature vector to the worker that
/// read its partition ([`weir_connectors::kafka::source::owner_of`]), so that it is scored,
/// sunk, acknowledged and committed by the process that read it; in one process the vectors
/// stay where they are (the process's ledger sees every acknowledgement).
pub fn to_owners<'s>(values: StreamVec<'s, u64, FeatureValues>, cluster: bool) -> StreamVec<'s, u64, FeatureValues> {
    if !cluster {
        return values;
    }
    use timely::dataflow::operators::Exchange;
    values.exchange(|fv: &FeatureValues| fv.meta.lineage.partition as u64)
}

/// Runs one worker's dataflow to completion: steps until `probe` is done and every one of the
/// process's `n_sources` sources has finished (no worker leaves a consumer group while another
/// still commits). If building the dataflow failed (`built`), requests shutdown, counts this
/// worker's sources as finished (of the process's `local_workers` workers) so the other
/// workers do not wait for them, and returns the error.
///
/// # Errors
/// The build error.
pub fn drive_worker(
    worker: &mut timely::worker::Worker,
    built: Result<(), String>,
    probe: &ProbeHandle<u64>,
    flow: &FlowControl,
    n_sources: usize,
    local_workers: usize,
) -> Result<(), String> {
    if let Err(e) = built {
        flow.request_shutdown();
        for _ in 0..n_sources / local_workers.max(1) {
            flow.source_finished();
        }
        return Err(e);
    }
    while !probe.done() || flow.sources_finished() < n_sources {
        worker.step_or_park(Some(Duration::from_millis(1)));
    }
    Ok(())
}

/// The Kafka source of `cfg` on `brokers` (bounded or live), starting at `start` or the
/// configured position.
pub fn source_config(
    cfg: &TopologyConfig,
    brokers: &str,
    bounded: bool,
    start: Option<StartPosition>,
) -> KafkaSourceConfig {
    KafkaSourceConfig {
        brokers: brokers.to_string(),
        topic: cfg.source.topic.clone(),
        group_id: cfg.source.group_id.clone(),
        start: start.unwrap_or_else(|| cfg.start_position()),
        bounded,
        ranges: None,
        // One process reads every partition (the feature store needs them all); no rebalances.
        start_offsets: None,
        commit_floor: None,
        follows: None,
        commit: true,
        idle_timeout: cfg.source.idle_timeout,
        max_poll_records: cfg.source.max_poll_records.min(cfg.batching.max_batch_rows.max(1)),
        commit_interval: cfg.source.commit_interval,
        pause_after: cfg.source.pause_after,
        allowed_lateness_ms: cfg.source.allowed_lateness.as_millis() as i64,
        event_time: cfg.event_time(),
        drain_timeout: cfg.source.drain_timeout,
        properties: cfg.source.properties.clone(),
    }
}

/// The labels side input of `cfg`, if its features need labels: read from the start of the
/// labels topic (all the history the windows need), never committed (no sink acknowledges labels).
pub fn labels_source(cfg: &TopologyConfig, source: &KafkaSourceConfig) -> Option<KafkaSourceConfig> {
    cfg.feature_spec().needs_labels().then(|| KafkaSourceConfig {
        topic: cfg.labels.topic.clone(),
        group_id: format!("{}-labels", cfg.source.group_id),
        start: StartPosition::Earliest,
        commit: false,
        start_offsets: None,
        commit_floor: None,
        follows: Some(source.topic.clone()),
        // A label's time is when it became known: its message timestamp.
        event_time: EventTime::MessageTimestamp,
        ..source.clone()
    })
}

/// Runs `cfg` until its source completes (bounded) or shutdown is requested.
///
/// # Errors
/// [`TopologyError`] if the model, a connector or a worker fails. Start-up errors (model,
/// runtime, connectors) are reported before any event is read.
pub fn run_topology(cfg: &TopologyConfig, opts: RunOptions) -> Result<RunReport, TopologyError> {
    let brokers = opts.brokers.clone().unwrap_or_else(|| cfg.source.brokers.clone());
    let metrics = opts
        .metrics
        .clone()
        .unwrap_or_else(|| Arc::new(Metrics::new(&cfg.topology.name)));
    metrics.declare_dead_letter_reasons(&weir_operators::DEAD_LETTER_REASONS);
    metrics.declare_source_topic(&cfg.source.topic);
    metrics.declare_source_topic(&cfg.labels.topic);
    let workers = cfg.topology.workers;
    metrics.workers.set(workers as i64);
    let (window, max_inflight_batches) = opts
        .window
        .unwrap_or((cfg.batching.window(), cfg.batching.max_inflight_batches));
    let live_window = opts
        .live_window
        .clone()
        .unwrap_or_else(|| Arc::new(SharedWindow::new(window)));
    let window = live_window.get();
    crate::reload::publish_window(&metrics, window);
    let flow = opts
        .flow
        .clone()
        .unwrap_or_else(|| Arc::new(flow_control(cfg, window.max_batch_rows)));
    let ledger = opts.ledger.clone().unwrap_or_default();
    // `max_wait = "auto"` (a live window: not a backfill's own `window`).
    let _adaptive = (cfg.batching.adaptive && opts.window.is_none()).then(|| {
        crate::adapt::spawn(
            cfg.batching.p99_target,
            live_window.clone(),
            workers,
            flow.clone(),
            metrics.clone(),
        )
    });
    let spec = cfg.feature_spec();

    // Model first: a missing or mismatched model fails before anything connects.
    let (scorers, provider) = match &opts.scorer {
        Some(factory) => {
            let s: Result<Vec<_>, _> = (0..cfg.model.inference_threads).map(|_| factory()).collect();
            (s?, None)
        }
        None => {
            let (s, p) = open_scorers(cfg, opts.runtime.clone())?;
            (s, Some(p))
        }
    };
    let provider_name = provider.map(|p| p.name()).unwrap_or("custom").to_string();
    if let Some(p) = provider {
        // A CPU-only machine with ["cuda", "cpu"] is the normal case: one INFO line naming the
        // provider in use, and the fallback metric.
        let requested = cfg.execution_providers()[0];
        if p != requested {
            metrics.provider_fallbacks.inc();
        }
        tracing::info!(
            provider = p.name(),
            requested = requested.name(),
            fallback = p != requested,
            model = %cfg.model_path().display(),
            version = %cfg.model.version,
            "model loaded"
        );
    }
    metrics
        .execution_provider
        .with_label_values(&[provider_name.as_str()])
        .set(1);
    metrics
        .model_info
        .with_label_values(&[cfg.model.version.as_str()])
        .set(1);

    // Client properties librdkafka refuses fail here, naming their section; then the brokers
    // must answer (an unreachable address is named within seconds, not after 30 s of silence).
    cfg.check_clients()?;
    let bounded = opts.mode.is_bounded();
    let field = if opts.brokers.is_some() {
        "--brokers"
    } else {
        "source.brokers"
    };
    wait_for_brokers(&brokers, &cfg.source.properties, field, !bounded, &flow)?;

    let id_column = cfg.id_column();
    let sink: Arc<dyn ScoreSink> = match (&opts.sink, cfg.sink.kind.as_str()) {
        (Some(SinkSpec::Kafka(topic)), _) => Arc::new(KafkaScoreSink::new(
            &brokers,
            topic,
            &id_column,
            &cfg.sink.properties,
            ledger.clone(),
            metrics.clone(),
        )?),
        (Some(SinkSpec::Parquet(dir)), _) => {
            let sink = ParquetScoreSink::new(
                dir,
                &id_column,
                cfg.sink.max_rows_per_file,
                cfg.sink.row_group_rows,
                ledger.clone(),
                metrics.clone(),
            )?;
            Arc::new(match &opts.parquet_prefix {
                Some(p) => sink.with_prefix(p),
                None => sink,
            })
        }
        (None, "parquet") => Arc::new(ParquetScoreSink::new(
            cfg.sink.path.as_ref().expect("validated"),
            &id_column,
            cfg.sink.max_rows_per_file,
            cfg.sink.row_group_rows,
            ledger.clone(),
            metrics.clone(),
        )?),
        _ => Arc::new(KafkaScoreSink::new(
            &brokers,
            &cfg.sink.topic,
            &id_column,
            &cfg.sink.properties,
            ledger.clone(),
            metrics.clone(),
        )?),
    };
    let dlq: Arc<dyn DeadLetterSink> = Arc::new(KafkaDeadLetterSink::new(
        &brokers,
        &cfg.dead_letter.topic,
        &cfg.source.topic,
        &cfg.dead_letter.properties,
        ledger.clone(),
        metrics.clone(),
    )?);
    // Score records a sink fails after `write` (a permanent delivery error) become dead letters.
    sink.set_dead_letters(dlq.clone());

    let server = match cfg.metrics.listen.as_str() {
        "" => None,
        addr => Some(crate::http::MetricsServer::start(addr, metrics.clone())?),
    };
    let ready = server.as_ref().map(|s| s.ready_flag());

    // Challenger models: their own sessions and sinks, acknowledging into a ledger of their
    // own (their deliveries commit nothing), counted in metrics of their own.
    let mut shadows = Vec::new();
    let mut shadow_sinks: Vec<Arc<dyn ScoreSink>> = Vec::new();
    for (i, sh) in cfg.shadows.iter().enumerate() {
        let env = init_runtime(&opts.runtime.clone().unwrap_or_else(default_runtime_path))?;
        let spec = ModelSpec {
            path: cfg.shadow_path(i),
            version: sh.version.clone(),
            features: cfg.model.features.clone(),
            input: cfg.model.input.clone(),
            output: cfg.model.output.clone(),
            execution_providers: cfg.execution_providers(),
            intra_threads: cfg.model.intra_threads,
        };
        let scorers = (0..cfg.model.inference_threads)
            .map(|_| OnnxScorer::open(env, &spec).map(|s| Box::new(s) as Box<dyn Scorer>))
            .collect::<Result<Vec<_>, _>>()?;
        let (own_ledger, own_metrics) = (
            Arc::new(DeliveryLedger::new()),
            Arc::new(Metrics::new(&cfg.topology.name)),
        );
        let shadow_sink: Arc<dyn ScoreSink> = match (&opts.sink, cfg.sink.kind.as_str()) {
            (Some(SinkSpec::Parquet(dir)), _) => Arc::new(ParquetScoreSink::new(
                &dir.join(format!("shadow-{}", sh.version)),
                &id_column,
                cfg.sink.max_rows_per_file,
                cfg.sink.row_group_rows,
                own_ledger,
                own_metrics,
            )?),
            (None, "parquet") => Arc::new(ParquetScoreSink::new(
                &cfg.sink
                    .path
                    .as_ref()
                    .expect("validated")
                    .join(format!("shadow-{}", sh.version)),
                &id_column,
                cfg.sink.max_rows_per_file,
                cfg.sink.row_group_rows,
                own_ledger,
                own_metrics,
            )?),
            _ => Arc::new(KafkaScoreSink::new(
                &brokers,
                &cfg.shadow_topic(i),
                &id_column,
                &cfg.sink.properties,
                own_ledger,
                own_metrics,
            )?),
        };
        tracing::info!(version = %sh.version, model = %spec.path.display(), fraction = sh.fraction, sink = %shadow_sink.describe(), "shadow model loaded");
        shadow_sinks.push(shadow_sink.clone());
        shadows.push(weir_operators::inference::Shadow {
            version: sh.version.clone(),
            fraction: sh.fraction,
            sink: shadow_sink,
            scorers,
        });
    }

    let (tx, rx) = crossbeam_channel::bounded(max_inflight_batches);
    let pool = InferencePool::spawn_with_shadows(
        scorers,
        rx,
        sink.clone(),
        dlq.clone(),
        metrics.clone(),
        cfg.model.version.clone(),
        opts.model_switch.clone(),
        shadows,
    );

    let mut source_config = source_config(cfg, &brokers, bounded, opts.start);
    if let Some(r) = opts.mode.ranges() {
        source_config.ranges = Some(Arc::new(r.source.clone()));
    }
    // Snapshots of the feature state (a live run with windowed features and `[snapshot] dir`).
    let snapshot_store = (!bounded && spec.is_windowed() && !cfg.snapshot.dir.as_os_str().is_empty())
        .then(|| weir_feature_store::snapshot::SnapshotStore::new(&cfg.snapshot.dir));
    let snapshot_stats = Arc::new(weir_feature_store::snapshot::SnapshotStats::default());
    let definitions = weir_feature_store::keyed::stage_definitions(&spec);
    // How far before the first event not committed a usable cut is: an event may arrive that
    // much behind the latest one (late, or stamped in the future).
    let snapshot_margin_ms = (cfg.source.allowed_lateness + cfg.decode.allowed_future).as_millis() as u64;
    // A live restart loads the latest usable snapshot and replays what came after it, or
    // replays retained history into the feature store (crate::recovery).
    let recovery = match (bounded, source_config.start) {
        (false, StartPosition::Committed) => crate::recovery::plan(
            &brokers,
            &cfg.source.topic,
            &cfg.source.group_id,
            cfg.backfill_warmup_ms(),
            snapshot_store.as_ref().map(|store| crate::recovery::SnapshotSource {
                store,
                definitions: &definitions,
                margin_ms: snapshot_margin_ms as i64,
            }),
            Duration::from_secs(30),
        )?,
        _ => None,
    };
    let (recovery, restored) = match recovery {
        Some((plan, restored)) => (Some(plan), restored),
        None => (None, None),
    };
    let snapshots = weir_feature_store::keyed::Snapshots {
        settings: snapshot_store
            .clone()
            .map(|store| weir_feature_store::snapshot::SnapshotSettings {
                store,
                interval_ms: cfg.snapshot.interval.as_millis() as u64,
                min_wall_ms: cfg.snapshot.interval.as_millis() as u64,
                keep: cfg.snapshot.keep,
                retain_ms: snapshot_margin_ms,
                stats: snapshot_stats.clone(),
            }),
        restore: restored.map(Arc::new),
    };
    let mut score_filter = opts.score_filter.clone();
    if let Some(plan) = &recovery {
        let replay = plan.replay_events();
        match plan.snapshot_cut_ms {
            Some(cut) => tracing::info!(
                replay_events = replay,
                snapshot_cut_ms = cut,
                snapshot_max_cut_ms = snapshots.restore.as_ref().map_or(0, |r| r.max_cut_ms),
                snapshot_entries = snapshots.restore.as_ref().map_or(0, |r| r.entries()),
                from_ms = ?plan.from_ms,
                start = ?plan.start,
                committed = ?plan.committed,
                "restart: feature state loaded from a snapshot; replaying only what came after its cut before the committed offsets (not scored again)"
            ),
            None => tracing::info!(
                replay_events = replay,
                from_ms = ?plan.from_ms,
                start = ?plan.start,
                committed = ?plan.committed,
                "restart: rebuilding feature state by replaying retained history before the committed offsets (not scored again)"
            ),
        }
        metrics
            .recovery_snapshot_cut_seconds
            .set(plan.snapshot_cut_ms.unwrap_or(0) as f64 / 1000.0);
        metrics.recovery_events.set(replay);
        source_config.start_offsets = Some(Arc::new(plan.start.clone()));
        source_config.commit_floor = Some(Arc::new(plan.committed.clone()));
        let plan = plan.clone();
        score_filter = Some(Arc::new(move |l| plan.scores(l)));
    }
    // Completes a Parquet file once shutdown drained the pipeline, so that its rows are
    // acknowledged before the sources' final commit; publishes readiness: running, brokers
    // reachable, feature state rebuilt (after a restart), not draining.
    let flusher = {
        let (flow, metrics, sink, ready, ledger) = (
            flow.clone(),
            metrics.clone(),
            sink.clone(),
            ready.clone(),
            ledger.clone(),
        );
        let mut flushed = false;
        let t0 = Instant::now();
        let max_memory = cfg.topology.max_memory.map(|m| m.as_u64());
        metrics.memory_limit.set(max_memory.unwrap_or(0) as i64);
        let mut replaying: Option<BTreeMap<i32, i64>> = recovery.as_ref().map(|plan| {
            plan.committed
                .iter()
                .filter(|(p, c)| plan.start.get(p).is_some_and(|s| s < c))
                .map(|(p, c)| (*p, *c))
                .collect()
        });
        Periodic::spawn("weir-flusher", Duration::from_millis(50), move || {
            if let Some(rest) = replaying.as_mut() {
                let parts: Vec<i32> = rest.keys().copied().collect();
                for (p, o) in ledger.committable(&parts) {
                    if rest.get(&p).is_some_and(|c| o >= *c) {
                        rest.remove(&p);
                    }
                }
                if rest.is_empty() {
                    replaying = None;
                    let secs = t0.elapsed().as_secs_f64();
                    metrics.recovery_seconds.set(secs);
                    tracing::info!(
                        replayed_events = metrics.recovery_events.get(),
                        seconds = secs,
                        "feature state rebuilt from retained history"
                    );
                }
            }
            if let Some(r) = &ready {
                let up = !flow.shutdown_requested() && replaying.is_none() && metrics.broker_reachable.get() == 1;
                r.store(up, std::sync::atomic::Ordering::Release);
            }
            metrics.set_paused_seconds(flow.paused_micros());
            {
                use std::sync::atomic::Ordering::Relaxed;
                // Counters follow the snapshot writers' running totals.
                let advance = |c: &prometheus::IntCounter, total: u64| {
                    let d = total.saturating_sub(c.get());
                    if d > 0 {
                        c.inc_by(d);
                    }
                };
                advance(&metrics.snapshots_written, snapshot_stats.written.load(Relaxed));
                advance(&metrics.snapshot_bytes, snapshot_stats.bytes.load(Relaxed));
                advance(&metrics.snapshot_failures, snapshot_stats.failed.load(Relaxed));
                metrics
                    .snapshot_last_cut_seconds
                    .set(snapshot_stats.last_cut_ms.load(Relaxed) as f64 / 1000.0);
            }
            let rss = memory_stats::memory_stats().map_or(0, |m| m.physical_mem as u64);
            metrics.resident_memory.set(rss as i64);
            guard_memory(&flow, &metrics, rss, max_memory);
            let idle = flow.buffered_rows() == 0 && metrics.inflight_batches.get() == 0;
            if flow.shutdown_requested() && idle && !flushed {
                flushed = true;
                if let Err(e) = sink.flush(Duration::from_secs(30)) {
                    tracing::error!(error = %e, "sink flush at shutdown failed");
                }
            }
        })
    };
    let plan = FeaturePlan::of(cfg);
    let peers = crate::cluster::Peers::of(&cfg.cluster);
    let positions = Arc::new(weir_connectors::kafka::lag::ConsumerPositions::default());
    let lag_monitor = weir_connectors::kafka::lag::LagMonitor::spawn(
        &brokers,
        &cfg.source.group_id,
        &cfg.source.properties,
        positions.clone(),
        metrics.clone(),
        Duration::from_secs(1),
    )?;
    let shared = SourceShared {
        ledger: ledger.clone(),
        flow: flow.clone(),
        metrics: metrics.clone(),
        watermarks: Default::default(),
        positions,
        cluster: peers.as_ref().map(|p| p.local_workers(workers)),
    };
    let n_features = spec.len();
    let labels_config = labels_source(cfg, &source_config).map(|mut l| {
        l.ranges = opts.mode.ranges().map(|r| Arc::new(r.labels.clone()));
        l
    });
    let gate_counts = Arc::new(GateCounts::default());
    let n_sources = workers * (1 + labels_config.is_some() as usize);

    let started = Instant::now();
    let worker_result = crate::cluster::execute(peers.as_ref(), workers, {
        let (tx, dlq, flow, metrics) = (tx, dlq.clone(), flow.clone(), metrics.clone());
        let (ledger, gate_counts, filter) = (ledger.clone(), gate_counts.clone(), score_filter.clone());
        let cluster = peers.is_some();
        move |worker| -> Result<(), String> {
            let probe = ProbeHandle::new();
            let built = worker.dataflow::<u64, _, _>(|scope| -> Result<(), String> {
                let (values, letters) = feature_dataflow(
                    scope,
                    &source_config,
                    labels_config.as_ref(),
                    &plan,
                    &shared,
                    &snapshots,
                )?;
                let dlq = dlq.clone();
                let (f, l, filt) = (flow.clone(), ledger.clone(), filter.clone());
                letters
                    .inspect(move |letter| {
                        f.remove_in_flight(1);
                        if filt.as_ref().is_some_and(|keep| !keep(letter.lineage)) {
                            // Warm-up: its letter was sent when its own range was run.
                            l.ack(letter.lineage);
                            return;
                        }
                        if let Err(e) = dlq.send(letter.clone()) {
                            tracing::error!(error = %e, "dead-letter sink rejected a letter");
                        }
                    })
                    .probe_with(&probe);
                let rows = score_gate(
                    to_owners(values, cluster),
                    filter.clone(),
                    flow.clone(),
                    ledger.clone(),
                    gate_counts.clone(),
                );
                micro_batch(
                    rows,
                    live_window.clone(),
                    n_features,
                    tx.clone(),
                    flow.clone(),
                    metrics.clone(),
                )
                .probe_with(&probe);
                Ok(())
            });
            drive_worker(worker, built, &probe, &flow, n_sources, workers)
        }
    })
    .map_err(TopologyError::Worker)?;
    let mut first_error = None;
    for r in worker_result.join() {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    // Every micro-batcher (and so every queue sender) is gone: inference drains and stops.
    pool.join();
    let flush_result = sink.close().and(dlq.flush(Duration::from_secs(60)));
    for s in &shadow_sinks {
        if let Err(e) = s.close() {
            tracing::warn!(sink = %s.describe(), error = %e, "shadow sink did not close cleanly");
        }
    }
    drop(server);
    drop(lag_monitor);
    drop(flusher);
    let elapsed = started.elapsed();
    if let Some(e) = first_error {
        return Err(TopologyError::Worker(e));
    }
    flush_result?;
    metrics.set_paused_seconds(flow.paused_micros());
    if let Some(p) = &peers {
        tracing::info!(
            process = p.process,
            bytes_sent = crate::cluster::bytes_sent(),
            "sent to the cluster's other processes"
        );
    }
    tracing::info!(
        pauses = flow.pauses(),
        paused_ms = flow.paused_micros() / 1000,
        "backpressure"
    );

    let batches = metrics.batches_total();
    let dead_letters = metrics.dead_letters_by_reason();
    Ok(RunReport {
        events_in: metrics.events_in.get(),
        scored: metrics.scores_out.get(),
        warmup: gate_counts.warmup.load(std::sync::atomic::Ordering::Relaxed),
        held_back: gate_counts.held_back.load(std::sync::atomic::Ordering::Relaxed),
        dead_letters,
        batches,
        mean_batch_rows: metrics.batch_rows.get_sample_sum() / (batches.max(1) as f64),
        elapsed,
        p50_latency_us: metrics.latency_quantile_us(0.5),
        p99_latency_us: metrics.latency_quantile_us(0.99),
        max_buffered_rows: flow.max_buffered_rows(),
        max_in_flight_rows: flow.max_in_flight(),
        paused: Duration::from_micros(flow.paused_micros()),
        execution_provider: provider_name,
        sink: sink.describe(),
        stages_us: metrics.stage_summary(),
    })
}
