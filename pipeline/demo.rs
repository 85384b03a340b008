//! `jinryu demo`: the embedded default, end to end with no services. A simulated Chi-Ka-Ho month
//! goes through the same ingest code as a real input, lands as Parquet, is checked against the
//! simulator's truth window by window, and becomes the month's CSV.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow::array::{BooleanArray, Int64Array, TimestampMillisecondArray};
use datafusion::prelude::SessionContext;

use crate::config::Config;
use crate::ingest::{IngestOptions, Report, ingest};
use crate::jobs::{self, monthly::MonthlyOutput};
use crate::simulate::{SimOptions, Simulator, Truth};
use crate::sink::store::Storage;

/// Everything the demo produced.
#[derive(Debug)]
pub struct DemoOutput {
    pub report: Report,
    pub truth: Truth,
    pub verification: Verification,
    pub monthly: MonthlyOutput,
    /// Alerts the data-quality checks raised over the simulated days (in the report).
    pub alerts: usize,
    pub data_dir: String,
    pub out_dir: PathBuf,
    /// The demo's configuration file (storage pointed at `data_dir`).
    pub config_file: PathBuf,
}

/// The stored table compared with the simulator's truth.
#[derive(Debug, Default)]
pub struct Verification {
    /// (sensor, direction, window) keys compared.
    pub keys: u64,
    pub live_windows: u64,
    pub zero_windows: u64,
    pub late_keys: u64,
    pub mismatches: Vec<String>,
}

/// Compares `flow_15min` with the truth: every live window has every direction with the exact
/// count (zero included), and no window the sensor was dead in shows up as live.
pub async fn verify(
    ctx: &SessionContext,
    cfg: &Config,
    truth: &Truth,
) -> anyhow::Result<Verification> {
    let batches = jobs::query(
        ctx,
        "SELECT sensor_id, direction, window_start, \"count\", up, has_late FROM flow_15min",
    )
    .await?;
    let reg = &cfg.registry;
    let mut v = Verification::default();
    let mut seen: HashMap<(u32, i64), usize> = HashMap::new();
    for b in &batches {
        let sensor = jobs::text(b, 0);
        let dir = jobs::text(b, 1);
        let ws = jobs::column::<TimestampMillisecondArray>(b, 2);
        let count = jobs::column::<Int64Array>(b, 3);
        let up = jobs::column::<BooleanArray>(b, 4);
        let late = jobs::column::<BooleanArray>(b, 5);
        for i in 0..b.num_rows() {
            v.keys += 1;
            let Some(s) = reg.lookup(sensor.value(i)) else {
                v.mismatches
                    .push(format!("unknown sensor {} in the table", sensor.value(i)));
                continue;
            };
            let d = reg
                .direction(s, dir.value(i))
                .expect("configured direction");
            let key = (s, ws.value(i));
            let want = truth.counts.get(&(s, d, key.1)).copied().unwrap_or(0);
            if late.value(i) {
                v.late_keys += 1;
            }
            if up.value(i) {
                *seen.entry(key).or_default() += 1;
                if !truth.live.contains(&key) {
                    v.mismatches.push(format!(
                        "{} {} at {} is live but the sensor was silent",
                        sensor.value(i),
                        dir.value(i),
                        key.1
                    ));
                }
                if count.value(i) as u64 != want {
                    v.mismatches.push(format!(
                        "{} {} at {}: stored {} people, simulated {want}",
                        sensor.value(i),
                        dir.value(i),
                        key.1,
                        count.value(i)
                    ));
                }
                if want == 0 {
                    v.zero_windows += 1;
                }
            } else if truth.live.contains(&key) {
                v.mismatches.push(format!(
                    "{} at {} was live but is stored as not live",
                    sensor.value(i),
                    key.1
                ));
            }
        }
    }
    for key in &truth.live {
        let dirs = reg.get(key.0).directions.len();
        if seen.get(key).copied().unwrap_or(0) != dirs {
            v.mismatches.push(format!(
                "{} at {}: live window missing from the table",
                reg.get(key.0).id,
                key.1
            ));
        }
    }
    v.live_windows = truth.live.len() as u64;
    v.mismatches.truncate(20);
    Ok(v)
}

/// Runs the demo for one month, storing under `out_dir/data` and writing the CSV to `out_dir`.
pub async fn run(opts: SimOptions, out_dir: &Path) -> anyhow::Result<DemoOutput> {
    std::fs::create_dir_all(out_dir)?;
    let out_dir = out_dir.canonicalize()?;
    let data = out_dir.join("data");
    let url = format!("file://{}", data.display());
    let mut cfg = Config::chikaho(&url);
    // The demo goes on without Chromium (a warning says the PDF was not printed).
    cfg.pdf = crate::config::PdfMode::IfAvailable;
    // The configuration beside the output, so `jinryu sql/monthly/check --config OUT/jinryu.toml`
    // work on the demo's tables.
    let toml = crate::config::CHIKAHO_TOML.replace("file:///var/lib/jinryu", &url);
    std::fs::write(out_dir.join("jinryu.toml"), toml)?;
    let storage = Storage::open(&cfg.storage_url)?;
    let sim = Simulator::new(&cfg, opts.clone());
    let truth = sim.truth();
    let source = format!("demo-{:04}-{:02}", opts.year, opts.month);
    let report = ingest(&cfg, &storage, Box::new(sim), &IngestOptions::new(&source)).await?;
    let truth = truth.lock().expect("truth").clone();
    let ctx = jobs::context(&cfg, &storage).await?;
    let verification = verify(&ctx, &cfg, &truth).await?;
    // The checks over the simulated days, as `jinryu check` runs them: the report shows the
    // faults the simulator injected.
    let (first, next) = crate::window::time::month_bounds(opts.year, opts.month);
    let last = next.pred_opt().expect("a day before the next month");
    let to = match opts.days {
        Some(n) => (first + chrono::Days::new(u64::from(n.max(1)) - 1)).min(last),
        None => last,
    };
    let incidents = jobs::checks::run_checks(&ctx, &cfg, &cfg.checks, first, to).await?;
    let found = crate::alerts::alerts_from(&cfg, &incidents);
    let alerts = crate::alerts::merge(
        &storage,
        found,
        cfg.window.day_start(first),
        cfg.window.day_start(to.succ_opt().expect("next day")),
    )
    .await?
    .all
    .len();
    let format = jobs::format::Format::long();
    let monthly =
        jobs::monthly::write_monthly(&ctx, &cfg, opts.year, opts.month, &format, &out_dir).await?;
    Ok(DemoOutput {
        report,
        truth,
        verification,
        monthly,
        alerts,
        data_dir: storage.describe(""),
        config_file: out_dir.join("jinryu.toml"),
        out_dir,
    })
}
