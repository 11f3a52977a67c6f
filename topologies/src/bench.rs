//! `weir bench`: three throughputs measured side by side in one run, on the same data.
//!
//! 1. **Raw ONNX Runtime**: one session (as configured) scoring `[max_batch_rows, n_features]`
//!    batches of real feature rows in a loop: rows/s.
//! 2. **Raw Kafka I/O**: a bare consumer reading the transactions topic from the same embedded
//!    broker and a producer (weir's sink settings) writing one score-sized record per event,
//!    until all are acknowledged: events/s.
//! 3. **Pipeline**: the topology end to end over the same topic (bounded), events/s from start
//!    of the dataflow to the last sink acknowledgement.
//!
//! The pipeline's target is 90% of the slower of 1 and 2.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ndarray::Array2;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir_connectors::kafka::admin::{watermarks, BulkProducer};
use weir_connectors::kafka::embedded::EmbeddedKafka;
use weir_connectors::kafka::source::StartPosition;
use weir_simulator::{SimConfig, Simulator};

use crate::config::TopologyConfig;
use crate::demo::DemoError;
use crate::generate::{generate, Target};
use crate::runner::{open_scorers, run_topology, RunOptions, RunReport};

/// Options of the benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Topology file.
    pub topology: PathBuf,
    /// Simulator parameters (the number of days sets the number of events).
    pub sim: SimConfig,
    /// Source topic partitions.
    pub partitions: i32,
    /// Seconds to run the raw ONNX Runtime loop.
    pub onnx_seconds: f64,
}

/// The three measurements.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Rows per micro-batch.
    pub batch_rows: usize,
    /// Events in the topic.
    pub events: u64,
    /// Raw ONNX Runtime rows/s at `batch_rows`.
    pub onnx_rows_per_s: f64,
    /// Raw Kafka consume + produce, events/s.
    pub kafka_events_per_s: f64,
    /// The topology end to end.
    pub pipeline: RunReport,
    /// Timely workers.
    pub workers: usize,
}

impl BenchReport {
    /// Pipeline events/s over the slower raw limit.
    pub fn ratio_to_limit(&self) -> f64 {
        self.pipeline.events_per_second() / self.onnx_rows_per_s.min(self.kafka_events_per_s)
    }

    /// The report as printed.
    pub fn render(&self) -> String {
        let p = self.pipeline.events_per_second();
        format!(
            "weir bench: {} events, batch {} rows, {} workers, execution provider {}, embedded broker\n\
             \x20 raw ONNX Runtime     {:>12.0} rows/s   (one session, batch {})\n\
             \x20 raw Kafka I/O        {:>12.0} events/s (bare consumer + producer, same broker)\n\
             \x20 pipeline end to end  {:>12.0} events/s (p50 {:.2} ms, p99 {:.2} ms, mean batch {:.1} rows)\n\
             \x20 pipeline / raw ONNX Runtime   {:.3}\n\
             \x20 pipeline / raw Kafka I/O      {:.3}\n\
             \x20 pipeline / slower raw limit   {:.3}   (target >= 0.9)\n",
            self.events,
            self.batch_rows,
            self.workers,
            self.pipeline.execution_provider,
            self.onnx_rows_per_s,
            self.batch_rows,
            self.kafka_events_per_s,
            p,
            self.pipeline.p50_latency_us as f64 / 1000.0,
            self.pipeline.p99_latency_us as f64 / 1000.0,
            self.pipeline.mean_batch_rows,
            p / self.onnx_rows_per_s,
            p / self.kafka_events_per_s,
            self.ratio_to_limit(),
        )
    }
}

