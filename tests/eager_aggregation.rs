//! The eager aggregation rule (`jobs::eager_aggregation`, issue #12) gives DataFusion's answer
//! for any data: random fact and dimension tables (duplicate, missing and NULL join keys, NULL
//! values, several partitions) queried with the rule and without it, every row compared; the
//! rule must have fired (`EXPLAIN` names its aggregate) where it applies, and must stay out of
//! the joins and aggregates it does not handle.

mod support;

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringViewArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use jinryu::jobs::eager_aggregation::EagerAggregation;
use proptest::prelude::*;
use support::{analyzed_metric, register_in_parts, rows_and_plan, same_rows, sql_text};

/// A fact row: group, join key, value.
type Fact = (u8, Option<u8>, Option<i64>);
/// A dimension row: join key, array, group.
type Dim = (Option<u8>, u8, u8);

fn session(eager: bool) -> SessionContext {
    let config = SessionConfig::new().with_target_partitions(4);
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features();
    if eager {
        state = state.with_physical_optimizer_rules(EagerAggregation::with_default_rules());
    }
    SessionContext::new_with_state(state.build())
}

/// Registers `name` as a fact table: `g`, `k` and `v` from `rows` (a `Decimal128` copy of `v`
/// as `d`), in three partitions of `batches` batches each, as a scan of several files gives.
fn register_facts(
    ctx: &SessionContext,
    name: &str,
    rows: &[(String, Option<String>, Option<i64>)],
    batches: usize,
) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Utf8View, false),
        Field::new("k", DataType::Utf8View, true),
        Field::new("v", DataType::Int64, true),
        Field::new("d", DataType::Decimal128(10, 2), true),
    ]));
    let batch = |rows: &[(String, Option<String>, Option<i64>)]| {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringViewArray::from_iter_values(rows.iter().map(|r| &r.0))),
            Arc::new(StringViewArray::from_iter(
                rows.iter().map(|r| r.1.as_ref()),
            )),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.2))),
            Arc::new(
                arrow::array::Decimal128Array::from_iter(rows.iter().map(|r| r.2.map(i128::from)))
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
        ];
        RecordBatch::try_new(schema.clone(), cols).unwrap()
    };
    register_in_parts(ctx, name, schema.clone(), rows, batches, batch);
}

fn register(ctx: &SessionContext, facts: &[Fact], dims: &[Dim]) {
    let rows: Vec<_> = facts
        .iter()
        .map(|r| (format!("G{}", r.0), r.1.map(|k| format!("S{k}")), r.2))
        .collect();
    register_facts(ctx, "f", &rows, 1);
    register_facts(ctx, "f2", &rows, 1);
    let dim_schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8View, true),
        Field::new("arr", DataType::Utf8View, false),
        Field::new("g", DataType::Utf8View, false),
    ]));
    let dim = RecordBatch::try_new(
        dim_schema.clone(),
        vec![
            Arc::new(StringViewArray::from_iter(
                dims.iter().map(|r| r.0.map(|k| format!("S{k}"))),
            )) as ArrayRef,
            Arc::new(StringViewArray::from_iter_values(
                dims.iter().map(|r| format!("A{}", r.1)),
            )),
            Arc::new(StringViewArray::from_iter_values(
                dims.iter().map(|r| format!("G{}", r.2)),
            )),
        ],
    )
    .unwrap();
    ctx.register_table(
        "dim",
        Arc::new(MemTable::try_new(dim_schema, vec![vec![dim]]).unwrap()),
    )
    .unwrap();
}

/// Queries the rule rewrites.
const REWRITTEN: [&str; 4] = [
    "SELECT f.g, dim.arr, SUM(f.v) AS s, MIN(f.v) AS lo, MAX(f.v) AS hi \
     FROM f JOIN dim ON f.k = dim.k GROUP BY f.g, dim.arr",
    "SELECT dim.arr, SUM(f.v) AS s FROM f JOIN dim ON f.k = dim.k GROUP BY dim.arr",
    "SELECT f.k, dim.arr, MAX(f.v) AS hi FROM dim JOIN f ON dim.k = f.k GROUP BY f.k, dim.arr",
    "SELECT f.g, SUM(f.v) AS s FROM f JOIN dim ON f.k = dim.k WHERE dim.arr <> 'A1' GROUP BY f.g",
];

