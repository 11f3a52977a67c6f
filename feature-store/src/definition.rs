//! Feature definitions over a declared event schema: per-event features and per-entity windowed
//! aggregates, compiled to a [`FeatureSpec`].
//!
//! **Fields.** The feature store knows an event only through its declared fields
//! ([`FieldInfo`]: a name and a [`FieldKind`]) and their decoded values
//! ([`weir_core::Value`], one per field in declaration order). Nothing here names a domain.
//!
//! **Per-event features** ([`FeatureKind`]): a numeric field as is (`field`), a part of a
//! timestamp field (`time`: hour, day of week, weekend, night, UTC), a categorical field one-hot
//! (`one_hot`: one column per listed value, named `<name>_<value>`) or mapped through a table
//! (`map`, with a default for values not in it).
//!
//! **Windowed features** (`window`, the default kind): for an event at time `t`, a feature with
//! window `w` and delay `d` aggregates its entity's events with time `t_i` in the half-open
//! interval `(t - d - w, t - d]` (the Fraud Detection Handbook's, chapter 3, "Baseline feature
//! transformation", pandas `rolling("<w>d")`). With `d = 0` that includes the current event and
//! every other of the entity at the same millisecond. An empty window gives 0 (every
//! aggregation). An entity is one integer or string field, or a combination of them (e.g. card +
//! merchant); aggregations are `count`, `sum`, `mean`, `min`, `max` of a numeric field (`of`),
//! and `ratio` of the label: labels arrived by `t` with value 1 over all the entity's events in
//! the window, labelled or not (the handbook's `NB_TX_WINDOW` denominator). A label of an event
//! at `t_i`, available at `a_i` (its Kafka message timestamp), counts for `t` when `t_i` is in the
//! window and `a_i <= t`.
//!
//! **Keys.** An entity key is a `u64`: an integer field's value (as `u64`), a string's xxh3
//! hash (64 bits; two distinct strings share a key with probability about `n^2 / 2^65` for `n`
//! entities, 3e-6 for ten million), a combination's chained xxh3 of its parts. Labels join
//! their event by the event id, keyed the same way.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use weir_core::{EventId, RowMeta, Value};

use crate::FeatureError;

/// A declared field's type, as the feature store needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// An integer (i64).
    Integer,
    /// A float (f64).
    Float,
    /// A string.
    String,
    /// A boolean (0 or 1 as a number).
    Bool,
    /// A timestamp, ms since the Unix epoch.
    Timestamp,
}

/// One declared field: its name, type, and whether every decoded event has a value for it
/// (required, or optional with a default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldInfo {
    /// The field's name.
    pub name: String,
    /// Its type.
    pub kind: FieldKind,
    /// Whether every event has a value (required, or a default).
    pub always: bool,
}

/// What a `[[feature]]` entry computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// A windowed aggregate over an entity's events (`entity`, `aggregation`, `window`, `delay`,
    /// `of`). The default.
    #[default]
    Window,
    /// A numeric (integer, float, bool, timestamp) field's value as is (`field`).
    Field,
    /// A part of a timestamp field (`part`, `field`: default the event-time field).
    Time,
    /// One column per value of `values` (`<name>_<value>`): 1 where the string field `field`
    /// equals it, else 0.
    OneHot,
    /// The value `table` gives the string field `field`, `default` where it has none.
    Map,
}

/// A part of a timestamp (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimePart {
    /// Hour of day, `[0, 24)`, fractional.
    Hour,
    /// Day of week, 0 = Monday .. 6 = Sunday (ISO 8601 order).
    DayOfWeek,
    /// 1 on Saturday and Sunday, else 0.
    Weekend,
    /// 1 if the integer hour of day is in `night_hours = [from, to)` (wrapping past midnight
    /// when `from > to`), else 0. The default `[0, 7)` is the handbook's `TX_DURING_NIGHT`
    /// (`tx_datetime.hour <= 6`, chapter 3).
    Night,
}

/// How a windowed feature aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Number of the entity's events in the window.
    Count,
    /// Sum of the field `of` (0 for an empty window).
    Sum,
    /// Mean of the field `of` (0 for an empty window).
    Mean,
    /// Least value of the field `of` (0 for an empty window).
    Min,
    /// Greatest value of the field `of` (0 for an empty window).
    Max,
    /// Events labelled 1 (labels arrived by the event's time) over all events in the window (0
    /// for an empty window). Needs `[labels]`. `fraud_ratio` is accepted for it.
    #[serde(alias = "fraud_ratio")]
    Ratio,
}

impl Aggregation {
    /// Whether it reads a numeric field (`of`).
    pub fn needs_field(self) -> bool {
        matches!(
            self,
            Aggregation::Sum | Aggregation::Mean | Aggregation::Min | Aggregation::Max
        )
    }
}

/// An entity: one field, or a combination of fields (`["card_id", "merchant_id"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EntityFields {
    /// One field.
    One(String),
    /// A combination (in this order).
    Many(Vec<String>),
}

