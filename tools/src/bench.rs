//! `weir bench`: throughputs measured side by side in one run, on the same data.
//!
//! 1. **Raw ONNX Runtime**: one session (as configured) scoring `[max_batch_rows, n_features]`
//!    batches of real feature rows in a loop: rows/s.
//! 2. **Raw Kafka I/O**: a bare consumer reading the transactions and the labels topics (the
//!    topology reads both: the fraud ratios need the labels) from the same embedded broker and a
//!    producer (weir's sink settings) writing one score-sized record per transaction, until all
//!    are acknowledged: transactions/s. And the bare consumer alone (the backfill's Kafka part:
//!    its sink is Parquet).
//! 3. **Pipeline**: the topology end to end over the same topics (bounded), events/s from start
//!    of the dataflow to the last sink acknowledgement.
//! 4. **Backfill**: `weir backfill` over the whole topic (by offsets, to Parquet files in a
//!    temporary directory) with the `[backfill]` window, against raw ONNX Runtime at the backfill
//!    batch size (measured like 1) and against the pipeline (the live path) of 3.
//!
//! The target of each path is 90% of its raw bound, what its unavoidable parts cost together on
//! the same cores: `1 / (1 / kafka + 1 / onnx)` (issue 14).

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

use crate::demo::DemoError;
use crate::generate::{generate, Target};
use weir_jobs::backfill::{run_backfill, BackfillOptions, RangeSpec, SinkSpec};
use weir_runtime::runner::{open_scorers, run_topology, RunOptions, RunReport};
use weir_topologies::config::TopologyConfig;

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
    /// A real broker to run against (topics created with `partitions` partitions, names
    /// suffixed with the process id so that runs do not mix); `None`: the embedded broker.
    pub brokers: Option<String>,
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
    /// Raw Kafka I/O of the live path: transactions/s of a bare loop consuming the
    /// transactions and the labels and producing one record per transaction.
    pub kafka_events_per_s: f64,
    /// Raw Kafka input of the backfill: transactions/s of a bare consumer of the transactions
    /// and the labels (the backfill's sink is Parquet).
    pub kafka_consume_events_per_s: f64,
    /// Labels in the labels topic (read by the topology and by the bare loops).
    pub labels: u64,
    /// The broker: `embedded broker` or `broker <bootstrap servers>`.
    pub broker: String,
    /// The topology end to end.
    pub pipeline: RunReport,
    /// Timely workers.
    pub workers: usize,
    /// Backfill rows per micro-batch.
    pub backfill_batch_rows: usize,
    /// Raw ONNX Runtime rows/s at `backfill_batch_rows`.
    pub onnx_backfill_rows_per_s: f64,
    /// The backfill of the same topic.
    pub backfill: RunReport,
}

impl BenchReport {
    /// The raw bound of the live path, events/s: raw Kafka I/O and raw ONNX Runtime at the
    /// path's batch size sharing the same cores, `1 / (1 / kafka + 1 / onnx)` (each event costs
    /// both; they do not overlap on a machine they saturate).
    pub fn raw_bound(&self) -> f64 {
        1.0 / (1.0 / self.kafka_events_per_s + 1.0 / self.onnx_rows_per_s)
    }

    /// As [`BenchReport::raw_bound`] for the backfill: the bare consumer and raw ONNX Runtime
    /// at the backfill's batch size.
    pub fn backfill_raw_bound(&self) -> f64 {
        1.0 / (1.0 / self.kafka_consume_events_per_s + 1.0 / self.onnx_backfill_rows_per_s)
    }

    /// Pipeline events/s over the slower raw limit.
    pub fn ratio_to_limit(&self) -> f64 {
        self.pipeline.events_per_second() / self.onnx_rows_per_s.min(self.kafka_events_per_s)
    }

