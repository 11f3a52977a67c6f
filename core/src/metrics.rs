//! Prometheus metrics of one topology, and an HDR histogram of end-to-end latency for summaries.
//!
//! Names follow the Prometheus naming conventions (<https://prometheus.io/docs/practices/naming/>):
//! `weir_` prefix, base units (`_seconds`), `_total` for counters. Every metric carries the
//! constant label `topology`.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

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
    /// `weir_batches_total{cause}`: micro-batches flushed, by cause (size, time, drain).
    pub batches: IntCounterVec,
    /// `weir_batch_rows`: rows per flushed micro-batch.
    pub batch_rows: Histogram,
    /// `weir_batch_fill_wait_seconds`: how long the oldest row of a batch waited for the flush.
    pub batch_fill_wait: Histogram,
    /// `weir_inference_batch_seconds`: ONNX Runtime time per micro-batch.
    pub inference_seconds: Histogram,
    /// `weir_end_to_end_latency_seconds`: from source read to sink acknowledgement, per event.
    pub e2e_latency: Histogram,
    /// `weir_inflight_batches`: batches handed to inference and not yet written to the sink.
    pub inflight_batches: IntGauge,
    /// `weir_execution_provider{provider}`: 1 for the execution provider in use.
    pub execution_provider: IntGaugeVec,
    /// `weir_execution_provider_fallbacks_total`: requested providers that could not be used.
    pub provider_fallbacks: IntCounter,
    /// `weir_model_info{version}`: 1 for the model version in use.
    pub model_info: IntGaugeVec,
    /// `weir_backpressure_paused_seconds_total` is derived from [`crate::FlowControl`]; this gauge
    /// holds the last value published by [`Metrics::set_paused_seconds`].
    pub paused_seconds: prometheus::Gauge,
    latency_us: Mutex<hdrhistogram::Histogram<u64>>,
}

fn seconds_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
    ]
}

impl Metrics {
    /// Creates and registers the metrics of topology `topology`.
    ///
    /// # Panics
    /// Never in practice: registration only fails on duplicate names, which this function does
    /// not create.
    pub fn new(topology: &str) -> Self {
        let labels = HashMap::from([("topology".to_string(), topology.to_string())]);
        let registry = Registry::new_custom(None, Some(labels)).expect("valid registry labels");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let events_in = counter("weir_source_events_total", "Events read by sources.");
        let scores_out = counter("weir_sink_scores_total", "Scores acknowledged by the score sink.");
        let dead_letters = counter_vec(
            "weir_dead_letters_total",
            "Dead letters acknowledged by the dead-letter sink, by reason.",
            "reason",
        );
        let batches = counter_vec(
            "weir_batches_total",
            "Micro-batches flushed, by cause (size, time, drain).",
            "cause",
        );
        let batch_rows = histogram(
            "weir_batch_rows",
            "Rows per flushed micro-batch.",
            vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
            ],
        );
        let batch_fill_wait = histogram(
            "weir_batch_fill_wait_seconds",
            "Time the oldest row of a micro-batch waited before the flush.",
            seconds_buckets(),
        );
        let inference_seconds = histogram(
            "weir_inference_batch_seconds",
            "ONNX Runtime time per micro-batch.",
            seconds_buckets(),
        );
        let e2e_latency = histogram(
            "weir_end_to_end_latency_seconds",
            "Per event, from source read to sink acknowledgement.",
            seconds_buckets(),
        );
        let inflight_batches = IntGauge::new("weir_inflight_batches", "Batches handed to inference, not yet written.")
            .expect("valid metric");
        registry
            .register(Box::new(inflight_batches.clone()))
            .expect("unique metric");
        let execution_provider = IntGaugeVec::new(
            Opts::new("weir_execution_provider", "1 for the execution provider in use."),
            &["provider"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(execution_provider.clone()))
            .expect("unique metric");
        let model_info = IntGaugeVec::new(
            Opts::new("weir_model_info", "1 for the model version scoring events."),
            &["version"],
        )
        .expect("valid metric");
        registry.register(Box::new(model_info.clone())).expect("unique metric");
        let provider_fallbacks = counter(
            "weir_execution_provider_fallbacks_total",
            "Requested execution providers that could not be used.",
        );
        let paused_seconds = prometheus::Gauge::new(
            "weir_backpressure_paused_seconds_total",
            "Time sources spent paused by backpressure, summed over sources.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(paused_seconds.clone()))
            .expect("unique metric");
        Self {
            registry,
            events_in,
            scores_out,
            dead_letters,
            batches,
            batch_rows,
            batch_fill_wait,
            inference_seconds,
            e2e_latency,
            inflight_batches,
            execution_provider,
            provider_fallbacks,
            model_info,
            paused_seconds,
            // 1 µs .. 1 h at 3 significant digits.
            latency_us: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ),
        }
    }

    /// Records one event's end-to-end latency in µs (read by the source to acknowledged by a sink).
    pub fn record_latency_us(&self, us: u64) {
        self.e2e_latency.observe(us as f64 / 1e6);
        let mut h = self.latency_us.lock().unwrap();
        h.saturating_record(us.max(1));
    }

    /// Records `n` events' latencies in one lock acquisition (a sink's delivery report batch).
    pub fn record_latencies_us(&self, us: impl IntoIterator<Item = u64>) {
        let mut h = self.latency_us.lock().unwrap();
        for u in us {
            self.e2e_latency.observe(u as f64 / 1e6);
            h.saturating_record(u.max(1));
        }
    }

    /// End-to-end latency quantile `q` (0..=1) in µs over all recorded events; 0 if none.
    pub fn latency_quantile_us(&self, q: f64) -> u64 {
        let h = self.latency_us.lock().unwrap();
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    }

    /// Publishes the total paused time (from [`crate::FlowControl::paused_micros`]).
    pub fn set_paused_seconds(&self, micros: u64) {
        self.paused_seconds.set(micros as f64 / 1e6);
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
        for us in 1..=1000 {
            m.record_latency_us(us);
        }
        let p50 = m.latency_quantile_us(0.5);
        assert!((495..=505).contains(&p50), "{p50}");
        assert!(m
            .render()
            .contains("weir_batches_total{cause=\"size\",topology=\"t\"} 3"));
    }
}
