//! The tables over a year: compaction of closed dates, vacuum of files no commit needs, expiry of
//! old quarantine rows, and the commit history. `jinryu table ...` runs them by hand; `jinryu run`
//! compacts closed dates and expires quarantine rows on its own.
//!
//! Compaction is Delta's optimize: a date's small files are rewritten into one (aggregates ordered
//! by sensor, see [`layout`]) and swapped in one commit (`remove` + `add`, no data change), so a
//! reader sees either the old files or the new one, never both. Vacuum deletes files that no
//! current commit names once they are older than the retention: files replaced by compaction or a
//! re-run, and files of epochs that never committed.

use std::collections::{BTreeMap, BTreeSet};

use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, CommitInfo};
use deltalake_core::operations::optimize::OptimizeType;
use deltalake_core::operations::vacuum::VacuumMode;
use deltalake_core::protocol::DeltaOperation;
use deltalake_core::{DeltaTableError, FilterOp, FilterValue};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use super::delta::{self, DeltaError, Table, err, who};
use super::store::Storage;
use crate::config::Config;
use crate::window::time::partition_value;

pub use crate::config::MIN_FILE_RETENTION_MS;

/// What compacting one date did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    pub table: &'static str,
    pub date: String,
    pub files_removed: u64,
    pub files_added: u64,
}

/// Active files per date of the table (`None` while it does not exist).
pub async fn files_per_date(
    storage: &Storage,
    table: Table,
) -> Result<BTreeMap<String, usize>, DeltaError> {
    let Some(t) = delta::load(storage, table).await? else {
        return Ok(BTreeMap::new());
    };
    let snap = t.snapshot().map_err(err(storage, table))?;
    let mut out = BTreeMap::new();
    for f in snap.log_data().iter() {
        if let Some(Some(d)) = f.partition_values_map().get("date") {
            *out.entry(d.clone()).or_insert(0) += 1;
        }
    }
    Ok(out)
}

/// Dates of `table` that are closed — their last window's end plus the allowed lateness plus
/// `retention.compact_after` is past — and hold more than one file.
pub async fn compactable_dates(
    cfg: &Config,
    storage: &Storage,
    table: Table,
    now_ms: i64,
) -> Result<Vec<String>, DeltaError> {
    let files = files_per_date(storage, table).await?;
    let margin = cfg.window.lateness_ms + cfg.retention.compact_after_ms;
    Ok(files
        .into_iter()
        .filter(|(d, n)| {
            *n > 1
                && chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok_and(|day| {
                    let next = day.succ_opt().unwrap_or(day);
                    cfg.window.day_start(next) + margin <= now_ms
                })
        })
        .map(|(d, _)| d)
        .collect())
}

/// How a compacted date's rows are laid out. Aggregates are ordered by sensor id (a Z-order on one
/// column sorts by the first 16 bytes of its row encoding: by the id, for ids of up to about 15
/// bytes): one sensor's rows of the day then sit in one or two Parquet pages, so a query about
/// some sensors skips the other pages by their statistics instead of reading every row of the
/// year (as it must in arrival order, where every page holds every sensor).
fn layout(table: Table) -> OptimizeType {
    match table {
        Table::Aggregates => OptimizeType::ZOrder(vec!["sensor_id".into()]),
        Table::Quarantine => OptimizeType::Compact,
    }
}

/// Rewrites one date's files of `table` into as few as possible, in one commit.
pub async fn compact_date(
    storage: &Storage,
    table: Table,
    date: &str,
) -> Result<Compacted, DeltaError> {
    let e = err(storage, table);
    let t = delta::load(storage, table).await?.ok_or_else(|| {
        e(DeltaTableError::NotATable(format!(
            "{} has no commits yet",
            table.name()
        )))
    })?;
    let filters = [("date", FilterOp::Eq, FilterValue::Scalar(date))];
    let (_, metrics) = t
        .optimize()
        .with_type(layout(table))
        .with_filters(&filters)
        .with_commit_properties(CommitProperties::default().with_metadata(who("compact")))
        .await
        .map_err(&e)?;
    Ok(Compacted {
        table: table.name(),
        date: date.to_string(),
        files_removed: metrics.num_files_removed,
        files_added: metrics.num_files_added,
    })
}

/// A fixed "now" for vacuum's retention arithmetic.
#[derive(Debug)]
struct At(i64);

impl deltalake_core::operations::vacuum::Clock for At {
    fn current_timestamp_millis(&self) -> i64 {
        self.0
    }
}

/// What a vacuum did (or would do, on a dry run).
#[derive(Debug, Clone, Default)]
pub struct Vacuumed {
    /// Data files deleted, by table.
    pub files: BTreeMap<&'static str, Vec<String>>,
    /// Superseded state objects deleted.
    pub states: Vec<String>,
}

