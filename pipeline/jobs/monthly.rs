//! `jinryu monthly`: the month's deliverable in a client format (default `formats/long.toml`), its
//! `.sha256`, and a quality summary, with the deliverable's due date.
//!
//! `sql/monthly_long.sql` gives every sensor × direction × window of the month with its status;
//! that becomes a [`MonthGrid`]; if the format asks for it, missing cells are estimated from the
//! sensor's usual share of its array ([`estimate`]); the format renders the bytes. Missing windows
//! are visibly missing, never zeros. Files appear complete or not at all (written beside their final
//! name, then renamed).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{Datelike, Timelike};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sha2::{Digest, Sha256};

use super::format::{Cell, Format, MonthGrid, Series, WindowInfo};
use crate::calendar;
use crate::config::Config;
use crate::window::time::{month_bounds, partition_value};

/// Days of history before the month used to learn each sensor's share of its array.
pub const SHARE_HISTORY_DAYS: u64 = 28;

/// What `monthly` produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthlyOutput {
    pub csv: PathBuf,
    pub sha256_file: PathBuf,
    pub summary_file: PathBuf,
    /// The monthly HTML report beside the CSV.
    pub report_file: PathBuf,
    /// The same report as PDF (headless Chromium's print), the file the client files.
    pub pdf_file: PathBuf,
    pub sha256: String,
    /// Sensor × direction × window cells of the month.
    pub rows: u64,
    pub ok: u64,
    pub estimated: u64,
    pub missing: u64,
    pub closed: u64,
    /// People in the measured (`ok`) cells.
    pub people: u64,
    pub due: chrono::NaiveDate,
    pub due_provisional: bool,
}

