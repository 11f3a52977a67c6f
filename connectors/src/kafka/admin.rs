//! Producing, reading and describing topics: for the generator, the demo's summary and tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::client_config;
use crate::ConnectorError;

/// Counts failed deliveries of a [`BulkProducer`].
#[derive(Default)]
pub struct CountingContext {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Release);
            }
            Err((e, _)) => {
                self.first_error.lock().unwrap().get_or_insert_with(|| e.to_string());
                self.failed.fetch_add(1, Ordering::Release);
            }
        }
    }
}

/// A producer for bulk loads (the transaction generator, load tests): idempotent, batched
/// (`linger.ms=20`), blocking when its local queue is full instead of failing.
pub struct BulkProducer {
    producer: ThreadedProducer<CountingContext>,
    sent: AtomicU64,
}

impl BulkProducer {
    /// Connects to `brokers`; `properties` override weir's defaults.
    ///
    /// # Errors
    /// [`ConnectorError::Kafka`] on an invalid configuration.
    pub fn new(brokers: &str, properties: &BTreeMap<String, String>) -> Result<Self, ConnectorError> {
        let producer = client_config(
            brokers,
            &[
                ("enable.idempotence", "true"),
                ("linger.ms", "20"),
                ("batch.num.messages", "10000"),
                ("queue.buffering.max.messages", "500000"),
                ("message.timeout.ms", "0"),
            ],
            properties,
        )
        .create_with_context(CountingContext::default())
        .map_err(ConnectorError::kafka("create producer"))?;
        Ok(Self {
            producer,
            sent: AtomicU64::new(0),
        })
    }

