//! The Kafka source: a timely operator that reads one topic.
//!
//! **Live** (`bounded = false`, `commit = true`): offsets are committed to the consumer group
//! `group_id` only from the [`DeliveryLedger`]: the position after the contiguous run of events
//! whose scores or dead letters were acknowledged by a sink (at-least-once, no gaps). Commits
//! happen every `commit_interval`, before partitions are revoked, and at shutdown after in-flight
//! events drained. Worker `i` of `n` takes the partitions at positions `i, i + n, ...` directly and
//! never rebalances: the feature store must see every partition of the topic, and a rebalance
//! would hand a partition to a worker that reads again, from the last commit, events the feature
//! store already counted. (The group is used for its commits only; there is no subscribing
//! mode.) `start_offsets` can start partitions before the commit (a restart replaying history,
//! see `commit_floor`).
//!
//! **Bounded** (`bounded = true`): partitions are assigned directly (worker `i` of `n` takes the
//! partitions at positions `i, i + n, ...` of the sorted partition list), read from the start
//! position up to the high watermark seen at start, and nothing is committed (a bounded run never
//! moves the live group). When every partition reached its stop offset the operator drops its
//! capability and the dataflow completes.
//!
//! **Completion**: a finished source calls [`FlowControl::source_finished`] and keeps its consumer
//! until its dataflow is dropped; callers step their workers until every source finished, so no
//! worker leaves the consumer group while another is still committing.
//!
//! **Partition queues**: every assigned partition gets its own librdkafka queue, so the operator chooses which partitions it reads without pausing
//! them (a pause drops what librdkafka prefetched, and a resume waits up to a second for the
//! broker thread's next round). librdkafka stops fetching a partition once its queue holds
//! `queued.max.messages.kbytes` (4 MiB by default). The main queue is still polled, for callbacks.
//!
//! **Backpressure**: before reading, the operator checks [`FlowControl::should_pause`] and
//! whether its partitions have [`FlowControl::max_unacked`] events read and not yet acknowledged
//! by a sink (a sink that stopped acknowledging must not grow the ledger without bound); while either
//! holds, the operator stops reading its partition queues (librdkafka stops fetching once they
//! are full, and keeps what it fetched), so lag grows instead of memory. An episode lasting
//! `pause_after` (an episode ends after 20 ms without pressure) counts as a pause. A message
//! returned while pausing is still emitted, never dropped.
//!
//! **Watermark alignment** (as Flink's split alignment): the rows in flight mostly wait in the
//! feature store for the watermark, which only the partitions holding it back can advance. Once
//! half of the in-flight limit is reached ([`FlowControl::should_align`]), the operator reads only
//! the partitions at the process-wide watermark (the laggard may be another worker's: then this
//! worker reads none) and leaves the others in their queues. The partitions ahead therefore hold
//! at most half the limit, and the laggards' reads (released as the watermark passes them) have
//! the other half, so the limit itself does not stop the reads the watermark waits for. A worker
//! that has not published its watermark yet holds everything back ([`WatermarkBoard`]). Below
//! the threshold each worker reads at most its share of what is left below it
//! ([`FlowControl::read_budget`]), so that one large poll cannot fill the laggards' half.
//!
//! **Stall escape**: a partition held back by backpressure or alignment does not turn idle (it
//! has unread messages), unless the pipeline stalls: if, despite alignment, the rows in flight
//! wait for a watermark that only an unread partition can advance (e.g. more partitions, times
//! `max_poll_records`, than half the limit), then after 30 s without any event leaving the
//! pipeline (a busy feature store can take seconds over a large backlog, which must not count),
//! silent partitions turn idle again (logged as a warning), and events read afterwards from the
//! laggard can be late (processed at the watermark; see the feature store). Raise
//! `max_in_flight_rows` to avoid it.
//!
//! **Ranges** (`ranges = Some(..)`, a backfill): as bounded, but each partition is read over an
//! explicit offset range `[start, stop)` resolved beforehand (e.g. from timestamps).
//!
//! **Shutdown** (SIGINT/SIGTERM): the source stops reading and freezes its watermark at its
//! capability's time, which it reports through [`FlowControl::freeze_at`]. Results at or after
//! the process's cutoff may miss events never read, so the topology does not deliver them; in
//! live mode the source waits (up to `drain_timeout`) until every event before the cutoff was
//! acknowledged, commits, and only then drops its capability.
//!
//! **Side input** (`commit = false`): partitions assigned directly as in bounded mode, read
//! without a stop offset and without a group (every process reads the whole topic). A side
//! input that commits nothing (labels) is not held back by backpressure: the main events in
//! flight may be waiting for its watermark, which only reading it advances.
//!
//! **Time**: one event time per message, from where [`KafkaSourceConfig::event_time`] says (a
//! payload field, or the Kafka message timestamp): the watermark follows it and
//! [`SourceEvent::event_time_ms`] carries it to the windows, so that the two never disagree.
//! Timely timestamps are ms since the Unix epoch. The operator's capability follows a watermark:
//! per partition, the largest event time seen minus `allowed_lateness_ms`; partitions that
//! finished their range, or reached their end (partition EOF) and then stayed silent for
//! `idle_timeout`, do not count (as Flink's `withIdleness`, but a partition with unread messages
//! never turns idle, except under backpressure; silence after a shutdown request does not count),
//! and the minimum is taken over every worker of the process through a [`WatermarkBoard`], so an
//! idle worker does not hold the others back. When no partition counts, everything read is
//! complete (largest seen + 1). Records are emitted at the capability's time and carry their
//! processing time ([`processing_time`]): their event time, raised to their partition's watermark
//! when behind it (a **late** event, counted in `weir_source_late_events_total`). That raise
//! depends only on what came before in the partition, so every run that reads the partition
//! (live, restarted, backfill) processes a late event at the same time. A message whose event
//! time cannot be read (a malformed payload, which its decoder dead-letters) moves no watermark.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, StreamVec};
use weir_core::{clock, DeliveryLedger, FlowControl, Lineage, Metrics, SourceEvent};

use super::admin::topic_partitions;
use super::client_config;
use crate::ConnectorError;

/// Where a partition starts when this process first reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The group's committed offset (falling back to `auto.offset.reset`, default earliest).
    Committed,
    /// The partition's first offset.
    Earliest,
    /// The partition's end (only new messages).
    Latest,
    /// The first offset whose timestamp is at or after this time, ms since the Unix epoch
    /// (Kafka's ListOffsets by timestamp; not supported by the embedded mock broker).
    Timestamp(i64),
}

