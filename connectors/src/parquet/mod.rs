//! Parquet file connectors (Arrow + parquet crates).

pub mod features;
pub mod sink;
