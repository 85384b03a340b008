//! Stage 4 — SQL jobs over the stored tables, run by DataFusion. The SQL itself lives in `sql/`
//! (embedded at build time so the binary is self-contained); this module registers the tables and
//! views every job and analyst sees:
//!
//! | name | what |
//! |---|---|
//! | `aggregates` | the additive 15-minute rows (a Delta table partitioned by local `date`) |
//! | `quarantine` | rejected messages with reason, position and payload head |
//! | `sensors` | the registry: `sensor_ord`, `sensor_id`, `array` |
//! | `sensor_directions` | one row per sensor and configured direction |
//! | `flow_15min` | view: one row per sensor, direction and window (`sql/flow_15min.sql`) |
//!
//! Sessions read the Delta tables through `scan` and plan with DataFusion's rules plus
//! `eager_aggregation` (sums below a join with the registry) and `partial_aggregation` (group
//! lookups that use the sorted layout).

pub mod checks;
pub mod eager_aggregation;
pub mod format;
pub mod monthly;
pub mod obligations;
pub mod partial_aggregation;
pub mod pdf;
pub mod report;
pub mod scan;
pub mod schedule;

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringViewArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::sanity_checker::SanityCheckPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext, cast, col};

use crate::config::Config;
use crate::sink::delta::{self, Table};
use crate::sink::store::Storage;

/// DataFusion's physical optimizer rules with jinryu's three: `partial_aggregation::StoredKeys`
/// before the first projection pushdown (it moves a view's timestamp cast from a projection into
/// a partial aggregate's grouping), `eager_aggregation` before the last filter pushdown, and
/// `partial_aggregation` after it (before the final sanity check, which then checks the replaced
/// nodes' requirements too).
pub fn physical_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = eager_aggregation::EagerAggregation::with_default_rules();
    // Only before the projection pushdown (tests/delta_tables.rs fails if it is not found).
    if let Some(at) = rules.iter().position(|r| r.name() == "ProjectionPushdown") {
        rules.insert(at, Arc::new(partial_aggregation::StoredKeys));
    }
    let at = rules
        .iter()
        .position(|r| r.name() == SanityCheckPlan::new().name())
        .unwrap_or(rules.len());
    rules.insert(at, Arc::new(partial_aggregation::PartialAggregation));
    rules
}

/// Applies `rewrite` to every node of `plan`, bottom up, replacing the nodes it answers for: the
/// walk every one of jinryu's optimizer rules makes.
fn rewrite_nodes(
    plan: Arc<dyn ExecutionPlan>,
    rewrite: impl Fn(
        &Arc<dyn ExecutionPlan>,
    ) -> datafusion::common::Result<Option<Arc<dyn ExecutionPlan>>>,
) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
    plan.transform_up(|node| {
        Ok(match rewrite(&node)? {
            Some(new) => Transformed::yes(new),
            None => Transformed::no(node),
        })
    })
    .data()
}

/// `node` as a `T` if it is one itself. (`downcast_ref` on a plan also sees through a wrapper
/// that delegates to a `T`; a rule that rebuilt from what it saw would drop the wrapper.)
fn node_as<T: ExecutionPlan>(node: &Arc<dyn ExecutionPlan>) -> Option<&T> {
    (node.as_ref() as &dyn std::any::Any).downcast_ref::<T>()
}

/// `sql/flow_15min.sql`.
pub const FLOW_15MIN_SQL: &str = include_str!("../../sql/flow_15min.sql");
/// `sql/monthly_long.sql`.
pub const MONTHLY_LONG_SQL: &str = include_str!("../../sql/monthly_long.sql");

/// Which state of the tables a session reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AsOf {
    /// The latest commit.
    #[default]
    Latest,
    /// The aggregates table's version `n` (the quarantine table as it was at that commit's time).
    Version(u64),
    /// The last commit at or before this instant.
    Time(chrono::DateTime<chrono::Utc>),
}

