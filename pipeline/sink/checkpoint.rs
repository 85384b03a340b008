//! The Kafka service's commits: one writer per topic-partition, application id
//! `jinryu-<topic>-<partition>`, committed in *epochs* ([`PartitionLog::commit`]):
//!
//! 1. the epoch's data files are written to both tables (invisible: no commit names them yet);
//! 2. the state object `_state/<app>/<next offset>-<token>.json` ([`Checkpoint`]: the window
//!    state — open windows, late rows, retry memory — and the partition's totals) is stored;
//! 3. the quarantine table commits its files with `txn(app, next offset)` — only records at or
//!    after that table's own progress for the app, so a crash between the two commits never
//!    quarantines a record twice;
//! 4. the aggregates table commits its files with `txn(app, next offset)` and the state token:
//!    from here on the epoch is committed;
//! 5. only then is the offset committed to Kafka (for the consumer group and lag monitoring).
//!
//! Both commits check that the table's progress for the app is still the one this writer started
//! from (fencing): a paused owner that wakes up after another took its partition over, or a second
//! service with another group on the same storage, is refused and stops. A process that dies
//! anywhere leaves the last committed epoch as the truth: the next owner reads the aggregates
//! table's progress, loads the state object it names and starts at its offset. Files of an
//! unfinished epoch are in no commit and are removed by `jinryu table vacuum`.

use std::collections::BTreeMap;

use deltalake_core::kernel::Add;
use serde::{Deserialize, Serialize};

use super::delta::{self, Commit, Progress, Table};
use super::store::Storage;
use super::writer::{
    EpochWritten, SinkError, TablePair, delete_object, encode_epoch, put_object, read_state,
};
use crate::config::SensorRegistry;
use crate::quarantine::QuarantineRecord;
use crate::window::AggRow;
use crate::window::state::StageState;
use crate::window::time::{WindowSpec, partition_value};
/// Running totals of one partition since it was first consumed (operational figures only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTotals {
    /// Records consumed.
    pub records: u64,
    /// Valid events (counted, late or duplicate).
    pub accepted: u64,
    pub quarantined: u64,
    /// Quarantined records by reason code.
    pub reasons: BTreeMap<String, u64>,
    pub rows_written: u64,
    pub objects_written: u64,
    /// Records and quarantined records by the local date they were consumed (the `intake`
    /// table; the last [`RECEIVED_DAYS_KEPT`] days).
    #[serde(default)]
    pub by_received_date: BTreeMap<String, ReceivedCounts>,
}

/// Days of [`PartitionTotals::by_received_date`] kept in a checkpoint.
pub const RECEIVED_DAYS_KEPT: usize = 400;

/// What one partition received on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedCounts {
    pub records: u64,
    pub quarantined: u64,
}

impl PartitionTotals {
    /// Counts one record received on `date` (YYYY-MM-DD, local).
    pub fn received(&mut self, date: &str, quarantined: bool) {
        let c = match self.by_received_date.get_mut(date) {
            Some(c) => c,
            None => {
                if self.by_received_date.len() >= RECEIVED_DAYS_KEPT {
                    self.by_received_date.pop_first();
                }
                self.by_received_date.entry(date.to_string()).or_default()
            }
        };
        c.records += 1;
        c.quarantined += u64::from(quarantined);
    }
}

/// A partition's state object (`_state/<app>/…`), named by the aggregates table's progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub source: String,
    pub topic: String,
    pub partition: i32,
    /// The next offset to consume: every record below it is in a committed epoch.
    pub next_offset: i64,
    /// Epochs committed so far.
    pub epoch: u64,
    pub totals: PartitionTotals,
    /// Wall clock of the commit, RFC 3339.
    pub committed_at: String,
    pub state: StageState,
}

/// The application id of a topic-partition (appears in the tables' logs and state paths).
pub fn partition_source(topic: &str, partition: i32) -> String {
    crate::ingest::sanitize_source_id(&format!("jinryu-{topic}-{partition}"))
}

