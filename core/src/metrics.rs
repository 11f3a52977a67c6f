//! Prometheus metrics of one topology, and an HDR histogram of end-to-end latency for summaries.
//!
//! Names follow the Prometheus naming conventions (<https://prometheus.io/docs/practices/naming/>):
//! `weir_` prefix, base units (`_seconds`), `_total` for counters. Every metric carries the
//! constant label `topology`, and those of one operator the constant label `operator`
//! (`source`, `micro_batch`, `inference`, `score_sink`, `dead_letter_sink`).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// A stage of a scored event's way from the broker to the score sink's acknowledgement: the
/// label values of `weir_stage_latency_seconds{stage}`. Read to acknowledgement
/// (`weir_pipeline_latency_seconds`) is the sum of `features` to `sink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Kafka message timestamp to the source's read (the producer's batching, the broker, the
    /// fetch; millisecond resolution).
    Broker,
    /// Source read to the feature row reaching the micro-batcher: decode, the wait for the
    /// watermark (every partition and the labels past the event's time), the feature operators.
    Features,
    /// Feature row reaching the micro-batcher to its batch's flush (the window).
    Batch,
    /// Batch flushed to an inference thread taking it (the queue of `max_inflight_batches`).
    Queue,
    /// The batch's inference (ONNX Runtime).
    Inference,
    /// Inference done to the score sink's acknowledgement (producer and broker, `acks = all`).
    Sink,
}

impl Stage {
    /// Every stage, in the order an event passes them.
    pub const ALL: [Stage; 6] = [
        Stage::Broker,
        Stage::Features,
        Stage::Batch,
        Stage::Queue,
        Stage::Inference,
        Stage::Sink,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Broker => "broker",
            Stage::Features => "features",
            Stage::Batch => "batch",
            Stage::Queue => "queue",
            Stage::Inference => "inference",
            Stage::Sink => "sink",
        }
    }
}

/// Why a micro-batch was flushed (label `cause` of `weir_batches_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushCause {
    /// `max_batch_rows` reached.
    Size,
    /// The oldest row waited `max_wait`.
    Time,
    /// Input ended or shutdown: remaining rows flushed.
    Drain,
}

impl FlushCause {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FlushCause::Size => "size",
            FlushCause::Time => "time",
            FlushCause::Drain => "drain",
        }
    }
}

