//! The partial aggregate with layout-aware group lookups (`jobs::partial_aggregation`, issue #12)
//! gives DataFusion's answer for any data: random tables (repeated, NULL and extreme keys, NULL
//! values, sorted into runs or not, several partitions and batches) queried through jinryu's
//! optimizer rules and through DataFusion's own, every row compared. The operator must be in the
//! plan where it applies and out of it where it does not; its two safety valves (passing rows
//! through when the grouping does not reduce them, emitting early when the memory pool refuses
//! more) must not change an answer either.

mod support;

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use proptest::prelude::*;
use support::{analyzed_metric, register_in_parts, rows_and_plan, same_rows, sql_text};

/// A row: key, timestamp key (µs), value.
type Row = (Option<i64>, Option<i64>, Option<i64>);

const NAME: &str = "PartialAggregateExec";

/// A session with jinryu's optimizer rules or DataFusion's; `probe_rows`: rows after which a
/// partial aggregate checks whether its grouping reduces them (DataFusion's default: 100 K).
fn session(jinryu: bool, memory_limit: Option<usize>, probe_rows: usize) -> SessionContext {
    let mut config = SessionConfig::new()
        .with_target_partitions(4)
        .with_batch_size(64);
    config
        .options_mut()
        .execution
        .skip_partial_aggregation_probe_rows_threshold = probe_rows;
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features();
    if let Some(limit) = memory_limit {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(limit, 1.0)
            .build_arc()
            .unwrap();
        state = state.with_runtime_env(runtime);
    }
    if jinryu {
        state = state.with_physical_optimizer_rules(jinryu::jobs::physical_rules());
    }
    SessionContext::new_with_state(state.build())
}

/// Registers `t(k, ts, v, s)` from `rows` in three partitions of `batches` batches each (`s`:
/// the key as text, for a grouping the operator must leave alone).
async fn register(ctx: &SessionContext, rows: &[Row], batches: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("v", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
    ]));
    let batch = |rows: &[Row]| {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter(rows.iter().map(|r| r.1)).with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.2))),
            Arc::new(arrow::array::StringArray::from_iter(
                rows.iter().map(|r| r.0.map(|k| format!("K{k}"))),
            )),
        ];
        RecordBatch::try_new(schema.clone(), cols).unwrap()
    };
    register_in_parts(ctx, "t", schema.clone(), rows, batches, batch);
    // As jinryu's views show a stored µs timestamp: in milliseconds.
    let view = "CREATE OR REPLACE VIEW w AS SELECT k, CAST(ts AS TIMESTAMP(3)) AS ts, v FROM t";
    ctx.sql(view).await.unwrap().collect().await.unwrap();
}

/// Queries the operator takes: an integer key, a timestamp key, a key computed from a column
/// (the view's µs → ms cast), every common aggregate, a filter below, a top-k above (the cache);
/// a text key, two keys, a text and a computed key (runs).
const TAKEN: [(&str, &str); 8] = [
    (
        "SELECT k, SUM(v) AS s, COUNT(v) AS n, COUNT(*) AS rows, MIN(v) AS lo, MAX(v) AS hi, \
         AVG(v) AS m FROM t GROUP BY k",
        "cache",
    ),
    (
        "SELECT ts, SUM(v) AS s, COUNT(*) AS n FROM t GROUP BY ts",
        "cache",
    ),
    (
        "SELECT CAST(ts AS TIMESTAMP(3)) AS ms, SUM(v) AS s FROM t \
         GROUP BY CAST(ts AS TIMESTAMP(3))",
        "cache",
    ),
    (
        "SELECT k * 2 AS k2, MAX(v) AS hi, BOOL_OR(v > 0) AS any_up FROM t WHERE v <> 7 \
         GROUP BY k * 2",
        "cache",
    ),
    (
        "SELECT k, SUM(v) AS s FROM t GROUP BY k ORDER BY s DESC NULLS LAST, k NULLS FIRST LIMIT 3",
        "cache",
    ),
    (
        "SELECT s, SUM(v) AS s2, COUNT(*) AS n FROM t GROUP BY s",
        "runs",
    ),
    (
        "SELECT k, ts, SUM(v) AS s, MIN(v) AS lo, AVG(v) AS m FROM t GROUP BY k, ts",
        "runs",
    ),
    (
        "SELECT s, k % 3 AS m, MIN(ts) AS first, MAX(v) AS hi FROM t GROUP BY s, k % 3",
        "runs",
    ),
];

