//! Writes one file input's output (`jinryu ingest`, `jinryu demo`) to the Delta tables.
//!
//! During the run, each epoch's rows become data files ([`delta::write_files`]) that no commit
//! names yet: invisible to readers. At the end, one commit per table adds them all, removes the
//! files of the same source's earlier run (a re-run *replaces*) and records the source's progress
//! (`txn` = lines read). The quarantine table is committed first, the aggregates table second; the
//! state object `_state/<source>/…` written before both lists the files of the run, so a re-run
//! after a crash between the two commits still replaces exactly what is there. A run that fails
//! before its commits leaves nothing visible: re-running it is always safe.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use deltalake_core::DeltaTable;
use deltalake_core::kernel::Add;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::delta::{self, Commit, DeltaError, Progress, Table};
use super::store::Storage;
use super::tables;
use crate::config::SensorRegistry;
use crate::quarantine::QuarantineRecord;
use crate::window::AggRow;
use crate::window::time::{WindowSpec, partition_value};

/// A storage failure, with the object it concerned.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write {path} to {storage}: {source}")]
    Put {
        path: String,
        storage: String,
        source: object_store::Error,
    },
    #[error("cannot read {path} from {storage}: {source}")]
    Get {
        path: String,
        storage: String,
        source: object_store::Error,
    },
    #[error(
        "the state object {path} is damaged or missing ({problem}); the table's log names it as \
         the writer's state, so jinryu will not guess. Nothing was deleted. Restore the object \
         from a backup or object-store versioning, or re-ingest the source under a new id"
    )]
    State { path: String, problem: String },
    #[error("cannot encode Parquet for {path}: {source}")]
    Encode {
        path: String,
        source: arrow::error::ArrowError,
    },
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(
        "source {source_id}: {gone} file(s) of its earlier run were compacted or removed since, so \
         its rows can no longer be replaced on their own. Ingest the new input under another \
         --source-id (it is then added, not replaced)"
    )]
    Compacted { source_id: String, gone: usize },
}

impl SinkError {
    /// Whether retrying the same call can succeed (storage hiccups) or not (fenced, damaged state,
    /// an encoding bug): a permanent error stops the writer.
    pub fn is_permanent(&self) -> bool {
        match self {
            SinkError::Put { .. } | SinkError::Get { .. } => false,
            SinkError::Delta(e) => e.is_permanent(),
            SinkError::State { .. } | SinkError::Encode { .. } | SinkError::Compacted { .. } => {
                true
            }
        }
    }

    /// Whether this writer was fenced by a newer one.
    pub fn is_fenced(&self) -> bool {
        matches!(self, SinkError::Delta(DeltaError::Fenced { .. }))
    }
}

/// Stores one object (atomic: complete or absent).
pub(crate) async fn put_object(
    storage: &Storage,
    path: &Path,
    bytes: Vec<u8>,
) -> Result<(), SinkError> {
    storage
        .store()
        .put(path, PutPayload::from(bytes))
        .await
        .map_err(|e| SinkError::Put {
            path: path.to_string(),
            storage: storage.url.clone(),
            source: e,
        })?;
    Ok(())
}

/// Deletes one object; an object that is already gone is fine.
pub(crate) async fn delete_object(storage: &Storage, path: &Path) -> Result<(), SinkError> {
    match storage.store().delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(SinkError::Put {
            path: path.to_string(),
            storage: storage.url.clone(),
            source: e,
        }),
    }
}

/// Reads the state object the table's log names. Missing or damaged is a permanent error: the
/// commit that names it exists, so guessing would lose or double count.
pub(crate) async fn read_state<T: serde::de::DeserializeOwned>(
    storage: &Storage,
    path: &Path,
) -> Result<T, SinkError> {
    let bytes = match storage.store().get(path).await {
        Ok(got) => got.bytes().await.map_err(|e| SinkError::Get {
            path: path.to_string(),
            storage: storage.url.clone(),
            source: e,
        })?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(SinkError::State {
                path: path.to_string(),
                problem: "it does not exist".into(),
            });
        }
        Err(e) => {
            return Err(SinkError::Get {
                path: path.to_string(),
                storage: storage.url.clone(),
                source: e,
            });
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| SinkError::State {
        path: path.to_string(),
        problem: if bytes.is_empty() {
            "it is empty (0 bytes)".into()
        } else {
            e.to_string()
        },
    })
}

