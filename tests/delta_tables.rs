//! The Delta tables over their life: compaction while readers read, time travel that rebuilds a
//! deliverable byte for byte, vacuum that removes only what no snapshot needs, quarantine expiry.

mod support;

use std::path::Path;

use jinryu::config::Config;
use jinryu::ingest::{IngestOptions, ingest};
use jinryu::jobs::{self, AsOf};
use jinryu::sink::delta::Table;
use jinryu::sink::lifecycle;
use jinryu::sink::store::Storage;

/// A file-backed storage with 3 simulated days ingested in many small files per date.
async fn ingested(dir: &Path) -> (Config, Storage, jinryu::simulate::Truth) {
    let mut cfg = Config::chikaho(&format!("file://{}/data", dir.display()));
    cfg.roll.rows = 400;
    let storage = Storage::open(&cfg.storage_url).unwrap();
    let (stream, truth) = support::simulated(3, true);
    let r = ingest(
        &cfg,
        &storage,
        Box::new(std::io::Cursor::new(stream)),
        &IngestOptions::new("three-days"),
    )
    .await
    .unwrap();
    assert_eq!(r.people, truth.people);
    (cfg, storage, truth)
}

async fn people(cfg: &Config, storage: &Storage) -> i64 {
    let ctx = jobs::context(cfg, storage).await.unwrap();
    support::scalar_i64(&ctx, "SELECT SUM(\"count\") FROM aggregates").await
}

async fn verify(cfg: &Config, storage: &Storage, truth: &jinryu::simulate::Truth, as_of: &AsOf) {
    let (ctx, _) = jobs::context_at(cfg, storage, as_of).await.unwrap();
    let v = jinryu::demo::verify(&ctx, cfg, truth).await.unwrap();
    assert!(v.mismatches.is_empty(), "{:#?}", v.mismatches);
}

async fn monthly_csv(cfg: &Config, storage: &Storage, as_of: &AsOf, out: &Path) -> Vec<u8> {
    let (ctx, _) = jobs::context_at(cfg, storage, as_of).await.unwrap();
    let format = jobs::format::Format::long();
    let m = jobs::monthly::write_monthly(&ctx, cfg, 2026, 10, &format, out)
        .await
        .unwrap();
    std::fs::read(&m.csv).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_reading_never_changes_a_count_and_time_travel_rebuilds_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, storage, truth) = ingested(tmp.path()).await;
    let before = lifecycle::files_per_date(&storage, Table::Aggregates)
        .await
        .unwrap();
    assert!(before.values().all(|&n| n > 3), "{before:?}");
    let version_before = jinryu::sink::delta::load(&storage, Table::Aggregates)
        .await
        .unwrap()
        .unwrap()
        .version()
        .unwrap();
    let csv_before = monthly_csv(&cfg, &storage, &AsOf::Latest, &tmp.path().join("m1")).await;

    // Compact every date of both tables while readers keep reading.
    let (s2, dates) = (storage.clone(), before.keys().cloned().collect::<Vec<_>>());
    let compactor = tokio::spawn(async move {
        for d in dates {
            for t in Table::ALL {
                lifecycle::compact_date(&s2, t, &d).await.unwrap();
            }
        }
    });
    let mut reads = 0;
    while !compactor.is_finished() || reads < 3 {
        assert_eq!(
            people(&cfg, &storage).await as u64,
            truth.people,
            "read {reads}"
        );
        reads += 1;
    }
    compactor.await.unwrap();
    let after = lifecycle::files_per_date(&storage, Table::Aggregates)
        .await
        .unwrap();
    assert!(after.values().all(|&n| n == 1), "{after:?}");
    verify(&cfg, &storage, &truth, &AsOf::Latest).await;
    // A compacted date's aggregates are ordered by sensor (`lifecycle::layout`): read by DuckDB in
    // the file's own row order, no row has a sensor that sorts before the row above it.
    for f in active(&tmp.path().join("data"), "aggregates") {
        let text = support::python(
            &["-c".as_ref(), SENSOR_ORDER_PY.as_ref(), f.as_os_str()],
            "DuckDB could not read a compacted file",
        );
        let (bad, sensors) = text.trim().split_once(' ').unwrap();
        assert_eq!(bad, "0", "{}: rows out of sensor order", f.display());
        assert!(
            sensors.parse::<u32>().unwrap() > 1,
            "{}: {text}",
            f.display()
        );
    }

    // The same deliverable after compaction, and rebuilt from the version before it.
    let csv_after = monthly_csv(&cfg, &storage, &AsOf::Latest, &tmp.path().join("m2")).await;
    assert_eq!(csv_after, csv_before);
    let csv_then = monthly_csv(
        &cfg,
        &storage,
        &AsOf::Version(version_before),
        &tmp.path().join("m3"),
    )
    .await;
    assert_eq!(csv_then, csv_before);
    let summary = std::fs::read_to_string(tmp.path().join("m3/2026_10.quality.md")).unwrap();
    assert!(
        summary.contains(&format!("aggregates table version {version_before},")),
        "{summary}"
    );

    // A later run changes today's tables; the old version still gives the old file.
    let extra = "{\"sensor_id\":\"J1-1\",\"ts\":\"2026-10-01T12:00:05+09:00\",\"direction\":\"north\",\"count\":9}\n";
    ingest(
        &cfg,
        &storage,
        Box::new(std::io::Cursor::new(extra.as_bytes().to_vec())),
        &IngestOptions::new("extra"),
    )
    .await
    .unwrap();
    assert_eq!(people(&cfg, &storage).await as u64, truth.people + 9);
    let csv_now = monthly_csv(&cfg, &storage, &AsOf::Latest, &tmp.path().join("m4")).await;
    assert_ne!(csv_now, csv_before);
    let csv_then = monthly_csv(
        &cfg,
        &storage,
        &AsOf::Version(version_before),
        &tmp.path().join("m5"),
    )
    .await;
    assert_eq!(csv_then, csv_before);
}

