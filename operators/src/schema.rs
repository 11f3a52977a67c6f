//! A declared event schema and the decoder it defines: a topology's `[schema]` section compiles
//! to a [`Schema`], and the decode operator ([`crate::decode`]) runs it on every event.
//!
//! A [`Schema`] lists the fields weir reads from a JSON object, each with a [`FieldType`],
//! required or optional (with a default), and names the event id field (an integer or a
//! string, carried unchanged) and, optionally, the event time field. Other fields are skipped
//! unparsed, or rejected with [`UnknownFields::Reject`]. [`Schema::decode`] is total: every input
//! either decodes to one [`Value`] per declared field, in declaration order, or fails with a
//! [`SchemaError`] naming the field and a reason class (`json`, `schema`, `invalid_value`,
//! `invalid_time`) that becomes the dead letter's reason.
//!
//! ```
//! use weir_operators::schema::{FieldSpec, FieldType, Schema, TimeFormat, Value};
//! let schema = Schema::new(
//!     vec![
//!         FieldSpec::required("id", FieldType::String),
//!         FieldSpec::required("at", FieldType::Timestamp(TimeFormat::Rfc3339)),
//!         FieldSpec::required("amount_cents", FieldType::Float { scale: 0.01 }),
//!         FieldSpec::optional("country", FieldType::String, Some(Value::Str("??".into()))),
//!     ],
//!     "id",
//!     Some("at"),
//!     Default::default(),
//! )
//! .unwrap();
//! let v = schema
//!     .decode(br#"{"id":"7f3a","at":"2018-04-01T00:00:01Z","amount_cents":1250,"extra":[1]}"#)
//!     .unwrap();
//! assert_eq!(v[0], Value::Str("7f3a".into()));
//! assert_eq!(v[1], Value::Time(1522540801000));
//! assert_eq!(v[2], Value::Float(12.5));
//! assert_eq!(v[3], Value::Str("??".into()));
//! let e = schema.decode(br#"{"id":7,"at":"2018-04-01T00:00:01Z","amount_cents":1}"#).unwrap_err();
//! assert_eq!((e.field.as_deref(), e.reason), (Some("id"), "schema"));
//! ```

use std::collections::HashMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

mod fast;

/// The type of a declared field, and how its JSON value is read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldType {
    /// A JSON integer (i64).
    Integer,
    /// A JSON number as f64, scaled by `scale` (e.g. `0.01` for an amount in integer cents:
    /// divided by 100, correctly rounded, where `1 / scale` is an integer; else multiplied);
    /// must be finite.
    Float {
        /// Factor applied to the JSON number (1 for none).
        scale: f64,
    },
    /// A JSON string.
    String,
    /// A JSON boolean.
    Bool,
    /// A point in time, read as ms since the Unix epoch.
    Timestamp(TimeFormat),
}

/// How a timestamp field is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// Integer milliseconds since the Unix epoch.
    EpochMillis,
    /// Integer seconds since the Unix epoch.
    EpochSeconds,
    /// Integer microseconds since the Unix epoch.
    EpochMicros,
    /// RFC 3339 text (`2018-04-01T00:00:01Z`, `2018-04-01T02:00:01.5+02:00`), parsed by
    /// `humantime` (UTC offsets `Z` only) with a fallback for numeric offsets.
    Rfc3339,
}

pub use weir_core::Value;

/// One declared field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// The JSON key.
    pub name: String,
    /// Its type.
    pub kind: FieldType,
    /// Whether an event without it is a dead letter.
    pub required: bool,
    /// The value of an optional field that is absent (or JSON `null`); `None`: [`Value::Missing`].
    pub default: Option<Value>,
}

impl FieldSpec {
    /// A required field.
    pub fn required(name: &str, kind: FieldType) -> Self {
        Self {
            name: name.into(),
            kind,
            required: true,
            default: None,
        }
    }

    /// An optional field with `default` when absent.
    pub fn optional(name: &str, kind: FieldType, default: Option<Value>) -> Self {
        Self {
            name: name.into(),
            kind,
            required: false,
            default,
        }
    }
}

