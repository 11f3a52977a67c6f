//! `weir bench-latency`: read-to-acknowledgement latency of the topology against a bare
//! consumer + producer, on the same broker, at the same offered rate, in one run (issue 14).
//!
//! Both paths get the same traffic: simulated transactions replayed at `rate` events/s onto a
//! fresh topic of 4 partitions, each stamped with the wall clock when sent (as `weir tune`
//! replays). First `prime` seconds of traffic (the consumer has its partitions, ONNX Runtime is
//! warm), then `seconds` of measured traffic.
//!
//! - **Bare**: one thread polls a `BaseConsumer` assigned to every partition and, for each
//!   message, produces a score-sized record; the latency of a message is from the moment its
//!   poll returned to its delivery report (µs). Same librdkafka settings as weir's source
//!   (`fetch.wait.max.ms`) and sink (`linger.ms` as `[sink.properties]` or weir's default).
//! - **weir**: the topology runs live (`weir run`, its features, model and `[batching]` window)
//!   and reports its own read-to-acknowledgement latency (`weir_event_latency_seconds`'s
//!   summary: from the source's poll to the score sink's delivery report).
//!
//! The target (issue 14): weir's p50 within `max_wait` + 5 ms and its p99 within `max_wait` +
//! 10 ms of the bare path's; and (the soak, with `--seconds 600`) the resident memory stays
//! under `topology.max_memory` without the sources pausing. Labels are not replayed (`fraud_ratio` features read 0; the labels
//! partitions turn idle after `idle_timeout`, before the measurement starts).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use weir_connectors::kafka::admin::{create_topics, BulkProducer};
use weir_connectors::kafka::embedded::EmbeddedKafka;
use weir_connectors::kafka::source::StartPosition;
use weir_core::Metrics;
use weir_simulator::SimConfig;

use crate::bench::{bare_consumer, score_record};
use crate::demo::DemoError;
use crate::tune::{replay, Recording};
use weir_runtime::runner::{flow_control, run_topology, RunOptions};
use weir_topologies::config::TopologyConfig;

/// Options of the latency benchmark.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// Topology file.
    pub topology: std::path::PathBuf,
    /// A real broker; `None`: the embedded one.
    pub brokers: Option<String>,
    /// Offered load, events per second.
    pub rate: f64,
    /// Measured traffic, seconds.
    pub seconds: f64,
    /// Priming traffic before the measurement, seconds.
    pub prime: f64,
}

/// What the latency benchmark measured (latencies in µs).
#[derive(Debug, Clone)]
pub struct LatencyReport {
    /// `embedded broker` or `broker <bootstrap servers>`.
    pub broker: String,
    /// Offered load, events per second.
    pub rate: f64,
    /// Measured events per path.
    pub events: usize,
    /// The topology's `[batching] max_wait`.
    pub max_wait: Duration,
    /// Bare consumer + producer: read-to-acknowledgement p50 and p99, µs.
    pub bare_us: (u64, u64),
    /// The topology: read-to-acknowledgement p50 and p99, µs.
    pub weir_us: (u64, u64),
    /// The topology's mean micro-batch, rows.
    pub mean_batch_rows: f64,
    /// The topology, read to the feature row reaching the micro-batcher (the watermark wait and
    /// the feature operator): p50 and p99, µs.
    pub features_us: (u64, u64),
    /// The topology's mean wait of a micro-batch's oldest row for its flush, µs.
    pub mean_fill_wait_us: u64,
    /// The topology's mean inference time of one micro-batch, µs.
    pub mean_inference_us: u64,
    /// Per stage (`weir_core::metrics::Stage`): name, p50 and p99, µs.
    pub stages_us: Vec<(&'static str, u64, u64)>,
    /// Memory and flow control of the topology while measured.
    pub memory: MemoryReport,
}

/// The topology's memory and flow control over the measured traffic.
#[derive(Debug, Clone, Default)]
pub struct MemoryReport {
    /// Largest resident set size sampled (every 100 ms, `weir_resident_memory_bytes`), bytes.
    pub rss_peak: u64,
    /// `topology.max_memory`, bytes, if set.
    pub limit: Option<u64>,
    /// Backpressure pause episodes of the sources.
    pub pauses: u64,
    /// Time the sources spent paused, ms.
    pub paused_ms: u64,
    /// Whether memory pressure (above 90% of `max_memory`) was seen in a sample.
    pub pressure_seen: bool,
}

impl LatencyReport {
    /// Issue 18's absolute target: weir's p99 within `max_wait` + 2 x one batch's inference
    /// time + 5 ms, µs.
    pub fn absolute_p99_target_us(&self) -> u64 {
        self.max_wait.as_micros() as u64 + 2 * self.mean_inference_us + 5_000
    }

