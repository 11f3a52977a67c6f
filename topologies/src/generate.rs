//! `weir generate`: the simulator's transactions to a Kafka topic or a JSONL file, labels apart.
//!
//! Kafka: transactions on `topic`, keyed by customer id, message timestamp = transaction time;
//! labels on `labels_topic`, keyed by transaction id, timestamp = when the label becomes known
//! (transaction time + label delay), so consumers that respect event time never see a label
//! before its chargeback would arrive. JSONL: one transaction per line in `path`, labels in a
//! second file.
//!
//! With `realtime`, a label is sent only once its time has come (a broker refuses records
//! stamped far in the future, e.g. nisshi's `InvalidTimestamp` a week ahead, and a label sent
//! early would be seen before its chargeback): labels still due when the generator ends are
//! counted in [`GenerateSummary::labels_not_due`], not sent. A record the broker refuses makes
//! the generator fail with the count and the first error.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use weir_connectors::kafka::admin::BulkProducer;
use weir_connectors::ConnectorError;
use weir_simulator::{LabeledTransaction, SimConfig, Simulator};

/// Where generated data goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Kafka topics.
    Kafka {
        /// Bootstrap servers.
        brokers: String,
        /// Transactions topic.
        topic: String,
        /// Labels topic.
        labels_topic: String,
        /// Stamp each transaction with the wall clock when it is sent (`tx_time_ms` and the
        /// message timestamp; its label keeps its delay), instead of its simulated time: live
        /// traffic for latency measurements and dashboards (`weir generate --realtime`).
        realtime: bool,
    },
    /// JSON Lines files.
    Jsonl {
        /// Transactions file.
        path: PathBuf,
        /// Labels file.
        labels_path: PathBuf,
    },
}

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] ConnectorError),
    /// A file could not be written.
    #[error("cannot write `{path}`: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        detail: String,
    },
}

/// What was generated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateSummary {
    /// Transactions written.
    pub transactions: u64,
    /// Of which fraudulent.
    pub frauds: u64,
    /// Malformed events written among the transactions (for dead-letter demos).
    pub malformed: u64,
    /// Labels sent.
    pub labels: u64,
    /// Labels not sent because their time had not come when the generator ended (`realtime`).
    pub labels_not_due: u64,
}

/// Malformed events mixed into the stream by `--malformed N`, cycled.
pub const MALFORMED: [&[u8]; 4] = [
    br#"{"tx_id": 1, "tx_time_ms": 1522540800000, "customer_id": 1"#,
    br#"{"tx_id":1,"tx_time_ms":1522540800000,"customer_id":1,"terminal_id":2,"amount":-5.0}"#,
    b"\xff\xfe\x00 not json",
    br#"{"tx_id":"one","tx_time_ms":1522540800000,"customer_id":1,"terminal_id":2,"amount":5.0}"#,
];