    /// The report as printed.
    pub fn render(&self) -> String {
        let p = self.pipeline.events_per_second();
        format!(
            "weir bench: {} events and {} labels, batch {} rows, {} workers, execution provider {}, {}\n\
             \x20 raw ONNX Runtime     {:>12.0} rows/s   (one session, batch {})\n\
             \x20 raw Kafka I/O        {:>12.0} events/s (bare consumer of events + labels, producer of one record per event)\n\
             \x20 raw Kafka input      {:>12.0} events/s (bare consumer of events + labels, the backfill's Kafka part)\n\
             \x20 pipeline end to end  {:>12.0} events/s (p50 {:.2} ms, p99 {:.2} ms, mean batch {:.1} rows)\n\
             \x20 pipeline / raw ONNX Runtime   {:.3}\n\
             \x20 pipeline / raw Kafka I/O      {:.3}\n\
             \x20 pipeline / slower raw limit   {:.3}\n\
             \x20 raw bound 1/(1/kafka + 1/onnx) {:>10.0} events/s\n\
             \x20 pipeline / raw bound          {:.3}   (target >= 0.9)\n\
             \x20 raw ONNX Runtime     {:>12.0} rows/s   (one session, batch {})\n\
             \x20 backfill             {:>12.0} events/s (Parquet sink, mean batch {:.1} rows)\n\
             \x20 backfill / raw ONNX Runtime at its batch   {:.3}\n\
             \x20 backfill / raw bound 1/(1/input + 1/onnx)  {:.3}   (target >= 0.9)\n\
             \x20 backfill / pipeline (live path)            {:.3}\n",
            self.events,
            self.labels,
            self.batch_rows,
            self.workers,
            self.pipeline.execution_provider,
            self.broker,
            self.onnx_rows_per_s,
            self.batch_rows,
            self.kafka_events_per_s,
            self.kafka_consume_events_per_s,
            p,
            self.pipeline.p50_latency_us as f64 / 1000.0,
            self.pipeline.p99_latency_us as f64 / 1000.0,
            self.pipeline.mean_batch_rows,
            p / self.onnx_rows_per_s,
            p / self.kafka_events_per_s,
            self.ratio_to_limit(),
            self.raw_bound(),
            p / self.raw_bound(),
            self.onnx_backfill_rows_per_s,
            self.backfill_batch_rows,
            self.backfill.events_per_second(),
            self.backfill.mean_batch_rows,
            self.backfill.events_per_second() / self.onnx_backfill_rows_per_s,
            self.backfill.events_per_second() / self.backfill_raw_bound(),
            self.backfill.events_per_second() / p,
        )
    }
}

/// A handbook transaction's values as `topologies/fraud-scoring.toml` declares them.
fn handbook_values(tx: &weir_simulator::Transaction) -> [weir_core::Value; 5] {
    weir_feature_store::definition::handbook_values(tx.tx_id, tx.tx_time_ms, tx.customer_id, tx.terminal_id, tx.amount)
}

