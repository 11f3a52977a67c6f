//! The micro-batch handed from the micro-batcher to inference.

use ndarray::Array2;
use weir_core::metrics::FlushCause;
use weir_core::RowMeta;

/// One micro-batch: `rows.len()` events and their features, `[rows, n_features] f32`, row `i`
/// of `features` belonging to `rows[i]`.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Identity and lineage of each row.
    pub rows: Vec<RowMeta>,
    /// Feature matrix, `[rows, n_features] f32`, in the model's feature order.
    pub features: Array2<f32>,
    /// Why the batch was flushed.
    pub cause: FlushCause,
    /// When it was flushed ([`weir_core::clock::now_micros`], µs): the start of its `queue`
    /// stage.
    pub flushed_us: u64,
}

impl Batch {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}
