//! Kafka connectors (rdkafka, bundled librdkafka).

pub mod admin;
pub mod embedded;
pub mod lag;
pub mod peers;
pub mod sink;
pub mod source;
#[cfg(test)]
mod test;

use std::collections::BTreeMap;

use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;

/// Builds a client configuration: weir's defaults for `role`, then the user's `properties`
/// (librdkafka property names, <https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md>),
/// which win.
pub fn client_config(brokers: &str, defaults: &[(&str, &str)], properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

/// librdkafka consumer properties that would break weir's delivery guarantees or bypass its
/// configuration, and why (`weir check` and start-up name the field).
pub fn unsafe_consumer_property(key: &str, value: &str) -> Option<&'static str> {
    match key {
        "enable.auto.commit" if value.trim() != "false" => {
            Some("weir commits only offsets whose output a sink acknowledged; auto-commit would commit unscored events")
        }
        "group.id" => Some("set the consumer group with source.group_id"),
        "bootstrap.servers" | "metadata.broker.list" => Some("set the brokers with source.brokers or --brokers"),
        _ => None,
    }
}

/// Builds a consumer (`producer = false`) or producer client from `properties` over weir's
/// defaults without connecting, so that a property librdkafka does not know, or a value it
/// refuses, is found before anything runs.
///
/// # Errors
/// librdkafka's message, e.g. `No such configuration property: "bogus"`.
pub fn check_client_properties(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    producer: bool,
) -> Result<(), String> {
    let mut props = properties.clone();
    if producer {
        props.retain(|k, _| k != "bootstrap.servers");
        client_config(brokers, &[], &props)
            .create::<rdkafka::producer::BaseProducer>()
            .map(drop)
            .map_err(|e| e.to_string())
    } else {
        props.entry("group.id".into()).or_insert_with(|| "weir-check".into());
        client_config(brokers, &[], &props)
            .create::<rdkafka::consumer::BaseConsumer>()
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Checks that `brokers` answer a metadata request within `timeout`.
///
/// # Errors
/// [`crate::ConnectorError::Unreachable`] naming the address and `field`, where they were
/// configured (`source.brokers`, `--brokers`).
pub fn check_reachable(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    field: &str,
    timeout: std::time::Duration,
) -> Result<(), crate::ConnectorError> {
    use rdkafka::consumer::Consumer;
    let unreachable = |detail: String| crate::ConnectorError::Unreachable {
        brokers: brokers.to_string(),
        field: field.to_string(),
        timeout,
        detail,
    };
    let mut props = properties.clone();
    props.insert("group.id".into(), "weir-reachability".into());
    let consumer: rdkafka::consumer::BaseConsumer = client_config(brokers, &[], &props)
        .create()
        .map_err(|e| unreachable(e.to_string()))?;
    consumer
        .fetch_metadata(None, timeout)
        .map(drop)
        .map_err(|e| unreachable(e.to_string()))
}

/// A message's headers as owned `(name, value)` pairs, in order (a header's value may be null);
/// empty when it has none. What a source event and a dead letter carry.
pub(crate) fn owned_headers(m: &impl Message) -> Vec<(String, Option<Vec<u8>>)> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}