/// Registers `month_windows`: every window of the month with its local date and time.
fn register_month_windows(ctx: &SessionContext, windows: &[WindowInfo]) -> anyhow::Result<()> {
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
            Arc::new(UInt32Array::from_iter_values(0..windows.len() as u32)) as ArrayRef,
            Arc::new(
                TimestampMillisecondArray::from_iter_values(windows.iter().map(|w| w.window_start))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                windows.iter().map(|w| partition_value(w.date)),
            )),
            Arc::new(StringArray::from_iter_values(windows.iter().map(|w| {
                format!("{:02}:{:02}", w.start.hour(), w.start.minute())
            }))),
            Arc::new(BooleanArray::from_iter(
                windows.iter().map(|w| Some(w.closed)),
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

fn month_windows(cfg: &Config, year: i32, month: u32) -> Vec<WindowInfo> {
    let spec = &cfg.window;
    spec.month_windows(year, month)
        .into_iter()
        .map(|ws| {
            let start = spec.local(ws);
            let end = spec.local(ws + spec.size_ms);
            WindowInfo {
                window_start: ws,
                date: start.date_naive(),
                start: start.time(),
                end: end.time(),
                closed: spec.is_closed(ws),
            }
        })
        .collect()
}

fn fill_dates(sql: &str, from: chrono::NaiveDate, to: chrono::NaiveDate) -> String {
    sql.replace("{{from_date}}", &partition_value(from))
        .replace("{{to_date}}", &partition_value(to))
}

/// The month's rows in the long layout, in output order (`sql/monthly_long.sql`).
pub async fn month_rows(
    ctx: &SessionContext,
    cfg: &Config,
    year: i32,
    month: u32,
) -> anyhow::Result<Vec<RecordBatch>> {
    rows_for(ctx, &month_windows(cfg, year, month), year, month).await
}

/// The long-layout rows for the given windows of a month.
async fn rows_for(
    ctx: &SessionContext,
    windows: &[WindowInfo],
    year: i32,
    month: u32,
) -> anyhow::Result<Vec<RecordBatch>> {
    register_month_windows(ctx, windows)?;
    let (from, next) = month_bounds(year, month);
    let to = next.pred_opt().expect("a day before the next month");
    let sql = fill_dates(super::MONTHLY_LONG_SQL, from, to);
    Ok(ctx.sql(&sql).await?.collect().await?)
}

/// Every window × series of the month with its measured state.
///
/// The same cells as `sql/monthly_long.sql` (the definition, and what an analyst can run), built
/// without materialising the dense grid in SQL: the month's stored rows are streamed batch by
/// batch (only the month's `date` partitions, five columns) and added into a grid the size of the
/// month (`cells[window × series]`, 16 bytes a cell). A (sensor, direction, window) is `ok` when
/// any of its rows showed liveness and its count is the sum over its rows, exactly as the SQL's
/// `SUM` / `BOOL_OR`; closed windows are closed whatever arrived; rows of sensors or directions no
/// longer configured are left out, as the SQL's join leaves them. `tests/invariants.rs` checks
/// the two agree cell for cell.
pub async fn month_grid(
    ctx: &SessionContext,
    cfg: &Config,
    year: i32,
    month: u32,
) -> anyhow::Result<MonthGrid> {
    use futures::StreamExt;

    let windows = month_windows(cfg, year, month);
    let series: Vec<Series> = cfg
        .registry
        .sensors()
        .iter()
        .flat_map(|s| {
            s.directions.iter().map(|d| Series {
                sensor_id: s.id.clone(),
                array: s.array.clone(),
                direction: d.clone(),
            })
        })
        .collect();
    let n = series.len();
    let mut cells = vec![Cell::Missing; windows.len() * n];
    // sensor id -> (first series, its directions)
    let mut by_sensor: HashMap<&str, (usize, &[String])> = HashMap::new();
    let mut next = 0;
    for s in cfg.registry.sensors() {
        by_sensor.insert(s.id.as_str(), (next, s.directions.as_slice()));
        next += s.directions.len();
    }
    // A local month is one span of UTC time: its windows are evenly spaced, summer time or not.
    let (first_ws, size) = (
        windows.first().map_or(0, |w| w.window_start),
        cfg.window.size_ms,
    );
    anyhow::ensure!(
        size > 0
            && windows
                .iter()
                .enumerate()
                .all(|(i, w)| w.window_start == first_ws + i as i64 * size),
        "internal error: the windows of {year:04}-{month:02} are not evenly spaced; please report this bug"
    );
    let window_of = |ws: i64| {
        let off = ws.checked_sub(first_ws)?;
        if off < 0 || off % size != 0 {
            return None;
        }
        usize::try_from(off / size)
            .ok()
            .filter(|w| *w < windows.len())
    };

    let (from, next_month) = month_bounds(year, month);
    let to = next_month.pred_opt().expect("a day before the next month");
    let sql = fill_dates(
        "SELECT sensor_id, direction, window_start, \"count\", up FROM aggregates \
         WHERE date >= '{{from_date}}' AND date <= '{{to_date}}'",
        from,
        to,
    );
    let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        let b = batch?;
        let sensor = super::text(&b, 0);
        let direction = super::text(&b, 1);
        let ws = super::column::<TimestampMillisecondArray>(&b, 2);
        let count = arrow::compute::cast(b.column(3), &DataType::UInt64)?;
        let count = count
            .as_any()
            .downcast_ref::<arrow::array::UInt64Array>()
            .expect("u64");
        let up = super::column::<BooleanArray>(&b, 4);
        // Rows come sorted by window and sensor: the last sensor looked up is usually the next.
        let mut last: Option<(&str, usize, &[String])> = None;
        for i in 0..b.num_rows() {
            if !up.value(i) {
                // No liveness in this row: it adds nothing (its count is 0, see `window::Acc`).
                continue;
            }
            let id = sensor.value(i);
            let (first, dirs) = match last {
                Some((l, f, d)) if l == id => (f, d),
                _ => match by_sensor.get(id) {
                    Some(&(f, d)) => {
                        last = Some((id, f, d));
                        (f, d)
                    }
                    None => continue,
                },
            };
            let dir = direction.value(i);
            let Some(d) = dirs.iter().position(|x| x == dir) else {
                continue;
            };
            let Some(w) = window_of(ws.value(i)) else {
                continue;
            };
            let cell = &mut cells[w * n + first + d];
            *cell = match *cell {
                Cell::Ok(c) => Cell::Ok(c + count.value(i)),
                _ => Cell::Ok(count.value(i)),
            };
        }
    }
    for (w, win) in windows.iter().enumerate() {
        if win.closed {
            cells[w * n..(w + 1) * n].fill(Cell::Closed);
        }
    }
    Ok(MonthGrid {
        year,
        month,
        windows,
        series,
        cells,
    })
}

/// Each series' usual share of its array and direction, learned from the windows of the
/// [`SHARE_HISTORY_DAYS`] days before the month in which every sensor of the array was live.
pub async fn array_shares(
    ctx: &SessionContext,
    grid: &MonthGrid,
) -> anyhow::Result<Vec<Option<f64>>> {
    let (from, _) = month_bounds(grid.year, grid.month);
    let hist_from = from - chrono::Days::new(SHARE_HISTORY_DAYS);
    let hist_to = from.pred_opt().expect("day before");
    let sql = fill_dates(
        "SELECT sensor_id, direction, window_start, \"count\" FROM flow_15min \
         WHERE up AND date >= '{{from_date}}' AND date <= '{{to_date}}'",
        hist_from,
        hist_to,
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    let index: HashMap<(&str, &str), usize> = grid
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| ((s.sensor_id.as_str(), s.direction.as_str()), i))
        .collect();
    // window → series → count
    let mut by_window: BTreeMap<i64, Vec<Option<u64>>> = BTreeMap::new();
    for b in &batches {
        let s = super::text(b, 0);
        let d = super::text(b, 1);
        let ws = super::column::<TimestampMillisecondArray>(b, 2);
        let c = super::column::<Int64Array>(b, 3);
        for i in 0..b.num_rows() {
            if let Some(&si) = index.get(&(s.value(i), d.value(i))) {
                by_window
                    .entry(ws.value(i))
                    .or_insert_with(|| vec![None; grid.series.len()])[si] = Some(c.value(i) as u64);
            }
        }
    }
    let groups = groups(grid);
    let mut own = vec![0u64; grid.series.len()];
    let mut group_total = vec![0u64; grid.series.len()];
    for values in by_window.values() {
        for members in groups.values() {
            if members.iter().all(|m| values[*m].is_some()) {
                let total: u64 = members.iter().map(|m| values[*m].unwrap_or(0)).sum();
                for m in members {
                    own[*m] += values[*m].unwrap_or(0);
                    group_total[*m] += total;
                }
            }
        }
    }
    Ok((0..grid.series.len())
        .map(|i| (group_total[i] > 0).then(|| own[i] as f64 / group_total[i] as f64))
        .collect())
}

/// Series grouped by (array, direction).
fn groups(grid: &MonthGrid) -> BTreeMap<(String, String), Vec<usize>> {
    let mut g: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, s) in grid.series.iter().enumerate() {
        g.entry((s.array.clone(), s.direction.clone()))
            .or_default()
            .push(i);
    }
    g
}

