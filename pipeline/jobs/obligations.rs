//! The contract's deadlines as tracked obligations: each month's CSV (5th business day of the next
//! month), each month's report (the 10th; March: the 31st), and one fault report per sensor fault
//! (the next business day). The obligations follow from the calendar and the alert state; what is
//! stored is the evidence of each handover — `obligations/delivered/<id>.json` on the object store
//! beside the tables (when, by whom, the file's SHA-256) — written once with a conditional put, so
//! two operators recording the same handover cannot overwrite each other.

use chrono::{Datelike, NaiveDate};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::alerts::Alert;
use crate::calendar;
use crate::config::Config;
use crate::sink::store::Storage;

const DELIVERED: &str = "obligations/delivered";

/// Evidence that a file was handed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// RFC 3339, local time of the facility.
    pub at: String,
    pub by: String,
    /// SHA-256 of the file handed over, when one was named.
    pub sha256: Option<String>,
    pub file: Option<String>,
}

/// One duty with a due date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Obligation {
    /// `csv:2026-10`, `report:2026-10`, `fault:<alert id>`.
    pub id: String,
    pub what: String,
    /// The month it belongs to (`YYYY-MM`).
    pub month: String,
    pub due: NaiveDate,
    pub handover: Option<Handover>,
}

/// Where an obligation stands on a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    /// Due on the next business day or sooner, not delivered.
    DueSoon,
    Overdue,
    Delivered,
    DeliveredLate,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::DueSoon => "due soon",
            Status::Overdue => "OVERDUE",
            Status::Delivered => "delivered",
            Status::DeliveredLate => "delivered late",
        }
    }
}

impl Obligation {
    /// Its status on `today` (local date).
    pub fn status(&self, today: NaiveDate) -> Status {
        match &self.handover {
            Some(h) => {
                let day = chrono::DateTime::parse_from_rfc3339(&h.at)
                    .map(|t| t.date_naive())
                    .unwrap_or(today);
                if day > self.due {
                    Status::DeliveredLate
                } else {
                    Status::Delivered
                }
            }
            None if today > self.due => Status::Overdue,
            None if reminder_day(self.due) <= today => Status::DueSoon,
            None => Status::Open,
        }
    }
}

/// The business day before `due` (a reminder goes out on it).
pub fn reminder_day(due: NaiveDate) -> NaiveDate {
    let mut d = due.pred_opt().expect("previous day");
    while !calendar::is_business_day(d) {
        d = d.pred_opt().expect("previous day");
    }
    d
}

fn month_key(year: i32, month: u32) -> String {
    format!("{year:04}-{month:02}")
}

/// Kinds of alerts that need a fault report.
pub fn needs_fault_report(kind: &str) -> bool {
    crate::alerts::faults::FAULT_KINDS.contains(&kind)
}

/// The obligations of month `(year, month)`: its CSV, its report, and a fault report for each
/// fault alert that started in it, with what was handed over.
pub async fn of_month(
    cfg: &Config,
    storage: &Storage,
    alerts: &[Alert],
    year: i32,
    month: u32,
) -> anyhow::Result<Vec<Obligation>> {
    let key = month_key(year, month);
    let mut list = vec![
        Obligation {
            id: format!("csv:{key}"),
            what: format!("monthly CSV {year:04}_{month:02}.csv"),
            month: key.clone(),
            due: calendar::deliverable_due(year, month),
            handover: None,
        },
        Obligation {
            id: format!("report:{key}"),
            what: format!("monthly report {year:04}-{month:02}"),
            month: key.clone(),
            due: calendar::monthly_report_due(year, month),
            handover: None,
        },
    ];
    let mut faults: Vec<&Alert> = alerts
        .iter()
        .filter(|a| needs_fault_report(&a.kind))
        .filter(|a| {
            let d = cfg.window.local(a.start_ms).date_naive();
            (d.year(), d.month()) == (year, month)
        })
        .collect();
    faults.sort_by_key(|a| (a.start_ms, a.id.clone()));
    for a in faults {
        let day = cfg.window.local(a.start_ms).date_naive();
        list.push(Obligation {
            id: format!("fault:{}", a.id),
            what: format!(
                "fault report: {} {} from {}",
                a.kind,
                a.sensor_id.as_deref().unwrap_or("(pipeline)"),
                cfg.window.local(a.start_ms).format("%Y-%m-%d %H:%M")
            ),
            month: key.clone(),
            due: calendar::fault_report_due(day),
            handover: None,
        });
    }
    for o in &mut list {
        o.handover = handover(storage, &o.id).await?;
    }
    Ok(list)
}