impl EntityFields {
    /// The field names.
    pub fn names(&self) -> Vec<&str> {
        match self {
            EntityFields::One(f) => vec![f.as_str()],
            EntityFields::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// One `[[feature]]` entry of a topology file, as written. Which keys apply depends on `kind`;
/// [`FeatureSpec::new`] rejects a key that does not apply, naming it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureDef {
    /// Feature name (referenced from `model.features`); for `one_hot`, the prefix of its columns.
    pub name: String,
    /// What it computes (default `window`).
    #[serde(default)]
    pub kind: FeatureKind,
    /// `window`: the entity (a field or a list of fields).
    #[serde(default)]
    pub entity: Option<EntityFields>,
    /// `window`: the aggregation.
    #[serde(default)]
    pub aggregation: Option<Aggregation>,
    /// `window` with `sum`, `mean`, `min`, `max`: the numeric field aggregated.
    #[serde(default)]
    pub of: Option<String>,
    /// `window`: the window length, e.g. `"7d"`.
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// `window`: the delay before the window: it covers `(t - delay - window, t - delay]`.
    /// Default 0.
    #[serde(default, with = "humantime_serde")]
    pub delay: Option<Duration>,
    /// `field`, `time`, `one_hot`, `map`: the field read.
    #[serde(default)]
    pub field: Option<String>,
    /// `time`: the part.
    #[serde(default)]
    pub part: Option<TimePart>,
    /// `time` with `part = "night"`: `[from, to)` integer hours (default `[0, 7]`).
    #[serde(default)]
    pub night_hours: Option<[u32; 2]>,
    /// `one_hot`: the values that get a column.
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// `map`: value -> number.
    #[serde(default)]
    pub table: Option<BTreeMap<String, f64>>,
    /// `map`: the number of a value not in `table` (default 0).
    #[serde(default)]
    pub default: Option<f64>,
}

impl FeatureDef {
    /// A windowed feature of `entity` (one field).
    pub fn window(
        name: &str,
        entity: &str,
        aggregation: Aggregation,
        of: Option<&str>,
        window: Duration,
        delay: Duration,
    ) -> Self {
        Self {
            name: name.into(),
            entity: Some(EntityFields::One(entity.into())),
            aggregation: Some(aggregation),
            of: of.map(Into::into),
            window: Some(window),
            delay: Some(delay),
            ..Self::default()
        }
    }

    /// A per-event feature of kind `kind` reading `field`.
    pub fn per_event(name: &str, kind: FeatureKind, field: Option<&str>, part: Option<TimePart>) -> Self {
        Self {
            name: name.into(),
            kind,
            field: field.map(Into::into),
            part,
            ..Self::default()
        }
    }

    /// The column names this entry defines.
    fn column_names(&self) -> Vec<String> {
        match (self.kind, &self.values) {
            (FeatureKind::OneHot, Some(vs)) => vs.iter().map(|v| format!("{}_{v}", self.name)).collect(),
            _ => vec![self.name.clone()],
        }
    }
}

/// A stage of the keyed window operator: one entity, with at most one aggregated field.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Name: the entity's fields joined by `+` (and `:<field>` for a second stage of the same
    /// entity aggregating another field). Snapshots are named by it.
    pub name: String,
    /// The entity's fields (indices into the declared fields).
    pub entity: Vec<usize>,
    /// The aggregated field, if any accumulator sums one.
    pub measure: Option<usize>,
}

/// What one accumulator computes over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AccKind {
    /// +1 per event.
    Count,
    /// Plus the stage's measure in micro-units (1e-6) per event: integer, hence exact and
    /// independent of the order updates are applied in (any number of workers).
    Sum,
    /// +1 per label 1 that has arrived.
    Labels,
    /// The least measure in the window (micro-units).
    Min,
    /// The greatest measure in the window (micro-units).
    Max,
}

/// One accumulator: a windowed aggregate kept per entity of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Accumulator {
    /// The stage (index into [`FeatureSpec::stages`]).
    pub stage: usize,
    /// What it computes.
    pub kind: AccKind,
    /// Window length, ms.
    pub window_ms: u64,
    /// Delay, ms.
    pub delay_ms: u64,
}

/// One column of the model's input.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// A numeric field as is.
    Value {
        /// Field index.
        field: usize,
    },
    /// A part of a timestamp field.
    TimePart {
        /// Field index.
        field: usize,
        /// The part.
        part: TimePart,
        /// `[from, to)` hours for [`TimePart::Night`].
        night: [u32; 2],
    },
    /// 1 where the string field equals `value`.
    OneHot {
        /// Field index.
        field: usize,
        /// The value.
        value: String,
    },
    /// The table's number for the string field's value.
    Map {
        /// Field index.
        field: usize,
        /// value -> number.
        table: BTreeMap<String, f64>,
        /// For values not in the table.
        default: f64,
    },
    /// A windowed feature: its aggregation and the slots of its accumulators.
    Windowed {
        /// Name.
        name: String,
        /// Aggregation.
        aggregation: Aggregation,
        /// Slot of the numerator accumulator (count, sum, label count, min or max).
        numerator: usize,
        /// Slot of the denominator (event count) for mean and ratio, and for min and max (an
        /// empty window gives 0).
        denominator: Option<usize>,
    },
}

/// The ordered feature columns of a model, the stages and accumulators they need, and the
/// declared fields they read.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpec {
    columns: Vec<Column>,
    names: Vec<String>,
    stages: Vec<Stage>,
    accumulators: Vec<Accumulator>,
    fields: Vec<FieldInfo>,
}

/// Largest magnitude of an aggregated value: its micro-units (`v * 1e6`) fit an `i64`, and a
/// window's sum an `i128`.
pub const MAX_MEASURE: f64 = 9e12;

/// The index of field `f` for key `key` of entry `i` (`d`): declared, and present in every
/// event.
fn find_field(
    fields: &[FieldInfo],
    i: usize,
    d: &FeatureDef,
    key: &'static str,
    f: &str,
) -> Result<usize, FeatureError> {
    let at = fields
        .iter()
        .position(|x| x.name == f)
        .ok_or_else(|| field_err(i, &d.name, key, format!("`{f}` is not a field of [schema]")))?;
    if !fields[at].always {
        return Err(field_err(
            i,
            &d.name,
            key,
            format!("`{f}` is optional without a default: give it a default in [schema]"),
        ));
    }
    Ok(at)
}

fn field_err(index: usize, name: &str, key: &'static str, detail: impl Into<String>) -> FeatureError {
    FeatureError::Field {
        index,
        name: name.to_string(),
        key,
        detail: detail.into(),
    }
}

