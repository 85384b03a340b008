//! Bytes → [`Event`] or [`Rejection`]. Hot path: every message passes here once, so fields are
//! borrowed from the input and only the registry lookup allocates nothing.

use std::borrow::Cow;
use std::sync::Arc;

use super::fields;
use super::{Event, EventKind, Reason, Rejection};
use crate::config::{Limits, SensorRegistry};

/// Longest accepted heartbeat `code`, in characters.
pub const MAX_CODE_CHARS: usize = 64;

/// Decodes and validates messages against the registry and limits.
#[derive(Debug, Clone)]
pub struct Decoder {
    registry: Arc<SensorRegistry>,
    limits: Limits,
}

fn json_type(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A non-negative JSON integer, as written (digits only).
fn digits(t: &str) -> Option<&str> {
    (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then_some(t)
}

fn clip(text: &str) -> &str {
    match text.char_indices().nth(40) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

impl Decoder {
    pub fn new(registry: Arc<SensorRegistry>, limits: Limits) -> Self {
        Decoder { registry, limits }
    }

    pub fn registry(&self) -> &SensorRegistry {
        &self.registry
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes one message. `now_ms` is the wall clock used for the future-timestamp rule.
    pub fn decode(&self, bytes: &[u8], now_ms: i64) -> Result<Event, Rejection> {
        if bytes.is_empty() {
            return Err(Rejection::new(Reason::Empty, "empty message"));
        }
        if bytes.len() > self.limits.max_message_bytes {
            return Err(Rejection::new(
                Reason::TooLarge,
                format!(
                    "message is {} bytes; the limit is {} (validation.max_message_bytes)",
                    bytes.len(),
                    self.limits.max_message_bytes
                ),
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            Rejection::new(
                Reason::InvalidUtf8,
                format!("not UTF-8: invalid byte at offset {}", e.valid_up_to()),
            )
        })?;
        if text.trim_start().as_bytes().first() != Some(&b'{') {
            return Err(Rejection::new(
                Reason::NotAnObject,
                format!(
                    "a message must be one JSON object, got `{}`",
                    clip(text.trim())
                ),
            ));
        }
        let mut wire = fields::Fields::default();
        fields::parse(text, &mut wire)?;

        let sensor_id = wire
            .sensor_id
            .ok_or_else(|| Rejection::new(Reason::MissingField, "`sensor_id` is missing"))?;
        let sensor = self.registry.lookup(&sensor_id).ok_or_else(|| {
            Rejection::new(
                Reason::UnknownSensor,
                format!("sensor `{}` is not in the registry", clip(&sensor_id)),
            )
        })?;

        let ts_raw = wire
            .ts
            .ok_or_else(|| Rejection::new(Reason::MissingField, "`ts` is missing"))?;
        let ts_ms = self.timestamp(ts_raw, now_ms)?;

        let seq = match wire.seq {
            None => None,
            Some(raw) => Some(digits(raw).and_then(|d| d.parse::<u64>().ok()).ok_or_else(
                || {
                    Rejection::new(
                        Reason::InvalidSeq,
                        format!("`seq` must be a non-negative integer, got {}", clip(raw)),
                    )
                },
            )?),
        };

        let kind = wire.kind.unwrap_or(Cow::Borrowed("count"));
        let kind = match kind.as_ref() {
            "count" => {
                if wire.status.is_some() || wire.code.is_some() {
                    return Err(Rejection::new(
                        Reason::FieldNotAllowed,
                        "a count event carries `status`/`code`; send those as kind \"heartbeat\"",
                    ));
                }
                let dir = wire.direction.ok_or_else(|| {
                    Rejection::new(Reason::MissingField, "`direction` is missing")
                })?;
                let direction = self.registry.direction(sensor, &dir).ok_or_else(|| {
                    Rejection::new(
                        Reason::UnknownDirection,
                        format!(
                            "direction `{}` is not configured for sensor `{}` (configured: {})",
                            clip(&dir),
                            sensor_id,
                            self.registry.get(sensor).directions.join(", ")
                        ),
                    )
                })?;
                let count = match wire.count {
                    None => 1,
                    Some(raw) => self.count(raw)?,
                };
                EventKind::Count { direction, count }
            }
            "heartbeat" => {
                if wire.count.is_some() || wire.direction.is_some() {
                    return Err(Rejection::new(
                        Reason::FieldNotAllowed,
                        "a heartbeat carries `count`/`direction`; people counts must be sent as kind \"count\"",
                    ));
                }
                let status = wire
                    .status
                    .ok_or_else(|| Rejection::new(Reason::MissingField, "`status` is missing"))?;
                let ok = match status.as_ref() {
                    "ok" => true,
                    "fault" => false,
                    other => {
                        return Err(Rejection::new(
                            Reason::InvalidStatus,
                            format!(
                                "heartbeat status `{}` is neither \"ok\" nor \"fault\"",
                                clip(other)
                            ),
                        ));
                    }
                };
                let code = match wire.code {
                    None => None,
                    Some(c) => {
                        if c.chars().count() > MAX_CODE_CHARS {
                            return Err(Rejection::new(
                                Reason::CodeTooLong,
                                format!("`code` is longer than {MAX_CODE_CHARS} characters"),
                            ));
                        }
                        Some(c.into_owned().into_boxed_str())
                    }
                };
                EventKind::Heartbeat { ok, code }
            }
            other => {
                return Err(Rejection::new(
                    Reason::InvalidKind,
                    format!(
                        "kind `{}` is neither \"count\" nor \"heartbeat\"",
                        clip(other)
                    ),
                ));
            }
        };
        Ok(Event {
            sensor,
            ts_ms,
            seq,
            kind,
        })
    }

    fn count(&self, raw: &str) -> Result<u32, Rejection> {
        let text = raw;
        if text.starts_with('"') || json_type(raw) != "a number" {
            return Err(Rejection::new(
                Reason::WrongType,
                format!(
                    "`count` must be a number, got {} ({})",
                    json_type(raw),
                    clip(text)
                ),
            ));
        }
        let Some(d) = digits(raw) else {
            return Err(Rejection::new(
                Reason::InvalidCount,
                format!("`count` must be a positive integer, got {}", clip(text)),
            ));
        };
        let value = d.parse::<u64>().unwrap_or(u64::MAX);
        if value == 0 {
            return Err(Rejection::new(
                Reason::InvalidCount,
                "`count` must be at least 1, got 0",
            ));
        }
        // max_count is at most u32::MAX (config validation); the conversion refuses anything more.
        let fits = u32::try_from(value).ok();
        if value > self.limits.max_count || fits.is_none() {
            return Err(Rejection::new(
                Reason::CountTooLarge,
                format!(
                    "`count` {} is above the limit {} (validation.max_count)",
                    clip(d),
                    self.limits.max_count
                ),
            ));
        }
        Ok(fits.unwrap_or(u32::MAX))
    }

    fn timestamp(&self, raw: &str, now_ms: i64) -> Result<i64, Rejection> {
        let text = raw;
        let ms = if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            parse_rfc3339_ms(inner)?
        } else if let Some(d) = digits(raw) {
            d.parse::<i64>().map_err(|_| {
                Rejection::new(
                    Reason::InvalidTimestamp,
                    format!("`ts` {} is out of range", clip(d)),
                )
            })?
        } else if json_type(raw) == "a number" {
            return Err(Rejection::new(
                Reason::InvalidTimestamp,
                format!(
                    "`ts` as a number must be whole epoch milliseconds, got {}",
                    clip(text)
                ),
            ));
        } else {
            return Err(Rejection::new(
                Reason::WrongType,
                format!(
                    "`ts` must be an RFC 3339 string or epoch milliseconds, got {}",
                    json_type(raw)
                ),
            ));
        };
        if ms < self.limits.earliest_ms {
            return Err(Rejection::new(
                Reason::TimestampTooOld,
                format!(
                    "`ts` {} is before validation.earliest (epoch seconds sent as milliseconds?)",
                    clip(text)
                ),
            ));
        }
        if ms > now_ms.saturating_add(self.limits.max_future_ms) {
            return Err(Rejection::new(
                Reason::FutureTimestamp,
                format!(
                    "`ts` {} is {} min ahead of the wall clock (limit validation.max_future)",
                    clip(text),
                    (ms - now_ms) / 60_000
                ),
            ));
        }
        Ok(ms)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Fast path for the layout gateways send, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `None`
/// for anything else (leap seconds included), which then goes through chrono's full parser.
/// A property test keeps it equal to chrono.
fn fast_rfc3339_ms(s: &[u8]) -> Option<i64> {
    if s.len() < 20 {
        return None;
    }
    let digit = |i: usize| -> Option<i64> {
        let c = s.get(i)?.wrapping_sub(b'0');
        (c < 10).then_some(i64::from(c))
    };
    let two = |i: usize| Some(digit(i)? * 10 + digit(i + 1)?);
    if s[4] != b'-'
        || s[7] != b'-'
        || !matches!(s[10], b'T' | b't' | b' ')
        || s[13] != b':'
        || s[16] != b':'
    {
        return None;
    }
    let year = digit(0)? * 1000 + digit(1)? * 100 + digit(2)? * 10 + digit(3)?;
    let (month, day, hour, minute, second) = (two(5)?, two(8)?, two(11)?, two(14)?, two(17)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if s[i] == b'.' {
        i += 1;
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(s[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 9 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_s = match s.get(i)? {
        b'Z' | b'z' if i + 1 == s.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == s.len() && s[i + 3] == b':' => {
            let (oh, om) = (two(i + 1)?, two(i + 4)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(secs * 1000 + millis)
}

/// Parses an RFC 3339 timestamp with offset into epoch milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, Rejection> {
    if let Some(ms) = fast_rfc3339_ms(text.as_bytes()) {
        return Ok(ms);
    }
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => Ok(t.timestamp_millis()),
        Err(e) => {
            let naive = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"));
            if naive.is_ok() {
                Err(Rejection::new(
                    Reason::TimestampWithoutOffset,
                    format!(
                        "`ts` \"{}\" has no UTC offset; add one, e.g. \"{}+09:00\"",
                        clip(text),
                        clip(text)
                    ),
                ))
            } else {
                Err(Rejection::new(
                    Reason::InvalidTimestamp,
                    format!("`ts` \"{}\" is not RFC 3339 ({e})", clip(text)),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const NOW: i64 = 1_798_000_000_000; // 2026-12-23

    fn decoder() -> Decoder {
        let cfg = Config::chikaho("memory://");
        Decoder::new(Arc::new(cfg.registry), cfg.limits)
    }

    fn reason(line: &str) -> Reason {
        decoder().decode(line.as_bytes(), NOW).unwrap_err().reason
    }

    #[test]
    fn decodes_the_design_examples() {
        let d = decoder();
        let e = d
            .decode(
                br#"{"sensor_id":"J1-1","ts":"2026-11-02T08:15:03.123+09:00","direction":"north","count":1,"seq":184467}"#,
                NOW,
            )
            .unwrap();
        assert_eq!(e.sensor, 0);
        assert_eq!(e.ts_ms, 1_793_574_903_123);
        assert_eq!(e.seq, Some(184_467));
        assert_eq!(
            e.kind,
            EventKind::Count {
                direction: 0,
                count: 1
            }
        );
        let h = d
            .decode(br#"{"sensor_id":"J1-1","ts":"2026-11-02T08:15:00+09:00","kind":"heartbeat","status":"ok"}"#, NOW)
            .unwrap();
        assert_eq!(
            h.kind,
            EventKind::Heartbeat {
                ok: true,
                code: None
            }
        );
        // Epoch milliseconds, default count, escaped strings, unknown fields dropped.
        let e = d
            .decode(br#"{"sensor_id":"J2\u002d5","ts":1793574903123,"direction":"south","photo":"...","mac":"aa:bb"}"#, NOW)
            .unwrap();
        assert_eq!((e.sensor, e.ts_ms), (7, 1_793_574_903_123));
        assert_eq!(
            e.kind,
            EventKind::Count {
                direction: 1,
                count: 1
            }
        );
        let f = d
            .decode(br#"{"sensor_id":"J1-2","ts":"2026-11-02T08:15:00Z","kind":"heartbeat","status":"fault","code":"E42"}"#, NOW)
            .unwrap();
        assert_eq!(
            f.kind,
            EventKind::Heartbeat {
                ok: false,
                code: Some("E42".into())
            }
        );
    }

    #[test]
    fn every_rule_has_its_reason() {
        let ok = r#""sensor_id":"J1-1","ts":"2026-11-02T08:15:03+09:00""#;
        let cases: Vec<(String, Reason)> = vec![
            ("".into(), Reason::Empty),
            (
                format!(
                    r#"{{{ok},"direction":"north","pad":"{}"}}"#,
                    "x".repeat(5000)
                ),
                Reason::TooLarge,
            ),
            ("{\"sensor_id\":\"J1-\u{1}".into(), Reason::InvalidJson),
            ("[1,2]".into(), Reason::NotAnObject),
            (
                format!(r#"{{{ok},"direction":"north","direction":"south"}}"#),
                Reason::DuplicateField,
            ),
            (
                r#"{"ts":"2026-11-02T08:15:03+09:00","direction":"north"}"#.into(),
                Reason::MissingField,
            ),
            (format!(r#"{{{ok}}}"#), Reason::MissingField),
            (
                r#"{"sensor_id":5,"ts":"2026-11-02T08:15:03+09:00","direction":"north"}"#.into(),
                Reason::WrongType,
            ),
            (
                r#"{"sensor_id":"X9","ts":"2026-11-02T08:15:03+09:00","direction":"north"}"#.into(),
                Reason::UnknownSensor,
            ),
            (
                format!(r#"{{{ok},"direction":"east"}}"#),
                Reason::UnknownDirection,
            ),
            (
                format!(r#"{{{ok},"direction":"north","kind":"photo"}}"#),
                Reason::InvalidKind,
            ),
            (
                format!(r#"{{{ok},"direction":"north","count":0}}"#),
                Reason::InvalidCount,
            ),
            (
                format!(r#"{{{ok},"direction":"north","count":-3}}"#),
                Reason::InvalidCount,
            ),
            (
                format!(r#"{{{ok},"direction":"north","count":1.5}}"#),
                Reason::InvalidCount,
            ),
            (
                format!(r#"{{{ok},"direction":"north","count":"2"}}"#),
                Reason::WrongType,
            ),
            (
                format!(r#"{{{ok},"direction":"north","count":5000}}"#),
                Reason::CountTooLarge,
            ),
            (
                r#"{"sensor_id":"J1-1","ts":"yesterday","direction":"north"}"#.into(),
                Reason::InvalidTimestamp,
            ),
            (
                r#"{"sensor_id":"J1-1","ts":"2026-11-02T08:15:03","direction":"north"}"#.into(),
                Reason::TimestampWithoutOffset,
            ),
            (
                r#"{"sensor_id":"J1-1","ts":1762038903,"direction":"north"}"#.into(),
                Reason::TimestampTooOld,
            ),
            (
                r#"{"sensor_id":"J1-1","ts":"2100-01-01T00:00:00Z","direction":"north"}"#.into(),
                Reason::FutureTimestamp,
            ),
            (
                format!(r#"{{{ok},"direction":"north","seq":-1}}"#),
                Reason::InvalidSeq,
            ),
            (
                format!(r#"{{{ok},"kind":"heartbeat","status":"sleepy"}}"#),
                Reason::InvalidStatus,
            ),
            (
                format!(
                    r#"{{{ok},"kind":"heartbeat","status":"fault","code":"{}"}}"#,
                    "c".repeat(65)
                ),
                Reason::CodeTooLong,
            ),
            (
                format!(r#"{{{ok},"kind":"heartbeat","status":"ok","count":3}}"#),
                Reason::FieldNotAllowed,
            ),
            (
                format!(r#"{{{ok},"direction":"north","status":"ok"}}"#),
                Reason::FieldNotAllowed,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(reason(&line), want, "for {}", clip(&line));
        }
        assert_eq!(
            decoder()
                .decode(b"{\"sensor_id\":\"J1-1\xff\"}", NOW)
                .unwrap_err()
                .reason,
            Reason::InvalidUtf8
        );
    }

    #[test]
    fn schema_lists_every_reason_and_accepts_the_examples() {
        let text = include_str!("../../schemas/sensor-event.schema.json");
        let schema: serde_json::Value = serde_json::from_str(text).unwrap();
        let listed: Vec<&str> = schema["x-reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(listed, codes);
        for ex in schema["examples"].as_array().unwrap() {
            decoder().decode(ex.to_string().as_bytes(), NOW).unwrap();
        }
    }

    proptest::proptest! {
        #[test]
        fn fast_timestamps_equal_chrono(
            secs in 946_684_800i64..4_102_444_800,
            nanos in 0u32..1_000_000_000,
            offset_min in -(23 * 60 + 59)..(23 * 60 + 59),
            frac in 0usize..4,
            zulu in proptest::bool::ANY,
        ) {
            let t = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
            let off = chrono::FixedOffset::east_opt(offset_min * 60).unwrap();
            let fmt = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%.3f", "%Y-%m-%dT%H:%M:%S%.6f", "%Y-%m-%dT%H:%M:%S%.9f"][frac];
            let text = if zulu {
                format!("{}Z", t.format(fmt))
            } else {
                format!("{}{}", t.with_timezone(&off).format(fmt), t.with_timezone(&off).format("%:z"))
            };
            let want = chrono::DateTime::parse_from_rfc3339(&text).unwrap().timestamp_millis();
            proptest::prop_assert_eq!(fast_rfc3339_ms(text.as_bytes()), Some(want), "{}", text);
        }

        #[test]
        fn fast_path_never_accepts_what_chrono_rejects(text in "[0-9T:+Z. -]{18,32}") {
            if let Some(ms) = fast_rfc3339_ms(text.as_bytes()) {
                let chrono_ms = chrono::DateTime::parse_from_rfc3339(&text).map(|t| t.timestamp_millis());
                proptest::prop_assert_eq!(chrono_ms, Ok(ms), "{}", text);
            }
        }
    }

    #[test]
    fn fast_path_handles_the_calendar_edges() {
        for text in [
            "2024-02-29T23:59:59.999+09:00",
            "2000-01-01T00:00:00Z",
            "2026-12-31T15:00:00-09:30",
            "2100-03-01T00:00:00Z",
        ] {
            let want = chrono::DateTime::parse_from_rfc3339(text)
                .unwrap()
                .timestamp_millis();
            assert_eq!(fast_rfc3339_ms(text.as_bytes()), Some(want), "{text}");
        }
        for text in [
            "2023-02-29T00:00:00Z",
            "2026-11-02T24:00:00Z",
            "2026-11-02T08:15:60Z",
            "2026-11-02T08:15:00",
            "2026-11-02T08:15:00+0900",
        ] {
            assert_eq!(fast_rfc3339_ms(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn reason_codes_are_unique() {
        let mut codes: Vec<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
    }
}