    /// Whether weir's p50 is within `max_wait` + 5 ms and its p99 within `max_wait` + 10 ms of
    /// the bare path's.
    pub fn meets_target(&self) -> (bool, bool) {
        let w = self.max_wait.as_micros() as u64;
        (
            self.weir_us.0 <= self.bare_us.0 + w + 5_000,
            self.weir_us.1 <= self.bare_us.1 + w + 10_000,
        )
    }

    /// The report as printed.
    pub fn render(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let (p50_ok, p99_ok) = self.meets_target();
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        format!(
            "weir bench-latency: {} events at {:.0} events/s, {}, max_wait {:?}\n\
             \x20 bare consumer + producer  read->ack p50 {:>8.2} ms  p99 {:>8.2} ms\n\
             \x20 weir (mean batch {:>6.1})   read->ack p50 {:>8.2} ms  p99 {:>8.2} ms\n\
             \x20 weir - bare               p50 {:>+8.2} ms (target <= max_wait + 5 ms: {})   p99 {:>+8.2} ms (target <= max_wait + 10 ms: {})\n\
             \x20 weir p99 {:.2} ms against max_wait + 2 x inference ({:.2} ms a batch) + 5 ms = {:.2} ms: {}\n\
             \x20 weir, read->features      p50 {:>8.2} ms  p99 {:>8.2} ms (watermark wait + feature operator); mean batch fill wait {:.2} ms\n\
             \x20 weir stages p50/p99 ms: {}\n\
             \x20 weir memory: peak RSS {:.1} MiB of max_memory {}; backpressure pauses {} ({} ms); memory pressure {}\n",
            self.events,
            self.rate,
            self.broker,
            self.max_wait,
            ms(self.bare_us.0),
            ms(self.bare_us.1),
            self.mean_batch_rows,
            ms(self.weir_us.0),
            ms(self.weir_us.1),
            ms(self.weir_us.0) - ms(self.bare_us.0),
            verdict(p50_ok),
            ms(self.weir_us.1) - ms(self.bare_us.1),
            verdict(p99_ok),
            ms(self.weir_us.1),
            ms(self.mean_inference_us),
            ms(self.absolute_p99_target_us()),
            verdict(self.weir_us.1 <= self.absolute_p99_target_us()),
            ms(self.features_us.0),
            ms(self.features_us.1),
            ms(self.mean_fill_wait_us),
            self.stages_us
                .iter()
                .map(|(s, p50, p99)| format!("{s} {:.2}/{:.2}", ms(*p50), ms(*p99)))
                .collect::<Vec<_>>()
                .join(", "),
            self.memory.rss_peak as f64 / (1 << 20) as f64,
            match self.memory.limit {
                Some(l) => format!("{:.0} MiB", l as f64 / (1 << 20) as f64),
                None => "unset".into(),
            },
            self.memory.pauses,
            self.memory.paused_ms,
            if self.memory.pressure_seen { "seen" } else { "never" },
        )
    }
}

/// Delivery reports of the bare path: each carries the instant its message was read.
struct Acks {
    measuring: AtomicBool,
    acked: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

/// The bare producer's context: records each delivery report in [`Acks`].
struct AckContext(Arc<Acks>);

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, read_at: Box<Instant>) {
        if result.is_ok() {
            if self.0.measuring.load(Ordering::Acquire) {
                self.0
                    .latencies_us
                    .lock()
                    .unwrap()
                    .push(read_at.elapsed().as_micros() as u64);
            }
            self.0.acked.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The traffic both paths get: `prime` then `measured` events of `recording` (in a cycle), at
/// `rate` events/s.
#[derive(Clone, Copy)]
struct Traffic<'a> {
    recording: &'a Recording,
    prime: usize,
    measured: usize,
    rate: f64,
}

/// Replays `count` events of `recording` from index `from`, cycling, at `rate` events/s.
fn replay_cycled(
    producer: &BulkProducer,
    topic: &str,
    recording: &Recording,
    from: usize,
    count: usize,
    rate: f64,
) -> Result<(), DemoError> {
    let never = AtomicBool::new(false);
    let events = &recording.events;
    let (mut i, mut left) = (from % events.len(), count);
    while left > 0 {
        let take = left.min(events.len() - i);
        replay(producer, topic, &events[i..i + take], rate, &never).map_err(|e| DemoError::Usage(e.to_string()))?;
        left -= take;
        i = (i + take) % events.len();
    }
    Ok(())
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    match sorted.len() {
        0 => 0,
        n => sorted[((n - 1) as f64 * q).round() as usize],
    }
}

fn wait_until(what: &str, timeout: Duration, done: impl Fn() -> bool) -> Result<(), DemoError> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return Err(DemoError::Usage(format!("bench-latency: timed out waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn kafka_err(context: &'static str) -> impl FnOnce(KafkaError) -> weir_connectors::ConnectorError {
    move |e| weir_connectors::ConnectorError::Kafka {
        context: context.into(),
        source: e,
    }
}

/// The bare path over `topic` (fresh, `partitions` partitions): returns read-to-ack p50, p99.
fn bare(
    brokers: &str,
    topic: &str,
    out: &str,
    partitions: i32,
    linger_ms: &str,
    traffic: Traffic<'_>,
) -> Result<(u64, u64), DemoError> {
    let Traffic {
        recording,
        prime,
        measured,
        rate,
    } = traffic;
    let acks = Arc::new(Acks {
        measuring: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        latencies_us: Mutex::new(Vec::new()),
    });
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let _ = tpl.add_partition_offset(topic, p, Offset::Beginning);
    }
    let consumer = bare_consumer(brokers, "weir-bench-latency", &tpl)?;
    let producer: ThreadedProducer<AckContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger_ms)
        .set("enable.idempotence", "true")
        .create_with_context(AckContext(acks.clone()))
        .map_err(kafka_err("bench-latency producer"))?;
    let total = prime + measured;
    let stop = Arc::new(AtomicBool::new(false));
    let result = std::thread::scope(|scope| {
        let loop_stop = stop.clone();
        let looper = scope.spawn(move || {
            let mut value = Vec::with_capacity(160);
            while !loop_stop.load(Ordering::Acquire) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(10)) else {
                    continue;
                };
                let read_at = Instant::now();
                score_record(&mut value, &m);
                let mut record = BaseRecord::with_opaque_to(out, Box::new(read_at)).payload(&value[..]);
                if let Some(k) = m.key() {
                    record = record.key(k);
                }
                let mut record = Some(record);
                while let Some(r) = record.take() {
                    if let Err((_, back)) = producer.send(r) {
                        // Queue full: wait for the producer's thread to drain it.
                        std::thread::sleep(Duration::from_micros(200));
                        record = Some(back);
                    }
                }
            }
        });
        let run = || -> Result<(), DemoError> {
            let producer = BulkProducer::new(brokers, &BTreeMap::from([("linger.ms".to_string(), "1".to_string())]))?;
            let timeout = Duration::from_secs_f64(60.0 + 4.0 * total as f64 / rate);
            replay_cycled(&producer, topic, recording, 0, prime, rate)?;
            producer.flush(Duration::from_secs(30))?;
            wait_until("the bare path's priming", timeout, || {
                acks.acked.load(Ordering::Acquire) >= prime as u64
            })?;
            acks.measuring.store(true, Ordering::Release);
            replay_cycled(&producer, topic, recording, prime, measured, rate)?;
            producer.flush(Duration::from_secs(30))?;
            wait_until("the bare path's measured events", timeout, || {
                acks.acked.load(Ordering::Acquire) >= total as u64
            })
        };
        let r = run();
        stop.store(true, Ordering::Release);
        let _ = looper.join();
        r
    });
    result?;
    let mut l = acks.latencies_us.lock().unwrap().clone();
    l.sort_unstable();
    Ok((quantile(&l, 0.5), quantile(&l, 0.99)))
}

