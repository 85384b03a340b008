//! `jinryu check`: data-quality checks written as SQL (`sql/checks/*.sql`, one check per file)
//! over the stored tables. Each check returns *findings* — `sensor_id, window_start, value,
//! baseline, detail` — and this module joins a sensor's consecutive findings (closed windows
//! in between do not break a run) into incidents, keeping those that last long enough.
//! [`crate::alerts`] turns incidents into alerts with stable ids, state and routes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{NaiveDate, Timelike};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use crate::calendar;
use crate::config::Config;
use crate::window::time::partition_value;

/// Thresholds of the checks (`[checks]` in the configuration).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Thresholds {
    /// Windows in a row without liveness before `sensor_offline` (4 = one hour).
    pub offline_windows: u32,
    /// Average people of the array's other sensors that makes a window "busy".
    pub busy_people: u32,
    /// Windows in a row of `silent_but_alive`.
    pub silent_windows: u32,
    /// Windows in a row with the same non-zero count before `stuck_count`.
    pub stuck_windows: u32,
    /// Windows in a row of `direction_dead`.
    pub direction_dead_windows: u32,
    /// `implausible_level`: robust z-score limit (× 1.4826 × MAD).
    pub level_k: f64,
    /// `implausible_level`: smallest absolute deviation (people) worth an alert.
    pub level_min_delta: u32,
    /// Days of history for baselines.
    pub history_days: u32,
    /// `array_share_drift`: largest acceptable change of a sensor's daily share of its array.
    pub share_drift: f64,
    /// `late_rate`: largest acceptable share of late messages in a day.
    pub late_rate: f64,
    /// `quarantine_rate`: largest acceptable share of quarantined messages among a day's intake.
    pub quarantine_rate: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            offline_windows: 4,
            busy_people: 20,
            silent_windows: 4,
            stuck_windows: 6,
            direction_dead_windows: 8,
            level_k: 6.0,
            level_min_delta: 40,
            history_days: 28,
            share_drift: 0.10,
            late_rate: 0.05,
            quarantine_rate: 0.01,
        }
    }
}

/// A check: its SQL, how many findings in a row make an incident, severity and advice.
pub struct Check {
    pub kind: &'static str,
    pub sql: &'static str,
    pub severity: &'static str,
    pub action: &'static str,
    /// Whether findings are per window of a sensor (joined into runs) or one per day.
    pub per_window: bool,
}

/// Every check, in the order they run.
pub const CHECKS: [Check; 9] = [
    Check {
        kind: "sensor_offline",
        sql: include_str!("../../sql/checks/sensor_offline.sql"),
        severity: "critical",
        action: "Check the sensor's power and network link (is its gateway reachable?). If the sensor reports a fault code, dispatch maintenance. A fault report is due to the client by the next business day (jinryu calendar).",
        per_window: true,
    },
    Check {
        kind: "silent_but_alive",
        sql: include_str!("../../sql/checks/silent_but_alive.sql"),
        severity: "warning",
        action: "The sensor is powered but counts nobody while its neighbours are busy: check the infrared head for obstruction or misalignment, and its direction settings.",
        per_window: true,
    },
    Check {
        kind: "stuck_count",
        sql: include_str!("../../sql/checks/stuck_count.sql"),
        severity: "warning",
        action: "The counter repeats one value: restart the sensor or its gateway and check the gateway for a replaying buffer.",
        per_window: true,
    },
    Check {
        kind: "direction_dead",
        sql: include_str!("../../sql/checks/direction_dead.sql"),
        severity: "warning",
        action: "One direction counts nothing while the other is busy: check the sensor's direction configuration and its lens.",
        per_window: true,
    },
    Check {
        kind: "implausible_level",
        sql: include_str!("../../sql/checks/implausible_level.sql"),
        severity: "warning",
        action: "Compare with the other sensors of the array and with known events (festivals, works, closures); if nothing explains it, inspect the sensor.",
        per_window: true,
    },
    Check {
        kind: "array_share_drift",
        sql: include_str!("../../sql/checks/array_share_drift.sql"),
        severity: "warning",
        action: "The sensor's share of its array changed: check its head for partial obstruction or misalignment, and whether people now pass under a different sensor (works, barriers, signage).",
        per_window: false,
    },
    Check {
        kind: "clock_skew",
        sql: include_str!("../../sql/checks/clock_skew.sql"),
        severity: "critical",
        action: "A gateway's clock is wrong and its messages are quarantined, not counted: fix the gateway's time (NTP), then re-ingest the quarantined messages.",
        per_window: false,
    },
    Check {
        kind: "late_rate",
        sql: include_str!("../../sql/checks/late_rate.sql"),
        severity: "info",
        action: "Gateways deliver late: check network latency and outages or gateway buffering. Late data are counted, but a deliverable built before they arrived is short.",
        per_window: false,
    },
    Check {
        kind: "quarantine_rate",
        sql: include_str!("../../sql/checks/quarantine_rate.sql"),
        severity: "warning",
        action: "Many messages are rejected: look at the day's quarantine reasons (jinryu sql \"SELECT reason, count(*) FROM quarantine WHERE date = '…' GROUP BY reason\"); a gateway or firmware update usually explains it. Fix the sender, then re-ingest the quarantined payloads.",
        per_window: false,
    },
];

