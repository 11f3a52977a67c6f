//! The fast path of [`Schema::decode_into`]: a scanner compiled from nothing but the schema,
//! for the JSON that producers actually write (flat objects of numbers, plain strings and
//! booleans, in one key order).
//!
//! **Why our own scanner.** Through serde's generic `Deserializer` the declared-schema decoder
//! ran at 0.76-0.80 of the speed of serde's derived decoder for the same five fields (issue 16
//! asks for at least 0.9): the derived code knows its field names at compile time, the generic
//! one pays for UTF-8 validation of every key, a `visit_*` dispatch per value and a `Value`
//! conversion after it. This path compares keys as bytes with the declared names (the field
//! after the last one found first), parses numbers where they lie and writes each slot once.
//!
//! **It never decides anything serde_json would decide otherwise.** It returns `true` only for
//! input it decoded to exactly the values of the serde_json path, and `false` (decode again
//! with serde_json, from scratch) for everything else: any escape in a string, a number it does
//! not convert exactly as serde_json does, a duplicate key, a wrong type, any syntax error, a
//! missing required field. Every error and every unusual input is therefore still decided, and
//! worded, by serde_json. A property test checks the two paths against each other on random
//! schemas and random bytes (`the_fast_path_agrees_with_serde_json`).
//!
//! Numbers follow serde_json 1.x without `float_roundtrip` (`Deserializer::parse_integer`,
//! `parse_decimal`, `f64_from_parts`): an integer is a `u64` significand (negative: `i64`, and
//! `-0` or below `i64::MIN` a float); a decimal is the `u64` of all its digits times a power of
//! ten, applied as one multiplication or division by the exact double `10^k`. Only `|k| <= 22`
//! (every such power is exact) is taken here; the rest falls back.

use super::{apply_scale, rfc3339_ms, FieldSpec, FieldType, Schema, Seen, TimeFormat, UnknownFields, Value};

/// `10^k` for `k` in `0..=22`: the powers of ten a double holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// Deepest nesting skipped inside an undeclared field (deeper: serde_json decides).
const MAX_SKIP_DEPTH: u32 = 64;