/// All metrics of one topology. Cheap to share (`Arc<Metrics>`); every handle is thread-safe.
pub struct Metrics {
    /// The registry the metrics live in (for a `/metrics` endpoint or a text dump).
    pub registry: Registry,
    /// `weir_source_events_total`: events read by sources.
    pub events_in: IntCounter,
    /// `weir_sink_scores_total`: scores acknowledged by the score sink.
    pub scores_out: IntCounter,
    /// `weir_dead_letters_total{reason}`: dead letters acknowledged by the dead-letter sink.
    pub dead_letters: IntCounterVec,
    /// `weir_dead_letters_unwritten_total`: dead letters the dead-letter topic refused even
    /// truncated (their events stay unacknowledged and are read again after a restart).
    pub dead_letters_unwritten: IntCounter,
    /// `weir_dead_letters_truncated_total`: dead letters written with a truncated payload (the
    /// original did not fit the producer's or the broker's record size limit).
    pub dead_letters_truncated: IntCounter,
    /// `weir_source_late_events_total{topic}`: events behind their partition's watermark when
    /// read (processed at the watermark instead of their own event time).
    pub late_events: IntCounterVec,
    /// `weir_batches_total{cause}`: micro-batches flushed, by cause (size, time, drain).
    pub batches: IntCounterVec,
    /// `weir_batch_rows`: rows per flushed micro-batch.
    pub batch_rows: Histogram,
    /// `weir_batch_fill_wait_seconds`: how long the oldest row of a batch waited for the flush.
    pub batch_fill_wait: Histogram,
    /// `weir_inference_batch_seconds`: ONNX Runtime time per micro-batch.
    pub inference_seconds: Histogram,
    /// `weir_end_to_end_latency_seconds`: per scored event, from its Kafka message timestamp
    /// (the event time) to the score sink's acknowledgement. On a replayed backlog this includes
    /// the age of the data; see `pipeline_latency` for weir's own share.
    pub e2e_latency: Histogram,
    /// `weir_pipeline_latency_seconds`: per event, from source read to sink acknowledgement.
    pub pipeline_latency: Histogram,
    /// `weir_feature_latency_seconds`: per event, from source read to its feature row reaching
    /// the micro-batcher: the wait for the watermark plus the feature operator. The rest of
    /// `pipeline_latency` is the micro-batch window, inference and the sink.
    pub feature_latency: Histogram,
    /// `weir_consumer_lag_messages{topic,partition}`: messages between the source's position and
    /// the partition's high watermark, updated about once a second.
    pub consumer_lag: IntGaugeVec,
    /// `weir_batch_window_max_rows`: the micro-batch window's `max_batch_rows` in use.
    pub window_max_rows: IntGauge,
    /// `weir_batch_window_max_wait_seconds`: the micro-batch window's `max_wait` in use.
    pub window_max_wait: prometheus::Gauge,
    /// `weir_batch_window_adaptive`: 1 when the adaptive controller sets the window
    /// (`max_wait = "auto"`).
    pub window_adaptive: IntGauge,
    /// `weir_batch_window_p99_target_seconds`: the adaptive controller's p99 target (0: fixed).
    pub window_p99_target: prometheus::Gauge,
    /// `weir_batch_window_overloaded`: 1 while the adaptive controller finds that even the
    /// largest batches cannot keep up (backpressure holds the sources).
    pub window_overloaded: IntGauge,
    /// `weir_config_reloads_total{result}`: live reloads of the topology file, `applied` or
    /// `rejected` (invalid edit; the running window was kept).
    pub config_reloads: IntCounterVec,
    /// `weir_inflight_batches`: batches handed to inference and not yet written to the sink.
    pub inflight_batches: IntGauge,
    /// `weir_execution_provider_info{provider}`: 1 for the execution provider in use.
    pub execution_provider: IntGaugeVec,
    /// `weir_execution_provider_fallbacks_total`: requested providers that could not be used.
    pub provider_fallbacks: IntCounter,
    /// `weir_model_info{version}`: 1 for the model version in use.
    pub model_info: IntGaugeVec,
    /// `weir_model_scored_rows_total{version}`: rows each model version scored (hot swaps).
    pub model_scored_rows: IntCounterVec,
    /// `weir_shadow_scored_rows_total{version}`: rows each shadow (challenger) model scored.
    pub shadow_scored_rows: IntCounterVec,
    /// `weir_score_distribution{version}`: the scores of each model (primary and shadows), in
    /// buckets of 0.05 from 0 to 1: their distributions side by side.
    pub score_distribution: HistogramVec,
    /// `weir_model_swaps_total{result}`: model swaps `applied` or `rejected` (with the reason
    /// in the log).
    pub model_swaps: IntCounterVec,
    /// `weir_backpressure_paused_seconds_total` is derived from [`crate::FlowControl`]; this
    /// counter holds the last value published by [`Metrics::set_paused_seconds`].
    pub paused_seconds: prometheus::Counter,
    /// `weir_broker_reachable`: 1 while the Kafka brokers answer metadata requests (checked
    /// about once a second), 0 while they do not.
    pub broker_reachable: IntGauge,
    /// `weir_recovery_replayed_events`: events a live restart replays into the feature store
    /// (retained history before the group's commit; not scored again).
    pub recovery_events: IntGauge,
    /// `weir_recovery_seconds`: time from start to the end of that replay (feature state rebuilt).
    pub recovery_seconds: prometheus::Gauge,
    /// `weir_recovery_snapshot_cut_timestamp_seconds`: the cut (event time, seconds since the
    /// Unix epoch, ms resolution) of the snapshot a live restart loaded its feature state from
    /// (0: none, replayed history).
    pub recovery_snapshot_cut_seconds: prometheus::Gauge,
    /// `weir_snapshots_written_total`: feature-state snapshot files written by this process.
    pub snapshots_written: IntCounter,
    /// `weir_snapshot_written_bytes_total`: their bytes.
    pub snapshot_bytes: IntCounter,
    /// `weir_snapshot_failures_total`: snapshot files that could not be written.
    pub snapshot_failures: IntCounter,
    /// `weir_snapshot_last_cut_timestamp_seconds`: the latest cut written (event time, seconds
    /// since the Unix epoch, ms resolution).
    pub snapshot_last_cut_seconds: prometheus::Gauge,
    /// `weir_resident_memory_bytes`: the process's resident set size, bytes.
    pub resident_memory: IntGauge,
    /// `weir_memory_limit_bytes`: `topology.max_memory` (0: none).
    pub memory_limit: IntGauge,
    /// `weir_ready`: 1 while `/readyz` answers ready, 0 otherwise.
    pub ready: IntGauge,
    /// `weir_workers`: timely workers of the topology (one main-input source each: the
    /// denominator of the paused fraction).
    pub workers: IntGauge,
    /// `weir_stage_latency_seconds{stage}`: per scored event, the time it spent in each
    /// [`Stage`].
    pub stage_latency: HistogramVec,
    latency_us: Mutex<hdrhistogram::Histogram<u64>>,
    /// Read to acknowledgement since the last [`Metrics::take_recent_latency_quantile_us`], µs.
    recent_latency_us: Mutex<hdrhistogram::Histogram<u64>>,
    feature_latency_us: Mutex<hdrhistogram::Histogram<u64>>,
    /// Per [`Stage`], in [`Stage::ALL`]'s order, µs.
    stage_us: Mutex<Vec<hdrhistogram::Histogram<u64>>>,
    /// Milliseconds (the resolution of Kafka timestamps).
    event_latency_ms: Mutex<hdrhistogram::Histogram<u64>>,
}