impl std::str::FromStr for AsOf {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(v) = s.parse::<u64>() {
            return Ok(AsOf::Version(v));
        }
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| AsOf::Time(t.with_timezone(&chrono::Utc)))
            .map_err(|_| {
                format!(
                    "`{s}`: give a table version (a number, see `jinryu table history`) or an \
                     RFC 3339 time such as 2026-12-01T09:00:00+09:00"
                )
            })
    }
}

/// The versions a session read, for the record (quality summary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadVersions {
    pub aggregates: Option<u64>,
    pub quarantine: Option<u64>,
}

/// How many partitions a query's scan and aggregation are split into: twice the processors. A
/// year of aggregates split in two byte-equal halves leaves one core idle while the other
/// finishes (decoding costs differ per file); four parts on two cores ran the analysts' queries
/// 10-12 % faster and with less CPU (BENCHMARKS.md, 2026-12-03 evening).
fn scan_partitions() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Bytes read from the end of a Parquet file to get its footer and page index: ours are a few KB
/// (2 KB of footer for a date of 1,000 sensors); a larger one costs a second read.
const METADATA_READ: usize = 64 * 1024;

/// A DataFusion session with jinryu's tables and views registered, at their latest versions.
pub async fn context(cfg: &Config, storage: &Storage) -> anyhow::Result<SessionContext> {
    Ok(context_at(cfg, storage, &AsOf::Latest).await?.0)
}

/// Loads one Delta table as it is at `as_of` (`None`: it has no commit by then).
async fn load_table(
    storage: &Storage,
    table: Table,
    as_of: &AsOf,
) -> anyhow::Result<Option<deltalake_core::DeltaTable>> {
    Ok(match as_of {
        AsOf::Latest => delta::load(storage, table).await?,
        AsOf::Version(v) => Some(delta::load_version(storage, table, *v).await?),
        AsOf::Time(t) => match delta::load_at(storage, table, *t).await {
            Ok(t) => Some(t),
            // Nothing committed to this table by then.
            Err(_) if table == Table::Quarantine => None,
            Err(e) => return Err(e.into()),
        },
    })
}

/// Registers a loaded Delta table as a view with the documented column types
/// (`schemas/*.json`); an empty table of the same columns before the table's first commit.
async fn register_table(
    ctx: &SessionContext,
    table: Table,
    loaded: Option<deltalake_core::DeltaTable>,
) -> anyhow::Result<()> {
    let view = table.view_schema();
    let Some(loaded) = loaded else {
        ctx.register_table(
            table.name(),
            Arc::new(MemTable::try_new(view, vec![vec![]])?),
        )?;
        return Ok(());
    };
    let url = datafusion::execution::object_store::ObjectStoreUrl::parse(
        crate::sink::store::DATAFUSION_URL,
    )?;
    let provider: Arc<dyn datafusion::datasource::TableProvider> =
        match scan::DeltaFiles::try_new(table, &loaded, url)? {
            Some(files) => Arc::new(files),
            None => {
                loaded.update_datafusion_session(&ctx.state())?;
                loaded.table_provider().await?
            }
        };
    // Casts where the stored type differs (timestamps in µs, unsigned counters); DataFusion drops
    // the others.
    let exprs: Vec<_> = view
        .fields()
        .iter()
        .map(|f| cast(col(f.name()), f.data_type().clone()).alias(f.name()))
        .collect();
    let df = ctx.read_table(provider)?.select(exprs)?;
    ctx.register_table(table.name(), df.into_view())?;
    Ok(())
}

/// The table versions a session reads (set by [`context_at`]).
pub fn read_versions(ctx: &SessionContext) -> ReadVersions {
    ctx.state()
        .config()
        .get_extension::<ReadVersions>()
        .map(|v| v.as_ref().clone())
        .unwrap_or_default()
}

