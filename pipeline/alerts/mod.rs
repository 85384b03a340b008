//! Stage 5 — alerts. Incidents from the checks become alerts with a stable id (kind, sensor and
//! start), a severity, the evidence and a suggested action. Alert state lives with the data
//! (`alerts/state.json` in the storage), so an alert that continues stays one alert across runs,
//! a rerun over the same data changes nothing and sends nothing, and an alert whose condition is
//! gone is resolved. Only new and changed alerts are routed ([`route`]).

pub mod faults;
pub mod route;

use std::collections::{BTreeMap, BTreeSet};

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::jobs::checks::{CHECKS, Incident};
use crate::sink::store::Storage;

const STATE: &str = "alerts/state.json";
/// Alerts not yet delivered to every route: id → the routes the alert's latest content reached.
const OUTBOX: &str = "alerts/outbox.json";
/// Held while the alert state or the outbox is read, changed and written (see [`StateLock`]).
const LOCK: &str = "alerts/.lock";
/// A lock older than this was left by a process that died (a change holds it for a moment:
/// read, change and write two small objects).
const STALE_LOCK_MS: i64 = 60_000;
/// How long a writer waits for the lock before it gives up with an error (longer than a stale
/// lock lives, so a crashed holder never makes writers fail).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

/// Exclusive use of the alert state and outbox: the jobs of `jinryu run` (any process of the
/// group), an operator's `jinryu check` or `faults`, and delivery all read, change and write
/// them; without a lock two of them could interleave and one's change (an alert, a queued
/// delivery) be overwritten by the other's. An object created only if absent (`If-None-Match` on
/// S3, an exclusive create on disk); a lock older than a minute is taken over, by one waiter.
struct StateLock<'a> {
    storage: &'a Storage,
}

