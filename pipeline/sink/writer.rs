//! Writes one input's output in *epochs*, so that replaying the same input replaces its objects
//! instead of adding to them.
//!
//! An epoch is everything emitted between two positions of the input. Its objects are named by the
//! source and the epoch's first position — `aggregates/date=D/part-<source>-<first:012>.parquet` —
//! so they depend only on what was consumed. Each `put` is atomic: an object is complete or absent.
//!
//! `_sources/<source>.json` (the manifest) lists every object the source may have written. It is
//! updated *before* an epoch's objects are written (intent), and at the end of the run it lists
//! exactly the objects of this run; objects of earlier runs that this run did not rewrite are then
//! deleted. A crash at any point therefore leaves nothing that a re-run will not replace or remove.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

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
        "manifest {path} is damaged ({source}); delete it and the source's objects, then re-run"
    )]
    Manifest {
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot encode Parquet for {path}: {source}")]
    Encode {
        path: String,
        source: parquet::errors::ParquetError,
    },
}

/// What `_sources/<source>.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub source: String,
    /// `writing` while a run is in progress (or crashed), `complete` after it finished.
    pub status: String,
    pub objects: BTreeSet<String>,
    /// The run's report (counts), once complete.
    #[serde(default)]
    pub report: serde_json::Value,
    /// Local date the run read its input (the `intake` table's date).
    #[serde(default)]
    pub received_date: String,
}

/// Object names of one epoch.
#[derive(Debug, Default, Clone)]
pub struct EpochWritten {
    pub objects: Vec<String>,
    pub agg_rows: usize,
    pub quarantined: usize,
}

/// Writes the epochs of one source.
pub struct SourceWriter {
    storage: Storage,
    registry: Arc<SensorRegistry>,
    spec: WindowSpec,
    source: String,
    received_date: String,
    /// Objects named by earlier manifests: deleted at the end unless rewritten.
    stale: BTreeSet<String>,
    written: BTreeSet<String>,
}

/// Stores one object (atomic: complete or absent).
pub(crate) async fn put_object(
    storage: &Storage,
    path: &str,
    bytes: Vec<u8>,
) -> Result<(), SinkError> {
    storage
        .store()
        .put(&Path::from(path), PutPayload::from(bytes))
        .await
        .map_err(|e| SinkError::Put {
            path: path.to_string(),
            storage: storage.url.clone(),
            source: e,
        })?;
    Ok(())
}

/// Deletes one object; an object that is already gone is fine.
pub(crate) async fn delete_object(storage: &Storage, path: &str) -> Result<(), SinkError> {
    match storage.store().delete(&Path::from(path)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(SinkError::Put {
            path: path.to_string(),
            storage: storage.url.clone(),
            source: e,
        }),
    }
}

