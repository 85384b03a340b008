//! The eager aggregation rule (`jobs::eager_aggregation`, issue #12) gives DataFusion's answer
//! for any data: random fact and dimension tables (duplicate, missing and NULL join keys, NULL
//! values, several partitions) queried with the rule and without it, every row compared; the
//! rule must have fired (`EXPLAIN` names its aggregate) where it applies, and must stay out of
//! the joins and aggregates it does not handle.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringViewArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use jinryu::jobs::eager_aggregation::EagerAggregation;
use proptest::prelude::*;

/// A fact row: group, join key, value.
type Fact = (u8, Option<u8>, Option<i64>);
/// A dimension row: join key, array.
type Dim = (Option<u8>, u8);

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

fn register(ctx: &SessionContext, facts: &[Fact], dims: &[Dim]) {
    let fact_schema = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Utf8View, false),
        Field::new("k", DataType::Utf8View, true),
        Field::new("v", DataType::Int64, true),
        Field::new("d", DataType::Decimal128(10, 2), true),
    ]));
    // Three partitions, as a scan of several files would give.
    let parts: Vec<Vec<RecordBatch>> = facts
        .chunks(facts.len().div_ceil(3).max(1))
        .map(|rows| {
            let cols: Vec<ArrayRef> = vec![
                Arc::new(StringViewArray::from_iter_values(
                    rows.iter().map(|r| format!("G{}", r.0)),
                )),
                Arc::new(StringViewArray::from_iter(
                    rows.iter().map(|r| r.1.map(|k| format!("S{k}"))),
                )),
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.2))),
                Arc::new(
                    arrow::array::Decimal128Array::from_iter(
                        rows.iter().map(|r| r.2.map(i128::from)),
                    )
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
                ),
            ];
            vec![RecordBatch::try_new(fact_schema.clone(), cols).unwrap()]
        })
        .collect();
    ctx.register_table(
        "f",
        Arc::new(MemTable::try_new(fact_schema.clone(), parts).unwrap()),
    )
    .unwrap();
    let dim_schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8View, true),
        Field::new("arr", DataType::Utf8View, false),
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
        ],
    )
    .unwrap();
    ctx.register_table(
        "dim",
        Arc::new(MemTable::try_new(dim_schema, vec![vec![dim]]).unwrap()),
    )
    .unwrap();
}

/// The query's rows, sorted, as text; and its physical plan.
async fn answer(ctx: &SessionContext, sql: &str) -> (Vec<String>, String) {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let text = pretty_format_batches(&batches).unwrap().to_string();
    let mut rows: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
        .map(str::to_owned)
        .collect();
    rows.sort();
    let plan = ctx
        .sql(&format!("EXPLAIN {sql}"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let plan = pretty_format_batches(&plan).unwrap().to_string();
    (rows, plan)
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
    prop::collection::vec((prop::option::weighted(0.9, 0u8..10), 0u8..3), 1..12)
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
                let (got, plan) = answer(&eager, sql).await;
                let (want, before) = answer(&plain, sql).await;
                assert_eq!(got, want, "{sql}\n{plan}");
                assert!(plan.contains("__eager_0"), "not rewritten: {sql}\n{plan}");
                assert!(!before.contains("__eager_0"));
            }
            for sql in LEFT_ALONE {
                let (got, plan) = answer(&eager, sql).await;
                let (want, _) = answer(&plain, sql).await;
                assert_eq!(got, want, "{sql}\n{plan}");
                assert!(!plan.contains("__eager_"), "rewritten: {sql}\n{plan}");
            }
        });
    }
}
