//! The stored tables as Delta Lake tables (`deltalake-core`): `<root>/aggregates` and
//! `<root>/quarantine`, partitioned by the local `date`, created on first use.
//!
//! Every writer (one run of `ingest`, one Kafka partition) has an *application id*. Its data files
//! and its progress go into one Delta commit: the `add` actions, a `txn` action
//! `(app id, version = next offset or input position)` and a second `txn`
//! `(app id + ".state", token)` whose random token names the writer's state object
//! `_state/<app>/<version:020>-<token:016x>.json` (window state, totals), stored *before* the
//! commit. A file whose commit never happened is not in the log: readers never see it and vacuum
//! removes it. Before committing, a writer checks that the table's version for its application id
//! is still the one it started from; delta-rs' conflict checker makes the same check atomic with
//! the commit (a concurrent commit carrying the same application id fails ours). A writer that
//! lost that race is *fenced*: it stops writing.
//!
//! Commits are a conditional put of the next log entry (`PutMode::Create`): a rename-without-
//! replace on local disk, `If-None-Match: *` on S3 — safe with concurrent writers without a
//! DynamoDB lock.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Once};

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake_core::kernel::{Action, Add, Remove, Transaction};
use deltalake_core::logstore::{
    LogStore, LogStoreFactory, LogStoreRef, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, logstore_with,
};
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::writer::{DeltaWriter, RecordBatchWriter};
use deltalake_core::{DeltaTable, DeltaTableError};
use url::Url;

use super::store::Storage;

/// One of the two tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Aggregates,
    Quarantine,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Aggregates, Table::Quarantine];

    pub fn name(self) -> &'static str {
        match self {
            Table::Aggregates => "aggregates",
            Table::Quarantine => "quarantine",
        }
    }

    /// The columns as stored in Delta (timestamps in microseconds, no unsigned integers — Delta
    /// has neither), the `date` partition column last.
    pub fn stored_schema(self) -> SchemaRef {
        match self {
            Table::Aggregates => STORED_AGGREGATES.clone(),
            Table::Quarantine => STORED_QUARANTINE.clone(),
        }
    }

    /// Columns with min/max statistics in the log (file skipping); not the payloads.
    fn stats_columns(self) -> &'static str {
        match self {
            Table::Aggregates => "sensor_id,direction,window_start,count,late",
            Table::Quarantine => "source,partition,position,reason,received_at",
        }
    }

    /// The columns as SQL sees them (`schemas/*.json`), `date` last: the written columns, text
    /// as `Utf8View` (what DataFusion's Parquet reader yields without a copy, and what its
    /// string functions, joins and groupings work on natively).
    pub fn view_schema(self) -> SchemaRef {
        let base = match self {
            Table::Aggregates => super::tables::AGGREGATES.clone(),
            Table::Quarantine => super::tables::QUARANTINE.clone(),
        };
        let mut fields: Vec<Field> = base
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
                _ => f.as_ref().clone(),
            })
            .collect();
        fields.push(Field::new("date", DataType::Utf8View, false));
        Arc::new(Schema::new(fields))
    }
}

fn utc_us() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The stored type of a column of the SQL view.
fn stored_type(t: &DataType) -> DataType {
    match t {
        DataType::Timestamp(_, _) => utc_us(),
        DataType::UInt64 | DataType::UInt32 => DataType::Int64,
        other => other.clone(),
    }
}

fn stored(view: SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = view
        .fields()
        .iter()
        .map(|f| Field::new(f.name(), stored_type(f.data_type()), f.is_nullable()))
        .collect();
    fields.push(Field::new("date", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

static STORED_AGGREGATES: LazyLock<SchemaRef> =
    LazyLock::new(|| stored(super::tables::AGGREGATES.clone()));
static STORED_QUARANTINE: LazyLock<SchemaRef> =
    LazyLock::new(|| stored(super::tables::QUARANTINE.clone()));

/// A storage or table failure, with what it concerned. [`SinkError::is_permanent`] tells a retry
/// from a stop.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("table {table} on {storage}: {source}")]
    Table {
        table: &'static str,
        storage: String,
        source: Box<DeltaTableError>,
    },
    #[error(
        "fenced: the {table} table's progress for {app} is {found} but this writer started from \
         {expected}; another writer (a newer owner of the partition, or a second service with \
         another group on the same storage) has committed since. This writer stops; nothing it \
         holds is committed"
    )]
    Fenced {
        table: &'static str,
        app: String,
        expected: String,
        found: String,
    },
}

