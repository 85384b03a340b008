//! Fault-report drafts (`jinryu faults --month`): the month's incidents in the shape the
//! maintenance contract's fault report asks for, with each report's due date (the next Japanese
//! business day after the fault). Worker and action taken are left blank for a person to fill.

use std::path::{Path, PathBuf};

use super::Alert;
use crate::calendar;
use crate::config::Config;

/// Kinds that are faults to report (data-level notices such as late_rate are not).
pub const FAULT_KINDS: [&str; 7] = [
    "sensor_offline",
    "silent_but_alive",
    "stuck_count",
    "direction_dead",
    "implausible_level",
    "array_share_drift",
    "clock_skew",
];

fn what(a: &Alert) -> String {
    let who = a.sensor_id.as_deref().unwrap_or("gateway");
    match a.kind.as_str() {
        "sensor_offline" => format!("{who}: no data (sensor offline)"),
        "silent_but_alive" => format!("{who}: counting nobody while its array was busy"),
        "stuck_count" => format!("{who}: counter stuck on one value"),
        "direction_dead" => format!("{who}: one direction not counting"),
        "implausible_level" => format!("{who}: implausible count level"),
        "array_share_drift" => format!("{who}: share of its array drifted"),
        "clock_skew" => "gateway clock wrong: messages quarantined".to_string(),
        other => format!("{who}: {other}"),
    }
}

/// Writes `faults_YYYY_MM.csv` and `.md`; returns their paths and the number of incidents.
pub fn write(
    cfg: &Config,
    alerts: &[Alert],
    year: i32,
    month: u32,
    out: &Path,
) -> anyhow::Result<(PathBuf, PathBuf, usize)> {
    let mut rows: Vec<&Alert> = alerts
        .iter()
        .filter(|a| FAULT_KINDS.contains(&a.kind.as_str()))
        .filter(|a| {
            let d = cfg.window.local(a.start_ms).date_naive();
            d.year_month() == (year, month)
        })
        .collect();
    rows.sort_by_key(|a| (a.start_ms, a.sensor_id.clone()));
    std::fs::create_dir_all(out)?;
    let csv_path = out.join(format!("faults_{year:04}_{month:02}.csv"));
    let md_path = out.join(format!("faults_{year:04}_{month:02}.md"));
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_path(&csv_path)?;
    w.write_record([
        "発生日時 occurred",
        "作業者 worker",
        "事象 what happened",
        "原因 cause",
        "対応 action taken",
        "継続時間 duration",
        "報告期限 report due",
        "状態 status",
        "alert id",
    ])?;
    let mut md = format!(
        "# Fault reports {year:04}-{month:02} (draft)\n\n| occurred | worker | what happened | cause | action taken | duration | report due | status |\n|---|---|---|---|---|---|---|---|\n"
    );
    for a in &rows {
        let start = cfg.window.local(a.start_ms);
        let minutes = (a.end_ms - a.start_ms) / 60_000;
        let duration = format!("{}h{:02}m", minutes / 60, minutes % 60);
        let cause = a.evidence["detail"].as_str().unwrap_or("").to_string();
        let due = calendar::fault_report_due(start.date_naive());
        let occurred = start.format("%Y-%m-%d %H:%M").to_string();
        let status = if a.status == "open" {
            "continuing"
        } else {
            "ended"
        };
        // The cause quotes device text (fault codes): kept from being evaluated as a formula.
        let safe = crate::jobs::formula_safe;
        w.write_record([
            occurred.as_str(),
            "",
            &safe(&what(a)),
            &safe(&cause),
            "",
            &duration,
            &due.to_string(),
            status,
            &a.id,
        ])?;
        md.push_str(&format!(
            "| {occurred} |  | {} | {cause} |  | {duration} | {due} | {status} |\n",
            what(a)
        ));
    }
    w.flush()?;
    std::fs::write(&md_path, md)?;
    Ok((csv_path, md_path, rows.len()))
}

trait YearMonth {
    fn year_month(&self) -> (i32, u32);
}

impl YearMonth for chrono::NaiveDate {
    fn year_month(&self) -> (i32, u32) {
        use chrono::Datelike;
        (self.year(), self.month())
    }
}