/// A number as serde_json's parser makes it.
enum Num {
    /// A non-negative integer.
    U(u64),
    /// A negative integer in the `i64` range.
    I(i64),
    /// A decimal, an exponent, `-0` or a negative integer below `i64::MIN`.
    F(f64),
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    /// The next byte, or 0 at the end (0 is never valid JSON outside a string).
    #[inline(always)]
    fn peek(&self) -> u8 {
        self.b.get(self.i).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn ws(&mut self) {
        while matches!(self.peek(), b' ' | b'\n' | b'\t' | b'\r') {
            self.i += 1;
        }
    }

    #[inline(always)]
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == c {
            self.i += 1;
            true
        } else {
            false
        }
    }

    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> bool {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    /// The bytes of a string whose opening quote was just read, and whether they are all ASCII;
    /// `None` (fall back) on an escape, a control character or the end of the input.
    #[inline(always)]
    fn string(&mut self) -> Option<(&'a [u8], bool)> {
        let start = self.i;
        let mut ascii = true;
        loop {
            let c = *self.b.get(self.i)?;
            match c {
                b'"' => {
                    let s = &self.b[start..self.i];
                    self.i += 1;
                    return Some((s, ascii));
                }
                b'\\' | 0..=0x1f => return None,
                _ => {
                    ascii &= c < 0x80;
                    self.i += 1;
                }
            }
        }
    }

    /// A string as `&str` (valid UTF-8), the opening quote just read.
    #[inline(always)]
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.string()?.0).ok()
    }

    /// Skips a string whose opening quote was just read; `false` if it is not valid UTF-8 (or
    /// as [`Cursor::string`]).
    #[inline(always)]
    fn skip_string(&mut self) -> bool {
        self.string()
            .is_some_and(|(s, ascii)| ascii || std::str::from_utf8(s).is_ok())
    }

    /// A JSON number at the cursor, as serde_json parses it; `None` (fall back) on bad syntax or
    /// a value serde_json would compute along a path not reproduced here.
    #[inline(always)]
    fn number(&mut self) -> Option<Num> {
        let negative = self.eat(b'-');
        let mut sig: u64 = match self.peek() {
            b'0' => {
                self.i += 1;
                if self.peek().is_ascii_digit() {
                    return None; // a leading zero: invalid
                }
                0
            }
            b'1'..=b'9' => {
                let start = self.i;
                let mut s: u64 = 0;
                while let c @ b'0'..=b'9' = self.peek() {
                    s = s.wrapping_mul(10).wrapping_add((c - b'0') as u64);
                    self.i += 1;
                }
                // 19 digits never overflow a u64; longer numbers are left to serde_json.
                if self.i - start > 19 {
                    return None;
                }
                s
            }
            _ => return None,
        };
        let mut exp: i32 = 0;
        let mut float = false;
        if self.peek() == b'.' {
            self.i += 1;
            float = true;
            let before = self.i;
            while let c @ b'0'..=b'9' = self.peek() {
                sig = sig.checked_mul(10)?.checked_add((c - b'0') as u64)?;
                self.i += 1;
            }
            if self.i == before {
                return None; // no digit after the point
            }
            exp = -i32::try_from(self.i - before).ok()?;
        }
        if matches!(self.peek(), b'e' | b'E') {
            self.i += 1;
            float = true;
            let positive = match self.peek() {
                b'+' => {
                    self.i += 1;
                    true
                }
                b'-' => {
                    self.i += 1;
                    false
                }
                _ => true,
            };
            let before = self.i;
            let mut e: i32 = 0;
            while let c @ b'0'..=b'9' = self.peek() {
                e = e.checked_mul(10)?.checked_add((c - b'0') as i32)?;
                self.i += 1;
            }
            if self.i == before {
                return None;
            }
            exp = if positive {
                exp.checked_add(e)?
            } else {
                exp.checked_sub(e)?
            };
        }
        if float {
            let k = exp.unsigned_abs() as usize;
            let pow = *POW10.get(k)?;
            let f = sig as f64;
            let f = if exp >= 0 { f * pow } else { f / pow };
            return Some(Num::F(if negative { -f } else { f }));
        }
        Some(if !negative {
            Num::U(sig)
        } else {
            let neg = (sig as i64).wrapping_neg();
            if neg >= 0 {
                Num::F(-(sig as f64))
            } else {
                Num::I(neg)
            }
        })
    }

    /// Skips any JSON value (an undeclared field's); `false` (fall back) on anything unusual.
    fn skip(&mut self, depth: u32) -> bool {
        if depth > MAX_SKIP_DEPTH {
            return false;
        }
        match self.peek() {
            b'"' => {
                self.i += 1;
                self.skip_string()
            }
            b'-' | b'0'..=b'9' => self.number().is_some(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'[' => {
                self.i += 1;
                self.ws();
                if self.eat(b']') {
                    return true;
                }
                loop {
                    if !self.skip(depth + 1) {
                        return false;
                    }
                    self.ws();
                    match self.peek() {
                        b',' => {
                            self.i += 1;
                            self.ws();
                        }
                        b']' => {
                            self.i += 1;
                            return true;
                        }
                        _ => return false,
                    }
                }
            }
            b'{' => {
                self.i += 1;
                self.ws();
                if self.eat(b'}') {
                    return true;
                }
                loop {
                    if !self.eat(b'"') || !self.skip_string() {
                        return false;
                    }
                    self.ws();
                    if !self.eat(b':') {
                        return false;
                    }
                    self.ws();
                    if !self.skip(depth + 1) {
                        return false;
                    }
                    self.ws();
                    match self.peek() {
                        b',' => {
                            self.i += 1;
                            self.ws();
                        }
                        b'}' => {
                            self.i += 1;
                            return true;
                        }
                        _ => return false,
                    }
                }
            }
            _ => false,
        }
    }
}

/// What a declared field's value decoded to.
enum Slot {
    /// JSON `null`: as absent.
    Null,
    /// A value.
    Value(Value),
}

/// The value of `spec` at the cursor, or `None` (fall back).
#[inline(always)]
fn value(c: &mut Cursor<'_>, spec: &FieldSpec) -> Option<Slot> {
    if c.peek() == b'n' {
        return c.literal(b"null").then_some(Slot::Null);
    }
    let v = match spec.kind {
        FieldType::Integer => Value::Int(integer(c)?),
        FieldType::Timestamp(TimeFormat::Rfc3339) => {
            if !c.eat(b'"') {
                return None;
            }
            Value::Time(rfc3339_ms(c.str()?)?)
        }
        FieldType::Timestamp(f) => {
            let v = integer(c)?;
            Value::Time(match f {
                TimeFormat::EpochMillis => v,
                TimeFormat::EpochSeconds => v.checked_mul(1000)?,
                TimeFormat::EpochMicros => v.div_euclid(1000),
                TimeFormat::Rfc3339 => unreachable!("matched above"),
            })
        }
        FieldType::Float { scale } => {
            let v = match c.number()? {
                Num::U(v) => v as f64,
                Num::I(v) => v as f64,
                Num::F(v) => v,
            };
            let v = apply_scale(v, scale);
            if !v.is_finite() {
                return None;
            }
            Value::Float(v)
        }
        FieldType::String => {
            if !c.eat(b'"') {
                return None;
            }
            Value::Str(c.str()?.to_owned())
        }
        FieldType::Bool => match c.peek() {
            b't' if c.literal(b"true") => Value::Bool(true),
            b'f' if c.literal(b"false") => Value::Bool(false),
            _ => return None,
        },
    };
    Some(Slot::Value(v))
}

