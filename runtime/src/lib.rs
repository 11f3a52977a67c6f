//! The runtime of a topology: builds one timely dataflow from a topology's configuration and
//! plan (sources, decode, features, score gate, micro-batching, inference threads, sinks), runs
//! it (restart replay, live reload of the micro-batch window, the HTTP endpoint of metrics and
//! health), and reports what it did.
#![deny(missing_docs)]

pub mod adapt;
pub mod cluster;
pub mod http;
pub mod recovery;
pub mod reload;
pub mod runner;

pub use runner::{run_topology, RunOptions, RunReport};