fn handover_path(id: &str) -> Path {
    // Ids are `kind:value` with [0-9a-zA-Z-]; ':' is replaced for object-store friendliness.
    Path::from(format!("{DELIVERED}/{}.json", id.replace(':', "_")))
}

/// The recorded handover of obligation `id`, if any.
pub async fn handover(storage: &Storage, id: &str) -> anyhow::Result<Option<Handover>> {
    match storage.store().get(&handover_path(id)).await {
        Ok(got) => {
            let bytes = got.bytes().await?;
            Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is damaged ({e}); restore it from object-store versioning or record the \
                     handover again after moving it away",
                    storage.describe(handover_path(id).as_ref())
                )
            })?))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Records that obligation `id` was met. Refused (with the earlier record) if it was already
/// recorded: a handover is evidence and is never overwritten.
pub async fn record(storage: &Storage, id: &str, h: &Handover) -> anyhow::Result<()> {
    if storage
        .create_if_absent(&handover_path(id), serde_json::to_vec_pretty(h)?)
        .await?
    {
        return Ok(());
    }
    let earlier = handover(storage, id).await?;
    anyhow::bail!(
        "the handover of {id} was already recorded: {}; a record is never overwritten",
        earlier
            .map(|e| format!("{} by {}", e.at, e.by))
            .unwrap_or_default()
    )
}

/// Months from `first` to `last` inclusive.
pub fn months_between(first: (i32, u32), last: (i32, u32)) -> Vec<(i32, u32)> {
    let mut out = Vec::new();
    let (mut y, mut m) = first;
    while (y, m) <= last {
        out.push((y, m));
        (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn status_follows_the_calendar() {
        // October 2026's CSV: 5th business day of November = Mon 9 Nov (3 Nov is a holiday).
        let o = Obligation {
            id: "csv:2026-10".into(),
            what: "csv".into(),
            month: "2026-10".into(),
            due: calendar::deliverable_due(2026, 10),
            handover: None,
        };
        assert_eq!(o.due, d(2026, 11, 9));
        assert_eq!(reminder_day(o.due), d(2026, 11, 6));
        assert_eq!(o.status(d(2026, 11, 5)), Status::Open);
        assert_eq!(o.status(d(2026, 11, 6)), Status::DueSoon);
        assert_eq!(o.status(d(2026, 11, 9)), Status::DueSoon);
        assert_eq!(o.status(d(2026, 11, 10)), Status::Overdue);
        let mut met = o.clone();
        met.handover = Some(Handover {
            at: "2026-11-09T17:00:00+09:00".into(),
            by: "ops".into(),
            sha256: None,
            file: None,
        });
        assert_eq!(met.status(d(2026, 12, 1)), Status::Delivered);
        met.handover.as_mut().unwrap().at = "2026-11-10T09:00:00+09:00".into();
        assert_eq!(met.status(d(2026, 12, 1)), Status::DeliveredLate);
        // A reminder before a Monday due date goes out on the Friday.
        assert_eq!(reminder_day(d(2026, 11, 9)), d(2026, 11, 6));
    }

    #[tokio::test]
    async fn a_handover_is_recorded_once() {
        let storage = Storage::open("memory://").unwrap();
        let h = Handover {
            at: "2026-11-06T17:00:00+09:00".into(),
            by: "ops".into(),
            sha256: Some("ab".into()),
            file: None,
        };
        record(&storage, "csv:2026-10", &h).await.unwrap();
        let again = record(&storage, "csv:2026-10", &h).await.unwrap_err();
        assert!(again.to_string().contains("already recorded"), "{again}");
        assert_eq!(handover(&storage, "csv:2026-10").await.unwrap(), Some(h));
        assert_eq!(handover(&storage, "report:2026-10").await.unwrap(), None);
    }
}
