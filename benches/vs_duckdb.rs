//! jinryu and DuckDB side by side, in one run, on the same inputs: wall time and peak memory of
//! each, and their ratio (jinryu ÷ DuckDB: below 1 is jinryu faster / smaller). Alternating runs
//! on the same machine, so a noisy neighbour slows both and the ratio stays meaningful.
//!
//! Cases (all 1,000 sensors × north/south, `jinryu::simulate::load`):
//!
//! * `ingest-1d`, `ingest-30d` — 10 M JSON lines over one day / over 30 days (17× the windows):
//!   `jinryu ingest` into the Delta tables against DuckDB's `read_json` + `GROUP BY` into Parquet.
//! * `monthly` — the 30-day table's month (2026-11) as the long CSV (LF line ends, `[report] pdf
//!   = "off"`): `jinryu monthly` against a DuckDB query that builds the same dense grid (every
//!   sensor × direction × window: count, missing or closed) from the table's Parquet files and
//!   writes the same CSV. The two files must be identical, byte for byte.
//! * `q-daily-arrays`, `q-one-sensor`, `q-busiest` — analysts' queries over a year (2025) of the
//!   1,000 sensors, written as two files per date and then compacted by `jinryu table compact`
//!   (one file per date): `jinryu sql` against DuckDB over the same Parquet files. The answers
//!   must be equal.
//!
//! DuckDB reads the Parquet files directly (`read_parquet('…/date=*/*.parquet', hive_partitioning)`):
//! right here because every file in the table's folders is live (the year is vacuumed after its
//! compaction). DuckDB is the Python package `.ci/setup` installs; its process start (~0.1 s)
//! counts, as jinryu's does.
//!
//! Run: `cargo bench --bench vs_duckdb` (release binary). `JINRYU_BENCH_CASES=ingest-30d,monthly`
//! picks cases, `JINRYU_BENCH_RUNS` the runs per tool (default 3), `JINRYU_BENCH_BIN` another
//! jinryu binary (an older build, for before/after). Inputs are generated once into
//! $TMPDIR/jinryu-vs-duckdb/ and reused. Figures: BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use jinryu::simulate::load::{self, DAY_MS};

/// 2026-11-01T00:00:00+09:00: the 30-day input is the month of November 2026.
const NOV_2026_MS: i64 = 1_793_458_800_000;
/// 2025-01-01T00:00:00+09:00: the analysts' year.
const JAN_2025_MS: i64 = 1_735_657_200_000;
const SENSORS: usize = 1000;
const EVENTS: u64 = 10_000_000;

/// One measured process: wall time and its own peak RSS (GNU time's report).
#[derive(Debug, Clone, Copy)]
struct Measured {
    secs: f64,
    rss_mb: f64,
}

/// Runs `program args` under GNU time, which forks it from a small process: its peak RSS is its
/// own. (A child spawned straight from this bench would report at least the bench's own peak —
/// Linux carries it into the child's `ru_maxrss` — and the bench holds CSVs and a year of rows.)
fn measure(program: &Path, args: &[&str], log: &Path) -> Measured {
    let out = std::fs::File::create(log).expect("log file");
    let err = std::fs::File::create(log.with_extension("err")).expect("log file");
    let rss = log.with_extension("rss");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "%M", "-o"])
        .arg(&rss)
        .arg(program)
        .args(args)
        .env("JINRYU_LOG", "warn")
        .stdout(out)
        .stderr(err);
    let t = Instant::now();
    let status = cmd
        .status()
        .expect("start /usr/bin/time (Debian package `time`)");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        status.success(),
        "{cmd:?} failed:\n{}",
        std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
    );
    let kb: f64 = std::fs::read_to_string(&rss)
        .expect("GNU time's report")
        .trim()
        .parse()
        .expect("peak RSS in KB");
    Measured {
        secs,
        rss_mb: kb / 1024.0,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs both tools `runs` times, alternating, and prints one table row.
fn compare(
    case: &str,
    runs: usize,
    mut jinryu: impl FnMut() -> Measured,
    mut duckdb: impl FnMut() -> Measured,
) {
    let (mut j, mut d) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        j.push(jinryu());
        d.push(duckdb());
    }
    let jt = median(j.iter().map(|m| m.secs).collect());
    let dt = median(d.iter().map(|m| m.secs).collect());
    let jr = j.iter().map(|m| m.rss_mb).fold(0.0, f64::max);
    let dr = d.iter().map(|m| m.rss_mb).fold(0.0, f64::max);
    let range = |v: &[Measured]| {
        let s: Vec<f64> = v.iter().map(|m| m.secs).collect();
        format!(
            "{:.2}–{:.2}",
            s.iter().copied().fold(f64::MAX, f64::min),
            s.iter().copied().fold(0.0, f64::max)
        )
    };
    println!(
        "| {case} | {} s | {:.0} MB | {} s | {:.0} MB | **{:.2}×** | {:.2}× |",
        range(&j),
        jr,
        range(&d),
        dr,
        jt / dt,
        jr / dr
    );
}

