//! `weir demo`: the whole path on an embedded broker, with a summary.
//!
//! Starts librdkafka's in-process mock cluster, generates simulated days of transactions onto
//! the topology's source topic (labels onto `fraud-labels`, a few malformed events among them),
//! runs the topology over the topic from the earliest offset to its end, reads the scores back,
//! checks every transaction was scored exactly once, and evaluates the scores against the
//! labels read from `fraud-labels`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use weir_connectors::kafka::admin::{read_topic, watermarks};
use weir_connectors::kafka::embedded::EmbeddedKafka;
use weir_connectors::kafka::source::StartPosition;
use weir_simulator::{FraudLabel, SimConfig, DAY_MS};

use crate::eval::{card_precision_at_k, roc_auc, ScoredTx};
use crate::generate::{generate, GenerateError, GenerateSummary, Target};
use weir_runtime::runner::{run_topology, RunOptions, RunReport, TopologyError};
use weir_topologies::config::{ConfigError, TopologyConfig};

/// Topic the demo publishes labels on.
pub const LABELS_TOPIC: &str = "fraud-labels";

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Topology file.
    pub topology: PathBuf,
    /// Simulator parameters.
    pub sim: SimConfig,
    /// Malformed events mixed into the stream.
    pub malformed: u64,
    /// Partitions of the source topic.
    pub partitions: i32,
    /// Show progress bars.
    pub progress: bool,
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The topology file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The topology failed.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// Generation failed.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// The embedded broker failed.
    #[error(transparent)]
    Connector(#[from] weir_connectors::ConnectorError),
    /// The embedded broker deleted data (its retention is 5 MiB or 100,000 records per partition).
    #[error("the embedded broker dropped records of topic `{topic}` (partition {partition} starts at offset {low}): it keeps at most 5 MiB or 100,000 records per partition; use more --partitions")]
    Truncated {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Its low watermark.
        low: i64,
    },
    /// Wrong combination of options, or a failure reported as text by a worker.
    #[error("{0}")]
    Usage(String),
    /// The demo needs a Kafka sink to read scores back.
    #[error("the demo reads scores back from Kafka: set sink.kind = \"kafka\" in `{0}`")]
    NeedsKafkaSink(PathBuf),
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// What was generated.
    pub generated: GenerateSummary,
    /// Days generated.
    pub days: u32,
    /// The topology run.
    pub run: RunReport,
    /// Score records read back from the sink topic.
    pub score_records: usize,
    /// Distinct transaction ids among them.
    pub unique_scored: usize,
    /// Score records beyond the first per transaction.
    pub duplicates: usize,
    /// Generated transactions without a score.
    pub missing: usize,
    /// Records in the dead-letter topic.
    pub dead_letter_records: usize,
    /// Labels read from the labels topic.
    pub labels: usize,
    /// ROC AUC of the scores against the labels.
    pub auc: Option<f64>,
    /// Card precision@100, mean over days.
    pub card_precision_at_100: f64,
    /// Model version.
    pub model_version: String,
    /// Sink topic.
    pub sink_topic: String,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
}

