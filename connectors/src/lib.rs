//! Connectors of a weir topology: they know Kafka and files, and nothing of models.
//!
//! - [`kafka::source`]: a timely source operator over a Kafka topic (consumer group, partitions
//!   spread over timely workers, start position, offsets committed only once acknowledged),
//!   or a bounded range up to the high watermarks seen at start;
//! - [`kafka::sink`]: score and dead-letter sinks (idempotent producer), acknowledging through
//!   the [`DeliveryLedger`](weir_core::DeliveryLedger);
//! - [`parquet::sink`]: a Parquet file sink through Arrow;
//! - [`kafka::embedded`]: librdkafka's in-process mock cluster, for the demo and fast tests;
//! - [`kafka::admin`]: producing, reading and describing topics (generator, demo, tests).
#![deny(missing_docs)]

pub mod kafka;
pub mod parquet;

/// How the score sinks write an event's id: under its schema field's name, as a number or as a
/// string (the id as it came: Kafka JSON `{"<name>": 17, ...}` or `{"<name>": "7f3a", ...}`;
/// Parquet column `<name>`, `Int64` or `Utf8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdColumn {
    /// The id field's name.
    pub name: String,
    /// Whether ids are strings (else integers).
    pub string: bool,
}

impl IdColumn {
    /// Integer ids named `name`.
    pub fn int(name: &str) -> Self {
        Self {
            name: name.into(),
            string: false,
        }
    }
}

/// Errors of connectors.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A Kafka client call failed.
    #[error("kafka ({context}): {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A topic does not exist or has no partitions.
    #[error("topic `{0}` not found on the broker")]
    TopicNotFound(String),
    /// Offsets could not be looked up by timestamp.
    #[error("kafka ({context}): {detail}")]
    OffsetLookup {
        /// What was being done.
        context: String,
        /// What went wrong, and what to do instead.
        detail: String,
    },
    /// A client configuration that weir refuses (it would break a delivery guarantee).
    #[error("{context}: {detail}")]
    Config {
        /// The property, and the client it was given to.
        context: String,
        /// Why weir refuses it.
        detail: String,
    },
    /// The brokers did not answer.
    #[error("cannot reach the Kafka broker(s) at `{brokers}` ({field}) within {timeout:?}: {detail}; check the address and that a broker listens there")]
    Unreachable {
        /// The bootstrap servers tried.
        brokers: String,
        /// Where they were configured (`source.brokers`, `--brokers`).
        field: String,
        /// How long weir waited.
        timeout: std::time::Duration,
        /// The client's message.
        detail: String,
    },
    /// File I/O or Parquet encoding failed.
    #[error("{context}: {detail}")]
    File {
        /// What was being done.
        context: String,
        /// The underlying message.
        detail: String,
    },
}

impl ConnectorError {
    pub(crate) fn kafka(context: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let context = context.into();
        move |source| ConnectorError::Kafka { context, source }
    }
}
