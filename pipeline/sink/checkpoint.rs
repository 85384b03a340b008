//! Checkpoints of the Kafka service: one object per topic-partition,
//! `_checkpoints/<source>.json`, that says how far the partition has been consumed *and* holds the
//! window stage's state at that offset. It is the commit point of the service:
//!
//! 1. the checkpoint is rewritten with the epoch's object names under `pending` (intent);
//! 2. the epoch's Parquet objects are stored (each `put` is atomic);
//! 3. the checkpoint is rewritten with `next_offset` moved past the epoch, the new window state and
//!    `pending` empty — from here on the epoch is committed;
//! 4. only then is the offset committed to Kafka (for the consumer group and lag monitoring).
//!
//! A process that dies anywhere in between leaves a checkpoint that is either the old one plus a
//! `pending` list (its objects are deleted on restart, then rewritten under the same names from the
//! same offset) or the new one. Kafka's committed offset is never ahead of the checkpoint; records
//! below `next_offset` that Kafka delivers again are skipped. Each consumed record therefore ends up
//! in exactly one committed epoch.
//!
//! Objects are named `part-<source>-<first offset:012>-<epoch:08>.parquet`: the first offset the
//! epoch consumed and the checkpoint's epoch number (an epoch written by the idle clock consumes
//! nothing, so the offset alone would not be unique).

use std::collections::BTreeMap;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::store::Storage;
use super::writer::{EpochWritten, SinkError, encode_epoch};
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
    /// Objects of an epoch being written (not committed): deleted on restart.
    #[serde(default)]
    pub pending: Vec<String>,
    pub totals: PartitionTotals,
    /// Wall clock of the commit, RFC 3339.
    pub committed_at: String,
    pub state: StageState,
}

/// The checkpoint path of a source.
pub fn checkpoint_path(source: &str) -> Path {
    Path::from(format!("_checkpoints/{source}.json"))
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
        let path = checkpoint_path(&source);
        let last = match storage.store().get(&path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|e| SinkError::Get {
                    path: path.to_string(),
                    storage: storage.url.clone(),
                    source: e,
                })?;
                serde_json::from_slice(&bytes).map_err(|e| SinkError::Manifest {
                    path: path.to_string(),
                    source: e,
                })?
            }
            Err(object_store::Error::NotFound { .. }) => Checkpoint {
                source: source.clone(),
                topic: topic.to_string(),
                partition,
                next_offset: -1,
                ..Checkpoint::default()
            },
            Err(e) => {
                return Err(SinkError::Get {
                    path: path.to_string(),
                    storage: storage.url.clone(),
                    source: e,
                });
            }
        };
        let mut log = PartitionLog { storage, last };
        if !log.last.pending.is_empty() {
            for p in std::mem::take(&mut log.last.pending) {
                match log.storage.store().delete(&Path::from(p.as_str())).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                        tracing::info!(object = %p, "removed an uncommitted object of the previous owner");
                    }
                    Err(e) => {
                        return Err(SinkError::Put {
                            path: p,
                            storage: log.storage.url.clone(),
                            source: e,
                        });
                    }
                }
            }
            let last = log.last.clone();
            log.put(&last).await?;
        }
        Ok(log)
    }

    /// The last committed checkpoint (`next_offset` is -1 before the first commit).
    pub fn committed(&self) -> &Checkpoint {
        &self.last
    }

    async fn put(&self, cp: &Checkpoint) -> Result<(), SinkError> {
        let path = checkpoint_path(&cp.source);
        let bytes = serde_json::to_vec(cp).expect("checkpoint serialises");
        self.storage
            .store()
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| SinkError::Put {
                path: path.to_string(),
                storage: self.storage.url.clone(),
                source: e,
            })?;
        Ok(())
    }

    async fn put_object(&self, path: &str, bytes: Vec<u8>) -> Result<(), SinkError> {
        self.storage
            .store()
            .put(&Path::from(path), PutPayload::from(bytes))
            .await
            .map_err(|e| SinkError::Put {
                path: path.to_string(),
                storage: self.storage.url.clone(),
                source: e,
            })?;
        Ok(())
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
            let mut intent = self.last.clone();
            intent.pending = objects.iter().map(|(p, _)| p.clone()).collect();
            self.put(&intent).await?;
            for (path, bytes) in objects {
                self.put_object(&path, bytes).await?;
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
            pending: Vec::new(),
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
        let mut intent = log.committed().clone();
        let orphan = "aggregates/date=2026-11-02/part-kafka-events-2-000000000010-00000002.parquet";
        intent.pending = vec![orphan.to_string()];
        log.put(&intent).await.unwrap();
        log.put_object(orphan, b"half an epoch".to_vec())
            .await
            .unwrap();

        let reopened = PartitionLog::open(storage.clone(), "events", 2)
            .await
            .unwrap();
        assert_eq!(reopened.committed().next_offset, 10);
        assert!(reopened.committed().pending.is_empty());
        let objects = list(&storage).await;
        assert!(!objects.iter().any(|o| o == orphan), "{objects:?}");
        assert!(objects.contains(&w.objects[0]), "{objects:?}");
        // The stored checkpoint no longer names the orphan either.
        let again = PartitionLog::open(storage, "events", 2).await.unwrap();
        assert!(again.committed().pending.is_empty());
    }
}