/// Runs the demo.
///
/// # Errors
/// [`DemoError`] from the configuration, the broker, generation or the topology.
pub fn run_demo(opts: &DemoOptions) -> Result<DemoReport, DemoError> {
    let cfg = TopologyConfig::load(&opts.topology)?;
    if cfg.sink.kind != "kafka" {
        return Err(DemoError::NeedsKafkaSink(opts.topology.clone()));
    }
    let kafka = EmbeddedKafka::start()?;
    kafka.create_topic(&cfg.source.topic, opts.partitions)?;
    kafka.create_topic(LABELS_TOPIC, opts.partitions)?;
    kafka.create_topic(&cfg.sink.topic, opts.partitions)?;
    kafka.create_topic(&cfg.dead_letter.topic, 1)?;
    let brokers = kafka.bootstrap_servers();

    let bar = |len: u64, msg: &'static str| {
        let pb = if opts.progress {
            ProgressBar::new(len)
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_message(msg);
        pb
    };
    // tx_id -> (customer, day)
    let mut txs: HashMap<u64, (u64, i64)> = HashMap::new();
    let days = opts.sim.n_days;
    let start_ms = opts.sim.start_ms;
    let pb = bar(days as u64, "generate");
    let generated = generate(
        opts.sim.clone(),
        &Target::Kafka {
            brokers: brokers.clone(),
            topic: cfg.source.topic.clone(),
            labels_topic: LABELS_TOPIC.into(),
            realtime: false,
        },
        opts.malformed,
        None,
        |lt| {
            txs.insert(
                lt.tx.tx_id,
                (lt.tx.customer_id, (lt.tx.tx_time_ms - start_ms).div_euclid(DAY_MS)),
            );
        },
        |_| pb.inc(1),
    )?;
    pb.finish_and_clear();

    let run = run_topology(
        &cfg,
        RunOptions {
            brokers: Some(brokers.clone()),
            mode: weir_runtime::runner::Mode::UntilEnd,
            start: Some(StartPosition::Earliest),
            ..RunOptions::default()
        },
    )?;

    let timeout = Duration::from_secs(300);
    for topic in [&cfg.source.topic, &cfg.sink.topic, &LABELS_TOPIC.to_string()] {
        check_not_truncated(&brokers, topic)?;
    }
    let scores = read_topic(&brokers, &cfg.sink.topic, timeout)?;
    let labels = read_topic(&brokers, LABELS_TOPIC, timeout)?;
    let dead = read_topic(&brokers, &cfg.dead_letter.topic, timeout)?;

    let mut score_of: HashMap<u64, f32> = HashMap::with_capacity(scores.len());
    let mut duplicates = 0;
    for r in &scores {
        let v: serde_json::Value = match r.payload.as_deref().map(serde_json::from_slice) {
            Some(Ok(v)) => v,
            _ => continue,
        };
        let (Some(id), Some(s)) = (v["tx_id"].as_u64(), v["score"].as_f64()) else {
            continue;
        };
        if score_of.insert(id, s as f32).is_some() {
            duplicates += 1;
        }
    }
    let missing = txs.keys().filter(|id| !score_of.contains_key(id)).count();
    let mut pairs = Vec::with_capacity(labels.len());
    let mut scored = Vec::with_capacity(labels.len());
    for r in &labels {
        let Some(Ok(label)) = r.payload.as_deref().map(serde_json::from_slice::<FraudLabel>) else {
            continue;
        };
        if let (Some(&s), Some(&(customer_id, day))) = (score_of.get(&label.tx_id), txs.get(&label.tx_id)) {
            pairs.push((s, label.tx_fraud == 1));
            scored.push(ScoredTx {
                day,
                customer_id,
                score: s,
                fraud: label.tx_fraud == 1,
            });
        }
    }
    let report = DemoReport {
        generated,
        days,
        run,
        score_records: scores.len(),
        unique_scored: score_of.len(),
        duplicates,
        missing,
        dead_letter_records: dead.len(),
        labels: labels.len(),
        auc: roc_auc(&pairs),
        card_precision_at_100: card_precision_at_k(&scored, 100),
        model_version: cfg.model.version.clone(),
        sink_topic: cfg.sink.topic.clone(),
        dead_letter_topic: cfg.dead_letter.topic.clone(),
    };
    drop(kafka);
    Ok(report)
}

/// librdkafka's mock cluster deletes a partition's oldest records beyond 5 MiB or 100,000
/// records; a demo that lost data that way must say so rather than report missing scores.
pub(crate) fn check_not_truncated(brokers: &str, topic: &str) -> Result<(), DemoError> {
    for (partition, low, _) in watermarks(brokers, topic, Duration::from_secs(10))? {
        if low > 0 {
            return Err(DemoError::Truncated {
                topic: topic.to_string(),
                partition,
                low,
            });
        }
    }
    Ok(())
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The demo's summary, as printed.
pub fn summary(r: &DemoReport) -> String {
    let g = &r.generated;
    let run = &r.run;
    let dl: Vec<String> = run.dead_letters.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let exactly_once = if r.duplicates == 0 && r.missing == 0 && r.unique_scored as u64 == g.transactions {
        "every transaction scored exactly once"
    } else {
        "NOT exactly once"
    };
    format!(
        "weir demo: fraud-scoring on the embedded broker\n\
         \x20 generated     {} transactions over {} days ({} fraudulent, {:.2}%), {} malformed events\n\
         \x20 scored        {} events in {:.2} s = {} events/s\n\
         \x20 delivery      {} score records, {} distinct tx ids, {} duplicates, {} missing: {}\n\
         \x20 dead letters  {} ({}) -> topic {}\n\
         \x20 batches       {}, mean {:.1} rows\n\
         \x20 latency       p50 {:.2} ms, p99 {:.2} ms (source read -> sink ack)\n\
         \x20 model         {} on execution provider {}\n\
         \x20 quality       ROC AUC {}, card precision@100 per day {:.3} ({} labels from topic {})\n",
        thousands(g.transactions),
        r.days,
        thousands(g.frauds),
        100.0 * g.frauds as f64 / g.transactions.max(1) as f64,
        g.malformed,
        thousands(run.scored),
        run.elapsed.as_secs_f64(),
        thousands(run.events_per_second() as u64),
        thousands(r.score_records as u64),
        thousands(r.unique_scored as u64),
        r.duplicates,
        r.missing,
        exactly_once,
        r.dead_letter_records,
        if dl.is_empty() {
            "none".to_string()
        } else {
            dl.join(", ")
        },
        r.dead_letter_topic,
        thousands(run.batches),
        run.mean_batch_rows,
        run.p50_latency_us as f64 / 1000.0,
        run.p99_latency_us as f64 / 1000.0,
        r.model_version,
        run.execution_provider,
        r.auc.map(|a| format!("{a:.3}")).unwrap_or_else(|| "n/a".into()),
        r.card_precision_at_100,
        thousands(r.labels as u64),
        LABELS_TOPIC,
    )
}