/// Queries it must leave to DataFusion: an aggregate filter, an ordered aggregate, grouping
/// sets, a struct key.
const LEFT_ALONE: [&str; 4] = [
    "SELECT k, SUM(v) FILTER (WHERE v > 0) AS s FROM t GROUP BY k",
    "SELECT k, FIRST_VALUE(v ORDER BY v DESC) AS top FROM t GROUP BY k",
    "SELECT k, ts, SUM(v) AS s FROM t GROUP BY ROLLUP (k, ts)",
    "SELECT named_struct('k', k) AS st, SUM(v) AS s FROM t GROUP BY named_struct('k', k)",
];

/// Queries of the view `w` (a µs timestamp shown in ms, as jinryu's views do) and whether the key
/// is grouped as stored, its cast moved from the view's projection into the partial aggregate
/// (`__stored_ts`) and applied to the groups' keys only. Not where a dynamic filter on the key
/// could reach the scan (a top-k by the key, a global aggregate above, a join), nor where an
/// aggregate reads the key too (as a value or as its ordering).
const STORED: [(&str, bool); 7] = [
    (
        "SELECT ts, SUM(v) AS s, COUNT(*) AS n, MIN(v) AS lo FROM w GROUP BY ts",
        true,
    ),
    (
        "SELECT ts, FIRST_VALUE(v ORDER BY ts, v NULLS FIRST) AS f FROM w GROUP BY ts",
        false,
    ),
    (
        "SELECT CAST(ts AS BIGINT) AS ms, SUM(v) AS s FROM w GROUP BY ts \
         ORDER BY s DESC NULLS LAST, ms LIMIT 3",
        true,
    ),
    (
        "SELECT ts, SUM(v) AS s FROM w GROUP BY ts ORDER BY ts DESC LIMIT 3",
        false,
    ),
    (
        "SELECT ts, COUNT(*) AS n, MAX(ts) AS hi FROM w GROUP BY ts",
        false,
    ),
    (
        "SELECT MAX(ts) AS last, COUNT(*) AS n FROM (SELECT ts, SUM(v) AS s FROM w GROUP BY ts)",
        false,
    ),
    (
        "SELECT a.ts, a.s, b.n FROM (SELECT ts, SUM(v) AS s FROM w GROUP BY ts) a \
         JOIN (SELECT ts, COUNT(*) AS n FROM w GROUP BY ts) b ON a.ts = b.ts",
        false,
    ),
];

/// Queries DataFusion may plan with a partial aggregate the operator takes or not: `DISTINCT`
/// (one is rewritten as a grouping by `(k, v)` under a count by `k`; two stay distinct
/// accumulators). Equal answers either way.
const EITHER_WAY: [&str; 2] = [
    "SELECT k, COUNT(DISTINCT v) AS n FROM t GROUP BY k",
    "SELECT k, COUNT(DISTINCT v) AS n, SUM(DISTINCT v) AS s, MAX(v) AS hi FROM t GROUP BY k",
];

fn rows() -> impl Strategy<Value = Vec<Row>> {
    // Few keys (heavy repetition, as in a file of one date) plus the extremes of i64, which
    // collide in no cache slot by accident but test the arithmetic.
    let key = prop_oneof![
        8 => (-5i64..20).prop_map(|k| k * 900_000_000),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
    ];
    // Timestamps also off the millisecond (either side of zero): several stored µs values
    // fall in one millisecond of the view.
    let ts = prop_oneof![
        3 => key.clone(),
        1 => (-3i64..3, -1_500i64..1_500).prop_map(|(w, us)| w * 900_000_000 + us),
    ];
    prop::collection::vec(
        (
            prop::option::weighted(0.9, key),
            prop::option::weighted(0.9, ts),
            prop::option::weighted(0.9, -1_000i64..1_000),
        ),
        0..400,
    )
}