/// Buckets of the latency histograms, seconds: 100 µs to 30 s, about 1.5x apart from 1 ms to
/// 1 s, where weir's latencies fall (a micro-batch window of a few ms, a watermark wait of a few
/// ms to a few hundred ms) and where operators read p99: `histogram_quantile` interpolates
/// inside a bucket, so a p99 is off by at most the bucket's width (0.2 s to 0.5 s was one bucket
/// before, and a p99 of 333 ms read as 478 ms).
pub const SECONDS_BUCKETS: [f64; 27] = [
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
];

fn seconds_buckets() -> Vec<f64> {
    SECONDS_BUCKETS.to_vec()
}

impl Metrics {
    /// Creates and registers the metrics of topology `topology`.
    ///
    /// # Panics
    /// Never in practice: registration only fails on duplicate names, which this function does
    /// not create.
    pub fn new(topology: &str) -> Self {
        Self::for_process(topology, None)
    }

    /// As [`Metrics::new`], for process `process` of a cluster: every metric also carries the
    /// label `process` (each process serves its own `/metrics`; dashboards sum over them).
    pub fn for_process(topology: &str, process: Option<usize>) -> Self {
        let mut labels = HashMap::from([("topology".to_string(), topology.to_string())]);
        if let Some(p) = process {
            labels.insert("process".to_string(), p.to_string());
        }
        let registry = Registry::new_custom(None, Some(labels)).expect("valid registry labels");
        let opts = |name: &str, help: &str, operator: &str| {
            let o = Opts::new(name, help);
            if operator.is_empty() {
                o
            } else {
                o.const_label("operator", operator)
            }
        };
        let histogram_opts = |name: &str, help: &str, operator: &str, buckets: Vec<f64>| {
            HistogramOpts::from(opts(name, help, operator)).buckets(buckets)
        };
        let events_in = register(
            &registry,
            IntCounter::with_opts(opts("weir_source_events_total", "Events read by sources.", "source")),
        );
        let scores_out = register(
            &registry,
            IntCounter::with_opts(opts(
                "weir_sink_scores_total",
                "Scores acknowledged by the score sink.",
                "score_sink",
            )),
        );
        let dead_letters_unwritten = register(
            &registry,
            IntCounter::with_opts(opts(
                "weir_dead_letters_unwritten_total",
                "Dead letters the dead-letter topic refused even truncated; their events stay uncommitted.",
                "dead_letter_sink",
            )),
        );
        let dead_letters_truncated = register(
            &registry,
            IntCounter::with_opts(opts(
                "weir_dead_letters_truncated_total",
                "Dead letters written with a truncated payload (the original was over the record size limit).",
                "dead_letter_sink",
            )),
        );
        let dead_letters = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "weir_dead_letters_total",
                    "Dead letters acknowledged by the dead-letter sink, by reason.",
                    "dead_letter_sink",
                ),
                &["reason"],
            ),
        );
        let late_events = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "weir_source_late_events_total",
                    "Events behind their partition's watermark when read, processed at the watermark, by topic.",
                    "source",
                ),
                &["topic"],
            ),
        );
        let batches = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "weir_batches_total",
                    "Micro-batches flushed, by cause (size, time, drain).",
                    "micro_batch",
                ),
                &["cause"],
            ),
        );
        let batch_rows = register(
            &registry,
            Histogram::with_opts(histogram_opts(
                "weir_batch_rows",
                "Rows per flushed micro-batch.",
                "micro_batch",
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
                ],
            )),
        );
        let batch_fill_wait = register(
            &registry,
            Histogram::with_opts(histogram_opts(
                "weir_batch_fill_wait_seconds",
                "Time the oldest row of a micro-batch waited before the flush.",
                "micro_batch",
                seconds_buckets(),
            )),
        );
        let inference_seconds = register(
            &registry,
            Histogram::with_opts(histogram_opts(
                "weir_inference_batch_seconds",
                "ONNX Runtime time per micro-batch.",
                "inference",
                seconds_buckets(),
            )),
        );
        let mut e2e_buckets = seconds_buckets();
        e2e_buckets.extend([60.0, 300.0, 3600.0, 86400.0]);
        let e2e_latency = register(
            &registry,
            Histogram::with_opts(histogram_opts(
                "weir_end_to_end_latency_seconds",
                "Per scored event, from its Kafka message timestamp to the score sink's acknowledgement.",
                "",
                e2e_buckets,
            )),
        );
        let pipeline_latency = register(
            &registry,
            Histogram::with_opts(histogram_opts(
                "weir_pipeline_latency_seconds",
                "Per event, from source read to sink acknowledgement.",
                "",
                seconds_buckets(),
            )),
        );
        let feature_latency = register(
            &registry,
            Histogram::with_opts(histogram_opts(
                "weir_feature_latency_seconds",
                "Per event, from source read to its feature row reaching the micro-batcher (watermark wait and feature operator).",
                "",
                seconds_buckets(),
            )),
        );
        let stage_latency = register(
            &registry,
            HistogramVec::new(
                histogram_opts(
                    "weir_stage_latency_seconds",
                    "Per scored event, the time spent in each stage: broker (message timestamp to read), features (read to the micro-batcher: watermark wait and feature operators), batch (the window), queue (to an inference thread), inference, sink (inference to acknowledgement).",
                    "",
                    seconds_buckets(),
                ),
                &["stage"],
            ),
        );
        for s in Stage::ALL {
            stage_latency.with_label_values(&[s.as_str()]);
        }
        let consumer_lag = register(
            &registry,
            IntGaugeVec::new(
                opts(
                    "weir_consumer_lag_messages",
                    "Messages between the source's position and the partition's high watermark.",
                    "source",
                ),
                &["topic", "partition"],
            ),
        );
        let window_max_rows = register(
            &registry,
            IntGauge::with_opts(opts(
                "weir_batch_window_max_rows",
                "The micro-batch window's max_batch_rows in use.",
                "micro_batch",
            )),
        );
        let window_max_wait = register(
            &registry,
            prometheus::Gauge::with_opts(opts(
                "weir_batch_window_max_wait_seconds",
                "The micro-batch window's max_wait in use.",
                "micro_batch",
            )),
        );
        let window_adaptive = register(
            &registry,
            IntGauge::with_opts(opts(
                "weir_batch_window_adaptive",
                "1 when the adaptive controller sets the micro-batch window (max_wait = \"auto\").",
                "micro_batch",
            )),
        );
        let window_p99_target = register(
            &registry,
            prometheus::Gauge::with_opts(opts(
                "weir_batch_window_p99_target_seconds",
                "The adaptive controller's read-to-acknowledgement p99 target (0 with a fixed window).",
                "micro_batch",
            )),
        );
        let window_overloaded = register(
            &registry,
            IntGauge::with_opts(opts(
                "weir_batch_window_overloaded",
                "1 while the adaptive controller finds that even the largest batches cannot keep up.",
                "micro_batch",
            )),
        );
        let config_reloads = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "weir_config_reloads_total",
                    "Live reloads of the topology file, by result (applied, rejected).",
                    "",
                ),
                &["result"],
            ),
        );
        let inflight_batches = register(
            &registry,
            IntGauge::with_opts(opts(
                "weir_inflight_batches",
                "Batches handed to inference, not yet written.",
                "inference",
            )),
        );
        let execution_provider = register(
            &registry,
            IntGaugeVec::new(
                opts(
                    "weir_execution_provider_info",
                    "1 for the execution provider in use.",
                    "inference",
                ),
                &["provider"],
            ),
        );
        let model_scored_rows = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "weir_model_scored_rows_total",
                    "Rows each model version scored.",
                    "inference",
                ),
                &["version"],
            ),
        );
        let model_swaps = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "weir_model_swaps_total",
                    "Model swaps by result: applied, rejected.",
                    "inference",
                ),
                &["result"],
            ),
        );
        for r in ["applied", "rejected"] {
            model_swaps.with_label_values(&[r]);
        }
        let shadow_scored_rows = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "weir_shadow_scored_rows_total",
                    "Rows each shadow (challenger) model scored.",
                    "inference",
                ),
                &["version"],
            ),
        );
        let score_distribution = register(
            &registry,
            HistogramVec::new(
                histogram_opts(
                    "weir_score_distribution",
                    "Scores of each model version (primary and shadows), 0 to 1.",
                    "inference",
                    (1..=20).map(|i| i as f64 * 0.05).collect(),
                ),
                &["version"],
            ),
        );
        let model_info = register(
            &registry,
            IntGaugeVec::new(
                opts(
                    "weir_model_info",
                    "1 for the model version scoring events.",
                    "inference",
                ),
                &["version"],
            ),
        );
        let provider_fallbacks = register(
            &registry,
            IntCounter::with_opts(opts(
                "weir_execution_provider_fallbacks_total",
                "Requested execution providers that could not be used.",
                "inference",
            )),
        );
        let paused_seconds = register(
            &registry,
            prometheus::Counter::with_opts(opts(
                "weir_backpressure_paused_seconds_total",
                "Time sources spent paused by backpressure, summed over sources.",
                "source",
            )),
        );
        let gauge = |name: &str, help: &str| register(&registry, IntGauge::with_opts(opts(name, help, "")));
        let broker_reachable = gauge(
            "weir_broker_reachable",
            "1 while the Kafka brokers answer metadata requests, 0 while they do not.",
        );
        let recovery_events = gauge(
            "weir_recovery_replayed_events",
            "Events a live restart replays into the feature store without scoring them.",
        );
        let recovery_seconds = register(
            &registry,
            prometheus::Gauge::with_opts(opts(
                "weir_recovery_seconds",
                "Seconds from start until the feature state was rebuilt from retained history.",
                "",
            )),
        );
        let float_gauge =
            |name: &str, help: &str| register(&registry, prometheus::Gauge::with_opts(opts(name, help, "")));
        let recovery_snapshot_cut_seconds = float_gauge(
            "weir_recovery_snapshot_cut_timestamp_seconds",
            "Cut (event time, seconds since the Unix epoch) of the snapshot a live restart loaded its feature state from; 0: none.",
        );
        let counter = |name: &str, help: &str| register(&registry, IntCounter::with_opts(opts(name, help, "")));
        let snapshots_written = counter("weir_snapshots_written_total", "Feature-state snapshot files written.");
        let snapshot_bytes = counter(
            "weir_snapshot_written_bytes_total",
            "Bytes of feature-state snapshot files written.",
        );
        let snapshot_failures = counter(
            "weir_snapshot_failures_total",
            "Feature-state snapshot files that could not be written.",
        );
        let snapshot_last_cut_seconds = float_gauge(
            "weir_snapshot_last_cut_timestamp_seconds",
            "Latest feature-state snapshot cut written (event time, seconds since the Unix epoch).",
        );
        let resident_memory = gauge("weir_resident_memory_bytes", "Resident set size of the process, bytes.");
        let memory_limit = gauge(
            "weir_memory_limit_bytes",
            "topology.max_memory: sources pause above 90% of it (0: no limit).",
        );
        let ready = gauge(
            "weir_ready",
            "1 while /readyz answers ready (the topology runs), 0 otherwise.",
        );
        let workers = gauge(
            "weir_workers",
            "Timely workers of the topology, one main-input source each.",
        );
        // Standard process metrics (process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, ...; Linux only) and the build.
        #[cfg(target_os = "linux")]
        let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        let build_info = register(
            &registry,
            IntGaugeVec::new(
                opts("weir_build_info", "1, labelled with weir's version.", ""),
                &["version"],
            ),
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // Counters exist from start-up at 0 for their known label values: `rate` and `increase`
        // then see the first increment (a series that appears at 1 shows no increase).
        for cause in [FlushCause::Size, FlushCause::Time, FlushCause::Drain] {
            batches.with_label_values(&[cause.as_str()]);
        }
        for result in ["applied", "rejected"] {
            config_reloads.with_label_values(&[result]);
        }
        Self {
            registry,
            broker_reachable,
            recovery_events,
            recovery_seconds,
            recovery_snapshot_cut_seconds,
            snapshots_written,
            snapshot_bytes,
            snapshot_failures,
            snapshot_last_cut_seconds,
            resident_memory,
            memory_limit,
            ready,
            workers,
            events_in,
            scores_out,
            dead_letters,
            late_events,
            dead_letters_unwritten,
            dead_letters_truncated,
            batches,
            batch_rows,
            batch_fill_wait,
            inference_seconds,
            e2e_latency,
            pipeline_latency,
            feature_latency,
            consumer_lag,
            window_max_rows,
            window_max_wait,
            window_adaptive,
            window_p99_target,
            window_overloaded,
            config_reloads,
            inflight_batches,
            execution_provider,
            provider_fallbacks,
            model_info,
            model_scored_rows,
            model_swaps,
            shadow_scored_rows,
            score_distribution,
            paused_seconds,
            stage_latency,
            stage_us: Mutex::new(
                Stage::ALL
                    .iter()
                    .map(|_| hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"))
                    .collect(),
            ),
            recent_latency_us: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ),
            // 1 µs .. 1 h at 3 significant digits.
            latency_us: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ),
            feature_latency_us: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ),
            // 1 ms .. 1,000 days.
            event_latency_ms: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 86_400_000_000, 3).expect("valid bounds"),
            ),
        }
    }

    /// Records acknowledged events, each as `(read_at_us, event_time_ms)`: when the source read
    /// it ([`crate::clock::now_micros`], µs) and, for a score, its event time (the Kafka message
    /// timestamp, ms since the Unix epoch; `None` for a dead letter). Feeds
    /// `weir_pipeline_latency_seconds` (read to acknowledgement) and
    /// `weir_end_to_end_latency_seconds` (event time to acknowledgement, 0 if the event time is in
    /// the future), and the summaries of [`Metrics::latency_quantile_us`] and
    /// [`Metrics::event_latency_quantile_us`].
    pub fn record_acked(&self, events: impl IntoIterator<Item = (u64, Option<i64>)>) {
        let now_ms = crate::clock::wall_ms();
        let mut h = self.latency_us.lock().unwrap();
        let mut recent = self.recent_latency_us.lock().unwrap();
        let mut e = self.event_latency_ms.lock().unwrap();
        for (read_at, event_ms) in events {
            let us = crate::clock::micros_since(read_at);
            self.pipeline_latency.observe(us as f64 / 1e6);
            h.saturating_record(us.max(1));
            recent.saturating_record(us.max(1));
            if let Some(t) = event_ms {
                let ms = now_ms.saturating_sub(t).max(0) as u64;
                self.e2e_latency.observe(ms as f64 / 1e3);
                e.saturating_record(ms);
            }
        }
    }

    /// Declares the dead-letter reasons the topology can produce, so that each
    /// `weir_dead_letters_total{reason}` series exists at 0 from start-up.
    pub fn declare_dead_letter_reasons(&self, reasons: &[&str]) {
        for r in reasons {
            self.dead_letters.with_label_values(&[r]);
        }
    }

    /// Declares a source topic, so that `weir_source_late_events_total{topic}` exists at 0 from
    /// start-up.
    pub fn declare_source_topic(&self, topic: &str) {
        self.late_events.with_label_values(&[topic]);
    }

    /// Records feature rows reaching the micro-batcher, each by when the source read its event
    /// ([`crate::clock::now_micros`], µs). Feeds `weir_feature_latency_seconds` and
    /// [`Metrics::feature_latency_quantile_us`].
    pub fn record_featured(&self, read_at_us: impl IntoIterator<Item = u64>) {
        self.record_featured_at(crate::clock::now_micros(), read_at_us);
    }

    /// As [`Metrics::record_featured`], at `now` ([`crate::clock::now_micros`], µs).
    fn record_featured_at(&self, now: u64, read_at_us: impl IntoIterator<Item = u64>) {
        let local = self.feature_latency.local();
        let stage = self
            .stage_latency
            .with_label_values(&[Stage::Features.as_str()])
            .local();
        let mut h = self.feature_latency_us.lock().unwrap();
        let mut all = self.stage_us.lock().unwrap();
        for read_at in read_at_us {
            let us = now.saturating_sub(read_at);
            local.observe(us as f64 / 1e6);
            stage.observe(us as f64 / 1e6);
            h.saturating_record(us.max(1));
            all[Stage::Features as usize].saturating_record(us.max(1));
        }
        local.flush();
        stage.flush();
    }

    /// Quantile `q` of read to acknowledgement over the events acknowledged since the last call,
    /// µs (`None` if none), and starts a new interval: what the adaptive controller observes.
    pub fn take_recent_latency_quantile_us(&self, q: f64) -> Option<u64> {
        let mut h = self.recent_latency_us.lock().unwrap();
        let v = (!h.is_empty()).then(|| h.value_at_quantile(q));
        h.reset();
        v
    }

    /// Records `micros` (µs each, one per event) spent in `stage`.
    pub fn record_stage(&self, stage: Stage, micros: impl IntoIterator<Item = u64>) {
        let local = self.stage_latency.with_label_values(&[stage.as_str()]).local();
        let mut all = self.stage_us.lock().unwrap();
        let h = &mut all[stage as usize];
        for us in micros {
            local.observe(us as f64 / 1e6);
            h.saturating_record(us.max(1));
        }
        local.flush();
    }

    /// Records `n` events that spent `micros` µs each in `stage` (a batch's stages).
    pub fn record_stage_n(&self, stage: Stage, micros: u64, n: usize) {
        let hist = self.stage_latency.with_label_values(&[stage.as_str()]);
        for _ in 0..n {
            hist.observe(micros as f64 / 1e6);
        }
        self.stage_us.lock().unwrap()[stage as usize].saturating_record_n(micros.max(1), n as u64);
    }

    /// Quantile `q` (0..=1) of the time events spent in `stage`, µs; 0 if none.
    pub fn stage_quantile_us(&self, stage: Stage, q: f64) -> u64 {
        let all = self.stage_us.lock().unwrap();
        let h = &all[stage as usize];
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    }

    /// Read-to-micro-batcher latency quantile `q` (0..=1) in µs (see
    /// [`Metrics::record_featured`]); 0 if none.
    pub fn feature_latency_quantile_us(&self, q: f64) -> u64 {
        let h = self.feature_latency_us.lock().unwrap();
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    }

    /// Read-to-acknowledgement latency quantile `q` (0..=1) in µs over all recorded events; 0 if
    /// none.
    pub fn latency_quantile_us(&self, q: f64) -> u64 {
        let h = self.latency_us.lock().unwrap();
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    }

    /// Event-time-to-acknowledgement latency quantile `q` (0..=1) in µs (millisecond resolution)
    /// over all scored events; 0 if none.
    pub fn event_latency_quantile_us(&self, q: f64) -> u64 {
        let h = self.event_latency_ms.lock().unwrap();
        if h.is_empty() {
            0
        } else {
            // Recorded in whole milliseconds (exact below 2,048 ms at 3 significant digits).
            h.value_at_quantile(q) * 1000
        }
    }

    /// Clears the latency summaries behind [`Metrics::latency_quantile_us`] and
    /// [`Metrics::event_latency_quantile_us`] (not the Prometheus histograms, which are
    /// cumulative by definition): starts a measurement window, e.g. after a warm-up.
    pub fn reset_latency_summaries(&self) {
        self.latency_us.lock().unwrap().reset();
        self.feature_latency_us.lock().unwrap().reset();
        self.event_latency_ms.lock().unwrap().reset();
        self.stage_us.lock().unwrap().iter_mut().for_each(|h| h.reset());
    }

    /// `(stage, p50 µs, p99 µs)` of every [`Stage`], in order (the run summary's breakdown).
    pub fn stage_summary(&self) -> Vec<(&'static str, u64, u64)> {
        Stage::ALL
            .iter()
            .map(|s| {
                (
                    s.as_str(),
                    self.stage_quantile_us(*s, 0.5),
                    self.stage_quantile_us(*s, 0.99),
                )
            })
            .collect()
    }

    /// Publishes the total paused time (from [`crate::FlowControl::paused_micros`]).
    pub fn set_paused_seconds(&self, micros: u64) {
        // A counter only goes up: add what was paused since the last publication.
        let delta = micros as f64 / 1e6 - self.paused_seconds.get();
        if delta > 0.0 {
            self.paused_seconds.inc_by(delta);
        }
    }

    /// Total dead letters acknowledged, over all reasons.
    pub fn dead_letters_total(&self) -> u64 {
        sum_counter_vec(&self.dead_letters)
    }

    /// Dead letters acknowledged, by reason.
    pub fn dead_letters_by_reason(&self) -> std::collections::BTreeMap<String, u64> {
        use prometheus::core::Collector;
        let mut out = std::collections::BTreeMap::new();
        for mf in self.dead_letters.collect() {
            for m in mf.get_metric() {
                if let Some(l) = m.get_label().iter().find(|l| l.name() == "reason") {
                    out.insert(l.value().to_string(), m.get_counter().get_value() as u64);
                }
            }
        }
        out
    }

    /// Total micro-batches flushed, over all causes.
    pub fn batches_total(&self) -> u64 {
        sum_counter_vec(&self.batches)
    }

    /// The metrics in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("text encoding is UTF-8")
    }
}