struct Bench {
    dir: PathBuf,
    bin: PathBuf,
    runs: usize,
}

impl Bench {
    fn config(&self, name: &str, data: &Path) -> PathBuf {
        let mut toml = load::config_toml(SENSORS, &format!("file://{}", data.display()));
        // JINRYU_BENCH_NO_REPORT: a build from before `[report]` existed (it printed no PDF).
        if std::env::var_os("JINRYU_BENCH_NO_REPORT").is_none() {
            toml.push_str("[report]\npdf = \"off\"\n");
        }
        let path = self.dir.join(name);
        std::fs::write(&path, toml).expect("config");
        path
    }

    fn input(&self, days: u32, start_ms: i64) -> PathBuf {
        let path = self.dir.join(format!("events-{EVENTS}-{days}d.jsonl"));
        if !path.exists() {
            let cfg = load::config(SENSORS, "memory://");
            let tmp = path.with_extension("tmp");
            let f =
                std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).unwrap());
            load::write_events_over(f, &cfg, EVENTS, start_ms, days).expect("generate");
            std::fs::rename(&tmp, &path).expect("rename");
        }
        path
    }

    fn jinryu(&self, args: &[&str], log: &str) -> Measured {
        measure(&self.bin, args, &self.dir.join(log))
    }

    fn duckdb(&self, args: &[&str], log: &str) -> Measured {
        let script = self.dir.join("duck.py");
        let args: Vec<&str> = std::iter::once(s(&script))
            .chain(args.iter().copied())
            .collect();
        measure(Path::new("python3"), &args, &self.dir.join(log))
    }

    /// Ingest of 10 M lines over `days` days; leaves jinryu's tables in `data-<days>d`.
    fn ingest(&self, days: u32, start_ms: i64) -> PathBuf {
        let input = self.input(days, start_ms);
        let data = self.dir.join(format!("data-{days}d"));
        let cfg = self.config(&format!("ingest-{days}d.toml"), &data);
        let out = self.dir.join(format!("duck-{days}d.parquet"));
        compare(
            &format!("ingest, 10 M events, {days} day(s)"),
            self.runs,
            || {
                let _ = std::fs::remove_dir_all(&data);
                let m = self.jinryu(
                    &[
                        "ingest",
                        "--json",
                        "--config",
                        s(&cfg),
                        "--input",
                        s(&input),
                    ],
                    "jinryu-ingest.log",
                );
                let report: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(self.dir.join("jinryu-ingest.log")).unwrap(),
                )
                .expect("ingest report");
                assert_eq!(report["lines"].as_u64(), Some(EVENTS));
                assert_eq!(report["quarantined"].as_u64(), Some(0));
                m
            },
            || {
                let _ = std::fs::remove_file(&out);
                self.duckdb(&["ingest", s(&input), s(&out)], "duck-ingest.log")
            },
        );
        data
    }

    fn monthly(&self, data: &Path) {
        let cfg = self.config("monthly.toml", data);
        let format = self.dir.join("long-lf.toml");
        std::fs::write(
            &format,
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/formats/long.toml"))
                .unwrap()
                .replace("line_ending = \"crlf\"", "line_ending = \"lf\"")
                .replace("name = \"long\"", "name = \"long-lf\""),
        )
        .unwrap();
        let (jout, dout) = (
            self.dir.join("monthly-jinryu"),
            self.dir.join("monthly-duck.csv"),
        );
        compare(
            "monthly 2026-11 (5.76 M cells)",
            self.runs,
            || {
                let _ = std::fs::remove_dir_all(&jout);
                self.jinryu(
                    &[
                        "monthly",
                        "--config",
                        s(&cfg),
                        "--month",
                        "2026-11",
                        "--format",
                        s(&format),
                        "--out",
                        s(&jout),
                    ],
                    "jinryu-monthly.log",
                )
            },
            || {
                let _ = std::fs::remove_file(&dout);
                self.duckdb(&["monthly", s(data), s(&dout)], "duck-monthly.log")
            },
        );
        let (a, b) = (
            std::fs::read(jout.join("2026_11.csv")).unwrap(),
            std::fs::read(&dout).unwrap(),
        );
        if a != b {
            let (la, lb): (Vec<_>, Vec<_>) = (
                a.split(|c| *c == b'\n').collect(),
                b.split(|c| *c == b'\n').collect(),
            );
            let i = (0..la.len().min(lb.len()))
                .find(|&i| la[i] != lb[i])
                .unwrap_or(0);
            panic!(
                "the two monthly CSVs differ ({} and {} lines), first at line {}:\n jinryu: {}\n duckdb: {}",
                la.len(),
                lb.len(),
                i + 1,
                String::from_utf8_lossy(la.get(i).copied().unwrap_or_default()),
                String::from_utf8_lossy(lb.get(i).copied().unwrap_or_default())
            );
        }
    }

    /// A year of windows (2025) for the 1,000 sensors, two files per date (morning, afternoon),
    /// then `jinryu table compact`. Built once and reused.
    fn year(&self) -> PathBuf {
        let data = self.dir.join("data-year");
        let ready = self.dir.join("data-year.ready");
        if ready.exists() {
            return data;
        }
        let _ = std::fs::remove_dir_all(&data);
        let cfg_path = self.config("year.toml", &data);
        let cfg = jinryu::config::Config::load(&cfg_path).expect("config");
        let t = Instant::now();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let storage = jinryu::sink::store::Storage::open(&cfg.storage_url).unwrap();
            let registry = std::sync::Arc::new(cfg.registry.clone());
            let mut w = jinryu::sink::writer::SourceWriter::start(
                storage,
                registry.clone(),
                cfg.window.clone(),
                JAN_2025_MS + 400 * DAY_MS,
            )
            .await
            .unwrap();
            let mut rows = Vec::new();
            for half in 0..365 * 2 {
                let from = JAN_2025_MS + half * DAY_MS / 2;
                year_rows(from, registry.len() as u32, &mut rows);
                w.write_epoch(&mut rows, &mut Vec::new()).await.unwrap();
            }
            w.finish("year", 0, serde_json::json!({})).await.unwrap();
        });
        println!("year written in {:.0} s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let m = self.jinryu(
            &["table", "compact", "--config", s(&cfg_path)],
            "compact.log",
        );
        println!(
            "year compacted by `jinryu table compact` in {:.0} s, peak RSS {:.0} MB",
            t.elapsed().as_secs_f64(),
            m.rss_mb
        );
        // DuckDB reads the folders, not the log: the files compaction replaced are deleted
        // (vacuum with its clock moved past the shortest retention it allows).
        let vacuumed = rt.block_on(async {
            use jinryu::sink::lifecycle::{MIN_FILE_RETENTION_MS, vacuum};
            let storage = jinryu::sink::store::Storage::open(&cfg.storage_url).unwrap();
            let later = chrono::Utc::now().timestamp_millis() + 2 * MIN_FILE_RETENTION_MS;
            vacuum(&storage, MIN_FILE_RETENTION_MS, false, later)
                .await
                .unwrap()
        });
        println!(
            "replaced files vacuumed: {}",
            vacuumed.files.values().map(Vec::len).sum::<usize>()
        );
        std::fs::write(&ready, "").unwrap();
        data
    }

    fn queries(&self, data: &Path) {
        let cfg = self.config("year.toml", data);
        for (name, label) in [
            ("q-daily-arrays", "daily totals per array, a year"),
            ("q-one-sensor", "one sensor's year, per window"),
            ("q-busiest", "the year's 20 busiest windows"),
        ] {
            let sql = jinryu_query(name);
            let (jout, dout) = (
                self.dir.join(format!("{name}-jinryu.csv")),
                self.dir.join(format!("{name}-duck.csv")),
            );
            compare(
                label,
                self.runs,
                || {
                    self.jinryu(
                        &["sql", "--config", s(&cfg), "--format", "csv", sql],
                        &format!("{name}-jinryu.csv"),
                    )
                },
                || self.duckdb(&["query", name, s(data), s(&dout)], "duck-query.log"),
            );
            let (a, b) = (
                std::fs::read_to_string(&jout).unwrap(),
                std::fs::read_to_string(&dout).unwrap(),
            );
            assert_eq!(
                a.lines().skip(1).collect::<Vec<_>>(),
                b.lines().skip(1).collect::<Vec<_>>(),
                "{name}: the two answers differ"
            );
        }
        // What DataFusion does with them: partition values and file statistics.
        for name in ["q-one-sensor", "q-busiest"] {
            let out = Command::new(&self.bin)
                .args([
                    "sql",
                    "--config",
                    s(&cfg),
                    &format!("EXPLAIN ANALYZE {}", jinryu_query(name)),
                ])
                .env("JINRYU_LOG", "warn")
                .output()
                .unwrap();
            std::fs::write(self.dir.join(format!("{name}.explain.txt")), &out.stdout).unwrap();
        }
    }
}

