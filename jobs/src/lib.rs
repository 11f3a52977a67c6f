//! Backfill jobs: a bounded range of a topology's source topic (by time or by offsets) replayed
//! through the same operators as the live path, as a resumable batch job with a state file.
#![deny(missing_docs)]

pub mod backfill;