/// Reads a JSON manifest or checkpoint; `None` when it does not exist.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    storage: &Storage,
    path: &Path,
) -> Result<Option<T>, SinkError> {
    let get_err = |e| SinkError::Get {
        path: path.to_string(),
        storage: storage.url.clone(),
        source: e,
    };
    let bytes = match storage.store().get(path).await {
        Ok(got) => got.bytes().await.map_err(get_err)?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(get_err(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| SinkError::Manifest {
            path: path.to_string(),
            source: e,
        })
}

fn manifest_path(source: &str) -> Path {
    Path::from(format!("_sources/{source}.json"))
}

impl SourceWriter {
    /// Starts writing for `source`, reading what an earlier run of the same source left.
    pub async fn start(
        storage: Storage,
        registry: Arc<SensorRegistry>,
        spec: WindowSpec,
        source: &str,
        received_at_ms: i64,
    ) -> Result<SourceWriter, SinkError> {
        let stale = read_json::<Manifest>(&storage, &manifest_path(source))
            .await?
            .map(|m| m.objects)
            .unwrap_or_default();
        let received_date = partition_value(spec.local_date(received_at_ms));
        Ok(SourceWriter {
            storage,
            registry,
            spec,
            source: source.to_string(),
            received_date,
            stale,
            written: BTreeSet::new(),
        })
    }

    async fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), SinkError> {
        put_object(&self.storage, path, bytes).await
    }

    async fn put_manifest(
        &self,
        status: &str,
        objects: BTreeSet<String>,
        report: serde_json::Value,
    ) -> Result<(), SinkError> {
        let m = Manifest {
            source: self.source.clone(),
            status: status.to_string(),
            objects,
            report,
            received_date: self.received_date.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&m).expect("manifest serialises");
        self.put(manifest_path(&self.source).as_ref(), bytes).await
    }

    /// Writes one epoch starting at input position `first`: aggregate rows split by local date,
    /// quarantine records under the date they were received. Empties both buffers.
    pub async fn write_epoch(
        &mut self,
        first: u64,
        rows: &mut Vec<AggRow>,
        quarantine: &mut Vec<QuarantineRecord>,
    ) -> Result<EpochWritten, SinkError> {
        let name = format!("part-{}-{first:012}.parquet", self.source);
        let (objects, mut out) = encode_epoch(
            &self.spec,
            &self.registry,
            &name,
            &self.received_date,
            rows,
            quarantine,
        )?;
        rows.clear();
        quarantine.clear();
        if objects.is_empty() {
            return Ok(out);
        }
        // Intent first: the manifest names every object before it exists.
        let mut intent = self.stale.clone();
        intent.extend(self.written.iter().cloned());
        intent.extend(objects.iter().map(|(p, _)| p.clone()));
        self.put_manifest("writing", intent, serde_json::Value::Null)
            .await?;
        for (path, bytes) in objects {
            self.put(&path, bytes).await?;
            self.written.insert(path.clone());
            out.objects.push(path);
        }
        Ok(out)
    }

    /// Ends the run: the manifest lists exactly this run's objects, and objects of earlier runs
    /// that were not rewritten are deleted. Returns (objects written, stale objects removed).
    pub async fn finish(self, report: serde_json::Value) -> Result<(usize, usize), SinkError> {
        self.put_manifest("complete", self.written.clone(), report)
            .await?;
        let mut removed = 0;
        for stale in self.stale.difference(&self.written) {
            delete_object(&self.storage, stale).await?;
            removed += 1;
        }
        Ok((self.written.len(), removed))
    }
}

/// Encoded objects: (path, Parquet bytes).
pub type Objects = Vec<(String, Vec<u8>)>;

/// Encodes one epoch into objects named `<table>/date=D/<name>`: aggregate rows split by the
/// local date of their window, quarantine records under `received_date`. Nothing is stored here.
pub fn encode_epoch(
    spec: &WindowSpec,
    registry: &SensorRegistry,
    name: &str,
    received_date: &str,
    rows: &[AggRow],
    quarantine: &[QuarantineRecord],
) -> Result<(Objects, EpochWritten), SinkError> {
    let mut by_date: BTreeMap<String, Vec<AggRow>> = BTreeMap::new();
    let mut dates: HashMap<i64, String> = HashMap::new();
    for r in rows {
        let d = dates
            .entry(r.window_start)
            .or_insert_with(|| partition_value(spec.local_date(r.window_start)));
        by_date.entry(d.clone()).or_default().push(r.clone());
    }
    let mut out = EpochWritten::default();
    let mut objects = Vec::new();
    for (d, mut day) in by_date {
        let path = format!("aggregates/date={d}/{name}");
        day.sort_by_key(|r| (r.window_start, r.sensor, r.direction, r.late));
        out.agg_rows += day.len();
        let batch = tables::aggregates_batch(&day, registry);
        let bytes = tables::to_parquet(&batch).map_err(|e| SinkError::Encode {
            path: path.clone(),
            source: e,
        })?;
        objects.push((path, bytes));
    }
    if !quarantine.is_empty() {
        let path = format!("quarantine/date={received_date}/{name}");
        out.quarantined = quarantine.len();
        let batch = tables::quarantine_batch(quarantine);
        let bytes = tables::to_parquet(&batch).map_err(|e| SinkError::Encode {
            path: path.clone(),
            source: e,
        })?;
        objects.push((path, bytes));
    }
    Ok((objects, out))
}