/// Configuration of a Kafka source.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Topic to read.
    pub topic: String,
    /// Consumer group id.
    pub group_id: String,
    /// Start position for partitions this process reads for the first time.
    pub start: StartPosition,
    /// Read up to the high watermarks seen at start, then complete (no commits).
    pub bounded: bool,
    /// Explicit offset ranges to read, `partition -> [start, stop)` (a backfill); implies
    /// `bounded` and overrides `start`. Partitions not listed are not read.
    pub ranges: Option<Arc<BTreeMap<i32, (i64, i64)>>>,
    /// For a side input: the main topic whose watermark this source follows while it has read
    /// nothing and expects nothing (see [`WatermarkBoard`]).
    pub follows: Option<String>,
    /// Where listed partitions start reading, overriding `start` (a live restart
    /// replaying retained history into the feature store: see `weir_runtime::recovery`).
    pub start_offsets: Option<Arc<BTreeMap<i32, i64>>>,
    /// Offsets are never committed at or below these positions, `partition -> offset` (the
    /// group's commits when a live restart began replaying before them, so that a crash during
    /// the replay does not move the group back).
    pub commit_floor: Option<Arc<BTreeMap<i32, i64>>>,
    /// Track offsets in the ledger and commit them (live mode). `false` for side inputs such as
    /// fraud labels, which no sink acknowledges.
    pub commit: bool,
    /// A partition without a message for this long stops holding the watermark back (as Flink's
    /// `withIdleness`); when every partition is idle, everything read so far counts as complete.
    pub idle_timeout: Duration,
    /// Most messages read per operator activation (keeps a worker responsive).
    pub max_poll_records: usize,
    /// Interval between offset commits (live mode).
    pub commit_interval: Duration,
    /// How long a backpressure episode must last to count as a pause. Reading stops at once
    /// either way: librdkafka stops fetching once a partition's queue
    /// (`queued.max.messages.kbytes`) is full, and keeps what it prefetched.
    pub pause_after: Duration,
    /// Watermark lag behind the largest event time seen, ms.
    pub allowed_lateness_ms: i64,
    /// Where each message's event time comes from (the watermark's and the windows' one clock).
    pub event_time: EventTime,
    /// Longest wait, at shutdown, for in-flight events to be acknowledged before the final commit.
    pub drain_timeout: Duration,
    /// librdkafka consumer properties overriding weir's defaults.
    pub properties: BTreeMap<String, String>,
}

/// Extracts a message's event time from its payload: `(payload, message timestamp ms) -> event
/// time ms`, `None` for a message whose time cannot be used (unparseable, missing, or one its
/// decoder will dead-letter, e.g. too far in the future). Such a message moves no watermark.
pub type PayloadTime = Arc<dyn Fn(&[u8], i64) -> Option<i64> + Send + Sync>;

/// Where a source reads each message's event time: the watermark follows it, and it is what
/// [`SourceEvent::event_time_ms`] carries to the windows (see the module doc, "Time").
#[derive(Clone, Default)]
pub enum EventTime {
    /// The Kafka message timestamp (the producer's CreateTime, or the broker's LogAppendTime).
    #[default]
    MessageTimestamp,
    /// A payload field, read by the given function (the connector knows no schema).
    Payload(PayloadTime),
}

impl std::fmt::Debug for EventTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventTime::MessageTimestamp => f.write_str("MessageTimestamp"),
            EventTime::Payload(_) => f.write_str("Payload(..)"),
        }
    }
}

/// The event time a source processes a message at: its own time `et` (`None`: unusable),
/// raised to its partition's watermark before it (`partition_max`, the largest event time read
/// before it in the partition, minus `lateness_ms`) and to the source's capability `cap_ms`.
/// Returns `(processing time, whether it was late)`; late means behind the partition's
/// watermark, which depends only on the partition's content (not on timing).
///
/// ```
/// use weir_connectors::kafka::source::processing_time;
/// // In order: its own time.
/// assert_eq!(processing_time(Some(5_000), Some(4_000), 0, 0), (5_000, false));
/// // 3 s behind the partition's largest time, with 1 s of allowed lateness: raised to 4 s.
/// assert_eq!(processing_time(Some(2_000), Some(5_000), 1_000, 0), (4_000, true));
/// // Within the allowed lateness: its own time.
/// assert_eq!(processing_time(Some(4_500), Some(5_000), 1_000, 0), (4_500, false));
/// ```
pub fn processing_time(et: Option<i64>, partition_max: Option<i64>, lateness_ms: i64, cap_ms: i64) -> (i64, bool) {
    let floor = partition_max.map_or(i64::MIN, |m| m.saturating_sub(lateness_ms));
    let own = et.unwrap_or(i64::MIN);
    (own.max(floor).max(cap_ms), et.is_some_and(|t| t < floor))
}

/// One worker's view of a topic: the watermark its partitions hold (if any still expected to
/// deliver) and the largest timestamp it read.
type WorkerWatermark = (Option<i64>, Option<i64>);

/// A topic's watermarks across the workers of a process, as [`WatermarkBoard::publish`] returns
/// them (ms since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicWatermark {
    /// The topic's watermark: the smallest held by any worker, or one past the largest timestamp
    /// read when no worker holds it; `None` while nothing is known.
    pub watermark: Option<i64>,
    /// The smallest watermark any worker's partitions of the topic hold (`i64::MIN` for a
    /// partition, or a worker, that has read nothing yet); `None` when none holds. Watermark
    /// alignment reads only the partitions at this value.
    pub holding: Option<i64>,
    /// As `holding`, over the other workers only: watermark alignment reads a laggard until it
    /// passes this (and the publishing worker's other partitions).
    pub others: Option<i64>,
}

/// Watermarks published by every source worker of a process, per topic, so that an idle worker
/// does not hold the others back.
///
/// For each topic: if any worker has a partition still expected to deliver, the topic's
/// watermark is the minimum of those; otherwise it is one past the largest timestamp any worker
/// read (everything read is complete). A worker that has not published yet (its source has not
/// run: workers start at different moments) holds the watermark at `i64::MIN`: until then, the
/// others cannot know what its partitions hold. A side input that has read nothing and expects
/// nothing follows the topic it names (its main input); a main input never follows another topic.
/// In a cluster, the entries of other processes' workers arrive through
/// [`super::peers::BoardLink`] ([`WatermarkBoard::apply_remote`]).
#[derive(Debug, Default)]
pub struct WatermarkBoard {
    /// (topic, worker) -> (holding, largest seen)
    entries: Mutex<HashMap<(String, usize), WorkerWatermark>>,
    /// (topic, worker) -> the sequence number of the last remote entry applied.
    remote_seq: Mutex<HashMap<(String, usize), u64>>,
}