/// One row of a check: window start, value, baseline, detail.
type Finding = (i64, f64, f64, String);

/// A finding joined with its neighbours: one candidate alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub kind: &'static str,
    pub sensor_id: Option<String>,
    pub start_ms: i64,
    /// End of the last window (exclusive).
    pub end_ms: i64,
    pub windows: u64,
    /// Worst value, its baseline and what the check said.
    pub value: f64,
    pub baseline: f64,
    pub detail: String,
    /// The incident reaches the end of the checked range (the condition may go on).
    pub ongoing: bool,
}

/// Registers `check_windows`: every window from `history_from` to `to` with its local date, time,
/// closure, day type (`business` / `holiday`) and whether it is history (before `from`).
fn register_windows(
    ctx: &SessionContext,
    cfg: &Config,
    history_from: NaiveDate,
    from: NaiveDate,
    to: NaiveDate,
) -> anyhow::Result<Vec<i64>> {
    let spec = &cfg.window;
    // Only windows that are final by now: the future and the still-open present are not checked.
    let now = chrono::Utc::now().timestamp_millis();
    let ws: Vec<i64> = spec
        .windows_between(history_from, to.succ_opt().expect("next day"))
        .into_iter()
        .filter(|w| w + spec.size_ms + spec.lateness_ms <= now)
        .collect();
    let local: Vec<_> = ws.iter().map(|w| spec.local(*w)).collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("date", DataType::Utf8, false),
            Field::new("time", DataType::Utf8, false),
            Field::new("closed", DataType::Boolean, false),
            Field::new("day_type", DataType::Utf8, false),
            Field::new("history", DataType::Boolean, false),
        ])),
        vec![
            Arc::new(TimestampMillisecondArray::from(ws.clone()).with_timezone("UTC")) as ArrayRef,
            Arc::new(StringArray::from_iter_values(
                local.iter().map(|t| partition_value(t.date_naive())),
            )),
            Arc::new(StringArray::from_iter_values(
                local
                    .iter()
                    .map(|t| format!("{:02}:{:02}", t.hour(), t.minute())),
            )),
            Arc::new(BooleanArray::from_iter(
                ws.iter().map(|w| Some(spec.is_closed(*w))),
            )),
            Arc::new(StringArray::from_iter_values(local.iter().map(|t| {
                if calendar::is_business_day(t.date_naive()) {
                    "business"
                } else {
                    "holiday"
                }
            }))),
            Arc::new(BooleanArray::from_iter(
                local.iter().map(|t| Some(t.date_naive() < from)),
            )),
        ],
    )?;
    ctx.deregister_table("check_windows")?;
    ctx.register_table(
        "check_windows",
        Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?),
    )?;
    Ok(ws
        .into_iter()
        .zip(local)
        .filter(|(w, t)| t.date_naive() >= from && !spec.is_closed(*w))
        .map(|(w, _)| w)
        .collect())
}