/// Deletes data files no current commit names (replaced by compaction or a re-run, or written by
/// an epoch that never committed) once older than `retention_ms`, and state objects that no
/// table's progress names once older than that, as of `now_ms` (a file replaced by a commit
/// counts from that commit, one that no commit ever named from its write). A `dry_run` deletes
/// nothing.
pub async fn vacuum(
    storage: &Storage,
    retention_ms: i64,
    dry_run: bool,
    now_ms: i64,
) -> Result<Vacuumed, DeltaError> {
    if retention_ms < MIN_FILE_RETENTION_MS {
        return Err(err(storage, Table::Aggregates)(DeltaTableError::Generic(
            "a retention under 1h could delete the files of a commit in progress; use --retention 1h or more"
                .into(),
        )));
    }
    let mut out = Vacuumed::default();
    let mut current: BTreeSet<String> = BTreeSet::new();
    for table in Table::ALL {
        let Some(t) = delta::load(storage, table).await? else {
            continue;
        };
        for (app, p) in delta::writers(storage, &t, table).await? {
            current.insert(delta::state_path(&app, p).to_string());
        }
        let (_, m) = t
            .vacuum()
            .with_mode(VacuumMode::Full)
            .with_retention_period(chrono::Duration::milliseconds(retention_ms))
            .with_enforce_retention_duration(false)
            .with_dry_run(dry_run)
            .with_clock(std::sync::Arc::new(At(now_ms)))
            .with_commit_properties(CommitProperties::default().with_metadata(who("vacuum")))
            .await
            .map_err(err(storage, table))?;
        out.files.insert(table.name(), m.files_deleted);
    }
    let cutoff = chrono::DateTime::from_timestamp_millis(now_ms - retention_ms)
        .unwrap_or_else(chrono::Utc::now);
    let states: Vec<_> = storage
        .store()
        .list(Some(&object_store::path::Path::from("_state")))
        .try_collect()
        .await
        .map_err(|e| err(storage, Table::Aggregates)(DeltaTableError::from(e)))?;
    for m in states {
        let path = m.location.to_string();
        if !current.contains(&path) && m.last_modified < cutoff {
            if !dry_run {
                storage
                    .store()
                    .delete(&m.location)
                    .await
                    .map_err(|e| err(storage, Table::Aggregates)(DeltaTableError::from(e)))?;
            }
            out.states.push(path);
        }
    }
    Ok(out)
}

/// Removes quarantine rows received before `retention.quarantine` ago (whole dates), in one
/// commit. Returns the dates removed.
pub async fn expire_quarantine(
    cfg: &Config,
    storage: &Storage,
    now_ms: i64,
) -> Result<Vec<String>, DeltaError> {
    let table = Table::Quarantine;
    let e = err(storage, table);
    let Some(mut t) = delta::load(storage, table).await? else {
        return Ok(Vec::new());
    };
    let cutoff = partition_value(cfg.window.local_date(now_ms - cfg.retention.quarantine_ms));
    let snap = t.snapshot().map_err(&e)?;
    let mut dates = BTreeSet::new();
    let mut actions = Vec::new();
    for f in snap.log_data().iter() {
        if let Some(Some(d)) = f.partition_values_map().get("date")
            && d.as_str() < cutoff.as_str()
        {
            dates.insert(d.clone());
            actions.push(Action::Remove(f.remove_action(true)));
        }
    }
    if actions.is_empty() {
        return Ok(Vec::new());
    }
    let snapshot = t.snapshot().map_err(&e)?;
    let done =
        CommitBuilder::from(CommitProperties::default().with_metadata(who("expire quarantine")))
            .with_actions(actions)
            .build(
                Some(snapshot),
                t.log_store(),
                DeltaOperation::Delete {
                    predicate: Some(format!("date < '{cutoff}'")),
                },
            )
            .await
            .map_err(&e)?;
    t.state = Some(done.snapshot());
    Ok(dates.into_iter().collect())
}

/// One commit of a table's history.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub version: Option<u64>,
    pub info: CommitInfo,
}

/// The latest `limit` commits of `table`, newest first.
pub async fn history(
    storage: &Storage,
    table: Table,
    limit: usize,
) -> Result<Vec<HistoryEntry>, DeltaError> {
    let e = err(storage, table);
    let Some(t) = delta::load(storage, table).await? else {
        return Ok(Vec::new());
    };
    let latest = t.version();
    let infos: Vec<CommitInfo> = t.history(Some(limit)).try_collect().await.map_err(&e)?;
    Ok(infos
        .into_iter()
        .enumerate()
        .map(|(i, info)| HistoryEntry {
            version: latest.and_then(|l| l.checked_sub(i as u64)),
            info,
        })
        .collect())
}