/// A session over the tables as they were at `as_of`, and the versions it read (also kept in
/// the session: [`read_versions`]). Every table is read through a store that cannot write.
pub async fn context_at(
    cfg: &Config,
    storage: &Storage,
    as_of: &AsOf,
) -> anyhow::Result<(SessionContext, ReadVersions)> {
    let storage = &storage.read_only();
    let aggregates = load_table(storage, Table::Aggregates, as_of).await?;
    // The quarantine table at the time of the aggregates version read.
    let q_as_of = match (as_of, &aggregates) {
        (AsOf::Version(v), Some(t)) => {
            let ts = t
                .snapshot()?
                .version_timestamp(*v)
                .and_then(chrono::DateTime::from_timestamp_millis)
                .unwrap_or_else(chrono::Utc::now);
            AsOf::Time(ts)
        }
        (other, _) => other.clone(),
    };
    let quarantine = load_table(storage, Table::Quarantine, &q_as_of).await?;
    let versions = ReadVersions {
        aggregates: aggregates.as_ref().and_then(|t| t.version()),
        quarantine: quarantine.as_ref().and_then(|t| t.version()),
    };
    let dates = match &aggregates {
        Some(t) => scan::dates_with_rows(t)?,
        None => Default::default(),
    };
    // The intake counts come from the writers' latest state objects (older ones may be gone):
    // a latest session reuses the log it has just read instead of reading it again.
    let intake = match as_of {
        AsOf::Latest => intake_batch(cfg, storage, aggregates.as_ref()).await?,
        _ => {
            let latest = delta::load(storage, Table::Aggregates).await?;
            intake_batch(cfg, storage, latest.as_ref()).await?
        }
    };
    let mut session = SessionConfig::new()
        .with_target_partitions(scan_partitions())
        .with_information_schema(true)
        .with_extension(Arc::new(versions.clone()))
        .with_extension(Arc::new(DatesWithData(dates)));
    // A file's footer and page index are read in one request of this size from its end.
    // DataFusion's default (512 KiB) is larger than a compacted date of 1,000 sensors (~375 KB):
    // every query read each file whole before reading the columns it needs from it again.
    session.options_mut().execution.parquet.metadata_size_hint = Some(METADATA_READ);
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_config(session)
        .with_default_features()
        .with_physical_optimizer_rules(physical_rules())
        .build();
    let ctx = SessionContext::new_with_state(state);
    // Other stored objects (alert state) are read through this URL.
    ctx.register_object_store(
        &url::Url::parse(crate::sink::store::DATAFUSION_URL)?,
        storage.store().clone(),
    );
    register_table(&ctx, Table::Aggregates, aggregates).await?;
    register_table(&ctx, Table::Quarantine, quarantine).await?;

    let reg = &cfg.registry;
    let sensors = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("sensor_ord", DataType::UInt32, false),
            Field::new("sensor_id", DataType::Utf8View, false),
            Field::new("array", DataType::Utf8View, false),
        ])),
        vec![
            Arc::new(UInt32Array::from_iter_values(0..reg.len() as u32)) as ArrayRef,
            Arc::new(StringViewArray::from_iter_values(
                reg.sensors().iter().map(|s| &s.id),
            )),
            Arc::new(StringViewArray::from_iter_values(
                reg.sensors().iter().map(|s| &s.array),
            )),
        ],
    )?;
    ctx.register_table(
        "sensors",
        Arc::new(MemTable::try_new(sensors.schema(), vec![vec![sensors]])?),
    )?;

    let pairs: Vec<(u32, u32, &crate::config::Sensor, &String)> = reg
        .sensors()
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.directions
                .iter()
                .enumerate()
                .map(move |(j, d)| (i as u32, j as u32, s, d))
        })
        .collect();
    let dirs = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("sensor_ord", DataType::UInt32, false),
            Field::new("direction_ord", DataType::UInt32, false),
            Field::new("sensor_id", DataType::Utf8View, false),
            Field::new("array", DataType::Utf8View, false),
            Field::new("direction", DataType::Utf8View, false),
        ])),
        vec![
            Arc::new(UInt32Array::from_iter_values(pairs.iter().map(|p| p.0))) as ArrayRef,
            Arc::new(UInt32Array::from_iter_values(pairs.iter().map(|p| p.1))),
            Arc::new(StringViewArray::from_iter_values(
                pairs.iter().map(|p| &p.2.id),
            )),
            Arc::new(StringViewArray::from_iter_values(
                pairs.iter().map(|p| &p.2.array),
            )),
            Arc::new(StringViewArray::from_iter_values(pairs.iter().map(|p| p.3))),
        ],
    )?;
    ctx.register_table(
        "sensor_directions",
        Arc::new(MemTable::try_new(dirs.schema(), vec![vec![dirs]])?),
    )?;

    ctx.register_table(
        "intake",
        Arc::new(MemTable::try_new(intake.schema(), vec![vec![intake]])?),
    )?;

    ctx.sql(FLOW_15MIN_SQL).await?.collect().await?;
    Ok((ctx, versions))
}

