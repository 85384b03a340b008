//! The `jinryu` command line. Each subcommand is a thin shell over the library: parse, load the
//! configuration once, call the stage, print what happened.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::{Datelike, Months};
use clap::{Parser, Subcommand, ValueEnum};

use jinryu::config::Config;
use jinryu::ingest::{IngestOptions, Report, ingest, sanitize_source_id};
use jinryu::jobs;
use jinryu::simulate::{self, Simulator};
use jinryu::sink::store::Storage;
use jinryu::window::time::parse_month;

const ABOUT: &str = "jinryu (人流) turns pedestrian-counter events into trusted 15-minute counts \
(Delta Lake tables), the monthly CSV deliverable, and data-quality checks.";

const AFTER_HELP: &str = "\
Start here:
  jinryu demo                      simulate a month of the Sapporo Chi-Ka-Ho walkway end to end
  jinryu ingest --config jinryu.toml --input events.jsonl
  jinryu run --config jinryu.toml  the Kafka service (consumer group → Delta tables), /metrics
  jinryu simulate --config jinryu.toml --kafka --rate 1000   load a topic like the gateways do
  jinryu monthly --config jinryu.toml --month 2026-11 [--format formats/sapporo-wide.toml]
  jinryu calendar --month 2026-11  business days and deadlines
  jinryu check --config jinryu.toml [--from 2026-11-01 --to 2026-11-30]   data-quality alerts
  jinryu faults --config jinryu.toml --month 2026-11                       fault report drafts
  jinryu obligations --config jinryu.toml       deadlines: open, due soon, OVERDUE, delivered
  jinryu deliver --config jinryu.toml --month 2026-11 --file 2026_11.csv   record a handover
  jinryu sql --config jinryu.toml \"SELECT * FROM flow_15min LIMIT 10\"
  jinryu table history --config jinryu.toml       who committed what (also: compact, vacuum, expire)

Configuration: docker/jinryu.toml is a complete, commented example. Logs go to stderr; set
JINRYU_LOG=debug for more. Exit status: 0 success, 1 failure (the message says what to do),
2 usage error.";

