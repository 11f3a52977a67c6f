//! Shared vocabulary of weir's crates: the records that flow through a topology, the delivery
//! ledger that turns sink acknowledgements into committable Kafka offsets, the flow-control
//! state that carries backpressure from the micro-batcher back to the source, and metrics.
//!
//! This crate knows nothing of Kafka clients, models or feature definitions; it only names the
//! things the other crates hand to each other.
#![deny(missing_docs)]

pub mod clock;
pub mod flow;
pub mod ledger;
pub mod metrics;
pub mod periodic;
pub mod record;
pub mod sink;

pub use flow::FlowControl;
pub use ledger::DeliveryLedger;
pub use metrics::Metrics;
pub use record::{DeadLetter, EventId, FeatureRow, Lineage, RowMeta, SourceEvent, Value};
pub use sink::{DeadLetterSink, ScoreSink, SinkError};