impl WatermarkBoard {
    /// Applies another process's worker's entry, unless a later one was applied already.
    pub fn apply_remote(&self, m: &super::peers::BoardMessage) {
        let key = (m.topic.clone(), m.worker as usize);
        let mut seqs = self.remote_seq.lock().unwrap();
        if seqs.get(&key).is_some_and(|s| *s >= m.seq) {
            return;
        }
        seqs.insert(key.clone(), m.seq);
        self.entries.lock().unwrap().insert(key, (m.holding, m.seen));
    }

    /// Publishes worker `worker`'s (of `peers`) view of `topic` and returns the topic's
    /// watermarks. `follows`: the main topic a side input falls back to.
    pub fn publish(
        &self,
        topic: &str,
        worker: usize,
        peers: usize,
        holding: Option<i64>,
        seen: Option<i64>,
        follows: Option<&str>,
    ) -> TopicWatermark {
        let mut e = self.entries.lock().unwrap();
        e.insert((topic.to_string(), worker), (holding, seen));
        let topic_holding = |t: &str, except: Option<usize>| -> Option<i64> {
            let mine = e.iter().filter(|((tt, _), _)| tt == t);
            if mine.clone().count() < peers {
                return Some(i64::MIN);
            }
            mine.filter(|((_, w), _)| Some(*w) != except)
                .filter_map(|(_, (h, _))| *h)
                .min()
        };
        let topic_wm = |t: &str, holding: Option<i64>| -> Option<i64> {
            let seen = e
                .iter()
                .filter(|((tt, _), _)| tt == t)
                .filter_map(|(_, (_, s))| *s)
                .max();
            match (holding, seen) {
                (Some(h), _) => Some(h),
                (None, Some(s)) => Some(s + 1),
                (None, None) => None,
            }
        };
        let holding = topic_holding(topic, None);
        TopicWatermark {
            watermark: topic_wm(topic, holding).or_else(|| follows.and_then(|f| topic_wm(f, topic_holding(f, None)))),
            holding,
            others: topic_holding(topic, Some(worker)),
        }
    }
}

/// Shared state the source needs from its topology.
#[derive(Clone)]
pub struct SourceShared {
    /// Offsets read / acknowledged.
    pub ledger: Arc<DeliveryLedger>,
    /// Backpressure and shutdown.
    pub flow: Arc<FlowControl>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Watermarks of every source worker of the process.
    pub watermarks: Arc<WatermarkBoard>,
    /// Next offset per owned partition, published about once a second for the consumer lag
    /// ([`super::lag::LagMonitor`]).
    pub positions: Arc<super::lag::ConsumerPositions>,
    /// In a cluster of several processes: the global indexes of this process's workers (the
    /// others' watermarks and shutdown arrive through [`super::peers::BoardLink`]); `None` in
    /// one process.
    pub cluster: Option<std::ops::Range<usize>>,
}

/// Consumer context: commits acknowledged offsets (partitions are assigned directly, so there
/// is no rebalance to follow).
pub struct SourceContext {
    topic: String,
    ledger: Arc<DeliveryLedger>,
    assigned: Mutex<Vec<i32>>,
    /// Positions last sent in an asynchronous commit (to skip unchanged ones).
    last_sent: Mutex<HashMap<i32, i64>>,
    /// Commits at or below these positions are skipped (see [`KafkaSourceConfig::commit_floor`]).
    floor: Option<Arc<BTreeMap<i32, i64>>>,
    worker: usize,
}

impl ClientContext for SourceContext {}

impl SourceContext {
    /// Commits the acknowledged positions of `partitions`. Asynchronous commits skip positions
    /// already sent; a synchronous commit (revoke, shutdown) sends all of them again, so that a
    /// failed asynchronous commit is repaired.
    fn commit_acked(&self, consumer: &BaseConsumer<Self>, partitions: &[i32], mode: CommitMode) {
        let mut offsets = self.ledger.committable(partitions);
        if let Some(floor) = &self.floor {
            offsets.retain(|(p, o)| floor.get(p).is_none_or(|f| o > f));
        }
        {
            let mut last = self.last_sent.lock().unwrap();
            if matches!(mode, CommitMode::Async) {
                offsets.retain(|(p, o)| last.get(p) != Some(o));
            }
            for (p, o) in &offsets {
                last.insert(*p, *o);
            }
        }
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &offsets {
            let _ = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o));
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => tracing::debug!(worker = self.worker, ?offsets, "committed offsets"),
            Err(e) => {
                tracing::warn!(worker = self.worker, error = %e, ?offsets, "offset commit failed; will retry");
                self.last_sent.lock().unwrap().clear();
            }
        }
    }
}

impl ConsumerContext for SourceContext {}

/// How often a source publishes its positions for the consumer lag.
const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// Sets the start offsets of `fresh` partitions in `tpl` according to `start`.
fn apply_start<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    start: StartPosition,
    fresh: &[i32],
    tpl: &mut TopicPartitionList,
) -> Result<(), KafkaError> {
    let offset = match start {
        StartPosition::Committed => return Ok(()),
        StartPosition::Earliest => Offset::Beginning,
        StartPosition::Latest => Offset::End,
        StartPosition::Timestamp(ts) => {
            let mut q = TopicPartitionList::new();
            for p in fresh {
                q.add_partition_offset(topic, *p, Offset::Offset(ts))?;
            }
            let found = consumer.offsets_for_times(q, Duration::from_secs(10))?;
            for e in found.elements() {
                let o = match e.offset() {
                    Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                    _ => Offset::End,
                };
                tpl.set_partition_offset(topic, e.partition(), o)?;
            }
            return Ok(());
        }
    };
    for p in fresh {
        tpl.set_partition_offset(topic, *p, offset)?;
    }
    Ok(())
}

/// The source consumer's `fetch.wait.max.ms` (see `consumer_defaults`); the benchmarks' bare
/// consumers use it too.
pub const FETCH_WAIT_MAX_MS: &str = "2";

