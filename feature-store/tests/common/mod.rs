//! The simulator's transactions and labels as the feature store takes them (shared by the
//! integration tests of this crate).

use weir_core::{EventId, Lineage, RowMeta};
use weir_feature_store::definition::{handbook_label, handbook_values, EventRow, FeatureSpec, LabelRow};
use weir_simulator::{FraudLabel, Transaction};

/// `tx` as a row of `spec` (over the handbook's fields), at offset `tx_id` of partition 0.
pub fn event_row(spec: &FeatureSpec, tx: &Transaction) -> EventRow {
    let meta = RowMeta {
        lineage: Lineage {
            partition: 0,
            offset: tx.tx_id as i64,
        },
        id: EventId::Int(tx.tx_id as i64),
        event_time_ms: tx.tx_time_ms,
        read_at_us: 0,
    };
    spec.event_row(
        meta,
        &handbook_values(tx.tx_id, tx.tx_time_ms, tx.customer_id, tx.terminal_id, tx.amount),
    )
    .unwrap()
}

/// `l` as a label of `spec`.
pub fn label_row(spec: &FeatureSpec, l: &FraudLabel) -> LabelRow {
    handbook_label(
        spec,
        l.tx_id,
        l.tx_time_ms,
        l.customer_id,
        l.terminal_id,
        l.tx_fraud,
        l.available_at_ms,
    )
}