/// The analysts' queries as written for `jinryu sql` (the same in DuckDB: duck.py).
fn jinryu_query(name: &str) -> &'static str {
    match name {
        "q-daily-arrays" => {
            "SELECT a.date, s.array, SUM(a.count) AS people FROM aggregates a \
             JOIN sensors s ON a.sensor_id = s.sensor_id GROUP BY a.date, s.array ORDER BY a.date, s.array"
        }
        "q-one-sensor" => {
            "SELECT CAST(window_start AS BIGINT) AS window_ms, direction, SUM(count) AS people \
             FROM aggregates WHERE sensor_id = 'S0042' GROUP BY window_start, direction \
             ORDER BY window_ms, direction"
        }
        "q-busiest" => {
            "SELECT CAST(window_start AS BIGINT) AS window_ms, SUM(count) AS people FROM aggregates \
             GROUP BY window_start ORDER BY people DESC, window_ms LIMIT 20"
        }
        _ => unreachable!(),
    }
}

/// Half a day of windows from `from`: every sensor live in every window (heartbeats at night),
/// a count shaped like a walkway's day (peaks at 8:00 and 18:00) with a per-sensor factor.
fn year_rows(from: i64, sensors: u32, out: &mut Vec<jinryu::window::AggRow>) {
    let mut x: u64 = from as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for w in 0..48 {
        let ws = from + w * 900_000;
        let hour = ((ws + 9 * 3_600_000).rem_euclid(DAY_MS)) as f64 / 3_600_000.0;
        let shape = 2.0
            + 30.0 * (-(hour - 8.0).powi(2) / 2.0).exp()
            + 25.0 * (-(hour - 18.0).powi(2) / 3.0).exp();
        for s in 0..sensors {
            for d in 0..2u8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let count = (shape * (0.5 + (s % 7) as f64 / 7.0) + (x % 5) as f64) as u64;
                out.push(jinryu::window::AggRow {
                    sensor: s,
                    direction: d,
                    window_start: ws,
                    count,
                    events: count,
                    heartbeats: 1,
                    faults: 0,
                    fault_code: None,
                    up: true,
                    late: false,
                });
            }
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("vs_duckdb: run with `cargo bench --bench vs_duckdb`");
        return;
    }
    let cases = std::env::var("JINRYU_BENCH_CASES")
        .unwrap_or_else(|_| "ingest-1d,ingest-30d,monthly,queries".into());
    let want = |c: &str| cases.split(',').any(|x| x.trim() == c);
    let dir = std::env::temp_dir().join("jinryu-vs-duckdb");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("duck.py"), DUCK_PY).unwrap();
    let bench = Bench {
        dir,
        // JINRYU_BENCH_BIN: another build of jinryu (the "before" of a before/after table).
        bin: std::env::var_os("JINRYU_BENCH_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_jinryu")),
            PathBuf::from,
        ),
        runs: std::env::var("JINRYU_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3),
    };
    let duck = Command::new("python3")
        .args(["-c", "import duckdb; print(duckdb.__version__)"])
        .output()
        .expect("python3");
    println!(
        "jinryu {} vs DuckDB {} — {} run(s) each, alternating; times: range; RSS: largest; ratio: median time and RSS, jinryu ÷ DuckDB\n",
        env!("CARGO_PKG_VERSION"),
        String::from_utf8_lossy(&duck.stdout).trim(),
        bench.runs
    );
    println!("| case | jinryu | jinryu RSS | DuckDB | DuckDB RSS | time ratio | RSS ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    if want("ingest-1d") {
        bench.ingest(1, NOV_2026_MS);
    }
    if want("ingest-30d") || want("monthly") {
        let data = if want("ingest-30d") || !bench.dir.join("data-30d").exists() {
            bench.ingest(30, NOV_2026_MS)
        } else {
            bench.dir.join("data-30d")
        };
        if want("monthly") {
            bench.monthly(&data);
        }
    }
    if want("queries") {
        let data = bench.year();
        bench.queries(&data);
    }
}