/// Registers a newly built metric in `registry` and returns it.
///
/// # Panics
/// If the metric is invalid or its name is already registered: both are programming errors of
/// [`Metrics::new`].
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<C>) -> C {
    let m = metric.expect("valid metric");
    registry.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn sum_counter_vec(v: &IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    v.collect()
        .iter()
        .flat_map(|mf| mf.get_metric().iter())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_quantiles() {
        let m = Metrics::new("t");
        m.batches.with_label_values(&["size"]).inc_by(3);
        m.batches.with_label_values(&["time"]).inc();
        assert_eq!(m.batches_total(), 4);
        let now = crate::clock::now_micros();
        let wall = crate::clock::wall_ms();
        m.record_acked((0..1000).map(|i| (now, Some(wall - 1000 * (i % 2)))));
        assert!(m.latency_quantile_us(0.99) < 1_000_000);
        // Half the events are 1 s old, half fresh.
        let p99 = m.event_latency_quantile_us(0.99);
        assert!((1_000_000..1_010_000).contains(&p99), "{p99}");
        assert!(m.event_latency_quantile_us(0.25) < 100_000);
        // Feature rows: 90 read 2 s ago, 10 read 20 s ago.
        assert_eq!(m.feature_latency_quantile_us(0.5), 0, "nothing recorded yet");
        let now = 60_000_000;
        m.record_featured_at(now, (0..100).map(|i| now - if i < 90 { 2_000_000 } else { 20_000_000 }));
        let p50 = m.feature_latency_quantile_us(0.5);
        assert!((2_000_000..2_010_000).contains(&p50), "{p50}");
        assert!(m.feature_latency_quantile_us(0.95) >= 20_000_000);
        assert_eq!(m.feature_latency.get_sample_count(), 100);
        m.reset_latency_summaries();
        assert_eq!(m.feature_latency_quantile_us(0.5), 0);
        assert!(m
            .render()
            .contains("weir_batches_total{cause=\"size\",operator=\"micro_batch\",topology=\"t\"} 3"));
    }
}
