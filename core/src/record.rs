//! Records that flow between a topology's operators.

use serde::{Deserialize, Serialize};

/// Where an event came from: its source partition and offset. Every score and every dead letter
/// carries the lineage of the event it was derived from, so that offsets are committed only once
/// everything derived from them has been acknowledged by a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Lineage {
    /// Source partition (Kafka partition id, or 0 for a file).
    pub partition: i32,
    /// Offset within the partition (Kafka offset, or line number for a file).
    pub offset: i64,
}

/// A raw event as read by a source, before decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceEvent {
    /// Source partition and offset.
    pub lineage: Lineage,
    /// Message key bytes, if any.
    pub key: Option<Vec<u8>>,
    /// Message payload bytes; `None` for a Kafka tombstone.
    pub payload: Option<Vec<u8>>,
    /// Message headers in order, `(name, value)` (a header's value may be null); empty when the
    /// message has none. A dead letter carries them unchanged.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The Kafka message timestamp (CreateTime or LogAppendTime), ms since the Unix epoch (UTC).
    pub timestamp_ms: i64,
    /// Event time as the source processes it, ms since the Unix epoch: the time the topology's
    /// `[source] event_time` names (a payload field, or the message timestamp), raised to its
    /// partition's watermark (the largest event time read before it in the partition, minus the
    /// allowed lateness) when it is behind it (a late event), and to the source's watermark.
    /// The first raise depends only on the partition's content, so a live run, a restart and a
    /// backfill process a late event at the same time; the second only applies to a partition
    /// that was idle. The watermark and the windows both follow this one value.
    pub event_time_ms: i64,
    /// When the source read the event, from [`crate::clock::now_micros`] (µs).
    pub read_at_us: u64,
}

/// An event's id as it came in its payload: an integer or a string (e.g. a UUID), carried to the
/// sinks unchanged (a number stays a number in the score record, a string stays a string).
/// Serialized untagged in human-readable formats (JSON: `17` or `"7f3a-..."`), and as a tagged
/// enum in binary ones (bincode, which timely uses between the processes of a cluster, cannot
/// read an untagged enum). 16 bytes: a string id is behind one thin pointer, so that the rows
/// every operator moves stay small (a `Box<str>` would make it 24).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(clippy::box_collection)]
pub enum EventId {
    /// An integer id.
    Int(i64),
    /// A string id.
    Str(Box<String>),
}

/// [`EventId`] as a binary format writes it.
#[derive(Serialize, Deserialize)]
#[allow(clippy::box_collection)]
enum TaggedId {
    Int(i64),
    Str(Box<String>),
}

/// [`EventId`] as a human-readable format writes it.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
#[allow(clippy::box_collection)]
enum UntaggedId {
    Int(i64),
    Str(Box<String>),
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            match self {
                EventId::Int(v) => s.serialize_i64(*v),
                EventId::Str(v) => s.serialize_str(v),
            }
        } else {
            match self {
                EventId::Int(v) => TaggedId::Int(*v),
                EventId::Str(v) => TaggedId::Str(v.clone()),
            }
            .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(if d.is_human_readable() {
            match UntaggedId::deserialize(d)? {
                UntaggedId::Int(v) => EventId::Int(v),
                UntaggedId::Str(v) => EventId::Str(v),
            }
        } else {
            match TaggedId::deserialize(d)? {
                TaggedId::Int(v) => EventId::Int(v),
                TaggedId::Str(v) => EventId::Str(v),
            }
        })
    }
}

impl Default for EventId {
    fn default() -> Self {
        EventId::Int(0)
    }
}

impl std::fmt::Display for EventId {
    /// The id as text: the integer's digits, or the string itself (unquoted; a Kafka key).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventId::Int(v) => write!(f, "{v}"),
            EventId::Str(s) => f.write_str(s),
        }
    }
}

impl EventId {
    /// The integer, if the id is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            EventId::Int(v) => Some(*v),
            EventId::Str(_) => None,
        }
    }
}

/// A decoded field value: what a declared event schema reads from a payload, one per declared
/// field in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A float (scaled as the schema declares, e.g. integer cents times 0.01).
    Float(f64),
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// A timestamp, ms since the Unix epoch (UTC).
    Time(i64),
    /// An optional field absent without a default.
    Missing,
}

impl Value {
    /// The value as a number: integers, floats and timestamps (ms) as `f64`, booleans as 0 or 1;
    /// `None` for a string or a missing value.
    #[inline]
    pub fn number(&self) -> Option<f64> {
        match self {
            Value::Int(v) | Value::Time(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            Value::Bool(b) => Some(*b as u8 as f64),
            Value::Str(_) | Value::Missing => None,
        }
    }
}

/// The identity of one row in a micro-batch: everything about the event except its features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowMeta {
    /// Source partition and offset of the event.
    pub lineage: Lineage,
    /// The event's id, as it came (the schema's `id` field).
    pub id: EventId,
    /// Event time, milliseconds since the Unix epoch (UTC).
    pub event_time_ms: i64,
    /// When the source read the event ([`crate::clock::now_micros`], µs).
    pub read_at_us: u64,
}

/// One decoded event with its feature vector, in the model's feature order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureRow {
    /// Identity and lineage of the event.
    pub meta: RowMeta,
    /// Feature values, `[n_features] f32`, in the order of the topology's `model.features`.
    pub features: Vec<f32>,
}

/// An event that could not be scored, with the reason. Sent to the dead-letter topic; it counts
/// as handled for offset commits once the dead-letter sink acknowledges it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Source partition and offset of the event.
    pub lineage: Lineage,
    /// Short machine-readable reason class, e.g. `"json"`, `"invalid_value"`, `"inference"`.
    pub reason: String,
    /// Human-readable detail (the parser's or the runtime's message).
    pub detail: String,
    /// The original message key, if any.
    pub key: Option<Vec<u8>>,
    /// The original payload bytes (possibly not UTF-8); `None` for a tombstone (null value),
    /// which the dead letter keeps null.
    pub payload: Option<Vec<u8>>,
    /// The original message headers, in order (the sink writes them before its own `weir.*`
    /// headers).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// When the source read the event ([`crate::clock::now_micros`], µs).
    pub read_at_us: u64,
}
