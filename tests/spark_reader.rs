//! An existing distributed engine reads our tables as they are: Apache Spark (pyspark with the
//! delta-spark jars, local mode, started here) reads `aggregates` and `quarantine` after runs,
//! a replacing re-run and a compaction, and returns the same per-date totals, row counts and
//! versions as jinryu's own SQL. `.ci/setup` installs pyspark and delta-spark.

mod support;

use jinryu::config::Config;
use jinryu::ingest::{IngestOptions, ingest};
use jinryu::sink::delta::Table;
use jinryu::sink::lifecycle;
use jinryu::sink::store::Storage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_reads_the_tables_and_agrees_with_jinryu() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let mut cfg = Config::chikaho(&format!("file://{}", root.display()));
    cfg.roll.rows = 2000;
    let storage = Storage::open(&cfg.storage_url).unwrap();
    let (stream, truth) = support::simulated(3, true);
    let half = support::join_lines(&support::lines(&stream)[..1000]);
    // A first run, replaced by a second run of the same source (remove + add in the log), another
    // source, and a compaction of one date (remove + add, no data change).
    for (source, input) in [("first", half), ("first", stream.clone())] {
        ingest(
            &cfg,
            &storage,
            Box::new(std::io::Cursor::new(input)),
            &IngestOptions::new(source),
        )
        .await
        .unwrap();
    }
    let extra = "{\"sensor_id\":\"J2-1\",\"ts\":\"2026-10-02T09:00:05+09:00\",\"direction\":\"south\",\"count\":7}\n";
    ingest(
        &cfg,
        &storage,
        Box::new(std::io::Cursor::new(extra.as_bytes().to_vec())),
        &IngestOptions::new("second"),
    )
    .await
    .unwrap();
    let c = lifecycle::compact_date(&storage, Table::Aggregates, "2026-10-02")
        .await
        .unwrap();
    assert!(c.files_removed > 1, "{c:?}");

    // jinryu's view of the same tables.
    let (ctx, versions) = jinryu::jobs::context_at(&cfg, &storage, &Default::default())
        .await
        .unwrap();
    let b = jinryu::jobs::query(
        &ctx,
        "SELECT date, CAST(SUM(\"count\") AS BIGINT) AS people FROM aggregates GROUP BY date ORDER BY date",
    )
    .await
    .unwrap();
    let mut expected = String::new();
    for batch in &b {
        let dates = jinryu::jobs::text(batch, 0);
        let people = jinryu::jobs::column::<arrow::array::Int64Array>(batch, 1);
        for i in 0..batch.num_rows() {
            expected.push_str(&format!("date,{},{}\n", dates.value(i), people.value(i)));
        }
    }
    let total: u64 = expected
        .lines()
        .map(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, truth.people + 7);
    expected.push_str(&format!(
        "rows,aggregates,{}\nrows,quarantine,{}\nversion,aggregates,{}\nversion,quarantine,{}\n",
        support::scalar_i64(&ctx, "SELECT COUNT(*) FROM aggregates").await,
        support::scalar_i64(&ctx, "SELECT COUNT(*) FROM quarantine").await,
        versions.aggregates.unwrap(),
        versions.quarantine.unwrap(),
    ));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/spark_read.py");
    let spark: String = support::python(
        &[script.as_ref(), root.as_os_str()],
        "Spark could not read the tables (is pyspark with delta-spark installed? bash .ci/setup)",
    )
    .lines()
    .filter(|l| l.starts_with("date,") || l.starts_with("rows,") || l.starts_with("version,"))
    .map(|l| format!("{l}\n"))
    .collect();
    assert_eq!(spark, expected);
}
