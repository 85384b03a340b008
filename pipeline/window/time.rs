//! Window arithmetic in the facility's time zone: where a window starts, which local date and time
//! it has, whether the facility is closed for all of it, and the full grid of windows of a day or a
//! month (92 or 100 windows on a DST change day in zones that have one).
//!
//! Times are epoch milliseconds (UTC) everywhere in the pipeline; local time exists only here and
//! in the output formats. Nothing here assumes Asia/Tokyo.

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Offset, TimeZone, Timelike};
use chrono_tz::Tz;

const MINUTE_MS: i64 = 60_000;

/// A daily closure in local time, e.g. `00:46-05:44`. It may wrap midnight (`23:00-06:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedHours {
    /// Minutes after local midnight when the closure starts.
    pub from_min: u32,
    /// Minutes after local midnight when it ends (exclusive).
    pub to_min: u32,
}

impl ClosedHours {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(text: &str) -> Result<ClosedHours, String> {
        let bad = || {
            format!(
                "`{text}` is not a local time range; write it like \"00:46-05:44\" (HH:MM-HH:MM)"
            )
        };
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let minutes = |s: &str| -> Result<u32, String> {
            let t = NaiveTime::parse_from_str(s.trim(), "%H:%M").map_err(|_| bad())?;
            Ok(t.hour() * 60 + t.minute())
        };
        let (from_min, to_min) = (minutes(a)?, minutes(b)?);
        if from_min == to_min {
            return Err(format!("`{text}` is an empty range"));
        }
        Ok(ClosedHours { from_min, to_min })
    }

    /// Whether the local minute of the day `m` is inside the closure.
    pub fn contains_minute(&self, m: u32) -> bool {
        if self.from_min < self.to_min {
            (self.from_min..self.to_min).contains(&m)
        } else {
            m >= self.from_min || m < self.to_min
        }
    }

    /// Whether the local span `[start, end)` (minutes after midnight; `end` may exceed 1440 when
    /// the span crosses midnight) lies entirely inside the closure.
    fn covers(&self, start: u32, end: u32) -> bool {
        let (a, b) = (self.from_min, self.to_min);
        if a < b {
            // [a, b) on one day, or on the next day when the span starts after midnight.
            (a <= start && end <= b) || (a + 1440 <= start && end <= b + 1440)
        } else {
            // Wraps midnight: [a, 1440 + b) and the tail [0, b) of the previous night.
            (a <= start && end <= 1440 + b) || end <= b
        }
    }
}

/// Window size, allowed lateness, time zone and closure: everything that decides window
/// boundaries and when a window is final.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    pub size_ms: i64,
    pub lateness_ms: i64,
    pub tz: Tz,
    pub closed: Vec<ClosedHours>,
}

impl WindowSpec {
    pub fn new(size_ms: i64, lateness_ms: i64, tz: Tz, closed: Vec<ClosedHours>) -> Self {
        WindowSpec {
            size_ms,
            lateness_ms,
            tz,
            closed,
        }
    }

    /// UTC offset in force at `utc_ms`, in milliseconds.
    fn offset_ms(&self, utc_ms: i64) -> i64 {
        let t = DateTime::from_timestamp_millis(utc_ms).unwrap_or_default();
        i64::from(
            self.tz
                .offset_from_utc_datetime(&t.naive_utc())
                .fix()
                .local_minus_utc(),
        ) * 1000
    }

    /// Start (UTC ms) of the window holding `ts_ms`: the local wall-clock time is floored to the
    /// window size, so windows align to local :00/:15/:30/:45 whatever the zone's offset.
    pub fn window_start(&self, ts_ms: i64) -> i64 {
        let off = self.offset_ms(ts_ms);
        let local = ts_ms + off;
        local - local.rem_euclid(self.size_ms) - off
    }

    /// The local date and time at which a window starts.
    pub fn local(&self, utc_ms: i64) -> DateTime<Tz> {
        self.tz
            .timestamp_millis_opt(utc_ms)
            .single()
            .expect("UTC instants map to one local time")
    }

    /// Local date of a window start: the `date=` partition of its rows.
    pub fn local_date(&self, window_start: i64) -> NaiveDate {
        self.local(window_start).date_naive()
    }

    /// Whether the facility is closed for the whole window.
    pub fn is_closed(&self, window_start: i64) -> bool {
        if self.closed.is_empty() {
            return false;
        }
        let start = self.local(window_start);
        let end = self.local(window_start + self.size_ms);
        let s = start.hour() * 60 + start.minute();
        let mut e = end.hour() * 60 + end.minute();
        if end.date_naive() != start.date_naive() {
            e += 1440;
        }
        self.closed.iter().any(|c| c.covers(s, e))
    }

    /// Whether the facility is closed at the instant `utc_ms`.
    pub fn closed_at(&self, utc_ms: i64) -> bool {
        let t = self.local(utc_ms);
        let m = t.hour() * 60 + t.minute();
        self.closed.iter().any(|c| c.contains_minute(m))
    }

    /// The first instant of a local date (midnight, or the first valid time after a gap).
    pub fn day_start(&self, date: NaiveDate) -> i64 {
        let mut t = date.and_hms_opt(0, 0, 0).expect("midnight");
        for _ in 0..48 {
            if let Some(dt) = self.tz.from_local_datetime(&t).earliest() {
                return dt.timestamp_millis();
            }
            t += chrono::Duration::minutes(30);
        }
        unreachable!("no valid local time on {date}")
    }

