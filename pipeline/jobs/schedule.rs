//! The contract's jobs inside `jinryu run` (`[jobs]`): data-quality checks every
//! `check_interval`, the month's deliverable once the month is closed, and reminders and
//! overdue alerts for the obligations. Several `jinryu run` processes of one group run each job
//! once: every run of a job first wins a claim — an object created with a conditional put
//! (`If-None-Match: *` on S3, an exclusive create on local disk) — so there is no second
//! coordinator to run, and a process that loses simply skips.
//!
//! Checks cover the last `check_days` days *and every date that received data since the last
//! check*, however old: a gateway replaying a week is checked like today. The dates come from
//! the aggregates table's log (the `date` of each file added since the version last checked).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, NaiveDate};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::alerts::{self, Alert};
use crate::config::Config;
use crate::jobs::{self, AsOf, obligations};
use crate::service::metrics::Metrics;
use crate::sink::delta::{self, Table};
use crate::sink::store::Storage;

/// How often the scheduler looks at its jobs.
const TICK: Duration = Duration::from_secs(5);
/// A deliverable claim older than this without a manifest is taken over (its builder died).
const STALE_CLAIM_MS: i64 = 3_600_000;

/// Where the check job left off.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CheckState {
    /// The aggregates table's version the last check read.
    aggregates_version: Option<u64>,
}

/// One file of a deliverable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliverableFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// `deliverables/YYYY_MM/manifest.json`: written last, once; the deliverable exists when it does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub month: String,
    pub built_at: String,
    pub built_by: String,
    pub aggregates_version: Option<u64>,
    pub files: Vec<DeliverableFile>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Creates `path` if it does not exist; false when another process created it first.
async fn claim(storage: &Storage, path: &Path, body: serde_json::Value) -> anyhow::Result<bool> {
    Ok(storage
        .create_if_absent(path, serde_json::to_vec(&body)?)
        .await?)
}

/// Wins the run of `job` in the slot of `interval_ms` that `now` falls in.
async fn claim_slot(
    storage: &Storage,
    job: &str,
    interval_ms: i64,
    now: i64,
) -> anyhow::Result<bool> {
    let slot = now / interval_ms.max(1);
    let path = Path::from(format!("jobs/{job}/slots/{slot:012}.json"));
    claim(
        storage,
        &path,
        serde_json::json!({"by": crate::sink::store::holder(), "at_ms": now}),
    )
    .await
}

/// Deletes the slot claims of `job` older than a day (one object per interval otherwise piles up).
async fn forget_old_slots(storage: &Storage, job: &str, interval_ms: i64, now: i64) {
    use futures::TryStreamExt;
    let keep_from = (now - 86_400_000) / interval_ms.max(1);
    let prefix = Path::from(format!("jobs/{job}/slots"));
    let Ok(list) = storage
        .store()
        .list(Some(&prefix))
        .try_collect::<Vec<_>>()
        .await
    else {
        return;
    };
    for o in list {
        let old = o
            .location
            .filename()
            .and_then(|f| f.trim_end_matches(".json").parse::<i64>().ok())
            .is_some_and(|slot| slot < keep_from);
        if old {
            let _ = storage.store().delete(&o.location).await;
        }
    }
}

/// Local dates that received data in the aggregates table's versions `first..=until`, each with
/// the last version that brought it data, read from the table's commit files (compaction's
/// rewrites are not new data). `None` when a commit file is gone (log cleanup): the caller then
/// looks at a wider span; any other storage error is an error (retried at the next run).
async fn dates_added(
    storage: &Storage,
    first: u64,
    until: u64,
) -> anyhow::Result<Option<std::collections::BTreeMap<NaiveDate, u64>>> {
    let mut dates = std::collections::BTreeMap::new();
    for v in first..=until {
        let path = Path::from(format!("aggregates/_delta_log/{v:020}.json"));
        let bytes = match storage.store().get(&path).await {
            Ok(got) => got.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            // Files re-added by compaction carry no new data (`dataChange: false`).
            if action["add"]["dataChange"] == serde_json::Value::Bool(false) {
                continue;
            }
            if let Some(d) = action["add"]["partitionValues"]["date"].as_str()
                && let Ok(d) = NaiveDate::parse_from_str(d, "%Y-%m-%d")
            {
                dates.insert(d, v);
            }
        }
    }
    Ok(Some(dates))
}

/// Longest span one check run covers (memory stays bounded on a backlog of months).
const MAX_SPAN_DAYS: i64 = 31;

