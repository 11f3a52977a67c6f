//! Feature definitions and the operator that turns decoded transactions into feature rows.
//!
//! For now only per-transaction features exist (no per-entity windows yet); they follow the
//! Fraud Detection Handbook, chapter 3, "Baseline feature transformation", date/time part. All
//! times are UTC.
//!
//! | name                | value                                                           |
//! |---------------------|-----------------------------------------------------------------|
//! | `amount`            | the transaction amount, currency units                          |
//! | `tx_hour`           | hour of day of the transaction time, `[0, 24)`, fractional      |
//! | `tx_during_weekend` | 1 if the transaction is on a Saturday or Sunday, else 0         |
//! | `tx_during_night`   | 1 if the hour of day is <= 6 (handbook: 0 h to 6 h), else 0     |
//!
//! ```
//! use weir_feature_store::{Feature, FeatureSet};
//! let set = FeatureSet::parse(&["amount", "tx_during_weekend"]).unwrap();
//! assert_eq!(set.features(), &[Feature::Amount, Feature::TxDuringWeekend]);
//! assert!(FeatureSet::parse(&["amount", "velocity"]).is_err());
//! ```
#![deny(missing_docs)]

use timely::dataflow::operators::vec::Map;
use timely::dataflow::StreamVec;
use timely::progress::Timestamp;
use weir_core::{FeatureRow, RowMeta, Transaction};

/// Errors in feature definitions.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FeatureError {
    /// A feature name weir does not know.
    #[error("unknown feature `{name}` (known: {known})")]
    Unknown {
        /// The name given.
        name: String,
        /// The known names.
        known: String,
    },
    /// The same feature listed twice.
    #[error("feature `{0}` listed twice")]
    Duplicate(String),
    /// No features.
    #[error("no features configured")]
    Empty,
}

/// One per-transaction feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Transaction amount, currency units.
    Amount,
    /// Hour of day, `[0, 24)`, fractional, UTC.
    TxHour,
    /// 1 on Saturday and Sunday (UTC), else 0.
    TxDuringWeekend,
    /// 1 if hour of day <= 6 (UTC), else 0.
    TxDuringNight,
}

const ALL: [(Feature, &str); 4] = [
    (Feature::Amount, "amount"),
    (Feature::TxHour, "tx_hour"),
    (Feature::TxDuringWeekend, "tx_during_weekend"),
    (Feature::TxDuringNight, "tx_during_night"),
];

impl Feature {
    /// The feature's configuration name.
    pub fn name(self) -> &'static str {
        ALL.iter().find(|(f, _)| *f == self).map(|(_, n)| *n).expect("every feature is named")
    }

    /// Computes the feature for `tx`.
    pub fn compute(self, tx: &Transaction) -> f32 {
        const DAY_MS: i64 = 86_400_000;
        let ms_of_day = tx.tx_time_ms.rem_euclid(DAY_MS);
        let hour = ms_of_day as f64 / 3_600_000.0;
        match self {
            Feature::Amount => tx.amount as f32,
            Feature::TxHour => hour as f32,
            Feature::TxDuringWeekend => {
                // 1970-01-01 was a Thursday: weekday 0 = Monday .. 6 = Sunday.
                let weekday = (tx.tx_time_ms.div_euclid(DAY_MS) + 3).rem_euclid(7);
                (weekday >= 5) as u8 as f32
            }
            Feature::TxDuringNight => (hour <= 6.0) as u8 as f32,
        }
    }
}

/// An ordered list of features: the model's input columns.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSet {
    features: Vec<Feature>,
}

impl FeatureSet {
    /// Parses feature names.
    ///
    /// # Errors
    /// [`FeatureError::Unknown`] naming the first unknown name, [`FeatureError::Duplicate`],
    /// [`FeatureError::Empty`].
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, FeatureError> {
        if names.is_empty() {
            return Err(FeatureError::Empty);
        }
        let mut features = Vec::new();
        for n in names {
            let n = n.as_ref();
            let f = ALL.iter().find(|(_, name)| *name == n).map(|(f, _)| *f).ok_or_else(|| {
                FeatureError::Unknown {
                    name: n.to_string(),
                    known: ALL.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", "),
                }
            })?;
            if features.contains(&f) {
                return Err(FeatureError::Duplicate(n.to_string()));
            }
            features.push(f);
        }
        Ok(Self { features })
    }

    /// The features in order.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// Whether the set is empty (never, for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// The feature vector of `tx`, `[n_features] f32`.
    pub fn compute(&self, tx: &Transaction) -> Vec<f32> {
        self.features.iter().map(|f| f.compute(tx)).collect()
    }
}

/// The feature operator: decoded transactions to feature rows (pipelined, stateless for now).
pub fn features<'s, T: Timestamp>(
    txs: StreamVec<'s, T, (RowMeta, Transaction)>,
    set: FeatureSet,
) -> StreamVec<'s, T, FeatureRow> {
    txs.map(move |(meta, tx)| FeatureRow { meta, features: set.compute(&tx) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(ms: i64) -> Transaction {
        Transaction { tx_id: 0, tx_time_ms: ms, customer_id: 0, terminal_id: 0, amount: 12.34 }
    }

    #[test]
    fn date_features_follow_the_calendar() {
        let set = FeatureSet::parse(&["amount", "tx_hour", "tx_during_weekend", "tx_during_night"]).unwrap();
        // 2018-04-01 was a Sunday; 00:07:56 UTC.
        let v = set.compute(&tx(1_522_540_800_000 + 476_000));
        assert_eq!(v[0], 12.34f32);
        assert!((v[1] - 476.0 / 3600.0).abs() < 1e-6);
        assert_eq!((v[2], v[3]), (1.0, 1.0));
        // 2018-04-02, Monday, 12:00 UTC.
        let v = set.compute(&tx(1_522_627_200_000 + 12 * 3_600_000));
        assert_eq!((v[1], v[2], v[3]), (12.0, 0.0, 0.0));
        // Saturday 2018-04-07 06:00 exactly is night (hour <= 6).
        let v = set.compute(&tx(1_523_059_200_000 + 6 * 3_600_000));
        assert_eq!((v[2], v[3]), (1.0, 1.0));
    }

    #[test]
    fn rejects_unknown_duplicate_and_empty() {
        assert!(matches!(FeatureSet::parse(&["amout"]), Err(FeatureError::Unknown { name, .. }) if name == "amout"));
        assert_eq!(FeatureSet::parse(&["amount", "amount"]), Err(FeatureError::Duplicate("amount".into())));
        assert_eq!(FeatureSet::parse::<&str>(&[]), Err(FeatureError::Empty));
    }
}