/// Runs every query through both sessions and compares: rows equal, the operator in the plan of
/// each `TAKEN` query (with its key path) and in none of the `LEFT_ALONE` ones.
fn answers_as_datafusion_does(mut rows: Vec<Row>, sorted: bool, batches: usize, probe_rows: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Sorted rows come in runs of equal keys, as a compacted file's do.
    if sorted {
        rows.sort();
    }
    rt.block_on(async {
        let ours = session(true, None, probe_rows);
        let plain = session(false, None, probe_rows);
        register(&ours, &rows, batches).await;
        register(&plain, &rows, batches).await;
        for (sql, keys) in TAKEN {
            let (_, plan) = same_rows(&ours, &plain, sql).await;
            assert!(plan.contains(NAME), "not taken: {sql}\n{plan}");
            assert!(plan.contains(&format!("keys={keys}")), "{sql}\n{plan}");
        }
        for (sql, stored) in STORED {
            let (_, plan) = same_rows(&ours, &plain, sql).await;
            assert_eq!(plan.contains("__stored_ts"), stored, "{sql}\n{plan}");
            if stored {
                assert!(
                    plan.contains("keys=cache, key_cast=on_emit"),
                    "{sql}\n{plan}"
                );
            }
        }
        for sql in EITHER_WAY {
            same_rows(&ours, &plain, sql).await;
        }
        for sql in LEFT_ALONE {
            let (_, plan) = same_rows(&ours, &plain, sql).await;
            assert!(!plan.contains(NAME), "taken: {sql}\n{plan}");
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn the_operator_answers_as_datafusion_does(
        rows in rows(),
        sorted in any::<bool>(),
        batches in 1usize..5,
        probe_rows in prop_oneof![Just(0usize), Just(10), Just(100_000)],
    ) {
        answers_as_datafusion_does(rows, sorted, batches, probe_rows);
    }
}

/// The tables the generator reaches only by chance (once in a few runs): none, one and two rows,
/// where the partitions are empty or hold a single row — the plan must still have its partial
/// stage and the operator must answer with no rows or one group.
#[test]
fn tiny_tables_answer_as_datafusion_does() {
    let one = (Some(900_000_000), Some(0), Some(5));
    let tiny: [Vec<Row>; 4] = [
        vec![],
        vec![one],
        vec![(None, None, None)],
        vec![one, (Some(i64::MIN), None, Some(-3))],
    ];
    for rows in tiny {
        for probe_rows in [0, 100_000] {
            answers_as_datafusion_does(rows.clone(), false, 1, probe_rows);
        }
    }
}

/// A grouping with a limit and no aggregate function: DataFusion gives its partial aggregate the
/// limit (it stops once it has that many groups), and the stored-key rule leaves that aggregate
/// as it is rather than rebuild it without the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_grouping_keeps_its_limit() {
    let rows: Vec<Row> = (0..1_000i64)
        .map(|i| (Some(i % 7), Some(i * 1_000_500), Some(i)))
        .collect();
    let ctx = session(true, None, 100_000);
    register(&ctx, &rows, 4).await;
    let sql = "SELECT ts FROM w GROUP BY ts LIMIT 5";
    let plan = sql_text(&ctx, &format!("EXPLAIN {sql}")).await;
    let partial = plan
        .lines()
        .find(|l| l.contains("mode=Partial"))
        .unwrap_or_else(|| panic!("no partial aggregate: {plan}"));
    assert!(partial.contains("lim=[5]"), "{plan}");
    assert!(!plan.contains("__stored_"), "{plan}");
    let (got, _) = rows_and_plan(&ctx, sql).await;
    assert_eq!(got.len(), 5);
}

/// Every row a key of its own: after its probe the operator passes rows through as their own
/// partial state — the answer must not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouping_that_does_not_reduce_passes_rows_through_and_answers_the_same() {
    let rows: Vec<Row> = (0..400_000i64)
        .map(|i| (Some(i * 7), Some(i), Some(i % 1_000)))
        .collect();
    let (ours, plain) = (session(true, None, 10_000), session(false, None, 10_000));
    for ctx in [&ours, &plain] {
        register(ctx, &rows, 40).await;
    }
    for by in ["k", "k, s"] {
        let sql = format!(
            "SELECT SUM(s) AS total, COUNT(*) AS groups, MAX(n) AS most FROM \
             (SELECT k, SUM(v) AS s, COUNT(*) AS n FROM t GROUP BY {by})"
        );
        same_rows(&ours, &plain, &sql).await;
        let analyzed = sql_text(&ours, &format!("EXPLAIN ANALYZE {sql}")).await;
        assert!(
            analyzed_metric(&analyzed, NAME, "skipped_aggregation_rows") > 100_000,
            "the operator did not pass rows through ({by}):\n{analyzed}"
        );
    }
}

/// At a probe ratio of 1.0 a partial aggregate never passes rows through, even when every row
/// is a group of its own (DataFusion's rule skips only above the ratio): the operator must keep
/// aggregating, and answer the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_probe_ratio_of_one_it_never_passes_rows_through() {
    let rows: Vec<Row> = (0..40_000i64)
        .map(|i| (Some(i * 7), Some(i), Some(i % 1_000)))
        .collect();
    let (ours, plain) = (session(true, None, 1_000), session(false, None, 1_000));
    for ctx in [&ours, &plain] {
        sql_text(
            ctx,
            "SET datafusion.execution.skip_partial_aggregation_probe_ratio_threshold = 1.0",
        )
        .await;
        register(ctx, &rows, 10).await;
    }
    let sql = "SELECT SUM(s) AS total, COUNT(*) AS groups FROM \
               (SELECT k, SUM(v) AS s FROM t GROUP BY k)";
    same_rows(&ours, &plain, sql).await;
    let analyzed = sql_text(&ours, &format!("EXPLAIN ANALYZE {sql}")).await;
    assert!(analyzed.contains(NAME), "{analyzed}");
    assert_eq!(
        analyzed_metric(&analyzed, NAME, "skipped_aggregation_rows"),
        0,
        "{analyzed}"
    );
}

