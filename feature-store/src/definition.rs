//! Feature definitions: per-transaction features and per-entity windowed aggregates.
//!
//! Window semantics (the Fraud Detection Handbook's, chapter 3, "Baseline feature
//! transformation", pandas `rolling("<w>d")` on the transaction time): for a transaction at time
//! `t`, a feature with window `w` and delay `d` aggregates the entity's transactions with time
//! `t_i` in the half-open interval `(t - d - w, t - d]`. With `d = 0` that includes the current
//! transaction, and every other transaction of the entity at the same millisecond. An empty
//! window gives 0 (count, sum, mean and fraud ratio alike).
//!
//! Fraud ratios count only labels that have *arrived* by `t`: a label (`tx_fraud = 1`) of a
//! transaction at `t_i`, available at `a_i` (its Kafka message timestamp), counts for `t` when
//! `t_i` is in the window and `a_i <= t`. The denominator counts all the entity's transactions in
//! the window, labelled or not (as the handbook's `NB_TX_WINDOW`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::FeatureError;

/// A per-transaction feature (no state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Transaction amount, currency units.
    Amount,
    /// Hour of day, `[0, 24)`, fractional, UTC.
    TxHour,
    /// 1 on Saturday and Sunday (UTC), else 0.
    TxDuringWeekend,
    /// 1 if the integer hour of day (UTC) is at most 6, i.e. from 00:00:00 to 06:59:59.999,
    /// else 0: the handbook's `TX_DURING_NIGHT` (`tx_datetime.hour <= 6`, chapter 3, "Baseline
    /// feature transformation").
    TxDuringNight,
}

pub(crate) const BUILTIN: [(Feature, &str); 4] = [
    (Feature::Amount, "amount"),
    (Feature::TxHour, "tx_hour"),
    (Feature::TxDuringWeekend, "tx_during_weekend"),
    (Feature::TxDuringNight, "tx_during_night"),
];

impl Feature {
    /// The feature's configuration name.
    pub fn name(self) -> &'static str {
        BUILTIN
            .iter()
            .find(|(f, _)| *f == self)
            .map(|(_, n)| *n)
            .expect("every feature is named")
    }

    /// Computes the feature for a transaction at `tx_time_ms` (ms since the Unix epoch) of
    /// `amount` currency units.
    pub fn compute(self, tx_time_ms: i64, amount: f64) -> f64 {
        const DAY_MS: i64 = 86_400_000;
        let hour = tx_time_ms.rem_euclid(DAY_MS) as f64 / 3_600_000.0;
        match self {
            Feature::Amount => amount,
            Feature::TxHour => hour,
            Feature::TxDuringWeekend => {
                // 1970-01-01 was a Thursday: weekday 0 = Monday .. 6 = Sunday.
                let weekday = (tx_time_ms.div_euclid(DAY_MS) + 3).rem_euclid(7);
                (weekday >= 5) as u8 as f64
            }
            Feature::TxDuringNight => (tx_time_ms.rem_euclid(DAY_MS) / 3_600_000 <= 6) as u8 as f64,
        }
    }
}

/// The entity a windowed feature is kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Entity {
    /// Per card (`customer_id`).
    #[serde(rename = "customer_id")]
    Customer,
    /// Per terminal (`terminal_id`).
    #[serde(rename = "terminal_id")]
    Terminal,
}

/// How a windowed feature aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Number of the entity's transactions in the window.
    Count,
    /// Sum of their amounts, currency units.
    Sum,
    /// Mean of their amounts, currency units (0 for an empty window).
    Mean,
    /// Fraudulent (labels arrived by the transaction's time) over all transactions in the window
    /// (0 for an empty window). Needs a labels source.
    FraudRatio,
}

/// A windowed per-entity feature, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowedFeature {
    /// Feature name (referenced from `model.features`).
    pub name: String,
    /// Entity key.
    pub entity: Entity,
    /// Aggregation.
    pub aggregation: Aggregation,
    /// Window length, e.g. `"7d"`.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Delay before the window: it covers `(t - delay - window, t - delay]`. Default 0.
    #[serde(with = "humantime_serde", default)]
    pub delay: Duration,
}

/// What one accumulator sums over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AccKind {
    /// +1 per transaction.
    TxCount,
    /// Plus the amount in micro-units (1e-6 currency units) per transaction: integer, hence exact
    /// and independent of the order updates are applied in (any number of workers).
    AmountMicros,
    /// +1 per fraud label that has arrived.
    FraudCount,
}

/// One accumulator: a windowed sum kept per entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Accumulator {
    /// Entity key.
    pub entity: Entity,
    /// What is summed.
    pub kind: AccKind,
    /// Window length, ms.
    pub window_ms: u64,
    /// Delay, ms.
    pub delay_ms: u64,
}

