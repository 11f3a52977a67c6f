//! An embedded Kafka broker: librdkafka's in-process mock cluster.
//!
//! Produce, consume, consumer groups and commits work; it does not support timestamp lookups
//! or transactions. It lives as long as this value; drop consumers and producers first.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::ConnectorError;

/// An in-process mock Kafka cluster with one broker.
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedKafka {
    /// Starts a mock cluster.
    ///
    /// # Errors
    /// [`ConnectorError::Kafka`] if librdkafka cannot create it.
    pub fn start() -> Result<Self, ConnectorError> {
        let cluster = MockCluster::new(1).map_err(ConnectorError::kafka("start the embedded broker"))?;
        Ok(Self { cluster })
    }

    /// The `host:port` list to connect to.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates `topic` with `partitions` partitions (the mock has no CreateTopics API).
    ///
    /// # Errors
    /// [`ConnectorError::Kafka`] if the mock refuses.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), ConnectorError> {
        self.cluster
            .create_topic(topic, partitions, 1)
            .map_err(ConnectorError::kafka(format!("create topic `{topic}`")))
    }

    /// Makes the next `errors.len()` Produce requests (of any client) fail with `errors`, in
    /// order: for tests of delivery failures.
    pub fn fail_next_produce(&self, errors: &[rdkafka::types::RDKafkaRespErr]) {
        self.cluster
            .request_errors(rdkafka::types::RDKafkaApiKey::Produce, errors);
    }
}