/// What to do with JSON keys the schema does not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownFields {
    /// Skip them unparsed (the default: producers add fields).
    #[default]
    Ignore,
    /// Dead-letter the event (`reason = "schema"`).
    Reject,
}

/// Why an event does not decode, or why a schema is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{detail}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
pub struct SchemaError {
    /// The field at fault, if one is.
    pub field: Option<String>,
    /// Reason class: `json` (not JSON), `schema` (not an object, missing, unknown or wrongly
    /// typed field), `invalid_value` (a non-finite number), `invalid_time` (a timestamp that
    /// does not parse or is out of range); `config` for an invalid declaration.
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

fn err(field: Option<&str>, reason: &'static str, detail: impl Into<String>) -> SchemaError {
    SchemaError {
        field: field.map(str::to_string),
        reason,
        detail: detail.into(),
    }
}

/// A validated event schema (see the module doc).
#[derive(Debug, Clone)]
pub struct Schema {
    fields: Vec<FieldSpec>,
    index: HashMap<String, usize>,
    id: usize,
    time: Option<usize>,
    unknown: UnknownFields,
    /// No declared name holds a quote, a backslash or a control character, so the fast path
    /// may compare a key with a name where it lies in the payload.
    plain_names: bool,
}

impl Schema {
    /// Builds a schema of `fields`, with event id `id` and event time `time` (a field name each).
    ///
    /// # Errors
    /// A [`SchemaError`] with reason `config` naming the field: a duplicate name, an id or time
    /// field not declared, an id that is not a required integer or string, a time field that is
    /// not a timestamp, a default of the wrong type, a scale that is not finite and non-zero.
    pub fn new(
        fields: Vec<FieldSpec>,
        id: &str,
        time: Option<&str>,
        unknown: UnknownFields,
    ) -> Result<Self, SchemaError> {
        let mut index = HashMap::new();
        for (i, f) in fields.iter().enumerate() {
            if index.insert(f.name.clone(), i).is_some() {
                return Err(err(Some(&f.name), "config", "declared twice"));
            }
            if let FieldType::Float { scale } = f.kind {
                if !scale.is_finite() || scale == 0.0 {
                    return Err(err(
                        Some(&f.name),
                        "config",
                        format!("scale {scale} is not a finite non-zero number"),
                    ));
                }
            }
            if let Some(d) = &f.default {
                let ok = matches!(
                    (f.kind, d),
                    (FieldType::Integer, Value::Int(_))
                        | (FieldType::Float { .. }, Value::Float(_))
                        | (FieldType::String, Value::Str(_))
                        | (FieldType::Bool, Value::Bool(_))
                        | (FieldType::Timestamp(_), Value::Time(_))
                );
                if !ok || f.required {
                    return Err(err(
                        Some(&f.name),
                        "config",
                        "a default must match the type, on an optional field",
                    ));
                }
            }
        }
        let id_at = *index
            .get(id)
            .ok_or_else(|| err(Some(id), "config", "the id field is not declared"))?;
        let idf = &fields[id_at];
        if !idf.required || !matches!(idf.kind, FieldType::Integer | FieldType::String) {
            return Err(err(
                Some(id),
                "config",
                "the id field must be a required integer or string",
            ));
        }
        let time_at = match time {
            None => None,
            Some(t) => {
                let at = *index
                    .get(t)
                    .ok_or_else(|| err(Some(t), "config", "the event time field is not declared"))?;
                if !fields[at].required || !matches!(fields[at].kind, FieldType::Timestamp(_)) {
                    return Err(err(
                        Some(t),
                        "config",
                        "the event time field must be a required timestamp",
                    ));
                }
                Some(at)
            }
        };
        let plain_names = fields
            .iter()
            .all(|f| f.name.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'));
        Ok(Self {
            fields,
            index,
            id: id_at,
            time: time_at,
            unknown,
            plain_names,
        })
    }

    /// The declared fields, in order (the order of [`Schema::decode`]'s values).
    pub fn fields(&self) -> &[FieldSpec] {
        &self.fields
    }

    /// Position of the event id field in the decoded values.
    pub fn id_index(&self) -> usize {
        self.id
    }

    /// Position of the event time field in the decoded values, if declared.
    pub fn time_index(&self) -> Option<usize> {
        self.time
    }

    /// Decodes one JSON object: one [`Value`] per declared field, in declaration order.
    ///
    /// # Errors
    /// A [`SchemaError`] naming the field and the reason (see the module doc).
    pub fn decode(&self, payload: &[u8]) -> Result<Vec<Value>, SchemaError> {
        let mut out = Vec::with_capacity(self.fields.len());
        self.decode_into(payload, &mut out)?;
        Ok(out)
    }

    /// The position of the field named `key`: a linear scan for the few fields an event
    /// usually has (cheaper than hashing the key), a hash lookup beyond 16.
    /// `hint`: where the key is expected (the field after the last one found: producers write
    /// keys in one order, so that one comparison usually finds it).
    #[inline]
    fn position_bytes(&self, key: &[u8], hint: usize) -> Option<usize> {
        // Keys are short: a byte loop beats a call to memcmp.
        let same = |f: &FieldSpec| {
            let name = f.name.as_bytes();
            name.len() == key.len() && name.iter().zip(key).all(|(a, b)| a == b)
        };
        if self.fields.get(hint).is_some_and(same) {
            return Some(hint);
        }
        if self.fields.len() <= 16 {
            self.fields.iter().position(same)
        } else {
            std::str::from_utf8(key).ok().and_then(|k| self.index.get(k).copied())
        }
    }

    /// As [`Schema::decode`], into `out` (overwritten; reuse it across events to save the
    /// allocation).
    ///
    /// # Errors
    /// As [`Schema::decode`]; `out` then holds no meaningful values.
    pub fn decode_into(&self, payload: &[u8], out: &mut Vec<Value>) -> Result<(), SchemaError> {
        // Every slot is written below (a value, a default or Missing): no clearing pass.
        out.resize(self.fields.len(), Value::Missing);
        if fast::decode(self, payload, out) {
            return Ok(());
        }
        self.decode_with_serde(payload, out)
    }

    /// [`Schema::decode_into`] through serde_json alone: what decides every input the fast path
    /// ([`fast`]) leaves to it, and the reference it is tested against.
    fn decode_with_serde(&self, payload: &[u8], out: &mut [Value]) -> Result<(), SchemaError> {
        let mut seen = Seen::new(self.fields.len());
        let mut de = serde_json::Deserializer::from_slice(payload);
        let mut failure: Option<SchemaError> = None;
        let r = de.deserialize_any(ObjectVisitor {
            schema: self,
            slots: out,
            seen: &mut seen,
            failure: &mut failure,
        });
        if let Some(f) = failure {
            return Err(f);
        }
        r.and_then(|()| de.end()).map_err(|e| {
            let reason = match e.classify() {
                serde_json::error::Category::Data => "schema",
                _ => "json",
            };
            err(None, reason, e.to_string())
        })?;
        for (i, f) in self.fields.iter().enumerate() {
            if !seen.get(i) {
                if f.required {
                    return Err(err(Some(&f.name), "schema", "missing"));
                }
                out[i] = f.default.clone().unwrap_or(Value::Missing);
            }
        }
        Ok(())
    }
}

impl Schema {
    /// The value of field `index` alone, reading nothing else of `payload` (other keys are
    /// skipped unparsed): `None` when the payload is not a JSON object, lacks the field, or its
    /// value does not decode. What a source needs of an event before decoding it (its time).
    pub fn read_field(&self, payload: &[u8], index: usize) -> Option<Value> {
        fast::read_field(self, payload, index).unwrap_or_else(|| self.read_field_with_serde(payload, index))
    }