impl DeltaError {
    /// Fencing and protocol problems do not heal by retrying; storage hiccups do.
    pub fn is_permanent(&self) -> bool {
        match self {
            DeltaError::Fenced { .. } => true,
            DeltaError::Table { source, .. } => matches!(
                source.as_ref(),
                DeltaTableError::InvalidJsonLog { .. }
                    | DeltaTableError::InvalidStatsJson { .. }
                    | DeltaTableError::SchemaMismatch { .. }
                    | DeltaTableError::Transaction {
                        source: TransactionError::CommitConflict(_)
                    }
            ),
        }
    }
}

/// Log stores for `jinryu://store/<table>` over the storage's own object store. A scheme of our
/// own: delta-rs never builds a second store from the URL (an unknown scheme would fail loudly).
struct JinryuLogStores;

impl LogStoreFactory for JinryuLogStores {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> Result<Arc<dyn LogStore>, DeltaTableError> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_scheme() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        logstore_factories().insert(
            Url::parse("jinryu://").expect("static url"),
            Arc::new(JinryuLogStores),
        );
    });
}

/// The table's URL inside delta-rs.
pub fn table_url(table: Table) -> Url {
    Url::parse(&format!("jinryu://store/{}", table.name())).expect("static url")
}

pub(crate) fn err(storage: &Storage, table: Table) -> impl Fn(DeltaTableError) -> DeltaError + '_ {
    move |source| DeltaError::Table {
        table: table.name(),
        storage: storage.url.clone(),
        source: Box::new(source),
    }
}

/// The log store of `table` in `storage`.
pub fn log_store(storage: &Storage, table: Table) -> Result<LogStoreRef, DeltaError> {
    register_scheme();
    logstore_with(
        storage.store().clone(),
        &table_url(table),
        StorageConfig::default(),
    )
    .map_err(err(storage, table))
}

/// The table at its latest version; `None` while it has never been written.
pub async fn load(storage: &Storage, table: Table) -> Result<Option<DeltaTable>, DeltaError> {
    use futures::StreamExt;
    let log = object_store::path::Path::from(format!("{}/_delta_log", table.name()));
    let first = storage.store().list(Some(&log)).next().await;
    match first {
        None => return Ok(None),
        Some(Err(e)) => return Err(err(storage, table)(DeltaTableError::from(e))),
        Some(Ok(_)) => {}
    }
    let mut t = DeltaTable::new(log_store(storage, table)?);
    match t.load().await {
        Ok(()) => Ok(Some(t)),
        Err(DeltaTableError::NotATable(_)) => Ok(None),
        Err(e) => Err(err(storage, table)(e)),
    }
}

/// The table as it was at `version` (time travel); an error when it has no such version.
pub async fn load_version(
    storage: &Storage,
    table: Table,
    version: u64,
) -> Result<DeltaTable, DeltaError> {
    let mut t = DeltaTable::new(log_store(storage, table)?);
    t.load_version(version).await.map_err(err(storage, table))?;
    Ok(t)
}

/// The table as it was at instant `at` (the last commit at or before it).
pub async fn load_at(
    storage: &Storage,
    table: Table,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<DeltaTable, DeltaError> {
    let mut t = DeltaTable::new(log_store(storage, table)?);
    t.load_with_datetime(at)
        .await
        .map_err(err(storage, table))?;
    Ok(t)
}

/// The table, created (empty, partitioned by `date`) if it does not exist yet. Two writers
/// creating it at once is fine: the second finds the first one's table.
pub async fn open_or_create(storage: &Storage, table: Table) -> Result<DeltaTable, DeltaError> {
    if let Some(t) = load(storage, table).await? {
        return Ok(t);
    }
    let schema = table.stored_schema();
    let columns: Vec<deltalake_core::kernel::StructField> = {
        use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
        let st: deltalake_core::kernel::StructType = schema
            .as_ref()
            .try_into_kernel()
            .map_err(|e| err(storage, table)(DeltaTableError::from(e)))?;
        st.fields().cloned().collect()
    };
    let created = DeltaTable::new(log_store(storage, table)?)
        .create()
        .with_table_name(table.name())
        .with_comment(format!(
            "jinryu {}: see schemas/{}.json",
            table.name(),
            table.name()
        ))
        .with_columns(columns)
        .with_partition_columns(["date"])
        .with_configuration([(
            "delta.dataSkippingStatsColumns",
            Some(table.stats_columns()),
        )])
        .with_save_mode(SaveMode::Ignore)
        .with_commit_properties(CommitProperties::default().with_metadata(who("create")))
        .await;
    match created {
        Ok(t) => Ok(t),
        // Another writer created it between our load and our create.
        Err(_) => load(storage, table).await?.ok_or_else(|| {
            err(storage, table)(DeltaTableError::NotATable(format!(
                "{} could not be created",
                table.name()
            )))
        }),
    }
}

/// Adds `date` (partition values, one per row) to a batch of the view schema and casts its
/// columns to the stored types.
pub fn to_stored(
    table: Table,
    batch: &RecordBatch,
    dates: StringArray,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = table.stored_schema();
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate().take(batch.num_columns()) {
        let c = batch.column(i);
        cols.push(if c.data_type() == f.data_type() {
            c.clone()
        } else {
            arrow::compute::cast(c, f.data_type())?
        });
    }
    cols.push(Arc::new(dates));
    RecordBatch::try_new(schema, cols)
}

/// Writes data files for `batch` (stored schema, `date` included) and returns their `add`
/// actions, not committed: until a commit names them they are invisible.
pub async fn write_files(
    storage: &Storage,
    table: &DeltaTable,
    which: Table,
    batch: RecordBatch,
) -> Result<Vec<Add>, DeltaError> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let e = err(storage, which);
    let mut w = RecordBatchWriter::for_table(table).map_err(&e)?;
    w.write(batch).await.map_err(&e)?;
    w.flush().await.map_err(&e)
}