/// DuckDB's side of each case.
const DUCK_PY: &str = r#"
import sys, duckdb
con = duckdb.connect()
case = sys.argv[1]
if case == "ingest":
    src, out = sys.argv[2], sys.argv[3]
    con.execute(f"""
      COPY (
        SELECT sensor_id, direction, time_bucket(INTERVAL 15 MINUTE, ts) AS window_start,
               SUM("count") AS "count", COUNT(*) AS events
        FROM read_json('{src}', format = 'newline_delimited',
             columns = {{sensor_id: 'VARCHAR', ts: 'TIMESTAMPTZ', direction: 'VARCHAR',
                        "count": 'BIGINT', seq: 'UBIGINT', kind: 'VARCHAR', status: 'VARCHAR'}})
        GROUP BY ALL
      ) TO '{out}' (FORMAT parquet)""")
elif case == "monthly":
    data, out = sys.argv[2], sys.argv[3]
    con.execute("SET TimeZone = 'Asia/Tokyo'")
    con.execute(f"""
      COPY (
        WITH w AS (
          SELECT row_number() OVER (ORDER BY ws) AS ord, ws,
                 hour(ws) * 60 + minute(ws) AS m
          FROM generate_series(TIMESTAMPTZ '2026-11-01 00:00:00+09', TIMESTAMPTZ '2026-11-30 23:45:00+09',
                               INTERVAL 15 MINUTE) t(ws)),
        s AS (SELECT i AS sensor_ord, printf('S%04d', i) AS sensor_id, printf('A%03d', i // 10) AS "array"
              FROM range(1000) r(i)),
        d AS (SELECT * FROM (VALUES (0, 'north'), (1, 'south')) v(direction_ord, direction)),
        f AS (SELECT sensor_id, direction, window_start, SUM("count") AS "count", BOOL_OR(up) AS up
              FROM read_parquet('{data}/aggregates/date=*/*.parquet', hive_partitioning = true)
              WHERE date BETWEEN '2026-11-01' AND '2026-11-30'
              GROUP BY ALL)
        SELECT strftime(w.ws, '%Y-%m-%d') AS date, strftime(w.ws, '%H:%M') AS time, s.sensor_id,
               s."array", d.direction,
               CASE WHEN w.m >= 46 AND w.m + 15 <= 344 THEN NULL WHEN f.up THEN f."count" END AS "count",
               CASE WHEN w.m >= 46 AND w.m + 15 <= 344 THEN 'closed' WHEN f.up THEN 'ok' ELSE 'missing' END AS status
        FROM w CROSS JOIN s CROSS JOIN d
        LEFT JOIN f ON f.sensor_id = s.sensor_id AND f.direction = d.direction AND f.window_start = w.ws
        ORDER BY w.ord, s.sensor_ord, d.direction_ord
      ) TO '{out}' (FORMAT csv, HEADER)""")
elif case == "query":
    name, data, out = sys.argv[2], sys.argv[3], sys.argv[4]
    src = f"read_parquet('{data}/aggregates/date=*/*.parquet', hive_partitioning = true)"
    sql = {
      "q-daily-arrays": f"""SELECT a.date, s."array", SUM(a."count") AS people FROM {src} a
          JOIN (SELECT printf('S%04d', i) AS sensor_id, printf('A%03d', i // 10) AS "array" FROM range(1000) r(i)) s
          ON a.sensor_id = s.sensor_id GROUP BY a.date, s."array" ORDER BY a.date, s."array" """,
      "q-one-sensor": f"""SELECT epoch_ms(window_start) AS window_ms, direction, SUM("count") AS people
          FROM {src} WHERE sensor_id = 'S0042' GROUP BY window_start, direction ORDER BY window_ms, direction""",
      "q-busiest": f"""SELECT epoch_ms(window_start) AS window_ms, SUM("count") AS people FROM {src}
          GROUP BY window_start ORDER BY people DESC, window_ms LIMIT 20""",
    }[name]
    con.execute(f"COPY ({sql}) TO '{out}' (FORMAT csv, HEADER)")
"#;
