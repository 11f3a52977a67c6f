//! Topologies: the configuration schema, the wiring of one timely dataflow from a configuration,
//! the transaction generator's Kafka/file output, evaluation of scores against labels, and the
//! `weir` command-line tool (`src/bin/weir.rs`).
#![deny(missing_docs)]

pub mod backfill;
pub mod bench;
pub mod config;
pub mod demo;
pub mod eval;
pub mod export;
pub mod generate;
pub mod http;
pub mod latency;
pub mod recovery;
pub mod reload;
pub mod runner;
pub mod tune;

pub use config::TopologyConfig;
pub use runner::{run_topology, RunOptions, RunReport};
