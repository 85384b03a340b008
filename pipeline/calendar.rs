//! The Japanese business-day calendar and the contract's deadlines.
//!
//! A business day is not a Saturday or Sunday, not a national holiday (振替休日 and 国民の休日
//! included) and not in the year-end closure 12/29–1/3. Holidays come from the Cabinet Office list
//! (`data/syukujitsu.csv`, CP932, embedded at build time) for the years it covers (1955–2027), and
//! from the rules of the holiday act for later years — those are *provisional*: the equinox days
//! follow the standard formula until the Cabinet Office announces them each February, and one-off
//! holidays (imperial events) cannot be foreseen. A test reproduces every date of the list from
//! the rules.
//!
//! Deadlines (maintenance contract): the monthly CSV by the 5th business day of the next month;
//! the monthly report by the 10th of the next month, moved back to the previous business day when
//! the 10th is closed — except March's, due on March 31 (moved back the same way when closed); a
//! fault report by the next business day after the fault.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{Datelike, NaiveDate, Weekday};

/// The Cabinet Office list as published (CP932, CRLF).
const SYUKUJITSU_CSV: &[u8] = include_bytes!("../data/syukujitsu.csv");

/// Holidays of the official list: date → name.
static OFFICIAL: LazyLock<BTreeMap<NaiveDate, String>> = LazyLock::new(|| {
    let (text, _, bad) = encoding_rs::SHIFT_JIS.decode(SYUKUJITSU_CSV);
    assert!(!bad, "data/syukujitsu.csv is not valid CP932");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (d, name) = l.split_once(',').expect("date,name");
            let date = NaiveDate::parse_from_str(d.trim(), "%Y/%m/%d").expect("Y/M/D date");
            (date, name.trim().to_string())
        })
        .collect()
});

/// First and last year of the official list.
pub fn official_years() -> (i32, i32) {
    let first = OFFICIAL.keys().next().expect("list not empty").year();
    let last = OFFICIAL.keys().next_back().expect("list not empty").year();
    (first, last)
}

fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
}

/// The `n`-th Monday of a month.
fn nth_monday(y: i32, m: u32, n: u32) -> NaiveDate {
    NaiveDate::from_weekday_of_month_opt(y, m, Weekday::Mon, n as u8).expect("nth Monday")
}

/// Day of March of the vernal equinox (standard formula, 1900–2150).
fn vernal_equinox(y: i32) -> u32 {
    let yf = f64::from(y - 1980);
    let d = match y {
        ..=1979 => 20.8357 + 0.242194 * yf - f64::from((y - 1983) / 4), // truncating division, as published
        1980..=2099 => 20.8431 + 0.242194 * yf - f64::from((y - 1980).div_euclid(4)),
        _ => 21.8510 + 0.242194 * yf - f64::from((y - 1980).div_euclid(4)),
    };
    d.floor() as u32
}

/// Day of September of the autumnal equinox (standard formula, 1900–2150).
fn autumnal_equinox(y: i32) -> u32 {
    let yf = f64::from(y - 1980);
    let d = match y {
        ..=1979 => 23.2588 + 0.242194 * yf - f64::from((y - 1983) / 4), // truncating division, as published
        1980..=2099 => 23.2488 + 0.242194 * yf - f64::from((y - 1980).div_euclid(4)),
        _ => 24.2488 + 0.242194 * yf - f64::from((y - 1980).div_euclid(4)),
    };
    d.floor() as u32
}

