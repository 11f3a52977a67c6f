//! Kafka sinks for scores and dead letters.
//!
//! Both use an idempotent producer with `message.timeout.ms = 0` (librdkafka retries a record
//! until the broker acknowledges it, never drops it), and acknowledge each record's lineage in the
//! [`DeliveryLedger`] from the delivery report, so offsets are committed only for delivered
//! output.
//!
//! Score record: key = the event id (its text), timestamp = event time, value (JSON):
//! `{"<id>":1,"score":0.0123,"model_version":"v1","event_time_ms":1522540800000,"partition":0,"offset":17}`.
//!
//! Dead-letter record: key, value and headers = the original message's (unchanged, possibly not
//! UTF-8; a tombstone stays a null value); then the reason and lineage in headers, as Kafka
//! Connect's dead-letter queues do: `weir.dlq.reason`, `weir.dlq.detail`, `weir.source.topic`,
//! `weir.source.partition`, `weir.source.offset`. A letter always gets written: one that would
//! not fit the producer's `message.max.bytes` (librdkafka's default 1,000,000 bytes, which
//! refuses a record before it reaches a broker) carries the first bytes of the payload that fit,
//! with `weir.dlq.truncated = true` and `weir.dlq.original_bytes`; one a broker refuses as too
//! large is sent again truncated to [`BROKER_RETRY_BYTES`]. A letter the topic refuses even so
//! is logged with its lineage and counted (`weir_dead_letters_unwritten_total`); its event stays
//! unacknowledged, so it is read again after a restart.
//!
//! A score record whose delivery fails permanently (the producer retries transient errors
//! forever, `message.timeout.ms = 0`) becomes a dead letter (`reason = "sink"`, the score record
//! as payload), so that its event is still acknowledged and its partition's commits move on.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use weir_core::{DeadLetter, DeadLetterSink, DeliveryLedger, Lineage, Metrics, RowMeta, ScoreSink, SinkError};

use super::client_config;
use crate::ConnectorError;

/// What a delivery report acknowledges.
pub struct Pending {
    lineage: Lineage,
    read_at_us: u64,
    /// Event time of a score (ms since the Unix epoch); `None` for a dead letter.
    event_time_ms: Option<i64>,
    dead_letter_reason: Option<String>,
    /// Whether this dead letter was already sent again truncated (a broker refused it as too large).
    retried: bool,
    /// When a score was handed to the producer ([`weir_core::clock::now_micros`], µs): the start
    /// of its `sink` stage; 0 for a dead letter.
    written_us: u64,
}

/// A dead letter to send again, truncated, after a broker refused it as too large.
struct Resend {
    pending: Box<Pending>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Producer context that acknowledges delivered records in the ledger, and routes records whose
/// delivery failed for good (see the module doc).
pub struct AckContext {
    ledger: Arc<DeliveryLedger>,
    metrics: Arc<Metrics>,
    /// Score sink: where failed score records go.
    fallback: OnceLock<Arc<dyn DeadLetterSink>>,
    /// Dead-letter sink: failed letters to send again truncated.
    resend: Option<crossbeam_channel::Sender<Resend>>,
}

fn too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
    )
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<Pending>;
    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        match result {
            Ok(_) => {
                self.ledger.ack(pending.lineage);
                self.metrics.record_acked([(pending.read_at_us, pending.event_time_ms)]);
                if pending.written_us > 0 {
                    self.metrics.record_stage(
                        weir_core::metrics::Stage::Sink,
                        [weir_core::clock::micros_since(pending.written_us)],
                    );
                }
                match &pending.dead_letter_reason {
                    None => self.metrics.scores_out.inc(),
                    Some(r) => self.metrics.dead_letters.with_label_values(&[r.as_str()]).inc(),
                }
            }
            // With message.timeout.ms = 0 a failure is permanent (transient ones are retried).
            Err((e, msg)) => match (&pending.dead_letter_reason, &self.resend) {
                (None, _) => {
                    let letter = DeadLetter {
                        lineage: pending.lineage,
                        reason: "sink".into(),
                        detail: format!("score record not delivered: {e}"),
                        key: msg.key().map(<[u8]>::to_vec),
                        payload: msg.payload().map(<[u8]>::to_vec),
                        headers: Vec::new(),
                        read_at_us: pending.read_at_us,
                    };
                    match self.fallback.get() {
                        Some(dlq) => {
                            tracing::warn!(error = %e, lineage = ?pending.lineage, "score delivery failed; dead-lettering it");
                            if let Err(e) = dlq.send(letter) {
                                tracing::error!(error = %e, lineage = ?pending.lineage, "dead-letter sink rejected a failed score; its event stays unacknowledged");
                            }
                        }
                        None => {
                            tracing::error!(error = %e, lineage = ?pending.lineage, "score delivery failed; its event stays unacknowledged")
                        }
                    }
                }
                (Some(_), Some(resend)) if too_large(e) && !pending.retried => {
                    let headers = super::owned_headers(msg);
                    let _ = resend.send(Resend {
                        pending,
                        key: msg.key().map(<[u8]>::to_vec),
                        payload: msg.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                }
                (Some(reason), _) => {
                    self.metrics.dead_letters_unwritten.inc();
                    tracing::error!(
                        error = %e,
                        partition = pending.lineage.partition,
                        offset = pending.lineage.offset,
                        reason = %reason,
                        "the dead-letter topic refused a letter: its event stays uncommitted and is read again after a restart"
                    );
                }
            },
        }
    }
}