fn consumer_defaults(group_id: &str) -> Vec<(&str, &str)> {
    vec![
        ("group.id", group_id),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("enable.partition.eof", "true"),
        ("session.timeout.ms", "10000"),
        ("heartbeat.interval.ms", "1000"),
        // How long the broker holds a fetch that finds no data. A row waits for every partition's
        // watermark, so a partition whose fetch sits on an idle broker holds every other
        // partition's rows: 10 ms made the watermark wait's p99 13 ms on the embedded broker,
        // 2 ms makes it 5 ms (2026-12-04, issue 18). Idle cost: one fetch per 2 ms per broker.
        ("fetch.wait.max.ms", FETCH_WAIT_MAX_MS),
        // Bounds librdkafka's prefetch queue: 4 MiB per partition read directly (its own queue),
        // per consumer otherwise.
        ("queued.max.messages.kbytes", "4096"),
        // A partition whose queue reached that bound is fetched again only after this long
        // (librdkafka's default 1 s): a queue the worker drains while busy elsewhere (the labels
        // beside the transactions) then sat empty for up to a second, idling the whole pipeline.
        ("fetch.queue.backoff.ms", "5"),
    ]
}

/// Backpressure with no event leaving the pipeline for this long lets silent partitions turn
/// idle (see the module doc).
const STALL_AFTER: Duration = Duration::from_secs(30);

/// A backpressure episode ends after this long without pressure (hysteresis: a hand-off that
/// blocks on every batch is one episode, not many short ones).
const CALM_AFTER: Duration = Duration::from_millis(20);

/// Gives each of `partitions` its own queue, so that the source chooses which partitions it reads
/// (watermark alignment) without pausing them: a pause drops what librdkafka prefetched and a
/// resume waits for the broker thread's next round (up to a second). Returns `partition -> queue`
/// (a partition librdkafka does not know is left on the main queue). Must follow `assign`.
fn split_queues(
    consumer: &Arc<BaseConsumer<SourceContext>>,
    topic: &str,
    partitions: &[i32],
) -> BTreeMap<i32, PartitionQueue<SourceContext>> {
    partitions
        .iter()
        .filter_map(|p| consumer.split_partition_queue(topic, *p).map(|q| (*p, q)))
        .collect()
}

struct Bounded {
    /// partition -> stop offset (exclusive); removed when reached.
    remaining: HashMap<i32, i64>,
}

/// The worker (of `peers`, across all processes) that reads partition `partition`:
/// `partition mod peers`. What it reads is scored and committed there: a topology sends each
/// feature vector back to its partition's owner by exchanging on the partition number (timely's
/// exchange takes the same modulus).
pub fn owner_of(partition: i32, peers: usize) -> usize {
    partition.rem_euclid(peers as i32) as usize
}

/// Builds the source operator for worker `scope.index()` of `scope.peers()`; it reads the
/// partitions [`owner_of`] gives it.
///
/// # Errors
/// [`ConnectorError`] if the consumer cannot be created, the topic is unknown (bounded mode),
/// or subscribing fails.
pub fn kafka_source<'s>(
    scope: Scope<'s, u64>,
    config: KafkaSourceConfig,
    shared: SourceShared,
) -> Result<StreamVec<'s, u64, SourceEvent>, ConnectorError> {
    let worker = scope.index();
    let peers = scope.peers();
    let context = SourceContext {
        topic: config.topic.clone(),
        ledger: shared.ledger.clone(),
        assigned: Mutex::new(Vec::new()),
        last_sent: Mutex::new(HashMap::new()),
        floor: config.commit_floor.clone(),
        worker,
    };
    let consumer: Arc<BaseConsumer<SourceContext>> = Arc::new(
        client_config(
            &config.brokers,
            &consumer_defaults(&config.group_id),
            &config.properties,
        )
        .create_with_context(context)
        .map_err(ConnectorError::kafka("create consumer"))?,
    );

    let mut bounded = None;
    // Every assigned partition has its own queue (see `split_queues`).
    let queues;
    if let Some(ranges) = &config.ranges {
        let mine: Vec<i32> = ranges
            .iter()
            .filter(|(_, (a, b))| b > a)
            .map(|(p, _)| *p)
            .filter(|p| owner_of(*p, peers) == worker)
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut remaining = HashMap::new();
        for p in &mine {
            let (start, stop) = ranges[p];
            remaining.insert(*p, stop);
            tpl.add_partition_offset(&config.topic, *p, Offset::Offset(start))
                .map_err(ConnectorError::kafka("assign"))?;
        }
        consumer.assign(&tpl).map_err(ConnectorError::kafka("assign"))?;
        queues = split_queues(&consumer, &config.topic, &mine);
        *consumer.context().assigned.lock().unwrap() = mine.clone();
        tracing::info!(worker, topic = %config.topic, partitions = ?mine, "offset ranges assigned");
        bounded = Some(Bounded { remaining });
    } else {
        let timeout = Duration::from_secs(10);
        let mut all = topic_partitions(&consumer, &config.topic, timeout)?;
        all.sort_unstable();
        let mine: Vec<i32> = all.iter().copied().filter(|p| owner_of(*p, peers) == worker).collect();
        let mut tpl = TopicPartitionList::new();
        let mut remaining = HashMap::new();
        for p in &mine {
            let (lo, hi) = consumer
                .fetch_watermarks(&config.topic, *p, timeout)
                .map_err(ConnectorError::kafka(format!("watermarks of `{}`/{p}", config.topic)))?;
            if hi > lo && config.bounded {
                remaining.insert(*p, hi);
            }
            tpl.add_partition_offset(&config.topic, *p, Offset::Invalid)
                .map_err(ConnectorError::kafka("assign"))?;
        }
        apply_start(&consumer, &config.topic, config.start, &mine, &mut tpl)
            .map_err(ConnectorError::kafka("resolve start offsets"))?;
        if config.start == StartPosition::Committed {
            // No committed offset -> earliest, as in live mode.
            let committed = consumer
                .committed_offsets(tpl.clone(), timeout)
                .map_err(ConnectorError::kafka("committed offsets"))?;
            for e in committed.elements() {
                let o = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::Beginning,
                };
                tpl.set_partition_offset(&config.topic, e.partition(), o)
                    .map_err(ConnectorError::kafka("assign"))?;
            }
        }
        if let Some(starts) = &config.start_offsets {
            for p in &mine {
                if let Some(o) = starts.get(p) {
                    tpl.set_partition_offset(&config.topic, *p, Offset::Offset(*o))
                        .map_err(ConnectorError::kafka("assign"))?;
                }
            }
        }
        consumer.assign(&tpl).map_err(ConnectorError::kafka("assign"))?;
        queues = split_queues(&consumer, &config.topic, &mine);
        *consumer.context().assigned.lock().unwrap() = mine.clone();
        tracing::info!(worker, topic = %config.topic, partitions = ?mine, stop = ?remaining, bounded = config.bounded, "partitions assigned directly");
        if config.bounded {
            bounded = Some(Bounded { remaining });
        }
    }

    let mut op = SourceOperator::new(config, shared, consumer, queues, bounded, worker, peers);
    let stream =
        source::<_, CapacityContainerBuilder<Vec<SourceEvent>>, _, _>(scope, "KafkaSource", move |cap, info| {
            let activator = scope.activator_for(info.address.clone());
            if let Some(local) = op.shared.cluster.clone() {
                // Every worker builds the same sources in the same order: the same channel.
                let channel = scope.worker().new_identifier();
                let (pushers, puller) = scope
                    .worker()
                    .allocate::<super::peers::BoardMessage>(channel, info.address.clone());
                op.link = Some(super::peers::BoardLink::new(pushers, puller, op.worker, local));
            }
            let mut cap = Some(cap);
            // Each activation: plan (backpressure, alignment), read, then the end of the round
            // (watermark, positions, commit or finish). See `SourceOperator`.
            move |output| {
                let Some(c) = cap.as_mut() else {
                    return;
                };
                let plan = op.plan();
                let read = {
                    let mut session = output.session(&*c);
                    op.read(*c.time(), &plan, &mut |ev| session.give(ev))
                };
                match op.end_round(c, &plan, &read) {
                    Next::Now => activator.activate(),
                    Next::Soon => activator.activate_after(Duration::from_millis(1)),
                    Next::Finished => cap = None,
                }
            }
        });
    Ok(stream)
}

