//! A message's fields, as the decoder's rules see them — read by a fast scanner when the message is
//! a plain flat object (what gateways send), by serde_json otherwise.
//!
//! The scanner ([`scan`]) handles one object of `"key": value` pairs whose strings have no escapes
//! or control characters and whose values are strings, numbers, `true`, `false` or `null`. For
//! anything else — an escape, a nested value in any field, a duplicate known field, a number
//! serde_json would refuse, trailing text — it declines, and [`parse`] runs serde_json, which
//! produces the precise error. Whenever the scanner answers, its answer equals serde_json's
//! (property test below), so the rules in [`super::decode`] cannot tell which one ran. On the
//! bench's gateway lines the scanner is several times faster than serde_json, which was about half
//! of all decode cycles (BENCHMARKS.md).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Reason, Rejection};

/// The fields the rules read. Text fields hold the string's value; raw fields hold the value's
/// JSON text (a string with its quotes). `None`: absent or `null`. Other fields are ignored —
/// that is where unknown fields are dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields<'a> {
    pub sensor_id: Option<Cow<'a, str>>,
    pub ts: Option<&'a str>,
    pub kind: Option<Cow<'a, str>>,
    pub direction: Option<Cow<'a, str>>,
    pub count: Option<&'a str>,
    pub seq: Option<&'a str>,
    pub status: Option<Cow<'a, str>>,
    pub code: Option<Cow<'a, str>>,
}

/// The fields of `text` (which starts with `{` after whitespace) into `f`, or why it is not a
/// message. Filled in place: moving the 170-byte struct out of a returned `Option` and `Result`
/// cost two `memcpy` calls per message (~6 % of ingest cycles).
pub fn parse<'a>(text: &'a str, f: &mut Fields<'a>) -> Result<(), Rejection> {
    if scan_into(text, f).is_none() {
        match parse_serde(text) {
            Ok(fields) => *f = fields,
            Err(e) => {
                *f = Fields::default(); // nothing the scanner filled before it declined
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The general path: serde_json.
pub fn parse_serde(text: &str) -> Result<Fields<'_>, Rejection> {
    let wire: Wire = serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        let reason = if msg.starts_with("duplicate field") {
            Reason::DuplicateField
        } else if msg.starts_with("invalid type") {
            Reason::WrongType
        } else {
            Reason::InvalidJson
        };
        Rejection::new(reason, msg)
    })?;
    fn raw(r: Option<&RawValue>) -> Option<&str> {
        r.map(RawValue::get).filter(|t| *t != "null")
    }
    Ok(Fields {
        sensor_id: wire.sensor_id.map(|t| t.0),
        ts: raw(wire.ts),
        kind: wire.kind.map(|t| t.0),
        direction: wire.direction.map(|t| t.0),
        count: raw(wire.count),
        seq: raw(wire.seq),
        status: wire.status.map(|t| t.0),
        code: wire.code.map(|t| t.0),
    })
}

/// A JSON string borrowed from the input when it has no escapes (serde's own `Cow` does not
/// borrow inside an `Option`).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// The message as serde sees it. Text fields are strings (a wrong type is a serde error,
/// classified as `wrong_type`); numeric fields stay raw so each rule gets its precise reason.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    sensor_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    ts: Option<&'a RawValue>,
    #[serde(borrow, default)]
    kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    direction: Option<Text<'a>>,
    #[serde(borrow, default)]
    count: Option<&'a RawValue>,
    #[serde(borrow, default)]
    seq: Option<&'a RawValue>,
    #[serde(borrow, default)]
    status: Option<Text<'a>>,
    #[serde(borrow, default)]
    code: Option<Text<'a>>,
}