fn raw_onnx(cfg: &TopologyConfig, sim: &SimConfig, seconds: f64) -> Result<f64, DemoError> {
    let (mut scorers, _) = open_scorers(cfg, None).map_err(crate::runner::TopologyError::from)?;
    let scorer = &mut scorers[0];
    let set = cfg.feature_spec();
    let rows = cfg.batching.max_batch_rows;
    let mut small = sim.clone();
    small.n_days = 1;
    let txs: Vec<_> = Simulator::new(small).flatten().take(rows).collect();
    let mut x = Array2::<f32>::zeros((rows, set.len()));
    for i in 0..rows {
        // Windowed features as for a customer's first transaction: realistic enough for timing.
        let tx = &txs[i % txs.len()].tx;
        let v: Vec<f32> = set.values(tx.tx_time_ms, tx.amount, &vec![1; set.accumulators().len()]).iter().map(|v| *v as f32).collect();
        x.row_mut(i).assign(&ndarray::ArrayView1::from(&v));
    }
    // Warm up, then measure.
    for _ in 0..20 {
        let _ = scorer.score(x.view());
    }
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < seconds {
        scorer.score(x.view()).map_err(crate::runner::TopologyError::from)?;
        n += rows as u64;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn raw_kafka(brokers: &str, topic: &str, out_topic: &str) -> Result<(u64, f64), DemoError> {
    let marks = watermarks(brokers, topic, Duration::from_secs(10))?;
    let total: i64 = marks.iter().map(|(_, lo, hi)| hi - lo).sum();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "weir-bench-raw")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(|e| weir_connectors::ConnectorError::Kafka { context: "bench consumer".into(), source: e })?;
    let mut tpl = TopicPartitionList::new();
    for (p, lo, _) in &marks {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*lo));
    }
    consumer
        .assign(&tpl)
        .map_err(|e| weir_connectors::ConnectorError::Kafka { context: "bench assign".into(), source: e })?;
    let producer = BulkProducer::new(brokers, &BTreeMap::from([("linger.ms".to_string(), "5".to_string())]))?;
    let t0 = Instant::now();
    let mut n = 0i64;
    let mut value = Vec::with_capacity(160);
    while n < total {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                value.clear();
                use std::io::Write;
                let _ = write!(
                    value,
                    r#"{{"tx_id":{},"score":0.5,"model_version":"bench","event_time_ms":{},"partition":{},"offset":{}}}"#,
                    n,
                    m.timestamp().to_millis().unwrap_or(0),
                    m.partition(),
                    m.offset()
                );
                producer.send(out_topic, m.key(), &value, None)?;
                n += 1;
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "bench consumer"),
        }
        if t0.elapsed() > Duration::from_secs(600) {
            break;
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok((n as u64, n as f64 / t0.elapsed().as_secs_f64()))
}

/// Runs the benchmark.
///
/// # Errors
/// [`DemoError`] from the configuration, the broker, the model or the topology.
pub fn run_bench(opts: &BenchOptions) -> Result<BenchReport, DemoError> {
    let mut cfg = TopologyConfig::load(&opts.topology)?;
    let onnx = raw_onnx(&cfg, &opts.sim, opts.onnx_seconds)?;

    let kafka = EmbeddedKafka::start()?;
    let topic = "bench-transactions";
    kafka.create_topic(topic, opts.partitions)?;
    kafka.create_topic("bench-labels", opts.partitions)?;
    kafka.create_topic("bench-raw-out", opts.partitions)?;
    kafka.create_topic("bench-scores", opts.partitions)?;
    kafka.create_topic(&cfg.dead_letter.topic, 1)?;
    let brokers = kafka.bootstrap_servers();
    let generated = generate(
        opts.sim.clone(),
        &Target::Kafka { brokers: brokers.clone(), topic: topic.into(), labels_topic: "bench-labels".into() },
        0,
        None,
        |_| {},
        |_| {},
    )?;
    let (raw_n, kafka_rate) = raw_kafka(&brokers, topic, "bench-raw-out")?;
    debug_assert_eq!(raw_n, generated.transactions);

    cfg.source.topic = topic.into();
    cfg.sink.topic = "bench-scores".into();
    cfg.sink.kind = "kafka".into();
    let pipeline = run_topology(
        &cfg,
        RunOptions { brokers: Some(brokers), bounded: true, start: Some(StartPosition::Earliest), ..RunOptions::default() },
    )?;
    drop(kafka);
    Ok(BenchReport {
        batch_rows: cfg.batching.max_batch_rows,
        events: generated.transactions,
        onnx_rows_per_s: onnx,
        kafka_events_per_s: kafka_rate,
        pipeline,
        workers: cfg.topology.workers,
    })
}
