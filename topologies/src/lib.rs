//! Topologies: the configuration a topology file holds (serde + toml over weir's defaults,
//! validated, every error naming its field) and the plan it compiles to ([`plan`]). The runtime
//! (`weir-runtime`) builds a dataflow from them; the backfill job system (`weir-jobs`) and the
//! tools with the `weir` command (`weir-tools`) sit on top.
#![deny(missing_docs)]

pub mod config;
pub mod plan;

pub use config::TopologyConfig;
pub use plan::{FeaturePlan, Mode, ReadRanges, SinkSpec};