/// The committed state of every writer of the aggregates table: each Kafka partition's
/// [`Checkpoint`] (file runs are skipped). Used by the `intake` table and by tests.
pub async fn committed(storage: &Storage) -> Result<Vec<Checkpoint>, SinkError> {
    let Some(table) = delta::load(storage, Table::Aggregates).await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (app, p) in delta::writers(storage, &table, Table::Aggregates).await? {
        if app.starts_with("jinryu-") {
            out.push(read_state::<Checkpoint>(storage, &delta::state_path(&app, p)).await?);
        }
    }
    Ok(out)
}

/// Reads and commits the epochs of one topic-partition.
pub struct PartitionLog {
    storage: Storage,
    tables: TablePair,
    /// Progress of this writer in the aggregates table (the truth) and the quarantine table.
    aggregates: Option<Progress>,
    quarantine: Option<Progress>,
    /// The last committed checkpoint.
    last: Checkpoint,
    /// A commit whose outcome is unknown (its answer was lost): the quarantine and aggregates
    /// progress it would set, and its checkpoint. The next call adopts it if it landed.
    inflight: Option<(Option<Progress>, Progress, Checkpoint)>,
    /// State objects of earlier commits, and when they were superseded.
    superseded: std::collections::VecDeque<(std::time::Instant, object_store::path::Path)>,
}

/// How long a superseded state object stays for readers of an older table version (the rest are
/// removed by `jinryu table vacuum`).
const STATE_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

impl PartitionLog {
    /// Opens a partition: the tables' progress for it and the state object that progress names.
    /// A missing or damaged state object is a permanent error (nothing is deleted).
    pub async fn open(storage: Storage, topic: &str, partition: i32) -> Result<Self, SinkError> {
        let source = partition_source(topic, partition);
        let tables = TablePair::open(&storage).await?;
        let aggregates =
            delta::progress(&storage, &tables.aggregates, Table::Aggregates, &source).await?;
        let quarantine =
            delta::progress(&storage, &tables.quarantine, Table::Quarantine, &source).await?;
        let last = match aggregates {
            Some(p) => {
                let cp: Checkpoint = read_state(&storage, &delta::state_path(&source, p)).await?;
                if cp.next_offset != p.version {
                    return Err(SinkError::State {
                        path: delta::state_path(&source, p).to_string(),
                        problem: format!(
                            "it says offset {} but the table's log says {}",
                            cp.next_offset, p.version
                        ),
                    });
                }
                cp
            }
            None => Checkpoint {
                source: source.clone(),
                topic: topic.to_string(),
                partition,
                next_offset: -1,
                ..Checkpoint::default()
            },
        };
        Ok(PartitionLog {
            storage,
            tables,
            aggregates,
            quarantine,
            last,
            inflight: None,
            superseded: Default::default(),
        })
    }

    /// The last committed checkpoint (`next_offset` is -1 before the first commit).
    pub fn committed(&self) -> &Checkpoint {
        &self.last
    }