    /// [`Schema::read_field`] through serde_json alone (what decides what the fast path leaves).
    fn read_field_with_serde(&self, payload: &[u8], index: usize) -> Option<Value> {
        struct One<'a>(&'a FieldSpec);
        impl<'de> DeserializeSeed<'de> for One<'_> {
            type Value = Option<Value>;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_map(self)
            }
        }
        impl<'de> Visitor<'de> for One<'_> {
            type Value = Option<Value>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a JSON object with `{}`", self.0.name)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut found = None;
                while let Some(is_field) = map.next_key_seed(KeyIs(&self.0.name))? {
                    if is_field && found.is_none() {
                        found = Some(map.next_value_seed(FieldSeed(self.0))?.ok().flatten());
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(found.flatten())
            }
        }
        let spec = self.fields.get(index)?;
        let mut de = serde_json::Deserializer::from_slice(payload);
        DeserializeSeed::deserialize(One(spec), &mut de).ok().flatten()
    }
}

/// A map key compared with a name, without allocating.
struct KeyIs<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// Which fields were given a value: a bit set, inline up to 128 fields.
enum Seen {
    Small(u128),
    Large(Vec<bool>),
}

impl Seen {
    fn new(n: usize) -> Self {
        if n <= 128 {
            Seen::Small(0)
        } else {
            Seen::Large(vec![false; n])
        }
    }