/// An integer in the `i64` range (serde_json's `U64` or `I64`), or `None`.
#[inline(always)]
fn integer(c: &mut Cursor<'_>) -> Option<i64> {
    if !matches!(c.peek(), b'-' | b'0'..=b'9') {
        return None;
    }
    match c.number()? {
        Num::U(v) => i64::try_from(v).ok(),
        Num::I(v) => Some(v),
        Num::F(_) => None,
    }
}

/// Decodes `payload` into `out` (one slot per field, already sized) when it is input this path
/// reproduces exactly; `false`: decode it with serde_json (see the module doc). `out` is then
/// partly written.
pub(super) fn decode(schema: &Schema, payload: &[u8], out: &mut [Value]) -> bool {
    let fields = schema.fields();
    let mut seen = Seen::new(fields.len());
    if !matches!(seen, Seen::Small(_)) {
        return false;
    }
    let mut c = Cursor { b: payload, i: 0 };
    c.ws();
    if !c.eat(b'{') {
        return false;
    }
    c.ws();
    if !c.eat(b'}') {
        let mut hint = 0;
        loop {
            if !c.eat(b'"') {
                return false;
            }
            // The expected key, compared where it lies: its bytes and the closing quote.
            let found = match fields.get(hint) {
                Some(f) if schema.plain_names => {
                    let name = f.name.as_bytes();
                    let rest = &payload[c.i..];
                    (rest.len() > name.len() && rest[name.len()] == b'"' && rest.starts_with(name)).then(|| {
                        c.i += name.len() + 1;
                        hint
                    })
                }
                _ => None,
            };
            let found = match found {
                Some(i) => Some(i),
                None => {
                    let Some((key, ascii)) = c.string() else {
                        return false;
                    };
                    let at = schema.position_bytes(key, hint);
                    // An undeclared key: serde_json decides on rejecting it, or on a key that
                    // is not UTF-8 (a declared name is UTF-8, so a key equal to one is too).
                    let undeclared_ok =
                        schema.unknown == UnknownFields::Ignore && (ascii || std::str::from_utf8(key).is_ok());
                    if at.is_none() && !undeclared_ok {
                        return false;
                    }
                    at
                }
            };
            c.ws();
            if !c.eat(b':') {
                return false;
            }
            c.ws();
            match found {
                Some(i) => {
                    if seen.get(i) {
                        return false;
                    }
                    match value(&mut c, &fields[i]) {
                        None => return false,
                        Some(Slot::Null) => {}
                        Some(Slot::Value(v)) => {
                            out[i] = v;
                            seen.set(i);
                        }
                    }
                    hint = i + 1;
                }
                None => {
                    if !c.skip(0) {
                        return false;
                    }
                }
            }
            c.ws();
            match c.peek() {
                b',' => {
                    c.i += 1;
                    c.ws();
                }
                b'}' => {
                    c.i += 1;
                    break;
                }
                _ => return false,
            }
        }
    }
    c.ws();
    if c.i != payload.len() {
        return false;
    }
    for (i, f) in fields.iter().enumerate() {
        if !seen.get(i) {
            if f.required {
                return false;
            }
            out[i] = f.default.clone().unwrap_or(Value::Missing);
        }
    }
    true
}