/// A memory pool too small for the groups: the operator emits what it has and starts afresh
/// (a key may then reach the final aggregate twice) — the answer must not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_memory_pool_makes_it_emit_early_and_answer_the_same() {
    // 40 K keys over 400 K rows, ~2 MB of groups per partition; no probe (it would find too
    // many groups in the first rows and pass them through).
    let rows: Vec<Row> = (0..400_000i64)
        .map(|i| (Some((i * 7_919) % 40_000), Some(i), Some(i % 1_000)))
        .collect();
    let (ours, plain) = (
        session(true, Some(4 << 20), 1_000_000),
        session(false, None, 1_000_000),
    );
    for ctx in [&ours, &plain] {
        register(ctx, &rows, 40).await;
    }
    for by in ["k", "s, k"] {
        let sql =
            format!("SELECT k, SUM(v) AS s, COUNT(*) AS n, MIN(ts) AS first FROM t GROUP BY {by}");
        let (got, _) = same_rows(&ours, &plain, &sql).await;
        assert_eq!(got.len(), 40_000);
        let analyzed = sql_text(&ours, &format!("EXPLAIN ANALYZE {sql}")).await;
        assert!(
            analyzed_metric(&analyzed, NAME, "early_emits") > 0,
            "the operator never emitted early ({by}):\n{analyzed}"
        );
    }
}