/// Contiguous spans of at most [`MAX_SPAN_DAYS`] (a gap of more than one day starts a new span).
/// A range check finds what daily checks find, so how the dates are cut does not change the
/// alerts.
fn spans(dates: &BTreeSet<NaiveDate>) -> Vec<(NaiveDate, NaiveDate)> {
    let mut out: Vec<(NaiveDate, NaiveDate)> = Vec::new();
    for &d in dates {
        match out.last_mut() {
            Some((start, end))
                if (d - *end).num_days() <= 1 && (d - *start).num_days() < MAX_SPAN_DAYS =>
            {
                *end = d
            }
            _ => out.push((d, d)),
        }
    }
    out
}

/// The check job: every date with new data since the last run and the last `check_days` days,
/// checked; new and changed alerts queued and delivered through `[alerts]`.
pub async fn run_checks(cfg: &Config, storage: &Storage) -> anyhow::Result<usize> {
    let state_path = Path::from("jobs/checks/state.json");
    let state: CheckState = match storage.store().get(&state_path).await {
        // Damaged: start over (every date of the table is checked once; nothing is skipped).
        Ok(got) => serde_json::from_slice(&got.bytes().await?).unwrap_or_default(),
        Err(object_store::Error::NotFound { .. }) => CheckState::default(),
        Err(e) => return Err(e.into()),
    };
    let current = delta::load(storage, Table::Aggregates)
        .await?
        .and_then(|t| t.version());
    let today = cfg.window.local(now_ms()).date_naive();
    let mut dates: BTreeSet<NaiveDate> = (0..=cfg.jobs.check_days)
        .map(|back| today - chrono::Days::new(u64::from(back)))
        .collect();
    let ctx = jobs::context(cfg, storage).await?;
    if let Some(cur) = current {
        let first = state.aggregates_version.map_or(0, |v| v + 1);
        match dates_added(storage, first, cur).await? {
            Some(d) => dates.extend(d.into_keys()),
            // The commits since the last check are gone (log cleanup) or unreadable: every date
            // of the table, checked span by span. Slow once, never a gap.
            None => {
                tracing::info!(
                    since_version = first,
                    "the aggregates log since the last check is incomplete; checking every date of the table"
                );
                dates.extend(jobs::dates_with_data(&ctx)?);
            }
        }
    }
    let mut changed = 0;
    for (from, to) in spans(&dates) {
        let incidents = jobs::checks::run_checks(&ctx, cfg, &cfg.checks, from, to).await?;
        let found = alerts::alerts_from(cfg, &incidents);
        let start = cfg.window.day_start(from);
        let end = cfg.window.day_start(to.succ_opt().expect("next day"));
        changed += alerts::merge(storage, found, start, end)
            .await?
            .changed
            .len();
    }
    // The dates are checked and their alerts queued: a failing route below must not make the
    // next run check them again.
    storage
        .store()
        .put(
            &state_path,
            PutPayload::from(serde_json::to_vec(&CheckState {
                aggregates_version: current,
            })?),
        )
        .await?;
    deliver(cfg, storage).await?;
    Ok(changed)
}

/// Delivers the queued alerts; a failed route is an error of the job (it retries next time).
async fn deliver(cfg: &Config, storage: &Storage) -> anyhow::Result<()> {
    let (d, _) = alerts::deliver(storage, true, &cfg.alerts).await?;
    if d.failed() {
        for e in &d.errors {
            tracing::warn!(error = %e, "alert not delivered; it stays queued");
        }
        anyhow::bail!(
            "{} alert deliveries failed ({}); they stay queued and are retried",
            d.errors.len(),
            d.errors.first().cloned().unwrap_or_default()
        );
    }
    Ok(())
}

/// Whether month `(y, m)` is closed at `now`: `monthly_after` past its end, or every partition's
/// event time past its end plus the allowed lateness.
async fn month_closed(cfg: &Config, storage: &Storage, y: i32, m: u32, now: i64) -> bool {
    let (_, next) = crate::window::time::month_bounds(y, m);
    let end = cfg.window.day_start(next);
    if now >= end + cfg.jobs.monthly_after_ms {
        return true;
    }
    if now < end {
        return false;
    }
    match crate::sink::checkpoint::committed(storage).await {
        Ok(cps) if !cps.is_empty() => cps
            .iter()
            .all(|c| c.state.watermark >= end + cfg.window.lateness_ms),
        _ => false,
    }
}

