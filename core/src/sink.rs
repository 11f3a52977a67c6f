//! The interfaces between the inference operator and the sinks.
//!
//! A sink acknowledges delivery asynchronously: when a score (or dead letter) is durably written,
//! the sink calls [`crate::DeliveryLedger::ack`] for its lineage. Offsets are committed only for
//! acknowledged events, which gives at-least-once delivery.

use crate::record::{DeadLetter, RowMeta};
use std::time::Duration;

/// Errors a sink reports to its caller.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink's client rejected a record outright (e.g. a full local queue that did not drain
    /// within the sink's send timeout).
    #[error("sink `{sink}` could not enqueue a record: {detail}")]
    Enqueue {
        /// Sink name (topic or path).
        sink: String,
        /// Client's message.
        detail: String,
    },
    /// Writing or flushing failed.
    #[error("sink `{sink}` failed: {detail}")]
    Io {
        /// Sink name (topic or path).
        sink: String,
        /// Underlying error message.
        detail: String,
    },
    /// `flush` did not see every record acknowledged within its timeout.
    #[error("sink `{sink}`: {pending} records still unacknowledged after {timeout:?}")]
    FlushTimeout {
        /// Sink name (topic or path).
        sink: String,
        /// Records still in flight.
        pending: usize,
        /// The timeout that expired.
        timeout: Duration,
    },
}

/// Where scores go: a Kafka topic, a Parquet file, ...
pub trait ScoreSink: Send + Sync {
    /// Writes one micro-batch of scores: `rows[i]` scored `scores[i]` (the model's output column, e.g. a
    /// probability, `[rows] f32`) by model `model_version`. Returns once the records are handed to
    /// the sink's client; acknowledgement arrives later through the ledger.
    fn write(&self, rows: &[RowMeta], scores: &[f32], model_version: &str) -> Result<(), SinkError>;

    /// Waits until every record written so far is acknowledged (or `timeout` passes).
    fn flush(&self, timeout: Duration) -> Result<(), SinkError>;

    /// Flushes and finalizes the output (e.g. writes a Parquet file's footer). Called once, when
    /// the topology stops. The default is [`ScoreSink::flush`] with a 60 s timeout.
    fn close(&self) -> Result<(), SinkError> {
        self.flush(Duration::from_secs(60))
    }

    /// A short description for logs and summaries, e.g. `kafka:scores` or `parquet:out/x.parquet`.
    fn describe(&self) -> String;

    /// Where records this sink fails *after* `write` returned (a delivery report with a
    /// permanent error) go, so that their events are still acknowledged and commits move on.
    /// The default ignores it: a sink whose failures all surface from `write` needs none.
    fn set_dead_letters(&self, _dead_letters: std::sync::Arc<dyn DeadLetterSink>) {}
}

/// Where dead letters go (a Kafka topic).
pub trait DeadLetterSink: Send + Sync {
    /// Sends one dead letter; acknowledgement arrives later through the ledger.
    fn send(&self, letter: DeadLetter) -> Result<(), SinkError>;

    /// Waits until every dead letter sent so far is acknowledged (or `timeout` passes).
    fn flush(&self, timeout: Duration) -> Result<(), SinkError>;
}