/// Generates `sim` into `target`, mixing in `malformed` bad events evenly, at most `rate`
/// transactions per second if given (Kafka only), calling `each` for every transaction and
/// `on_day` after each simulated day.
///
/// # Errors
/// [`GenerateError`] if the target cannot be written.
pub fn generate(
    sim: SimConfig,
    target: &Target,
    malformed: u64,
    rate: Option<f64>,
    mut each: impl FnMut(&LabeledTransaction),
    mut on_day: impl FnMut(u32),
) -> Result<GenerateSummary, GenerateError> {
    let days = sim.n_days.max(1) as u64;
    let simulator = Simulator::new(sim);
    let mut summary = GenerateSummary::default();
    match target {
        Target::Kafka {
            brokers,
            topic,
            labels_topic,
            realtime,
        } => {
            let producer = BulkProducer::new(brokers, &BTreeMap::new())?;
            let started = std::time::Instant::now();
            // realtime: labels wait until due, `(available_at_ms, seq) -> (key, payload)`.
            let mut due_labels: BTreeMap<(i64, u64), (String, Vec<u8>)> = BTreeMap::new();
            let send_due = |producer: &BulkProducer,
                            due_labels: &mut BTreeMap<(i64, u64), (String, Vec<u8>)>,
                            summary: &mut GenerateSummary|
             -> Result<(), ConnectorError> {
                let now = weir_core::clock::wall_ms();
                while let Some(entry) = due_labels.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let ((at, _), (key, payload)) = entry.remove_entry();
                    producer.send(labels_topic, Some(key.as_bytes()), &payload, Some(at))?;
                    summary.labels += 1;
                }
                Ok(())
            };
            for (day, txs) in simulator.enumerate() {
                for lt in &txs {
                    if let Some(rate) = rate {
                        // Pace: transaction n is sent no earlier than n / rate seconds after start.
                        let due = Duration::from_secs_f64(summary.transactions as f64 / rate);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let mut stamped;
                    let lt = if *realtime {
                        stamped = lt.clone();
                        let shift = weir_core::clock::wall_ms() - lt.tx.tx_time_ms;
                        stamped.tx.tx_time_ms += shift;
                        stamped.label.tx_time_ms += shift;
                        stamped.label.available_at_ms += shift;
                        &stamped
                    } else {
                        lt
                    };
                    let payload = serde_json::to_vec(&lt.tx).expect("serializable");
                    let key = lt.tx.customer_id.to_string();
                    producer.send(topic, Some(key.as_bytes()), &payload, Some(lt.tx.tx_time_ms))?;
                    let label = serde_json::to_vec(&lt.label).expect("serializable");
                    let lkey = lt.tx.tx_id.to_string();
                    if *realtime {
                        due_labels.insert((lt.label.available_at_ms, lt.tx.tx_id), (lkey, label));
                        send_due(&producer, &mut due_labels, &mut summary)?;
                    } else {
                        producer.send(
                            labels_topic,
                            Some(lkey.as_bytes()),
                            &label,
                            Some(lt.label.available_at_ms),
                        )?;
                        summary.labels += 1;
                    }
                    summary.transactions += 1;
                    summary.frauds += lt.label.tx_fraud as u64;
                    each(lt);
                }
                // Spread malformed events over the days.
                let due = malformed * (day as u64 + 1) / days;
                while summary.malformed < due {
                    let bad = MALFORMED[(summary.malformed % MALFORMED.len() as u64) as usize];
                    producer.send(topic, Some(b"malformed"), bad, txs.last().map(|t| t.tx.tx_time_ms))?;
                    summary.malformed += 1;
                }
                on_day(day as u32);
            }
            send_due(&producer, &mut due_labels, &mut summary)?;
            summary.labels_not_due = due_labels.len() as u64;
            if summary.labels_not_due > 0 {
                tracing::info!(
                    labels = summary.labels_not_due,
                    "labels not sent: their chargebacks are due after the generator ended"
                );
            }
            producer.flush(Duration::from_secs(120))?;
        }
        Target::Jsonl { path, labels_path } => {
            let open = |p: &PathBuf| {
                std::fs::File::create(p)
                    .map(BufWriter::new)
                    .map_err(|e| GenerateError::File {
                        path: p.clone(),
                        detail: e.to_string(),
                    })
            };
            let (mut tx_out, mut label_out) = (open(path)?, open(labels_path)?);
            let werr = |p: &PathBuf| {
                let p = p.clone();
                move |e: std::io::Error| GenerateError::File {
                    path: p,
                    detail: e.to_string(),
                }
            };
            for (day, txs) in simulator.enumerate() {
                for lt in &txs {
                    serde_json::to_writer(&mut tx_out, &lt.tx).map_err(|e| werr(path)(e.into()))?;
                    tx_out.write_all(b"\n").map_err(werr(path))?;
                    serde_json::to_writer(&mut label_out, &lt.label).map_err(|e| werr(labels_path)(e.into()))?;
                    label_out.write_all(b"\n").map_err(werr(labels_path))?;
                    summary.labels += 1;
                    summary.transactions += 1;
                    summary.frauds += lt.label.tx_fraud as u64;
                    each(lt);
                }
                on_day(day as u32);
            }
            tx_out.flush().map_err(werr(path))?;
            label_out.flush().map_err(werr(labels_path))?;
        }
    }
    Ok(summary)
}