/// A writer's progress in one table: the `txn` version of its application id and the token of
/// its state object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub version: i64,
    pub token: i64,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "version {} (state {:016x})", self.version, self.token)
    }
}

fn show(p: Option<Progress>) -> String {
    p.map_or_else(|| "nothing committed".to_string(), |p| p.to_string())
}

/// The application id of a writer's state token.
fn token_app(app: &str) -> String {
    format!("{app}.state")
}

/// The state object of a writer at a progress.
pub fn state_path(app: &str, p: Progress) -> object_store::path::Path {
    object_store::path::Path::from(format!(
        "_state/{app}/{:020}-{:016x}.json",
        p.version, p.token
    ))
}

/// A fresh state token (positive, random).
pub fn new_token() -> i64 {
    use rand::Rng;
    rand::rng().random_range(1..i64::MAX)
}

/// The progress of `app` in the loaded table.
pub async fn progress(
    storage: &Storage,
    table: &DeltaTable,
    which: Table,
    app: &str,
) -> Result<Option<Progress>, DeltaError> {
    progress_of(table, app).await.map_err(err(storage, which))
}

async fn progress_of(table: &DeltaTable, app: &str) -> Result<Option<Progress>, DeltaTableError> {
    let snap = table.snapshot()?;
    let ls = table.log_store();
    let version = snap.transaction_version(ls.as_ref(), app).await?;
    let token = snap
        .transaction_version(ls.as_ref(), token_app(app))
        .await?;
    Ok(version.map(|version| Progress {
        version,
        token: token.unwrap_or(0),
    }))
}

/// The progress of `app` in the table at its latest version (the table is refreshed).
pub async fn current_progress(
    storage: &Storage,
    table: &mut DeltaTable,
    which: Table,
    app: &str,
) -> Result<Option<Progress>, DeltaError> {
    table.update_state().await.map_err(err(storage, which))?;
    progress(storage, table, which, app).await
}

/// What one commit does.
pub struct Commit<'a> {
    pub app: &'a str,
    /// The progress this writer started from (`None`: nothing committed yet).
    pub expected: Option<Progress>,
    pub next: Progress,
    pub adds: Vec<Add>,
    pub removes: Vec<Remove>,
    /// The Kafka partition's epoch (a streaming update) or `None` for a file run (a write).
    pub epoch: Option<i64>,
}

/// How long [`commit`] keeps retrying a commit that failed on storage (network, timeouts,
/// throttling) before it gives up.
const COMMIT_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(180);