/// JSON whitespace.
#[inline]
fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The end (index of the closing quote) of a string starting after the quote at `start - 1`, if
/// the string has neither escapes nor control characters. Eight bytes at a time: a byte is
/// flagged when it is `"` or `\\` or below 0x20 (the usual "has zero byte" bit trick; flags above a
/// true match may be spurious, so only the lowest one is read, and it is always a true match).
#[inline]
fn plain_string_end(b: &[u8], start: usize) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const QUOTE: u64 = LO * b'"' as u64;
    const BACKSLASH: u64 = LO * b'\\' as u64;
    const SPACE: u64 = LO * 0x20;
    let mut i = start;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let q = x ^ QUOTE;
        let s = x ^ BACKSLASH;
        let flags =
            ((q.wrapping_sub(LO) & !q) | (s.wrapping_sub(LO) & !s) | (x.wrapping_sub(SPACE) & !x))
                & HI;
        if flags != 0 {
            let j = i + (flags.trailing_zeros() / 8) as usize;
            return (b[j] == b'"').then_some(j);
        }
        i += 8;
    }
    loop {
        match *b.get(i)? {
            b'"' => return Some(i),
            b'\\' | 0..0x20 => return None,
            _ => i += 1,
        }
    }
}

/// Index of a known field (the bit in [`scan`]'s `seen`), by fixed-size compares.
#[inline]
fn field_index(key: &[u8]) -> Option<usize> {
    #[inline(always)]
    fn is<const N: usize>(key: &[u8], name: &[u8; N]) -> bool {
        <&[u8; N]>::try_from(key).is_ok_and(|k| k == name)
    }
    match key.len() {
        2 if is(key, b"ts") => Some(1),
        3 if is(key, b"seq") => Some(5),
        4 if is(key, b"kind") => Some(2),
        4 if is(key, b"code") => Some(7),
        5 if is(key, b"count") => Some(4),
        6 if is(key, b"status") => Some(6),
        9 if is(key, b"sensor_id") => Some(0),
        9 if is(key, b"direction") => Some(3),
        _ => None,
    }
}

/// Exactly JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn json_number(t: &[u8]) -> bool {
    let digits = |i: &mut usize| {
        let s = *i;
        while t.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > s
    };
    let mut i = usize::from(t.first() == Some(&b'-'));
    match t.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if t.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if let Some(b'e' | b'E') = t.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = t.get(i) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == t.len()
}

/// A value of the flat subset.
enum Value<'a> {
    /// A string without escapes: its raw text (with quotes) and its content.
    Str(&'a str, &'a str),
    Null,
    /// A number, `true` or `false`: raw text.
    Token(&'a str),
}

/// A text field's value; `None` for a wrong type (serde_json's error).
fn text_field(v: Value<'_>) -> Option<Option<Cow<'_, str>>> {
    match v {
        Value::Str(_, s) => Some(Some(Cow::Borrowed(s))),
        Value::Null => Some(None),
        Value::Token(_) => None,
    }
}

/// A raw field's JSON text.
fn raw_field(v: Value<'_>) -> Option<&str> {
    match v {
        Value::Str(raw, _) | Value::Token(raw) => Some(raw),
        Value::Null => None,
    }
}

/// The fast path: the fields of a plain flat object, or `None` to leave the message to serde_json.
pub fn scan(text: &str) -> Option<Fields<'_>> {
    let mut f = Fields::default();
    scan_into(text, &mut f).map(|()| f)
}

