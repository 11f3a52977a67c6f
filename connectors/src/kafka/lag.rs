//! Consumer lag per partition (`weir_consumer_lag_messages{topic,partition}`), measured off the
//! dataflow's threads.
//!
//! Sources publish the next offset they will read per partition into [`ConsumerPositions`]
//! about once a second; a [`LagMonitor`] thread asks the broker for each partition's high
//! watermark (ListOffsets, as `kafka-consumer-groups --describe` does) and sets
//! `lag = high watermark - next offset`. The broker round trips run on the monitor's own thread,
//! not on a timely worker, so a slow broker never stalls the dataflow; and they keep working
//! while backpressure has paused the partitions (librdkafka's own statistics stop updating the
//! high watermark of a paused partition, which fetches nothing).
//!
//! The same thread checks that the brokers answer (a metadata request per tick, 1 s timeout) and
//! publishes it as `weir_broker_reachable`, which the topology's readiness follows.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use weir_core::periodic::Periodic;
use weir_core::Metrics;

use super::client_config;
use crate::ConnectorError;

/// The position of a partition assigned and not read yet (see [`ConsumerPositions::set_unread`]).
const UNREAD: i64 = -1;

/// Next offset to read, per `(topic, partition)` a source of this process owns.
#[derive(Debug, Default)]
pub struct ConsumerPositions {
    next: Mutex<BTreeMap<(String, i32), i64>>,
}

impl ConsumerPositions {
    /// Records that `topic`/`partition` is assigned and has returned no message yet (its
    /// position is not known locally): the monitor reports its lag from the group's committed
    /// offset, or from the partition's first offset when the group has none (weir's default
    /// start). A known position is never replaced by this.
    pub fn set_unread(&self, topic: &str, partition: i32) {
        self.next
            .lock()
            .unwrap()
            .entry((topic.to_string(), partition))
            .or_insert(UNREAD);
    }

    /// Records that the next offset `topic`/`partition` will read is `next`.
    pub fn set(&self, topic: &str, partition: i32, next: i64) {
        self.next.lock().unwrap().insert((topic.to_string(), partition), next);
    }

    /// Forgets `partitions` of `topic` (revoked from the source that published them).
    pub fn remove(&self, topic: &str, partitions: &[i32]) {
        let mut next = self.next.lock().unwrap();
        for p in partitions {
            next.remove(&(topic.to_string(), *p));
        }
    }

    /// A copy of every known position.
    pub fn snapshot(&self) -> BTreeMap<(String, i32), i64> {
        self.next.lock().unwrap().clone()
    }
}

/// A thread that publishes the consumer lag every `interval`; stops when dropped.
pub struct LagMonitor {
    _thread: Periodic,
}

