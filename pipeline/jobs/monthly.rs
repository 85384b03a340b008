//! `jinryu monthly`: the month's deliverable `YYYY_MM.csv` (default long layout) and its
//! `YYYY_MM.csv.sha256`, built by `sql/monthly_long.sql`.
//!
//! Missing windows are visibly `missing` with an empty count — never zeros. Windows inside the
//! facility's closed hours are `closed`. The file appears complete or not at all (written beside
//! its final name, then renamed).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::Timelike;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::window::time::{month_bounds, partition_value};

/// Header of the default long layout.
pub const LONG_HEADER: [&str; 7] = [
    "date",
    "time",
    "sensor_id",
    "array",
    "direction",
    "count",
    "status",
];

/// What `monthly` produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthlyOutput {
    pub csv: PathBuf,
    pub sha256_file: PathBuf,
    pub sha256: String,
    pub rows: u64,
    pub ok: u64,
    pub missing: u64,
    pub closed: u64,
    /// People in the `ok` rows.
    pub people: u64,
}

/// Registers `month_windows`: every window of the month with its local date and time.
fn register_month_windows(
    ctx: &SessionContext,
    cfg: &Config,
    year: i32,
    month: u32,
) -> anyhow::Result<()> {
    let spec = &cfg.window;
    let ws = spec.month_windows(year, month);
    let local: Vec<_> = ws.iter().map(|w| spec.local(*w)).collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("ord", DataType::UInt32, false),
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("date", DataType::Utf8, false),
            Field::new("time", DataType::Utf8, false),
            Field::new("closed", DataType::Boolean, false),
        ])),
        vec![
            Arc::new(UInt32Array::from_iter_values(0..ws.len() as u32)) as ArrayRef,
            Arc::new(TimestampMillisecondArray::from(ws.clone()).with_timezone("UTC")),
            Arc::new(StringArray::from_iter_values(
                local.iter().map(|t| partition_value(t.date_naive())),
            )),
            Arc::new(StringArray::from_iter_values(
                local
                    .iter()
                    .map(|t| format!("{:02}:{:02}", t.hour(), t.minute())),
            )),
            Arc::new(BooleanArray::from_iter(
                ws.iter().map(|w| Some(spec.is_closed(*w))),
            )),
        ],
    )?;
    ctx.deregister_table("month_windows")?;
    ctx.register_table(
        "month_windows",
        Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?),
    )?;
    Ok(())
}

/// The month's rows in the long layout, in output order.
pub async fn month_rows(
    ctx: &SessionContext,
    cfg: &Config,
    year: i32,
    month: u32,
) -> anyhow::Result<Vec<RecordBatch>> {
    register_month_windows(ctx, cfg, year, month)?;
    let (from, next) = month_bounds(year, month);
    let to = next.pred_opt().expect("a day before the next month");
    let sql = super::MONTHLY_LONG_SQL
        .replace("{{from_date}}", &partition_value(from))
        .replace("{{to_date}}", &partition_value(to));
    Ok(ctx.sql(&sql).await?.collect().await?)
}

/// Builds `YYYY_MM.csv` and its checksum in `out_dir`.
pub async fn write_monthly(
    ctx: &SessionContext,
    cfg: &Config,
    year: i32,
    month: u32,
    out_dir: &Path,
) -> anyhow::Result<MonthlyOutput> {
    let batches = month_rows(ctx, cfg, year, month).await?;
    std::fs::create_dir_all(out_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the output directory {}: {e}",
            out_dir.display()
        )
    })?;
    let name = format!("{year:04}_{month:02}.csv");
    let csv_path = out_dir.join(&name);
    let tmp = out_dir.join(format!(".{name}.tmp"));
    let mut buf = Vec::new();
    let header: Vec<String> = LONG_HEADER.iter().map(|s| s.to_string()).collect();
    super::write_csv(&mut buf, &batches, Some(&header), csv::Terminator::CRLF)?;
    let sha = format!("{:x}", Sha256::digest(&buf));
    {
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(&buf)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &csv_path)?;
    let sha_path = out_dir.join(format!("{name}.sha256"));
    std::fs::write(&sha_path, format!("{sha}  {name}\n"))?;

    let mut out = MonthlyOutput {
        csv: csv_path,
        sha256_file: sha_path,
        sha256: sha,
        rows: 0,
        ok: 0,
        missing: 0,
        closed: 0,
        people: 0,
    };
    for b in &batches {
        let status = b.column_by_name("status").expect("status column");
        let status = status
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("status is text");
        let count = b.column_by_name("count").expect("count column");
        let count = arrow::compute::cast(count, &DataType::Int64)?;
        let count = count
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("int64");
        for i in 0..b.num_rows() {
            out.rows += 1;
            match status.value(i) {
                "ok" => {
                    out.ok += 1;
                    out.people += count.value(i) as u64;
                }
                "missing" => out.missing += 1,
                _ => out.closed += 1,
            }
            debug_assert!(status.value(i) == "ok" || count.is_null(i));
        }
    }
    Ok(out)
}