/// What [`weir`] measured.
struct WeirMeasured {
    /// Read to acknowledgement, p50 and p99, µs.
    latency_us: (u64, u64),
    /// Read to the micro-batcher, p50 and p99, µs.
    features_us: (u64, u64),
    mean_batch_rows: f64,
    mean_fill_wait_us: u64,
    mean_inference_us: u64,
    stages_us: Vec<(&'static str, u64, u64)>,
    memory: MemoryReport,
}

/// The topology live over `cfg.source.topic`.
fn weir(cfg: &TopologyConfig, brokers: &str, traffic: Traffic<'_>) -> Result<WeirMeasured, DemoError> {
    let Traffic {
        recording,
        prime,
        measured,
        rate,
    } = traffic;
    let window = cfg.batching.window();
    let flow = Arc::new(flow_control(cfg, window.max_batch_rows));
    let metrics = Arc::new(Metrics::new(&cfg.topology.name));
    let runner = {
        let (cfg, brokers, flow, metrics) = (cfg.clone(), brokers.to_string(), flow.clone(), metrics.clone());
        std::thread::spawn(move || {
            run_topology(
                &cfg,
                RunOptions {
                    brokers: Some(brokers),
                    start: Some(StartPosition::Earliest),
                    flow: Some(flow),
                    metrics: Some(metrics),
                    ..RunOptions::default()
                },
            )
        })
    };
    let handled = |m: &Metrics| m.scores_out.get() + m.dead_letters_total();
    let total = prime + measured;
    let result = (|| -> Result<WeirMeasured, DemoError> {
        let producer = BulkProducer::new(brokers, &BTreeMap::from([("linger.ms".to_string(), "1".to_string())]))?;
        let timeout = Duration::from_secs_f64(60.0 + 4.0 * total as f64 / rate);
        replay_cycled(&producer, &cfg.source.topic, recording, 0, prime, rate)?;
        producer.flush(Duration::from_secs(30))?;
        wait_until("weir's priming", timeout, || handled(&metrics) >= prime as u64)?;
        metrics.reset_latency_summaries();
        let (b0, r0) = (
            metrics.batch_rows.get_sample_count(),
            metrics.batch_rows.get_sample_sum(),
        );
        let w0 = metrics.batch_fill_wait.get_sample_sum();
        let (i0, ic0) = (
            metrics.inference_seconds.get_sample_sum(),
            metrics.inference_seconds.get_sample_count(),
        );
        let (pauses0, paused0) = (flow.pauses(), flow.paused_micros());
        let sampling = AtomicBool::new(true);
        let memory = std::thread::scope(|scope| -> Result<MemoryReport, DemoError> {
            let sampler = scope.spawn(|| {
                let mut m = MemoryReport {
                    limit: cfg.topology.max_memory.map(|b| b.as_u64()),
                    ..MemoryReport::default()
                };
                while sampling.load(Ordering::Acquire) {
                    m.rss_peak = m.rss_peak.max(metrics.resident_memory.get().max(0) as u64);
                    m.pressure_seen |= flow.memory_pressure();
                    std::thread::sleep(Duration::from_millis(100));
                }
                m
            });
            let r = (|| {
                replay_cycled(&producer, &cfg.source.topic, recording, prime, measured, rate)?;
                producer.flush(Duration::from_secs(30))?;
                wait_until("weir's measured events", timeout, || handled(&metrics) >= total as u64)
            })();
            sampling.store(false, Ordering::Release);
            let mut m = sampler
                .join()
                .map_err(|_| DemoError::Usage("the memory sampler panicked".into()))?;
            r?;
            m.pauses = flow.pauses() - pauses0;
            m.paused_ms = (flow.paused_micros() - paused0) / 1000;
            Ok(m)
        })?;
        let batches = metrics.batch_rows.get_sample_count() - b0;
        let rows = metrics.batch_rows.get_sample_sum() - r0;
        Ok(WeirMeasured {
            latency_us: (metrics.latency_quantile_us(0.5), metrics.latency_quantile_us(0.99)),
            features_us: (
                metrics.feature_latency_quantile_us(0.5),
                metrics.feature_latency_quantile_us(0.99),
            ),
            mean_batch_rows: rows / batches.max(1) as f64,
            mean_fill_wait_us: ((metrics.batch_fill_wait.get_sample_sum() - w0) * 1e6 / batches.max(1) as f64) as u64,
            mean_inference_us: ((metrics.inference_seconds.get_sample_sum() - i0) * 1e6
                / (metrics.inference_seconds.get_sample_count() - ic0).max(1) as f64)
                as u64,
            stages_us: metrics.stage_summary(),
            memory,
        })
    })();
    flow.request_shutdown();
    let run = runner
        .join()
        .map_err(|_| DemoError::Usage("the topology thread panicked".into()))?;
    let out = result?;
    run?;
    Ok(out)
}

/// Runs the latency benchmark.
///
/// # Errors
/// [`DemoError`] from the configuration, the broker, the model or the topology, or if a path
/// does not handle its events within a minute plus four times the replay's duration.
pub fn run_latency_bench(opts: &LatencyOptions) -> Result<LatencyReport, DemoError> {
    let mut cfg = TopologyConfig::load(&opts.topology)?;
    let partitions = 4;
    let prime = (opts.rate * opts.prime).ceil() as usize;
    let measured = (opts.rate * opts.seconds).ceil() as usize;
    // The demo's 25 simulated days (242,875 transactions) at most, replayed in a cycle beyond:
    // a long soak's traffic is not held in memory (it would count in the resident size).
    let recording = Recording::simulated(SimConfig::default(), (prime + measured).min(250_000));
    if recording.events.is_empty() {
        return Err(DemoError::Usage("bench-latency: the simulation gave no events".into()));
    }
    let suffix = format!("-latency-{}", std::process::id());
    let bare_in = format!("bench-bare{suffix}");
    let bare_out = format!("bench-bare-out{suffix}");
    cfg.source.topic = format!("bench-transactions{suffix}");
    cfg.source.group_id = format!("weir-bench{suffix}");
    cfg.labels.topic = format!("bench-labels{suffix}");
    cfg.sink.kind = "kafka".into();
    cfg.sink.topic = format!("bench-scores{suffix}");
    cfg.dead_letter.topic = format!("bench-dlq{suffix}");
    cfg.metrics.listen.clear();
    let topics = [
        (bare_in.as_str(), partitions),
        (bare_out.as_str(), partitions),
        (cfg.source.topic.as_str(), partitions),
        (cfg.labels.topic.as_str(), partitions),
        (cfg.sink.topic.as_str(), partitions),
        (cfg.dead_letter.topic.as_str(), 1),
    ];
    let (kafka, brokers) = match &opts.brokers {
        Some(b) => {
            create_topics(b, &topics, Duration::from_secs(30))?;
            (None, b.clone())
        }
        None => {
            let kafka = EmbeddedKafka::start()?;
            for (t, p) in topics {
                kafka.create_topic(t, p)?;
            }
            let b = kafka.bootstrap_servers();
            (Some(kafka), b)
        }
    };
    let linger = cfg
        .sink
        .properties
        .get("linger.ms")
        .cloned()
        .unwrap_or_else(|| weir_connectors::kafka::sink::DEFAULT_LINGER_MS.into());
    let traffic = Traffic {
        recording: &recording,
        prime,
        measured,
        rate: opts.rate,
    };
    let bare_us = bare(&brokers, &bare_in, &bare_out, partitions, &linger, traffic)?;
    let w = weir(&cfg, &brokers, traffic)?;
    drop(kafka);
    Ok(LatencyReport {
        broker: match &opts.brokers {
            Some(b) => format!("broker {b}"),
            None => "embedded broker".into(),
        },
        rate: opts.rate,
        events: measured,
        max_wait: cfg.batching.max_wait,
        bare_us,
        weir_us: w.latency_us,
        mean_batch_rows: w.mean_batch_rows,
        features_us: w.features_us,
        mean_fill_wait_us: w.mean_fill_wait_us,
        mean_inference_us: w.mean_inference_us,
        stages_us: w.stages_us,
        memory: w.memory,
    })
}

/// Options of the step-load benchmark (`weir bench-latency --steps`).
#[derive(Debug, Clone)]
pub struct StepOptions {
    /// Topology file (`[batching] max_wait = "auto"` to test the adaptive window).
    pub topology: std::path::PathBuf,
    /// A real broker; `None`: the embedded one.
    pub brokers: Option<String>,
    /// Offered load of each phase, events per second, in order.
    pub rates: Vec<f64>,
    /// Length of each phase, seconds.
    pub phase_seconds: f64,
    /// The first seconds of each phase are adaptation: not measured.
    pub adapt_seconds: f64,
}

/// One phase of the step-load benchmark.
#[derive(Debug, Clone)]
pub struct StepPhase {
    /// Offered load, events per second.
    pub rate: f64,
    /// Read-to-acknowledgement p50 and p99 after the adaptation, µs.
    pub latency_us: (u64, u64),
    /// Events scored per second during the measured part of the phase.
    pub throughput: f64,
    /// The window at the end of the phase.
    pub window: weir_operators::micro_batch::BatchWindow,
    /// Whether the adaptive controller reported overload at the end of the phase.
    pub overloaded: bool,
}

/// What the step-load benchmark measured.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The window was adaptive (`max_wait = "auto"`), with this p99 target.
    pub p99_target: Option<Duration>,
    /// Seconds of adaptation excluded from each phase.
    pub adapt_seconds: f64,
    /// Each phase, in order.
    pub phases: Vec<StepPhase>,
}