/// The score and dead-letter producers' default `linger.ms`; the benchmarks' bare producers use
/// it too.
pub const DEFAULT_LINGER_MS: &str = "1";

fn producer_defaults() -> Vec<(&'static str, &'static str)> {
    vec![
        ("enable.idempotence", "true"),
        ("acks", "all"),
        // A micro-batch is written at once: the producer need not wait for more (5 ms of linger
        // were 5 ms of every score's latency; 1 ms still batches what a micro-batch sends).
        ("linger.ms", DEFAULT_LINGER_MS),
        ("batch.num.messages", "10000"),
        ("queue.buffering.max.messages", "200000"),
        ("message.timeout.ms", "0"),
    ]
}

/// librdkafka producer properties that would break at-least-once delivery, and why: weir refuses
/// them (`weir check` and start-up name the field).
pub fn unsafe_producer_property(key: &str, value: &str) -> Option<&'static str> {
    let v = value.trim().to_ascii_lowercase();
    match key {
        "enable.idempotence" if v != "true" => Some("weir needs an idempotent producer (enable.idempotence = true)"),
        "acks" | "request.required.acks" if v != "all" && v != "-1" => {
            Some("weir acknowledges an event only once every in-sync replica has its output (acks = all)")
        }
        "message.timeout.ms" | "delivery.timeout.ms" if v != "0" => Some(
            "a delivery timeout drops records the broker did not acknowledge in time; weir retries until it does (0)",
        ),
        "bootstrap.servers" | "metadata.broker.list" => Some("set the brokers with source.brokers or --brokers"),
        _ => None,
    }
}

fn ack_producer(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    ctx: AckContext,
    what: &str,
) -> Result<ThreadedProducer<AckContext>, ConnectorError> {
    if let Some((k, why)) = properties
        .iter()
        .find_map(|(k, v)| unsafe_producer_property(k, v).map(|why| (k, why)))
    {
        return Err(ConnectorError::Config {
            context: format!("{what} producer property `{k}`"),
            detail: why.to_string(),
        });
    }
    client_config(brokers, &producer_defaults(), properties)
        .create_with_context(ctx)
        .map_err(ConnectorError::kafka(format!("create {what} producer")))
}

fn send_blocking(
    producer: &ThreadedProducer<AckContext>,
    mut record: BaseRecord<'_, [u8], [u8], Box<Pending>>,
    sink: &str,
) -> Result<(), SinkError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_micros(500));
            }
            Err((e, _)) => {
                return Err(SinkError::Enqueue {
                    sink: sink.to_string(),
                    detail: e.to_string(),
                })
            }
        }
    }
}

fn flush_until(producer: &ThreadedProducer<AckContext>, timeout: Duration, sink: &str) -> Result<(), SinkError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match producer.flush(left.min(Duration::from_millis(500))) {
            Ok(()) => return Ok(()),
            Err(_) if Instant::now() < deadline => continue,
            Err(_) => {
                return Err(SinkError::FlushTimeout {
                    sink: sink.to_string(),
                    pending: producer.in_flight_count().max(0) as usize,
                    timeout,
                })
            }
        }
    }
}

/// Writes scores to a Kafka topic.
pub struct KafkaScoreSink {
    producer: ThreadedProducer<AckContext>,
    topic: String,
    name: String,
    /// `{"<id name>":`, JSON-escaped once.
    id_prefix: String,
}