/// Commits `c` to the table: refreshes it, checks (fencing) that the application id's progress is
/// still `c.expected`, and commits the actions with the new progress in one Delta commit.
/// Returns the table version committed.
///
/// A commit that fails on storage is retried with backoff. Its outcome may be unknown (the log
/// entry was written but the answer lost): before each retry the table is read again, and a
/// progress equal to `c.next` — the same version *and* the same random token — can only be this
/// very commit, so it counts as done. Any other progress means another writer: fenced.
pub async fn commit(
    storage: &Storage,
    table: &mut DeltaTable,
    which: Table,
    c: Commit<'_>,
) -> Result<u64, DeltaError> {
    let e = err(storage, which);
    let fenced = |found: String| DeltaError::Fenced {
        table: which.name(),
        app: c.app.to_string(),
        expected: show(c.expected),
        found,
    };
    let now = chrono::Utc::now().timestamp_millis();
    let props = CommitProperties::default()
        .with_application_transactions(vec![
            Transaction::new_with_last_update(c.app, c.next.version, Some(now)),
            Transaction::new_with_last_update(token_app(c.app), c.next.token, Some(now)),
        ])
        .with_metadata({
            let mut m = who(if c.epoch.is_some() {
                "consume"
            } else {
                "ingest"
            });
            m.insert("jinryu.app".to_string(), serde_json::json!(c.app));
            m.insert(
                "jinryu.progress".to_string(),
                serde_json::json!(c.next.version),
            );
            m
        });
    let operation = match c.epoch {
        Some(epoch) => DeltaOperation::StreamingUpdate {
            output_mode: deltalake_core::protocol::OutputMode::Append,
            query_id: c.app.to_string(),
            epoch_id: epoch,
        },
        None => DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(vec!["date".to_string()]),
            predicate: None,
        },
    };
    let mut actions: Vec<Action> = c.removes.into_iter().map(Action::Remove).collect();
    actions.extend(c.adds.into_iter().map(Action::Add));
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_millis(500);
    loop {
        let attempt: Result<Result<u64, Option<Progress>>, DeltaTableError> = async {
            table.update_state().await?;
            let found = progress_of(table, c.app).await?;
            if found == Some(c.next) {
                // An earlier attempt landed; its answer was lost.
                return Ok(Ok(table.version().unwrap_or_default()));
            }
            if found != c.expected {
                return Ok(Err(found));
            }
            let snapshot = table.snapshot()?;
            let fin = CommitBuilder::from(props.clone())
                .with_actions(actions.clone())
                .build(Some(snapshot), table.log_store(), operation.clone())
                .await?;
            let v = fin.version();
            table.state = Some(fin.snapshot());
            Ok(Ok(v))
        }
        .await;
        match attempt {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(found)) => return Err(fenced(show(found))),
            Err(DeltaTableError::Transaction {
                source:
                    TransactionError::CommitConflict(
                        deltalake_core::kernel::transaction::CommitConflictError::ConcurrentTransaction,
                    ),
            }) => {
                // Another commit carries our application id: ours (an attempt whose answer was
                // lost) or a newer writer's.
                let found = current_progress(storage, table, which, c.app).await?;
                if found == Some(c.next) {
                    return Ok(table.version().unwrap_or_default());
                }
                return Err(fenced(format!("a concurrent commit ({})", show(found))));
            }
            Err(other) => {
                let failure = e(other);
                if failure.is_permanent() || started.elapsed() + wait > COMMIT_RETRY_FOR {
                    return Err(failure);
                }
                tracing::warn!(error = %failure, retry_in = ?wait, "commit failed; retrying (nothing is visible until it succeeds)");
                tokio::time::sleep(wait).await;
                // Short waits: the object store already retried the request with its own
                // backoff, and a writer should resume promptly once storage is back.
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}

/// `remove` actions for the active files of the loaded table whose paths are in `paths`, and how
/// many of `paths` are no longer active (compacted or removed since).
pub fn removes_for(
    storage: &Storage,
    table: &DeltaTable,
    which: Table,
    paths: &std::collections::BTreeSet<String>,
) -> Result<(Vec<Remove>, usize), DeltaError> {
    let snap = table.snapshot().map_err(err(storage, which))?;
    let mut out = Vec::new();
    for f in snap.log_data().iter() {
        if paths.contains(f.path().as_ref()) {
            out.push(f.remove_action(true));
        }
    }
    let gone = paths.len() - out.len();
    Ok((out, gone))
}

/// Every writer with a state object and a progress in the loaded table: `(app id, progress)`.
pub async fn writers(
    storage: &Storage,
    table: &DeltaTable,
    which: Table,
) -> Result<Vec<(String, Progress)>, DeltaError> {
    let listed = storage
        .store()
        .list_with_delimiter(Some(&object_store::path::Path::from("_state")))
        .await
        .map_err(|e| err(storage, which)(DeltaTableError::from(e)))?;
    let mut out = Vec::new();
    for dir in listed.common_prefixes {
        let Some(app) = dir.filename() else { continue };
        if let Some(p) = progress(storage, table, which, app).await? {
            out.push((app.to_string(), p));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Who made a commit, for `jinryu table history`.
pub fn who(action: &str) -> BTreeMap<String, serde_json::Value> {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    BTreeMap::from([
        ("jinryu.action".to_string(), serde_json::json!(action)),
        ("jinryu.host".to_string(), serde_json::json!(host)),
        (
            "jinryu.pid".to_string(),
            serde_json::json!(std::process::id()),
        ),
        (
            "jinryu.version".to_string(),
            serde_json::json!(env!("CARGO_PKG_VERSION")),
        ),
    ])
}