impl StepReport {
    /// The report as printed.
    pub fn render(&self) -> String {
        let mut s = format!(
            "weir bench-latency --steps: window {}, first {:.0} s of each phase not measured\n",
            match self.p99_target {
                Some(t) => format!("auto (p99_target {t:?})"),
                None => "fixed".into(),
            },
            self.adapt_seconds
        );
        for p in &self.phases {
            let verdict = match self.p99_target {
                Some(t) if p.latency_us.1 <= t.as_micros() as u64 => " (under the target)",
                Some(_) => " (OVER the target)",
                None => "",
            };
            s += &format!(
                "  {:>7.0} events/s: read->ack p50 {:>7.2} ms p99 {:>7.2} ms{verdict}; scored {:>7.0} events/s; window {}/{:?}{}\n",
                p.rate,
                p.latency_us.0 as f64 / 1e3,
                p.latency_us.1 as f64 / 1e3,
                p.throughput,
                p.window.max_batch_rows,
                p.window.max_wait,
                if p.overloaded { ", overloaded" } else { "" }
            );
        }
        s
    }
}

/// Runs the topology live through phases of different offered loads (the step-load test of
/// issue 18) and measures each phase after its adaptation time.
///
/// # Errors
/// [`DemoError`] from the configuration, the broker, the model or the topology, or if the
/// topology does not handle the events in time.
pub fn run_step_bench(opts: &StepOptions) -> Result<StepReport, DemoError> {
    let mut cfg = TopologyConfig::load(&opts.topology)?;
    let partitions = 4;
    let total: usize = opts
        .rates
        .iter()
        .map(|r| (r * opts.phase_seconds).ceil() as usize)
        .sum();
    let recording = Recording::simulated(SimConfig::default(), total.clamp(1, 250_000));
    let suffix = format!("-steps-{}", std::process::id());
    cfg.source.topic = format!("bench-transactions{suffix}");
    cfg.source.group_id = format!("weir-bench{suffix}");
    cfg.labels.topic = format!("bench-labels{suffix}");
    cfg.sink.kind = "kafka".into();
    cfg.sink.topic = format!("bench-scores{suffix}");
    cfg.dead_letter.topic = format!("bench-dlq{suffix}");
    cfg.metrics.listen.clear();
    let topics = [
        (cfg.source.topic.as_str(), partitions),
        (cfg.labels.topic.as_str(), partitions),
        (cfg.sink.topic.as_str(), partitions),
        (cfg.dead_letter.topic.as_str(), 1),
    ];
    let (_kafka, brokers) = match &opts.brokers {
        Some(b) => {
            create_topics(b, &topics, Duration::from_secs(30))?;
            (None, b.clone())
        }
        None => {
            let kafka = EmbeddedKafka::start()?;
            for (t, p) in topics {
                kafka.create_topic(t, p)?;
            }
            let b = kafka.bootstrap_servers();
            (Some(kafka), b)
        }
    };
    let flow = Arc::new(flow_control(&cfg, cfg.batching.max_batch_rows));
    let metrics = Arc::new(Metrics::new(&cfg.topology.name));
    let runner = {
        let (cfg, brokers, flow, metrics) = (cfg.clone(), brokers.clone(), flow.clone(), metrics.clone());
        std::thread::spawn(move || {
            run_topology(
                &cfg,
                RunOptions {
                    brokers: Some(brokers),
                    start: Some(StartPosition::Earliest),
                    flow: Some(flow),
                    metrics: Some(metrics),
                    ..RunOptions::default()
                },
            )
        })
    };
    let handled = |m: &Metrics| m.scores_out.get() + m.dead_letters_total();
    let result = (|| -> Result<Vec<StepPhase>, DemoError> {
        let producer = BulkProducer::new(&brokers, &BTreeMap::from([("linger.ms".to_string(), "1".to_string())]))?;
        let mut sent = 0usize;
        let mut phases = Vec::new();
        for &rate in &opts.rates {
            let adapt = (rate * opts.adapt_seconds).ceil() as usize;
            let measured = ((rate * opts.phase_seconds).ceil() as usize)
                .saturating_sub(adapt)
                .max(1);
            replay_cycled(&producer, &cfg.source.topic, &recording, sent, adapt, rate)?;
            sent += adapt;
            metrics.reset_latency_summaries();
            let (t0, h0) = (Instant::now(), handled(&metrics));
            replay_cycled(&producer, &cfg.source.topic, &recording, sent, measured, rate)?;
            sent += measured;
            let secs = t0.elapsed().as_secs_f64();
            phases.push(StepPhase {
                rate,
                latency_us: (metrics.latency_quantile_us(0.5), metrics.latency_quantile_us(0.99)),
                throughput: (handled(&metrics) - h0) as f64 / secs.max(1e-9),
                window: weir_operators::micro_batch::BatchWindow {
                    max_batch_rows: metrics.window_max_rows.get().max(1) as usize,
                    max_wait: Duration::from_secs_f64(metrics.window_max_wait.get().max(0.0)),
                },
                overloaded: metrics.window_overloaded.get() == 1,
            });
        }
        producer.flush(Duration::from_secs(30))?;
        let timeout = Duration::from_secs(120);
        wait_until("the last phase's events", timeout, || handled(&metrics) >= sent as u64)?;
        Ok(phases)
    })();
    flow.request_shutdown();
    let run = runner
        .join()
        .map_err(|_| DemoError::Usage("the topology thread panicked".into()))?;
    let phases = result?;
    run?;
    Ok(StepReport {
        p99_target: cfg.batching.adaptive.then_some(cfg.batching.p99_target),
        adapt_seconds: opts.adapt_seconds,
        phases,
    })
}