fn raw_onnx(cfg: &TopologyConfig, sim: &SimConfig, seconds: f64, rows: usize) -> Result<f64, DemoError> {
    let (mut scorers, _) = open_scorers(cfg, None).map_err(weir_runtime::runner::TopologyError::from)?;
    let scorer = &mut scorers[0];
    let set = cfg.feature_spec();
    let mut small = sim.clone();
    small.n_days = 1;
    let txs: Vec<_> = Simulator::new(small).flatten().take(rows).collect();
    let mut x = Array2::<f32>::zeros((rows, set.len()));
    for i in 0..rows {
        // Windowed features as for a customer's first transaction: realistic enough for timing.
        let tx = &txs[i % txs.len()].tx;
        let values = handbook_values(tx);
        let v: Vec<f32> = set
            .event_values(&values)
            .iter()
            .zip(set.columns())
            .map(|(v, c)| match c {
                weir_feature_store::definition::Column::Windowed { .. } => 1.0,
                _ => *v as f32,
            })
            .collect();
        x.row_mut(i).assign(&ndarray::ArrayView1::from(&v));
    }
    // Warm up, then measure.
    for _ in 0..20 {
        let _ = scorer.score(x.view());
    }
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < seconds {
        scorer
            .score(x.view())
            .map_err(weir_runtime::runner::TopologyError::from)?;
        n += rows as u64;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// What the bare Kafka loop read and how fast.
struct RawKafka {
    /// Transactions read (and, with a producer, one record written per transaction).
    transactions: u64,
    /// Labels read.
    labels: u64,
    /// Transactions per second, labels read alongside.
    rate: f64,
}

/// Bare consumers reading every message of `topics` from the earliest offset and, with
/// `out_topic`, a producer (weir's sink settings) writing one score-sized record per message of
/// the first topic (the transactions) until all are acknowledged: the Kafka I/O the topology
/// cannot avoid, as fast as librdkafka goes. `threads` loops share the work as the topology's
/// workers do (partition `p` of every topic to loop `p % threads`, each with its own consumer,
/// one producer shared), so that the bound uses the same cores as the pipeline.
fn raw_kafka(brokers: &str, topics: &[&str], out_topic: Option<&str>, threads: usize) -> Result<RawKafka, DemoError> {
    let threads = threads.max(1);
    let mut totals = vec![vec![0u64; topics.len()]; threads];
    let mut tpls: Vec<TopicPartitionList> = (0..threads).map(|_| TopicPartitionList::new()).collect();
    for (k, topic) in topics.iter().enumerate() {
        for (p, lo, hi) in watermarks(brokers, topic, Duration::from_secs(10))? {
            let w = p as usize % threads;
            totals[w][k] += (hi - lo) as u64;
            let _ = tpls[w].add_partition_offset(topic, p, Offset::Offset(lo));
        }
    }
    let producer = match out_topic {
        Some(_) => Some(BulkProducer::new(
            brokers,
            &BTreeMap::from([(
                "linger.ms".to_string(),
                weir_connectors::kafka::sink::DEFAULT_LINGER_MS.to_string(),
            )]),
        )?),
        None => None,
    };
    let t0 = Instant::now();
    let loops: Vec<Result<Vec<u64>, DemoError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = tpls
            .iter()
            .zip(&totals)
            .map(|(tpl, totals)| {
                let producer = producer.as_ref();
                scope.spawn(move || raw_kafka_loop(brokers, topics, tpl, totals, producer.zip(out_topic), t0))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(DemoError::Usage("bench loop panicked".into())))
            })
            .collect()
    });
    let mut read = vec![0u64; topics.len()];
    for r in loops {
        for (a, b) in read.iter_mut().zip(r?) {
            *a += b;
        }
    }
    if let Some(p) = producer {
        p.flush(Duration::from_secs(120))?;
    }
    Ok(RawKafka {
        transactions: read[0],
        labels: read.get(1).copied().unwrap_or(0),
        rate: read[0] as f64 / t0.elapsed().as_secs_f64(),
    })
}

/// A bare consumer of the benchmarks, assigned `tpl`, with weir's source settings that bear on
/// speed (`fetch.wait.max.ms`; `fetch.queue.backoff.ms = 5`, as librdkafka's default of 1 s
/// stalls a partition whose queue filled); no commits.
///
/// # Errors
/// [`weir_connectors::ConnectorError::Kafka`] if it cannot be created or assigned.
pub(crate) fn bare_consumer(brokers: &str, group: &str, tpl: &TopicPartitionList) -> Result<BaseConsumer, DemoError> {
    let kafka_err = |context: &'static str| {
        move |e| weir_connectors::ConnectorError::Kafka {
            context: context.into(),
            source: e,
        }
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", weir_connectors::kafka::source::FETCH_WAIT_MAX_MS)
        .set("fetch.queue.backoff.ms", "5")
        .create()
        .map_err(kafka_err("bench consumer"))?;
    consumer.assign(tpl).map_err(kafka_err("bench assign"))?;
    Ok(consumer)
}

/// Writes into `value` the score-sized record (the score sink's JSON shape) that the bare loops
/// produce for message `m`.
pub(crate) fn score_record(value: &mut Vec<u8>, m: &impl Message) {
    use std::io::Write;
    value.clear();
    let _ = write!(
        value,
        r#"{{"tx_id":{},"score":0.5,"model_version":"bench","event_time_ms":{},"partition":{},"offset":{}}}"#,
        m.offset(),
        m.timestamp().to_millis().unwrap_or(0),
        m.partition(),
        m.offset()
    );
}

