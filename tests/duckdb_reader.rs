//! An independent reader agrees: DuckDB (the Python package `.ci/run` installs) reads the Parquet
//! files that the Delta log lists as active (`tests/support/delta_files.py` replays the log with
//! no Delta library) — Hive partitions, UTC timestamps, additive rows — and gets the simulator's
//! truth.

mod support;

use jinryu::config::Config;
use jinryu::ingest::{IngestOptions, ingest};
use jinryu::simulate::{self, Simulator};
use jinryu::sink::store::Storage;

#[tokio::test]
async fn duckdb_reads_our_parquet_and_agrees_with_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = Config::chikaho(&format!("file://{}", data.display()));
    let storage = Storage::open(&cfg.storage_url).unwrap();
    let mut opts = simulate::options(2026, 11);
    opts.days = Some(3);
    let sim = Simulator::new(&cfg, opts);
    let truth = sim.truth();
    let report = ingest(&cfg, &storage, Box::new(sim), &IngestOptions::new("duck"))
        .await
        .unwrap();
    let truth = truth.lock().unwrap().clone();
    assert!(report.balanced());
    assert_eq!(report.people, truth.people);

    let script = r#"
import duckdb, sys
sys.path.insert(0, sys.argv[2])
from delta_files import active_files
files = active_files(sys.argv[1] + "/aggregates")
assert files, "the log lists no files"
con = duckdb.connect()
rows = con.execute(f"""
    SELECT sensor_id, direction, epoch_ms(window_start) AS ws, SUM("count") AS people, BOOL_OR(up) AS up
    FROM read_parquet({files!r}, hive_partitioning = true)
    GROUP BY ALL ORDER BY ALL
""").fetchall()
for r in rows:
    print(f"{r[0]},{r[1]},{r[2]},{r[3]},{int(r[4])}")
dates = con.execute(f"""
    SELECT DISTINCT CAST(date AS VARCHAR) = strftime(window_start AT TIME ZONE 'Asia/Tokyo', '%Y-%m-%d')
    FROM read_parquet({files!r}, hive_partitioning = true)
""").fetchall()
print("date-partitions-match-local-dates", dates)
"#;
    let text = support::python(
        &[
            "-c".as_ref(),
            script.as_ref(),
            data.as_os_str(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support").as_ref(),
        ],
        "DuckDB could not read the tables (is the duckdb Python package installed? `pip install duckdb`)",
    );
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.pop(),
        Some("date-partitions-match-local-dates [(True,)]")
    );
    let reg = &cfg.registry;
    let mut duck_people = 0u64;
    let mut live_keys = 0usize;
    for line in &lines {
        let f: Vec<&str> = line.split(',').collect();
        let s = reg.lookup(f[0]).unwrap();
        let d = reg.direction(s, f[1]).unwrap();
        let ws: i64 = f[2].parse().unwrap();
        let people: u64 = f[3].parse().unwrap();
        let up = f[4] == "1";
        assert_eq!(up, truth.live.contains(&(s, ws)), "{line}");
        assert_eq!(
            people,
            truth.counts.get(&(s, d, ws)).copied().unwrap_or(0),
            "{line}"
        );
        duck_people += people;
        live_keys += usize::from(up);
    }
    assert_eq!(duck_people, truth.people);
    assert_eq!(live_keys, truth.live.len() * 2);
    assert!(
        truth.people > 100_000,
        "three simulated days carry real traffic"
    );
}