/// The `intake` table: messages received per local day and source, and how many of them were
/// quarantined — from the state objects the aggregates table's progress names (file runs'
/// reports, Kafka partitions' totals), read from the `latest` aggregates snapshot. The
/// denominator of the quarantine rate.
async fn intake_batch(
    cfg: &Config,
    storage: &Storage,
    latest: Option<&deltalake_core::DeltaTable>,
) -> anyhow::Result<RecordBatch> {
    use object_store::ObjectStoreExt;
    let mut rows: Vec<(String, String, u64, u64)> = Vec::new();
    if let Some(table) = latest {
        for (app, p) in delta::writers(storage, table, Table::Aggregates).await? {
            let path = delta::state_path(&app, p);
            let bytes = storage.store().get(&path).await?.bytes().await?;
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                // The writer that owns it stops with a clear error (and the service's /healthz
                // says so); the intake just lacks this source's counts until it is repaired.
                tracing::warn!(state = %path, "damaged state object: its intake counts are left out");
                continue;
            };
            let source = v["source"].as_str().unwrap_or_default().to_string();
            if let Some(days) = v["totals"]["by_received_date"].as_object() {
                for (date, c) in days {
                    rows.push((
                        date.clone(),
                        source.clone(),
                        c["records"].as_u64().unwrap_or(0),
                        c["quarantined"].as_u64().unwrap_or(0),
                    ));
                }
            } else if let (Some(date), Some(lines)) =
                (v["received_date"].as_str(), v["report"]["lines"].as_u64())
            {
                let blank = v["report"]["blank"].as_u64().unwrap_or(0);
                let quarantined = v["report"]["quarantined"].as_u64().unwrap_or(0);
                rows.push((date.to_string(), source, lines - blank, quarantined));
            }
        }
    }
    rows.sort();
    let day_start = |d: &str| {
        chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .map(|d| cfg.window.day_start(d))
            .unwrap_or(0)
    };
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("date", DataType::Utf8View, false),
            Field::new(
                "day_start",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("source", DataType::Utf8View, false),
            Field::new("records", DataType::UInt64, false),
            Field::new("quarantined", DataType::UInt64, false),
        ])),
        vec![
            Arc::new(StringViewArray::from_iter_values(rows.iter().map(|r| &r.0))) as ArrayRef,
            Arc::new(
                arrow::array::TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| day_start(&r.0)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(StringViewArray::from_iter_values(rows.iter().map(|r| &r.1))),
            Arc::new(arrow::array::UInt64Array::from_iter_values(
                rows.iter().map(|r| r.2),
            )),
            Arc::new(arrow::array::UInt64Array::from_iter_values(
                rows.iter().map(|r| r.3),
            )),
        ],
    )?)
}

/// Column `i` of a query result as its concrete Arrow array type (the job's SQL fixes the types;
/// a mismatch is a bug, so it panics naming the column).
pub fn column<T: 'static>(b: &RecordBatch, i: usize) -> &T {
    b.column(i).as_any().downcast_ref::<T>().unwrap_or_else(|| {
        panic!(
            "column {i} (`{}`) has type {}",
            b.schema().field(i).name(),
            b.column(i).data_type()
        )
    })
}