/// What a file source's state object holds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct FileState {
    pub source: String,
    /// The run's report (counts).
    pub report: serde_json::Value,
    /// Local date the run read its input (the `intake` table's date).
    pub received_date: String,
    /// Data files of the run, by table name.
    pub files: BTreeMap<String, BTreeSet<String>>,
}

/// Rows encoded for the tables: `(table, batch in the stored schema)`.
pub type Encoded = Vec<(Table, arrow::array::RecordBatch)>;

/// Encodes one epoch for the tables: aggregate rows with the local date of their window,
/// quarantine records under `received_date`. Nothing is stored here.
pub fn encode_epoch(
    spec: &WindowSpec,
    registry: &SensorRegistry,
    received_date: &str,
    rows: &[AggRow],
    quarantine: &[QuarantineRecord],
) -> Result<Encoded, SinkError> {
    let mut out = Vec::new();
    if !rows.is_empty() {
        let mut sorted: Vec<&AggRow> = rows.iter().collect();
        sorted.sort_by_key(|r| (r.window_start, r.sensor, r.direction, r.late));
        // The local date of each row, looked up once per window (rows are in window order).
        let mut day_of =
            arrow::array::StringBuilder::with_capacity(sorted.len(), sorted.len() * 10);
        let mut last: Option<(i64, String)> = None;
        for r in &sorted {
            match &last {
                Some((ws, d)) if *ws == r.window_start => day_of.append_value(d),
                _ => {
                    let d = partition_value(spec.local_date(r.window_start));
                    day_of.append_value(&d);
                    last = Some((r.window_start, d));
                }
            }
        }
        let batch = tables::aggregates_batch(sorted.iter().copied(), registry);
        let stored = delta::to_stored(Table::Aggregates, &batch, day_of.finish()).map_err(|e| {
            SinkError::Encode {
                path: "aggregates".into(),
                source: e,
            }
        })?;
        out.push((Table::Aggregates, stored));
    }
    if !quarantine.is_empty() {
        let batch = tables::quarantine_batch(quarantine);
        let dates = arrow::array::StringArray::from(vec![received_date; quarantine.len()]);
        let stored =
            delta::to_stored(Table::Quarantine, &batch, dates).map_err(|e| SinkError::Encode {
                path: "quarantine".into(),
                source: e,
            })?;
        out.push((Table::Quarantine, stored));
    }
    Ok(out)
}

/// Both tables, opened (and created on first use).
pub struct TablePair {
    pub aggregates: DeltaTable,
    pub quarantine: DeltaTable,
}

impl TablePair {
    pub async fn open(storage: &Storage) -> Result<TablePair, SinkError> {
        Ok(TablePair {
            aggregates: delta::open_or_create(storage, Table::Aggregates).await?,
            quarantine: delta::open_or_create(storage, Table::Quarantine).await?,
        })
    }

    pub fn get(&self, t: Table) -> &DeltaTable {
        match t {
            Table::Aggregates => &self.aggregates,
            Table::Quarantine => &self.quarantine,
        }
    }

    pub fn get_mut(&mut self, t: Table) -> &mut DeltaTable {
        match t {
            Table::Aggregates => &mut self.aggregates,
            Table::Quarantine => &mut self.quarantine,
        }
    }

    /// Writes the (uncommitted) data files of an encoded epoch; returns the `add` actions by
    /// table and the number of aggregate rows.
    pub async fn write(
        &self,
        storage: &Storage,
        encoded: Encoded,
    ) -> Result<(Vec<Add>, Vec<Add>, usize), SinkError> {
        let (mut agg, mut quar, mut rows) = (Vec::new(), Vec::new(), 0);
        for (t, batch) in encoded {
            let n = batch.num_rows();
            let adds = delta::write_files(storage, self.get(t), t, batch).await?;
            match t {
                Table::Aggregates => {
                    rows += n;
                    agg.extend(adds);
                }
                Table::Quarantine => quar.extend(adds),
            }
        }
        Ok((agg, quar, rows))
    }
}

/// Object names of one epoch.
#[derive(Debug, Default, Clone)]
pub struct EpochWritten {
    pub objects: Vec<String>,
    pub agg_rows: usize,
    pub quarantined: usize,
}

/// Writes the epochs of one file source and commits them at the end.
pub struct SourceWriter {
    storage: Storage,
    registry: Arc<SensorRegistry>,
    spec: WindowSpec,
    received_date: String,
    tables: TablePair,
    adds: BTreeMap<&'static str, Vec<Add>>,
}