fn fill(
    sql: &str,
    t: &Thresholds,
    history_from: NaiveDate,
    from: NaiveDate,
    to: NaiveDate,
) -> String {
    sql.replace("{{from_date}}", &partition_value(from))
        .replace("{{to_date}}", &partition_value(to))
        .replace("{{history_from}}", &partition_value(history_from))
        .replace("{{busy_people}}", &t.busy_people.to_string())
        .replace("{{level_k}}", &format!("{:.6}", t.level_k))
        .replace("{{level_min_delta}}", &t.level_min_delta.to_string())
        .replace("{{late_rate}}", &format!("{:.6}", t.late_rate))
        .replace("{{quarantine_rate}}", &format!("{:.6}", t.quarantine_rate))
        .replace("{{share_drift}}", &format!("{:.6}", t.share_drift))
}

/// Registers `check_days`: each date of `[from, to]` with the first date of its own history
/// (`history_days` before it), for the checks whose baseline is the days before.
fn register_days(
    ctx: &SessionContext,
    t: &Thresholds,
    from: NaiveDate,
    to: NaiveDate,
) -> anyhow::Result<()> {
    let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("date", DataType::Utf8, false),
            Field::new("hist_from", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(
                days.iter().map(|d| partition_value(*d)),
            )) as ArrayRef,
            Arc::new(StringArray::from_iter_values(days.iter().map(|d| {
                partition_value(*d - chrono::Days::new(u64::from(t.history_days)))
            }))),
        ],
    )?;
    ctx.deregister_table("check_days")?;
    ctx.register_table(
        "check_days",
        Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?),
    )?;
    Ok(())
}

/// Longest stretch looked back for the start of an incident that began before the checked
/// range (a sensor offline for days is one incident, whenever the check runs).
const MAX_LOOKBACK_DAYS: u64 = 31;

/// Runs every check over the local dates `[from, to]` and returns the incidents that reach into
/// it. What a check finds does not depend on the range it is run over: each day's baseline is
/// its own `history_days` before it, and an incident that began before `from` is followed back
/// to its start (up to [`MAX_LOOKBACK_DAYS`]), so it keeps the id, span and worst value it has
/// in a check over a longer range. One run over a month and daily runs over the same month end
/// in the same alerts (tests/checks.rs).
pub async fn run_checks(
    ctx: &SessionContext,
    cfg: &Config,
    t: &Thresholds,
    from: NaiveDate,
    to: NaiveDate,
) -> anyhow::Result<Vec<Incident>> {
    let from_ms = cfg.window.day_start(from);
    // Never look back before the first day with data: there every sensor would look offline.
    let first_data = super::dates_with_data(ctx)?.first().copied();
    let mut back = 1u64;
    loop {
        let start = match first_data {
            Some(first) if first >= from => from,
            Some(first) => (from - chrono::Days::new(back)).max(first),
            None => from,
        };
        let (incidents, first_open) = run_checks_over(ctx, cfg, t, start, to).await?;
        // An incident that starts in the first two open windows looked at may have begun
        // earlier (a check comparing with the previous window has no finding in the first).
        let truncated = incidents.iter().any(|i| {
            first_open.is_some_and(|f| i.start_ms <= f + cfg.window.size_ms)
                && CHECKS.iter().any(|c| c.kind == i.kind && c.per_window)
        });
        if !truncated || back >= MAX_LOOKBACK_DAYS || first_data.is_none_or(|f| start <= f) {
            // Incidents that ended exactly where the range starts are kept: the run before may
            // have seen them as ongoing, and this one resolves them.
            return Ok(incidents
                .into_iter()
                .filter(|i| i.end_ms >= from_ms)
                .collect());
        }
        back = (back * 2).min(MAX_LOOKBACK_DAYS);
    }
}

