//! Decode: JSON bytes to [`Transaction`], or a [`DeadLetter`] naming what is wrong.
//!
//! A transaction is rejected (never silently dropped) when:
//! - the payload is missing (tombstone), not UTF-8 or not JSON (`reason = "json"`), is not a
//!   JSON object (an array would otherwise fill the fields in order), or has a missing, unknown
//!   or wrongly typed field (`"schema"`);
//! - the amount is not finite, negative or above `max_amount` (`"invalid_amount"`; JSON has no
//!   NaN, but a huge number overflows to infinity);
//! - the transaction time is before 1970, more than `max_future_ms` after the read time, or more
//!   than `allowed_future_ms` after its message timestamp (`"invalid_time"`).
//!
//! **Event time.** The source reads each message's event time where the topology's
//! `[source] event_time` says (the `tx_time_ms` field through [`payload_time`], or the Kafka
//! message timestamp), follows it with its watermark, and hands it over, raised to the
//! partition's watermark if late, as [`SourceEvent::event_time_ms`]: the transaction is windowed
//! there ([`RowMeta::event_time_ms`]). Its per-transaction features (hour, weekend, night) use
//! `tx_time_ms`. The `allowed_future_ms` check holds in both settings: it bounds how far a
//! payload time runs ahead of the message timestamps by which a restart's replay and a
//! backfill's time range look offsets up (Kafka's ListOffsets), so that those lookups never skip
//! an event they need. Both are properties of the record, so live, restarted and backfill runs
//! compute the same values.
//!
//! A dead letter keeps the original key, value (a tombstone stays null) and headers.
//!
//! ```
//! use weir_operators::decode::{decode_transaction, DecodeLimits};
//! use weir_core::{Lineage, SourceEvent};
//! let ev = SourceEvent {
//!     lineage: Lineage { partition: 0, offset: 7 },
//!     key: None,
//!     payload: Some(br#"{"tx_id":1,"tx_time_ms":1522540800000,"customer_id":3,"terminal_id":4,"amount":12.5}"#.to_vec()),
//!     headers: vec![],
//!     timestamp_ms: 1522540800000,
//!     event_time_ms: 1522540800000,
//!     read_at_us: 0,
//! };
//! let (meta, tx) = decode_transaction(&ev, &DecodeLimits::default(), 1_700_000_000_000).unwrap();
//! assert_eq!((meta.tx_id, tx.amount), (1, 12.5));
//! let bad = SourceEvent { payload: Some(b"{\"tx_id\":".to_vec()), ..ev };
//! assert_eq!(decode_transaction(&bad, &DecodeLimits::default(), 0).unwrap_err().reason, "json");
//! ```

// A dead letter carries the event's key, bytes and headers by design (it is what the error
// hands to the dead-letter topic), so decode's `Err` is large; it is moved once per bad event.
#![allow(clippy::result_large_err)]

use timely::dataflow::operators::OkErr;
use timely::dataflow::StreamVec;
use timely::progress::Timestamp;
use weir_core::{DeadLetter, Label, RowMeta, SourceEvent, Transaction};

/// Limits applied while decoding.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    /// Largest accepted distance of a transaction time into the future of the read time, ms.
    pub max_future_ms: i64,
    /// Largest accepted distance of a transaction time after its Kafka message timestamp, ms
    /// (see the module doc, "Event time").
    pub allowed_future_ms: i64,
    /// Largest accepted payload, bytes.
    pub max_payload_bytes: usize,
    /// Largest accepted amount, currency units. The feature store sums amounts exactly in
    /// micro-units (i128), so no accepted value can overflow a window's sum.
    pub max_amount: f64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_future_ms: 86_400_000,
            allowed_future_ms: 60_000,
            max_payload_bytes: 64 * 1024,
            max_amount: 1e9,
        }
    }
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