/// What the source does next after an activation.
enum Next {
    /// Read again at once (it emitted, and nothing holds it back).
    Now,
    /// Look again in a millisecond.
    Soon,
    /// Finished: drop the capability.
    Finished,
}

/// The phase of a source: reading, or draining before it finishes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Reading its partitions (and committing, live).
    Reading,
    /// Its range is read, or shutdown was requested: it waits (live: until `deadline`, at most
    /// `drain_timeout`) for the events in flight to be acknowledged, commits, and finishes.
    Draining {
        /// When it stops waiting.
        deadline: Instant,
    },
}

/// Backpressure as one source lives it: the pause episode in progress, if any.
#[derive(Debug, Default)]
struct Pressure {
    /// Since when it counts as paused, and over how many partitions.
    paused: Option<(Instant, usize)>,
    /// When the current episode of pressure began.
    since: Option<Instant>,
    /// The last time pressure was seen.
    last: Option<Instant>,
}

/// What [`SourceOperator::plan`] decided for one activation.
struct Plan {
    /// The partitions this worker reads now.
    assigned: Vec<i32>,
    /// Shutdown was requested.
    shutting_down: bool,
    /// Reading stops (backpressure, a sink not acknowledging, shutdown).
    want_pause: bool,
    /// Watermark alignment is on: only the partitions holding the watermark are read.
    align: bool,
    /// The partitions ahead of the watermark, left in their queues while aligning.
    ahead: Vec<i32>,
}

/// What one read did.
struct Read {
    /// Events emitted.
    emitted: usize,
    /// Of which late.
    late: u64,
}

/// One worker's Kafka source between activations: the consumer and its partition queues, and
/// what the source remembers of its partitions (largest event time, end reached, watermark
/// holdings) and of backpressure. An activation runs [`Self::plan`], [`Self::read`] and
/// [`Self::end_round`], in that order (see the module doc for each mechanism).
struct SourceOperator {
    config: KafkaSourceConfig,
    shared: SourceShared,
    /// Stays (with its group) after the source finished, until the dataflow is dropped: the
    /// topology's workers wait for every source to finish before exiting.
    consumer: Arc<BaseConsumer<SourceContext>>,
    /// One queue per assigned partition (see `split_queues`).
    queues: BTreeMap<i32, PartitionQueue<SourceContext>>,
    /// The stop offsets of a bounded run.
    bounded: Option<Bounded>,
    worker: usize,
    peers: usize,
    phase: Phase,
    pressure: Pressure,
    last_commit: Instant,
    /// The capability's time when shutdown froze the watermark.
    frozen: Option<u64>,
    /// partition -> (largest event time seen, when its last message arrived).
    max_ts: HashMap<i32, (i64, Instant)>,
    /// Partitions at their end (librdkafka's partition EOF) since their last message: only these
    /// can turn idle, unless backpressure stalled the pipeline.
    caught_up: HashSet<i32>,
    /// partition -> what it held the watermark at, last activation (holding partitions only).
    last_holding: HashMap<i32, i64>,
    /// Partitions left unread by watermark alignment.
    aligned: Vec<i32>,
    /// The process-wide watermark of this topic at the last activation, if any partition held it.
    last_wm: Option<i64>,
    /// The smallest watermark the other workers' partitions held at the last activation.
    others_wm: Option<i64>,
    /// Which partition queue is read first (rotates, for fairness).
    turn: usize,
    /// The in-flight count last seen changing, and when.
    in_flight_seen: (usize, Instant),
    stall_logged: bool,
    /// partition -> when it was first seen assigned.
    assigned_at: HashMap<i32, Instant>,
    last_wm_log: Instant,
    /// The latest capability time anything was emitted at.
    max_emitted: i64,
    /// Partitions whose positions this source published, for the consumer lag.
    published: Vec<i32>,
    last_lag: Instant,
    /// The other processes' source workers, in a cluster (see [`super::peers`]).
    link: Option<super::peers::BoardLink>,
}

impl SourceOperator {
    fn new(
        config: KafkaSourceConfig,
        shared: SourceShared,
        consumer: Arc<BaseConsumer<SourceContext>>,
        queues: BTreeMap<i32, PartitionQueue<SourceContext>>,
        bounded: Option<Bounded>,
        worker: usize,
        peers: usize,
    ) -> Self {
        let now = Instant::now();
        Self {
            config,
            shared,
            consumer,
            queues,
            bounded,
            worker,
            peers,
            phase: Phase::Reading,
            pressure: Pressure::default(),
            last_commit: now,
            frozen: None,
            max_ts: HashMap::new(),
            caught_up: HashSet::new(),
            last_holding: HashMap::new(),
            aligned: Vec::new(),
            last_wm: None,
            others_wm: None,
            turn: 0,
            in_flight_seen: (usize::MAX, now),
            stall_logged: false,
            assigned_at: HashMap::new(),
            last_wm_log: now,
            max_emitted: i64::MIN,
            published: Vec::new(),
            last_lag: now,
            link: None,
        }
    }