/// [`Schema::read_field`]'s fast path: the value of field `index` alone (`Some(None)` when the
/// object lacks it or its value does not decode), or `None`: read it with serde_json.
/// Like serde_json, the whole object must be well-formed and the first occurrence of the key
/// counts.
pub(super) fn read_field(schema: &Schema, payload: &[u8], index: usize) -> Option<Option<Value>> {
    let spec = schema.fields().get(index)?;
    let name = spec.name.as_bytes();
    let mut c = Cursor { b: payload, i: 0 };
    c.ws();
    if !c.eat(b'{') {
        return None;
    }
    c.ws();
    let mut found: Option<Option<Value>> = None;
    if !c.eat(b'}') {
        loop {
            if !c.eat(b'"') {
                return None;
            }
            let (key, ascii) = c.string()?;
            if !ascii {
                std::str::from_utf8(key).ok()?;
            }
            c.ws();
            if !c.eat(b':') {
                return None;
            }
            c.ws();
            if key == name && found.is_none() {
                found = Some(match value(&mut c, spec)? {
                    Slot::Null => None,
                    Slot::Value(v) => Some(v),
                });
            } else if !c.skip(0) {
                return None;
            }
            c.ws();
            match c.peek() {
                b',' => {
                    c.i += 1;
                    c.ws();
                }
                b'}' => {
                    c.i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    c.ws();
    (c.i == payload.len()).then_some(found.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Equal values, floats bit for bit (`-0.0` is not `0.0` here).
    fn same(a: &[Value], b: &[Value]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| match (x, y) {
                (Value::Float(p), Value::Float(q)) => p.to_bits() == q.to_bits(),
                _ => x == y,
            })
    }

    fn schema(kinds: &[(FieldType, bool)], unknown: UnknownFields, odd_name: bool) -> Schema {
        let mut fields = vec![FieldSpec::required("id", FieldType::Integer)];
        for (i, (k, required)) in kinds.iter().enumerate() {
            let name = if odd_name && i == 0 {
                "q\"u\\o".to_string()
            } else {
                format!("f{i}")
            };
            fields.push(if *required {
                FieldSpec::required(&name, *k)
            } else {
                FieldSpec::optional(&name, *k, None)
            });
        }
        Schema::new(fields, "id", None, unknown).unwrap()
    }

    /// Runs both paths; fails if the fast path accepted what serde_json decides otherwise.
    /// Returns whether the fast path accepted.
    fn check(s: &Schema, bytes: &[u8]) -> Result<bool, TestCaseError> {
        let n = s.fields().len();
        let mut fast = vec![Value::Missing; n];
        let accepted = decode(s, bytes, &mut fast);
        let mut slow = vec![Value::Missing; n];
        let reference = s.decode_with_serde(bytes, &mut slow);
        if accepted {
            prop_assert!(
                reference.is_ok(),
                "fast path accepted what serde_json rejects: {:?}: {:?}",
                String::from_utf8_lossy(bytes),
                reference
            );
            prop_assert!(
                same(&fast, &slow),
                "{:?}: fast {fast:?}, serde_json {slow:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        Ok(accepted)
    }

    fn kind() -> impl Strategy<Value = FieldType> {
        prop_oneof![
            Just(FieldType::Integer),
            Just(FieldType::Float { scale: 1.0 }),
            Just(FieldType::Float { scale: 0.01 }),
            Just(FieldType::Float { scale: 0.3 }),
            Just(FieldType::String),
            Just(FieldType::Bool),
            Just(FieldType::Timestamp(TimeFormat::EpochMillis)),
            Just(FieldType::Timestamp(TimeFormat::EpochSeconds)),
            Just(FieldType::Timestamp(TimeFormat::EpochMicros)),
            Just(FieldType::Timestamp(TimeFormat::Rfc3339)),
        ]
    }

    /// JSON value text, valid and not: numbers of every form serde_json parses along another
    /// path (long, `-0`, exponents past 22, leading zeros), strings with escapes, control
    /// characters and non-ASCII, literals, nesting.
    fn value_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "-?(0|[1-9][0-9]{0,21})(\\.[0-9]{1,21})?([eE][+-]?[0-9]{1,3})?",
            "-?[0-9]{1,3}\\.?[eE]?[+-]?",
            Just("9223372036854775807".to_string()),
            Just("9223372036854775808".to_string()),
            Just("-9223372036854775808".to_string()),
            Just("-9223372036854775809".to_string()),
            Just("18446744073709551616".to_string()),
            Just("1e22".to_string()),
            Just("1e23".to_string()),
            Just("1.7976931348623157e308".to_string()),
            Just("-0".to_string()),
            Just("-0.0".to_string()),
            Just("0.1".to_string()),
            "\"([a-z0-9 :.TZ+-]|\\\\n|\\\\\"|\\\\u00e9|é|\u{1}){0,8}\"",
            Just("\"2018-04-01T00:00:01Z\"".to_string()),
            Just("\"2018-04-01T02:00:01.5+02:00\"".to_string()),
            Just("\"\\u0032018-04-01T00:00:01Z\"".to_string()),
            prop_oneof![Just("true"), Just("false"), Just("null"), Just("tru"), Just("nul")].prop_map(str::to_string),
            prop_oneof![
                Just("[]"),
                Just("{}"),
                Just("[1,\"x\",null,{\"a\":[true]}]"),
                Just("{\"a\":{\"b\":\"\\n\"}}"),
                Just("[1,]"),
                Just("{\"a\" 1}")
            ]
            .prop_map(str::to_string),
        ]
    }

    fn ws() -> impl Strategy<Value = String> {
        "[ \t\n\r]{0,2}|"
    }

    /// Value text of a declared type, in every spelling serde_json accepts for it (and some at
    /// the edges it does not), mostly valid so that whole objects often decode.
    fn typed_text(kind: FieldType) -> BoxedStrategy<String> {
        let int = prop_oneof![
            4 => "-?(0|[1-9][0-9]{0,18})",
            1 => value_text(),
        ];
        match kind {
            FieldType::Integer | FieldType::Timestamp(TimeFormat::EpochMillis | TimeFormat::EpochMicros) => int.boxed(),
            FieldType::Timestamp(TimeFormat::EpochSeconds) => prop_oneof![
                4 => "-?(0|[1-9][0-9]{0,11})",
                1 => value_text(),
            ]
            .boxed(),
            FieldType::Float { .. } => prop_oneof![
                4 => "-?(0|[1-9][0-9]{0,21})(\\.[0-9]{1,21})?([eE][+-]?[0-9]{1,2})?",
                1 => value_text(),
            ]
            .boxed(),
            FieldType::String => prop_oneof![
                4 => "\"([a-zA-Z0-9 _-]|é|\\\\n){0,8}\"",
                1 => value_text(),
            ]
            .boxed(),
            FieldType::Bool => prop_oneof![
                2 => Just("true".to_string()),
                2 => Just("false".to_string()),
                1 => value_text(),
            ]
            .boxed(),
            FieldType::Timestamp(TimeFormat::Rfc3339) => prop_oneof![
                4 => "\"20[0-9]{2}-0[1-9]-[0-2][0-9]T[0-1][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,3})?(Z|[+-]0[0-9]:[0-5][0-9])\"",
                1 => value_text(),
            ]
            .boxed(),
        }
    }

    /// A JSON object (or something near one) for `kinds` (after the integer `id`): declared
    /// keys with values of their types (sometimes null, left out or of another type), undeclared
    /// keys, escaped spellings of declared keys, duplicates, whitespace, truncation.
    fn object(kinds: Vec<(FieldType, bool)>) -> impl Strategy<Value = Vec<u8>> {
        let all: Vec<FieldType> = std::iter::once(FieldType::Integer)
            .chain(kinds.iter().map(|k| k.0))
            .collect();
        let n = all.len();
        let declared: Vec<BoxedStrategy<String>> = all
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let name = if i == 0 {
                    "id".to_string()
                } else {
                    format!("f{}", i - 1)
                };
                (
                    ws(),
                    ws(),
                    ws(),
                    prop_oneof![12 => typed_text(*k), 1 => Just("null".to_string())],
                    ws(),
                    0..16u8,
                )
                    .prop_map(move |(a, b, c, v, d, r)| match r {
                        0 => String::new(),                           // left out
                        1 => format!("{a}\"f\\u0030\"{b}:{c}{v}{d}"), // an escaped key
                        _ => format!("{a}\"{name}\"{b}:{c}{v}{d}"),
                    })
                    .boxed()
            })
            .collect();
        let extra_key = prop_oneof![Just("extra"), Just("q\\\"u\\\\o"), Just("é"), Just("id"), Just("f0")];
        let extra = (ws(), extra_key, ws(), value_text()).prop_map(|(a, k, b, v)| format!("{a}\"{k}\":{b}{v}"));
        (
            declared,
            proptest::collection::vec(extra, 0..3),
            any::<u64>(),
            ws(),
            prop_oneof![16 => Just(""), 1 => Just(","), 1 => Just("x")],
            any::<prop::sample::Index>(),
        )
            .prop_map(move |(declared, extras, shuffle, pre, tail, cut)| {
                let mut members: Vec<String> = declared.into_iter().filter(|m| !m.is_empty()).collect();
                for (j, e) in extras.into_iter().enumerate() {
                    let at = (shuffle >> (8 * j)) as usize % (members.len() + 1);
                    members.insert(at, e);
                }
                if shuffle % 4 == 0 && !members.is_empty() {
                    let k = (shuffle >> 40) as usize % members.len();
                    members.rotate_left(k);
                }
                let mut s = format!("{pre}{{{}{tail}}}{pre}", members.join(",")).into_bytes();
                if shuffle % 17 == 0 {
                    s.truncate(cut.index(s.len()));
                }
                let _ = n;
                s
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Whatever the fast path accepts, serde_json decodes to the same values.
        #[test]
        fn the_fast_path_agrees_with_serde_json(
            (kinds, text) in proptest::collection::vec((kind(), any::<bool>()), 1..6)
                .prop_flat_map(|kinds| (Just(kinds.clone()), object(kinds))),
            reject in any::<bool>(),
            odd_name in any::<bool>(),
        ) {
            let unknown = if reject { UnknownFields::Reject } else { UnknownFields::Ignore };
            let s = schema(&kinds, unknown, odd_name);
            check(&s, &text)?;
            for i in 0..s.fields().len() {
                if let Some(v) = read_field(&s, &text, i) {
                    let reference = s.read_field_with_serde(&text, i);
                    prop_assert!(
                        same(v.as_slice(), reference.as_slice()),
                        "{:?} field {i}: fast {v:?}, serde_json {reference:?}",
                        String::from_utf8_lossy(&text)
                    );
                }
            }
        }

        /// On random bytes too.
        #[test]
        fn the_fast_path_agrees_with_serde_json_on_random_bytes(
            kinds in proptest::collection::vec((kind(), any::<bool>()), 1..4),
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            check(&schema(&kinds, UnknownFields::Ignore, false), &bytes)?;
        }
    }

    /// What producers write takes the fast path (else it would silently be slow).
    #[test]
    fn ordinary_events_take_the_fast_path() {
        let s = Schema::new(
            vec![
                FieldSpec::required("id", FieldType::String),
                FieldSpec::required("at", FieldType::Timestamp(TimeFormat::Rfc3339)),
                FieldSpec::required("amount_cents", FieldType::Float { scale: 0.01 }),
                FieldSpec::required("n", FieldType::Integer),
                FieldSpec::optional("country", FieldType::String, Some(Value::Str("??".into()))),
                FieldSpec::optional("card_present", FieldType::Bool, None),
                FieldSpec::optional("ts", FieldType::Timestamp(TimeFormat::EpochSeconds), None),
            ],
            "id",
            Some("at"),
            UnknownFields::Ignore,
        )
        .unwrap();
        for json in [
            r#"{"id":"7f3a","at":"2018-04-01T00:00:01Z","amount_cents":1250,"n":-3}"#,
            r#" { "id" : "7f3a" , "at" : "2018-04-01T00:00:01Z", "amount_cents": 12.5e2, "n": 0, "country": null } "#,
            r#"{"n":1,"amount_cents":-0.25,"id":"ü-1","at":"2018-04-01T02:00:01.5+02:00","card_present":true,"ts":1522540801}"#,
            r#"{"id":"a","meta":{"tags":["x",1,2.5e-3,false,null],"o":{}},"at":"2018-04-01T00:00:01Z","amount_cents":1,"n":9223372036854775807,"country":"FR"}"#,
        ] {
            assert!(check(&s, json.as_bytes()).unwrap(), "fast path not taken: {json}");
        }
        let h = crate::decode::handbook_schema();
        let tx = br#"{"tx_id":1,"tx_time_ms":1522540800000,"customer_id":3,"terminal_id":4,"amount":12.57}"#;
        assert!(check(&h, tx).unwrap());
        // And what it leaves to serde_json, it does leave.
        for json in [
            r#"{"id":"7\u0066","at":"2018-04-01T00:00:01Z","amount_cents":1,"n":1}"#,
            r#"{"id":"7","at":"2018-04-01T00:00:01Z","amount_cents":1e23,"n":1}"#,
            r#"{"id":"7","at":"2018-04-01T00:00:01Z","amount_cents":1,"n":1.0}"#,
            r#"{"id":"7","at":"2018-04-01T00:00:01Z","amount_cents":1,"n":1,"n":2}"#,
            r#"{"id":"7","at":"2018-04-01T00:00:01Z","amount_cents":1,"n":-0}"#,
            r#"{"id":"7","at":"2018-04-01T00:00:01Z","amount_cents":1}"#,
        ] {
            assert!(!check(&s, json.as_bytes()).unwrap(), "fast path taken: {json}");
        }
    }
}
