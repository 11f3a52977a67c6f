//! Decode: JSON bytes to the values of a declared [`Schema`], or a [`DeadLetter`] naming what
//! is wrong.
//!
//! An event is rejected (never silently dropped) when:
//! - the payload is missing (tombstone), not UTF-8 or not JSON (`reason = "json"`), is not a
//!   JSON object, or has a missing, wrongly typed or (with `unknown_fields = "reject"`)
//!   undeclared field (`"schema"`);
//! - it is larger than `max_payload_bytes` (`"too_large"`);
//! - a number is not finite, out of the i64 range, or outside the range its field declares
//!   (`"invalid_value"`);
//! - its event time does not parse, is before 1970, more than `max_future_ms` after the read
//!   time, or more than `allowed_future_ms` after its message timestamp (`"invalid_time"`).
//!
//! Every reason's detail names the field.
//!
//! **Event time.** The source reads each message's event time where the topology's
//! `[source] event_time` says (the schema's time field through [`payload_time`], or the Kafka
//! message timestamp), follows it with its watermark, and hands it over, raised to the
//! partition's watermark if late, as [`SourceEvent::event_time_ms`]: the event is windowed there
//! ([`RowMeta::event_time_ms`]). Per-event time features read the field itself. The
//! `allowed_future_ms` check bounds how far a payload time runs ahead of the message
//! timestamps by which a restart's replay and a backfill's time range look offsets up (Kafka's
//! ListOffsets), so that those lookups never skip an event they need. Both are properties of the
//! record, so live, restarted and backfill runs compute the same values.
//!
//! A dead letter keeps the original key, value (a tombstone stays null) and headers.
//!
//! ```
//! use weir_operators::decode::{handbook_schema, DecodeLimits, EventDecoder};
//! use weir_core::{EventId, Lineage, SourceEvent, Value};
//! let ev = SourceEvent {
//!     lineage: Lineage { partition: 0, offset: 7 },
//!     key: None,
//!     payload: Some(br#"{"tx_id":1,"tx_time_ms":1522540800000,"customer_id":3,"terminal_id":4,"amount":12.5}"#.to_vec()),
//!     headers: vec![],
//!     timestamp_ms: 1522540800000,
//!     event_time_ms: 1522540800000,
//!     read_at_us: 0,
//! };
//! let decoder = EventDecoder::new(handbook_schema(), DecodeLimits::default());
//! let mut values = Vec::new();
//! let meta = decoder.decode(&ev, 1_700_000_000_000, &mut values).unwrap();
//! assert_eq!((meta.id, &values[4]), (EventId::Int(1), &Value::Float(12.5)));
//! let bad = SourceEvent { payload: Some(b"{\"tx_id\":".to_vec()), ..ev };
//! assert_eq!(decoder.decode(&bad, 0, &mut values).unwrap_err().reason, "json");
//! ```

// A dead letter carries the event's key, bytes and headers by design (it is what the error
// hands to the dead-letter topic), so decode's `Err` is large; it is moved once per bad event.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use timely::dataflow::StreamVec;
use timely::progress::Timestamp;
use weir_core::{DeadLetter, EventId, RowMeta, SourceEvent, Value};

use crate::schema::{FieldSpec, FieldType, Schema, SchemaError, TimeFormat, UnknownFields};

/// Limits applied while decoding.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    /// Largest accepted distance of an event time into the future of the read time, ms.
    pub max_future_ms: i64,
    /// Largest accepted distance of an event time after its Kafka message timestamp, ms
    /// (see the module doc, "Event time").
    pub allowed_future_ms: i64,
    /// Largest accepted payload, bytes.
    pub max_payload_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_future_ms: 86_400_000,
            allowed_future_ms: 60_000,
            max_payload_bytes: 64 * 1024,
        }
    }
}

/// A declared field's accepted range (inclusive), checked on integers and floats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// Field position.
    pub field: usize,
    /// Least accepted value.
    pub min: f64,
    /// Greatest accepted value.
    pub max: f64,
}

/// A [`Schema`] with the checks of a topology's source: payload size, declared ranges, and the
/// event time's limits (on the schema's time field).
#[derive(Debug, Clone)]
pub struct EventDecoder {
    schema: Arc<Schema>,
    limits: DecodeLimits,
    ranges: Vec<Range>,
}