impl FeatureSpec {
    /// Resolves `names` (the model's input order) against the definitions `defs` over the
    /// declared `fields`; `event_time` is the event-time field (the default of `time`
    /// features), if the events carry one.
    ///
    /// # Errors
    /// [`FeatureError`]: an unknown or duplicate name, no features, or an entry that contradicts
    /// the schema ([`FeatureError::Field`] names the entry and its key: a field not declared, an
    /// entity on a float, a sum over a string, a zero window, a key that does not apply to its
    /// kind).
    pub fn new<S: AsRef<str>>(
        names: &[S],
        defs: &[FeatureDef],
        fields: &[FieldInfo],
        event_time: Option<usize>,
    ) -> Result<Self, FeatureError> {
        if names.is_empty() {
            return Err(FeatureError::Empty);
        }
        let mut all_names: Vec<String> = Vec::new();
        for (i, d) in defs.iter().enumerate() {
            let allowed: &[&str] = match d.kind {
                FeatureKind::Window => &["entity", "aggregation", "of", "window", "delay"],
                FeatureKind::Field => &["field"],
                FeatureKind::Time => &["field", "part", "night_hours"],
                FeatureKind::OneHot => &["field", "values"],
                FeatureKind::Map => &["field", "table", "default"],
            };
            let given = [
                ("entity", d.entity.is_some()),
                ("aggregation", d.aggregation.is_some()),
                ("of", d.of.is_some()),
                ("window", d.window.is_some()),
                ("delay", d.delay.is_some()),
                ("field", d.field.is_some()),
                ("part", d.part.is_some()),
                ("night_hours", d.night_hours.is_some()),
                ("values", d.values.is_some()),
                ("table", d.table.is_some()),
                ("default", d.default.is_some()),
            ];
            for (key, set) in given {
                if set && !allowed.contains(&key) {
                    return Err(field_err(
                        i,
                        &d.name,
                        key,
                        format!("does not apply to kind {:?}", d.kind),
                    ));
                }
            }
            for n in d.column_names() {
                if all_names.contains(&n) {
                    return Err(FeatureError::Duplicate(n));
                }
                all_names.push(n);
            }
        }
        let mut spec = FeatureSpec {
            fields: fields.to_vec(),
            ..FeatureSpec::empty()
        };
        // Every entry is checked, also one the model does not use.
        for (i, d) in defs.iter().enumerate() {
            let mut scratch = FeatureSpec {
                fields: fields.to_vec(),
                ..FeatureSpec::empty()
            };
            scratch.column(i, d, &d.column_names()[0], event_time)?;
        }
        let mut seen: Vec<&str> = Vec::new();
        for n in names {
            let n = n.as_ref();
            if seen.contains(&n) {
                return Err(FeatureError::Duplicate(n.to_string()));
            }
            seen.push(n);
            let Some((i, d)) = defs
                .iter()
                .enumerate()
                .find(|(_, d)| d.column_names().iter().any(|c| c == n))
            else {
                return Err(FeatureError::Unknown {
                    name: n.to_string(),
                    known: all_names.join(", "),
                });
            };
            let column = spec.column(i, d, n, event_time)?;
            spec.columns.push(column);
            spec.names.push(n.to_string());
        }
        Ok(spec)
    }

    fn empty() -> Self {
        FeatureSpec {
            columns: Vec::new(),
            names: Vec::new(),
            stages: Vec::new(),
            accumulators: Vec::new(),
            fields: Vec::new(),
        }
    }

    /// The column `n` of entry `i` (`d`).
    fn column(&mut self, i: usize, d: &FeatureDef, n: &str, event_time: Option<usize>) -> Result<Column, FeatureError> {
        let fields = &self.fields;
        let find = |i: usize, d: &FeatureDef, key: &'static str, f: &str| find_field(fields, i, d, key, f);
        Ok(match d.kind {
            FeatureKind::Field => {
                let f = d
                    .field
                    .as_deref()
                    .ok_or_else(|| field_err(i, &d.name, "field", "is required"))?;
                let at = find(i, d, "field", f)?;
                if fields[at].kind == FieldKind::String {
                    return Err(field_err(
                        i,
                        &d.name,
                        "field",
                        format!("`{f}` is a string: use kind \"one_hot\" or \"map\""),
                    ));
                }
                Column::Value { field: at }
            }
            FeatureKind::Time => {
                let at = match d.field.as_deref() {
                    Some(f) => find(i, d, "field", f)?,
                    None => event_time.ok_or_else(|| {
                        field_err(i, &d.name, "field", "is required: the events have no event-time field")
                    })?,
                };
                if fields[at].kind != FieldKind::Timestamp {
                    return Err(field_err(
                        i,
                        &d.name,
                        "field",
                        format!("`{}` is not a timestamp", fields[at].name),
                    ));
                }
                let part = d
                    .part
                    .ok_or_else(|| field_err(i, &d.name, "part", "is required (hour, day_of_week, weekend, night)"))?;
                let night = d.night_hours.unwrap_or([0, 7]);
                if night[0] > 24 || night[1] > 24 || night[0] == night[1] {
                    return Err(field_err(
                        i,
                        &d.name,
                        "night_hours",
                        "must be two different hours in 0..=24",
                    ));
                }
                Column::TimePart { field: at, part, night }
            }
            FeatureKind::OneHot | FeatureKind::Map => {
                let f = d
                    .field
                    .as_deref()
                    .ok_or_else(|| field_err(i, &d.name, "field", "is required"))?;
                let at = find(i, d, "field", f)?;
                if !matches!(
                    fields[at].kind,
                    FieldKind::String | FieldKind::Integer | FieldKind::Bool
                ) {
                    return Err(field_err(
                        i,
                        &d.name,
                        "field",
                        format!("`{f}` is not categorical (a string, integer or bool)"),
                    ));
                }
                if d.kind == FeatureKind::OneHot {
                    let prefix = format!("{}_", d.name);
                    let value = n.strip_prefix(&prefix).expect("a one-hot column's name").to_string();
                    Column::OneHot { field: at, value }
                } else {
                    let table = d
                        .table
                        .clone()
                        .ok_or_else(|| field_err(i, &d.name, "table", "is required"))?;
                    if let Some((k, v)) = table.iter().find(|(_, v)| !v.is_finite()) {
                        return Err(field_err(i, &d.name, "table", format!("`{k}` = {v} is not finite")));
                    }
                    Column::Map {
                        field: at,
                        table,
                        default: d.default.unwrap_or(0.0),
                    }
                }
            }
            FeatureKind::Window => self.windowed_column(i, d, n)?,
        })
    }

