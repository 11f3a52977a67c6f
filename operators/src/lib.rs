//! Operators of a weir topology that know batching and inference, and nothing of Kafka:
//!
//! - [`decode`]: bytes to the values of the topology's declared schema, malformed events to dead
//!   letters with a reason;
//! - [`micro_batch`]: collects feature rows into micro-batches, flushed when `max_batch_rows` is
//!   reached or the oldest row has waited `max_wait` (a timer), handed to inference over a bounded
//!   queue of `max_inflight_batches` (backpressure);
//! - [`inference`]: ONNX Runtime sessions (ort) with execution providers in configured order,
//!   run on their own threads, writing scores to a sink.
#![deny(missing_docs)]

pub mod adaptive;
pub mod batch;
pub mod decode;
pub mod inference;
pub mod micro_batch;
pub mod model_switch;
pub mod schema;

pub use batch::Batch;

/// Every `reason` a dead letter of a topology can carry (label of `weir_dead_letters_total`):
/// the decoder's (`json`, `schema`, `too_large`, `invalid_value`, `invalid_time`; see
/// [`decode`]), inference's (`inference`: the batch's run failed or gave non-finite scores) and
/// the score sink's (`sink`: the broker refused the score record).
pub const DEAD_LETTER_REASONS: [&str; 7] = [
    "json",
    "schema",
    "too_large",
    "invalid_value",
    "invalid_time",
    "inference",
    "sink",
];
