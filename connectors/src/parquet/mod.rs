//! Parquet file connectors (Arrow + parquet crates).

pub mod sink;
