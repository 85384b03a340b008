//! Stage 4 — SQL jobs over the stored tables, run by DataFusion. The SQL itself lives in `sql/`
//! (embedded at build time so the binary is self-contained); this module registers the tables and
//! views every job and analyst sees:
//!
//! | name | what |
//! |---|---|
//! | `aggregates` | the additive 15-minute rows, Hive-partitioned by local `date` |
//! | `quarantine` | rejected messages with reason, position and payload head |
//! | `sensors` | the registry: `sensor_ord`, `sensor_id`, `array` |
//! | `sensor_directions` | one row per sensor and configured direction |
//! | `flow_15min` | view: one row per sensor, direction and window (`sql/flow_15min.sql`) |

pub mod checks;
pub mod format;
pub mod monthly;
pub mod report;

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::Config;
use crate::sink::store::{DATAFUSION_URL, Storage};
use crate::sink::tables::{AGGREGATES, QUARANTINE};

/// `sql/flow_15min.sql`.
pub const FLOW_15MIN_SQL: &str = include_str!("../../sql/flow_15min.sql");
/// `sql/monthly_long.sql`.
pub const MONTHLY_LONG_SQL: &str = include_str!("../../sql/monthly_long.sql");

/// A DataFusion session with jinryu's tables and views registered.
pub async fn context(cfg: &Config, storage: &Storage) -> anyhow::Result<SessionContext> {
    let session = SessionConfig::new().with_information_schema(true);
    let ctx = SessionContext::new_with_config(session);
    let url = url::Url::parse(DATAFUSION_URL)?;
    ctx.register_object_store(&url, storage.store().clone());

    for (name, schema) in [
        ("aggregates", AGGREGATES.clone()),
        ("quarantine", QUARANTINE.clone()),
    ] {
        let table_url = ListingTableUrl::parse(format!("{DATAFUSION_URL}/{name}/"))?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![("date".to_string(), DataType::Utf8)]);
        let config = ListingTableConfig::new(table_url)
            .with_listing_options(options)
            .with_schema(schema);
        ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
    }

    let reg = &cfg.registry;
    let sensors = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("sensor_ord", DataType::UInt32, false),
            Field::new("sensor_id", DataType::Utf8, false),
            Field::new("array", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(UInt32Array::from_iter_values(0..reg.len() as u32)) as ArrayRef,
            Arc::new(StringArray::from_iter_values(
                reg.sensors().iter().map(|s| &s.id),
            )),
            Arc::new(StringArray::from_iter_values(
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
            Field::new("sensor_id", DataType::Utf8, false),
            Field::new("array", DataType::Utf8, false),
            Field::new("direction", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(UInt32Array::from_iter_values(pairs.iter().map(|p| p.0))) as ArrayRef,
            Arc::new(UInt32Array::from_iter_values(pairs.iter().map(|p| p.1))),
            Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| &p.2.id))),
            Arc::new(StringArray::from_iter_values(
                pairs.iter().map(|p| &p.2.array),
            )),
            Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| p.3))),
        ],
    )?;
    ctx.register_table(
        "sensor_directions",
        Arc::new(MemTable::try_new(dirs.schema(), vec![vec![dirs]])?),
    )?;

    let intake = intake_batch(cfg, storage).await?;
    ctx.register_table(
        "intake",
        Arc::new(MemTable::try_new(intake.schema(), vec![vec![intake]])?),
    )?;

    ctx.sql(FLOW_15MIN_SQL).await?.collect().await?;
    Ok(ctx)
}

/// The `intake` table: messages received per local day and source, and how many of them were
/// quarantined — from the file runs' manifests (`_sources/`) and the service's checkpoints
/// (`_checkpoints/`). The denominator of the quarantine rate.
async fn intake_batch(cfg: &Config, storage: &Storage) -> anyhow::Result<RecordBatch> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let mut rows: Vec<(String, String, u64, u64)> = Vec::new();
    for dir in ["_sources", "_checkpoints"] {
        let prefix = object_store::path::Path::from(dir);
        let metas: Vec<_> = storage.store().list(Some(&prefix)).try_collect().await?;
        for m in metas {
            let bytes = storage.store().get(&m.location).await?.bytes().await?;
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue; // a damaged manifest is reported by the commands that write it
            };
            let source = v["source"].as_str().unwrap_or_default().to_string();
            if dir == "_sources" {
                let (Some(date), Some(lines)) =
                    (v["received_date"].as_str(), v["report"]["lines"].as_u64())
                else {
                    continue; // a run in progress, or written before the intake existed
                };
                let blank = v["report"]["blank"].as_u64().unwrap_or(0);
                let quarantined = v["report"]["quarantined"].as_u64().unwrap_or(0);
                if !date.is_empty() {
                    rows.push((date.to_string(), source, lines - blank, quarantined));
                }
            } else if let Some(days) = v["totals"]["by_received_date"].as_object() {
                for (date, c) in days {
                    rows.push((
                        date.clone(),
                        source.clone(),
                        c["records"].as_u64().unwrap_or(0),
                        c["quarantined"].as_u64().unwrap_or(0),
                    ));
                }
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
            Field::new("date", DataType::Utf8, false),
            Field::new(
                "day_start",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("source", DataType::Utf8, false),
            Field::new("records", DataType::UInt64, false),
            Field::new("quarantined", DataType::UInt64, false),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))) as ArrayRef,
            Arc::new(
                arrow::array::TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| day_start(&r.0)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.1))),
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

/// Runs an analyst's query and returns its batches.
pub async fn query(ctx: &SessionContext, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let df = ctx.sql(sql).await.map_err(|e| {
        anyhow::anyhow!(
            "{e}\nTables: aggregates, quarantine, intake, sensors, sensor_directions, flow_15min \
             (SHOW TABLES lists them; SHOW COLUMNS FROM aggregates shows the columns)"
        )
    })?;
    Ok(df.collect().await?)
}

/// Writes batches as CSV (header from the schema, NULL as an empty cell).
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
        for row in 0..b.num_rows() {
            record.clear();
            record.extend(fmts.iter().map(|f| f.value(row).to_string()));
            w.write_record(&record)?;
        }
    }
    w.flush()?;
    Ok(())
}