    /// Commits one epoch: the rows and quarantine records emitted since the last commit, the
    /// records consumed up to `next_offset` and the window state there.
    /// On a transient error nothing is committed and the same call may simply be repeated; a
    /// fenced writer gets [`SinkError::is_fenced`] and must stop.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit(
        &mut self,
        spec: &WindowSpec,
        registry: &SensorRegistry,
        next_offset: i64,
        rows: &[AggRow],
        quarantine: &[QuarantineRecord],
        state: StageState,
        totals: &PartitionTotals,
    ) -> Result<EpochWritten, SinkError> {
        if let Some((quar, agg, cp)) = self.inflight.take() {
            // The previous call failed after its commits were sent: see what landed.
            let (s, t) = (&self.storage, &mut self.tables);
            if quar.is_some()
                && delta::current_progress(s, &mut t.quarantine, Table::Quarantine, &cp.source)
                    .await?
                    == quar
            {
                self.quarantine = quar;
            }
            if delta::current_progress(s, &mut t.aggregates, Table::Aggregates, &cp.source).await?
                == Some(agg)
            {
                tracing::info!(app = %cp.source, next_offset = cp.next_offset, "the previous commit had landed");
                self.aggregates = Some(agg);
                self.last = cp;
                return Ok(EpochWritten::default());
            }
        }
        let now = chrono::Utc::now();
        let epoch = self.last.epoch + 1;
        let source = self.last.source.clone();
        let received_date = partition_value(spec.local_date(now.timestamp_millis()));
        // Records the quarantine table already holds (a crash between the two commits).
        let q_from = self.quarantine.map_or(i64::MIN, |p| p.version);
        let fresh: Vec<QuarantineRecord> = quarantine
            .iter()
            .filter(|q| q.position as i64 >= q_from)
            .cloned()
            .collect();
        let encoded = encode_epoch(spec, registry, &received_date, rows, &fresh)?;
        let (agg_adds, quar_adds, agg_rows) = self.tables.write(&self.storage, encoded).await?;
        let out = EpochWritten {
            objects: agg_adds
                .iter()
                .chain(quar_adds.iter())
                .map(|a: &Add| a.path.clone())
                .collect(),
            agg_rows,
            quarantined: fresh.len(),
        };
        let next = Progress {
            version: next_offset,
            token: delta::new_token(),
        };
        let mut totals = totals.clone();
        totals.rows_written += out.agg_rows as u64;
        totals.objects_written += out.objects.len() as u64;
        let cp = Checkpoint {
            source: source.clone(),
            topic: self.last.topic.clone(),
            partition: self.last.partition,
            next_offset,
            epoch,
            totals,
            committed_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            state,
        };
        let state_at = delta::state_path(&source, next);
        put_object(
            &self.storage,
            &state_at,
            serde_json::to_vec(&cp).expect("checkpoint serialises"),
        )
        .await?;
        self.inflight = Some((
            if quar_adds.is_empty() {
                None
            } else {
                Some(next)
            },
            next,
            cp.clone(),
        ));
        if !quar_adds.is_empty() {
            // A writer that a newer owner overtook must not touch the quarantine table either
            // (its progress there would then fence the newer owner): check the aggregates
            // table's progress first. The aggregates commit below checks it again, atomically.
            let found = delta::current_progress(
                &self.storage,
                &mut self.tables.aggregates,
                Table::Aggregates,
                &source,
            )
            .await?;
            if found != self.aggregates {
                self.inflight = None;
                return Err(delta::DeltaError::Fenced {
                    table: Table::Aggregates.name(),
                    app: source.clone(),
                    expected: self
                        .aggregates
                        .map_or("nothing committed".into(), |p| p.to_string()),
                    found: found.map_or("nothing committed".into(), |p| p.to_string()),
                }
                .into());
            }
            delta::commit(
                &self.storage,
                &mut self.tables.quarantine,
                Table::Quarantine,
                Commit {
                    app: &source,
                    expected: self.quarantine,
                    next,
                    adds: quar_adds,
                    removes: Vec::new(),
                    epoch: Some(epoch as i64),
                },
            )
            .await?;
            self.quarantine = Some(next);
        }
        delta::commit(
            &self.storage,
            &mut self.tables.aggregates,
            Table::Aggregates,
            Commit {
                app: &source,
                expected: self.aggregates,
                next,
                adds: agg_adds,
                removes: Vec::new(),
                epoch: Some(epoch as i64),
            },
        )
        .await?;
        self.inflight = None;
        // The previous state object is no longer named by the log's latest version. A reader
        // that loaded an older version may still be about to read it: it goes after a while.
        if let Some(prev) = self.aggregates.replace(next) {
            self.superseded
                .push_back((std::time::Instant::now(), delta::state_path(&source, prev)));
        }
        while let Some((at, _)) = self.superseded.front()
            && at.elapsed() >= STATE_GRACE
        {
            let (_, path) = self.superseded.pop_front().expect("front exists");
            let _ = delete_object(&self.storage, &path).await;
        }
        self.last = cp;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::event::{Reason, Rejection};
    use crate::window::WindowStage;
    use std::sync::Arc;

    fn row(ws: i64, count: u64) -> AggRow {
        AggRow {
            sensor: 0,
            direction: 0,
            window_start: ws,
            count,
            events: 1,
            heartbeats: 0,
            faults: 0,
            fault_code: None,
            up: true,
            late: false,
        }
    }

    fn rejected(offset: u64) -> QuarantineRecord {
        QuarantineRecord::new(
            "events",
            Some(2),
            offset,
            Rejection::new(Reason::InvalidJson, "test"),
            b"{oops",
            5,
            1_793_574_000_000,
        )
    }

    const WS: i64 = 1_793_574_000_000;

    struct Fixture {
        cfg: Config,
        storage: Storage,
        reg: Arc<SensorRegistry>,
        stage: WindowStage,
    }

    fn fixture() -> Fixture {
        let cfg = Config::chikaho("memory://");
        let storage = Storage::open("memory://").unwrap();
        let reg = Arc::new(cfg.registry.clone());
        let stage = WindowStage::new(cfg.window.clone(), reg.clone());
        Fixture {
            cfg,
            storage,
            reg,
            stage,
        }
    }

    impl Fixture {
        async fn commit(
            &self,
            log: &mut PartitionLog,
            next_offset: i64,
            rows: &[AggRow],
            quarantine: &[QuarantineRecord],
        ) -> Result<EpochWritten, SinkError> {
            log.commit(
                &self.cfg.window,
                &self.reg,
                next_offset,
                rows,
                quarantine,
                self.stage.snapshot(),
                &PartitionTotals::default(),
            )
            .await
        }

        /// (people in aggregates, rows in quarantine) as SQL sees them.
        async fn totals(&self) -> (i64, i64) {
            let ctx = crate::jobs::context(&self.cfg, &self.storage)
                .await
                .unwrap();
            let one = |sql: &'static str| {
                let ctx = ctx.clone();
                async move {
                    let b = crate::jobs::query(&ctx, sql).await.unwrap();
                    let c =
                        arrow::compute::cast(b[0].column(0), &arrow::datatypes::DataType::Int64)
                            .unwrap();
                    c.as_any()
                        .downcast_ref::<arrow::array::Int64Array>()
                        .unwrap()
                        .value(0)
                }
            };
            (
                one("SELECT COALESCE(SUM(count), 0) FROM aggregates").await,
                one("SELECT COUNT(*) FROM quarantine").await,
            )
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_epoch_is_committed_and_restored() {
        let f = fixture();
        let mut log = PartitionLog::open(f.storage.clone(), "events", 2)
            .await
            .unwrap();
        assert_eq!(log.committed().next_offset, -1);
        let w = f
            .commit(&mut log, 10, &[row(WS, 5)], &[rejected(3), rejected(7)])
            .await
            .unwrap();
        assert_eq!((w.agg_rows, w.quarantined), (1, 2));
        let reopened = PartitionLog::open(f.storage.clone(), "events", 2)
            .await
            .unwrap();
        assert_eq!(reopened.committed().next_offset, 10);
        assert_eq!(reopened.committed().epoch, 1);
        assert_eq!(f.totals().await, (5, 2));
        let cps = committed(&f.storage).await.unwrap();
        assert_eq!(cps.len(), 1);
        assert_eq!(cps[0].next_offset, 10);
    }

    /// A writer that a newer owner overtook is refused, whatever it holds, and the table keeps
    /// exactly the newer owner's rows.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_stale_writer_is_fenced() {
        let f = fixture();
        let mut zombie = PartitionLog::open(f.storage.clone(), "events", 2)
            .await
            .unwrap();
        f.commit(&mut zombie, 10, &[row(WS, 5)], &[]).await.unwrap();
        // The partition moves: the new owner starts from the zombie's last commit.
        let mut owner = PartitionLog::open(f.storage.clone(), "events", 2)
            .await
            .unwrap();
        assert_eq!(owner.committed().next_offset, 10);
        f.commit(&mut owner, 20, &[row(WS + 900_000, 7)], &[rejected(12)])
            .await
            .unwrap();
        // The zombie wakes up with records 10..15 it consumed before it was paused.
        let e = f
            .commit(&mut zombie, 15, &[row(WS + 900_000, 3)], &[rejected(12)])
            .await
            .unwrap_err();
        assert!(e.is_fenced() && e.is_permanent(), "{e}");
        assert!(e.to_string().contains("fenced"), "{e}");
        assert_eq!(f.totals().await, (12, 1));
        // The owner carries on.
        f.commit(&mut owner, 30, &[row(WS + 1_800_000, 1)], &[])
            .await
            .unwrap();
        assert_eq!(f.totals().await, (13, 1));
    }

    /// A stale writer with rejected records is refused before it touches the quarantine table,
    /// so the newer owner's next quarantine commit is not fenced by it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_stale_writer_never_commits_quarantine() {
        let f = fixture();
        let mut zombie = PartitionLog::open(f.storage.clone(), "events", 2)
            .await
            .unwrap();
        f.commit(&mut zombie, 10, &[row(WS, 5)], &[]).await.unwrap();
        let mut owner = PartitionLog::open(f.storage.clone(), "events", 2)
            .await
            .unwrap();
        f.commit(&mut owner, 20, &[row(WS + 900_000, 7)], &[])
            .await
            .unwrap();
        let e = f
            .commit(&mut zombie, 25, &[], &[rejected(22)])
            .await
            .unwrap_err();
        assert!(e.is_fenced(), "{e}");
        assert_eq!(
            f.totals().await,
            (12, 0),
            "the zombie's rejection was not stored"
        );
        f.commit(&mut owner, 30, &[], &[rejected(22)])
            .await
            .expect("the owner is not fenced by the zombie");
        assert_eq!(f.totals().await, (12, 1));
    }

    /// A crash between the quarantine commit and the aggregates commit: the epoch is consumed
    /// again, and its quarantine records are not added twice.
    #[tokio::test(flavor = "multi_thread")]
    async fn quarantine_is_not_doubled_after_a_crash_between_the_commits() {
        let f = fixture();
        let app = partition_source("events", 2);
        let tables = TablePair::open(&f.storage).await.unwrap();
        let encoded = encode_epoch(
            &f.cfg.window,
            &f.reg,
            "2026-11-02",
            &[],
            &[rejected(3), rejected(7)],
        )
        .unwrap();
        let (_, quar, _) = tables.write(&f.storage, encoded).await.unwrap();
        let mut q = tables.quarantine;
        delta::commit(
            &f.storage,
            &mut q,
            Table::Quarantine,
            Commit {
                app: &app,
                expected: None,
                next: Progress {
                    version: 10,
                    token: 1,
                },
                adds: quar,
                removes: Vec::new(),
                epoch: Some(1),
            },
        )
        .await
        .unwrap();
        // The process died here. The next owner reads the same records again.
        let mut log = PartitionLog::open(f.storage.clone(), "events", 2)
            .await
            .unwrap();
        assert_eq!(log.committed().next_offset, -1);
        f.commit(&mut log, 10, &[row(WS, 5)], &[rejected(3), rejected(7)])
            .await
            .unwrap();
        f.commit(&mut log, 20, &[], &[rejected(11)]).await.unwrap();
        assert_eq!(f.totals().await, (5, 3));
    }

    /// A state object emptied by a power cut: a clear permanent error, nothing deleted.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_empty_state_object_is_a_clear_error_and_nothing_is_deleted() {
        let f = fixture();
        let mut log = PartitionLog::open(f.storage.clone(), "events", 2)
            .await
            .unwrap();
        f.commit(&mut log, 10, &[row(WS, 5)], &[]).await.unwrap();
        let app = partition_source("events", 2);
        let t = delta::load(&f.storage, Table::Aggregates)
            .await
            .unwrap()
            .unwrap();
        let p = delta::progress(&f.storage, &t, Table::Aggregates, &app)
            .await
            .unwrap()
            .unwrap();
        put_object(&f.storage, &delta::state_path(&app, p), Vec::new())
            .await
            .unwrap();
        let Err(e) = PartitionLog::open(f.storage.clone(), "events", 2).await else {
            panic!("a damaged state was accepted");
        };
        assert!(e.is_permanent() && !e.is_fenced(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("empty (0 bytes)") && text.contains("Nothing was deleted"),
            "{text}"
        );
        assert_eq!(f.totals().await, (5, 0));
    }
}