    /// Every window start of the local dates `[from, to)`, in order.
    pub fn windows_between(&self, from: NaiveDate, to: NaiveDate) -> Vec<i64> {
        let end = self.day_start(to);
        let mut out = Vec::new();
        let mut ws = self.window_start(self.day_start(from));
        while ws < end {
            out.push(ws);
            let next = self.window_start(ws + self.size_ms);
            ws = if next > ws { next } else { ws + self.size_ms };
        }
        out
    }

    /// Every window start of a calendar month.
    pub fn month_windows(&self, year: i32, month: u32) -> Vec<i64> {
        let (from, to) = month_bounds(year, month);
        self.windows_between(from, to)
    }
}

/// First day of a month and first day of the next.
pub fn month_bounds(year: i32, month: u32) -> (NaiveDate, NaiveDate) {
    let from = NaiveDate::from_ymd_opt(year, month, 1).expect("valid month");
    let to = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    }
    .expect("valid month");
    (from, to)
}

/// Parses `YYYY-MM` into (year, month).
pub fn parse_month(text: &str) -> Result<(i32, u32), String> {
    let bad = || format!("`{text}` is not a month; write it as YYYY-MM, e.g. 2026-11");
    let (y, m) = text.split_once('-').ok_or_else(bad)?;
    let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || text.len() != 7 {
        return Err(bad());
    }
    Ok((y, m))
}

/// Formats a local date as the `date=` partition value.
pub fn partition_value(date: NaiveDate) -> String {
    format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day())
}

/// Minutes of a duration in ms, for messages.
pub fn minutes(ms: i64) -> i64 {
    ms / MINUTE_MS
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America, Asia, Europe};

    fn spec(tz: Tz) -> WindowSpec {
        WindowSpec::new(
            900_000,
            600_000,
            tz,
            vec![ClosedHours::parse("00:46-05:44").unwrap()],
        )
    }

    fn at(tz: Tz, s: &str) -> i64 {
        let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap();
        tz.from_local_datetime(&naive)
            .earliest()
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn windows_align_to_local_quarter_hours() {
        let s = spec(Asia::Tokyo);
        let ts = at(Asia::Tokyo, "2026-11-02 08:14:59");
        assert_eq!(s.window_start(ts), at(Asia::Tokyo, "2026-11-02 08:00:00"));
        let ts = at(Asia::Tokyo, "2026-11-02 08:15:00");
        assert_eq!(s.window_start(ts), ts);
        // A half-hour zone with one-hour windows still aligns to local hours.
        let india = WindowSpec::new(3_600_000, 0, Asia::Kolkata, vec![]);
        let ts = at(Asia::Kolkata, "2026-11-02 08:59:00");
        assert_eq!(
            india.window_start(ts),
            at(Asia::Kolkata, "2026-11-02 08:00:00")
        );
    }

    #[test]
    fn closure_covers_only_windows_entirely_inside() {
        let s = spec(Asia::Tokyo);
        let w = |t| s.is_closed(at(Asia::Tokyo, t));
        assert!(!w("2026-11-02 00:30:00"));
        assert!(!w("2026-11-02 00:45:00")); // 00:45-01:00 starts before 00:46
        assert!(w("2026-11-02 01:00:00"));
        assert!(w("2026-11-02 05:15:00"));
        assert!(!w("2026-11-02 05:30:00")); // ends 05:45, after 05:44
        let closed = s
            .windows_between(
                NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
                NaiveDate::from_ymd_opt(2026, 11, 3).unwrap(),
            )
            .into_iter()
            .filter(|w| s.is_closed(*w))
            .count();
        assert_eq!(closed, 18);
    }

    #[test]
    fn closure_wrapping_midnight() {
        let s = WindowSpec::new(
            900_000,
            0,
            Asia::Tokyo,
            vec![ClosedHours::parse("23:00-06:00").unwrap()],
        );
        assert!(s.is_closed(at(Asia::Tokyo, "2026-11-02 23:45:00"))); // ends at 24:00
        assert!(s.is_closed(at(Asia::Tokyo, "2026-11-02 23:00:00")));
        assert!(s.is_closed(at(Asia::Tokyo, "2026-11-03 05:45:00")));
        assert!(!s.is_closed(at(Asia::Tokyo, "2026-11-03 06:00:00")));
        assert!(!s.is_closed(at(Asia::Tokyo, "2026-11-02 22:45:00")));
    }

    #[test]
    fn dst_days_have_92_and_100_windows() {
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let s = spec(Europe::Dublin);
        assert_eq!(s.windows_between(d(2025, 3, 30), d(2025, 3, 31)).len(), 92);
        assert_eq!(
            s.windows_between(d(2025, 10, 26), d(2025, 10, 27)).len(),
            100
        );
        assert_eq!(
            s.windows_between(d(2025, 10, 27), d(2025, 10, 28)).len(),
            96
        );
        let la = spec(America::Los_Angeles);
        assert_eq!(la.windows_between(d(2026, 3, 8), d(2026, 3, 9)).len(), 92);
        assert_eq!(
            la.windows_between(d(2026, 11, 1), d(2026, 11, 2)).len(),
            100
        );
        // Every window of the long day has its own start and the local date it belongs to.
        let ws = s.windows_between(d(2025, 10, 26), d(2025, 10, 27));
        assert!(ws.windows(2).all(|p| p[1] - p[0] == 900_000));
        assert!(ws.iter().all(|w| s.local_date(*w) == d(2025, 10, 26)));
        let tokyo = spec(Asia::Tokyo);
        assert_eq!(tokyo.month_windows(2026, 11).len(), 30 * 96);
    }

    #[test]
    fn month_parsing() {
        assert_eq!(parse_month("2026-11"), Ok((2026, 11)));
        assert!(parse_month("2026-13").is_err());
        assert!(parse_month("2026-1").is_err());
        assert!(parse_month("nov").is_err());
    }
}