/// One loop of [`raw_kafka`]: reads `tpl` until `totals` messages of each topic are read.
fn raw_kafka_loop(
    brokers: &str,
    topics: &[&str],
    tpl: &TopicPartitionList,
    totals: &[u64],
    out: Option<(&BulkProducer, &str)>,
    t0: Instant,
) -> Result<Vec<u64>, DemoError> {
    let consumer = bare_consumer(brokers, "weir-bench-raw", tpl)?;
    let mut read = vec![0u64; topics.len()];
    let mut value = Vec::with_capacity(160);
    while read.iter().zip(totals).any(|(r, t)| r < t) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let k = topics.iter().position(|t| *t == m.topic()).unwrap_or(0);
                read[k] += 1;
                if let (0, Some((p, topic))) = (k, out) {
                    score_record(&mut value, &m);
                    p.send(topic, m.key(), &value, None)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "bench consumer"),
        }
        if t0.elapsed() > Duration::from_secs(600) {
            break;
        }
    }
    Ok(read)
}

/// Runs the benchmark.
///
/// # Errors
/// [`DemoError`] from the configuration, the broker, the model or the topology.
pub fn run_bench(opts: &BenchOptions) -> Result<BenchReport, DemoError> {
    let mut cfg = TopologyConfig::load(&opts.topology)?;
    let onnx = raw_onnx(&cfg, &opts.sim, opts.onnx_seconds, cfg.batching.max_batch_rows)?;
    let onnx_backfill = raw_onnx(&cfg, &opts.sim, opts.onnx_seconds, cfg.backfill.max_batch_rows)?;

    // Fresh topics per run on a real broker (a rerun must not read the last one's events).
    let suffix = match opts.brokers {
        Some(_) => format!("-{}", std::process::id()),
        None => String::new(),
    };
    let topic = format!("bench-transactions{suffix}");
    let topic = topic.as_str();
    cfg.labels.topic = format!("{}{suffix}", cfg.labels.topic);
    cfg.dead_letter.topic = format!("{}{suffix}", cfg.dead_letter.topic);
    let (raw_out, scores) = (format!("bench-raw-out{suffix}"), format!("bench-scores{suffix}"));
    let topics = [
        (topic, opts.partitions),
        (cfg.labels.topic.as_str(), opts.partitions),
        (raw_out.as_str(), opts.partitions),
        (scores.as_str(), opts.partitions),
        (cfg.dead_letter.topic.as_str(), 1),
    ];
    let (kafka, brokers) = match &opts.brokers {
        Some(b) => {
            weir_connectors::kafka::admin::create_topics(b, &topics, Duration::from_secs(30))?;
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
    let generated = generate(
        opts.sim.clone(),
        &Target::Kafka {
            brokers: brokers.clone(),
            topic: topic.into(),
            labels_topic: cfg.labels.topic.clone(),
            realtime: false,
        },
        0,
        None,
        |_| {},
        |_| {},
    )?;
    // The topology reads the labels too (the fraud ratios): so do the bare loops.
    let inputs = [topic, cfg.labels.topic.as_str()];
    let raw = raw_kafka(&brokers, &inputs, Some(&raw_out), cfg.topology.workers)?;
    debug_assert_eq!(raw.transactions, generated.transactions);
    // The backfill writes Parquet, not Kafka: its bound is the bare consumer's.
    let raw_consume = raw_kafka(&brokers, &inputs, None, cfg.topology.workers)?;

    cfg.source.topic = topic.into();
    cfg.sink.topic = scores.clone();
    cfg.sink.kind = "kafka".into();
    let pipeline = run_topology(
        &cfg,
        RunOptions {
            brokers: Some(brokers.clone()),
            mode: weir_runtime::runner::Mode::UntilEnd,
            start: Some(StartPosition::Earliest),
            ..RunOptions::default()
        },
    )?;

    let scratch = std::env::temp_dir().join(format!("weir-bench-{}", std::process::id()));
    let from = watermarks(&brokers, topic, Duration::from_secs(10))?
        .into_iter()
        .map(|(p, lo, _)| (p, lo))
        .collect();
    let backfill = run_backfill(&BackfillOptions {
        topology: Some(opts.topology.clone()),
        brokers: Some(brokers),
        range: Some(RangeSpec::Offsets {
            from,
            to: BTreeMap::new(),
        }),
        sink: Some(SinkSpec::Parquet(scratch.join("out"))),
        state_dir: scratch.join("state"),
        config: Some(cfg.clone()),
        ..BackfillOptions::default()
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let backfill = backfill.map_err(|e| DemoError::Usage(format!("backfill: {e}")))?;
    drop(kafka);
    Ok(BenchReport {
        batch_rows: cfg.batching.max_batch_rows,
        events: generated.transactions,
        onnx_rows_per_s: onnx,
        kafka_events_per_s: raw.rate,
        kafka_consume_events_per_s: raw_consume.rate,
        labels: raw.labels,
        broker: match &opts.brokers {
            Some(b) => format!("broker {b}"),
            None => "embedded broker".into(),
        },
        pipeline,
        workers: cfg.topology.workers,
        backfill_batch_rows: cfg.backfill.max_batch_rows,
        onnx_backfill_rows_per_s: onnx_backfill,
        backfill: backfill.run,
    })
}

/// What `weir bench-features` measured.
#[derive(Debug, Clone)]
pub struct FeatureBenchReport {
    /// Timely workers.
    pub workers: usize,
    /// Transactions fed.
    pub events: u64,
    /// Labels fed.
    pub labels: u64,
    /// Seconds from the first event to the last feature vector.
    pub seconds: f64,
    /// Resident memory after the run, bytes (`VmRSS`).
    pub rss_end: u64,
    /// Peak resident memory, bytes (`VmHWM`).
    pub rss_peak: u64,
    /// Resident memory before the first event was fed (the generated dataset included), bytes.
    pub rss_before: u64,
    /// Transactions inside the longest `window + delay` at the end of the stream.
    pub events_in_window: u64,
}

impl FeatureBenchReport {
    /// Transactions per second per worker.
    pub fn events_per_second_per_worker(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9) / self.workers.max(1) as f64
    }

    /// Peak resident growth per transaction inside the longest window, bytes.
    pub fn bytes_per_event_in_window(&self) -> f64 {
        self.rss_peak.saturating_sub(self.rss_before) as f64 / self.events_in_window.max(1) as f64
    }
}

/// Events per epoch of the feature benchmark's input: the timely time advances once per epoch.
pub const FEATURE_BENCH_EPOCH: usize = 1024;

fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Feeds `events` simulated transactions (and their labels, in arrival order) through the
/// topology's feature store alone, with `workers` workers, and measures throughput and memory.
///
/// The events are generated first (the simulator is not what is measured) and fed by worker 0
/// with coarse timely time: the input advances to the next event's time once per epoch of
/// [`FEATURE_BENCH_EPOCH`] events (records carry their event time). Memory: the resident size
/// before feeding (the dataset included) is the baseline; the growth to the peak, over the
/// events inside the longest `window + delay` at the end of the stream, is the cost per event
/// the windows hold.
///
/// # Errors
/// [`DemoError`] if the topology file is invalid.
pub fn run_feature_bench(
    topology: &std::path::Path,
    sim: SimConfig,
    events: u64,
    workers: usize,
) -> Result<FeatureBenchReport, DemoError> {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use timely::dataflow::operators::vec::Input;
    use timely::dataflow::operators::{Inspect, Probe};
    use weir_core::{EventId, Lineage, RowMeta};
    use weir_feature_store::{EventRow, LabelRow};

    let cfg = TopologyConfig::load(topology)?;
    let plan = weir_runtime::runner::FeaturePlan::of(&cfg);
    let spec = plan.spec.clone();
    // The handbook's label messages, decoded as the topology declares them.
    let label_of = |l: &weir_simulator::FraudLabel| -> Option<LabelRow> {
        let (schema, layout) = plan.labels.as_ref()?;
        let values = schema.decode(&serde_json::to_vec(l).ok()?).ok()?;
        spec.label_row(layout, &values, l.available_at_ms).ok()
    };
    // The dataset, in arrival order: each label once its chargeback is due.
    // Transactions are kept as the simulator made them and turned into the feature store's rows
    // as they are fed (timed, as decoding's output would be).
    enum Arrival {
        Tx(RowMeta, weir_simulator::Transaction),
        Label(LabelRow),
    }
    let mut arrivals: Vec<(i64, Arrival)> = Vec::with_capacity(2 * events as usize);
    let mut pending: VecDeque<(i64, LabelRow)> = VecDeque::new();
    let mut n = 0u64;
    'days: for day in Simulator::new(sim.clone()) {
        for lt in day {
            let t = lt.tx.tx_time_ms;
            while pending.front().is_some_and(|(at, _)| *at <= t) {
                let (at, l) = pending.pop_front().expect("non-empty");
                arrivals.push((at, Arrival::Label(l)));
            }
            if let Some(l) = label_of(&lt.label) {
                pending.push_back((lt.label.available_at_ms, l));
            }
            let meta = RowMeta {
                lineage: Lineage {
                    partition: 0,
                    offset: lt.tx.tx_id as i64,
                },
                id: EventId::Int(lt.tx.tx_id as i64),
                event_time_ms: t,
                read_at_us: 0,
            };
            arrivals.push((t, Arrival::Tx(meta, lt.tx)));
            n += 1;
            if n >= events {
                break 'days;
            }
        }
    }
    let last_t = arrivals.last().map_or(0, |a| a.0);
    let lookback = spec.lookback_ms() as i64;
    let in_window = arrivals
        .iter()
        .filter(|(t, a)| matches!(a, Arrival::Tx(..)) && *t > last_t - lookback)
        .count() as u64;
    let n_labels = arrivals.iter().filter(|(_, a)| matches!(a, Arrival::Label(_))).count() as u64;
    let arrivals = Arc::new(arrivals);
    // Dropped after the timing (freeing millions of arrivals is not the feature store's work).
    let _arrivals = arrivals.clone();
    // The peak below is the run's: reset the high-water mark the setup left (Linux: writing 5
    // to clear_refs resets VmHWM to the current resident size).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = proc_status_kb("VmRSS:") * 1024;

    let out = Arc::new(AtomicU64::new(0));
    let o2 = out.clone();
    let started = Instant::now();
    timely::execute(timely::Config::process(workers), move |worker| {
        let out = o2.clone();
        let spec = spec.clone();
        let spec_in = spec.clone();
        let (mut tx_in, mut label_in, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (tx_in, txs) = scope.new_input::<EventRow>();
            let (label_in, labels) = scope.new_input::<LabelRow>();
            let (probe, _) = weir_feature_store::windowed_features(txs, Some(labels), spec)
                .inspect_core(move |event| {
                    if let Ok((_, rows)) = event {
                        out.fetch_add(rows.len() as u64, Ordering::Relaxed);
                    }
                })
                .probe();
            (tx_in, label_in, probe)
        });
        if worker.index() == 0 {
            for (i, (t, a)) in arrivals.iter().enumerate() {
                if i % FEATURE_BENCH_EPOCH == 0 {
                    // Coarse time: every later arrival is at or after this one's time.
                    let t = *t as u64;
                    if t > *tx_in.time() {
                        tx_in.advance_to(t);
                        label_in.advance_to(t);
                    }
                    worker.step();
                }
                match a {
                    Arrival::Tx(meta, tx) => {
                        tx_in.send(
                            spec_in
                                .event_row(meta.clone(), &handbook_values(tx))
                                .expect("a handbook amount"),
                        );
                    }
                    Arrival::Label(l) => label_in.send(l.clone()),
                }
            }
        }
        drop(tx_in);
        drop(label_in);
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    })
    .map_err(DemoError::Usage)?;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        out.load(std::sync::atomic::Ordering::Relaxed),
        n,
        "one feature vector per transaction"
    );
    let rss_peak = proc_status_kb("VmHWM:") * 1024;
    Ok(FeatureBenchReport {
        workers,
        events: n,
        labels: n_labels,
        seconds,
        rss_end: proc_status_kb("VmRSS:") * 1024,
        rss_peak,
        rss_before,
        events_in_window: in_window,
    })
}

