//! The feature store: one definition of each feature serves live scoring, backfills and training
//! sets.
//!
//! - [`definition`]: features over a declared event schema: per-event ones (a field as is,
//!   time parts, one-hot and mapped categoricals) and per-entity windowed aggregates (count,
//!   sum, mean, min, max of a field, ratio of a label, over a window, optionally delayed), with
//!   their exact window semantics;
//! - [`keyed`]: the keyed window operator that maintains them, point-in-time correct: per
//!   entity a compact time-ordered log and running sums with one eviction cursor per window; an
//!   event's features are its entities' aggregates as of its event time, emitted once the
//!   frontier has passed that time;
//! - [`windows`]: the entry point ([`windowed_features`]) the topologies use.
//!
//! ```
//! use weir_feature_store::definition::handbook_spec;
//! let spec = handbook_spec(&["amount", "customer_id_nb_tx_7day_window"]).unwrap();
//! assert!(spec.is_windowed() && !spec.needs_labels());
//! assert!(handbook_spec(&["amount", "velocity"]).is_err());
//! ```
#![deny(missing_docs)]

pub mod definition;
pub mod keyed;
pub mod snapshot;
pub mod windows;

pub use definition::{
    handbook_features, handbook_fields, handbook_spec, Aggregation, EventRow, FeatureDef, FeatureKind, FeatureSpec,
    FieldInfo, FieldKind, LabelRow, TimePart,
};
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
    /// A `[[feature]]` entry that is incomplete or contradicts the schema, naming the key.
    #[error("feature[{index}] (`{name}`): `{key}` {detail}")]
    Field {
        /// Index in the `[[feature]]` list.
        index: usize,
        /// Its name.
        name: String,
        /// The key at fault (`entity`, `of`, `field`, `window`, ...).
        key: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// No features.
    #[error("no features configured")]
    Empty,
}