    /// Decides what this activation reads: backpressure, a sink not acknowledging, shutdown
    /// (nothing), watermark alignment (only the partitions holding the watermark); and keeps
    /// the pause episodes' accounting.
    fn plan(&mut self) -> Plan {
        if let Some(link) = self.link.as_mut() {
            let (stop, frozen) = link.receive(&self.shared.watermarks);
            if stop && !self.shared.flow.shutdown_requested() {
                tracing::info!(
                    worker = self.worker,
                    "shutdown requested by another process of the cluster"
                );
                self.shared.flow.request_shutdown();
            }
            if let Some(f) = frozen {
                self.shared.flow.freeze_at(f);
            }
        }
        let (config, shared) = (&self.config, &self.shared);
        let assigned: Vec<i32> = self.consumer.context().assigned.lock().unwrap().clone();
        let shutting_down = shared.flow.shutdown_requested();
        // A side input (no commits: labels) is not held back: the main events in flight may be
        // waiting for its watermark, which only reading it advances. A sink that stopped
        // acknowledging (events past inference pile up in the ledger) stops the reads too:
        // memory stays bounded, lag shows the trouble.
        let unacked_full =
            config.commit && !assigned.is_empty() && shared.ledger.unacked(&assigned) >= shared.flow.max_unacked();
        let want_pause = shutting_down || (config.commit && (shared.flow.should_pause() || unacked_full));
        // Watermark alignment (as Flink's split alignment): with half the in-flight limit
        // reached, rows wait in the feature store for the watermark, which only the partitions
        // holding it back can advance; the others wait in their queues, those keep reading into
        // the other half (see the module doc).
        let align = !want_pause && config.commit && shared.flow.should_align();
        // Ahead: every partition not holding the process-wide watermark (the laggard may be
        // another worker's, in which case all of this worker's partitions wait).
        let ahead: Vec<i32> = match (align, self.last_wm) {
            (true, Some(wm)) => assigned
                .iter()
                .copied()
                .filter(|p| self.last_holding.get(p).is_none_or(|h| *h > wm))
                .collect(),
            _ => Vec::new(),
        };
        if ahead != self.aligned {
            tracing::debug!(worker = self.worker, topic = %config.topic, held = ?ahead, "watermark alignment");
            self.aligned = ahead.clone();
        }
        // Backpressure: the partition queues (bounded by queued.max.messages.kbytes, keeping what
        // librdkafka fetched) are not read. Pressure lasting pause_after is a pause episode. (The
        // partitions are never paused: a pause drops librdkafka's prefetched messages, which are
        // fetched again on resume.)
        let now = Instant::now();
        let p = &mut self.pressure;
        if want_pause {
            p.last = Some(now);
            p.since.get_or_insert(now);
        }
        let in_episode = p.since.is_some() && (want_pause || p.last.is_some_and(|l| now - l < CALM_AFTER));
        if !in_episode {
            if let Some(since) = p.since.take() {
                shared.flow.add_paused_micros(since.elapsed().as_micros() as u64);
            }
            p.paused = None;
        } else if let Some(since) = p.since {
            let long = shutting_down || now - since >= config.pause_after;
            if long && p.paused.is_none_or(|(_, n)| n != assigned.len()) {
                if p.paused.is_none() {
                    shared.flow.add_pause();
                }
                p.paused.get_or_insert((now, 0)).1 = assigned.len();
            }
        }
        Plan {
            assigned,
            shutting_down,
            want_pause,
            align,
            ahead,
        }
    }