/// Rows of one Parquet file (argv[1]) whose sensor sorts before the previous row's, in the file's
/// row order, and the number of sensors in it.
const SENSOR_ORDER_PY: &str = r#"
import duckdb, sys
bad, sensors = duckdb.execute("""
  SELECT count(*) FILTER (WHERE prev > sensor_id), count(DISTINCT sensor_id)
  FROM (SELECT sensor_id, lag(sensor_id) OVER (ORDER BY file_row_number) AS prev
        FROM read_parquet(?, file_row_number = true))""", [sys.argv[1]]).fetchone()
print(bad, sensors)
"#;

/// Every file under `root/table`, data files only (not the log).
fn data_files(root: &Path, table: &str) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    let mut stack = vec![root.join(table)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("_delta_log") {
                    stack.push(p);
                }
            } else {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

/// The files the Delta log names as active, read with tests/support/delta_files.py.
fn active(root: &Path, table: &str) -> Vec<std::path::PathBuf> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/delta_files.py");
    support::python(
        &[script.as_ref(), root.join(table).as_os_str()],
        "the Delta log could not be replayed",
    )
    .lines()
    .map(std::path::PathBuf::from)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_removes_only_what_no_snapshot_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, storage, truth) = ingested(tmp.path()).await;
    let root = tmp.path().join("data");
    // A run that died before its commit: files that no commit names.
    {
        let reg = std::sync::Arc::new(cfg.registry.clone());
        let mut w =
            jinryu::sink::writer::SourceWriter::start(storage.clone(), reg, cfg.window.clone(), 0)
                .await
                .unwrap();
        let row = jinryu::window::AggRow {
            sensor: 0,
            direction: 0,
            window_start: 1_790_000_000_000,
            count: 1_000_000,
            events: 1,
            heartbeats: 0,
            faults: 0,
            fault_code: None,
            up: true,
            late: false,
        };
        w.write_epoch(&mut vec![row], &mut Vec::new())
            .await
            .unwrap();
    }
    // Compaction replaces the many files; they stay on disk until vacuumed.
    for d in lifecycle::files_per_date(&storage, Table::Aggregates)
        .await
        .unwrap()
        .keys()
    {
        lifecycle::compact_date(&storage, Table::Aggregates, d)
            .await
            .unwrap();
    }
    let on_disk = data_files(&root, "aggregates");
    let needed = active(&root, "aggregates");
    assert!(
        on_disk.len() > needed.len() + 1,
        "{} on disk, {} active",
        on_disk.len(),
        needed.len()
    );
    assert_eq!(
        people(&cfg, &storage).await as u64,
        truth.people,
        "uncommitted rows are invisible"
    );

    // Younger than the retention: nothing goes.
    let now = chrono::Utc::now().timestamp_millis();
    let v = lifecycle::vacuum(&storage, 3_600_000, false, now)
        .await
        .unwrap();
    assert!(v.files.values().all(|f| f.is_empty()), "{v:?}");
    assert!(
        lifecycle::vacuum(&storage, 60_000, false, now)
            .await
            .is_err(),
        "retention under 1h"
    );

    // Two hours later: everything that no commit needs goes, nothing else.
    let later = now + 7_200_000;
    let dry = lifecycle::vacuum(&storage, 3_600_000, true, later)
        .await
        .unwrap();
    assert_eq!(
        data_files(&root, "aggregates"),
        on_disk,
        "a dry run deleted files"
    );
    let v = lifecycle::vacuum(&storage, 3_600_000, false, later)
        .await
        .unwrap();
    assert_eq!(v.files["aggregates"].len(), dry.files["aggregates"].len());
    assert_eq!(v.files["aggregates"].len(), on_disk.len() - needed.len());
    let left = data_files(&root, "aggregates");
    assert_eq!(left, needed, "exactly the active files remain");
    verify(&cfg, &storage, &truth, &AsOf::Latest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_quarantine_dates_expire_and_aggregates_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, storage, truth) = ingested(tmp.path()).await;
    let count = |sql: &'static str| {
        let (cfg, storage) = (cfg.clone(), storage.clone());
        async move {
            let ctx = jobs::context(&cfg, &storage).await.unwrap();
            support::scalar_i64(&ctx, sql).await
        }
    };
    let q = "SELECT COUNT(*) FROM quarantine";
    assert_eq!(count(q).await as u64, truth.malformed);
    let now = chrono::Utc::now().timestamp_millis();
    assert!(
        lifecycle::expire_quarantine(&cfg, &storage, now)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(count(q).await as u64, truth.malformed);
    let later = now + cfg.retention.quarantine_ms + 2 * 86_400_000;
    let gone = lifecycle::expire_quarantine(&cfg, &storage, later)
        .await
        .unwrap();
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(count(q).await, 0);
    assert_eq!(people(&cfg, &storage).await as u64, truth.people);
}