impl<'a> StateLock<'a> {
    async fn take(storage: &'a Storage) -> anyhow::Result<StateLock<'a>> {
        let path = Path::from(LOCK);
        let t0 = std::time::Instant::now();
        let me = crate::sink::store::holder();
        loop {
            let now = chrono::Utc::now().timestamp_millis();
            let body = serde_json::json!({"by": me, "at_ms": now});
            match storage
                .create_if_absent(&path, serde_json::to_vec(&body)?)
                .await
            {
                Ok(true) => return Ok(StateLock { storage }),
                Ok(false) => {}
                Err(e) => return Err(anyhow::anyhow!("{}: {e}", storage.describe(LOCK))),
            }
            let holder = match storage.store().get(&path).await {
                Ok(got) => serde_json::from_slice::<serde_json::Value>(&got.bytes().await?)
                    .unwrap_or_default(),
                Err(object_store::Error::NotFound { .. }) => continue, // released meanwhile
                Err(e) => return Err(anyhow::anyhow!("{}: {e}", storage.describe(LOCK))),
            };
            let since = holder["at_ms"].as_i64().unwrap_or(0);
            if now - since > STALE_LOCK_MS {
                // Only one waiter may remove this stale lock: the one that creates its takeover
                // marker (otherwise a slow second waiter could delete the first one's new lock).
                let marker = Path::from(format!("{LOCK}-takeover-{since}"));
                let won = storage
                    .create_if_absent(&marker, serde_json::to_vec(&body)?)
                    .await
                    .unwrap_or(false);
                if won {
                    tracing::warn!(holder = %holder["by"], "taking over a stale alert-state lock (its holder died)");
                    storage.store().delete(&path).await.ok();
                    continue;
                }
            }
            anyhow::ensure!(
                t0.elapsed() < LOCK_WAIT,
                "the alert state is locked by {} since {} ms ago; if no jinryu process is running, \
                 delete {}",
                holder["by"],
                now - since,
                storage.describe(LOCK)
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    async fn release(self) {
        if let Err(e) = self.storage.store().delete(&Path::from(LOCK)).await {
            tracing::warn!(error = %e, "could not release the alert-state lock; it is taken over after a minute");
        }
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable: derived from kind, sensor and start.
    pub id: String,
    pub kind: String,
    pub severity: String,
    pub status: String,
    pub sensor_id: Option<String>,
    pub array: Option<String>,
    /// Local start and end (RFC 3339 with offset) and epoch ms.
    pub start: String,
    pub end: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub windows: u64,
    pub evidence: serde_json::Value,
    pub action: String,
}

/// What a run of the checks changed.
#[derive(Debug, Default)]
pub struct Changes {
    /// New alerts and alerts whose status, end or evidence changed (in id order).
    pub changed: Vec<Alert>,
    /// All alerts after the run.
    pub all: Vec<Alert>,
}

fn alert_id(kind: &str, sensor: Option<&str>, start_ms: i64) -> String {
    let h = Sha256::digest(format!("{kind}|{}|{start_ms}", sensor.unwrap_or("-")).as_bytes());
    h[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Turns incidents into alerts.
pub fn alerts_from(cfg: &Config, incidents: &[Incident]) -> Vec<Alert> {
    incidents
        .iter()
        .map(|i| {
            let check = CHECKS
                .iter()
                .find(|c| c.kind == i.kind)
                .expect("known check");
            let array = i
                .sensor_id
                .as_deref()
                .and_then(|s| cfg.registry.lookup(s))
                .map(|s| cfg.registry.get(s).array.clone());
            Alert {
                id: alert_id(i.kind, i.sensor_id.as_deref(), i.start_ms),
                kind: i.kind.to_string(),
                severity: check.severity.to_string(),
                status: if i.ongoing { "open" } else { "resolved" }.to_string(),
                sensor_id: i.sensor_id.clone(),
                array,
                start: cfg.window.local(i.start_ms).to_rfc3339(),
                end: cfg.window.local(i.end_ms).to_rfc3339(),
                start_ms: i.start_ms,
                end_ms: i.end_ms,
                windows: i.windows,
                evidence: serde_json::json!({
                    "value": i.value,
                    "baseline": i.baseline,
                    "detail": i.detail,
                }),
                action: check.action.to_string(),
            }
        })
        .collect()
}

/// An alert about the pipeline itself (raised by `jinryu run`, not by the data checks).
pub fn pipeline_alert(
    cfg: &Config,
    kind: &str,
    start_ms: i64,
    end_ms: i64,
    open: bool,
    evidence: serde_json::Value,
    action: &str,
) -> Alert {
    Alert {
        id: alert_id(kind, None, start_ms),
        kind: kind.to_string(),
        severity: "critical".to_string(),
        status: if open { "open" } else { "resolved" }.to_string(),
        sensor_id: None,
        array: None,
        start: cfg.window.local(start_ms).to_rfc3339(),
        end: cfg.window.local(end_ms).to_rfc3339(),
        start_ms,
        end_ms,
        windows: 0,
        evidence,
        action: action.to_string(),
    }
}

/// An alert about an obligation (`obligation_due_soon`, `obligation_overdue`): one per kind and
/// obligation, open while it applies.
pub fn obligation_alert(
    cfg: &Config,
    kind: &str,
    o: &crate::jobs::obligations::Obligation,
    open: bool,
) -> Alert {
    let due_ms = cfg.window.day_start(o.due);
    let (severity, action) = if kind == "obligation_overdue" {
        (
            "critical",
            "The due date passed without a recorded handover: hand the file over (deliverables/ \
             holds what the service built), then record it with `jinryu deliver`; if it was \
             handed over, record it now.",
        )
    } else {
        (
            "warning",
            "Due on the next business day: hand the file over and record it with `jinryu deliver`.",
        )
    };
    Alert {
        id: alert_id(kind, Some(&o.id), due_ms),
        kind: kind.to_string(),
        severity: severity.to_string(),
        status: if open { "open" } else { "resolved" }.to_string(),
        sensor_id: None,
        array: None,
        start: cfg.window.local(due_ms).to_rfc3339(),
        end: cfg.window.local(due_ms).to_rfc3339(),
        start_ms: due_ms,
        end_ms: due_ms,
        windows: 0,
        evidence: serde_json::json!({
            "obligation": o.id,
            "what": o.what,
            "due": o.due.to_string(),
        }),
        action: action.to_string(),
    }
}

/// A `deliverable_revised` alert: data of a month arrived after its deliverable was built, and
/// a revision was built into `dir`.
pub fn revision_alert(cfg: &Config, month: &str, dir: &str, now_ms: i64) -> Alert {
    let mut a = pipeline_alert(
        cfg,
        "deliverable_revised",
        now_ms,
        now_ms,
        true,
        serde_json::json!({"month": month, "deliverable": dir}),
        "Data of this month arrived after its deliverable was built (a gateway or a replay \
         delivered it late), and a revision was built with it. If the first one was handed over, \
         tell the client and hand over the revision (its manifest.json lists the files and \
         checksums), then record it with `jinryu deliver`.",
    );
    a.severity = "warning".to_string();
    // One alert per revision, however often the job looks.
    a.id = alert_id("deliverable_revised", Some(dir), 0);
    a
}

/// A `job_failed` alert: a job of `jinryu run` failed (open) or succeeded again (resolved).
pub fn job_alert(
    cfg: &Config,
    job: &str,
    start_ms: i64,
    end_ms: i64,
    open: bool,
    error: &str,
) -> Alert {
    let mut a = pipeline_alert(
        cfg,
        "job_failed",
        start_ms,
        end_ms,
        open,
        serde_json::json!({"job": job, "error": error}),
        "A job of jinryu run failed (see /healthz and the log for the error); it is retried at \
         its next run. Checks: storage and alert routes; monthly: the format file and the \
         storage; obligations: the storage.",
    );
    a.id = alert_id("job_failed", Some(job), start_ms);
    a
}

async fn load(storage: &Storage) -> anyhow::Result<BTreeMap<String, Alert>> {
    let list = stored(storage.store().as_ref())
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", storage.describe(STATE)))?;
    Ok(list.into_iter().map(|a| (a.id.clone(), a)).collect())
}

/// The stored alerts (empty if `jinryu check` never ran on this storage).
pub async fn stored(store: &dyn object_store::ObjectStore) -> anyhow::Result<Vec<Alert>> {
    match store.get(&Path::from(STATE)).await {
        Ok(got) => {
            let bytes = got.bytes().await?;
            serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{STATE} is damaged ({e}); move it away to start the alert history afresh"
                )
            })
        }
        Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Merges this run's alerts over `[range_start_ms, range_end_ms)` into the stored state.
/// Stored data-check alerts in the range that were not found again are resolved (their condition
/// is gone); alerts of other kinds (obligations, failed jobs) are resolved only by whoever raised
/// them, never by a check run that happens to cover their date.
pub async fn merge(
    storage: &Storage,
    found: Vec<Alert>,
    range_start_ms: i64,
    range_end_ms: i64,
) -> anyhow::Result<Changes> {
    let lock = StateLock::take(storage).await?;
    let result = merge_locked(storage, found, range_start_ms, range_end_ms).await;
    lock.release().await;
    result
}

async fn merge_locked(
    storage: &Storage,
    found: Vec<Alert>,
    range_start_ms: i64,
    range_end_ms: i64,
) -> anyhow::Result<Changes> {
    let mut state = load(storage).await?;
    let mut changed = Vec::new();
    let found_ids: std::collections::BTreeSet<String> =
        found.iter().map(|a| a.id.clone()).collect();
    for a in found {
        match state.get(&a.id) {
            Some(old) if old == &a => {}
            _ => {
                changed.push(a.clone());
                state.insert(a.id.clone(), a);
            }
        }
    }
    for (id, a) in state.iter_mut() {
        if a.status == "open"
            && !found_ids.contains(id)
            && crate::jobs::checks::CHECKS.iter().any(|c| c.kind == a.kind)
            && a.start_ms >= range_start_ms
            && a.start_ms < range_end_ms
        {
            a.status = "resolved".to_string();
            changed.push(a.clone());
        }
    }
    changed.sort_by(|a, b| a.id.cmp(&b.id));
    // The outbox first: a crash between the two writes re-finds the change on the next run (the
    // state was not saved), so a change is never stored without being queued for delivery.
    if !changed.is_empty() {
        let mut outbox = load_outbox(storage).await?;
        for a in &changed {
            outbox.insert(a.id.clone(), BTreeSet::new());
        }
        save_outbox(storage, &outbox).await?;
    }
    let all: Vec<Alert> = state.into_values().collect();
    storage
        .store()
        .put(
            &Path::from(STATE),
            PutPayload::from(serde_json::to_vec_pretty(&all)?),
        )
        .await?;
    Ok(Changes { changed, all })
}

async fn load_outbox(storage: &Storage) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    match storage.store().get(&Path::from(OUTBOX)).await {
        Ok(got) => serde_json::from_slice(&got.bytes().await?).map_err(|e| {
            anyhow::anyhow!(
                "{} is damaged ({e}); move it away (alerts it listed will not be re-sent)",
                storage.describe(OUTBOX)
            )
        }),
        Err(object_store::Error::NotFound { .. }) => Ok(BTreeMap::new()),
        Err(e) => Err(e.into()),
    }
}

async fn save_outbox(
    storage: &Storage,
    outbox: &BTreeMap<String, BTreeSet<String>>,
) -> anyhow::Result<()> {
    storage
        .store()
        .put(
            &Path::from(OUTBOX),
            PutPayload::from(serde_json::to_vec_pretty(outbox)?),
        )
        .await?;
    Ok(())
}

/// Alerts waiting for some route (new or changed, not yet delivered everywhere).
pub async fn pending(storage: &Storage) -> anyhow::Result<usize> {
    Ok(load_outbox(storage).await?.len())
}

/// Sends every queued alert to each route it has not reached yet, and records what arrived: an
/// alert leaves the queue once every configured route has it. Whoever queued it — `check`,
/// `faults`, a run that crashed or whose webhook was down — the next delivery sends it; a route
/// that fails keeps it queued for the next run. `to_stdout` makes stdout one of the routes.
/// Returns what the routes did and how many alerts are still waiting.
pub async fn deliver(
    storage: &Storage,
    to_stdout: bool,
    routes: &crate::config::AlertRoutes,
) -> anyhow::Result<(route::Delivery, usize)> {
    // What to send: read under the lock, sent without it (a route may take minutes).
    let lock = StateLock::take(storage).await?;
    let snapshot =
        async { Ok::<_, anyhow::Error>((load(storage).await?, load_outbox(storage).await?)) }.await;
    lock.release().await;
    let (state, outbox) = snapshot?;
    let mut wanted: Vec<&'static str> = Vec::new();
    if to_stdout {
        wanted.push("stdout");
    }
    wanted.extend(route::configured(routes));
    let mut d = route::Delivery::default();
    for &r in &wanted {
        let todo: Vec<Alert> = outbox
            .iter()
            .filter(|(_, done)| !done.contains(r))
            .filter_map(|(id, _)| state.get(id).cloned())
            .collect();
        if todo.is_empty() {
            continue;
        }
        let one = if r == "stdout" {
            route::send(r, &todo, routes)
        } else {
            // Network routes block (timeouts, retries with backoff): off the async workers.
            let routes = routes.clone();
            tokio::task::spawn_blocking(move || route::send(r, &todo, &routes)).await?
        };
        d.absorb(one);
    }
    // What was delivered, recorded against the outbox as it is now: an alert that changed while
    // it was being sent keeps waiting for its new version.
    let lock = StateLock::take(storage).await?;
    let recorded = async {
        let now_state = load(storage).await?;
        let mut outbox = load_outbox(storage).await?;
        let before = outbox.clone();
        for (id, r) in &d.delivered {
            if now_state.get(id) == state.get(id)
                && let Some(done) = outbox.get_mut(id)
            {
                done.insert(r.to_string());
            }
        }
        outbox.retain(|id, done| {
            now_state.contains_key(id) && !wanted.iter().all(|r| done.contains(*r))
        });
        if outbox != before {
            save_outbox(storage, &outbox).await?;
        }
        Ok::<_, anyhow::Error>(outbox.len())
    }
    .await;
    lock.release().await;
    Ok((d, recorded?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writers in several tasks at once (the jobs, an operator's `check`, delivery): every alert
    /// and every queued delivery survives, and a lock left by a dead process is taken over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_lose_nothing() {
        let cfg = Config::chikaho("memory://");
        let storage = Storage::open("memory://").unwrap();
        // A lock left by a process that died long ago.
        storage
            .store()
            .put(
                &Path::from(LOCK),
                PutPayload::from(r#"{"by":"pid 1 on gone","at_ms":0}"#),
            )
            .await
            .unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let routes = crate::config::AlertRoutes {
            log_file: Some(log.path().to_path_buf()),
            ..Default::default()
        };
        let mut tasks = Vec::new();
        for i in 0..24i64 {
            let (s, c, r) = (storage.clone(), cfg.clone(), routes.clone());
            tasks.push(tokio::spawn(async move {
                let a = job_alert(&c, &format!("job{i}"), 1_000 * i, 1_000 * i, true, "x");
                merge(&s, vec![a], 0, 0).await.unwrap();
                if i % 3 == 0 {
                    deliver(&s, false, &r).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let all = stored(storage.store().as_ref()).await.unwrap();
        assert_eq!(all.len(), 24, "every merged alert is in the state");
        // Whatever the interleaving, one more delivery empties the queue and every alert has
        // reached the log (at least once: two deliveries may overlap).
        deliver(&storage, false, &routes).await.unwrap();
        assert_eq!(pending(&storage).await.unwrap(), 0);
        let logged = std::fs::read_to_string(log.path()).unwrap();
        for a in &all {
            assert!(logged.contains(&a.id), "{} never delivered", a.id);
        }
        assert!(
            storage.store().get(&Path::from(LOCK)).await.is_err(),
            "the lock is released"
        );
    }
}