    fn windowed_column(&mut self, i: usize, d: &FeatureDef, n: &str) -> Result<Column, FeatureError> {
        let fields = self.fields.clone();
        let find = |i: usize, d: &FeatureDef, key: &'static str, f: &str| find_field(&fields, i, d, key, f);
        let window = d.window.ok_or_else(|| field_err(i, &d.name, "window", "is required"))?;
        if window.is_zero() {
            return Err(field_err(i, &d.name, "window", "must be greater than 0"));
        }
        let delay = d.delay.unwrap_or(Duration::ZERO);
        let aggregation = d.aggregation.ok_or_else(|| {
            field_err(
                i,
                &d.name,
                "aggregation",
                "is required (count, sum, mean, min, max, ratio)",
            )
        })?;
        let entity = d
            .entity
            .as_ref()
            .ok_or_else(|| field_err(i, &d.name, "entity", "is required"))?;
        let mut entity_fields = Vec::new();
        if entity.names().is_empty() {
            return Err(field_err(i, &d.name, "entity", "names no field"));
        }
        for f in entity.names() {
            let at = find(i, d, "entity", f)?;
            if !matches!(self.fields[at].kind, FieldKind::Integer | FieldKind::String) {
                return Err(field_err(
                    i,
                    &d.name,
                    "entity",
                    format!("`{f}` is not an integer or string field"),
                ));
            }
            if f.contains('/') {
                return Err(field_err(
                    i,
                    &d.name,
                    "entity",
                    format!("`{f}`: an entity field's name names snapshot files, and may not hold `/`"),
                ));
            }
            if entity_fields.contains(&at) {
                return Err(field_err(i, &d.name, "entity", format!("`{f}` listed twice")));
            }
            entity_fields.push(at);
        }
        let measure = match (aggregation.needs_field(), d.of.as_deref()) {
            (true, Some(f)) => {
                let at = find(i, d, "of", f)?;
                if !matches!(
                    self.fields[at].kind,
                    FieldKind::Integer | FieldKind::Float | FieldKind::Bool
                ) {
                    return Err(field_err(i, &d.name, "of", format!("`{f}` is not a numeric field")));
                }
                Some(at)
            }
            (true, None) => return Err(field_err(i, &d.name, "of", format!("is required for {aggregation:?}"))),
            (false, Some(_)) => {
                return Err(field_err(
                    i,
                    &d.name,
                    "of",
                    format!("does not apply to {aggregation:?}"),
                ))
            }
            (false, None) => None,
        };
        let stage = self.stage_for(entity_fields, measure);
        let acc = |kind| Accumulator {
            stage,
            kind,
            window_ms: window.as_millis() as u64,
            delay_ms: delay.as_millis() as u64,
        };
        let (num, den) = match aggregation {
            Aggregation::Count => (acc(AccKind::Count), None),
            Aggregation::Sum => (acc(AccKind::Sum), None),
            Aggregation::Mean => (acc(AccKind::Sum), Some(acc(AccKind::Count))),
            Aggregation::Min => (acc(AccKind::Min), Some(acc(AccKind::Count))),
            Aggregation::Max => (acc(AccKind::Max), Some(acc(AccKind::Count))),
            Aggregation::Ratio => (acc(AccKind::Labels), Some(acc(AccKind::Count))),
        };
        let numerator = self.slot(num);
        let denominator = den.map(|d| self.slot(d));
        Ok(Column::Windowed {
            name: n.to_string(),
            aggregation,
            numerator,
            denominator,
        })
    }