/// The rows of `table` (a registered name), every column as text, in one order: the same
/// whichever provider serves the table and whatever Arrow types it yields.
fn all_rows_sql(table: &str, filter: &str) -> String {
    format!(
        "SELECT CAST(date AS VARCHAR) AS d, CAST(sensor_id AS VARCHAR) AS s, \
         CAST(direction AS VARCHAR) AS dir, CAST(to_unixtime(window_start) AS BIGINT) AS w, \
         \"count\" AS c, events AS e, heartbeats AS h, faults AS f, \
         CAST(fault_code AS VARCHAR) AS fc, up AS u, late AS l \
         FROM {table} {filter} ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11"
    )
}

async fn text_of(ctx: &datafusion::prelude::SessionContext, sql: &str) -> String {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

/// `jinryu sql` reads the aggregates through its own scan of the snapshot's files
/// (`jobs::scan`): it must give delta-rs's answers row for row — at the latest version and at an
/// older one, after compaction replaced files — and prune: a `date` filter keeps only that date's
/// files in the plan, a time filter skips files by their Delta statistics without opening them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scan_answers_as_delta_rs_and_prunes_by_date_and_statistics() {
    use jinryu::sink::delta;
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, storage, _) = ingested(tmp.path()).await;
    let first = delta::load(&storage, Table::Aggregates)
        .await
        .unwrap()
        .unwrap();
    let old = first.version().unwrap();
    let dates: Vec<String> = lifecycle::files_per_date(&storage, Table::Aggregates)
        .await
        .unwrap()
        .into_keys()
        .collect();
    assert_eq!(dates.len(), 3, "{dates:?}");
    lifecycle::compact_date(&storage, Table::Aggregates, &dates[1])
        .await
        .unwrap();

    let filters = [
        String::new(),
        format!("WHERE date = '{}'", dates[1]),
        "WHERE sensor_id = 'J2-3' AND direction = 'south'".to_string(),
        format!(
            "WHERE window_start >= TIMESTAMP '{}T12:00:00+09:00'",
            dates[2]
        ),
        "WHERE \"count\" > 20 OR NOT up".to_string(),
    ];
    for as_of in [AsOf::Latest, AsOf::Version(old)] {
        let (ctx, _) = jobs::context_at(&cfg, &storage, &as_of).await.unwrap();
        let loaded = match &as_of {
            AsOf::Version(v) => delta::load_version(&storage, Table::Aggregates, *v)
                .await
                .unwrap(),
            _ => delta::load(&storage, Table::Aggregates)
                .await
                .unwrap()
                .unwrap(),
        };
        loaded.update_datafusion_session(&ctx.state()).unwrap();
        ctx.register_table("by_delta_rs", loaded.table_provider().await.unwrap())
            .unwrap();
        for f in &filters {
            let ours = text_of(&ctx, &all_rows_sql("aggregates", f)).await;
            let theirs = text_of(&ctx, &all_rows_sql("by_delta_rs", f)).await;
            assert!(ours.lines().count() > 5, "{as_of:?} {f}: {ours}");
            let differ = ours.lines().zip(theirs.lines()).find(|(a, b)| a != b);
            assert!(
                differ.is_none() && ours.lines().count() == theirs.lines().count(),
                "{as_of:?} {f}: first difference {differ:?}, {} rows against {}",
                ours.lines().count(),
                theirs.lines().count()
            );
        }
    }

    let ctx = jobs::context(&cfg, &storage).await.unwrap();
    // The dates the scheduler's jobs cover come from the file list: the same as a scan's.
    let listed: Vec<String> = jobs::dates_with_data(&ctx)
        .unwrap()
        .iter()
        .map(|d| d.to_string())
        .collect();
    let scanned = jinryu::jobs::query(
        &ctx,
        "SELECT DISTINCT CAST(date AS VARCHAR) AS d FROM aggregates ORDER BY d",
    )
    .await
    .unwrap();
    let scanned: Vec<String> = scanned
        .iter()
        .flat_map(|b| {
            let t = jobs::text(b, 0);
            (0..b.num_rows())
                .map(|i| t.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(listed, scanned);
    assert_eq!(listed, dates);
    // Date filters are applied to the files alone (nothing re-checks the rows), so they must
    // follow SQL's WHERE: a NULL result keeps nothing, an IN list keeps exactly its dates.
    let none = support::scalar_i64(
        &ctx,
        "SELECT COUNT(*) FROM aggregates \
         WHERE date NOT IN ('2000-01-01', '2000-01-02', '2000-01-03', '2000-01-04', NULL)",
    )
    .await;
    assert_eq!(none, 0);
    let count_on = |d: &str| format!("SELECT COUNT(*) FROM aggregates WHERE date = '{d}'");
    let two = support::scalar_i64(
        &ctx,
        &format!(
            "SELECT COUNT(*) FROM aggregates WHERE date IN ('{}', '{}', 'x', 'y', 'z')",
            dates[0], dates[2]
        ),
    )
    .await;
    let (first, last) = (
        support::scalar_i64(&ctx, &count_on(&dates[0])).await,
        support::scalar_i64(&ctx, &count_on(&dates[2])).await,
    );
    assert!(first > 0 && last > 0);
    assert_eq!(two, first + last);
    // Partition pruning: the plan names only the filtered date's files.
    let plan = text_of(
        &ctx,
        &format!(
            "EXPLAIN SELECT SUM(\"count\") FROM aggregates WHERE date = '{}'",
            dates[1]
        ),
    )
    .await;
    assert!(plan.contains(&format!("date={}/", dates[1])), "{plan}");
    for d in [&dates[0], &dates[2]] {
        assert!(!plan.contains(&format!("date={d}/")), "{plan}");
    }
    // Statistics pruning: of the last date's many files (written in arrival order, each a slice
    // of the day), those ending before noon are skipped unopened.
    let plan = text_of(
        &ctx,
        &format!(
            "EXPLAIN ANALYZE SELECT SUM(\"count\") FROM aggregates \
             WHERE window_start >= TIMESTAMP '{}T12:00:00+09:00'",
            dates[2]
        ),
    )
    .await;
    let pruned = plan
        .split("files_ranges_pruned_statistics=")
        .nth(1)
        .and_then(|s| s.split(" matched").next())
        .unwrap_or_else(|| panic!("no file pruning metrics: {plan}"));
    let (total, kept) = pruned.split_once(" total → ").unwrap();
    let (total, kept): (u64, u64) = (total.parse().unwrap(), kept.parse().unwrap());
    assert!(kept > 0 && kept < total / 2, "{pruned}");

    // Eager aggregation (`jobs::eager_aggregation`): the analysts' join with the registry is
    // summed per date and sensor below the join. `SUM(count + 0)` is the same sum, left to
    // DataFusion's plan (the rule takes plain columns only): both must agree, for all arrays and
    // for one, whose join still hands its dynamic filter to the scan.
    for filter in ["", "WHERE s.array = 'J2'"] {
        let sql = |sum: &str| {
            format!(
                "SELECT CAST(a.date AS VARCHAR) AS d, CAST(s.array AS VARCHAR) AS arr, {sum} AS n \
                 FROM aggregates a JOIN sensors s ON a.sensor_id = s.sensor_id {filter} \
                 GROUP BY a.date, s.array ORDER BY d, arr"
            )
        };
        let eager = text_of(&ctx, &sql("SUM(a.\"count\")")).await;
        let plain = text_of(&ctx, &sql("SUM(a.\"count\" + 0)")).await;
        assert!(eager.lines().count() > 4, "{eager}");
        assert_eq!(eager, plain);
        let plan = text_of(&ctx, &format!("EXPLAIN {}", sql("SUM(a.\"count\")"))).await;
        assert!(plan.contains("__eager_0"), "{plan}");
        assert!(plan.contains("predicate=DynamicFilter"), "{plan}");
        let plan = text_of(&ctx, &format!("EXPLAIN {}", sql("SUM(a.\"count\" + 0)"))).await;
        assert!(!plan.contains("__eager_"), "{plan}");
    }

    // The partial aggregate's lookups (`jobs::partial_aggregation`) on the stored windows: the
    // busiest windows (one timestamp key: the cache) and the daily totals per array (date and
    // sensor below the join: runs) must equal DataFusion's own plan — forced here by an
    // aggregate filter that keeps every row (`count` is never negative), which the operator
    // leaves alone.
    let queries = [
        "SELECT CAST(a.window_start AS BIGINT) AS w, SUM(a.\"count\") {f} AS n \
         FROM aggregates a GROUP BY a.window_start ORDER BY n DESC, w LIMIT 50",
        "SELECT CAST(a.date AS VARCHAR) AS d, CAST(s.array AS VARCHAR) AS arr, \
         SUM(a.\"count\") {f} AS n FROM aggregates a JOIN sensors s ON a.sensor_id = s.sensor_id \
         GROUP BY a.date, s.array ORDER BY d, arr",
    ];
    let cache = "keys=cache, key_cast=on_emit";
    for (sql, keys) in queries.iter().zip([cache, "keys=runs"]) {
        let ours = sql.replace("{f}", "");
        let plain = sql.replace("{f}", "FILTER (WHERE a.\"count\" >= 0)");
        let got = text_of(&ctx, &ours).await;
        assert!(got.lines().count() > 5, "{got}");
        assert_eq!(got, text_of(&ctx, &plain).await, "{ours}");
        let plan = text_of(&ctx, &format!("EXPLAIN {ours}")).await;
        assert!(plan.contains("PartialAggregateExec: gby"), "{plan}");
        assert!(plan.contains(keys), "{plan}");
        if keys == "keys=runs" {
            // The eager aggregate below the join, not only the one above it.
            assert!(plan.contains("aggr=[__eager_0], keys=runs"), "{plan}");
        } else {
            // The scan yields the windows as stored (µs), not cast row by row to the view's ms.
            let scan = plan.lines().find(|l| l.contains("DataSourceExec")).unwrap();
            assert!(scan.contains("as __stored_window_start"), "{plan}");
            assert!(!scan.contains("CAST(window_start"), "{plan}");
        }
        let plan = text_of(&ctx, &format!("EXPLAIN {plain}")).await;
        assert!(!plan.contains("PartialAggregateExec: gby"), "{plan}");
    }
}

/// A table this scan does not understand (here: deletion vectors, reader protocol 3) is read
/// through delta-rs instead of being guessed at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_newer_reader_features_is_read_through_delta_rs() {
    use jinryu::sink::delta;
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, storage, truth) = ingested(tmp.path()).await;
    let t = delta::load(&storage, Table::Aggregates)
        .await
        .unwrap()
        .unwrap();
    let url = datafusion::execution::object_store::ObjectStoreUrl::parse(
        jinryu::sink::store::DATAFUSION_URL,
    )
    .unwrap();
    assert!(
        jobs::scan::DeltaFiles::try_new(Table::Aggregates, &t, url.clone())
            .unwrap()
            .is_some()
    );
    let t = t
        .set_tbl_properties()
        .with_properties(
            [(
                "delta.enableDeletionVectors".to_string(),
                "true".to_string(),
            )]
            .into(),
        )
        .await
        .unwrap();
    assert!(
        jobs::scan::DeltaFiles::try_new(Table::Aggregates, &t, url)
            .unwrap()
            .is_none()
    );
    assert_eq!(people(&cfg, &storage).await as u64, truth.people);
}