    /// Reads what `plan` allows, handing each event to `give`: the main queue (callbacks, and
    /// what was fetched before the partition queues were split), then each partition's queue in
    /// turn. `cap_time`: the capability's time, the least time an event can be emitted at.
    fn read(&mut self, cap_time: u64, plan: &Plan, give: &mut impl FnMut(SourceEvent)) -> Read {
        let config = &self.config;
        let shared = &self.shared;
        let worker = self.worker;
        let (bounded, caught_up, max_ts) = (&mut self.bounded, &mut self.caught_up, &mut self.max_ts);
        let (assigned, ahead, align) = (&plan.assigned, &plan.ahead, plan.align);
        let mut emitted = 0usize;
        let mut late_events = 0u64;
        let polled_at = Instant::now();
        // Message timestamp to read, per event of the main input (`Stage::Broker`), µs.
        let read_wall_ms = clock::wall_ms();
        let mut broker_us: Vec<u64> = Vec::new();
        // The holding (largest event time - allowed lateness) of the partition of the last
        // message handled.
        let last_holds = std::cell::Cell::new(i64::MIN);
        // Handles one poll result; `false`: that queue has nothing more now.
        let mut handle = |r: Option<Result<BorrowedMessage<'_>, KafkaError>>| -> bool {
            match r {
                None => false,
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    caught_up.insert(p);
                    if let Some(b) = bounded.as_mut() {
                        b.remaining.remove(&p);
                    }
                    true
                }
                Some(Err(e)) => {
                    tracing::warn!(worker, error = %e, "consumer error");
                    false
                }
                Some(Ok(m)) => {
                    let partition = m.partition();
                    let offset = m.offset();
                    if let Some(b) = bounded.as_mut() {
                        match b.remaining.get(&partition) {
                            Some(&stop) if offset < stop => {
                                if offset + 1 >= stop {
                                    b.remaining.remove(&partition);
                                }
                            }
                            _ => return true, // past the range
                        }
                    }
                    caught_up.remove(&partition);
                    let ts = m.timestamp().to_millis().unwrap_or_else(clock::wall_ms);
                    if config.commit {
                        broker_us.push((read_wall_ms.saturating_sub(ts).max(0) as u64).saturating_mul(1000));
                    }
                    let et = match &config.event_time {
                        EventTime::MessageTimestamp => Some(ts),
                        EventTime::Payload(f) => m.payload().and_then(|p| f(p, ts)),
                    };
                    let e = max_ts.entry(partition).or_insert((i64::MIN, polled_at));
                    let before = (e.0 > i64::MIN).then_some(e.0);
                    let (event_time_ms, late) =
                        processing_time(et, before, config.allowed_lateness_ms, cap_time as i64);
                    if let Some(t) = et {
                        e.0 = e.0.max(t);
                    }
                    e.1 = polled_at;
                    last_holds.set(e.0.saturating_sub(config.allowed_lateness_ms));
                    late_events += late as u64;
                    let lineage = Lineage { partition, offset };
                    if config.commit {
                        // The time it enters the dataflow.
                        shared.ledger.register(lineage, event_time_ms.max(0) as u64);
                    }
                    let headers = super::owned_headers(&m);
                    give(SourceEvent {
                        lineage,
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        headers,
                        timestamp_ms: ts,
                        event_time_ms,
                        read_at_us: clock::now_micros(),
                    });
                    emitted += 1;
                    true
                }
            }
        };
        let paused = self.pressure.paused.is_some();
        // Paused: one poll serves callbacks (a message it returns is still emitted).
        let mut budget = match (paused, plan.want_pause) {
            (true, _) => 1,
            (false, true) => 0,
            // The main input's reads stay within the in-flight limit's halves (see
            // FlowControl::read_budget); a side input is not held back.
            (false, false) if config.commit => shared.flow.read_budget(config.max_poll_records, self.peers),
            (false, false) => config.max_poll_records,
        };
        // The main queue: callbacks, and the messages fetched before the partition queues were
        // split. (A poll that returns nothing uses none of the budget: with max_poll_records = 1
        // the partition queues were never read.) Aligning with every partition of this worker
        // ahead, the main queue waits too (its callbacks are served again once one partition
        // holds): what librdkafka fetched before the split sits on the main queue, of any
        // partition; read at full speed, it let a worker read its whole share past the alignment
        // and fill the in-flight limit while the worker holding the watermark waited (a
        // deadlock until the stall escape, after which features depended on timing).
        let all_ahead =
            align && !self.queues.is_empty() && !assigned.is_empty() && assigned.iter().all(|p| ahead.contains(p));
        let mut main_budget = if all_ahead { 0 } else { budget };
        while main_budget > 0 {
            if !handle(self.consumer.poll(Duration::ZERO)) {
                break;
            }
            budget -= 1;
            main_budget -= 1;
        }
        // Each partition's queue in turn, skipping those ahead (watermark alignment: they keep
        // what librdkafka prefetched, no pause and no fetch round trip).
        let reading = !paused && !plan.want_pause;
        let readable: Vec<i32> = match reading {
            true => self.queues.keys().copied().filter(|p| !ahead.contains(p)).collect(),
            false => Vec::new(),
        };
        if !readable.is_empty() {
            self.turn = (self.turn + 1) % readable.len();
        }
        for (i, p) in readable.iter().cycle().skip(self.turn).take(readable.len()).enumerate() {
            let mut share = budget.div_ceil(readable.len() - i);
            // Aligning, a laggard is read until it passes the next partition's watermark (the
            // smallest other holding, of this worker or another): what it read up to there is
            // released as the watermark moves, and at most one row past it stays, so that the
            // laggards' half of the limit is not taken by a partition that stopped holding the
            // watermark (a partition never read held it at i64::MIN with others: the first read
            // one filled the half, the others could not be read; deadlock).
            let next = align
                .then(|| {
                    assigned
                        .iter()
                        .filter(|q| *q != p)
                        .filter_map(|q| self.last_holding.get(q).copied())
                        .chain(self.others_wm)
                        .min()
                })
                .flatten();
            while share > 0 {
                share -= 1;
                budget -= 1;
                last_holds.set(i64::MIN);
                if !handle(self.queues[p].poll(Duration::ZERO)) {
                    break;
                }
                if next.is_some_and(|n| last_holds.get() > n) {
                    break;
                }
            }
        }
        if !broker_us.is_empty() {
            shared
                .metrics
                .record_stage(weir_core::metrics::Stage::Broker, broker_us);
        }
        Read {
            emitted,
            late: late_events,
        }
    }

    /// The end of an activation: the counts, the watermark (and the capability) moved, the
    /// partitions' positions published for the lag, offsets committed; then, if the range is
    /// read or shutdown was requested, draining and finishing.
    fn end_round(&mut self, c: &mut timely::dataflow::operators::Capability<u64>, plan: &Plan, read: &Read) -> Next {
        let (worker, peers) = (self.worker, self.peers);
        let assigned = &plan.assigned;
        let shutting_down = plan.shutting_down;
        if shutting_down {
            // Stopped for good: silence is not idleness (the watermark stays frozen).
            let now = Instant::now();
            self.max_ts.values_mut().for_each(|v| v.1 = now);
            self.assigned_at.values_mut().for_each(|v| *v = now);
        }
        if read.emitted > 0 {
            // Records were stamped with the capability's time (late ones included): once nothing
            // holds, the watermark must pass it too.
            self.max_emitted = self.max_emitted.max(*c.time() as i64);
        }
        let (config, shared) = (&self.config, &self.shared);
        if read.late > 0 {
            shared
                .metrics
                .late_events
                .with_label_values(&[&config.topic])
                .inc_by(read.late);
        }
        if config.commit {
            // The main input: each event ends as a batch row or a dead letter.
            shared.metrics.events_in.inc_by(read.emitted as u64);
            shared.flow.add_in_flight(read.emitted);
        }

        // Watermark: the minimum, over partitions still expected to deliver, of (largest
        // timestamp seen - allowed lateness). A partition is not expected when it finished its
        // range, or has been silent for idle_timeout (never seen: since assignment). When none is
        // expected, everything read so far is complete: largest seen + 1.
        let now = Instant::now();
        for p in assigned {
            self.assigned_at.entry(*p).or_insert(now);
        }
        // Stalled: held back with no event leaving the pipeline for STALL_AFTER (rows wait for a
        // watermark that only reading a held-back partition would advance).
        let in_flight = shared.flow.in_flight();
        if in_flight != self.in_flight_seen.0 {
            self.in_flight_seen = (in_flight, now);
        }
        let stalled = (plan.want_pause || plan.align) && !shutting_down && now - self.in_flight_seen.1 >= STALL_AFTER;
        if stalled && !self.stall_logged {
            self.stall_logged = true;
            tracing::warn!(worker, topic = %config.topic, in_flight, "backpressure stalled the watermark: silent partitions now turn idle, and their later events are late (raise source.max_in_flight_rows)");
        } else if !stalled {
            self.stall_logged = false;
        }
        let mut holding: Option<i64> = None;
        let mut seen_max: Option<i64> = None;
        self.last_holding.clear();
        for p in assigned {
            let finished = self.bounded.as_ref().is_some_and(|b| !b.remaining.contains_key(p));
            // Silence counts as idleness only at the partition's end (or when stalled, see the
            // module doc): a partition with unread messages holds the watermark however slow its
            // fetches, so that results do not depend on timing (a live run, a restart and a
            // backfill see the same event order).
            let may_idle = self.caught_up.contains(p) || stalled;
            match self.max_ts.get(p) {
                Some(&(ts, last)) => {
                    seen_max = Some(seen_max.map_or(ts, |m| m.max(ts)));
                    if !finished && (now - last < config.idle_timeout || !may_idle) {
                        let h = ts.saturating_sub(config.allowed_lateness_ms);
                        holding = Some(holding.map_or(h, |m| m.min(h)));
                        self.last_holding.insert(*p, h);
                    }
                }
                None if !finished && (now - self.assigned_at[p] < config.idle_timeout || !may_idle) => {
                    holding = Some(i64::MIN);
                    self.last_holding.insert(*p, i64::MIN);
                }
                None => {}
            }
        }
        // "Everything read is complete" must cover what was emitted at a later stamp (late
        // records, raised to the capability's time) as well as what was read.
        let seen_max = match (seen_max, self.max_emitted) {
            (Some(s), e) if e > i64::MIN => Some(s.max(e)),
            (s, _) => s,
        };
        let board = shared.watermarks.publish(
            &config.topic,
            worker,
            peers,
            holding,
            seen_max,
            config.follows.as_deref(),
        );
        let wm = board.watermark.unwrap_or(i64::MIN);
        self.last_wm = board.holding;
        self.others_wm = board.others;
        if shutting_down {
            // Freeze: from here on the capability stays where it is until it is dropped.
            if self.frozen.is_none() {
                self.frozen = Some(*c.time());
                shared.flow.freeze_at(*c.time());
                tracing::info!(worker, topic = %config.topic, watermark = *c.time(), "shutdown: watermark frozen");
            }
        } else if wm > 0 && wm as u64 > *c.time() {
            c.downgrade(&(wm as u64));
        }
        if let Some(link) = self.link.as_mut() {
            link.send(&config.topic, (holding, seen_max, shutting_down, self.frozen), false);
        }
        if self.last_wm_log.elapsed() >= Duration::from_secs(1) {
            self.last_wm_log = now;
            tracing::debug!(worker, topic = %config.topic, capability = *c.time(), ?holding, ?seen_max, assigned = assigned.len(), in_flight = shared.flow.in_flight(), buffered = shared.flow.buffered_rows(), want_pause = plan.want_pause, paused = self.pressure.paused.is_some(), "watermark");
        }
        self.publish_positions(assigned);
        self.commit_or_finish(assigned, shutting_down, plan.want_pause, read.emitted)
    }

    /// Publishes the partitions' positions for the consumer lag, every `LAG_INTERVAL`.
    fn publish_positions(&mut self, assigned: &[i32]) {
        if self.last_lag.elapsed() < LAG_INTERVAL {
            return;
        }
        self.last_lag = Instant::now();
        let (config, shared) = (&self.config, &self.shared);
        let revoked: Vec<i32> = self
            .published
            .iter()
            .copied()
            .filter(|p| !assigned.contains(p))
            .collect();
        shared.positions.remove(&config.topic, &revoked);
        self.published.retain(|p| assigned.contains(p));
        // librdkafka's position: last message returned by poll + 1 (local, no broker round
        // trip); invalid for a partition not read yet.
        if let Ok(tpl) = self.consumer.position() {
            for e in tpl.elements_for_topic(&config.topic) {
                if let (Offset::Offset(next), true) = (e.offset(), assigned.contains(&e.partition())) {
                    shared.positions.set(&config.topic, e.partition(), next);
                    if !self.published.contains(&e.partition()) {
                        self.published.push(e.partition());
                    }
                }
            }
        }
        // Assigned and not read yet: its lag series exists from the assignment.
        if config.commit && !config.bounded {
            for p in assigned {
                if !self.published.contains(p) {
                    shared.positions.set_unread(&config.topic, *p);
                    self.published.push(*p);
                }
            }
        }
    }

    /// Commits (live, every `commit_interval`); once the range is read or shutdown was
    /// requested, drains (see [`Phase::Draining`]) and finishes.
    fn commit_or_finish(&mut self, assigned: &[i32], shutting_down: bool, want_pause: bool, emitted: usize) -> Next {
        let (config, shared) = (&self.config, &self.shared);
        let ctx = self.consumer.context();
        let live = self.bounded.is_none() && config.commit;
        if live && self.last_commit.elapsed() >= config.commit_interval {
            ctx.commit_acked(&self.consumer, assigned, CommitMode::Async);
            self.last_commit = Instant::now();
        }
        let finished_range = self.bounded.as_ref().is_some_and(|b| b.remaining.is_empty());
        if finished_range || shutting_down {
            let deadline = match self.phase {
                Phase::Draining { deadline } => deadline,
                Phase::Reading => {
                    let deadline = Instant::now() + config.drain_timeout;
                    self.phase = Phase::Draining { deadline };
                    deadline
                }
            };
            let unacked = match (config.commit, finished_range) {
                (false, _) => 0,
                (true, true) => shared.ledger.unacked(assigned),
                // Stopping early: events after the cutoff wait for a restart.
                (true, false) => shared.ledger.unacked_before(assigned, shared.flow.cutoff()),
            };
            if !live || unacked == 0 || Instant::now() >= deadline {
                if live {
                    if unacked > 0 {
                        tracing::warn!(
                            worker = self.worker,
                            unacked,
                            "drain timeout: in-flight events stay uncommitted and will be re-read"
                        );
                    }
                    ctx.commit_acked(&self.consumer, assigned, CommitMode::Sync);
                }
                if let Some(since) = self.pressure.since.take() {
                    shared.flow.add_paused_micros(since.elapsed().as_micros() as u64);
                }
                tracing::info!(worker = self.worker, topic = %config.topic, "source finished");
                let seen = self.max_ts.values().map(|v| v.0).max();
                shared
                    .watermarks
                    .publish(&config.topic, self.worker, self.peers, None, seen, None);
                if let Some(link) = self.link.as_mut() {
                    let stopping = shared.flow.shutdown_requested();
                    link.send(&config.topic, (None, seen, stopping, self.frozen), true);
                }
                shared.flow.source_finished();
                return Next::Finished;
            }
        }
        if emitted > 0 && !want_pause {
            Next::Now
        } else {
            Next::Soon
        }
    }
}