    /// The stage of `entity` aggregating `measure`: an existing one of the entity that has that
    /// measure, or none yet (it takes it), or that any measure fits (`None`); else a new one.
    fn stage_for(&mut self, entity: Vec<usize>, measure: Option<usize>) -> usize {
        let same = |s: &Stage| s.entity == entity;
        let found = match measure {
            None => self.stages.iter().position(same),
            Some(m) => self
                .stages
                .iter()
                .position(|s| same(s) && s.measure == Some(m))
                .or_else(|| self.stages.iter().position(|s| same(s) && s.measure.is_none())),
        };
        if let Some(at) = found {
            if measure.is_some() {
                self.stages[at].measure = measure;
            }
            return at;
        }
        let base: Vec<&str> = entity.iter().map(|f| self.fields[*f].name.as_str()).collect();
        let mut name = base.join("+");
        if self.stages.iter().any(|s| s.entity == entity) {
            name = format!("{name}:{}", measure.map_or("count", |m| self.fields[m].name.as_str()));
        }
        self.stages.push(Stage { name, entity, measure });
        self.stages.len() - 1
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

    /// The stages of the keyed window operator, in order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// The accumulators, indexed by slot.
    pub fn accumulators(&self) -> &[Accumulator] {
        &self.accumulators
    }

    /// The declared fields the spec was built over.
    pub fn fields(&self) -> &[FieldInfo] {
        &self.fields
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

    /// Whether any column needs labels.
    pub fn needs_labels(&self) -> bool {
        self.accumulators.iter().any(|a| a.kind == AccKind::Labels)
    }

    /// Whether stage `stage` reads labels.
    pub fn stage_needs_labels(&self, stage: usize) -> bool {
        self.accumulators
            .iter()
            .any(|a| a.stage == stage && a.kind == AccKind::Labels)
    }

    /// The fields a label message must carry besides its id, label and time: the entity fields
    /// of the stages that read labels (indices into the declared fields, without repeats).
    pub fn label_entity_fields(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, s) in self.stages.iter().enumerate() {
            if self.stage_needs_labels(i) {
                for f in &s.entity {
                    if !out.contains(f) {
                        out.push(*f);
                    }
                }
            }
        }
        out
    }

    /// The longest `window + delay` of the windowed columns, ms (0 without any).
    pub fn lookback_ms(&self) -> u64 {
        self.accumulators
            .iter()
            .map(|a| a.window_ms + a.delay_ms)
            .max()
            .unwrap_or(0)
    }

    /// Column names in order.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// The feature store's input for a decoded event: its stage keys and measures and its
    /// per-event columns (`values`: one per declared field, in declaration order).
    ///
    /// # Errors
    /// `(field, detail)` for a measure that is not finite or beyond ±[`MAX_MEASURE`] (it could
    /// not be summed exactly), a dead letter's `invalid_value`.
    pub fn event_row(&self, meta: RowMeta, values: &[Value]) -> Result<EventRow, (String, String)> {
        // Keys of every stage, then their measures.
        let mut inputs: SmallVec<[u64; 4]> = SmallVec::new();
        for s in &self.stages {
            inputs.push(entity_key(&s.entity, values));
        }
        for s in &self.stages {
            let m = match s.measure {
                Some(f) => {
                    let v = values[f].number().unwrap_or(0.0);
                    if v.is_nan() || v.abs() > MAX_MEASURE {
                        return Err((
                            self.fields[f].name.clone(),
                            format!("{v} is beyond ±{MAX_MEASURE:e}, the largest value a window sums exactly"),
                        ));
                    }
                    micros(v)
                }
                None => 0,
            };
            inputs.push(m as u64);
        }
        Ok(EventRow {
            values: self.event_values(values),
            meta,
            inputs,
        })
    }

    /// The per-event columns of an event (`values`: one per declared field), `[n_features]
    /// f64`, with 0 in the windowed columns (the keyed window operator fills them).
    pub fn event_values(&self, values: &[Value]) -> Vec<f64> {
        self.columns
            .iter()
            .map(|c| match c {
                Column::Value { field } => values[*field].number().unwrap_or(0.0),
                Column::TimePart { field, part, night } => match values[*field] {
                    Value::Time(ms) | Value::Int(ms) => time_part(*part, *night, ms),
                    _ => 0.0,
                },
                Column::OneHot { field, value } => category_is(&values[*field], value) as u8 as f64,
                Column::Map { field, table, default } => {
                    category(&values[*field], |c| table.get(c).copied()).unwrap_or(*default)
                }
                Column::Windowed { .. } => 0.0,
            })
            .collect()
    }
}

/// A categorical value's text, handed to `f`: a string as is, an integer's digits, a bool's
/// `true`/`false`.
fn category<R>(v: &Value, f: impl FnOnce(&str) -> Option<R>) -> Option<R> {
    match v {
        Value::Str(s) => f(s),
        Value::Int(i) => f(&i.to_string()),
        Value::Bool(b) => f(if *b { "true" } else { "false" }),
        _ => None,
    }
}

fn category_is(v: &Value, value: &str) -> bool {
    category(v, |c| Some(c == value)).unwrap_or(false)
}

/// A time part of `ms` (ms since the Unix epoch, UTC).
pub fn time_part(part: TimePart, night: [u32; 2], ms: i64) -> f64 {
    const DAY_MS: i64 = 86_400_000;
    match part {
        TimePart::Hour => ms.rem_euclid(DAY_MS) as f64 / 3_600_000.0,
        // 1970-01-01 was a Thursday: weekday 0 = Monday .. 6 = Sunday.
        TimePart::DayOfWeek => (ms.div_euclid(DAY_MS) + 3).rem_euclid(7) as f64,
        TimePart::Weekend => ((ms.div_euclid(DAY_MS) + 3).rem_euclid(7) >= 5) as u8 as f64,
        TimePart::Night => {
            let h = (ms.rem_euclid(DAY_MS) / 3_600_000) as u32;
            let [from, to] = night;
            let inside = if from < to {
                from <= h && h < to
            } else {
                h >= from || h < to
            };
            inside as u8 as f64
        }
    }
}

/// The key of an entity (its fields' `values`): an integer's value, a string's xxh3, a
/// combination's chained xxh3 (see the module doc).
#[inline]
pub fn entity_key(fields: &[usize], values: &[Value]) -> u64 {
    if let [f] = fields {
        return part_key(&values[*f]);
    }
    let mut h = 0u64;
    for f in fields {
        h = xxhash_rust::xxh3::xxh3_64_with_seed(&part_key(&values[*f]).to_le_bytes(), h);
    }
    h
}

#[inline]
fn part_key(v: &Value) -> u64 {
    match v {
        Value::Int(i) | Value::Time(i) => *i as u64,
        Value::Str(s) => xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
        Value::Bool(b) => *b as u64,
        Value::Float(f) => f.to_bits(),
        Value::Missing => 0,
    }
}

/// The key labels join an event by: its id's (an integer's value, a string's xxh3).
#[inline]
pub fn id_key(id: &EventId) -> u64 {
    match id {
        EventId::Int(i) => *i as u64,
        EventId::Str(s) => xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
    }
}

/// A value in micro-units (1e-6), the exact integer the accumulators sum.
#[inline]
pub fn micros(v: f64) -> i64 {
    (v * 1e6).round() as i64
}

/// An event as the feature store takes it: its identity, its key and measure per stage, and its
/// columns (per-event ones filled, windowed ones 0 until their stage reads them). Compact: the
/// keyed window operator moves it through every stage (120 bytes with two stages, plus the
/// columns' vector).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    /// Identity and lineage.
    pub meta: RowMeta,
    /// The entity key of each stage ([`FeatureSpec::stages`] order), then the measure of each
    /// stage in micro-units (`i64` bits; 0 where a stage aggregates no field).
    pub(crate) inputs: SmallVec<[u64; 4]>,
    /// Columns, `[n_features] f64`, in the spec's order.
    pub values: Vec<f64>,
}