impl LagMonitor {
    /// Starts the monitor for the sources publishing into `positions`, asking `brokers` for high
    /// watermarks (one request per partition per `interval`, 2 s timeout each; a failed request
    /// leaves that partition's gauge, and those after it this tick, as they were), after a
    /// metadata request that sets
    /// `weir_broker_reachable` (while it fails, no watermark is asked for).
    ///
    /// # Errors
    /// [`ConnectorError::Kafka`] if the client cannot be created (bad properties).
    ///
    /// `group_id`: the sources' consumer group, whose committed offsets give the lag of a
    /// partition assigned and not read yet (the monitor never joins the group).
    pub fn spawn(
        brokers: &str,
        group_id: &str,
        properties: &BTreeMap<String, String>,
        positions: Arc<ConsumerPositions>,
        metrics: Arc<Metrics>,
        interval: Duration,
    ) -> Result<Self, ConnectorError> {
        let consumer: BaseConsumer = client_config(
            brokers,
            &[("enable.auto.commit", "false"), ("group.id", group_id)],
            properties,
        )
        .create()
        .map_err(ConnectorError::kafka("create lag monitor"))?;
        let mut reported: HashSet<(String, i32)> = HashSet::new();
        // Broker health: a metadata request (librdkafka never answers it from its cache).
        let check = |consumer: &BaseConsumer, metrics: &Metrics, was: Option<bool>| -> bool {
            let up = match consumer.fetch_metadata(None, Duration::from_secs(1)) {
                Ok(_) => true,
                Err(e) => {
                    if was != Some(false) {
                        tracing::warn!(error = %e, "Kafka brokers unreachable; not ready until they answer");
                    }
                    false
                }
            };
            if up && was == Some(false) {
                tracing::info!("Kafka brokers reachable again");
            }
            metrics.broker_reachable.set(up as i64);
            up
        };
        let mut reachable = check(&consumer, &metrics, None);
        let thread = Periodic::spawn("weir-lag", interval, move || {
            reachable = check(&consumer, &metrics, Some(reachable));
            if !reachable {
                return;
            }
            let now = positions.snapshot();
            for key in reported.iter().filter(|k| !now.contains_key(*k)) {
                let _ = metrics
                    .consumer_lag
                    .remove_label_values(&[key.0.as_str(), &key.1.to_string()]);
            }
            reported.retain(|k| now.contains_key(k));
            for ((topic, p), next) in &now {
                match consumer.fetch_watermarks(topic, *p, Duration::from_secs(2)) {
                    Ok((low, high)) => {
                        let next = if *next == UNREAD {
                            // Not read yet: from the group's committed offset, else the start.
                            let mut tpl = rdkafka::TopicPartitionList::new();
                            tpl.add_partition(topic, *p);
                            consumer
                                .committed_offsets(tpl, Duration::from_secs(2))
                                .ok()
                                .and_then(|c| c.elements().first().and_then(|e| e.offset().to_raw()))
                                .filter(|o| *o >= 0)
                                .unwrap_or(low)
                        } else {
                            *next
                        };
                        metrics
                            .consumer_lag
                            .with_label_values(&[topic.as_str(), &p.to_string()])
                            .set((high - next).max(0));
                        reported.insert((topic.clone(), *p));
                    }
                    Err(e) => {
                        // Likely the brokers went away: the next tick's metadata request says so
                        // (asking every other partition first would delay it by 2 s each).
                        tracing::debug!(topic = %topic, partition = p, error = %e, "lag: no high watermark");
                        break;
                    }
                }
            }
        });
        Ok(Self { _thread: thread })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_assignment() {
        let p = ConsumerPositions::default();
        p.set("t", 0, 5);
        p.set("t", 1, 7);
        p.set("u", 0, 1);
        p.set("t", 0, 6);
        p.remove("t", &[1]);
        let s = p.snapshot();
        assert_eq!(s.len(), 2);
        assert_eq!(s[&("t".to_string(), 0)], 6);
        assert_eq!(s[&("u".to_string(), 0)], 1);
    }

    #[test]
    fn the_monitor_publishes_high_watermark_minus_position() {
        let cluster = crate::kafka::embedded::EmbeddedKafka::start().unwrap();
        cluster.create_topic("lagged", 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let producer = crate::kafka::admin::BulkProducer::new(&brokers, &BTreeMap::new()).unwrap();
        for i in 0..10 {
            producer.send("lagged", None, format!("{i}").as_bytes(), None).unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let positions = Arc::new(ConsumerPositions::default());
        // Assigned, nothing read, nothing committed: the whole partition is lag.
        positions.set_unread("lagged", 0);
        let metrics = Arc::new(Metrics::new("t"));
        let _monitor = LagMonitor::spawn(
            &brokers,
            "lag-test",
            &BTreeMap::new(),
            positions.clone(),
            metrics.clone(),
            Duration::from_millis(50),
        )
        .unwrap();
        let gauge = || metrics.consumer_lag.with_label_values(&["lagged", "0"]).get();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while gauge() != 10 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(gauge(), 10, "10 messages, none read yet");
        positions.set("lagged", 0, 3);
        positions.set_unread("lagged", 0); // a known position stays
        while gauge() != 7 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(gauge(), 7, "10 messages, next offset 3");
        positions.set("lagged", 0, 10);
        while gauge() != 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(gauge(), 0);
        assert_eq!(metrics.broker_reachable.get(), 1);
    }
}