fn dead(ev: &SourceEvent, reason: &str, detail: String) -> DeadLetter {
    DeadLetter {
        lineage: ev.lineage,
        reason: reason.to_string(),
        detail,
        key: ev.key.clone(),
        payload: ev.payload.clone(),
        headers: ev.headers.clone(),
        read_at_us: ev.read_at_us,
    }
}

impl EventDecoder {
    /// A decoder of `schema` under `limits`, with no ranges.
    pub fn new(schema: Schema, limits: DecodeLimits) -> Self {
        Self {
            schema: Arc::new(schema),
            limits,
            ranges: Vec::new(),
        }
    }

    /// The same decoder under other limits.
    pub fn with_limits(mut self, limits: DecodeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Also checks `ranges`.
    pub fn with_ranges(mut self, ranges: Vec<Range>) -> Self {
        self.ranges = ranges;
        self
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Decodes one event into `out` (one value per declared field, in declaration order) and
    /// returns its identity. `now_ms` is the wall-clock time (ms since the Unix epoch) of the
    /// future-time check.
    ///
    /// # Errors
    /// A [`DeadLetter`] with `reason` one of `json`, `schema`, `too_large`, `invalid_value`,
    /// `invalid_time`, and the field and the parser's message in `detail`.
    pub fn decode(&self, ev: &SourceEvent, now_ms: i64, out: &mut Vec<Value>) -> Result<RowMeta, DeadLetter> {
        let Some(payload) = ev.payload.as_deref() else {
            return Err(dead(ev, "json", "empty payload (tombstone)".into()));
        };
        if payload.len() > self.limits.max_payload_bytes {
            return Err(dead(
                ev,
                "too_large",
                format!(
                    "payload of {} bytes exceeds {} bytes",
                    payload.len(),
                    self.limits.max_payload_bytes
                ),
            ));
        }
        self.schema
            .decode_into(payload, out)
            .map_err(|e: SchemaError| dead(ev, e.reason, e.to_string()))?;
        let fields = self.schema.fields();
        for r in &self.ranges {
            let v = match out[r.field] {
                Value::Int(v) => v as f64,
                Value::Float(v) => v,
                _ => continue,
            };
            if !(v >= r.min && v <= r.max) {
                return Err(dead(
                    ev,
                    "invalid_value",
                    format!(
                        "field `{}`: {v} is outside its declared range [{}, {}]",
                        fields[r.field].name, r.min, r.max
                    ),
                ));
            }
        }
        if let Some(ti) = self.schema.time_index() {
            let Value::Time(t) = out[ti] else {
                unreachable!("the time field is a required timestamp")
            };
            let name = &fields[ti].name;
            if t < 0 {
                return Err(dead(ev, "invalid_time", format!("field `{name}`: {t} is before 1970")));
            }
            if t > now_ms.saturating_add(self.limits.max_future_ms) {
                return Err(dead(
                    ev,
                    "invalid_time",
                    format!(
                        "field `{name}`: {t} is more than {} ms in the future",
                        self.limits.max_future_ms
                    ),
                ));
            }
            let ahead = t.saturating_sub(ev.timestamp_ms);
            if ahead > self.limits.allowed_future_ms {
                return Err(dead(
                    ev,
                    "invalid_time",
                    format!(
                        "field `{name}`: {t} is {ahead} ms after its message timestamp {}, more than decode.allowed_future ({} ms): \
                         restarts and backfills look offsets up by message timestamp and could miss it",
                        ev.timestamp_ms, self.limits.allowed_future_ms
                    ),
                ));
            }
        }
        let id = match &out[self.schema.id_index()] {
            Value::Int(v) => EventId::Int(*v),
            Value::Str(s) => EventId::Str(Box::new(s.clone())),
            _ => unreachable!("the id field is a required integer or string"),
        };
        Ok(RowMeta {
            lineage: ev.lineage,
            id,
            // The source's event time (see the module doc).
            event_time_ms: ev.event_time_ms,
            read_at_us: ev.read_at_us,
        })
    }
}

/// The handbook's transaction fields, declared as a [`Schema`] (unknown fields rejected): the
/// schema `topologies/fraud-scoring.toml` declares, for tests and benchmarks.
pub fn handbook_schema() -> Schema {
    Schema::new(
        vec![
            FieldSpec::required("tx_id", FieldType::Integer),
            FieldSpec::required("tx_time_ms", FieldType::Timestamp(TimeFormat::EpochMillis)),
            FieldSpec::required("customer_id", FieldType::Integer),
            FieldSpec::required("terminal_id", FieldType::Integer),
            FieldSpec::required("amount", FieldType::Float { scale: 1.0 }),
        ],
        "tx_id",
        Some("tx_time_ms"),
        UnknownFields::Reject,
    )
    .expect("the handbook schema is valid")
}

/// The handbook decoder of `topologies/fraud-scoring.toml`: [`handbook_schema`] with the amount
/// in `[0, 1e9]`.
pub fn handbook_decoder(limits: DecodeLimits) -> EventDecoder {
    EventDecoder::new(handbook_schema(), limits).with_ranges(vec![Range {
        field: 4,
        min: 0.0,
        max: 1e9,
    }])
}

/// Reads the event time a source needs for its watermark from a payload: the time field of
/// `schema` alone (other keys are skipped unparsed), or `None` when the payload is not a JSON
/// object, lacks it, or has a time the decoder would dead-letter (`invalid_time` under `limits`,
/// with the wall clock for `max_future_ms`), so that no event with an unusable time moves the
/// watermark. Returns a function `(payload, message timestamp ms) -> Option<ms>`.
///
/// # Panics
/// If the schema has no time field (a topology validates this at start-up).
///
/// ```
/// use weir_operators::decode::{handbook_schema, payload_time, DecodeLimits};
/// let time = payload_time(&handbook_schema(), DecodeLimits::default());
/// let p = br#"{"tx_id":1,"tx_time_ms":1522540800000,"amount":{"nested":[1,2]}}"#;
/// assert_eq!(time(p, 1522540800000), Some(1522540800000));
/// // More than allowed_future (1 min) after its message timestamp: dead-lettered, no time.
/// assert_eq!(time(p, 1522540800000 - 120_000), None);
/// assert_eq!(time(b"[1,2]", 0), None);
/// ```
pub fn payload_time(
    schema: &Schema,
    limits: DecodeLimits,
) -> impl Fn(&[u8], i64) -> Option<i64> + Send + Sync + 'static {
    let schema = schema.clone();
    let at = schema.time_index().expect("a schema with a time field");
    move |payload: &[u8], msg_ts: i64| {
        let Some(Value::Time(t)) = schema.read_field(payload, at) else {
            return None;
        };
        let usable = t >= 0
            && t <= weir_core::clock::wall_ms().saturating_add(limits.max_future_ms)
            && t.saturating_sub(msg_ts) <= limits.allowed_future_ms;
        usable.then_some(t)
    }
}

/// The decode operator: splits a stream of source events into what `build` makes of each
/// decoded event (its identity and values) and dead letters. `build` may refuse an event with
/// `(field, detail)`: a dead letter with reason `invalid_value`. Stateless and pipelined (no
/// exchange); one values buffer per worker is reused across events.
pub fn decode_with<'s, T: Timestamp, R: Clone + 'static>(
    events: StreamVec<'s, T, SourceEvent>,
    decoder: EventDecoder,
    build: impl Fn(RowMeta, &[Value]) -> Result<R, (String, String)> + 'static,
) -> (StreamVec<'s, T, R>, StreamVec<'s, T, DeadLetter>) {
    use timely::dataflow::operators::OkErr;
    let mut values: Vec<Value> = Vec::new();
    events.ok_err(move |ev: SourceEvent| {
        let meta = decoder.decode(&ev, weir_core::clock::wall_ms(), &mut values)?;
        build(meta, &values).map_err(|(field, detail)| dead(&ev, "invalid_value", format!("field `{field}`: {detail}")))
    })
}

/// The label decode operator: what `build` makes of each decoded label (its values and its
/// source event time: when it became known); malformed labels are logged (with their lineage)
/// and dropped. Labels never reach a model, so they have no dead-letter topic of their own.
pub fn decode_labels<'s, T: Timestamp, R: Clone + 'static>(
    events: StreamVec<'s, T, SourceEvent>,
    schema: Schema,
    build: impl Fn(&[Value], i64) -> Result<R, String> + 'static,
) -> StreamVec<'s, T, R> {
    use timely::dataflow::operators::vec::Map;
    let mut values: Vec<Value> = Vec::new();
    events.flat_map(move |ev: SourceEvent| {
        let r = match ev.payload.as_deref() {
            None => Err(("json", "empty payload (tombstone)".to_string())),
            Some(p) => schema.decode_into(p, &mut values).map_err(|e| (e.reason, e.to_string())),
        }
        .and_then(|()| build(&values, ev.event_time_ms).map_err(|e| ("invalid_label", e)));
        match r {
            Ok(l) => Some(l),
            Err((reason, detail)) => {
                tracing::warn!(partition = ev.lineage.partition, offset = ev.lineage.offset, reason, detail = %detail, "malformed label dropped");
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::Lineage;

    /// The handbook decoder on one event: its identity and values.
    fn decode_transaction(
        ev: &SourceEvent,
        limits: &DecodeLimits,
        now: i64,
    ) -> Result<(RowMeta, Vec<Value>), DeadLetter> {
        let mut v = Vec::new();
        handbook_decoder(limits.clone()).decode(ev, now, &mut v).map(|m| (m, v))
    }

    fn ev(payload: &[u8]) -> SourceEvent {
        SourceEvent {
            lineage: Lineage {
                partition: 2,
                offset: 9,
            },
            key: Some(b"k".to_vec()),
            payload: Some(payload.to_vec()),
            headers: vec![("trace".into(), Some(b"abc".to_vec())), ("null".into(), None)],
            timestamp_ms: NOW,
            event_time_ms: 1000,
            read_at_us: 5,
        }
    }

    const NOW: i64 = 1_700_000_000_000;

    fn reason(p: &[u8]) -> String {
        let e = decode_transaction(&ev(p), &DecodeLimits::default(), NOW).unwrap_err();
        assert_eq!(
            e.lineage,
            Lineage {
                partition: 2,
                offset: 9
            },
            "dead letter keeps its lineage"
        );
        assert_eq!(e.payload.as_deref(), Some(p), "dead letter keeps the original bytes");
        assert_eq!(e.headers, ev(p).headers, "dead letter keeps the original headers");
        e.reason
    }

    #[test]
    fn accepts_a_good_transaction() {
        let (meta, tx) = decode_transaction(
            &ev(br#"{"tx_id":5,"tx_time_ms":1000,"customer_id":1,"terminal_id":2,"amount":0.0}"#),
            &DecodeLimits::default(),
            NOW,
        )
        .unwrap();
        assert_eq!(meta.event_time_ms, 1000);
        assert_eq!(meta.read_at_us, 5);
        assert_eq!(meta.id, EventId::Int(5));
        assert_eq!(tx[3], Value::Int(2));
    }

    #[test]
    fn rejects_each_kind_of_bad_input_with_a_reason() {
        assert_eq!(reason(br#"{"tx_id":5,"tx_time_ms":1000,"#), "json");
        assert_eq!(reason(b"\xff\xfe not utf8"), "json");
        assert_eq!(
            reason(br#"{"tx_id":5,"tx_time_ms":1000,"customer_id":1,"terminal_id":2}"#),
            "schema"
        );
        assert_eq!(
            reason(br#"{"tx_id":"5","tx_time_ms":1000,"customer_id":1,"terminal_id":2,"amount":1}"#),
            "schema"
        );
        assert_eq!(
            reason(br#"{"tx_id":5,"tx_time_ms":1000,"customer_id":1,"terminal_id":2,"amount":1,"extra":1}"#),
            "schema"
        );
        assert_eq!(
            reason(br#"{"tx_id":5,"tx_time_ms":1000,"customer_id":1,"terminal_id":2,"amount":NaN}"#),
            "json"
        );
        assert_eq!(
            reason(br#"{"tx_id":5,"tx_time_ms":1000,"customer_id":1,"terminal_id":2,"amount":-3}"#),
            "invalid_value"
        );
        assert_eq!(
            reason(br#"{"tx_id":5,"tx_time_ms":1000,"customer_id":1,"terminal_id":2,"amount":1e999}"#),
            "json"
        );
        assert_eq!(
            reason(br#"{"tx_id":5,"tx_time_ms":-1,"customer_id":1,"terminal_id":2,"amount":1}"#),
            "invalid_time"
        );
        assert_eq!(
            reason(br#"{"tx_id":5,"tx_time_ms":9999999999999,"customer_id":1,"terminal_id":2,"amount":1}"#),
            "invalid_time"
        );
        let huge = format!(r#"{{"tx_id":5,"note":"{}"}}"#, "x".repeat(100_000));
        assert_eq!(reason(huge.as_bytes()), "too_large");
        let mut tomb = ev(b"");
        tomb.payload = None;
        let letter = decode_transaction(&tomb, &DecodeLimits::default(), NOW).unwrap_err();
        assert_eq!(letter.reason, "json");
        assert_eq!(
            letter.payload, None,
            "a tombstone's dead letter stays a tombstone (null value)"
        );
        assert_eq!(letter.headers.len(), 2);
    }

    #[test]
    fn only_json_objects_are_transactions() {
        // Issue 13, item 8: serde fills a struct from a sequence.
        assert_eq!(reason(b"[1,1522540800000,3,4,12.5]"), "schema");
        assert_eq!(reason(b"  [5, 1000, 1, 2, 1.0]"), "schema");
        assert_eq!(reason(b"12"), "schema");
        assert_eq!(reason(br#""text""#), "schema");
        assert_eq!(reason(b"null"), "schema");
        assert_eq!(reason(b"[1,2"), "schema");
    }

    #[test]
    fn amounts_above_the_limit_are_dead_letters() {
        // Issue 13, item 6: 6e12 + 6e12 overflowed the window sums.
        assert_eq!(
            reason(br#"{"tx_id":5,"tx_time_ms":1000,"customer_id":1,"terminal_id":2,"amount":6e12}"#),
            "invalid_value"
        );
        let ok = decode_transaction(
            &ev(br#"{"tx_id":5,"tx_time_ms":1000,"customer_id":1,"terminal_id":2,"amount":1e9}"#),
            &DecodeLimits::default(),
            NOW,
        );
        assert!(ok.is_ok(), "max_amount itself is accepted");
    }

    #[test]
    fn a_transaction_far_after_its_message_timestamp_is_dead_lettered_and_one_near_is_windowed_at_the_sources_time() {
        // Issue 13, item 1: now + 12 h among traffic stamped in 2018 waited forever for the
        // watermark and blocked its partition's commits.
        let stamped = |tx_time: i64, msg_ts: i64| {
            let mut e = ev(format!(
                r#"{{"tx_id":5,"tx_time_ms":{tx_time},"customer_id":1,"terminal_id":2,"amount":1}}"#
            )
            .as_bytes());
            e.timestamp_ms = msg_ts;
            e.event_time_ms = tx_time;
            decode_transaction(&e, &DecodeLimits::default(), NOW)
        };
        let t2018 = 1_522_540_800_000;
        let far = stamped(NOW + 12 * 3_600_000, t2018).unwrap_err();
        assert_eq!(far.reason, "invalid_time");
        assert!(far.detail.contains("decode.allowed_future"), "{}", far.detail);
        let (meta, tx) = stamped(t2018 + 30_000, t2018).unwrap();
        assert_eq!(
            meta.event_time_ms,
            t2018 + 30_000,
            "windowed at the source's event time"
        );
        assert_eq!(tx[1], Value::Time(t2018 + 30_000));
        let (meta, _) = stamped(t2018 - 5_000, t2018).unwrap();
        assert_eq!(meta.event_time_ms, t2018 - 5_000);
    }

    #[test]
    fn the_payload_time_is_the_field_decode_accepts_or_none() {
        let time = payload_time(&handbook_schema(), DecodeLimits::default());
        let t = 1_522_540_800_000i64;
        let tx = |body: &str| format!(r#"{{"tx_id":5,{body},"customer_id":1,"terminal_id":2,"amount":1}}"#);
        assert_eq!(time(tx(&format!(r#""tx_time_ms":{t}"#)).as_bytes(), t), Some(t));
        // An escaped key is the same key; nested objects and strings are skipped.
        let escaped = format!(r#"{{"a":{{"tx_time_ms":1}},"b":"tx_time_ms","tx_time\u005fms":{t}}}"#);
        assert_eq!(time(escaped.as_bytes(), t), Some(t));
        // Exactly what decode dead-letters as invalid_time, schema or json gives no time.
        for bad in [
            tx(r#""tx_time_ms":-1"#),
            tx(r#""tx_time_ms":1.5"#),
            tx(r#""tx_time_ms":"1522540800000""#),
            tx(r#""other":1"#),
            tx(&format!(r#""tx_time_ms":{}"#, t + 61_000)),
            tx(&format!(
                r#""tx_time_ms":{}"#,
                weir_core::clock::wall_ms() + 2 * 86_400_000
            )),
            "[1,2]".to_string(),
            format!(r#"{{"tx_time_ms":{t}"#),
        ] {
            assert_eq!(time(bad.as_bytes(), t), None, "{bad}");
            let mut e = ev(bad.as_bytes());
            e.timestamp_ms = t;
            if let Ok((meta, _)) = decode_transaction(&e, &DecodeLimits::default(), weir_core::clock::wall_ms()) {
                panic!("{bad} decoded at {}", meta.event_time_ms);
            }
        }
    }

    /// Property tests (proptest, 256 cases each by default; `PROPTEST_CASES` raises it): the
    /// decoder is total — any bytes give a transaction that passes every rule, or a dead letter
    /// with a known reason, the original bytes and the lineage; never a panic.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        const REASONS: [&str; 7] = crate::DEAD_LETTER_REASONS;

        fn check(payload: &[u8]) -> Result<(), TestCaseError> {
            match decode_transaction(&ev(payload), &DecodeLimits::default(), NOW) {
                Ok((meta, tx)) => {
                    let Value::Float(amount) = tx[4] else {
                        panic!("amount {:?}", tx[4])
                    };
                    let Value::Time(time) = tx[1] else {
                        panic!("time {:?}", tx[1])
                    };
                    prop_assert!(amount.is_finite() && (0.0..=1e9).contains(&amount));
                    prop_assert!((0..=NOW + 86_400_000).contains(&time));
                    prop_assert_eq!(meta.event_time_ms, 1000, "the source's event time");
                    prop_assert_eq!(
                        meta.lineage,
                        Lineage {
                            partition: 2,
                            offset: 9
                        }
                    );
                }
                Err(e) => {
                    prop_assert!(REASONS.contains(&e.reason.as_str()), "reason {}", e.reason);
                    prop_assert!(!e.detail.is_empty());
                    prop_assert_eq!(e.payload.as_deref(), Some(payload));
                    prop_assert_eq!(
                        e.lineage,
                        Lineage {
                            partition: 2,
                            offset: 9
                        }
                    );
                }
            }
            Ok(())
        }

        /// A transaction's JSON with arbitrary (also invalid) values in its fields.
        fn tx_like() -> impl Strategy<Value = String> {
            let value = prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                any::<u64>().prop_map(|v| v.to_string()),
                any::<f64>().prop_map(|v| format!("{v:e}")),
                Just("NaN".to_string()),
                Just("-1e400".to_string()),
                Just("null".to_string()),
                "[a-z]{0,8}".prop_map(|s| format!("\"{s}\"")),
            ];
            (proptest::collection::vec(value, 5), any::<bool>()).prop_map(|(v, extra)| {
                let mut s = format!(
                    "{{\"tx_id\":{},\"tx_time_ms\":{},\"customer_id\":{},\"terminal_id\":{},\"amount\":{}",
                    v[0], v[1], v[2], v[3], v[4]
                );
                if extra {
                    s.push_str(",\"extra\":1");
                }
                s.push('}');
                s
            })
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
                check(&payload)?;
            }

            #[test]
            fn transaction_shaped_json_is_accepted_only_when_valid(json in tx_like(), cut in any::<prop::sample::Index>()) {
                check(json.as_bytes())?;
                // Any strict prefix (a truncated message) is a dead letter.
                let n = cut.index(json.len());
                let r = decode_transaction(&ev(&json.as_bytes()[..n]), &DecodeLimits::default(), NOW);
                prop_assert!(r.is_err(), "truncated at {} of {}: {}", n, json.len(), &json[..n]);
                check(&json.as_bytes()[..n])?;
            }
        }
    }
}