/// Parses the payload of `ev` as JSON into `T`: a missing payload (tombstone), bytes that are not
/// UTF-8 JSON (`reason = "json"`), or JSON of the wrong shape (`"schema"`) make a dead letter.
fn parse_json<T: serde::de::DeserializeOwned>(ev: &SourceEvent) -> Result<T, DeadLetter> {
    let Some(payload) = ev.payload.as_deref() else {
        return Err(dead(ev, "json", "empty payload (tombstone)".into()));
    };
    // serde fills a struct from a JSON array too (`[1, 2, ...]` in field order): only objects
    // are events. Anything else that is not JSON falls through to the parser's message.
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => {
            return Err(dead(ev, "schema", "a JSON array, expected a JSON object".into()));
        }
        Some(c)
            if (c.is_ascii_digit() || matches!(c, b'-' | b'"' | b't' | b'f' | b'n'))
                && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() =>
        {
            return Err(dead(ev, "schema", "a JSON scalar, expected a JSON object".into()));
        }
        _ => {}
    }
    serde_json::from_slice(payload).map_err(|e| {
        let reason = match e.classify() {
            serde_json::error::Category::Data => "schema",
            _ => "json",
        };
        dead(ev, reason, e.to_string())
    })
}

/// Decodes one event. `now_ms` is the wall-clock time (ms since the Unix epoch) used for the
/// future-time check.
///
/// # Errors
/// A [`DeadLetter`] with `reason` one of `json`, `schema`, `too_large`, `invalid_amount`,
/// `invalid_time`, and the parser's message in `detail`.
pub fn decode_transaction(
    ev: &SourceEvent,
    limits: &DecodeLimits,
    now_ms: i64,
) -> Result<(RowMeta, Transaction), DeadLetter> {
    let payload = ev.payload.as_deref().unwrap_or_default();
    if payload.len() > limits.max_payload_bytes {
        return Err(dead(
            ev,
            "too_large",
            format!(
                "payload of {} bytes exceeds {} bytes",
                payload.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    let tx: Transaction = parse_json(ev)?;
    if !tx.amount.is_finite() || tx.amount < 0.0 {
        return Err(dead(
            ev,
            "invalid_amount",
            format!("amount {} is not a finite non-negative number", tx.amount),
        ));
    }
    if tx.amount > limits.max_amount {
        return Err(dead(
            ev,
            "invalid_amount",
            format!(
                "amount {} is above decode.max_amount ({})",
                tx.amount, limits.max_amount
            ),
        ));
    }
    if tx.tx_time_ms < 0 {
        return Err(dead(
            ev,
            "invalid_time",
            format!("tx_time_ms {} is before 1970", tx.tx_time_ms),
        ));
    }
    if tx.tx_time_ms > now_ms.saturating_add(limits.max_future_ms) {
        return Err(dead(
            ev,
            "invalid_time",
            format!(
                "tx_time_ms {} is more than {} ms in the future",
                tx.tx_time_ms, limits.max_future_ms
            ),
        ));
    }
    let ahead = tx.tx_time_ms.saturating_sub(ev.timestamp_ms);
    if ahead > limits.allowed_future_ms {
        return Err(dead(
            ev,
            "invalid_time",
            format!(
                "tx_time_ms {} is {} ms after its message timestamp {}, more than decode.allowed_future ({} ms): \
                 restarts and backfills look offsets up by message timestamp and could miss it",
                tx.tx_time_ms, ahead, ev.timestamp_ms, limits.allowed_future_ms
            ),
        ));
    }
    let meta = RowMeta {
        lineage: ev.lineage,
        tx_id: tx.tx_id,
        // The source's event time (see the module doc).
        event_time_ms: ev.event_time_ms,
        read_at_us: ev.read_at_us,
    };
    Ok((meta, tx))
}

/// The transaction [`decode_transaction`] reads, declared as a [`crate::schema::Schema`]
/// (unknown fields rejected, as this decoder does): the handbook's schema, for comparing the
/// two decoders.
pub fn handbook_schema() -> crate::schema::Schema {
    use crate::schema::{FieldSpec, FieldType, Schema, TimeFormat, UnknownFields};
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

/// Reads the event time a source needs for its watermark from a transaction's payload: the
/// integer top-level `field` (epoch ms) of a JSON object, or `None` when the payload is not a
/// JSON object, lacks it, or has a time [`decode_transaction`] would dead-letter (`invalid_time`
/// under `limits`, with the wall clock for `max_future_ms`), so that no event with an unusable
/// time moves the watermark. Only the one field is parsed; the rest is skipped
/// (`serde::de::IgnoredAny`). Returns a function `(payload, message timestamp ms) -> Option<ms>`.
///
/// ```
/// use weir_operators::decode::{payload_time, DecodeLimits};
/// let time = payload_time("tx_time_ms", DecodeLimits::default());
/// let p = br#"{"tx_id":1,"tx_time_ms":1522540800000,"amount":{"nested":[1,2]}}"#;
/// assert_eq!(time(p, 1522540800000), Some(1522540800000));
/// // More than allowed_future (1 min) after its message timestamp: dead-lettered, no time.
/// assert_eq!(time(p, 1522540800000 - 120_000), None);
/// assert_eq!(time(b"[1,2]", 0), None);
/// ```
pub fn payload_time(field: &str, limits: DecodeLimits) -> impl Fn(&[u8], i64) -> Option<i64> + Send + Sync + 'static {
    let field = field.to_string();
    move |payload: &[u8], msg_ts: i64| {
        let mut de = serde_json::Deserializer::from_slice(payload);
        let t = serde::de::DeserializeSeed::deserialize(FieldTime(&field), &mut de).ok()??;
        let usable = t >= 0
            && t <= weir_core::clock::wall_ms().saturating_add(limits.max_future_ms)
            && t.saturating_sub(msg_ts) <= limits.allowed_future_ms;
        usable.then_some(t)
    }
}

/// Deserializes a JSON object to the integer value of one top-level key (`None` if absent).
struct FieldTime<'a>(&'a str);

impl<'de> serde::de::DeserializeSeed<'de> for FieldTime<'_> {
    type Value = Option<i64>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldTime<'_> {
    type Value = Option<i64>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a JSON object with an integer `{}`", self.0)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(is_field) = map.next_key_seed(KeyIs(self.0))? {
            if is_field && found.is_none() {
                found = Some(map.next_value::<i64>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A map key compared with a name, without allocating.
struct KeyIs<'a>(&'a str);

impl<'de> serde::de::DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// Decodes one fraud label; its `available_at_ms` is the source's event time (the labels source
/// reads message timestamps: when the label became known), raised if late.
///
/// # Errors
/// A [`DeadLetter`] with `reason` `json` or `schema`, or `invalid_label` for a `tx_fraud` other
/// than 0 or 1.
pub fn decode_label(ev: &SourceEvent) -> Result<Label, DeadLetter> {
    let mut label: Label = parse_json(ev)?;
    if label.tx_fraud > 1 {
        return Err(dead(
            ev,
            "invalid_label",
            format!("tx_fraud {} is not 0 or 1", label.tx_fraud),
        ));
    }
    label.available_at_ms = ev.event_time_ms;
    Ok(label)
}

/// The label decode operator: malformed labels are logged (with their lineage) and dropped;
/// labels never reach a model, so they have no dead-letter topic of their own.
pub fn decode_labels<'s, T: Timestamp>(events: StreamVec<'s, T, SourceEvent>) -> StreamVec<'s, T, Label> {
    use timely::dataflow::operators::vec::Map;
    events.flat_map(|ev: SourceEvent| match decode_label(&ev) {
        Ok(l) => Some(l),
        Err(d) => {
            tracing::warn!(partition = d.lineage.partition, offset = d.lineage.offset, reason = %d.reason, detail = %d.detail, "malformed label dropped");
            None
        }
    })
}

/// The decode operator: splits a stream of source events into decoded transactions and dead
/// letters. Stateless and pipelined (no exchange).
pub fn decode<'s, T: Timestamp>(
    events: StreamVec<'s, T, SourceEvent>,
    limits: DecodeLimits,
) -> (StreamVec<'s, T, (RowMeta, Transaction)>, StreamVec<'s, T, DeadLetter>) {
    events.ok_err(move |ev: SourceEvent| decode_transaction(&ev, &limits, weir_core::clock::wall_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::Lineage;

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
        assert_eq!(tx.terminal_id, 2);
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
            "invalid_amount"
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
            "invalid_amount"
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
        assert_eq!(tx.tx_time_ms, t2018 + 30_000);
        let (meta, _) = stamped(t2018 - 5_000, t2018).unwrap();
        assert_eq!(meta.event_time_ms, t2018 - 5_000);
    }

    #[test]
    fn the_payload_time_is_the_field_decode_accepts_or_none() {
        let time = payload_time("tx_time_ms", DecodeLimits::default());
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
                    prop_assert!(tx.amount.is_finite() && tx.amount >= 0.0);
                    prop_assert!(tx.tx_time_ms >= 0 && tx.tx_time_ms <= NOW + 86_400_000);
                    prop_assert!(tx.amount <= DecodeLimits::default().max_amount);
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