/// Queries it must leave alone (or that are correct either way).
const LEFT_ALONE: [&str; 5] = [
    "SELECT dim.arr, COUNT(f.v) AS n FROM f JOIN dim ON f.k = dim.k GROUP BY dim.arr",
    "SELECT dim.arr, AVG(f.v) AS m FROM f JOIN dim ON f.k = dim.k GROUP BY dim.arr",
    "SELECT dim.arr, SUM(DISTINCT f.v) AS s FROM f JOIN dim ON f.k = dim.k GROUP BY dim.arr",
    "SELECT dim.arr, SUM(f.v) AS s FROM f LEFT JOIN dim ON f.k = dim.k GROUP BY dim.arr",
    // Partial sums of decimals widen the type: the rule must notice and step back.
    "SELECT dim.arr, SUM(f.d) AS s FROM f JOIN dim ON f.k = dim.k GROUP BY dim.arr",
];

/// Queries that are rewritten or not, depending on the plan DataFusion makes: the answers must
/// be equal either way. Two join keys; NULL keys equal to each other (`IS NOT DISTINCT FROM`);
/// a probe side (`f` joined with `f2`) with two columns named `k`, `g` and `v`.
const EITHER_WAY: [&str; 3] = [
    "SELECT dim.arr, SUM(f.v) AS s, MAX(f.v) AS hi FROM f JOIN dim ON f.k = dim.k AND f.g = dim.g \
     GROUP BY dim.arr",
    "SELECT f.g, dim.arr, SUM(f.v) AS s FROM f JOIN dim ON f.k IS NOT DISTINCT FROM dim.k \
     GROUP BY f.g, dim.arr",
    "SELECT f2.k, dim.arr, SUM(f2.v) AS s, MIN(f.v) AS lo FROM f JOIN f2 ON f.g = f2.g \
     JOIN dim ON f2.k = dim.k GROUP BY f2.k, dim.arr",
];

fn facts() -> impl Strategy<Value = Vec<Fact>> {
    prop::collection::vec(
        (
            0u8..4,
            prop::option::weighted(0.9, 0u8..8),
            prop::option::weighted(0.9, -1_000i64..1_000),
        ),
        30..300,
    )
}

fn dims() -> impl Strategy<Value = Vec<Dim>> {
    // Keys 0..10 against the facts' 0..8: some facts match nothing, some keys twice.
    prop::collection::vec(
        (prop::option::weighted(0.9, 0u8..10), 0u8..3, 0u8..4),
        1..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn the_rewritten_plan_answers_as_datafusion_does(facts in facts(), dims in dims()) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let eager = session(true);
            let plain = session(false);
            register(&eager, &facts, &dims);
            register(&plain, &facts, &dims);
            for sql in REWRITTEN {
                let (got, plan) = rows_and_plan(&eager, sql).await;
                let (want, before) = rows_and_plan(&plain, sql).await;
                assert_eq!(got, want, "{sql}\n{plan}");
                assert!(plan.contains("__eager_0"), "not rewritten: {sql}\n{plan}");
                assert!(!before.contains("__eager_0"));
            }
            for sql in EITHER_WAY {
                same_rows(&eager, &plain, sql).await;
            }
            for sql in LEFT_ALONE {
                let (_, plan) = same_rows(&eager, &plain, sql).await;
                assert!(!plan.contains("__eager_"), "rewritten: {sql}\n{plan}");
            }
        });
    }
}

/// A grouping that does not reduce the rows (every fact row has a key of its own): DataFusion's
/// partial aggregate gives up after its probe and passes rows through as partial sums — the
/// answer must not change, and only the ten keys the small table holds are summed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouping_that_does_not_reduce_passes_rows_through_and_answers_the_same() {
    let rows: Vec<_> = (0..600_000i64)
        .map(|i| {
            (
                format!("G{}", i % 3),
                Some(format!("S{i}")),
                Some(i % 1_000),
            )
        })
        .collect();
    let dims: Vec<Dim> = (0..10u8).map(|k| (Some(k), k % 3, 0)).collect();
    let (eager, plain) = (session(true), session(false));
    for ctx in [&eager, &plain] {
        register(ctx, &[], &dims);
        register_facts(ctx, "f", &rows, 4);
    }
    let sql = "SELECT f.g, dim.arr, SUM(f.v) AS s, MIN(f.v) AS lo, MAX(f.v) AS hi \
               FROM f JOIN dim ON f.k = dim.k GROUP BY f.g, dim.arr";
    let (got, plan) = same_rows(&eager, &plain, sql).await;
    assert!(plan.contains("__eager_0"), "{plan}");
    assert_eq!(got.len(), 3, "{got:?}");
    let analyzed = sql_text(&eager, &format!("EXPLAIN ANALYZE {sql}")).await;
    let skipped = analyzed_metric(&analyzed, "__eager_0", "skipped_aggregation_rows");
    assert!(
        skipped > 100_000,
        "the added aggregate did not pass rows through:\n{analyzed}"
    );
}