/// [`scan`] into `f` (reset first); `None` leaves the message to serde_json, and `f` to be
/// overwritten.
fn scan_into<'a>(text: &'a str, f: &mut Fields<'a>) -> Option<()> {
    *f = Fields::default();
    let b = text.as_bytes();
    let mut seen = 0u8;
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let key_end = plain_string_end(b, i + 1)?;
            let key = &b[i + 1..key_end];
            i = ws(b, key_end + 1);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = ws(b, i + 1);
            let value = match *b.get(i)? {
                b'"' => {
                    let end = plain_string_end(b, i + 1)?;
                    let v = Value::Str(&text[i..=end], &text[i + 1..end]);
                    i = end + 1;
                    v
                }
                b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                    let start = i;
                    while let Some(b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'+' | b'-' | b'.') =
                        b.get(i)
                    {
                        i += 1;
                    }
                    match &text[start..i] {
                        "null" => Value::Null,
                        t @ ("true" | "false") => Value::Token(t),
                        t if json_number(t.as_bytes()) => Value::Token(t),
                        _ => return None,
                    }
                }
                _ => return None, // nested values, garbage: serde_json decides
            };
            if let Some(k) = field_index(key) {
                let bit = 1u8 << k;
                if seen & bit != 0 {
                    return None; // duplicate field: serde_json's error
                }
                seen |= bit;
                match k {
                    0 => f.sensor_id = text_field(value)?,
                    1 => f.ts = raw_field(value),
                    2 => f.kind = text_field(value)?,
                    3 => f.direction = text_field(value)?,
                    4 => f.count = raw_field(value),
                    5 => f.seq = raw_field(value),
                    6 => f.status = text_field(value)?,
                    _ => f.code = text_field(value)?,
                }
            }
            i = ws(b, i);
            match b.get(i) {
                Some(b',') => i = ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (ws(b, i) == b.len()).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gateway_lines_take_the_fast_path() {
        let lines = [
            r#"{"sensor_id":"J1-1","ts":"2026-11-02T08:15:03.123+09:00","direction":"north","count":1,"seq":184467}"#,
            r#"{"sensor_id":"J1-1","ts":"2026-11-02T08:15:00+09:00","kind":"heartbeat","status":"ok"}"#,
            r#" { "sensor_id" : "J2-5" , "ts" : 1793574903123 , "extra" : [1, {"a": 2}] } "#,
        ];
        assert!(scan(lines[0]).is_some());
        assert!(scan(lines[1]).is_some());
        assert!(scan(lines[2]).is_none(), "nested values go to serde_json");
        // One `Fields` reused for every line (as a decoder might), the second line after a
        // fully filled first, the third after the scanner filled some fields and declined.
        let mut f = Fields::default();
        for l in lines {
            parse(l, &mut f).unwrap();
            assert_eq!(Ok(f.clone()), parse_serde(l));
        }
        let f = scan(lines[0]).unwrap();
        assert_eq!(f.ts, Some(r#""2026-11-02T08:15:03.123+09:00""#));
        assert_eq!(f.seq, Some("184467"));
        assert_eq!(f.direction.as_deref(), Some("north"));
    }

    #[test]
    fn string_ends_at_every_position() {
        // Every length and position of the quote / an escape / a control byte, for the 8-byte
        // steps and the tail, and non-ASCII bytes (whose top bit is set) around them.
        for len in 0..40 {
            for filler in [b'a', 0xe5, b' ', 0x7f] {
                let mut s = vec![filler; len];
                s.push(b'"');
                s.extend_from_slice(b"tail\\\"");
                assert_eq!(plain_string_end(&s, 0), Some(len), "{len} {filler}");
                for bad in [b'\\', 0x00, 0x1f, b'\n'] {
                    for at in 0..len {
                        let mut t = s.clone();
                        t[at] = bad;
                        assert_eq!(plain_string_end(&t, 0), None, "{len} {at} {bad}");
                    }
                }
            }
        }
        assert_eq!(plain_string_end(b"abc", 0), None, "unterminated");
    }

    #[test]
    fn json_numbers_exactly() {
        for ok in ["0", "-0", "7", "184467", "1.5", "-2.25e-3", "1E+9", "0.0"] {
            assert!(json_number(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "1e+", "+1", "0x10", "1.2.3", "--1", "Infinity",
        ] {
            assert!(!json_number(bad.as_bytes()), "{bad}");
        }
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            16 => prop::sample::select(vec![
                "sensor_id", "ts", "kind", "direction", "count", "seq", "status", "code",
            ])
            .prop_map(|k| format!("\"{k}\"")),
            4 => "[a-z_]{0,6}".prop_map(|k| format!("\"{k}\"")),
            1 => Just(r#""sensor\u005fid""#.to_string()),
            1 => Just(r#""se\"q""#.to_string()),
            1 => Just("seq".to_string()),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            12 => "[ -~&&[^\"\\\\]]{0,12}".prop_map(|s| format!("\"{s}\"")),
            1 => "[a-zé北\\\\\"\\x01]{0,6}".prop_map(|s| format!("\"{s}\"")),
            1 => Just(r#""J1\u002d1""#.to_string()),
            12 => "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,2})?([eE][+-]?[0-9]{1,2})?",
            1 => "-?[0-9]{1,4}(\\.[0-9]{0,2})?([eE][+-]?[0-9]{0,2})?",
            1 => prop::sample::select(vec![
                "true", "false", "null", "nul", "truee", "01", "-", "1.", "[]", "[1,2]",
                "{}", "{\"a\":1}", "\"", "\"unterminated", "NaN", "+1", "0x1",
            ])
            .prop_map(str::to_string),
        ]
    }

    fn space() -> impl Strategy<Value = String> {
        prop_oneof![
            30 => Just(String::new()),
            10 => "[ \t\r\n]{1,3}",
            1 => Just("\u{a0}".to_string()),
            1 => Just("\u{c}".to_string()),
        ]
    }

    fn message() -> impl Strategy<Value = String> {
        (
            prop::collection::vec((key(), value(), space(), space(), space()), 0..6),
            space(),
            prop::sample::select(vec!["", "", "", "", "", "", ",", "x", "}", " \n"]),
            prop::bool::weighted(0.05),
        )
            .prop_map(|(pairs, lead, tail, trailing_comma)| {
                let body: Vec<String> = pairs
                    .into_iter()
                    .map(|(k, v, a, b, c)| format!("{a}{k}{b}:{c}{v}"))
                    .collect();
                let comma = if trailing_comma { "," } else { "" };
                format!("{lead}{{{}{comma}}}{tail}", body.join(","))
            })
    }

    /// The agreement property below means something only if the generated messages take both
    /// paths often.
    #[test]
    fn generated_messages_exercise_both_paths() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = message();
        let (mut fast, mut declined, mut valid) = (0, 0, 0);
        for _ in 0..4000 {
            let text = strategy.new_tree(&mut runner).unwrap().current();
            match scan(&text) {
                Some(_) => fast += 1,
                None => declined += 1,
            }
            valid += usize::from(parse_serde(&text).is_ok());
        }
        assert!(
            fast > 400 && declined > 400,
            "fast {fast}, declined {declined}"
        );
        assert!(
            valid > fast,
            "serde_json accepts more than the scanner: {valid} vs {fast}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        /// Whenever the scanner answers, serde_json accepts the message and reads the same fields.
        #[test]
        fn the_scanner_agrees_with_serde_json(text in message()) {
            if let Some(fast) = scan(&text) {
                prop_assert_eq!(Ok(fast), parse_serde(&text), "{}", text);
            }
        }

        /// And it does answer for the flat objects gateways send, in any field order.
        #[test]
        fn the_scanner_reads_every_plain_flat_object(
            fields in prop::collection::btree_map(
                prop::sample::select(vec!["sensor_id", "ts", "kind", "direction", "count", "seq", "status", "code", "extra"]),
                prop_oneof!["[ -~&&[^\"\\\\]]{0,12}".prop_map(|s| format!("\"{s}\"")), "0|[1-9][0-9]{0,9}", Just("null".to_string())],
                0..9,
            ),
            spaced in prop::bool::ANY,
        ) {
            let sep = if spaced { " , " } else { "," };
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let text = format!("{{{}}}", body.join(sep));
            let serde = parse_serde(&text);
            let text_ok = fields.iter().all(|(k, v)| {
                !matches!(*k, "sensor_id" | "kind" | "direction" | "status" | "code")
                    || v.starts_with('"') || v == "null"
            });
            if text_ok {
                prop_assert!(serde.is_ok(), "{}", text);
                prop_assert_eq!(scan(&text), serde.ok(), "{}", text);
            } else {
                prop_assert_eq!(scan(&text), None, "{}", text);
            }
        }
    }
}