#[derive(Parser)]
#[command(name = "jinryu", version, about = ABOUT, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a month of the Chi-Ka-Ho walkway and run it end to end: no Kafka, no network.
    ///
    /// Eight sensors (J1 north end: 3, J2 south end: 5) count people north- and southbound with
    /// weekday and weekend shapes, the 00:46-05:44 night closure and per-minute heartbeats. Faults
    /// are injected (a sensor silent for five hours, a sensor reporting a fault, gateway retries, a
    /// late burst, malformed messages). The stream goes through the same pipeline as
    /// `jinryu ingest`, lands in the Delta tables under OUT/data, is checked window by window against the
    /// simulator's truth, and becomes OUT/YYYY_MM.csv with its checksum.
    Demo {
        /// Month to simulate, YYYY-MM [default: the last complete month]
        #[arg(long, value_parser = month_arg)]
        month: Option<(i32, u32)>,
        /// Directory for the tables (OUT/data) and the CSV
        #[arg(long, default_value = "jinryu-demo")]
        out: PathBuf,
        /// Random seed of the simulation (same seed, same month → same data)
        #[arg(long, default_value_t = 20261102)]
        seed: u64,
        /// Simulate a clean month without injected faults
        #[arg(long)]
        no_faults: bool,
    },
    /// Run the pipeline over JSON lines (a file or '-' for stdin) into the configured storage.
    ///
    /// One sensor event per line (schemas/sensor-event.schema.json); blank lines are skipped.
    /// Every other line is either counted in a 15-minute window or quarantined with its reason
    /// and line number; the totals are printed at the end. At end of input every open window is
    /// written, all in one commit at the end: a failed or killed run shows nothing and prints the
    /// command that re-runs it. Re-running the same input (same --source-id) replaces its earlier
    /// output instead
    /// of adding to it.
    Ingest {
        #[command(flatten)]
        config: ConfigArg,
        /// JSON-lines file to read, or '-' for stdin
        #[arg(long, short)]
        input: String,
        /// This input's id in the tables (its application id in the Delta log) [default: the file
        /// name plus a hash of its full path; for stdin, `stdin-` plus a hash of the content].
        /// A run under an id that was ingested before replaces that run's rows in one commit.
        #[arg(long)]
        source_id: Option<String>,
        /// Decoder threads [default: the number of CPUs]
        #[arg(long)]
        workers: Option<usize>,
        /// Print the run report as JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// The service: consume the Kafka topic of [kafka] as a consumer group and write the
    /// aggregates continuously.
    ///
    /// Each assigned partition is decoded, windowed and written like `ingest`, and committed in
    /// epochs: its data files, its window state (_state/jinryu-TOPIC-P/...), then one Delta
    /// commit per table carrying the partition's next offset, then the Kafka offset. After a
    /// crash, restart or rebalance every record is counted exactly once; a process that lost its
    /// partition (paused past its session timeout, or a second group on the same storage) is
    /// fenced: its commit is refused, /healthz turns 503 and it says so. Closed dates are
    /// compacted every hour. Windows close by event time (heartbeats) and,
    /// on a quiet partition, by wall clock after service.idle_timeout. Bad records go to quarantine
    /// with topic, partition and offset. GET /healthz and /metrics (Prometheus) are served on
    /// service.listen. SIGTERM or Ctrl-C: commit every partition, leave the group, exit 0.
    /// Secrets (sasl_password_env/_file) are read at start and never printed.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Simulated gateway messages (JSON lines): to stdout, e.g. to pipe into `ingest`, or
    /// published to the configured Kafka topic with --kafka (keyed by sensor_id).
    Simulate {
        /// Configuration whose sensors to simulate (and whose [kafka] to publish to)
        /// [default: the embedded Chi-Ka-Ho config]
        #[arg(long)]
        config: Option<PathBuf>,
        /// Publish to the [kafka] topic of --config instead of writing to stdout
        #[arg(long)]
        kafka: bool,
        /// With --kafka: records per second [default: as fast as the broker takes them]
        #[arg(long)]
        rate: Option<f64>,
        /// With --kafka: publish the JSON lines of this file ('-' = stdin) instead of simulating
        #[arg(long)]
        input: Option<String>,
        /// Month to simulate, YYYY-MM [default: the last complete month]
        #[arg(long, value_parser = month_arg)]
        month: Option<(i32, u32)>,
        #[arg(long, default_value_t = 20261102)]
        seed: u64,
        /// Leave out the injected faults
        #[arg(long)]
        no_faults: bool,
        /// Weekday walkers per array and day
        #[arg(long, default_value_t = 70_000.0)]
        walkers: f64,
    },
    /// Build the month's deliverable (YYYY_MM.csv), its .sha256 and a quality summary (.quality.md),
    /// and print the due date (5th Japanese business day of the next month).
    ///
    /// The format file (formats/*.toml) sets layout, columns, headers, encoding, line endings and how
    /// missing, closed and estimated values are written. Default (formats/long.toml):
    /// date,time,sensor_id,array,direction,count,status with one row for every sensor x direction x
    /// 15-minute window of the month (local date and time of the window start); status is ok (count
    /// is a measurement, 0 included), missing (no sign of life: count empty, never 0) or closed
    /// (inside the facility's closed hours); UTF-8, CRLF. formats/sapporo-wide.toml is the wide
    /// Sapporo layout in Shift_JIS, with missing sensors estimated from their usual share of the
    /// array and flagged 補正 = 1 (estimation is off unless the format says `estimate = true`).
    Monthly {
        #[command(flatten)]
        config: ConfigArg,
        /// Month, YYYY-MM
        #[arg(long, value_parser = month_arg)]
        month: (i32, u32),
        /// Format file [default: formats/long.toml, built in]
        #[arg(long)]
        format: Option<PathBuf>,
        /// Directory to write the files to
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Build it from the tables as they were: an aggregates table version (the quality
        /// summary of every deliverable names the one it was built from) or an RFC 3339 time.
        /// The same version gives the same CSV, byte for byte. Versions are kept 30 days.
        #[arg(long, value_name = "VERSION|TIME")]
        as_of: Option<jobs::AsOf>,
    },
    /// Run the data-quality checks (sql/checks/*.sql) and raise alerts.
    ///
    /// Checks: sensor_offline, silent_but_alive, stuck_count, direction_dead, implausible_level
    /// (robust baseline over [checks] history_days), clock_skew, late_rate; thresholds in [checks].
    /// Closed hours and windows that are not final yet are never checked. Alerts keep a stable id;
    /// an alert that continues stays one alert; one whose condition is gone is resolved. State is
    /// kept in the storage (alerts/state.json), so a rerun sends nothing new. New and changed
    /// alerts are queued (alerts/outbox.json) and go to stdout as JSON lines, to [alerts] log_file,
    /// to [alerts] webhook_url (http or https; [alerts] ca_file adds a trusted CA) and to
    /// [alerts.email] (SMTP, STARTTLS required); each leaves the queue once every route has it. A
    /// route that fails (down, a timeout, any answer but 2xx — redirects are not followed, a
    /// certificate that does not verify) keeps the alert queued for the next run, and `check`
    /// exits 1. Alerts `jinryu faults` found are sent by the next `check`.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// First local date to check, YYYY-MM-DD [default: 7 days ago]
        #[arg(long)]
        from: Option<chrono::NaiveDate>,
        /// Last local date to check, YYYY-MM-DD [default: today]
        #[arg(long)]
        to: Option<chrono::NaiveDate>,
        /// Do not print alerts on stdout (log file, webhook and e-mail still get them)
        #[arg(long)]
        quiet: bool,
    },
    /// Draft the month's fault reports (CSV and Markdown) from the checks' alerts.
    ///
    /// One line per incident: occurrence date and time, worker (blank to fill), what happened, cause
    /// (as far as the data tell), action taken (blank to fill), duration, and the report's due date
    /// (the next Japanese business day after the fault). Runs the checks for the month first.
    Faults {
        #[command(flatten)]
        config: ConfigArg,
        /// Month, YYYY-MM
        #[arg(long, value_parser = month_arg)]
        month: (i32, u32),
        /// Directory for faults_YYYY_MM.csv and .md
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// The contract's deadlines and whether each was met: the month's CSV (5th business day of
    /// the next month), the monthly report (the 10th; March: the 31st), a fault report per sensor
    /// fault (next business day). Status: open, due soon (the business day before), OVERDUE,
    /// delivered (with when, by whom and the file's SHA-256). `jinryu run` reminds and raises
    /// obligation_overdue through [alerts] by itself.
    Obligations {
        #[command(flatten)]
        config: ConfigArg,
        /// Month, YYYY-MM [default: the last two months and this one]
        #[arg(long, value_parser = month_arg)]
        month: Option<(i32, u32)>,
    },
    /// Record that a file was handed over to the client (the evidence of an obligation met).
    ///
    /// `--month M` records the month's CSV and report (or one of them with --only); `--fault ID`
    /// a fault report (IDs: `jinryu obligations`). With --file, its SHA-256 is recorded; without,
    /// the SHA-256 of the CSV the service built (deliverables/YYYY_MM/) when there is one. A
    /// record is never overwritten: recording the same handover twice is refused.
    Deliver {
        #[command(flatten)]
        config: ConfigArg,
        /// Month, YYYY-MM: its CSV and report
        #[arg(long, value_parser = month_arg, conflicts_with = "fault", required_unless_present = "fault")]
        month: Option<(i32, u32)>,
        /// Only one of the month's two: csv or report
        #[arg(long, value_parser = ["csv", "report"], requires = "month")]
        only: Option<String>,
        /// A fault report: the alert id (from `jinryu obligations`)
        #[arg(long)]
        fault: Option<String>,
        /// Who handed it over [default: $USER]
        #[arg(long)]
        by: Option<String>,
        /// The file handed over (its SHA-256 is recorded)
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Show a month's Japanese business days and the contract's deadlines.
    ///
    /// Business days exclude Saturdays, Sundays, national holidays (振替休日 and 国民の休日
    /// included; the Cabinet Office list up to 2027, the holiday act's rules after that, marked
    /// provisional) and 12/29-1/3. Deadlines: the month's CSV by the 5th business day of the next
    /// month; the monthly report by the 10th of the next month (previous business day when closed;
    /// March's on March 31); a fault report by the next business day.
    Calendar {
        /// Month, YYYY-MM
        #[arg(long, value_parser = month_arg)]
        month: (i32, u32),
    },
    /// Run SQL over the stored tables and print the result.
    ///
    /// Tables: aggregates (additive 15-minute rows, partitioned by local date), quarantine,
    /// sensors, sensor_directions; view: flow_15min (one row per sensor, direction, window).
    /// Timestamps are UTC; e.g. window_start AT TIME ZONE 'Asia/Tokyo' for local time.
    Sql {
        #[command(flatten)]
        config: ConfigArg,
        /// The query, e.g. "SELECT date, SUM(count) FROM aggregates GROUP BY date ORDER BY date"
        query: String,
        /// Output format
        #[arg(long, value_enum, default_value_t = SqlFormat::Table)]
        format: SqlFormat,
        /// Query the tables as they were at an aggregates table version or an RFC 3339 time
        #[arg(long, value_name = "VERSION|TIME")]
        as_of: Option<jobs::AsOf>,
    },
    /// Look after the Delta tables: history, compaction, vacuum, quarantine expiry.
    ///
    /// `aggregates` and `quarantine` are Delta Lake tables under the storage root
    /// (<root>/aggregates, <root>/quarantine), partitioned by local date. Every ingest run and
    /// every Kafka partition commits its files together with its progress. compact and vacuum
    /// never change what a query returns; expire removes old quarantine rows.
    Table {
        #[command(subcommand)]
        action: TableAction,
    },
}

#[derive(Subcommand)]
enum TableAction {
    /// The latest commits of a table: version, time, operation, who (host, process, source).
    History {
        #[command(flatten)]
        config: ConfigArg,
        /// aggregates or quarantine
        #[arg(long, default_value = "aggregates")]
        table: String,
        /// How many commits, newest first
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Rewrite a closed date's many small files into one, per table, atomically: readers see the
    /// old files or the new one, never both, and counts do not change.
    ///
    /// Without --date: every date that closed (end + allowed lateness + [retention]
    /// compact_after) and has more than one file. `jinryu run` does this on its own every hour.
    Compact {
        #[command(flatten)]
        config: ConfigArg,
        /// One local date, YYYY-MM-DD (even one that is still open: late rows are still added
        /// afterwards, as new files)
        #[arg(long)]
        date: Option<chrono::NaiveDate>,
    },
    /// Delete files that no current commit needs (replaced by compaction or a re-run, or written
    /// by an epoch that never committed) and superseded state objects, once older than the
    /// retention. Time travel (--as-of) cannot go back past what was vacuumed.
    Vacuum {
        #[command(flatten)]
        config: ConfigArg,
        /// Keep files younger than this [default: [retention] files, 7d]; at least 1h
        #[arg(long)]
        retention: Option<String>,
        /// List what would be deleted; delete nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove quarantine rows received more than [retention] quarantine (400d) ago, whole dates,
    /// in one commit. `jinryu run` does this daily.
    Expire {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SqlFormat {
    Table,
    Csv,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file (see docker/jinryu.toml)
    #[arg(long, short, env = "JINRYU_CONFIG", default_value = "jinryu.toml")]
    config: PathBuf,
}

impl ConfigArg {
    fn load(&self) -> anyhow::Result<Config> {
        Ok(Config::load(&self.config)?)
    }
}

fn month_arg(s: &str) -> Result<(i32, u32), String> {
    parse_month(s)
}

/// The last complete month in the facility's time zone.
fn last_month(cfg: &Config) -> (i32, u32) {
    let now = cfg
        .window
        .local(chrono::Utc::now().timestamp_millis())
        .date_naive();
    let m = now
        .with_day(1)
        .expect("first")
        .checked_sub_months(Months::new(1))
        .expect("month");
    (m.year(), m.month())
}

/// Log filter without JINRYU_LOG: jinryu at info, the Delta libraries only when something is wrong.
const DEFAULT_LOG: &str = "info,deltalake_core=warn,buoyant_kernel=warn,buoyant_kernel_engine=warn";

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JINRYU_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .init();
    if matches!(cli.command, Command::Ingest { .. }) {
        one_malloc_arena();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A file run is a few threads handing large buffers to each other (reader → decoders → window
/// stage → table writer). glibc gives each thread a malloc arena of its own and keeps what is
/// freed in each: ~35 MB more resident over a month of input than one arena, which measured the
/// same speed (threads keep their own small caches in front of it; BENCHMARKS.md). Must run
/// before any other thread exists.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter, and no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// The `jinryu deliver` arguments that record obligation `id`.
fn deliver_args(id: &str) -> String {
    match id.split_once(':') {
        Some(("csv", m)) => format!("--month {m} --only csv"),
        Some(("report", m)) => format!("--month {m} --only report"),
        Some(("fault", a)) => format!("--fault {a}"),
        _ => id.to_string(),
    }
}

fn print_report(r: &Report) {
    println!(
        "input        {} lines ({} bytes), {} blank",
        r.lines, r.bytes, r.blank
    );
    println!(
        "accepted     {} ({} counted, {} of them late; {} retries counted once)",
        r.accepted, r.counted, r.late, r.duplicates
    );
    if r.retry_memory_forgotten > 0 {
        println!(
            "retry memory {} ranges forgotten: sequence numbers arrived scattered beyond {} \
             ranges per sensor and window (a retry of a forgotten number would count again)",
            r.retry_memory_forgotten,
            jinryu::window::dedup::MAX_RANGES
        );
    }
    println!("people       {}", r.people);
    print!("quarantined  {}", r.quarantined);
    if !r.quarantine_reasons.is_empty() {
        let reasons: Vec<_> = r
            .quarantine_reasons
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        print!(" ({})", reasons.join(", "));
    }
    println!();
    println!(
        "written      {} rows in {} files, committed as {} (aggregates version {}){}",
        r.rows_written,
        r.objects_written,
        r.source,
        r.table_version,
        if r.stale_objects_removed > 0 {
            format!(
                "; replaces the {} files of this source's earlier run",
                r.stale_objects_removed
            )
        } else {
            String::new()
        }
    );
}

fn table_arg(name: &str) -> anyhow::Result<jinryu::sink::delta::Table> {
    use jinryu::sink::delta::Table;
    Table::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .ok_or_else(|| {
            anyhow::anyhow!("--table {name}: there are two tables, aggregates and quarantine")
        })
}

async fn table_command(action: TableAction) -> anyhow::Result<()> {
    use jinryu::sink::delta::Table;
    use jinryu::sink::lifecycle;
    match action {
        TableAction::History {
            config,
            table,
            limit,
        } => {
            let cfg = config.load()?;
            let storage = Storage::open(&cfg.storage_url)?;
            let table = table_arg(&table)?;
            let entries = lifecycle::history(&storage, table, limit).await?;
            if entries.is_empty() {
                println!(
                    "{}: no commits yet ({})",
                    table.name(),
                    storage.describe(table.name())
                );
            }
            for h in entries {
                let i = &h.info;
                let when = i
                    .timestamp
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| {
                        t.with_timezone(&cfg.timezone)
                            .format("%Y-%m-%d %H:%M:%S%:z")
                            .to_string()
                    })
                    .unwrap_or_default();
                let get = |k: &str| {
                    i.info
                        .get(k)
                        .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                        .unwrap_or_default()
                };
                let param = |k: &str| {
                    i.operation_parameters
                        .as_ref()
                        .and_then(|p| p.get(k))
                        .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                };
                let files = param("epochId")
                    .map(|e| format!("epoch={e}"))
                    .or_else(|| param("predicate").map(|p| format!("predicate={p}")))
                    .unwrap_or_default();
                println!(
                    "{:>6}  {when}  {:<18} {:<28} host={} pid={} {}{}",
                    h.version.map_or("?".to_string(), |v| v.to_string()),
                    i.operation.clone().unwrap_or_default(),
                    get("jinryu.app"),
                    get("jinryu.host"),
                    get("jinryu.pid"),
                    match get("jinryu.progress").as_str() {
                        "" => String::new(),
                        p => format!("progress={p} "),
                    },
                    files
                );
            }
            Ok(())
        }
        TableAction::Compact { config, date } => {
            let cfg = config.load()?;
            let storage = Storage::open(&cfg.storage_url)?;
            let now = chrono::Utc::now().timestamp_millis();
            let mut total = 0;
            for table in Table::ALL {
                let dates = match date {
                    Some(d) => vec![d.format("%Y-%m-%d").to_string()],
                    None => lifecycle::compactable_dates(&cfg, &storage, table, now).await?,
                };
                for d in dates {
                    let c = lifecycle::compact_date(&storage, table, &d).await?;
                    if c.files_removed > 0 {
                        total += 1;
                        println!(
                            "{} {}: {} files → {}",
                            c.table, c.date, c.files_removed, c.files_added
                        );
                    }
                }
            }
            if total == 0 {
                println!("nothing to compact: every closed date is one file per table");
            }
            Ok(())
        }
        TableAction::Vacuum {
            config,
            retention,
            dry_run,
        } => {
            let cfg = config.load()?;
            let storage = Storage::open(&cfg.storage_url)?;
            let retention_ms = match retention {
                Some(r) => jinryu::config::parse_duration(&r)
                    .map_err(|e| anyhow::anyhow!("--retention {e}"))?
                    .as_millis() as i64,
                None => cfg.retention.files_ms,
            };
            let v = lifecycle::vacuum(
                &storage,
                retention_ms,
                dry_run,
                chrono::Utc::now().timestamp_millis(),
            )
            .await?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            for (table, files) in &v.files {
                println!("{table}: {verb} {} file(s)", files.len());
                for f in files {
                    println!("  {f}");
                }
            }
            println!("state objects: {verb} {}", v.states.len());
            Ok(())
        }
        TableAction::Expire { config } => {
            let cfg = config.load()?;
            let storage = Storage::open(&cfg.storage_url)?;
            let dates =
                lifecycle::expire_quarantine(&cfg, &storage, chrono::Utc::now().timestamp_millis())
                    .await?;
            match (dates.first(), dates.last()) {
                (Some(a), Some(b)) => println!(
                    "quarantine: removed {} date(s), {a} .. {b} (files stay until `jinryu table vacuum`)",
                    dates.len()
                ),
                _ => println!("quarantine: nothing older than the retention"),
            }
            Ok(())
        }
    }
}

/// Runs every check over `[from, to]` and merges the alerts into the stored state.
async fn run_checks(
    cfg: &Config,
    storage: &Storage,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
) -> anyhow::Result<jinryu::alerts::Changes> {
    let ctx = jobs::context(cfg, storage).await?;
    let incidents = jobs::checks::run_checks(&ctx, cfg, &cfg.checks, from, to).await?;
    let found = jinryu::alerts::alerts_from(cfg, &incidents);
    let start = cfg.window.day_start(from);
    let end = cfg.window.day_start(to.succ_opt().expect("next day"));
    jinryu::alerts::merge(storage, found, start, end).await
}

/// `jinryu run`: the consumer on its own thread, /healthz and /metrics and the signals here.
async fn run_service(cfg: Config) -> anyhow::Result<()> {
    let storage = Storage::open(&cfg.storage_url)?;
    let metrics = jinryu::service::metrics_for(&cfg);
    let addr = jinryu::service::metrics::serve(
        metrics.clone(),
        cfg.service.listen,
        jinryu::service::metrics::ListenerLimits::default(),
    )
    .await?;
    eprintln!("jinryu run: /healthz and /metrics on http://{addr}");
    tokio::spawn(jinryu::service::watch(cfg.clone(), metrics.clone()));
    tokio::spawn(jinryu::jobs::schedule::run(
        cfg.clone(),
        storage.clone(),
        metrics.clone(),
    ));
    tokio::spawn(jinryu::service::maintain(
        cfg.clone(),
        storage.clone(),
        std::time::Duration::from_secs(60),
    ));
    let running = jinryu::service::spawn(cfg, storage, tokio::runtime::Handle::current(), metrics)?;
    let stop = running.stop.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let finished = tokio::task::spawn_blocking(move || running.join());
    tokio::pin!(finished);
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        r = &mut finished => return r?.map(|_| ()),
    }
    eprintln!("jinryu run: stopping (committing every partition) ...");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let s = finished.await??;
    eprintln!(
        "jinryu run: stopped cleanly; {} partition(s) committed",
        s.partitions_committed
    );
    Ok(())
}

fn default_source_id(input: &str) -> String {
    if input == "-" {
        return "stdin".to_string();
    }
    let path = Path::new(input);
    let full = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    use sha2::Digest;
    let h = sha2::Sha256::digest(full.to_string_lossy().as_bytes());
    format!(
        "{}-{:02x}{:02x}{:02x}{:02x}",
        sanitize_source_id(&name),
        h[0],
        h[1],
        h[2],
        h[3]
    )
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo {
            month,
            out,
            seed,
            no_faults,
        } => {
            let probe = Config::chikaho("memory://");
            let (year, month) = month.unwrap_or_else(|| last_month(&probe));
            let mut opts = simulate::options(year, month);
            opts.seed = seed;
            opts.faults = !no_faults;
            eprintln!("jinryu demo: simulating {year:04}-{month:02} at Chi-Ka-Ho (8 sensors) ...");
            let d = jinryu::demo::run(opts, &out).await?;
            println!("== jinryu demo: Sapporo Chi-Ka-Ho, {year:04}-{month:02} ==");
            print_report(&d.report);
            println!(
                "simulated    {} malformed lines, {} gateway retries, {} late-delivered messages",
                d.truth.malformed, d.truth.retries, d.truth.late_messages
            );
            let v = &d.verification;
            if v.mismatches.is_empty() {
                println!(
                    "verified     all {} sensor-direction-windows equal the simulator's truth \
                     ({} live sensor-windows, {} measured zeros, {} with late rows)",
                    v.keys, v.live_windows, v.zero_windows, v.late_keys
                );
            } else {
                println!(
                    "VERIFICATION FAILED: {} mismatches, first ones:",
                    v.mismatches.len()
                );
                for m in &v.mismatches {
                    println!("  {m}");
                }
            }
            let m = &d.monthly;
            println!(
                "monthly      {} ({} rows: {} ok, {} missing, {} closed; {} people)",
                m.csv.display(),
                m.rows,
                m.ok,
                m.missing,
                m.closed,
                m.people
            );
            println!("checksum     {}", m.sha256_file.display());
            println!(
                "report       {}{}  (quality: {})",
                m.report_file.display(),
                if m.pdf_file.exists() {
                    format!(", PDF {}", m.pdf_file.display())
                } else {
                    " (no PDF: Chromium is not installed)".to_string()
                },
                m.summary_file.display()
            );
            println!(
                "alerts       {} raised by the checks (in the report)",
                d.alerts
            );
            println!(
                "tables       {} (aggregates/, quarantine/: Delta Lake tables, partitioned by date)",
                d.data_dir
            );
            let cfg_path = d.config_file.display();
            println!(
                "next         jinryu sql --config {cfg_path} \"SELECT * FROM flow_15min LIMIT 5\""
            );
            println!(
                "             jinryu check --config {cfg_path} --from {year:04}-{month:02}-01 --to {year:04}-{month:02}-28"
            );
            println!(
                "             jinryu monthly --config {cfg_path} --month {year:04}-{month:02} --format formats/sapporo-wide.toml"
            );
            anyhow::ensure!(
                v.mismatches.is_empty(),
                "the demo's output differs from the simulated truth"
            );
            Ok(())
        }
        Command::Ingest {
            config,
            input,
            source_id,
            workers,
            json,
        } => {
            let cfg = config.load()?;
            let storage = Storage::open(&cfg.storage_url)?;
            let reader: Box<dyn Read + Send> = if input == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(
                    std::fs::File::open(&input)
                        .with_context(|| format!("cannot open the input file {input}"))?,
                )
            };
            let explicit = source_id.is_some();
            let source = source_id
                .map(|s| sanitize_source_id(&s))
                .unwrap_or_else(|| default_source_id(&input));
            let mut opts = IngestOptions::new(&source);
            opts.content_id = input == "-" && !explicit;
            if let Some(w) = workers {
                opts.workers = w;
            }
            tracing::info!(source = %source, storage = %cfg.storage_url, "ingest started");
            let report = match ingest(&cfg, &storage, reader, &opts).await {
                Ok(r) => r,
                Err(e) => {
                    let cfg_arg = format!(" --config {}", config.config.display());
                    let rerun = if opts.content_id {
                        format!(
                            "jinryu ingest{cfg_arg} --input - < THE-SAME-INPUT   (its id is \
                             derived from the content, so a re-run replaces, never adds)"
                        )
                    } else {
                        format!("jinryu ingest{cfg_arg} --input {input} --source-id {source}")
                    };
                    return Err(e.context(format!(
                        "ingest failed; nothing of this run is visible in the tables (its files \
                         are in no commit). Re-run it safely with:\n  {rerun}"
                    )));
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("== jinryu ingest: {} → {} ==", input, storage.describe(""));
                print_report(&report);
            }
            Ok(())
        }
        Command::Run { config } => {
            let cfg = config.load()?;
            run_service(cfg).await
        }
        Command::Simulate {
            config,
            kafka,
            rate,
            input,
            month,
            seed,
            no_faults,
            walkers,
        } => {
            let cfg = match config {
                Some(p) => Config::load(&p)?,
                None => Config::chikaho("memory://"),
            };
            if kafka || input.is_some() {
                anyhow::ensure!(kafka, "--input is only for --kafka (publishing a file)");
                let settings = cfg.kafka.clone().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--kafka needs a --config with a [kafka] section (brokers, topic)"
                    )
                })?;
                let reader: Box<dyn std::io::BufRead + Send> = match input.as_deref() {
                    Some("-") => Box::new(std::io::BufReader::new(std::io::stdin())),
                    Some(path) => Box::new(std::io::BufReader::new(
                        std::fs::File::open(path)
                            .with_context(|| format!("cannot open --input {path}"))?,
                    )),
                    None => {
                        let (year, month) = month.unwrap_or_else(|| last_month(&cfg));
                        let mut opts = simulate::options(year, month);
                        opts.seed = seed;
                        opts.faults = !no_faults;
                        opts.walkers_per_day = walkers;
                        Box::new(std::io::BufReader::with_capacity(
                            1 << 20,
                            Simulator::new(&cfg, opts),
                        ))
                    }
                };
                let p = tokio::task::spawn_blocking(move || {
                    simulate::publish::publish(&settings, reader, rate)
                })
                .await??;
                println!(
                    "published {} records to {} ({} not delivered)",
                    p.delivered,
                    cfg.kafka.as_ref().map_or("", |k| k.topic.as_str()),
                    p.failed
                );
                anyhow::ensure!(p.failed == 0, "{} records were not delivered", p.failed);
                return Ok(());
            }
            let (year, month) = month.unwrap_or_else(|| last_month(&cfg));
            let mut opts = simulate::options(year, month);
            opts.seed = seed;
            opts.faults = !no_faults;
            opts.walkers_per_day = walkers;
            let mut sim = Simulator::new(&cfg, opts);
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match std::io::copy(&mut sim, &mut out).and_then(|_| out.flush()) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Command::Monthly {
            config,
            month: (year, month),
            format,
            out,
            as_of,
        } => {
            let cfg = config.load()?;
            let format = match format {
                Some(p) => jobs::format::Format::load(&p).map_err(anyhow::Error::msg)?,
                None => jobs::format::Format::long(),
            };
            let storage = Storage::open(&cfg.storage_url)?;
            let (ctx, versions) =
                jobs::context_at(&cfg, &storage, &as_of.clone().unwrap_or_default()).await?;
            let m = jobs::monthly::write_monthly(&ctx, &cfg, year, month, &format, &out).await?;
            println!(
                "== jinryu monthly {year:04}-{month:02} (format {}) ==",
                format.name
            );
            println!("file         {}", m.csv.display());
            println!("checksum     {}  ({})", m.sha256, m.sha256_file.display());
            println!("summary      {}", m.summary_file.display());
            println!(
                "report       {}{}",
                m.report_file.display(),
                if m.pdf_file.exists() {
                    format!(" and {}", m.pdf_file.display())
                } else {
                    " (no PDF: [report] pdf)".to_string()
                }
            );
            println!(
                "built from   aggregates version {}{}",
                versions
                    .aggregates
                    .map_or_else(|| "(no commit yet)".to_string(), |v| v.to_string()),
                if as_of.is_some() {
                    " (--as-of: the tables as they were)"
                } else {
                    ""
                }
            );
            println!(
                "cells        {} ({} ok, {} estimated, {} missing, {} closed); {} people measured",
                m.rows, m.ok, m.estimated, m.missing, m.closed, m.people
            );
            println!(
                "due          {} (5th business day of the next month){}",
                m.due.format("%Y-%m-%d (%a)"),
                if m.due_provisional {
                    " (provisional: beyond the Cabinet Office holiday list)"
                } else {
                    ""
                }
            );
            if m.ok == 0 {
                eprintln!(
                    "warning: no live data for {year:04}-{month:02} in {}: every open window is 'missing'. \
                     Was the month ingested into this storage?",
                    storage.describe("aggregates")
                );
            }
            Ok(())
        }
        Command::Check {
            config,
            from,
            to,
            quiet,
        } => {
            let cfg = config.load()?;
            let storage = Storage::open(&cfg.storage_url)?;
            let today = cfg
                .window
                .local(chrono::Utc::now().timestamp_millis())
                .date_naive();
            let to = to.unwrap_or(today);
            let from = from.unwrap_or(to - chrono::Days::new(7));
            anyhow::ensure!(from <= to, "--from {from} is after --to {to}");
            let changes = run_checks(&cfg, &storage, from, to).await?;
            // Everything queued is sent, not only this run's changes: alerts an earlier run
            // could not deliver, and those `jinryu faults` found.
            let (d, waiting) = jinryu::alerts::deliver(&storage, !quiet, &cfg.alerts).await?;
            for e in &d.errors {
                eprintln!("warning: {e}");
            }
            let open = changes.all.iter().filter(|a| a.status == "open").count();
            eprintln!(
                "jinryu check {from}..{to}: {} new or changed alerts, {open} open in total; webhook {} delivered, {} failed; e-mail {} sent, {} failed; {waiting} waiting for a route",
                changes.changed.len(),
                d.webhook_delivered,
                d.webhook_failed,
                d.email_sent,
                d.email_failed
            );
            anyhow::ensure!(
                !d.failed(),
                "{} alert deliveries failed (see the warnings above); the alerts stay queued and \
                 the next `jinryu check` sends them again",
                d.errors.len()
            );
            Ok(())
        }
        Command::Faults {
            config,
            month: (year, month),
            out,
        } => {
            let cfg = config.load()?;
            let storage = Storage::open(&cfg.storage_url)?;
            let (from, next) = jinryu::window::time::month_bounds(year, month);
            let to = next.pred_opt().expect("day before");
            let changes = run_checks(&cfg, &storage, from, to).await?;
            let (csv_path, md_path, n) =
                jinryu::alerts::faults::write(&cfg, &changes.all, year, month, &out)?;
            println!(
                "{n} incidents → {} and {}",
                csv_path.display(),
                md_path.display()
            );
            Ok(())
        }
        Command::Obligations { config, month } => {
            use jinryu::jobs::obligations;
            let cfg = config.load()?;
            let storage = Storage::open(&cfg.storage_url)?;
            let today = cfg
                .window
                .local(chrono::Utc::now().timestamp_millis())
                .date_naive();
            let months = match month {
                Some(m) => vec![m],
                None => {
                    use chrono::Datelike;
                    let back = today - chrono::Months::new(2);
                    obligations::months_between(
                        (back.year(), back.month()),
                        (today.year(), today.month()),
                    )
                }
            };
            let alerts = jinryu::alerts::stored(storage.store().as_ref()).await?;
            println!("== jinryu obligations (today {today}) ==");
            println!(
                "{:<10} {:<8} {:<15} {:<58} evidence",
                "due", "month", "status", "what"
            );
            let mut overdue = 0;
            for (y, m) in months {
                for o in obligations::of_month(&cfg, &storage, &alerts, y, m).await? {
                    let status = o.status(today);
                    overdue += usize::from(status == obligations::Status::Overdue);
                    let evidence = o.handover.as_ref().map_or_else(
                        || format!("(jinryu deliver {})", deliver_args(&o.id)),
                        |h| {
                            format!(
                                "{} by {}{}",
                                h.at,
                                h.by,
                                h.sha256
                                    .as_ref()
                                    .map(|s| format!(", sha256 {}", &s[..s.len().min(16)]))
                                    .unwrap_or_default()
                            )
                        },
                    );
                    println!(
                        "{:<10} {:<8} {:<15} {:<58} {evidence}",
                        o.due.to_string(),
                        o.month,
                        status.label(),
                        o.what
                    );
                }
            }
            if overdue > 0 {
                eprintln!("{overdue} obligation(s) OVERDUE");
            }
            Ok(())
        }
        Command::Deliver {
            config,
            month,
            only,
            fault,
            by,
            file,
        } => {
            use jinryu::jobs::obligations::{self, Handover};
            use sha2::Digest;
            let cfg = config.load()?;
            let storage = Storage::open(&cfg.storage_url)?;
            let by = by
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "unknown".to_string());
            let at = cfg
                .window
                .local(chrono::Utc::now().timestamp_millis())
                .to_rfc3339();
            let file_sha = match &file {
                Some(p) => Some(format!(
                    "{:x}",
                    sha2::Sha256::digest(
                        std::fs::read(p)
                            .map_err(|e| { anyhow::anyhow!("cannot read {}: {e}", p.display()) })?
                    )
                )),
                None => None,
            };
            let mut ids: Vec<(String, Option<String>)> = Vec::new();
            if let Some((y, m)) = month {
                let built = jinryu::jobs::schedule::manifest(&storage, y, m).await?;
                let built_csv = built.as_ref().and_then(|mf| {
                    mf.files
                        .iter()
                        .find(|f| f.name.ends_with(".csv") && !f.name.starts_with("faults_"))
                        .map(|f| f.sha256.clone())
                });
                for what in ["csv", "report"] {
                    if only.as_deref().is_some_and(|o| o != what) {
                        continue;
                    }
                    let sha = file_sha
                        .clone()
                        .or_else(|| (what == "csv").then(|| built_csv.clone()).flatten());
                    ids.push((format!("{what}:{y:04}-{m:02}"), sha));
                }
            }
            if let Some(f) = fault {
                ids.push((format!("fault:{f}"), file_sha.clone()));
            }
            for (id, sha256) in ids {
                let h = Handover {
                    at: at.clone(),
                    by: by.clone(),
                    sha256,
                    file: file.as_ref().map(|p| p.display().to_string()),
                };
                obligations::record(&storage, &id, &h).await?;
                println!("recorded: {id} handed over {} by {}", h.at, h.by);
            }
            Ok(())
        }
        Command::Calendar {
            month: (year, month),
        } => {
            use jinryu::calendar;
            let (from, next) = jinryu::window::time::month_bounds(year, month);
            println!("== {year:04}-{month:02}: Japanese business days ==");
            let mut d = from;
            let mut n = 0;
            while d < next {
                match calendar::closed_reason(d) {
                    None => {
                        n += 1;
                        println!("{}  business day {n}", d.format("%Y-%m-%d %a"));
                    }
                    Some(why) => println!("{}  closed: {why}", d.format("%Y-%m-%d %a")),
                }
                d = d.succ_opt().expect("next day");
            }
            println!("{n} business days");
            println!("deadlines for the month {year:04}-{month:02}:");
            println!(
                "  monthly CSV     {}",
                calendar::deliverable_due(year, month).format("%Y-%m-%d %a")
            );
            println!(
                "  monthly report  {}",
                calendar::monthly_report_due(year, month).format("%Y-%m-%d %a")
            );
            if calendar::is_provisional(year) || calendar::is_provisional(year + 1) {
                println!(
                    "(provisional: holidays after the Cabinet Office list follow the holiday act's rules)"
                );
            }
            Ok(())
        }
        Command::Sql {
            config,
            query,
            format,
            as_of,
        } => {
            let cfg = config.load()?;
            let storage = Storage::open(&cfg.storage_url)?;
            let (ctx, _) = jobs::context_at(&cfg, &storage, &as_of.unwrap_or_default()).await?;
            let batches = jobs::query(&ctx, &query).await?;
            match format {
                SqlFormat::Table => {
                    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?)
                }
                SqlFormat::Csv => jobs::write_csv(
                    std::io::stdout().lock(),
                    &batches,
                    None,
                    csv::Terminator::Any(b'\n'),
                )?,
            }
            Ok(())
        }
        Command::Table { action } => table_command(action).await,
    }
}