/// Column `i` of a query result as text, whichever string type the SQL produced: the tables'
/// text columns are `Utf8View`, computed text (literals, `CONCAT`, `to_char`) is often `Utf8`.
/// A column that is not text is a bug in the job's SQL, so it panics naming the column.
pub fn text(b: &RecordBatch, i: usize) -> StringViewArray {
    use arrow::array::AsArray;
    let c = b.column(i);
    match c.data_type() {
        DataType::Utf8View => c.as_string_view().clone(),
        DataType::Utf8 | DataType::LargeUtf8 => arrow::compute::cast(c, &DataType::Utf8View)
            .expect("text casts to Utf8View")
            .as_string_view()
            .clone(),
        other => panic!(
            "column {i} (`{}`) has type {other}, not text",
            b.schema().field(i).name()
        ),
    }
}

/// The local dates with rows in the aggregates table a session reads (set by [`context_at`]).
#[derive(Debug, Default)]
struct DatesWithData(std::collections::BTreeSet<chrono::NaiveDate>);

/// Every local date with rows in the aggregates table, in order — from the snapshot's file list
/// (each data file's `date` and row count), read when the session was made: no scan.
pub fn dates_with_data(
    ctx: &SessionContext,
) -> anyhow::Result<std::collections::BTreeSet<chrono::NaiveDate>> {
    ctx.state()
        .config()
        .get_extension::<DatesWithData>()
        .map(|d| d.0.clone())
        .ok_or_else(|| anyhow::anyhow!("not a session made by jobs::context"))
}

/// Runs an analyst's query and returns its batches. Queries only: DDL (`CREATE ...`), DML
/// (`INSERT`, `COPY ... TO`) and statements (`SET`, transactions) are refused.
pub async fn query(ctx: &SessionContext, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let read_only = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx.sql_with_options(sql, read_only).await.map_err(|e| {
        anyhow::anyhow!(
            "{e}\nTables: aggregates, quarantine, intake, sensors, sensor_directions, flow_15min \
             (SHOW TABLES lists them; SHOW COLUMNS FROM aggregates shows the columns)"
        )
    })?;
    Ok(df.collect().await?)
}

/// A text cell made safe for a spreadsheet (OWASP "CSV injection"): text that starts with `=`,
/// `+`, `-`, `@`, a tab or a carriage return is prefixed with `'`, so Excel or LibreOffice show it
/// instead of evaluating it as a formula. Applied to text that a device or a user can choose
/// (fault codes, quarantined payloads, alert details), never to numbers.
pub fn formula_safe(text: &str) -> std::borrow::Cow<'_, str> {
    match text.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{text}").into(),
        _ => text.into(),
    }
}

/// Writes batches as CSV (header from the schema, NULL as an empty cell). Text and binary
/// columns go through [`formula_safe`]; numbers, times and booleans are written as they are.
pub fn write_csv<W: std::io::Write>(
    out: W,
    batches: &[RecordBatch],
    header: Option<&[String]>,
    terminator: csv::Terminator,
) -> anyhow::Result<()> {
    let mut w = csv::WriterBuilder::new()
        .terminator(terminator)
        .from_writer(out);
    let Some(first) = batches.first() else {
        if let Some(h) = header {
            w.write_record(h)?;
        }
        w.flush()?;
        return Ok(());
    };
    match header {
        Some(h) => w.write_record(h)?,
        None => w.write_record(first.schema().fields().iter().map(|f| f.name()))?,
    }
    let opts = FormatOptions::default().with_null("");
    let mut record: Vec<String> = Vec::new();
    for b in batches {
        let fmts = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()?;
        let text: Vec<bool> = b
            .columns()
            .iter()
            .map(|c| {
                matches!(
                    c.data_type(),
                    DataType::Utf8
                        | DataType::LargeUtf8
                        | DataType::Utf8View
                        | DataType::Binary
                        | DataType::LargeBinary
                        | DataType::BinaryView
                        | DataType::Dictionary(..)
                        | DataType::List(_)
                        | DataType::Struct(_)
                        | DataType::Map(..)
                )
            })
            .collect();
        for row in 0..b.num_rows() {
            record.clear();
            record.extend(fmts.iter().zip(&text).map(|(f, &text)| {
                let v = f.value(row).to_string();
                if text {
                    formula_safe(&v).into_owned()
                } else {
                    v
                }
            }));
            w.write_record(&record)?;
        }
    }
    w.flush()?;
    Ok(())
}