/// The 国民の祝日 of a year by the act (before substitute and sandwiched days).
fn statutory(y: i32) -> Vec<(NaiveDate, &'static str)> {
    let mut h = vec![(ymd(y, 1, 1), "元日")];
    h.push(if y >= 2000 {
        (nth_monday(y, 1, 2), "成人の日")
    } else {
        (ymd(y, 1, 15), "成人の日")
    });
    if y >= 1967 {
        h.push((ymd(y, 2, 11), "建国記念の日"));
    }
    if y >= 2020 {
        h.push((ymd(y, 2, 23), "天皇誕生日"));
    }
    h.push((ymd(y, 3, vernal_equinox(y)), "春分の日"));
    h.push((
        ymd(y, 4, 29),
        match y {
            ..=1988 => "天皇誕生日",
            1989..=2006 => "みどりの日",
            _ => "昭和の日",
        },
    ));
    h.push((ymd(y, 5, 3), "憲法記念日"));
    if y >= 2007 {
        h.push((ymd(y, 5, 4), "みどりの日"));
    }
    h.push((ymd(y, 5, 5), "こどもの日"));
    match y {
        1996..=2002 => h.push((ymd(y, 7, 20), "海の日")),
        2020 => h.push((ymd(y, 7, 23), "海の日")),
        2021 => h.push((ymd(y, 7, 22), "海の日")),
        2003.. => h.push((nth_monday(y, 7, 3), "海の日")),
        _ => {}
    }
    match y {
        2020 => h.push((ymd(y, 8, 10), "山の日")),
        2021 => h.push((ymd(y, 8, 8), "山の日")),
        2016.. => h.push((ymd(y, 8, 11), "山の日")),
        _ => {}
    }
    match y {
        1966..=2002 => h.push((ymd(y, 9, 15), "敬老の日")),
        2003.. => h.push((nth_monday(y, 9, 3), "敬老の日")),
        _ => {}
    }
    h.push((ymd(y, 9, autumnal_equinox(y)), "秋分の日"));
    match y {
        1966..=1999 => h.push((ymd(y, 10, 10), "体育の日")),
        2000..=2019 => h.push((nth_monday(y, 10, 2), "体育の日")),
        2020 => h.push((ymd(y, 7, 24), "スポーツの日")),
        2021 => h.push((ymd(y, 7, 23), "スポーツの日")),
        2022.. => h.push((nth_monday(y, 10, 2), "スポーツの日")),
        _ => {}
    }
    h.push((ymd(y, 11, 3), "文化の日"));
    h.push((ymd(y, 11, 23), "勤労感謝の日"));
    if (1989..=2018).contains(&y) {
        h.push((ymd(y, 12, 23), "天皇誕生日"));
    }
    // One-off holidays set by special acts.
    for (d, name) in [
        (ymd(1959, 4, 10), "結婚の儀"),
        (ymd(1989, 2, 24), "大喪の礼"),
        (ymd(1990, 11, 12), "即位礼正殿の儀"),
        (ymd(1993, 6, 9), "結婚の儀"),
        (ymd(2019, 5, 1), "休日（祝日扱い）"),
        (ymd(2019, 10, 22), "休日（祝日扱い）"),
    ] {
        if d.year() == y {
            h.push((d, name));
        }
    }
    h.sort();
    h
}

/// All holidays of a year by the rules: statutory days, 振替休日 and 国民の休日.
pub fn holidays_by_rule(y: i32) -> BTreeMap<NaiveDate, String> {
    let statutory = statutory(y);
    let is_statutory = |d: NaiveDate| statutory.iter().any(|(s, _)| *s == d);
    let mut all: BTreeMap<NaiveDate, String> = statutory
        .iter()
        .map(|(d, n)| (*d, (*n).to_string()))
        .collect();
    // 振替休日: from 1973-04-12, a holiday on a Sunday moves to the next day (from 2007: the next
    // day that is not a holiday).
    for (d, _) in &statutory {
        if d.weekday() != Weekday::Sun || *d < ymd(1973, 4, 12) {
            continue;
        }
        let mut sub = d.succ_opt().expect("next day");
        if y >= 2007 {
            while is_statutory(sub) {
                sub = sub.succ_opt().expect("next day");
            }
        } else if is_statutory(sub) {
            continue;
        }
        all.insert(sub, "休日".to_string());
    }
    // 国民の休日: from 1986, a day between two statutory holidays (before 2007: unless Sunday or
    // already a substitute holiday).
    if y >= 1986 {
        for (d, _) in &statutory {
            let mid = d.succ_opt().expect("next day");
            let next = mid.succ_opt().expect("next day");
            if is_statutory(next)
                && !all.contains_key(&mid)
                && (y >= 2007 || mid.weekday() != Weekday::Sun)
            {
                all.insert(mid, "休日".to_string());
            }
        }
    }
    all
}

/// Whether `d` is a national holiday, and whether that answer is provisional (beyond the list).
pub fn holiday(d: NaiveDate) -> (Option<String>, bool) {
    let (first, last) = official_years();
    if (first..=last).contains(&d.year()) {
        (OFFICIAL.get(&d).cloned(), false)
    } else {
        (holidays_by_rule(d.year()).get(&d).cloned(), true)
    }
}

/// Why a day is not a business day, if it is not.
pub fn closed_reason(d: NaiveDate) -> Option<String> {
    if let (Some(name), provisional) = holiday(d) {
        return Some(if provisional {
            format!("{name} (provisional)")
        } else {
            name
        });
    }
    match (d.month(), d.day()) {
        (12, 29..=31) | (1, 1..=3) => return Some("年末年始 (12/29–1/3)".to_string()),
        _ => {}
    }
    match d.weekday() {
        Weekday::Sat => Some("土曜日".to_string()),
        Weekday::Sun => Some("日曜日".to_string()),
        _ => None,
    }
}

