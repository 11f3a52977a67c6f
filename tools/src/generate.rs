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

/// How generated transactions are written: the event schema of one of the shipped topologies.
/// The simulation is the same (the handbook's); only the encoding differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Dialect {
    /// `topologies/fraud-scoring.toml`: the handbook's fields,
    /// `{"tx_id", "tx_time_ms", "customer_id", "terminal_id", "amount"}`; labels
    /// `{"tx_id", "tx_time_ms", "customer_id", "terminal_id", "tx_fraud", ...}`.
    #[default]
    Handbook,
    /// `topologies/card-payments.toml`: string ids, RFC 3339 times, integer cents, a country and
    /// fields weir does not read: `{"payment_id": "pay-3f9c...", "occurred_at":
    /// "2018-04-01T00:02:13.512Z", "card_id": "card-00042", "merchant_id": "m-00117",
    /// "amount_cents": 1250, "country": "FR", "currency": "EUR", "channel": "pos",
    /// "device": {"os": "ios"}}`; labels `{"payment_id", "is_fraud": bool, "card_id",
    /// "merchant_id", "occurred_at", "reported_at", "scenario"}`.
    Payments,
}

/// Countries of the payments dialect, by terminal: `COUNTRIES[terminal_id % 8]`.
pub const COUNTRIES: [&str; 8] = ["FR", "DE", "GB", "ES", "IT", "US", "BR", "NG"];

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

impl Dialect {
    /// The dialect whose events a topology's `[schema]` declares: `payments` for an id named
    /// `payment_id`, else `handbook`.
    pub fn of(cfg: &weir_topologies::TopologyConfig) -> Self {
        if cfg.schema.id == "payment_id" {
            Dialect::Payments
        } else {
            Dialect::Handbook
        }
    }

    /// The payments dialect's id of transaction `tx_id` (unique: a bijection of the id).
    pub fn payment_id(tx_id: u64) -> String {
        format!("pay-{:016x}", (tx_id ^ 0x5bd1_e995).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// A transaction's message key (its card) and payload.
    pub fn transaction(self, tx: &weir_simulator::Transaction) -> (String, Vec<u8>) {
        match self {
            Dialect::Handbook => (
                tx.customer_id.to_string(),
                serde_json::to_vec(tx).expect("serializable"),
            ),
            Dialect::Payments => {
                let card = format!("card-{:05}", tx.customer_id);
                let channel = ["pos", "web", "app"][(tx.tx_id % 3) as usize];
                let os = ["ios", "android"][(tx.customer_id % 2) as usize];
                let v = serde_json::json!({
                    "payment_id": Self::payment_id(tx.tx_id),
                    "occurred_at": rfc3339(tx.tx_time_ms),
                    "card_id": card,
                    "merchant_id": format!("m-{:05}", tx.terminal_id),
                    "amount_cents": (tx.amount * 100.0).round() as i64,
                    "country": COUNTRIES[(tx.terminal_id % COUNTRIES.len() as u64) as usize],
                    "currency": "EUR",
                    "channel": channel,
                    "device": {"os": os},
                });
                (card, serde_json::to_vec(&v).expect("serializable"))
            }
        }
    }

    /// A label's message key and payload.
    pub fn label(self, l: &weir_simulator::FraudLabel) -> (String, Vec<u8>) {
        match self {
            Dialect::Handbook => (l.tx_id.to_string(), serde_json::to_vec(l).expect("serializable")),
            Dialect::Payments => {
                let id = Self::payment_id(l.tx_id);
                let v = serde_json::json!({
                    "payment_id": id,
                    "is_fraud": l.tx_fraud == 1,
                    "card_id": format!("card-{:05}", l.customer_id),
                    "merchant_id": format!("m-{:05}", l.terminal_id),
                    "occurred_at": rfc3339(l.tx_time_ms),
                    "reported_at": rfc3339(l.available_at_ms),
                    "scenario": l.tx_fraud_scenario,
                });
                (id, serde_json::to_vec(&v).expect("serializable"))
            }
        }
    }
}

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
    each: impl FnMut(&LabeledTransaction),
    on_day: impl FnMut(u32),
) -> Result<GenerateSummary, GenerateError> {
    generate_as(Dialect::Handbook, sim, target, malformed, rate, each, on_day)
}

/// [`generate`], writing `dialect`'s encoding.
///
/// # Errors
/// [`GenerateError`] if the target cannot be written.
pub fn generate_as(
    dialect: Dialect,
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
                    let (key, payload) = dialect.transaction(&lt.tx);
                    producer.send(topic, Some(key.as_bytes()), &payload, Some(lt.tx.tx_time_ms))?;
                    let (lkey, label) = dialect.label(&lt.label);
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
                    tx_out.write_all(&dialect.transaction(&lt.tx).1).map_err(werr(path))?;
                    tx_out.write_all(b"\n").map_err(werr(path))?;
                    label_out
                        .write_all(&dialect.label(&lt.label).1)
                        .map_err(werr(labels_path))?;
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
