//! Checkpoints of the Kafka service: one object per topic-partition,
//! `_checkpoints/<source>.json`, that says how far the partition has been consumed *and* holds the
//! window stage's state at that offset. It is the commit point of the service:
//!
//! 1. `_pending/<source>.json` names the epoch's number and objects (intent; a small object, so
//!    the window state is not encoded twice per epoch);
//! 2. the epoch's Parquet objects are stored (each `put` is atomic);
//! 3. the checkpoint is rewritten with the epoch's number, `next_offset` moved past the epoch and
//!    the new window state — from here on the epoch is committed;
//! 4. only then is the offset committed to Kafka (for the consumer group and lag monitoring).
//!
//! A process that dies anywhere in between leaves either the old checkpoint and an intent for the
//! next epoch (its objects are deleted on restart, then rewritten under the same names from the
//! same offset) or the new checkpoint (an intent whose epoch is not after the checkpoint's was
//! committed and is left alone). Kafka's committed offset is never ahead of the checkpoint; records
//! below `next_offset` that Kafka delivers again are skipped. Each consumed record therefore ends up
//! in exactly one committed epoch.
//!
//! Objects are named `part-<source>-<first offset:012>-<epoch:08>.parquet`: the first offset the
//! epoch consumed and the checkpoint's epoch number (an epoch written by the idle clock consumes
//! nothing, so the offset alone would not be unique).

use std::collections::BTreeMap;

use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::store::Storage;
use super::writer::{EpochWritten, SinkError, delete_object, encode_epoch, put_object, read_json};
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

/// What `_checkpoints/<source>.json` holds.
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

/// The checkpoint path of a source.
pub fn checkpoint_path(source: &str) -> Path {
    Path::from(format!("_checkpoints/{source}.json"))
}

/// What `_pending/<source>.json` holds: the epoch being written and its objects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub epoch: u64,
    pub objects: Vec<String>,
}

/// The intent path of a source.
pub fn intent_path(source: &str) -> Path {
    Path::from(format!("_pending/{source}.json"))
}

/// The source id of a topic-partition (appears in object names).
pub fn partition_source(topic: &str, partition: i32) -> String {
    crate::ingest::sanitize_source_id(&format!("kafka-{topic}-{partition}"))
}

/// Reads and commits the checkpoints of one topic-partition.
pub struct PartitionLog {
    storage: Storage,
    /// The last committed checkpoint.
    last: Checkpoint,
}

impl PartitionLog {
    /// Opens a partition: reads its checkpoint (if any) and removes the objects of an epoch that
    /// was being written when the previous owner stopped.
    pub async fn open(storage: Storage, topic: &str, partition: i32) -> Result<Self, SinkError> {
        let source = partition_source(topic, partition);
        let last = read_json::<Checkpoint>(&storage, &checkpoint_path(&source))
            .await?
            .unwrap_or_else(|| Checkpoint {
                source: source.clone(),
                topic: topic.to_string(),
                partition,
                next_offset: -1,
                ..Checkpoint::default()
            });
        let intent_at = intent_path(&source);
        if let Some(intent) = read_json::<Intent>(&storage, &intent_at).await?
            && intent.epoch > last.epoch
        {
            for p in &intent.objects {
                delete_object(&storage, p).await?;
                tracing::info!(object = %p, "removed an uncommitted object of the previous owner");
            }
            delete_object(&storage, intent_at.as_ref()).await?;
        }
        Ok(PartitionLog { storage, last })
    }

    /// The last committed checkpoint (`next_offset` is -1 before the first commit).
    pub fn committed(&self) -> &Checkpoint {
        &self.last
    }

    async fn put(&self, cp: &Checkpoint) -> Result<(), SinkError> {
        let bytes = serde_json::to_vec(cp).expect("checkpoint serialises");
        put_object(&self.storage, checkpoint_path(&cp.source).as_ref(), bytes).await
    }