/// Fills missing cells whose array has live sensors in the same window and direction:
/// estimate = (people counted by the live sensors) × share / (shares of the live sensors).
/// Cells without a learned share, or whose whole array is missing, stay missing.
pub fn estimate(grid: &mut MonthGrid, shares: &[Option<f64>]) -> u64 {
    let groups = groups(grid);
    let n = grid.series.len();
    let mut filled = 0;
    for w in 0..grid.windows.len() {
        for members in groups.values() {
            let live: Vec<usize> = members
                .iter()
                .copied()
                .filter(|m| matches!(grid.cells[w * n + m], Cell::Ok(_)))
                .collect();
            if live.is_empty() {
                continue;
            }
            let live_people: u64 = live
                .iter()
                .map(|m| match grid.cells[w * n + m] {
                    Cell::Ok(c) => c,
                    _ => 0,
                })
                .sum();
            let live_share: f64 = live.iter().filter_map(|m| shares[*m]).sum();
            if live.iter().any(|m| shares[*m].is_none()) || live_share <= 0.0 {
                continue;
            }
            for m in members {
                if grid.cells[w * n + m] == Cell::Missing
                    && let Some(share) = shares[*m]
                {
                    let est = (live_people as f64 * share / live_share).round() as u64;
                    grid.cells[w * n + m] = Cell::Estimated(est);
                    filled += 1;
                }
            }
        }
    }
    filled
}

