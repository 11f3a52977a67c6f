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

/// A card transaction as the model sees it: the simulator's fields without the fraud label
/// (the label travels separately, on the `fraud-labels` topic, and arrives later).
///
/// Field names follow the Fraud Detection Handbook's simulated dataset (chapter 3), in snake case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transaction {
    /// Unique transaction id (monotone in transaction time within one generated dataset).
    pub tx_id: u64,
    /// Transaction time, milliseconds since the Unix epoch (UTC).
    pub tx_time_ms: i64,
    /// Customer (card) id.
    pub customer_id: u64,
    /// Terminal (merchant point of sale) id.
    pub terminal_id: u64,
    /// Amount in currency units (the handbook's dataset has no currency; two decimals).
    pub amount: f64,
}

/// The identity of one row in a micro-batch: everything about the event except its features.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RowMeta {
    /// Source partition and offset of the event.
    pub lineage: Lineage,
    /// Transaction id.
    pub tx_id: u64,
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
    /// Short machine-readable reason class, e.g. `"json"`, `"invalid_amount"`, `"inference"`.
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

/// A fraud label (a chargeback) as the feature store consumes it. Unknown JSON fields are ignored:
/// label feeds carry more than this (e.g. the simulator's `tx_fraud_scenario`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Label {
    /// The labelled transaction.
    pub tx_id: u64,
    /// Its time, ms since the Unix epoch (UTC).
    pub tx_time_ms: i64,
    /// Its customer (card).
    pub customer_id: u64,
    /// Its terminal.
    pub terminal_id: u64,
    /// 1 if fraudulent, else 0.
    pub tx_fraud: u8,
    /// When the label became known: its Kafka message timestamp, ms since the Unix epoch.
    #[serde(default)]
    pub available_at_ms: i64,
}