impl KafkaScoreSink {
    /// Connects a score sink for `topic`, writing ids as `id` says; `properties` override
    /// weir's producer defaults.
    ///
    /// # Errors
    /// [`ConnectorError::Kafka`] on an invalid configuration.
    pub fn new(
        brokers: &str,
        topic: &str,
        id: &crate::IdColumn,
        properties: &BTreeMap<String, String>,
        ledger: Arc<DeliveryLedger>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConnectorError> {
        let ctx = AckContext {
            ledger,
            metrics,
            fallback: OnceLock::new(),
            resend: None,
        };
        let producer = ack_producer(brokers, properties, ctx, "score")?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            name: format!("kafka:{topic}"),
            id_prefix: format!("{{{}:", serde_json::to_string(&id.name).unwrap_or_default()),
        })
    }
}

impl ScoreSink for KafkaScoreSink {
    fn write(&self, rows: &[RowMeta], scores: &[f32], model_version: &str) -> Result<(), SinkError> {
        let mut value = Vec::with_capacity(160);
        let mut key = Vec::with_capacity(20);
        let version = serde_json::to_string(model_version).unwrap_or_default();
        let written_us = weir_core::clock::now_micros();
        for (row, score) in rows.iter().zip(scores) {
            value.clear();
            key.clear();
            // Hand-written JSON for the hot path: every field is a number except the version,
            // JSON-escaped once per batch by serde_json.
            value.extend_from_slice(self.id_prefix.as_bytes());
            match &row.id {
                weir_core::EventId::Int(v) => {
                    let _ = write!(value, "{v}");
                }
                weir_core::EventId::Str(s) => {
                    let _ = serde_json::to_writer(&mut value, s);
                }
            }
            let _ = write!(
                value,
                r#","score":{},"model_version":{},"event_time_ms":{},"partition":{},"offset":{}}}"#,
                score, version, row.event_time_ms, row.lineage.partition, row.lineage.offset
            );
            let _ = write!(key, "{}", row.id);
            let record = BaseRecord::with_opaque_to(
                &self.topic,
                Box::new(Pending {
                    lineage: row.lineage,
                    read_at_us: row.read_at_us,
                    event_time_ms: Some(row.event_time_ms),
                    dead_letter_reason: None,
                    retried: false,
                    written_us,
                }),
            )
            .key(key.as_slice())
            .payload(value.as_slice())
            .timestamp(row.event_time_ms);
            send_blocking(&self.producer, record, &self.name)?;
        }
        Ok(())
    }

    fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        flush_until(&self.producer, timeout, &self.name)
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn set_dead_letters(&self, dead_letters: Arc<dyn DeadLetterSink>) {
        let _ = self.producer.context().fallback.set(dead_letters);
    }
}

/// Payload bytes kept when a broker refused a dead letter as too large and it is sent again.
pub const BROKER_RETRY_BYTES: usize = 16 * 1024;

/// Room left in a record for librdkafka's framing beyond key, value and headers, bytes.
const RECORD_OVERHEAD: usize = 1024;

/// Writes dead letters to a Kafka topic.
pub struct KafkaDeadLetterSink {
    producer: Arc<ThreadedProducer<AckContext>>,
    topic: String,
    source_topic: String,
    name: String,
    /// Largest record the producer accepts (`message.max.bytes`), bytes.
    max_record_bytes: usize,
}

