//! Kafka sinks for scores and dead letters.
//!
//! Both use an idempotent producer with `message.timeout.ms = 0` (librdkafka retries a record
//! until the broker acknowledges it, never drops it), and acknowledge each record's lineage in the
//! [`DeliveryLedger`] from the delivery report, so offsets are committed only for delivered
//! output.
//!
//! Score record: key = `tx_id` (decimal), timestamp = event time, value (JSON):
//! `{"tx_id":1,"score":0.0123,"model_version":"v1","event_time_ms":1522540800000,"partition":0,"offset":17}`.
//!
//! Dead-letter record: key and value = the original message's bytes (unchanged, possibly not
//! UTF-8); the reason and lineage in headers, as Kafka Connect's dead-letter queues do:
//! `weir.dlq.reason`, `weir.dlq.detail`, `weir.source.topic`, `weir.source.partition`,
//! `weir.source.offset`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
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
}

/// Producer context that acknowledges delivered records in the ledger.
pub struct AckContext {
    ledger: Arc<DeliveryLedger>,
    metrics: Arc<Metrics>,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<Pending>;
    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        match result {
            Ok(_) => {
                self.ledger.ack(pending.lineage);
                self.metrics.record_acked([(pending.read_at_us, pending.event_time_ms)]);
                match &pending.dead_letter_reason {
                    None => self.metrics.scores_out.inc(),
                    Some(r) => self.metrics.dead_letters.with_label_values(&[r.as_str()]).inc(),
                }
            }
            // With message.timeout.ms = 0 this is a fatal producer error: the event stays
            // unacknowledged, so its offset is never committed and it is re-read after restart.
            Err((e, _)) => tracing::error!(error = %e, lineage = ?pending.lineage, "delivery failed"),
        }
    }
}

fn producer_defaults() -> Vec<(&'static str, &'static str)> {
    vec![
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("linger.ms", "5"),
        ("batch.num.messages", "10000"),
        ("queue.buffering.max.messages", "200000"),
        ("message.timeout.ms", "0"),
    ]
}

fn ack_producer(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    ledger: Arc<DeliveryLedger>,
    metrics: Arc<Metrics>,
    what: &str,
) -> Result<ThreadedProducer<AckContext>, ConnectorError> {
    client_config(brokers, &producer_defaults(), properties)
        .create_with_context(AckContext { ledger, metrics })
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
}

impl KafkaScoreSink {
    /// Connects a score sink for `topic`; `properties` override weir's producer defaults.
    ///
    /// # Errors
    /// [`ConnectorError::Kafka`] on an invalid configuration.
    pub fn new(
        brokers: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
        ledger: Arc<DeliveryLedger>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConnectorError> {
        let producer = ack_producer(brokers, properties, ledger, metrics, "score")?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            name: format!("kafka:{topic}"),
        })
    }
}

impl ScoreSink for KafkaScoreSink {
    fn write(&self, rows: &[RowMeta], scores: &[f32], model_version: &str) -> Result<(), SinkError> {
        let mut value = Vec::with_capacity(160);
        let mut key = Vec::with_capacity(20);
        let version = serde_json::to_string(model_version).unwrap_or_default();
        for (row, score) in rows.iter().zip(scores) {
            value.clear();
            key.clear();
            // Hand-written JSON for the hot path: every field is a number except the version,
            // JSON-escaped once per batch by serde_json.
            let _ = write!(
                value,
                r#"{{"tx_id":{},"score":{},"model_version":{},"event_time_ms":{},"partition":{},"offset":{}}}"#,
                row.tx_id, score, version, row.event_time_ms, row.lineage.partition, row.lineage.offset
            );
            let _ = write!(key, "{}", row.tx_id);
            let record = BaseRecord::with_opaque_to(
                &self.topic,
                Box::new(Pending {
                    lineage: row.lineage,
                    read_at_us: row.read_at_us,
                    event_time_ms: Some(row.event_time_ms),
                    dead_letter_reason: None,
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
}

/// Writes dead letters to a Kafka topic.
pub struct KafkaDeadLetterSink {
    producer: ThreadedProducer<AckContext>,
    topic: String,
    source_topic: String,
    name: String,
}

impl KafkaDeadLetterSink {
    /// Connects a dead-letter sink for `topic`, for events read from `source_topic`.
    ///
    /// # Errors
    /// [`ConnectorError::Kafka`] on an invalid configuration.
    pub fn new(
        brokers: &str,
        topic: &str,
        source_topic: &str,
        properties: &BTreeMap<String, String>,
        ledger: Arc<DeliveryLedger>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConnectorError> {
        let producer = ack_producer(brokers, properties, ledger, metrics, "dead-letter")?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            source_topic: source_topic.to_string(),
            name: format!("kafka:{topic}"),
        })
    }
}

impl DeadLetterSink for KafkaDeadLetterSink {
    fn send(&self, letter: DeadLetter) -> Result<(), SinkError> {
        tracing::debug!(reason = %letter.reason, partition = letter.lineage.partition, offset = letter.lineage.offset, "dead letter");
        let partition = letter.lineage.partition.to_string();
        let offset = letter.lineage.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "weir.dlq.reason",
                value: Some(letter.reason.as_bytes()),
            })
            .insert(Header {
                key: "weir.dlq.detail",
                value: Some(letter.detail.as_bytes()),
            })
            .insert(Header {
                key: "weir.source.topic",
                value: Some(self.source_topic.as_bytes()),
            })
            .insert(Header {
                key: "weir.source.partition",
                value: Some(partition.as_bytes()),
            })
            .insert(Header {
                key: "weir.source.offset",
                value: Some(offset.as_bytes()),
            });
        let pending = Box::new(Pending {
            lineage: letter.lineage,
            read_at_us: letter.read_at_us,
            event_time_ms: None,
            dead_letter_reason: Some(letter.reason.clone()),
        });
        let mut record = BaseRecord::with_opaque_to(&self.topic, pending)
            .payload(letter.payload.as_slice())
            .headers(headers);
        if let Some(k) = letter.key.as_deref() {
            record = record.key(k);
        }
        send_blocking(&self.producer, record, &self.name)
    }

    fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        flush_until(&self.producer, timeout, &self.name)
    }
}