    /// Commits one epoch: the rows and quarantine records emitted since the last commit, the
    /// consumed range `[first_offset, next_offset)` and the window state at `next_offset`.
    /// On error nothing is committed and the same call may simply be repeated.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit(
        &mut self,
        spec: &WindowSpec,
        registry: &SensorRegistry,
        first_offset: i64,
        next_offset: i64,
        rows: &[AggRow],
        quarantine: &[QuarantineRecord],
        state: StageState,
        totals: &PartitionTotals,
    ) -> Result<EpochWritten, SinkError> {
        let now = chrono::Utc::now();
        let epoch = self.last.epoch + 1;
        let name = format!(
            "part-{}-{:012}-{epoch:08}.parquet",
            self.last.source,
            first_offset.max(0)
        );
        let received_date = partition_value(spec.local_date(now.timestamp_millis()));
        let (objects, mut out) =
            encode_epoch(spec, registry, &name, &received_date, rows, quarantine)?;
        if !objects.is_empty() {
            let intent = Intent {
                epoch,
                objects: objects.iter().map(|(p, _)| p.clone()).collect(),
            };
            let bytes = serde_json::to_vec(&intent).expect("intent serialises");
            put_object(
                &self.storage,
                intent_path(&self.last.source).as_ref(),
                bytes,
            )
            .await?;
            for (path, bytes) in objects {
                put_object(&self.storage, &path, bytes).await?;
                out.objects.push(path);
            }
        }
        let mut totals = totals.clone();
        totals.rows_written += out.agg_rows as u64;
        totals.objects_written += out.objects.len() as u64;
        let next = Checkpoint {
            source: self.last.source.clone(),
            topic: self.last.topic.clone(),
            partition: self.last.partition,
            next_offset,
            epoch,
            totals,
            committed_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            state,
        };
        self.put(&next).await?;
        self.last = next;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::window::WindowStage;
    use std::sync::Arc;

    fn row(ws: i64) -> AggRow {
        AggRow {
            sensor: 0,
            direction: 0,
            window_start: ws,
            count: 5,
            events: 1,
            heartbeats: 0,
            faults: 0,
            fault_code: None,
            up: true,
            late: false,
        }
    }

    async fn list(storage: &Storage) -> Vec<String> {
        use futures::TryStreamExt;
        let mut v: Vec<String> = storage
            .store()
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        v.sort();
        v
    }

    #[tokio::test]
    async fn an_interrupted_epoch_is_removed_and_the_committed_one_kept() {
        let cfg = Config::chikaho("memory://");
        let storage = Storage::open("memory://").unwrap();
        let reg = Arc::new(cfg.registry.clone());
        let stage = WindowStage::new(cfg.window.clone(), reg.clone());
        let ws = 1_793_574_000_000;

        let mut log = PartitionLog::open(storage.clone(), "events", 2)
            .await
            .unwrap();
        assert_eq!(log.committed().next_offset, -1);
        let w = log
            .commit(
                &cfg.window,
                &reg,
                0,
                10,
                &[row(ws)],
                &[],
                stage.snapshot(),
                &PartitionTotals::default(),
            )
            .await
            .unwrap();
        assert_eq!(w.objects.len(), 1);
        assert_eq!(log.committed().next_offset, 10);

        // A crash after the intent and one object of epoch 2, before its checkpoint.
        let orphan = "aggregates/date=2026-11-02/part-kafka-events-2-000000000010-00000002.parquet";
        let intent = Intent {
            epoch: 2,
            objects: vec![orphan.to_string()],
        };
        let source = &log.committed().source;
        put_object(
            &storage,
            intent_path(source).as_ref(),
            serde_json::to_vec(&intent).unwrap(),
        )
        .await
        .unwrap();
        put_object(&storage, orphan, b"half an epoch".to_vec())
            .await
            .unwrap();

        let reopened = PartitionLog::open(storage.clone(), "events", 2)
            .await
            .unwrap();
        assert_eq!(reopened.committed().next_offset, 10);
        let objects = list(&storage).await;
        assert!(!objects.iter().any(|o| o == orphan), "{objects:?}");
        assert!(objects.contains(&w.objects[0]), "{objects:?}");
        assert!(
            !objects.iter().any(|o| o.starts_with("_pending/")),
            "{objects:?}"
        );

        // The intent of a committed epoch is left alone: its objects stay.
        let mut log = reopened;
        let w2 = log
            .commit(
                &cfg.window,
                &reg,
                10,
                20,
                &[row(ws + 900_000)],
                &[],
                stage.snapshot(),
                &PartitionTotals::default(),
            )
            .await
            .unwrap();
        PartitionLog::open(storage.clone(), "events", 2)
            .await
            .unwrap();
        let objects = list(&storage).await;
        assert!(objects.contains(&w2.objects[0]), "{objects:?}");
        assert!(objects.contains(&w.objects[0]), "{objects:?}");
    }
}