impl EventRow {
    /// The entity key of stage `stage`.
    #[inline]
    pub fn key(&self, stage: usize) -> u64 {
        self.inputs[stage]
    }

    /// The entity keys, one per stage.
    pub fn keys(&self) -> &[u64] {
        &self.inputs[..self.inputs.len() / 2]
    }

    /// The measure of stage `stage`, micro-units.
    #[inline]
    pub fn measure(&self, stage: usize) -> i64 {
        self.inputs[self.inputs.len() / 2 + stage] as i64
    }

    /// The key labels join it by ([`id_key`] of its id).
    #[inline]
    pub fn join(&self) -> u64 {
        id_key(&self.meta.id)
    }
}

/// A label as the feature store takes it: the event it labels (join key, time, entity key per
/// stage), its value, and when it became known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelRow {
    /// The labelled event's join key ([`id_key`] of its id).
    pub join: u64,
    /// The labelled event's time, ms (where the label carries it; else 0, and the label finds
    /// its event by a scan of the entity's log).
    pub event_time_ms: i64,
    /// Entity key per stage (meaningful for the stages that read labels).
    pub keys: SmallVec<[u64; 2]>,
    /// 1 or 0.
    pub label: u8,
    /// When the label became known: its message timestamp, ms since the Unix epoch.
    pub available_at_ms: i64,
}

/// Where a label message's decoded values hold what a [`LabelRow`] needs: the positions of
/// the id, the label, the event time (if carried) and each declared field an entity of a
/// label-reading stage uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelLayout {
    /// Position of the id.
    pub id: usize,
    /// Position of the label (integer 0/1 or bool).
    pub label: usize,
    /// Position of the event time, if the label carries it.
    pub time: Option<usize>,
    /// Declared field index (of the events) -> position in the label's values.
    pub entity_fields: Vec<(usize, usize)>,
}

impl FeatureSpec {
    /// The [`LabelRow`] of a decoded label message (`values` laid out as `layout` says),
    /// available at `available_at_ms`.
    ///
    /// # Errors
    /// A message for a label value other than 0, 1, true or false.
    pub fn label_row(&self, layout: &LabelLayout, values: &[Value], available_at_ms: i64) -> Result<LabelRow, String> {
        let label = match &values[layout.label] {
            Value::Int(0) | Value::Bool(false) => 0,
            Value::Int(1) | Value::Bool(true) => 1,
            other => return Err(format!("label {other:?} is not 0, 1, true or false")),
        };
        let join = match &values[layout.id] {
            Value::Int(i) => *i as u64,
            Value::Str(s) => xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
            other => return Err(format!("id {other:?} is not an integer or string")),
        };
        let event_time_ms = match layout.time.map(|t| &values[t]) {
            Some(Value::Time(t)) | Some(Value::Int(t)) => *t,
            _ => 0,
        };
        // The label's values, re-indexed as the events' fields, for the entity keys.
        let mut keys = SmallVec::new();
        for (i, s) in self.stages.iter().enumerate() {
            if !self.stage_needs_labels(i) {
                keys.push(0);
                continue;
            }
            let at: Vec<usize> = s
                .entity
                .iter()
                .map(|f| {
                    layout
                        .entity_fields
                        .iter()
                        .find(|(e, _)| e == f)
                        .expect("the layout has every entity field")
                        .1
                })
                .collect();
            keys.push(entity_key(&at, values));
        }
        Ok(LabelRow {
            join,
            event_time_ms,
            keys,
            label,
            available_at_ms,
        })
    }
}

