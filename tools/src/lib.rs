//! The tools beside the `weir` command (`src/bin/weir.rs`, a thin CLI over them): the demo on an
//! embedded broker, the benchmarks (`bench`, `bench-latency`, `bench-features`,
//! `bench-decode`), the micro-batch window sweep (`tune`), the transaction generator, the
//! training-set export and the evaluation of scores against labels.
#![deny(missing_docs)]

pub mod bench;
pub mod cluster_bench;
pub mod cuda_check;
pub mod demo;
pub mod eval;
pub mod export;
pub mod generate;
pub mod latency;
pub mod tune;