pub fn is_business_day(d: NaiveDate) -> bool {
    closed_reason(d).is_none()
}

/// The `n`-th business day of a month (n ≥ 1).
pub fn nth_business_day(year: i32, month: u32, n: u32) -> NaiveDate {
    let mut d = ymd(year, month, 1);
    let mut seen = 0;
    loop {
        if is_business_day(d) {
            seen += 1;
            if seen == n {
                return d;
            }
        }
        d = d.succ_opt().expect("next day");
    }
}

fn previous_business_day_or_same(mut d: NaiveDate) -> NaiveDate {
    while !is_business_day(d) {
        d = d.pred_opt().expect("previous day");
    }
    d
}

fn next_month(year: i32, month: u32) -> (i32, u32) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

/// Due date of a month's CSV deliverable: the 5th business day of the following month.
pub fn deliverable_due(year: i32, month: u32) -> NaiveDate {
    let (y, m) = next_month(year, month);
    nth_business_day(y, m, 5)
}

/// Due date of a month's report: the 10th of the next month (March: March 31), moved back to the
/// previous business day when closed.
pub fn monthly_report_due(year: i32, month: u32) -> NaiveDate {
    if month == 3 {
        return previous_business_day_or_same(ymd(year, 3, 31));
    }
    let (y, m) = next_month(year, month);
    previous_business_day_or_same(ymd(y, m, 10))
}

/// Due date of a fault report: the next business day after the day of the fault.
pub fn fault_report_due(fault_day: NaiveDate) -> NaiveDate {
    let mut d = fault_day.succ_opt().expect("next day");
    while !is_business_day(d) {
        d = d.succ_opt().expect("next day");
    }
    d
}

/// Whether dates of this year are provisional (beyond the official list).
pub fn is_provisional(year: i32) -> bool {
    year > official_years().1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_reproduce_every_date_of_the_official_list() {
        let (first, last) = official_years();
        assert_eq!((first, last), (1955, 2027));
        for y in first..=last {
            let official: Vec<NaiveDate> =
                OFFICIAL.keys().filter(|d| d.year() == y).copied().collect();
            let rules: Vec<NaiveDate> = holidays_by_rule(y).keys().copied().collect();
            assert_eq!(rules, official, "year {y}");
        }
    }

    #[test]
    fn known_deadlines() {
        assert_eq!(deliverable_due(2026, 11), ymd(2026, 12, 7));
        assert_eq!(deliverable_due(2026, 12), ymd(2027, 1, 8));
        assert_eq!(deliverable_due(2027, 4), ymd(2027, 5, 12));
        // Report due the 10th, moved back when closed: 2027-01-10 is a Sunday → Fri 8th.
        assert_eq!(monthly_report_due(2026, 12), ymd(2027, 1, 8));
        assert_eq!(monthly_report_due(2026, 10), ymd(2026, 11, 10));
        assert_eq!(monthly_report_due(2027, 3), ymd(2027, 3, 31));
        assert_eq!(monthly_report_due(2029, 3), ymd(2029, 3, 30)); // Mar 31 2029 is a Saturday
        // Fault on Friday 2026-12-25 → Monday 28th; on the 28th → 2027-01-04 (year-end closure).
        assert_eq!(fault_report_due(ymd(2026, 12, 25)), ymd(2026, 12, 28));
        assert_eq!(fault_report_due(ymd(2026, 12, 28)), ymd(2027, 1, 4));
    }

    #[test]
    fn closed_days_say_why() {
        assert_eq!(
            closed_reason(ymd(2026, 11, 23)).as_deref(),
            Some("勤労感謝の日")
        );
        assert_eq!(
            closed_reason(ymd(2026, 12, 30)).as_deref(),
            Some("年末年始 (12/29–1/3)")
        );
        assert_eq!(closed_reason(ymd(2026, 11, 28)).as_deref(), Some("土曜日"));
        assert!(closed_reason(ymd(2026, 11, 24)).is_none());
        // Beyond the list: the rules, marked provisional (2028-03-20 vernal equinox, Monday).
        assert_eq!(
            closed_reason(ymd(2028, 3, 20)).as_deref(),
            Some("春分の日 (provisional)")
        );
        assert!(is_provisional(2028) && !is_provisional(2027));
    }
}