/// One column of the model's input.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// A per-transaction feature.
    Builtin(Feature),
    /// A windowed feature: its aggregation and the slots of its accumulators.
    Windowed {
        /// Name.
        name: String,
        /// Aggregation.
        aggregation: Aggregation,
        /// Slot of the numerator accumulator (count, amount sum, or fraud count).
        numerator: usize,
        /// Slot of the denominator (transaction count) for mean and fraud ratio.
        denominator: Option<usize>,
    },
}

/// The ordered feature columns of a model and the accumulators they need.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpec {
    columns: Vec<Column>,
    accumulators: Vec<Accumulator>,
}

impl FeatureSpec {
    /// Resolves `names` (the model's input order) against the built-in features and `windowed`.
    ///
    /// # Errors
    /// [`FeatureError`]: an unknown or duplicate name, a zero window, no features.
    pub fn new<S: AsRef<str>>(names: &[S], windowed: &[WindowedFeature]) -> Result<Self, FeatureError> {
        if names.is_empty() {
            return Err(FeatureError::Empty);
        }
        for (i, w) in windowed.iter().enumerate() {
            if w.window.is_zero() {
                return Err(FeatureError::ZeroWindow {
                    index: i,
                    name: w.name.clone(),
                });
            }
            if BUILTIN.iter().any(|(_, n)| *n == w.name) || windowed[..i].iter().any(|o| o.name == w.name) {
                return Err(FeatureError::Duplicate(w.name.clone()));
            }
        }
        let mut spec = FeatureSpec {
            columns: Vec::new(),
            accumulators: Vec::new(),
        };
        let mut seen: Vec<&str> = Vec::new();
        for n in names {
            let n = n.as_ref();
            if seen.contains(&n) {
                return Err(FeatureError::Duplicate(n.to_string()));
            }
            seen.push(n);
            if let Some((f, _)) = BUILTIN.iter().find(|(_, name)| *name == n) {
                spec.columns.push(Column::Builtin(*f));
                continue;
            }
            let Some(w) = windowed.iter().find(|w| w.name == n) else {
                let mut known: Vec<&str> = BUILTIN.iter().map(|(_, n)| *n).collect();
                known.extend(windowed.iter().map(|w| w.name.as_str()));
                return Err(FeatureError::Unknown {
                    name: n.to_string(),
                    known: known.join(", "),
                });
            };
            let acc = |kind| Accumulator {
                entity: w.entity,
                kind,
                window_ms: w.window.as_millis() as u64,
                delay_ms: w.delay.as_millis() as u64,
            };
            let (num, den) = match w.aggregation {
                Aggregation::Count => (acc(AccKind::TxCount), None),
                Aggregation::Sum => (acc(AccKind::AmountMicros), None),
                Aggregation::Mean => (acc(AccKind::AmountMicros), Some(acc(AccKind::TxCount))),
                Aggregation::FraudRatio => (acc(AccKind::FraudCount), Some(acc(AccKind::TxCount))),
            };
            let numerator = spec.slot(num);
            let denominator = den.map(|d| spec.slot(d));
            spec.columns.push(Column::Windowed {
                name: n.to_string(),
                aggregation: w.aggregation,
                numerator,
                denominator,
            });
        }
        Ok(spec)
    }

    fn slot(&mut self, acc: Accumulator) -> usize {
        match self.accumulators.iter().position(|a| *a == acc) {
            Some(i) => i,
            None => {
                self.accumulators.push(acc);
                self.accumulators.len() - 1
            }
        }
    }