/// What a finished file run committed.
#[derive(Debug, Default, Clone)]
pub struct Finished {
    pub files_written: usize,
    pub files_replaced: usize,
    /// Versions of the aggregates and quarantine tables after the run.
    pub aggregates_version: u64,
    pub quarantine_version: u64,
}

impl SourceWriter {
    /// Starts writing a run (the tables are created if needed).
    pub async fn start(
        storage: Storage,
        registry: Arc<SensorRegistry>,
        spec: WindowSpec,
        received_at_ms: i64,
    ) -> Result<SourceWriter, SinkError> {
        let tables = TablePair::open(&storage).await?;
        let received_date = partition_value(spec.local_date(received_at_ms));
        Ok(SourceWriter {
            storage,
            registry,
            spec,
            received_date,
            tables,
            adds: BTreeMap::new(),
        })
    }

    /// Writes one epoch's data files (not committed yet). Empties both buffers, and frees them
    /// once the rows are in Arrow form: they are not held while Parquet is encoded.
    pub async fn write_epoch(
        &mut self,
        rows: &mut Vec<AggRow>,
        quarantine: &mut Vec<QuarantineRecord>,
    ) -> Result<EpochWritten, SinkError> {
        let encoded = encode_epoch(
            &self.spec,
            &self.registry,
            &self.received_date,
            rows,
            quarantine,
        )?;
        let mut out = EpochWritten {
            quarantined: quarantine.len(),
            ..EpochWritten::default()
        };
        *rows = Vec::new();
        *quarantine = Vec::new();
        let (agg, quar, n) = self.tables.write(&self.storage, encoded).await?;
        out.agg_rows = n;
        for (t, adds) in [(Table::Aggregates, agg), (Table::Quarantine, quar)] {
            out.objects.extend(adds.iter().map(|a| a.path.clone()));
            self.adds.entry(t.name()).or_default().extend(adds);
        }
        Ok(out)
    }

    /// Ends the run under `source` (its application id), having read `lines` lines: one commit
    /// per table adds this run's files and removes those of the source's earlier run.
    pub async fn finish(
        mut self,
        source: &str,
        lines: u64,
        report: serde_json::Value,
    ) -> Result<Finished, SinkError> {
        let storage = self.storage.clone();
        // What each table holds of this source now.
        let mut before: BTreeMap<&'static str, Option<Progress>> = BTreeMap::new();
        for t in Table::ALL {
            let table = self.tables.get_mut(t);
            before.insert(
                t.name(),
                delta::current_progress(&storage, table, t, source).await?,
            );
        }
        let next = Progress {
            version: lines as i64,
            token: delta::new_token(),
        };
        let state = FileState {
            source: source.to_string(),
            report,
            received_date: self.received_date.clone(),
            files: self
                .adds
                .iter()
                .map(|(t, a)| (t.to_string(), a.iter().map(|a| a.path.clone()).collect()))
                .collect(),
        };
        put_object(
            &storage,
            &delta::state_path(source, next),
            serde_json::to_vec_pretty(&state).expect("state serialises"),
        )
        .await?;
        let mut done = Finished::default();
        // Quarantine first: the aggregates commit is the source's progress.
        for t in [Table::Quarantine, Table::Aggregates] {
            let expected = before[t.name()];
            let adds = self.adds.remove(t.name()).unwrap_or_default();
            let removes = match expected {
                Some(p) => {
                    let earlier: FileState =
                        read_state(&storage, &delta::state_path(source, p)).await?;
                    let paths = earlier.files.get(t.name()).cloned().unwrap_or_default();
                    let (removes, gone) =
                        delta::removes_for(&storage, self.tables.get(t), t, &paths)?;
                    if gone > 0 {
                        return Err(SinkError::Compacted {
                            source_id: source.to_string(),
                            gone,
                        });
                    }
                    removes
                }
                None => Vec::new(),
            };
            done.files_written += adds.len();
            done.files_replaced += removes.len();
            let version = delta::commit(
                &storage,
                self.tables.get_mut(t),
                t,
                Commit {
                    app: source,
                    expected,
                    next,
                    adds,
                    removes,
                    epoch: None,
                },
            )
            .await?;
            match t {
                Table::Aggregates => done.aggregates_version = version,
                Table::Quarantine => done.quarantine_version = version,
            }
        }
        Ok(done)
    }
}