fn month_dir(y: i32, m: u32) -> String {
    format!("deliverables/{y:04}_{m:02}")
}

/// The manifest of month `(y, m)`'s deliverable, if it was built.
pub async fn manifest(storage: &Storage, y: i32, m: u32) -> anyhow::Result<Option<Manifest>> {
    let path = Path::from(format!("{}/manifest.json", month_dir(y, m)));
    match storage.store().get(&path).await {
        Ok(got) => Ok(Some(serde_json::from_slice(&got.bytes().await?)?)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Wins the build of a deliverable into `dir`: claims `.claim-1`, `.claim-2` … in turn, taking
/// over a claim older than an hour (its builder died). The claim won, if any.
async fn claim_build(storage: &Storage, dir: &str, now: i64) -> anyhow::Result<Option<Path>> {
    for n in 1..=100 {
        let path = Path::from(format!("{dir}/.claim-{n}.json"));
        if claim(
            storage,
            &path,
            serde_json::json!({"by": crate::sink::store::holder(), "at_ms": now}),
        )
        .await?
        {
            return Ok(Some(path));
        }
        let at = match storage.store().get(&path).await {
            Ok(got) => serde_json::from_slice::<serde_json::Value>(&got.bytes().await?)
                .ok()
                .and_then(|v| v["at_ms"].as_i64())
                .unwrap_or(0),
            Err(_) => 0,
        };
        if now - at < STALE_CLAIM_MS {
            return Ok(None);
        }
    }
    Ok(None)
}

/// Builds month `(y, m)`'s deliverable into `dir` (`deliverables/YYYY_MM/`, or its `rev-N/`) —
/// the CSV in the configured format, its `.sha256`, the quality summary, the report, the
/// fault-report drafts — then the manifest listing every file with its SHA-256. Readers trust
/// only what the manifest lists.
pub async fn build_deliverable(
    cfg: &Config,
    storage: &Storage,
    y: i32,
    m: u32,
    dir: &str,
) -> anyhow::Result<Manifest> {
    let format = match &cfg.jobs.monthly_format {
        Some(p) => jobs::format::Format::load(p).map_err(anyhow::Error::msg)?,
        None => jobs::format::Format::long(),
    };
    let (ctx, versions) = jobs::context_at(cfg, storage, &AsOf::Latest).await?;
    let tmp = tempdir()?;
    let result = async {
        jobs::monthly::write_monthly(&ctx, cfg, y, m, &format, &tmp).await?;
        let alerts = alerts::stored(storage.store().as_ref()).await?;
        alerts::faults::write(cfg, &alerts, y, m, &tmp)?;
        let mut files = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(&tmp)?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        for name in names {
            let bytes = std::fs::read(tmp.join(&name))?;
            let sha = format!("{:x}", Sha256::digest(&bytes));
            let path = Path::from(format!("{dir}/{name}"));
            files.push(DeliverableFile {
                name,
                bytes: bytes.len() as u64,
                sha256: sha,
            });
            storage.store().put(&path, PutPayload::from(bytes)).await?;
        }
        let manifest = Manifest {
            month: format!("{y:04}-{m:02}"),
            built_at: cfg.window.local(now_ms()).to_rfc3339(),
            built_by: crate::sink::store::holder(),
            aggregates_version: versions.aggregates,
            files,
        };
        let path = Path::from(format!("{dir}/manifest.json"));
        if !claim(storage, &path, serde_json::to_value(&manifest)?).await? {
            anyhow::bail!(
                "the deliverable of {y:04}-{m:02} was published by another process meanwhile"
            );
        }
        Ok(manifest)
    }
    .await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "jinryu-deliverable-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Where the monthly job left off: the aggregates version it last looked at, and the built
/// months that received data since they were built (a revision is due once their data settles).
#[derive(Debug, Default, Serialize, Deserialize)]
struct MonthlyState {
    aggregates_version: Option<u64>,
    /// Built month → the last aggregates version that brought it data.
    #[serde(default)]
    revise: Vec<((i32, u32), u64)>,
}

/// The monthly job: every closed month with data and no deliverable yet, and a revision of every
/// built month that received data after it was built (read incrementally from the aggregates
/// log, so an old month costs nothing until data of it arrives). A month that received data
/// since the last run, or has windows that are not final in some partition, is left for a
/// later run: while a gateway replays a backlog, its months are built once it has paused for a
/// `check_interval` and its windows are final, not once per commit.
pub async fn run_monthly(cfg: &Config, storage: &Storage) -> anyhow::Result<Vec<String>> {
    let now = now_ms();
    let state: MonthlyState = match storage.store().get(&Path::from(MONTHLY_STATE)).await {
        Ok(got) => serde_json::from_slice(&got.bytes().await?).map_err(|e| {
            anyhow::anyhow!(
                "{} is damaged ({e}); delete it (the job then waits one interval and builds what \
                 is missing; revisions due meanwhile are not built)",
                storage.describe(MONTHLY_STATE)
            )
        })?,
        Err(object_store::Error::NotFound { .. }) => MonthlyState::default(),
        Err(e) => return Err(e.into()),
    };
    let ctx = jobs::context(cfg, storage).await?;
    let current = jobs::read_versions(&ctx).aggregates;
    let months: BTreeSet<(i32, u32)> = jobs::dates_with_data(&ctx)?
        .iter()
        .map(|d| (d.year(), d.month()))
        .collect();
    let mut revise: BTreeMap<(i32, u32), u64> = state.revise.iter().copied().collect();
    // Months that received data since the last run (on the first run: all of them, so that
    // nothing is built from a backlog still being consumed; no revision follows from that).
    let touched: BTreeSet<(i32, u32)> = match (state.aggregates_version, current) {
        (None, _) => months.clone(),
        (Some(last), Some(cur)) if cur > last => match dates_added(storage, last + 1, cur).await? {
            Some(dates) => {
                let mut touched = BTreeSet::new();
                for (d, v) in dates {
                    touched.insert((d.year(), d.month()));
                    let e = revise.entry((d.year(), d.month())).or_insert(v);
                    *e = (*e).max(v);
                }
                touched
            }
            None => {
                tracing::warn!(
                    "cannot tell which built months received data since the last run (the \
                     table's log was cleaned up meanwhile); if a gateway replayed a built month, \
                     rebuild it with `jinryu monthly`"
                );
                BTreeSet::new()
            }
        },
        _ => BTreeSet::new(),
    };
    // Months with windows not final yet in some partition (their rows are still to come, e.g.
    // when a quiet partition's clock moves on after a replay).
    let held: BTreeSet<(i32, u32)> = crate::sink::checkpoint::committed(storage)
        .await?
        .iter()
        .flat_map(|c| c.state.open.iter().chain(&c.state.late))
        .map(|a| {
            let d = cfg.window.local(a.window_start).date_naive();
            (d.year(), d.month())
        })
        .collect();
    let mut built = Vec::new();
    for (y, m) in months {
        if touched.contains(&(y, m)) || held.contains(&(y, m)) {
            continue; // data of the month is arriving: built (or revised) once it settles
        }
        let key = format!("{y:04}-{m:02}");
        let dir = match latest_manifest(storage, y, m).await? {
            // Every closed month with data and no deliverable, however old: a gateway
            // replaying an old backlog gets its month built like the last one.
            None if month_closed(cfg, storage, y, m, now).await => month_dir(y, m),
            None => continue,
            // Built, and data of the month arrived after the build read the table (a gateway
            // replayed its backlog late): a revision, built like the first, with an alert.
            Some((rev, built_from)) => match revise.get(&(y, m)) {
                Some(&v) if built_from.is_none_or(|b| v > b) => {
                    tracing::info!(month = %key, revision = rev + 1, "data arrived for a built month; building a revision");
                    format!("{}/rev-{}", month_dir(y, m), rev + 1)
                }
                Some(_) => {
                    revise.remove(&(y, m)); // the newest build has that data already
                    continue;
                }
                None => continue,
            },
        };
        // A claim lost to another process keeps the month due here: the next run sees that
        // process's manifest, or builds it if that build failed.
        let Some(claimed) = claim_build(storage, &dir, now).await? else {
            continue;
        };
        let manifest = match build_deliverable(cfg, storage, y, m, &dir).await {
            Ok(mf) => mf,
            Err(e) => {
                // Released, so the next run retries it (the month stays due).
                storage.store().delete(&claimed).await.ok();
                return Err(e);
            }
        };
        revise.remove(&(y, m));
        // Recorded at once: whatever fails below must not make the next run build it again.
        save_monthly_state(storage, state.aggregates_version, &revise).await?;
        tracing::info!(
            month = %manifest.month,
            files = manifest.files.len(),
            aggregates_version = ?manifest.aggregates_version,
            "deliverable built into {dir}/ (hand it over, then: jinryu deliver --month {})",
            manifest.month
        );
        if dir != month_dir(y, m) {
            let alert = alerts::revision_alert(cfg, &key, &dir, now);
            alerts::merge(storage, vec![alert], 0, 0).await?;
            // A failing route keeps the alert queued; the checks job delivers it again.
            if let Err(e) = deliver(cfg, storage).await {
                tracing::warn!(error = %format!("{e:#}"), "the revision's alert waits for its routes");
            }
        }
        built.push(dir);
    }
    save_monthly_state(storage, current, &revise).await?;
    Ok(built)
}

const MONTHLY_STATE: &str = "jobs/monthly/state.json";

async fn save_monthly_state(
    storage: &Storage,
    version: Option<u64>,
    revise: &BTreeMap<(i32, u32), u64>,
) -> anyhow::Result<()> {
    let state = MonthlyState {
        aggregates_version: version,
        revise: revise.iter().map(|(k, v)| (*k, *v)).collect(),
    };
    storage
        .store()
        .put(
            &Path::from(MONTHLY_STATE),
            PutPayload::from(serde_json::to_vec(&state)?),
        )
        .await?;
    Ok(())
}

/// The newest deliverable of month `(y, m)`: its revision (1 = the first build) and the
/// aggregates version it was built from.
async fn latest_manifest(
    storage: &Storage,
    y: i32,
    m: u32,
) -> anyhow::Result<Option<(u32, Option<u64>)>> {
    let Some(first) = manifest(storage, y, m).await? else {
        return Ok(None);
    };
    let mut latest = (1, first.aggregates_version);
    loop {
        let path = Path::from(format!(
            "{}/rev-{}/manifest.json",
            month_dir(y, m),
            latest.0 + 1
        ));
        match storage.store().get(&path).await {
            Ok(got) => {
                let mf: Manifest = serde_json::from_slice(&got.bytes().await?)?;
                latest = (latest.0 + 1, mf.aggregates_version);
            }
            Err(object_store::Error::NotFound { .. }) => return Ok(Some(latest)),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Months with a deliverable (`deliverables/YYYY_MM/manifest.json`).
async fn built_months(storage: &Storage) -> anyhow::Result<Vec<(i32, u32)>> {
    use futures::TryStreamExt;
    let listed: Vec<_> = storage
        .store()
        .list(Some(&Path::from("deliverables")))
        .try_collect()
        .await?;
    Ok(listed
        .iter()
        .filter(|o| o.location.filename() == Some("manifest.json"))
        .filter_map(|o| {
            let dir = o.location.parts().nth(1)?;
            let (y, m) = dir.as_ref().split_once('_')?;
            Some((y.parse().ok()?, m.parse().ok()?))
        })
        .collect())
}

/// The obligations job: an `obligation_due_soon` alert on the business day before a due date,
/// `obligation_overdue` once it passed, both resolved when the handover is recorded.
pub async fn run_obligations(cfg: &Config, storage: &Storage) -> anyhow::Result<usize> {
    let now = now_ms();
    let today = cfg.window.local(now).date_naive();
    let stored = alerts::stored(storage.store().as_ref()).await?;
    let first = {
        let back = today - chrono::Days::new(62);
        (back.year(), back.month())
    };
    // The last two months and every month whose deliverable was built (a backlog replayed
    // long after its month still owes its CSV and report).
    let mut months: BTreeSet<(i32, u32)> =
        obligations::months_between(first, (today.year(), today.month()))
            .into_iter()
            .collect();
    months.extend(built_months(storage).await?);
    // And the months of obligation alerts still open, so each is resolved once it is met,
    // however old (an obligation falls due in its month or the next).
    for a in &stored {
        if a.kind.starts_with("obligation_")
            && a.status == "open"
            && let Some(due) = a.evidence["due"]
                .as_str()
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        {
            let before = due.with_day(1).expect("first day") - chrono::Days::new(1);
            months.insert((due.year(), due.month()));
            months.insert((before.year(), before.month()));
        }
    }
    let mut raised: Vec<Alert> = Vec::new();
    for (y, m) in months {
        for o in obligations::of_month(cfg, storage, &stored, y, m).await? {
            let status = o.status(today);
            for kind in ["obligation_due_soon", "obligation_overdue"] {
                let wanted = match kind {
                    "obligation_due_soon" => status == obligations::Status::DueSoon,
                    _ => status == obligations::Status::Overdue,
                };
                let alert = alerts::obligation_alert(cfg, kind, &o, wanted);
                let known_open = stored
                    .iter()
                    .any(|a| a.id == alert.id && a.status == "open");
                // Raised while it applies; resolved once (only if it was raised).
                if wanted || known_open {
                    raised.push(alert);
                }
            }
        }
    }
    let changed = alerts::merge(storage, raised, 0, 0).await?.changed.len();
    deliver(cfg, storage).await?;
    Ok(changed)
}

/// Runs the jobs of `[jobs]` until the runtime ends. Each `check_interval`, the process of the
/// group that wins the interval's claim runs checks, monthly and obligations in turn (one at a
/// time, so their updates of the alert state never race); the others skip the interval.
pub async fn run(cfg: Config, storage: Storage, metrics: Arc<Metrics>) {
    let j = cfg.jobs.clone();
    if !(j.checks || j.monthly || j.obligations) {
        return;
    }
    let mut last: Option<i64> = None;
    loop {
        let now = now_ms();
        if last.is_none_or(|l| now - l >= j.check_interval_ms) {
            last = Some(now);
            let claimed = claim_slot(&storage, "run", j.check_interval_ms, now).await;
            if claimed.is_ok() {
                metrics.job_ended("claim", Ok(()));
            }
            match claimed {
                Ok(true) => {
                    if j.checks {
                        job(
                            &cfg,
                            &storage,
                            &metrics,
                            "checks",
                            now,
                            run_checks(&cfg, &storage),
                        )
                        .await;
                    }
                    if j.monthly {
                        job(
                            &cfg,
                            &storage,
                            &metrics,
                            "monthly",
                            now,
                            run_monthly(&cfg, &storage),
                        )
                        .await;
                    }
                    if j.obligations {
                        let work = run_obligations(&cfg, &storage);
                        job(&cfg, &storage, &metrics, "obligations", now, work).await;
                    }
                    forget_old_slots(&storage, "run", j.check_interval_ms, now).await;
                }
                Ok(false) => {} // another process of the group has this interval
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim this interval's jobs; trying again next interval");
                    metrics.job_ended("claim", Err(format!("cannot claim the jobs' run: {e}")));
                }
            }
        }
        tokio::time::sleep(TICK.min(Duration::from_millis(j.check_interval_ms as u64))).await;
    }
}

/// Runs one job, records it in /metrics and /healthz, and raises or resolves a `job_failed`
/// alert.
async fn job<T: std::fmt::Debug>(
    cfg: &Config,
    storage: &Storage,
    metrics: &Metrics,
    name: &str,
    now: i64,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) {
    use futures::FutureExt;
    metrics.job_started(name);
    // A panic (a bug) is the job's failure, reported like any other: the scheduler goes on.
    let result = match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => Err(anyhow::anyhow!(
            "the job panicked (a bug; please report it): {}",
            panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default()
        )),
    };
    let failed = result.as_ref().err().map(|e| format!("{e:#}"));
    match &result {
        Ok(v) => tracing::debug!(job = name, result = ?v, "job done"),
        Err(e) => {
            tracing::error!(job = name, error = %format!("{e:#}"), "job failed; retried at its next run")
        }
    }
    metrics.job_ended(name, failed.clone().map_or(Ok(()), Err));
    let known_open = alerts::stored(storage.store().as_ref())
        .await
        .ok()
        .and_then(|all| {
            all.into_iter()
                .find(|a| a.kind == "job_failed" && a.evidence["job"] == name && a.status == "open")
        });
    let alert = match (&failed, known_open) {
        (Some(e), None) => Some(alerts::job_alert(cfg, name, now, now, true, e)),
        // Still failing: the open alert stands as it was sent (the current error is in /healthz
        // and the log); a new version every interval would page the operator every interval.
        (Some(_), Some(_)) => None,
        (None, Some(open)) => Some(alerts::job_alert(cfg, name, open.start_ms, now, false, "")),
        (None, None) => None,
    };
    if let Some(a) = alert {
        // Best effort: the job's own failure is already in /healthz and the log.
        if alerts::merge(storage, vec![a], 0, 0).await.is_ok() {
            let _ = alerts::deliver(storage, true, &cfg.alerts).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_join_neighbouring_days() {
        let d = |day| NaiveDate::from_ymd_opt(2026, 10, day).unwrap();
        let set: BTreeSet<NaiveDate> = [d(1), d(2), d(3), d(10), d(12), d(13)].into();
        assert_eq!(
            spans(&set),
            vec![(d(1), d(3)), (d(10), d(10)), (d(12), d(13))]
        );
    }
}