/// A windowed column's value from its accumulators' totals: `num` (the count, the sum or the
/// extreme in micro-units, or the label count) and `den` (the event count, for a mean, a
/// ratio, a min or a max). Count: `num`; sum, min, max: `num / 1e6`; mean: `num / den / 1e6`;
/// ratio: `num / den`; 0 for an empty window. The integers are converted to `f64` rounding to
/// nearest (as `i128 as f64`), with a fast path for totals that fit an `i64` (the same value).
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
        Aggregation::Min | Aggregation::Max => {
            if den == 0.0 {
                0.0
            } else {
                num / 1e6
            }
        }
        Aggregation::Ratio => {
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
pub(crate) fn i128_to_f64(v: i128) -> f64 {
    to_f64(v)
}

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

/// The Fraud Detection Handbook's simulated transaction fields (chapter 3), as declared in
/// `topologies/fraud-scoring.toml`: `tx_id`, `tx_time_ms`, `customer_id`, `terminal_id`,
/// `amount` (for tests and benchmarks that build a spec without a topology file).
pub fn handbook_fields() -> Vec<FieldInfo> {
    let f = |name: &str, kind| FieldInfo {
        name: name.into(),
        kind,
        always: true,
    };
    vec![
        f("tx_id", FieldKind::Integer),
        f("tx_time_ms", FieldKind::Timestamp),
        f("customer_id", FieldKind::Integer),
        f("terminal_id", FieldKind::Integer),
        f("amount", FieldKind::Float),
    ]
}

/// The Fraud Detection Handbook's baseline features (chapter 3), as in
/// `topologies/fraud-scoring.toml`: per transaction the amount, hour, weekend and night flags;
/// per customer, number of transactions and mean amount over 1, 7 and 30 days; per terminal,
/// with a 7-day delay, number of transactions and fraud ratio over 1, 7 and 30 days. Names
/// follow the handbook's columns in lower case.
pub fn handbook_features() -> Vec<FeatureDef> {
    let mut out = vec![
        FeatureDef::per_event("amount", FeatureKind::Field, Some("amount"), None),
        FeatureDef::per_event("tx_hour", FeatureKind::Time, None, Some(TimePart::Hour)),
        FeatureDef::per_event("tx_during_weekend", FeatureKind::Time, None, Some(TimePart::Weekend)),
        FeatureDef::per_event("tx_during_night", FeatureKind::Time, None, Some(TimePart::Night)),
    ];
    for days in [1u64, 7, 30] {
        let window = Duration::from_secs(days * 86_400);
        out.push(FeatureDef::window(
            &format!("customer_id_nb_tx_{days}day_window"),
            "customer_id",
            Aggregation::Count,
            None,
            window,
            Duration::ZERO,
        ));
        out.push(FeatureDef::window(
            &format!("customer_id_avg_amount_{days}day_window"),
            "customer_id",
            Aggregation::Mean,
            Some("amount"),
            window,
            Duration::ZERO,
        ));
    }
    for days in [1u64, 7, 30] {
        let window = Duration::from_secs(days * 86_400);
        let delay = Duration::from_secs(7 * 86_400);
        out.push(FeatureDef::window(
            &format!("terminal_id_nb_tx_{days}day_window"),
            "terminal_id",
            Aggregation::Count,
            None,
            window,
            delay,
        ));
        out.push(FeatureDef::window(
            &format!("terminal_id_risk_{days}day_window"),
            "terminal_id",
            Aggregation::Ratio,
            None,
            window,
            delay,
        ));
    }
    out
}

/// A handbook transaction's values in [`handbook_fields`] order (an array: no allocation).
pub fn handbook_values(tx_id: u64, tx_time_ms: i64, customer_id: u64, terminal_id: u64, amount: f64) -> [Value; 5] {
    [
        Value::Int(tx_id as i64),
        Value::Time(tx_time_ms),
        Value::Int(customer_id as i64),
        Value::Int(terminal_id as i64),
        Value::Float(amount),
    ]
}

/// A handbook label (`tx_fraud` of transaction `tx_id` at `tx_time_ms`, of `customer_id` and
/// `terminal_id`, known at `available_at_ms`) as `spec` (over [`handbook_fields`]) takes it.
pub fn handbook_label(
    spec: &FeatureSpec,
    tx_id: u64,
    tx_time_ms: i64,
    customer_id: u64,
    terminal_id: u64,
    tx_fraud: u8,
    available_at_ms: i64,
) -> LabelRow {
    let values = handbook_values(tx_id, tx_time_ms, customer_id, terminal_id, 0.0);
    LabelRow {
        join: tx_id,
        event_time_ms: tx_time_ms,
        keys: spec.stages().iter().map(|s| entity_key(&s.entity, &values)).collect(),
        label: tx_fraud,
        available_at_ms,
    }
}

/// The handbook's spec over [`handbook_fields`] with the event time in `tx_time_ms`.
///
/// # Errors
/// As [`FeatureSpec::new`] (an unknown name).
pub fn handbook_spec<S: AsRef<str>>(names: &[S]) -> Result<FeatureSpec, FeatureError> {
    FeatureSpec::new(names, &handbook_features(), &handbook_fields(), Some(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_night_flag_follows_the_handbook_integer_hour() {
        // Issue 13, item 7: the handbook's TX_DURING_NIGHT is `hour <= 6` on the integer hour.
        let day = 1_522_540_800_000i64; // 2018-04-01T00:00:00Z
        let at = |h: i64, m: i64, s: i64| time_part(TimePart::Night, [0, 7], day + ((h * 60 + m) * 60 + s) * 1000);
        assert_eq!(at(0, 0, 0), 1.0);
        assert_eq!(at(6, 0, 1), 1.0, "06:00:01 is night");
        assert_eq!(at(6, 59, 59), 1.0);
        assert_eq!(at(7, 0, 0), 0.0);
        assert_eq!(at(23, 59, 59), 0.0);
        // A night across midnight.
        let late = |h: i64| time_part(TimePart::Night, [22, 6], day + h * 3_600_000);
        assert_eq!(
            (late(21), late(22), late(23), late(0), late(5), late(6)),
            (0.0, 1.0, 1.0, 1.0, 1.0, 0.0)
        );
        assert_eq!(
            time_part(TimePart::DayOfWeek, [0, 7], day),
            6.0,
            "2018-04-01 was a Sunday"
        );
    }

    #[test]
    fn window_sums_of_large_accepted_amounts_do_not_wrap() {
        // Issue 13, item 6: two amounts of 6e12 gave a mean of -3.2e12 (i64 micro-units).
        let spec = handbook_spec(&["customer_id_avg_amount_1day_window"]).unwrap();
        let (num, den) = (2 * micros(6e12) as i128, 2);
        assert_eq!(windowed_value(Aggregation::Mean, num, den), 6e12);
        assert_eq!(spec.accumulators().len(), 2);
    }

    #[test]
    fn a_schema_that_contradicts_a_feature_is_rejected_naming_the_entry_and_key() {
        let fields = vec![
            FieldInfo {
                name: "id".into(),
                kind: FieldKind::String,
                always: true,
            },
            FieldInfo {
                name: "at".into(),
                kind: FieldKind::Timestamp,
                always: true,
            },
            FieldInfo {
                name: "amount".into(),
                kind: FieldKind::Float,
                always: true,
            },
            FieldInfo {
                name: "country".into(),
                kind: FieldKind::String,
                always: true,
            },
            FieldInfo {
                name: "note".into(),
                kind: FieldKind::String,
                always: false,
            },
        ];
        let w = |entity: &str, agg, of: Option<&str>| {
            FeatureDef::window("f", entity, agg, of, Duration::from_secs(60), Duration::ZERO)
        };
        let key_of = |d: FeatureDef| match FeatureSpec::new(&["f"], &[d], &fields, Some(1)) {
            Err(FeatureError::Field { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            key_of(w("merchant", Aggregation::Count, None)),
            "entity",
            "not declared"
        );
        assert_eq!(
            key_of(w("amount", Aggregation::Count, None)),
            "entity",
            "a float entity"
        );
        assert_eq!(
            key_of(w("note", Aggregation::Count, None)),
            "entity",
            "optional without default"
        );
        assert_eq!(
            key_of(w("country", Aggregation::Sum, Some("country"))),
            "of",
            "a sum over a string"
        );
        assert_eq!(key_of(w("country", Aggregation::Sum, None)), "of", "a sum of nothing");
        let mut zero = w("country", Aggregation::Count, None);
        zero.window = Some(Duration::ZERO);
        assert_eq!(key_of(zero), "window");
        let mut stray = FeatureDef::per_event("f", FeatureKind::Field, Some("amount"), None);
        stray.window = Some(Duration::from_secs(1));
        assert_eq!(key_of(stray), "window", "a key of another kind");
        assert_eq!(
            key_of(FeatureDef::per_event("f", FeatureKind::Field, Some("country"), None)),
            "field"
        );
        assert_eq!(
            key_of(FeatureDef::per_event(
                "f",
                FeatureKind::Time,
                Some("amount"),
                Some(TimePart::Hour)
            )),
            "field"
        );
    }

    #[test]
    fn stages_group_an_entitys_aggregates_with_one_measure_each() {
        let fields = vec![
            FieldInfo {
                name: "id".into(),
                kind: FieldKind::String,
                always: true,
            },
            FieldInfo {
                name: "card".into(),
                kind: FieldKind::String,
                always: true,
            },
            FieldInfo {
                name: "merchant".into(),
                kind: FieldKind::Integer,
                always: true,
            },
            FieldInfo {
                name: "amount".into(),
                kind: FieldKind::Float,
                always: true,
            },
            FieldInfo {
                name: "items".into(),
                kind: FieldKind::Integer,
                always: true,
            },
        ];
        let h = Duration::from_secs(3600);
        let defs = vec![
            FeatureDef::window("n", "card", Aggregation::Count, None, h, Duration::ZERO),
            FeatureDef::window("sum", "card", Aggregation::Sum, Some("amount"), h, Duration::ZERO),
            FeatureDef::window("max", "card", Aggregation::Max, Some("amount"), h, Duration::ZERO),
            FeatureDef::window("items", "card", Aggregation::Min, Some("items"), h, Duration::ZERO),
            FeatureDef {
                entity: Some(EntityFields::Many(vec!["card".into(), "merchant".into()])),
                ..FeatureDef::window("pair", "card", Aggregation::Count, None, h, Duration::ZERO)
            },
        ];
        let spec = FeatureSpec::new(&["n", "sum", "max", "items", "pair"], &defs, &fields, None).unwrap();
        let names: Vec<&str> = spec.stages().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["card", "card:items", "card+merchant"]);
        let values = vec![
            Value::Str("e1".into()),
            Value::Str("c9".into()),
            Value::Int(4),
            Value::Float(2.5),
            Value::Int(3),
        ];
        let meta = RowMeta {
            lineage: weir_core::Lineage {
                partition: 0,
                offset: 0,
            },
            id: EventId::Str(Box::new("e1".into())),
            event_time_ms: 0,
            read_at_us: 0,
        };
        let row = spec.event_row(meta, &values).unwrap();
        assert_eq!(
            (row.measure(0), row.measure(1), row.measure(2)),
            (2_500_000, 3_000_000, 0)
        );
        assert_eq!(row.key(0), xxhash_rust::xxh3::xxh3_64(b"c9"));
        assert_ne!(row.key(2), row.key(0));
        assert_eq!(row.join(), xxhash_rust::xxh3::xxh3_64(b"e1"));
        // What crosses processes in a cluster: timely writes it with bincode.
        let bytes = bincode::serialize(&row).expect("bincode");
        assert_eq!(bincode::deserialize::<EventRow>(&bytes).expect("bincode"), row);
        let label = LabelRow {
            keys: smallvec::smallvec![1, 2],
            join: 3,
            event_time_ms: 4,
            available_at_ms: 5,
            label: 1,
        };
        let bytes = bincode::serialize(&label).expect("bincode");
        assert_eq!(bincode::deserialize::<LabelRow>(&bytes).expect("bincode"), label);
    }

    #[test]
    fn event_ids_cross_processes_and_stay_untagged_in_json() {
        for id in [EventId::Int(-7), EventId::Str(Box::new("7f3a-uuid".into()))] {
            let bytes = bincode::serialize(&id).expect("bincode");
            assert_eq!(bincode::deserialize::<EventId>(&bytes).expect("bincode"), id);
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(serde_json::from_str::<EventId>(&json).unwrap(), id);
        }
        assert_eq!(serde_json::to_string(&EventId::Int(17)).unwrap(), "17");
        assert_eq!(
            serde_json::to_string(&EventId::Str(Box::new("a".into()))).unwrap(),
            "\"a\""
        );
    }
}