/// Builds the month's deliverable in `format` into `out_dir`.
pub async fn write_monthly(
    ctx: &SessionContext,
    cfg: &Config,
    year: i32,
    month: u32,
    format: &Format,
    out_dir: &Path,
) -> anyhow::Result<MonthlyOutput> {
    let mut grid = month_grid(ctx, cfg, year, month).await?;
    if format.estimate {
        let shares = array_shares(ctx, &grid).await?;
        estimate(&mut grid, &shares);
    }
    std::fs::create_dir_all(out_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the output directory {}: {e}",
            out_dir.display()
        )
    })?;
    let name = format.file_name(year, month);
    let csv_path = out_dir.join(&name);
    // Rendered straight into the file (hashed on the way): the month's text is never held whole.
    let sha = write_atomically_with(&csv_path, |w| {
        let mut hashing = HashingWriter {
            inner: w,
            hasher: Sha256::new(),
        };
        format
            .render_to(&grid, &mut hashing)
            .map_err(anyhow::Error::msg)?;
        Ok(format!("{:x}", hashing.hasher.finalize()))
    })?;
    let sha_path = out_dir.join(format!("{name}.sha256"));
    write_atomically(&sha_path, format!("{sha}  {name}\n").as_bytes())?;

    let mut out = MonthlyOutput {
        csv: csv_path,
        sha256_file: sha_path,
        summary_file: out_dir.join(format!("{}.quality.md", name.trim_end_matches(".csv"))),
        report_file: out_dir.join(format!("{}.html", name.trim_end_matches(".csv"))),
        pdf_file: out_dir.join(format!("{}.pdf", name.trim_end_matches(".csv"))),
        sha256: sha,
        rows: grid.cells.len() as u64,
        ok: 0,
        estimated: 0,
        missing: 0,
        closed: 0,
        people: 0,
        due: calendar::deliverable_due(year, month),
        due_provisional: calendar::is_provisional(year) || calendar::is_provisional(year + 1),
    };
    for c in &grid.cells {
        match c {
            Cell::Ok(n) => {
                out.ok += 1;
                out.people += n;
            }
            Cell::Estimated(_) => out.estimated += 1,
            Cell::Missing => out.missing += 1,
            Cell::Closed => out.closed += 1,
        }
    }
    let quarantined = quarantined_in_month(ctx, year, month).await?;
    let store = ctx.runtime_env().object_store(
        datafusion::execution::object_store::ObjectStoreUrl::parse(
            crate::sink::store::DATAFUSION_URL,
        )?,
    )?;
    let alerts: Vec<crate::alerts::Alert> = crate::alerts::stored(store.as_ref())
        .await?
        .into_iter()
        .filter(|a| {
            let d = cfg.window.local(a.start_ms).date_naive();
            (d.year(), d.month()) == (year, month)
        })
        .collect();
    let versions = super::read_versions(ctx);
    let summary = quality_summary(&grid, format, &out, quarantined, &alerts, &versions);
    write_atomically(&out.summary_file, summary.as_bytes())?;
    // TODO(#10): the obligations' real status and delivery times, and the pipeline's availability
    // from the jobs' records, once they are tracked; until then the two due dates, open.
    let obligations = [
        super::report::ObligationRow {
            what: match cfg.language {
                crate::config::Language::Ja => {
                    format!("月次データ（CSV）{year:04}年{month:02}月分")
                }
                crate::config::Language::En => format!("monthly data (CSV) {year:04}-{month:02}"),
            },
            due: calendar::deliverable_due(year, month),
            status: "open".to_string(),
            met_at: None,
        },
        super::report::ObligationRow {
            what: match cfg.language {
                crate::config::Language::Ja => format!("月次報告書 {year:04}年{month:02}月分"),
                crate::config::Language::En => format!("monthly report {year:04}-{month:02}"),
            },
            due: calendar::monthly_report_due(year, month),
            status: "open".to_string(),
            met_at: None,
        },
    ];
    let input = super::report::ReportInput {
        facility: &cfg.facility_name,
        language: cfg.language,
        alerts: &alerts,
        obligations: &obligations,
        availability: None,
    };
    let html = super::report::html(&grid, &out, &input).map_err(anyhow::Error::msg)?;
    write_atomically(&out.report_file, html.as_bytes())?;
    // The PDF is part of the deliverable: with `[report] pdf = "required"` (the default) no PDF
    // means no deliverable (the error says how to fix it); "if_available" warns and goes on.
    use crate::config::PdfMode;
    if cfg.pdf != PdfMode::Off {
        let (html_path, pdf_path) = (out.report_file.clone(), out.pdf_file.clone());
        let printed =
            tokio::task::spawn_blocking(move || super::pdf::render(&html_path, &pdf_path))
                .await
                .map_err(|e| anyhow::anyhow!("printing the report as PDF: {e}"))?;
        match (printed, cfg.pdf) {
            (Ok(()), _) => {}
            (Err(e), PdfMode::IfAvailable) => {
                tracing::warn!(error = %format!("{e:#}"), "the report was not printed as PDF ([report] pdf = \"if_available\")");
            }
            (Err(e), _) => return Err(e),
        }
    }
    Ok(out)
}