/// What [`run_decode_bench`] measured: events decoded per second on one core by each decoder.
#[derive(Debug, Clone)]
pub struct DecodeBench {
    /// Events decoded per run.
    pub events: usize,
    /// A typed decoder: serde's derived `Deserialize` of the handbook's transaction struct
    /// (`deny_unknown_fields`) with the amount and time checks, as weir decoded before declared
    /// schemas (`decode_transaction`, removed with issue 16), events/s.
    pub typed_per_s: f64,
    /// The topology's decoder (`weir_operators::decode::EventDecoder` over the handbook's
    /// declared schema: the same checks), events/s.
    pub schema_per_s: f64,
}

impl DecodeBench {
    /// `schema_per_s / typed_per_s` (the target of issue 16: at least 0.9).
    pub fn ratio(&self) -> f64 {
        self.schema_per_s / self.typed_per_s
    }
}

/// Decodes `events` simulated transactions (JSON, as `weir generate` writes them) with the typed
/// decoder and with the declared-schema decoder on this thread, interleaved, best of five runs
/// each; every event must decode with both.
///
/// # Errors
/// [`DemoError::Usage`] if an event fails to decode (a bug).
pub fn run_decode_bench(events: usize) -> Result<DecodeBench, DemoError> {
    use weir_core::{Lineage, SourceEvent};
    use weir_operators::decode::{handbook_decoder, DecodeLimits};
    let sim = SimConfig {
        n_days: 100_000,
        ..SimConfig::default()
    };
    let payloads: Vec<SourceEvent> = Simulator::new(sim)
        .flatten()
        .take(events)
        .enumerate()
        .map(|(i, lt)| SourceEvent {
            lineage: Lineage {
                partition: 0,
                offset: i as i64,
            },
            key: None,
            payload: Some(serde_json::to_vec(&lt.tx).expect("serializable")),
            headers: vec![],
            timestamp_ms: lt.tx.tx_time_ms,
            event_time_ms: lt.tx.tx_time_ms,
            read_at_us: 0,
        })
        .collect();
    let limits = DecodeLimits::default();
    let now = weir_core::clock::wall_ms();
    let decoder = handbook_decoder(limits.clone());
    // The typed decoder weir had before declared schemas: the derived struct, its checks.
    let decode_typed = |ev: &SourceEvent| -> Option<weir_simulator::Transaction> {
        let payload = ev.payload.as_deref()?;
        if payload.len() > limits.max_payload_bytes {
            return None;
        }
        let tx: weir_simulator::Transaction = serde_json::from_slice(payload).ok()?;
        let ok = tx.amount.is_finite()
            && (0.0..=1e9).contains(&tx.amount)
            && tx.tx_time_ms >= 0
            && tx.tx_time_ms <= now.saturating_add(limits.max_future_ms)
            && tx.tx_time_ms.saturating_sub(ev.timestamp_ms) <= limits.allowed_future_ms;
        ok.then_some(tx)
    };
    let rate = |f: &dyn Fn() -> Result<u64, DemoError>| -> Result<f64, DemoError> {
        let t = Instant::now();
        std::hint::black_box(f()?);
        Ok(payloads.len() as f64 / t.elapsed().as_secs_f64())
    };
    let typed = || {
        let mut sum = 0u64;
        for ev in &payloads {
            let tx = decode_typed(ev).ok_or_else(|| DemoError::Usage("typed decode failed".into()))?;
            sum = sum.wrapping_add(tx.tx_id ^ tx.terminal_id);
        }
        Ok(sum)
    };
    let declared = || {
        let mut sum = 0u64;
        let mut v = Vec::new();
        for ev in &payloads {
            decoder
                .decode(ev, now, &mut v)
                .map_err(|e| DemoError::Usage(format!("schema decode failed: {}", e.detail)))?;
            if let (weir_operators::schema::Value::Int(id), weir_operators::schema::Value::Int(t)) = (&v[0], &v[3]) {
                sum = sum.wrapping_add((*id ^ *t) as u64);
            }
        }
        Ok(sum)
    };
    // Interleaved, best of five each: both see the same machine state.
    let (mut typed_per_s, mut schema_per_s) = (0f64, 0f64);
    for _ in 0..5 {
        typed_per_s = typed_per_s.max(rate(&typed)?);
        schema_per_s = schema_per_s.max(rate(&declared)?);
    }
    Ok(DecodeBench {
        events: payloads.len(),
        typed_per_s,
        schema_per_s,
    })
}
