//! Windowed per-entity features: the entry point shared by scoring, backfills, training-set
//! export and the benchmarks.
//!
//! Events without windowed features keep their per-event values ([`FeatureSpec::event_row`]). Otherwise
//! the keyed window operator ([`crate::keyed`]) computes them: exchanged by entity, a compact
//! time-ordered log per entity and running sums with an eviction cursor per window, processed in
//! event-time order once the frontier has passed, so a live run, a restart and a replay compute
//! the same values (bit for bit: the sums are integers, amounts in micro-units as `i128`).
//!
//! Records whose event time is behind their message's timely time (late beyond the allowed
//! lateness) are processed at that time instead.
//!
//! Superseded (2026-12-02): the first version kept each accumulator's total as of every time in
//! differential-dataflow arrangements (about 22 updates per transaction at millisecond times);
//! see `docs/design/2026-12-02-feature-store-v2.md` for why and what it cost.

use timely::dataflow::operators::vec::Map;
use timely::dataflow::StreamVec;
use weir_core::RowMeta;

use crate::definition::{EventRow, FeatureSpec, LabelRow};
use crate::keyed::Snapshots;

/// An event's feature vector, `[n_features] f64` in the spec's column order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeatureValues {
    /// Identity and lineage of the event.
    pub meta: RowMeta,
    /// Its processing time, ms: the event time its windows were read at (raised to its
    /// message's timely time if late). Rows are emitted at coarse timely times (an epoch at or
    /// before this), so this, not the timely time, says whether a row was complete before a
    /// source stopped.
    pub time: u64,
    /// Feature values in column order.
    pub values: Vec<f64>,
    /// The event's stage inputs (see [`EventRow`]), for [`FeatureValues::keys`].
    pub(crate) inputs: smallvec::SmallVec<[u64; 4]>,
}

impl FeatureValues {
    /// The event's entity key per stage ([`FeatureSpec::stages`] order).
    pub fn keys(&self) -> &[u64] {
        &self.inputs[..self.inputs.len() / 2]
    }
}

/// Computes the feature vectors of `txs` under `spec`, with fraud `labels` if the spec needs
/// them. Streams are timestamped with event time (ms, coarse: a watermark per poll round); the
/// output carries each transaction with its processing time ([`FeatureValues::time`]), emitted
/// once the frontier passes it (immediately if the spec has no windowed feature) at a timely
/// time at or before it.
///
/// # Panics
/// If the spec needs labels and `labels` is `None`: a topology validates this at start-up.
pub fn windowed_features<'s>(
    txs: StreamVec<'s, u64, EventRow>,
    labels: Option<StreamVec<'s, u64, LabelRow>>,
    spec: FeatureSpec,
) -> StreamVec<'s, u64, FeatureValues> {
    windowed_features_with(txs, labels, spec, &Snapshots::default())
}

/// [`windowed_features`] with snapshots of the keyed window operator's state: written every
/// interval where `snapshots.settings` says, and restored from `snapshots.restore` (see
/// [`crate::snapshot`]).
pub fn windowed_features_with<'s>(
    txs: StreamVec<'s, u64, EventRow>,
    labels: Option<StreamVec<'s, u64, LabelRow>>,
    spec: FeatureSpec,
    snapshots: &Snapshots,
) -> StreamVec<'s, u64, FeatureValues> {
    if !spec.is_windowed() {
        return txs.map(move |row| FeatureValues {
            time: row.meta.event_time_ms.max(0) as u64,
            values: row.values,
            inputs: row.inputs,
            meta: row.meta,
        });
    }
    crate::keyed::keyed_features(txs, labels, spec, snapshots)
}