async fn quarantined_in_month(
    ctx: &SessionContext,
    year: i32,
    month: u32,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let (from, next) = month_bounds(year, month);
    let sql = fill_dates(
        "SELECT reason, COUNT(*) AS n FROM quarantine WHERE date >= '{{from_date}}' AND date <= '{{to_date}}' GROUP BY reason",
        from,
        next.pred_opt().expect("day before"),
    );
    let mut out = BTreeMap::new();
    for b in ctx.sql(&sql).await?.collect().await? {
        let r = super::text(&b, 0);
        let n = super::column::<Int64Array>(&b, 1);
        for i in 0..b.num_rows() {
            out.insert(r.value(i).to_string(), n.value(i) as u64);
        }
    }
    Ok(out)
}

fn show_version(v: Option<u64>) -> String {
    v.map_or_else(|| "(none: no commit yet)".to_string(), |v| v.to_string())
}

fn quality_summary(
    grid: &MonthGrid,
    format: &Format,
    out: &MonthlyOutput,
    quarantined: BTreeMap<String, u64>,
    alerts: &[crate::alerts::Alert],
    versions: &super::ReadVersions,
) -> String {
    let mut s = format!(
        "# Quality summary {:04}-{:02}\n\nFile: `{}` (format `{}`), sha256 `{}`\n\nDue: {} (5th business day of the next month){}\n\n",
        grid.year,
        grid.month,
        out.csv
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        format.name,
        out.sha256,
        out.due,
        if out.due_provisional {
            ", provisional: holidays beyond the Cabinet Office list"
        } else {
            ""
        }
    );
    s.push_str(&format!(
        "Built from: aggregates table version {}, quarantine table version {} (rebuild this file \
         byte for byte with `jinryu monthly --as-of {}`).\n\n",
        show_version(versions.aggregates),
        show_version(versions.quarantine),
        versions
            .aggregates
            .map_or("0".to_string(), |v| v.to_string()),
    ));
    s.push_str(&format!(
        "Cells (sensor x direction x window): {} — ok {}, estimated {}, missing {}, closed {}. People measured: {}.\n\n",
        out.rows, out.ok, out.estimated, out.missing, out.closed, out.people
    ));
    s.push_str("| sensor | direction | open windows | measured | estimated | missing | coverage |\n|---|---|---:|---:|---:|---:|---:|\n");
    for (series, c) in grid.series.iter().zip(grid.coverage()) {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} % |\n",
            series.sensor_id,
            series.direction,
            c.open,
            c.measured,
            c.estimated,
            c.missing,
            c.percent()
        ));
    }
    let total: u64 = quarantined.values().sum();
    s.push_str(&format!(
        "\nQuarantined messages received this month: {total}"
    ));
    if !quarantined.is_empty() {
        let list: Vec<_> = quarantined
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        s.push_str(&format!(" ({})", list.join(", ")));
    }
    s.push_str(
        ".\n\nA quarantined message is counted in the month jinryu received it (the local day of \
         the run that read it, the quarantine table's `date`), not in the month its data were \
         about: a rejected message has no event time to trust. Messages about this month that \
         arrived in another month (e.g. the month ingested afterwards, as `jinryu demo` does) are \
         in that month's summary; `jinryu sql \"SELECT date, reason, count(*) FROM quarantine \
         GROUP BY date, reason\"` lists them by day received.",
    );
    s.push_str(&format!(
        "\n\nAlerts of the month (from `jinryu check`): {}\n",
        alerts.len()
    ));
    for a in alerts {
        s.push_str(&format!(
            "- {} {} {} {} → {} ({}): {}\n",
            a.severity,
            a.kind,
            a.sensor_id.as_deref().unwrap_or("-"),
            a.start,
            a.end,
            a.status,
            a.evidence["detail"].as_str().unwrap_or("")
        ));
    }
    s
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomically_with(path, |w| Ok(w.write_all(bytes)?))
}

/// Writes a file beside `path` through `fill`, syncs it and renames it into place; on an error the
/// partial file is removed and `path` is untouched.
fn write_atomically_with<T>(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let f = std::fs::File::create(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let result = fill(&mut w).and_then(|v| {
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(v)
    });
    match result {
        Ok(v) => {
            std::fs::rename(&tmp, path)?;
            Ok(v)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