impl KafkaDeadLetterSink {
    /// Connects a dead-letter sink for `topic`, for events read from `source_topic`;
    /// `properties` (the topology's `dead_letter.properties`) override weir's producer defaults.
    ///
    /// # Errors
    /// [`ConnectorError::Kafka`] on an invalid configuration, [`ConnectorError::Config`] for a
    /// property that would break at-least-once delivery.
    pub fn new(
        brokers: &str,
        topic: &str,
        source_topic: &str,
        properties: &BTreeMap<String, String>,
        ledger: Arc<DeliveryLedger>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConnectorError> {
        let (tx, rx) = crossbeam_channel::unbounded::<Resend>();
        let ctx = AckContext {
            ledger,
            metrics: metrics.clone(),
            fallback: OnceLock::new(),
            resend: Some(tx),
        };
        let producer = Arc::new(ack_producer(brokers, properties, ctx, "dead-letter")?);
        let max_record_bytes = properties
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1_000_000usize);
        // Letters a broker refused as too large, sent again truncated. The thread ends when the
        // producer (which owns the channel's sender) is dropped.
        let weak: Weak<ThreadedProducer<AckContext>> = Arc::downgrade(&producer);
        let topic_name = topic.to_string();
        std::thread::Builder::new()
            .name("weir-dlq-resend".into())
            .spawn(move || {
                for mut r in rx.iter() {
                    let Some(producer) = weak.upgrade() else { return };
                    r.pending.retried = true;
                    metrics.dead_letters_truncated.inc();
                    let original = r.payload.as_ref().map_or(0, Vec::len);
                    let payload = r
                        .payload
                        .as_ref()
                        .map(|p| p[..p.len().min(BROKER_RETRY_BYTES)].to_vec());
                    r.headers
                        .retain(|(k, _)| k != "weir.dlq.truncated" && k != "weir.dlq.original_bytes");
                    let headers = with_truncation(owned_headers(&r.headers), original);
                    let mut record = BaseRecord::with_opaque_to(&topic_name, r.pending).headers(headers);
                    if let Some(p) = payload.as_deref() {
                        record = record.payload(p);
                    }
                    if let Some(k) = r.key.as_deref() {
                        record = record.key(k);
                    }
                    if let Err(e) = send_blocking(&producer, record, &topic_name) {
                        tracing::error!(error = %e, "dead letter could not be sent again truncated");
                    }
                }
            })
            .map_err(|e| ConnectorError::File {
                context: "start the dead-letter resend thread".into(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            source_topic: source_topic.to_string(),
            name: format!("kafka:{topic}"),
            max_record_bytes,
        })
    }
}

fn owned_headers(headers: &[(String, Option<Vec<u8>>)]) -> OwnedHeaders {
    headers
        .iter()
        .fold(OwnedHeaders::new_with_capacity(headers.len() + 7), |h, (k, v)| {
            h.insert(Header {
                key: k.as_str(),
                value: v.as_deref(),
            })
        })
}

fn with_truncation(headers: OwnedHeaders, original_bytes: usize) -> OwnedHeaders {
    let n = original_bytes.to_string();
    headers
        .insert(Header {
            key: "weir.dlq.truncated",
            value: Some(&b"true"[..]),
        })
        .insert(Header {
            key: "weir.dlq.original_bytes",
            value: Some(n.as_bytes()),
        })
}

impl DeadLetterSink for KafkaDeadLetterSink {
    fn send(&self, letter: DeadLetter) -> Result<(), SinkError> {
        tracing::debug!(reason = %letter.reason, partition = letter.lineage.partition, offset = letter.lineage.offset, "dead letter");
        let partition = letter.lineage.partition.to_string();
        let offset = letter.lineage.offset.to_string();
        let mut headers = owned_headers(&letter.headers);
        let weir_headers: [(&str, &[u8]); 5] = [
            ("weir.dlq.reason", letter.reason.as_bytes()),
            ("weir.dlq.detail", letter.detail.as_bytes()),
            ("weir.source.topic", self.source_topic.as_bytes()),
            ("weir.source.partition", partition.as_bytes()),
            ("weir.source.offset", offset.as_bytes()),
        ];
        for (key, value) in weir_headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        // Fit the record under the producer's limit: keep the payload's first bytes if needed.
        let header_bytes: usize = letter
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 8)
            .sum::<usize>()
            + weir_headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
            + 64;
        let key_bytes = letter.key.as_ref().map_or(0, Vec::len);
        let room = self
            .max_record_bytes
            .saturating_sub(header_bytes + key_bytes + RECORD_OVERHEAD);
        let original = letter.payload.as_ref().map_or(0, Vec::len);
        let mut payload = letter.payload.as_deref();
        if original > room {
            headers = with_truncation(headers, original);
            payload = payload.map(|p| &p[..room]);
            self.producer.context().metrics.dead_letters_truncated.inc();
            tracing::warn!(
                partition = letter.lineage.partition,
                offset = letter.lineage.offset,
                original_bytes = original,
                kept_bytes = room,
                "dead letter over the record size limit: its payload is truncated (weir.dlq.truncated)"
            );
        }
        let pending = Box::new(Pending {
            lineage: letter.lineage,
            read_at_us: letter.read_at_us,
            event_time_ms: None,
            dead_letter_reason: Some(letter.reason.clone()),
            retried: false,
            written_us: 0,
        });
        let mut record = BaseRecord::with_opaque_to(&self.topic, pending).headers(headers);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(k) = letter.key.as_deref() {
            record = record.key(k);
        }
        send_blocking(&self.producer, record, &self.name)
    }

    fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        flush_until(&self.producer, timeout, &self.name)
    }
}
