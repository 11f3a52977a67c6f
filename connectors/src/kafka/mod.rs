//! Kafka connectors (rdkafka, bundled librdkafka).

pub mod admin;
pub mod embedded;
pub mod lag;
pub mod sink;
pub mod source;
#[cfg(test)]
mod test;

use std::collections::BTreeMap;

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