    fn get(&self, i: usize) -> bool {
        match self {
            Seen::Small(b) => b >> i & 1 == 1,
            Seen::Large(v) => v[i],
        }
    }

    fn set(&mut self, i: usize) {
        match self {
            Seen::Small(b) => *b |= 1 << i,
            Seen::Large(v) => v[i] = true,
        }
    }
}

struct ObjectVisitor<'a> {
    schema: &'a Schema,
    slots: &'a mut [Value],
    seen: &'a mut Seen,
    failure: &'a mut Option<SchemaError>,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let mut hint = 0;
        while let Some(key) = map.next_key_seed(KeySeed {
            schema: self.schema,
            hint,
        })? {
            match key {
                Ok(i) => {
                    hint = i + 1;
                    let spec = &self.schema.fields[i];
                    if self.seen.get(i) {
                        *self.failure = Some(err(Some(&spec.name), "schema", "duplicate key"));
                        return Err(A::Error::custom("duplicate key"));
                    }
                    match map.next_value_seed(FieldSeed(spec))? {
                        Ok(Some(v)) => {
                            self.slots[i] = v;
                            self.seen.set(i);
                        }
                        Ok(None) => {} // null: as absent
                        Err(e) => {
                            *self.failure = Some(*e);
                            return Err(A::Error::custom("field"));
                        }
                    }
                }
                Err(key) if self.schema.unknown == UnknownFields::Reject => {
                    *self.failure = Some(err(
                        Some(&key),
                        "schema",
                        "unknown field (schema.unknown_fields = \"reject\")",
                    ));
                    return Err(A::Error::custom("unknown field"));
                }
                Err(_) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Reads a key without allocating it: `Ok(position)` of a declared field, or `Err(name)` of an
/// undeclared one (the name is only copied when the schema rejects unknown fields).
struct KeySeed<'a> {
    schema: &'a Schema,
    hint: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Result<usize, String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Result<usize, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self
            .schema
            .position_bytes(key.as_bytes(), self.hint)
            .ok_or_else(|| match self.schema.unknown {
                UnknownFields::Reject => key.to_string(),
                UnknownFields::Ignore => String::new(),
            }))
    }
}

/// Reads one field's value: `Ok(None)` for JSON null, `Err` for a value of the wrong type.
struct FieldSeed<'a>(&'a FieldSpec);

