//! The feature store: one definition of each feature serves live scoring, backfills and training
//! sets.
//!
//! - [`definition`]: per-transaction features (amount, hour, weekend, night) and per-entity
//!   windowed aggregates (count, sum, mean, fraud ratio over a window, optionally delayed), with
//!   their exact window semantics;
//! - [`keyed`]: the keyed window operator that maintains them, point-in-time correct: per
//!   entity a compact time-ordered log and running sums with one eviction cursor per window; a
//!   transaction's features are its entities' aggregates as of its event time, emitted once the
//!   frontier has passed that time;
//! - [`windows`]: the entry point ([`windowed_features`]) the topologies use.
//!
//! ```
//! use weir_feature_store::definition::{handbook_features, FeatureSpec};
//! let spec = FeatureSpec::new(&["amount", "customer_id_nb_tx_7day_window"], &handbook_features()).unwrap();
//! assert!(spec.is_windowed() && !spec.needs_labels());
//! assert!(FeatureSpec::new(&["amount", "velocity"], &handbook_features()).is_err());
//! ```
#![deny(missing_docs)]

pub mod definition;
pub mod keyed;
pub mod snapshot;
pub mod windows;

pub use definition::{handbook_features, Aggregation, Entity, Feature, FeatureSpec, WindowedFeature};
pub use windows::{windowed_features, windowed_features_with, FeatureValues};

/// Errors in feature definitions.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FeatureError {
    /// A feature name that is neither built in nor defined.
    #[error("unknown feature `{name}` (known: {known})")]
    Unknown {
        /// The name given.
        name: String,
        /// The known names.
        known: String,
    },
    /// The same feature listed or defined twice.
    #[error("feature `{0}` listed or defined twice")]
    Duplicate(String),
    /// A windowed feature with a zero window.
    #[error("feature[{index}] (`{name}`): window must be greater than 0")]
    ZeroWindow {
        /// Index in the `[[feature]]` list.
        index: usize,
        /// Its name.
        name: String,
    },
    /// No features.
    #[error("no features configured")]
    Empty,
}