/// The checks over `[from, to]`, and the first open window they looked at.
async fn run_checks_over(
    ctx: &SessionContext,
    cfg: &Config,
    t: &Thresholds,
    from: NaiveDate,
    to: NaiveDate,
) -> anyhow::Result<(Vec<Incident>, Option<i64>)> {
    let history_from = from - chrono::Days::new(u64::from(t.history_days));
    let open = register_windows(ctx, cfg, history_from, from, to)?;
    register_days(ctx, t, from, to)?;
    let open_index: HashMap<i64, usize> = open.iter().enumerate().map(|(i, w)| (*w, i)).collect();
    let last_open = open.last().copied();
    let size = cfg.window.size_ms;
    let mut incidents = Vec::new();
    for check in &CHECKS {
        let sql = fill(check.sql, t, history_from, from, to);
        let batches = ctx
            .sql(&sql)
            .await
            .map_err(|e| anyhow::anyhow!("check {}: {e}", check.kind))?
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("check {}: {e}", check.kind))?;
        // (sensor) → findings sorted by window
        let mut by_sensor: BTreeMap<Option<String>, Vec<Finding>> = BTreeMap::new();
        for b in &batches {
            // Text may come back as Utf8View (DataFusion maps VARCHAR casts to it): normalise.
            let sensor = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
            let sensor = sensor
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("sensor_id");
            let ws = arrow::compute::cast(
                b.column(1),
                &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            )?;
            let ws = ws
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .expect("window_start");
            let value = arrow::compute::cast(b.column(2), &DataType::Float64)?;
            let value = value
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("value");
            let base = arrow::compute::cast(b.column(3), &DataType::Float64)?;
            let base = base
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("baseline");
            let detail = arrow::compute::cast(b.column(4), &DataType::Utf8)?;
            let detail = detail
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("detail");
            for i in 0..b.num_rows() {
                let s = (!sensor.is_null(i)).then(|| sensor.value(i).to_string());
                by_sensor.entry(s).or_default().push((
                    ws.value(i),
                    value.value(i),
                    base.value(i),
                    detail.value(i).to_string(),
                ));
            }
        }
        let min_run = match check.kind {
            "sensor_offline" => t.offline_windows,
            "silent_but_alive" => t.silent_windows,
            "stuck_count" => t.stuck_windows.saturating_sub(1),
            "direction_dead" => t.direction_dead_windows,
            _ => 1,
        }
        .max(1) as u64;
        for (sensor, mut findings) in by_sensor {
            findings.sort_by_key(|f| f.0);
            findings.dedup_by_key(|f| f.0);
            let mut run: Vec<Finding> = Vec::new();
            let mut flush = |run: &mut Vec<Finding>| {
                if run.len() as u64 >= min_run {
                    let worst = run
                        .iter()
                        .max_by(|a, b| (a.1 - a.2).abs().total_cmp(&(b.1 - b.2).abs()))
                        .expect("non-empty run");
                    let end_ms = run.last().expect("non-empty run").0 + size;
                    incidents.push(Incident {
                        kind: check.kind,
                        sensor_id: sensor.clone(),
                        start_ms: run[0].0,
                        end_ms,
                        windows: run.len() as u64,
                        value: worst.1,
                        baseline: worst.2,
                        detail: worst.3.clone(),
                        ongoing: check.per_window && last_open.is_some_and(|l| l + size == end_ms),
                    });
                }
                run.clear();
            };
            for f in findings {
                let adjacent = match (check.per_window, run.last()) {
                    (true, Some(prev)) => match (open_index.get(&prev.0), open_index.get(&f.0)) {
                        (Some(a), Some(b)) => *b == a + 1,
                        _ => false,
                    },
                    _ => false,
                };
                if !adjacent {
                    flush(&mut run);
                }
                run.push(f);
            }
            flush(&mut run);
        }
    }
    Ok((incidents, open.first().copied()))
}