/// Any JSON value, kept only as much as a field needs.
enum Raw {
    Bool(bool),
    I(i64),
    U(u64),
    F(f64),
    S(String),
    Other(&'static str),
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Result<Option<Value>, Box<SchemaError>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        // Each visit converts at once (`convert` inlined per JSON type, so only the branches of
        // that type remain), and an RFC 3339 string is parsed where it lies, not copied first.
        struct Typed<'a>(&'a FieldSpec);
        type Out = Result<Option<Value>, Box<SchemaError>>;
        impl<'de> Visitor<'de> for Typed<'_> {
            type Value = Out;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Out, E> {
                Ok(Ok(None))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Out, E> {
                Ok(convert(self.0, Raw::Bool(v)).map_err(Box::new))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Out, E> {
                Ok(convert(self.0, Raw::I(v)).map_err(Box::new))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Out, E> {
                Ok(convert(self.0, Raw::U(v)).map_err(Box::new))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Out, E> {
                Ok(convert(self.0, Raw::F(v)).map_err(Box::new))
            }
            fn visit_str<E>(self, v: &str) -> Result<Out, E> {
                if self.0.kind == FieldType::Timestamp(TimeFormat::Rfc3339) {
                    return Ok(rfc3339_ms(v).map(|t| Some(Value::Time(t))).ok_or_else(|| {
                        Box::new(err(
                            Some(&self.0.name),
                            "invalid_time",
                            format!("`{v}` is not an RFC 3339 time"),
                        ))
                    }));
                }
                Ok(convert(self.0, Raw::S(v.to_string())).map_err(Box::new))
            }
            fn visit_string<E>(self, v: String) -> Result<Out, E> {
                Ok(convert(self.0, Raw::S(v)).map_err(Box::new))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Out, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(convert(self.0, Raw::Other("an array")).map_err(Box::new))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Out, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(convert(self.0, Raw::Other("an object")).map_err(Box::new))
            }
        }
        d.deserialize_any(Typed(self.0))
    }
}

#[inline(always)]
fn convert(spec: &FieldSpec, raw: Raw) -> Result<Option<Value>, SchemaError> {
    let name = Some(spec.name.as_str());
    let wrong = |got: &str| {
        let want = match spec.kind {
            FieldType::Integer => "an integer",
            FieldType::Float { .. } => "a number",
            FieldType::String => "a string",
            FieldType::Bool => "a boolean",
            FieldType::Timestamp(TimeFormat::Rfc3339) => "an RFC 3339 string",
            FieldType::Timestamp(_) => "an integer timestamp",
        };
        Err(err(name, "schema", format!("{got}, expected {want}")))
    };
    let kind_of = |r: &Raw| match r {
        Raw::Bool(_) => "a boolean",
        Raw::I(_) | Raw::U(_) => "an integer",
        Raw::F(_) => "a float",
        Raw::S(_) => "a string",
        Raw::Other(o) => o,
    };
    let int = |r: &Raw| match *r {
        Raw::I(v) => Some(v),
        Raw::U(v) => i64::try_from(v).ok(),
        _ => None,
    };
    match spec.kind {
        FieldType::Integer => match int(&raw) {
            Some(v) => Ok(Some(Value::Int(v))),
            None if matches!(raw, Raw::U(_)) => Err(err(name, "invalid_value", "integer out of the i64 range")),
            None => wrong(kind_of(&raw)),
        },
        FieldType::Float { scale } => {
            let v = match raw {
                Raw::I(v) => v as f64,
                Raw::U(v) => v as f64,
                Raw::F(v) => v,
                ref r => return wrong(kind_of(r)),
            };
            let v = apply_scale(v, scale);
            if v.is_finite() {
                Ok(Some(Value::Float(v)))
            } else {
                Err(err(name, "invalid_value", "not a finite number"))
            }
        }
        FieldType::String => match raw {
            Raw::S(s) => Ok(Some(Value::Str(s))),
            ref r => wrong(kind_of(r)),
        },
        FieldType::Bool => match raw {
            Raw::Bool(b) => Ok(Some(Value::Bool(b))),
            ref r => wrong(kind_of(r)),
        },
        FieldType::Timestamp(TimeFormat::Rfc3339) => match raw {
            Raw::S(s) => rfc3339_ms(&s)
                .map(|t| Some(Value::Time(t)))
                .ok_or_else(|| err(name, "invalid_time", format!("`{s}` is not an RFC 3339 time"))),
            ref r => wrong(kind_of(r)),
        },
        FieldType::Timestamp(f) => {
            let Some(v) = int(&raw) else {
                return wrong(kind_of(&raw));
            };
            let ms = match f {
                TimeFormat::EpochMillis => Some(v),
                TimeFormat::EpochSeconds => v.checked_mul(1000),
                TimeFormat::EpochMicros => Some(v.div_euclid(1000)),
                TimeFormat::Rfc3339 => unreachable!(),
            };
            ms.map(|t| Some(Value::Time(t)))
                .ok_or_else(|| err(name, "invalid_time", format!("{v} is out of range")))
        }
    }
}

/// `v` scaled by `scale`: a division by `1 / scale` where that is an integer (cents: `/ 100`,
/// correctly rounded, so 1250 cents are exactly 12.5 and 4041 exactly the double nearest 40.41),
/// else a multiplication.
#[inline]
fn apply_scale(v: f64, scale: f64) -> f64 {
    if scale == 1.0 {
        return v;
    }
    let inverse = 1.0 / scale;
    if (inverse - inverse.round()).abs() < 1e-9 * inverse.abs() {
        v / inverse.round()
    } else {
        v * scale
    }
}

/// RFC 3339 to ms since the Unix epoch: `humantime` for UTC (`Z`), and a numeric offset
/// (`+02:00`) applied to the local part parsed as UTC.
fn rfc3339_ms(s: &str) -> Option<i64> {
    let to_ms = |t: std::time::SystemTime| -> Option<i64> {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).ok(),
            Err(e) => i64::try_from(e.duration().as_millis()).ok().map(|m| -m),
        }
    };
    if let Ok(t) = humantime::parse_rfc3339_weak(s.strip_suffix('Z').unwrap_or(s)) {
        if s.ends_with('Z') || s.ends_with('z') {
            return to_ms(t);
        }
    }
    // `...+hh:mm` / `...-hh:mm`
    // (Not on a char boundary: not an offset, and `split_at` would panic.)
    if s.len() > 6 && s.is_char_boundary(s.len() - 6) {
        let (local, off) = s.split_at(s.len() - 6);
        let b = off.as_bytes();
        if (b[0] == b'+' || b[0] == b'-') && b[3] == b':' {
            let h: i64 = off[1..3].parse().ok()?;
            let m: i64 = off[4..6].parse().ok()?;
            let sign = if b[0] == b'+' { 1 } else { -1 };
            let t = to_ms(humantime::parse_rfc3339_weak(local).ok()?)?;
            return Some(t - sign * (h * 3_600_000 + m * 60_000));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::decode::handbook_schema as handbook;

    #[test]
    fn integer_cents_scale_to_the_nearest_double_of_the_amount() {
        let s = Schema::new(
            vec![
                FieldSpec::required("id", FieldType::Integer),
                FieldSpec::required("cents", FieldType::Float { scale: 0.01 }),
                FieldSpec::required("tenths", FieldType::Float { scale: 0.4 }),
            ],
            "id",
            None,
            UnknownFields::Ignore,
        )
        .unwrap();
        let v = s.decode(br#"{"id":1,"cents":4041,"tenths":10}"#).unwrap();
        // 4041 * 0.01 is 40.410000000000004; divided by 100 it is the double nearest 40.41.
        assert_eq!(v[1], Value::Float(40.41));
        assert_eq!(
            v[2],
            Value::Float(4.0),
            "a scale whose inverse is no integer multiplies"
        );
        assert_eq!(
            s.decode(br#"{"id":1,"cents":1250,"tenths":0}"#).unwrap()[1],
            Value::Float(12.5)
        );
    }

    #[test]
    fn the_handbook_schema_decodes_what_the_typed_decoder_decodes() {
        let s = handbook();
        for (i, amount) in [0.0, 12.5, 1e-3, 99999.99].iter().enumerate() {
            let json = format!(
                r#"{{"tx_id":{i},"tx_time_ms":{},"customer_id":3,"terminal_id":{},"amount":{amount}}}"#,
                1522540800000i64 + i as i64,
                i * 7
            );
            // serde_json's own reading of the same text (what the typed decoder read).
            let typed: serde_json::Value = serde_json::from_str(&json).unwrap();
            let v = s.decode(json.as_bytes()).unwrap();
            assert_eq!(
                v,
                vec![
                    Value::Int(typed["tx_id"].as_i64().unwrap()),
                    Value::Time(typed["tx_time_ms"].as_i64().unwrap()),
                    Value::Int(3),
                    Value::Int(typed["terminal_id"].as_i64().unwrap()),
                    Value::Float(typed["amount"].as_f64().unwrap()),
                ]
            );
            match &v[4] {
                Value::Float(a) => assert_eq!(a.to_bits(), typed["amount"].as_f64().unwrap().to_bits()),
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn bad_input_names_the_field_and_the_reason() {
        let s = handbook();
        let reason = |p: &str| {
            let e = s.decode(p.as_bytes()).unwrap_err();
            (e.field, e.reason)
        };
        let f = |n: &str| Some(n.to_string());
        let ok = r#""tx_time_ms":1,"customer_id":1,"terminal_id":2,"amount":1"#;
        assert_eq!(reason(&format!(r#"{{"tx_id":"u-1",{ok}}}"#)), (f("tx_id"), "schema"));
        assert_eq!(reason(&format!(r#"{{{ok}}}"#)), (f("tx_id"), "schema"));
        assert_eq!(
            reason(&format!(r#"{{"tx_id":1,{ok},"currency":"EUR"}}"#)),
            (f("currency"), "schema")
        );
        assert_eq!(
            reason(&format!(r#"{{"tx_id":1,"tx_id":2,{ok}}}"#)),
            (f("tx_id"), "schema")
        );
        assert_eq!(reason(&format!(r#"{{"tx_id":1,{ok}"#)), (None, "json"));
        assert_eq!(reason("[1,2]"), (None, "schema"));
        assert_eq!(reason("12"), (None, "schema"));
        assert_eq!(reason("{} x"), (None, "json"));
        assert_eq!(
            reason(r#"{"tx_id":1,"tx_time_ms":1,"customer_id":1,"terminal_id":2,"amount":1e999}"#).1,
            "json",
            "serde_json refuses an overflowing number"
        );
        let times = Schema::new(
            vec![
                FieldSpec::required("id", FieldType::String),
                FieldSpec::required("at", FieldType::Timestamp(TimeFormat::Rfc3339)),
                FieldSpec::required("s", FieldType::Timestamp(TimeFormat::EpochSeconds)),
            ],
            "id",
            Some("at"),
            UnknownFields::Ignore,
        )
        .unwrap();
        for at in ["yesterday", "2018-04-01T00:00é", "ééé:00", "é"] {
            let e = times
                .decode(format!(r#"{{"id":"a","at":"{at}","s":1}}"#).as_bytes())
                .unwrap_err();
            assert_eq!((e.field.as_deref(), e.reason), (Some("at"), "invalid_time"), "{at}");
        }
        let e = times
            .decode(br#"{"id":"a","at":"2018-04-01T00:00:00Z","s":9223372036854775807}"#)
            .unwrap_err();
        assert_eq!((e.field.as_deref(), e.reason), (Some("s"), "invalid_time"));
        let v = times
            .decode(br#"{"id":"a","at":"2018-04-01T02:00:00.250+02:00","s":1522540800}"#)
            .unwrap();
        assert_eq!(v[1], Value::Time(1522540800250));
        assert_eq!(v[2], Value::Time(1522540800000));
    }

    #[test]
    fn a_self_contradicting_schema_is_rejected_naming_the_field() {
        let field = |fields: Vec<FieldSpec>, id: &str, time: Option<&str>| {
            Schema::new(fields, id, time, UnknownFields::Ignore)
                .unwrap_err()
                .field
                .unwrap()
        };
        let int = |n: &str| FieldSpec::required(n, FieldType::Integer);
        assert_eq!(field(vec![int("a")], "b", None), "b");
        assert_eq!(
            field(vec![FieldSpec::optional("a", FieldType::Integer, None)], "a", None),
            "a"
        );
        assert_eq!(field(vec![FieldSpec::required("a", FieldType::Bool)], "a", None), "a");
        assert_eq!(field(vec![int("a"), int("a")], "a", None), "a");
        assert_eq!(field(vec![int("a"), int("t")], "a", Some("t")), "t");
        assert_eq!(
            field(
                vec![
                    int("a"),
                    FieldSpec::optional("c", FieldType::String, Some(Value::Int(1)))
                ],
                "a",
                None
            ),
            "c"
        );
        assert_eq!(
            field(
                vec![int("a"), FieldSpec::required("x", FieldType::Float { scale: 0.0 })],
                "a",
                None
            ),
            "x"
        );
    }

    fn field_type() -> impl Strategy<Value = FieldType> {
        prop_oneof![
            Just(FieldType::Integer),
            (1i32..=4).prop_map(|e| FieldType::Float { scale: 10f64.powi(-e) }),
            Just(FieldType::String),
            Just(FieldType::Bool),
            Just(FieldType::Timestamp(TimeFormat::EpochMillis)),
            Just(FieldType::Timestamp(TimeFormat::EpochSeconds)),
            Just(FieldType::Timestamp(TimeFormat::Rfc3339)),
        ]
    }

    /// A JSON value of `kind` and the value the decoder must give for it.
    fn value_of(kind: FieldType) -> BoxedStrategy<(String, Value)> {
        match kind {
            FieldType::Integer => any::<i64>().prop_map(|v| (v.to_string(), Value::Int(v))).boxed(),
            FieldType::Float { scale } => (-1_000_000_000i64..1_000_000_000)
                .prop_map(move |v| (v.to_string(), Value::Float(super::apply_scale(v as f64, scale))))
                .boxed(),
            FieldType::String => "[a-zA-Z0-9 _-]{0,12}"
                .prop_map(|s| (serde_json::to_string(&s).unwrap(), Value::Str(s)))
                .boxed(),
            FieldType::Bool => any::<bool>().prop_map(|b| (b.to_string(), Value::Bool(b))).boxed(),
            FieldType::Timestamp(TimeFormat::EpochSeconds) => (0i64..4_000_000_000)
                .prop_map(|s| (s.to_string(), Value::Time(s * 1000)))
                .boxed(),
            FieldType::Timestamp(TimeFormat::Rfc3339) => (0i64..4_000_000_000)
                .prop_map(|s| {
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(s as u64);
                    (format!("\"{}\"", humantime::format_rfc3339(t)), Value::Time(s * 1000))
                })
                .boxed(),
            FieldType::Timestamp(_) => any::<i64>().prop_map(|v| (v.to_string(), Value::Time(v))).boxed(),
        }
    }

    proptest! {
        /// Total over random bytes: decodes or fails with a known reason, never panics.
        #[test]
        fn random_bytes_decode_or_fail_with_a_reason(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let s = handbook();
            if let Err(e) = s.decode(&bytes) {
                prop_assert!(["json", "schema", "invalid_value", "invalid_time"].contains(&e.reason), "{e:?}");
            }
        }

        /// Random schemas: an object written from the declaration (keys shuffled, extra keys
        /// mixed in, optional fields left out) decodes to exactly the values written.
        #[test]
        fn random_schemas_decode_what_was_written(
            kinds in proptest::collection::vec((field_type(), any::<bool>()), 1..8),
            seed in any::<u64>(),
        ) {
            let mut fields = vec![FieldSpec::required("id", FieldType::String)];
            for (i, (k, required)) in kinds.iter().enumerate() {
                let name = format!("f{i}");
                fields.push(if *required { FieldSpec::required(&name, *k) } else { FieldSpec::optional(&name, *k, None) });
            }
            let schema = Schema::new(fields.clone(), "id", None, UnknownFields::Ignore).unwrap();
            let mut runner = proptest::test_runner::TestRunner::new_with_rng(
                Default::default(),
                proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &{
                    let mut b = [0u8; 32];
                    b[..8].copy_from_slice(&seed.to_le_bytes());
                    b
                }),
            );
            let mut entries = Vec::new();
            let mut want = Vec::new();
            for (i, f) in fields.iter().enumerate() {
                let kind = if i == 0 { FieldType::String } else { f.kind };
                let (json, v) = value_of(kind).new_tree(&mut runner).unwrap().current();
                let keep = f.required || seed.rotate_left(i as u32) & 1 == 0;
                if keep {
                    entries.push(format!("\"{}\":{json}", f.name));
                    want.push(v);
                } else {
                    want.push(Value::Missing);
                }
                if seed.rotate_right(i as u32) & 3 == 0 {
                    entries.push(format!("\"extra{i}\":{{\"nested\":[1,\"x\",null]}}"));
                }
            }
            let n = entries.len();
            entries.rotate_left((seed as usize) % n);
            let json = format!("{{{}}}", entries.join(","));
            let got = schema.decode(json.as_bytes()).map_err(|e| TestCaseError::fail(format!("{json}: {e}")))?;
            prop_assert_eq!(got, want, "{}", json);
        }
    }
}