    /// Enqueues one record without headers ([`BulkProducer::send_record`]); waits while the
    /// local queue is full.
    ///
    /// # Errors
    /// [`ConnectorError::Kafka`] for any error other than a full queue.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        timestamp_ms: Option<i64>,
    ) -> Result<(), ConnectorError> {
        self.send_record(topic, key, Some(payload), &[], timestamp_ms)
    }

    /// Enqueues one record with an optional (null: tombstone) payload and headers; waits while
    /// the local queue is full.
    ///
    /// # Errors
    /// [`ConnectorError::Kafka`] for any error other than a full queue.
    pub fn send_record(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        timestamp_ms: Option<i64>,
    ) -> Result<(), ConnectorError> {
        use rdkafka::message::{Header, OwnedHeaders};
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if !headers.is_empty() {
            let hs = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
                h.insert(Header { key, value: *value })
            });
            record = record.headers(hs);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(ts) = timestamp_ms {
            record = record.timestamp(ts);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    return Err(ConnectorError::Kafka {
                        context: format!("produce to `{topic}`"),
                        source: e,
                    })
                }
            }
        }
    }

    /// Waits until every record sent has its delivery report (delivered or failed).
    ///
    /// # Errors
    /// [`ConnectorError::Kafka`] if the flush times out; [`ConnectorError::File`] if any
    /// delivery failed (with the count and the first error) or a report is missing.
    pub fn flush(&self, timeout: Duration) -> Result<(), ConnectorError> {
        let deadline = Instant::now() + timeout;
        self.producer
            .flush(timeout)
            .map_err(ConnectorError::kafka("flush producer"))?;
        let ctx = self.producer.context();
        // The queue can be empty while the last reports are still being served: count them.
        let sent = self.sent.load(Ordering::Relaxed);
        while ctx.delivered.load(Ordering::Acquire) + ctx.failed.load(Ordering::Acquire) < sent {
            if Instant::now() >= deadline {
                return Err(ConnectorError::File {
                    context: "produce".into(),
                    detail: format!(
                        "{} of {sent} records have no delivery report after {timeout:?}",
                        sent - ctx.delivered.load(Ordering::Acquire) - ctx.failed.load(Ordering::Acquire)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let failed = ctx.failed.load(Ordering::Acquire);
        if failed > 0 {
            return Err(ConnectorError::File {
                context: "produce".into(),
                detail: format!(
                    "{failed} records were not delivered; first error: {}",
                    ctx.first_error.lock().unwrap().clone().unwrap_or_default()
                ),
            });
        }
        Ok(())
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumedRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Payload bytes.
    pub payload: Option<Vec<u8>>,
    /// Message timestamp, ms since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ConsumedRecord {
    /// The value of header `key`, if present.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_slice())
    }
}

fn plain_consumer(brokers: &str) -> Result<BaseConsumer, ConnectorError> {
    client_config(
        brokers,
        &[
            ("group.id", "weir-admin-reader"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
            ("fetch.wait.max.ms", "10"),
        ],
        &BTreeMap::new(),
    )
    .create()
    .map_err(ConnectorError::kafka("create consumer"))
}

/// The partition ids of `topic`.
///
/// # Errors
/// [`ConnectorError::TopicNotFound`] if the topic has no partitions.
pub fn partitions(brokers: &str, topic: &str, timeout: Duration) -> Result<Vec<i32>, ConnectorError> {
    let consumer = plain_consumer(brokers)?;
    topic_partitions(&consumer, topic, timeout)
}

pub(crate) fn topic_partitions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, ConnectorError> {
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(ConnectorError::kafka(format!("metadata of `{topic}`")))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if parts.is_empty() {
        return Err(ConnectorError::TopicNotFound(topic.to_string()));
    }
    Ok(parts)
}

/// `(partition, low, high)` watermarks of every partition of `topic`.
///
/// # Errors
/// [`ConnectorError`] if the topic is unknown or the broker does not answer within `timeout`.
pub fn watermarks(brokers: &str, topic: &str, timeout: Duration) -> Result<Vec<(i32, i64, i64)>, ConnectorError> {
    let consumer = plain_consumer(brokers)?;
    topic_partitions(&consumer, topic, timeout)?
        .into_iter()
        .map(|p| {
            let (lo, hi) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(ConnectorError::kafka(format!("watermarks of `{topic}`/{p}")))?;
            Ok((p, lo, hi))
        })
        .collect()
}

/// For every partition of `topic`, the first offset whose message timestamp is at or after
/// `timestamp_ms` (ms since the Unix epoch), by Kafka's ListOffsets (KIP-79); the high
/// watermark where no message is that late (the end of a range past the last message). Within a
/// partition this is exact when timestamps do not decrease along offsets (producers stamping event
/// time in order, or `LogAppendTime`).
///
/// # Errors
/// [`ConnectorError`] if the topic is unknown, the broker cannot look up timestamps (librdkafka's
/// mock cluster cannot), or it does not answer within `timeout`.
pub fn offsets_for_time(
    brokers: &str,
    topic: &str,
    timestamp_ms: i64,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, ConnectorError> {
    let consumer = plain_consumer(brokers)?;
    let mut q = TopicPartitionList::new();
    let parts = topic_partitions(&consumer, topic, timeout)?;
    for p in &parts {
        q.add_partition_offset(topic, *p, Offset::Offset(timestamp_ms))
            .map_err(ConnectorError::kafka("offsets for times"))?;
    }
    let lookup_failed = |detail: String| {
        ConnectorError::OffsetLookup {
        context: format!("look up offsets of `{topic}` by timestamp {timestamp_ms} ms"),
        detail: format!("{detail} (the broker must support ListOffsets by timestamp; librdkafka's mock cluster does not: give offsets instead)"),
    }
    };
    let found = consumer
        .offsets_for_times(q, timeout)
        .map_err(|e| lookup_failed(e.to_string()))?;
    let mut out = BTreeMap::new();
    let mut at_end = BTreeMap::new();
    for e in found.elements() {
        if let Err(err) = e.error() {
            return Err(lookup_failed(format!("partition {}: {err}", e.partition())));
        }
        let (lo, hi) = consumer
            .fetch_watermarks(topic, e.partition(), timeout)
            .map_err(ConnectorError::kafka(format!(
                "watermarks of `{topic}`/{}",
                e.partition()
            )))?;
        let o = match e.offset() {
            Offset::Offset(o) if o >= 0 => o.clamp(lo, hi),
            Offset::End | Offset::Offset(_) => hi,
            other => {
                return Err(lookup_failed(format!(
                    "partition {}: unexpected answer {other:?}",
                    e.partition()
                )))
            }
        };
        out.insert(e.partition(), o);
        if o == hi && hi > lo {
            at_end.insert(e.partition(), hi - 1);
        }
    }
    // "No message that late" is checked against the last message: a broker that cannot look up
    // timestamps (librdkafka's mock cluster) answers with the end offset for any time.
    drop(consumer);
    if let Some((p, ts)) = timestamps_at(brokers, topic, &at_end, timeout)?
        .into_iter()
        .find(|&(_, ts)| ts >= timestamp_ms)
    {
        return Err(lookup_failed(format!(
            "partition {p}: the broker answered \"no message at or after the time\", but its last message has timestamp {ts}"
        )));
    }
    Ok(out)
}

/// The message timestamp (ms) at each `partition -> offset` of `topic`; partitions whose offset
/// is at or past their end are left out.
///
/// # Errors
/// [`ConnectorError`] if the topic is unknown or reading takes longer than `timeout`.
pub fn timestamps_at(
    brokers: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, ConnectorError> {
    let consumer = plain_consumer(brokers)?;
    let mut ranges = BTreeMap::new();
    for (&p, &o) in offsets {
        let (_, hi) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(ConnectorError::kafka(format!("watermarks of `{topic}`/{p}")))?;
        if o < hi {
            ranges.insert(p, (o, o + 1));
        }
    }
    Ok(read_ranges(consumer, topic, &ranges, timeout)?
        .into_iter()
        .filter_map(|r| Some((r.partition, r.timestamp_ms?)))
        .collect())
}

/// Reads every record of `topic` present when called (up to each partition's high watermark).
///
/// # Errors
/// [`ConnectorError`] if the topic is unknown or reading takes longer than `timeout`.
pub fn read_topic(brokers: &str, topic: &str, timeout: Duration) -> Result<Vec<ConsumedRecord>, ConnectorError> {
    let consumer = plain_consumer(brokers)?;
    let mut ranges = BTreeMap::new();
    for p in topic_partitions(&consumer, topic, timeout)? {
        let (lo, hi) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(ConnectorError::kafka(format!("watermarks of `{topic}`/{p}")))?;
        if hi > lo {
            ranges.insert(p, (lo, hi));
        }
    }
    read_ranges(consumer, topic, &ranges, timeout)
}

/// Reads the records of `topic` in `partition -> [start, stop)` with `consumer` (assigned here).
fn read_ranges(
    consumer: BaseConsumer,
    topic: &str,
    ranges: &BTreeMap<i32, (i64, i64)>,
    timeout: Duration,
) -> Result<Vec<ConsumedRecord>, ConnectorError> {
    let deadline = Instant::now() + timeout;
    let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for (&p, &(start, stop)) in ranges {
        if stop > start {
            remaining.insert(p, stop);
            tpl.add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(ConnectorError::kafka("assign"))?;
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(ConnectorError::kafka("assign"))?;
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            return Err(ConnectorError::File {
                context: format!("read topic `{topic}`"),
                detail: format!("timed out after {timeout:?} with partitions {remaining:?} unfinished"),
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                remaining.remove(&p);
            }
            Some(Err(e)) => tracing::debug!(error = %e, "read_topic poll"),
            Some(Ok(m)) => {
                let p = m.partition();
                if let Some(&hi) = remaining.get(&p) {
                    if m.offset() < hi {
                        out.push(ConsumedRecord {
                            partition: p,
                            offset: m.offset(),
                            key: m.key().map(<[u8]>::to_vec),
                            payload: m.payload().map(<[u8]>::to_vec),
                            timestamp_ms: m.timestamp().to_millis(),
                            headers: m
                                .headers()
                                .map(|h| {
                                    h.iter()
                                        .map(|x| (x.key.to_string(), x.value.map(<[u8]>::to_vec).unwrap_or_default()))
                                        .collect()
                                })
                                .unwrap_or_default(),
                        });
                    }
                    if m.offset() + 1 >= hi {
                        remaining.remove(&p);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The committed offset of `group` for every partition of `topic` (`None`: nothing committed).
///
/// # Errors
/// [`ConnectorError`] if the topic is unknown or the broker does not answer within `timeout`.
pub fn committed_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, Option<i64>)>, ConnectorError> {
    let consumer: BaseConsumer = client_config(
        brokers,
        &[("group.id", group), ("enable.auto.commit", "false")],
        &BTreeMap::new(),
    )
    .create()
    .map_err(ConnectorError::kafka("create consumer"))?;
    let mut tpl = TopicPartitionList::new();
    for p in topic_partitions(&consumer, topic, timeout)? {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(ConnectorError::kafka(format!("committed offsets of `{group}`")))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                },
            )
        })
        .collect())
}

/// Creates `topics` (`(name, partitions)`, replication 1) on a real broker with Kafka's
/// CreateTopics API, kept forever (`retention.ms = -1`: the simulated data is from 2018, which
/// the default retention of 7 days by message timestamp would delete). Topics that exist already
/// are left as they are (their partition counts included).
///
/// # Errors
/// [`ConnectorError::Kafka`] if the broker refuses a topic or does not answer within `timeout`.
pub fn create_topics(brokers: &str, topics: &[(&str, i32)], timeout: Duration) -> Result<(), ConnectorError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, &[], &BTreeMap::new())
        .create()
        .map_err(ConnectorError::kafka("create admin client"))?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, parts)| NewTopic::new(name, *parts, TopicReplication::Fixed(1)).set("retention.ms", "-1"))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    // librdkafka completes the future on its own thread: poll it with a no-op waker.
    let mut fut = std::pin::pin!(admin.create_topics(&new, &opts));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let deadline = Instant::now() + timeout;
    let results = loop {
        if let std::task::Poll::Ready(r) = std::future::Future::poll(fut.as_mut(), &mut cx) {
            break r.map_err(ConnectorError::kafka("create topics"))?;
        }
        if Instant::now() >= deadline {
            return Err(ConnectorError::Kafka {
                context: format!("create topics on {brokers}: no answer within {timeout:?}"),
                source: KafkaError::AdminOp(RDKafkaErrorCode::RequestTimedOut),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    for r in results {
        if let Err((name, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(ConnectorError::Kafka {
                    context: format!("create topic `{name}`"),
                    source: KafkaError::AdminOp(code),
                });
            }
        }
    }
    Ok(())
}