    /// The columns in order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The accumulators, indexed by slot.
    pub fn accumulators(&self) -> &[Accumulator] {
        &self.accumulators
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether there are no columns (never, for a built spec).
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Whether any column needs per-entity state (and so the windowed dataflow).
    pub fn is_windowed(&self) -> bool {
        !self.accumulators.is_empty()
    }

    /// Whether any column needs fraud labels.
    pub fn needs_labels(&self) -> bool {
        self.accumulators.iter().any(|a| a.kind == AccKind::FraudCount)
    }

    /// Column names in order.
    pub fn names(&self) -> Vec<String> {
        self.columns
            .iter()
            .map(|c| match c {
                Column::Builtin(f) => f.name().to_string(),
                Column::Windowed { name, .. } => name.clone(),
            })
            .collect()
    }

    /// The feature values of a transaction given its accumulator totals (`acc[slot]`, 0 for an
    /// empty window; amounts in micro-units), `[n_features] f64`.
    pub fn values(&self, tx_time_ms: i64, amount: f64, acc: &[i128]) -> Vec<f64> {
        self.columns
            .iter()
            .map(|c| match c {
                Column::Builtin(f) => f.compute(tx_time_ms, amount),
                Column::Windowed {
                    aggregation,
                    numerator,
                    denominator,
                    ..
                } => windowed_value(*aggregation, acc[*numerator], denominator.map_or(1, |d| acc[d])),
            })
            .collect()
    }

    /// The per-transaction values of a transaction, `[n_features] f64`, with 0 in the windowed
    /// columns (the keyed window operator fills them with [`windowed_value`]).
    pub fn builtin_values(&self, tx_time_ms: i64, amount: f64) -> Vec<f64> {
        self.columns
            .iter()
            .map(|c| match c {
                Column::Builtin(f) => f.compute(tx_time_ms, amount),
                Column::Windowed { .. } => 0.0,
            })
            .collect()
    }
}

/// A windowed column's value from its accumulators' totals: `num` (the count, the amount sum in
/// micro-units, or the fraud count) and `den` (the transaction count for a mean or a fraud
/// ratio, else unused). Count: `num`; sum: `num / 1e6`; mean: `num / den / 1e6`; fraud ratio:
/// `num / den`; 0 for an empty window. The integers are converted to `f64` rounding to nearest
/// (as `i128 as f64`), with a fast path for totals that fit an `i64` (the same value).
pub fn windowed_value(aggregation: Aggregation, num: i128, den: i128) -> f64 {
    let num = to_f64(num);
    let den = to_f64(den);
    match aggregation {
        Aggregation::Count => num,
        Aggregation::Sum => num / 1e6,
        Aggregation::Mean => {
            if den == 0.0 {
                0.0
            } else {
                num / den / 1e6
            }
        }
        Aggregation::FraudRatio => {
            if den == 0.0 {
                0.0
            } else {
                num / den
            }
        }
    }
}

/// `v as f64` (round to nearest); through `i64` when it fits, which gives the same value without
/// the software 128-bit conversion (kept out of line, or the compiler folds both into it).
#[inline]
fn to_f64(v: i128) -> f64 {
    #[inline(never)]
    fn wide(v: i128) -> f64 {
        v as f64
    }
    match i64::try_from(v) {
        Ok(v) => v as f64,
        Err(_) => wide(v),
    }
}

/// An amount in micro-units (1e-6 currency units), the exact integer the accumulators sum.
pub fn amount_micros(amount: f64) -> i64 {
    (amount * 1e6).round() as i64
}

/// The Fraud Detection Handbook's baseline windowed features (chapter 3): per customer, number of
/// transactions and mean amount over 1, 7 and 30 days; per terminal, with a 7-day delay, number of
/// transactions and fraud ratio over 1, 7 and 30 days. Names follow the handbook's columns in
/// lower case.
pub fn handbook_features() -> Vec<WindowedFeature> {
    let mut out = Vec::new();
    for days in [1u64, 7, 30] {
        let window = Duration::from_secs(days * 86_400);
        out.push(WindowedFeature {
            name: format!("customer_id_nb_tx_{days}day_window"),
            entity: Entity::Customer,
            aggregation: Aggregation::Count,
            window,
            delay: Duration::ZERO,
        });
        out.push(WindowedFeature {
            name: format!("customer_id_avg_amount_{days}day_window"),
            entity: Entity::Customer,
            aggregation: Aggregation::Mean,
            window,
            delay: Duration::ZERO,
        });
    }
    for days in [1u64, 7, 30] {
        let window = Duration::from_secs(days * 86_400);
        let delay = Duration::from_secs(7 * 86_400);
        out.push(WindowedFeature {
            name: format!("terminal_id_nb_tx_{days}day_window"),
            entity: Entity::Terminal,
            aggregation: Aggregation::Count,
            window,
            delay,
        });
        out.push(WindowedFeature {
            name: format!("terminal_id_risk_{days}day_window"),
            entity: Entity::Terminal,
            aggregation: Aggregation::FraudRatio,
            window,
            delay,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_night_flag_follows_the_handbook_integer_hour() {
        // Issue 13, item 7: the handbook's TX_DURING_NIGHT is `hour <= 6` on the integer hour.
        let day = 1_522_540_800_000i64; // 2018-04-01T00:00:00Z
        let at = |h: i64, m: i64, s: i64| Feature::TxDuringNight.compute(day + ((h * 60 + m) * 60 + s) * 1000, 1.0);
        assert_eq!(at(0, 0, 0), 1.0);
        assert_eq!(at(6, 0, 1), 1.0, "06:00:01 is night");
        assert_eq!(at(6, 59, 59), 1.0);
        assert_eq!(at(7, 0, 0), 0.0);
        assert_eq!(at(23, 59, 59), 0.0);
    }

    #[test]
    fn window_sums_of_large_accepted_amounts_do_not_wrap() {
        // Issue 13, item 6: two amounts of 6e12 gave a mean of -3.2e12 (i64 micro-units).
        let spec = FeatureSpec::new(&["customer_id_avg_amount_1day_window"], &handbook_features()).unwrap();
        let slots = spec.accumulators().len();
        let mut acc = vec![0i128; slots];
        for (slot, a) in spec.accumulators().iter().enumerate() {
            acc[slot] = match a.kind {
                AccKind::TxCount => 2,
                AccKind::AmountMicros => 2 * amount_micros(6e12) as i128,
                AccKind::FraudCount => 0,
            };
        }
        assert_eq!(spec.values(0, 6e12, &acc), vec![6e12]);
    }
}
