//! Eager aggregation: `SUM`, `MIN` and `MAX` computed *below* an inner hash join with a small
//! table, so that the join sees one row per group instead of one per stored window.
//!
//! The analysts' usual question joins the aggregates with the registry to name arrays:
//!
//! ```sql
//! SELECT a.date, s.array, SUM(a.count) FROM aggregates a
//!   JOIN sensors s ON a.sensor_id = s.sensor_id GROUP BY a.date, s.array
//! ```
//!
//! DataFusion plans it as a partial aggregate over the join's output: every one of a year's
//! 70 M rows is hashed and probed against the 1,000 sensors, then hashed again into its group.
//! This rule (Yan and Larson's "eager group-by") adds a partial aggregate on the large side,
//! grouped by that side's grouping columns and join keys — `(date, sensor_id)`: 365 K groups —
//! and makes the aggregate above the join merge those partial results. The answer is the same
//! for any data: a row of the large side meets the same small-side rows whether it is joined
//! alone or summed with the rows that share its join key and group, and a sum (minimum,
//! maximum) of sums (minima, maxima) over a partition of the rows is the sum (minimum, maximum)
//! over all of them. Each partial row is joined with every matching small-side row, exactly as
//! its rows would have been. (A `SUM` of floating-point numbers adds in another order, so its
//! last bits may differ — as they already do between runs of DataFusion's own parallel plan.)
//!
//! It is safe for cost, too: the added aggregate is a *partial* aggregate (DataFusion's, which
//! jinryu's session then runs as `partial_aggregation`'s operator with the same rule), which —
//! on an input not sorted by its groups — stops aggregating and passes rows through when the
//! groups it finds are nearly as many as its input rows
//! (`skip_partial_aggregation_probe_ratio_threshold`), so a grouping that does not reduce the
//! rows costs a probe of the first 100 K rows, not a second hash table. On an input sorted by
//! its groups it aggregates in order, which needs no hash table.
//!
//! Taken only when everything is known to be exact: an inner equi-join without a join filter,
//! in `CollectLeft` mode (the build side is the small one, collected whole), whose probe-side
//! keys are columns; the aggregate's arguments all on the probe side, grouping by plain columns
//! without grouping sets or limits, and only `SUM` / `MIN` / `MAX` that are not `DISTINCT` nor
//! filtered. The rewritten aggregate must produce the very schema of the one it replaces (names,
//! types, nullability), its order and its partitioning, or the plan is left as it was: a `SUM`
//! of decimals whose partial sums would widen the type stays unrewritten. Columns are matched by
//! name when filters are pushed through an aggregate, so a probe side or join output with two
//! columns of one name that the rewrite relies on is left alone too. `EXPLAIN` shows the added
//! aggregate (`__eager_0` …).
//!
//! The rule runs before DataFusion's last filter pushdown, so the join's dynamic filter still
//! reaches the scan through the added aggregate (it filters on a grouping column): a join that
//! keeps a few sensors still skips the pages of the others.

use std::sync::Arc;

use datafusion::common::{JoinType, Result};
use datafusion::config::ConfigOptions;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::{AggregateExprBuilder, AggregateFunctionExpr};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::filter_pushdown::FilterPushdown;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::joins::{HashJoinExec, HashJoinExecBuilder, PartitionMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};

use super::node_as;

/// The aggregate functions whose partial results merge with the function itself.
const MERGEABLE: [&str; 3] = ["sum", "min", "max"];

/// The rule; see the module documentation.
#[derive(Debug, Default)]
pub struct EagerAggregation;

impl EagerAggregation {
    /// DataFusion's physical optimizer rules with this one placed before the filter pushdown
    /// that wires dynamic filters (joins, TopK) to their scans: that pass must see the final
    /// shape of the plan, and lets a join's dynamic filter reach through the added aggregate.
    pub fn with_default_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
        let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
        let post = FilterPushdown::new_post_optimization();
        let at = rules
            .iter()
            .position(|r| r.name() == post.name())
            .unwrap_or(rules.len());
        rules.insert(at, Arc::new(EagerAggregation));
        rules
    }
}

impl PhysicalOptimizerRule for EagerAggregation {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        super::rewrite_nodes(plan, rewrite)
    }

    fn name(&self) -> &str {
        "jinryu_eager_aggregation"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Where a column of the join's output comes from.
#[derive(Clone, Copy)]
enum Side {
    /// Build side, index in its schema.
    Build(usize),
    /// Probe side, index in its schema.
    Probe(usize),
}

/// The plain column an expression is, if it is one.
fn column(e: &Arc<dyn PhysicalExpr>) -> Option<&Column> {
    e.downcast_ref::<Column>()
}

/// `node` with a partial aggregate added below its join, or `None` when the rule does not apply.
fn rewrite(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(agg) = node_as::<AggregateExec>(node) else {
        return Ok(None);
    };
    // A join with fewer output partitions than the session's gets a round-robin repartition
    // above it; it moves below the added aggregate, which is then the one spread.
    let (join, spread) = match node_as::<RepartitionExec>(agg.input()) {
        Some(r) if matches!(r.partitioning(), Partitioning::RoundRobinBatch(_)) => {
            (r.input(), Some(r.partitioning().clone()))
        }
        _ => (agg.input(), None),
    };
    let Some(join) = node_as::<HashJoinExec>(join) else {
        return Ok(None);
    };
    let group_by = agg.group_expr();
    if *agg.mode() != AggregateMode::Partial
        || group_by.has_grouping_set()
        || !group_by.null_expr().is_empty()
        || group_by.expr().is_empty()
        || agg.filter_expr().iter().any(Option::is_some)
        || agg.limit_options().is_some()
        || !agg.aggr_expr().iter().all(|a| mergeable(a))
    {
        return Ok(None);
    }
    if join.join_type != JoinType::Inner
        || join.filter.is_some()
        || join.mode != PartitionMode::CollectLeft
        || join.null_aware
        || join.fetch().is_some()
    {
        return Ok(None);
    }

    // The join's output columns, traced to their side.
    let build_width = join.left().schema().fields().len();
    let trace = |out: usize| -> Side {
        let j = match &join.projection {
            Some(p) => p[out],
            None => out,
        };
        if j < build_width {
            Side::Build(j)
        } else {
            Side::Probe(j - build_width)
        }
    };
    let mut groups = Vec::with_capacity(group_by.expr().len());
    for (e, _) in group_by.expr() {
        let Some(c) = column(e) else { return Ok(None) };
        groups.push(trace(c.index()));
    }
    let mut args = Vec::with_capacity(agg.aggr_expr().len());
    for a in agg.aggr_expr() {
        let Some(c) = a
            .expressions()
            .first()
            .and_then(column)
            .map(|c| trace(c.index()))
        else {
            return Ok(None);
        };
        let Side::Probe(i) = c else { return Ok(None) };
        args.push(i);
    }
    let mut probe_keys = Vec::with_capacity(join.on.len());
    for (_, probe) in &join.on {
        let Some(c) = column(probe) else {
            return Ok(None);
        };
        probe_keys.push(c.index());
    }

    // The added aggregate: probe side grouped by the probe columns used above it.
    let probe = match spread {
        Some(p) => Arc::new(RepartitionExec::try_new(Arc::clone(join.right()), p)?) as _,
        None => Arc::clone(join.right()),
    };
    let probe_schema = probe.schema();
    let mut kept: Vec<usize> = Vec::new();
    for i in groups
        .iter()
        .filter_map(|s| match s {
            Side::Probe(i) => Some(*i),
            Side::Build(_) => None,
        })
        .chain(probe_keys.iter().copied())
    {
        if !kept.contains(&i) {
            kept.push(i);
        }
    }
    // Filters pushed through the added aggregate find their column by name: each kept column
    // must be the first of its name.
    if kept
        .iter()
        .any(|&i| probe_schema.index_of(probe_schema.field(i).name()).ok() != Some(i))
    {
        return Ok(None);
    }
    let lower_groups = PhysicalGroupBy::new_single(
        kept.iter()
            .map(|&i| {
                let name = probe_schema.field(i).name().clone();
                (
                    Arc::new(Column::new(&name, i)) as Arc<dyn PhysicalExpr>,
                    name,
                )
            })
            .collect(),
    );
    let mut lower_aggr = Vec::with_capacity(args.len());
    for (k, (a, &i)) in agg.aggr_expr().iter().zip(&args).enumerate() {
        let arg = Arc::new(Column::new(probe_schema.field(i).name(), i));
        lower_aggr.push(Arc::new(
            AggregateExprBuilder::new(Arc::new(a.fun().clone()), vec![arg])
                .schema(Arc::clone(&probe_schema))
                .alias(format!("__eager_{k}"))
                .build()?,
        ));
    }
    let lower = Arc::new(AggregateExec::try_new(
        AggregateMode::Partial,
        lower_groups,
        lower_aggr,
        vec![None; args.len()],
        probe,
        Arc::clone(&probe_schema),
    )?);

    // The join, now probing with the partial groups. Its output: the build columns the groups
    // use, then every column of the added aggregate (keys, partial results).
    let mut build_used: Vec<usize> = groups
        .iter()
        .filter_map(|s| match s {
            Side::Build(j) => Some(*j),
            Side::Probe(_) => None,
        })
        .collect();
    build_used.sort_unstable();
    build_used.dedup();
    let lower_width = kept.len() + args.len();
    let projection: Vec<usize> = build_used
        .iter()
        .copied()
        .chain(build_width..build_width + lower_width)
        .collect();
    let on = join
        .on
        .iter()
        .zip(&probe_keys)
        .map(|((build, _), key)| {
            let at = kept
                .iter()
                .position(|k| k == key)
                .expect("every key is kept");
            let name = probe_schema.field(*key).name();
            (
                Arc::clone(build),
                Arc::new(Column::new(name, at)) as Arc<dyn PhysicalExpr>,
            )
        })
        .collect();
    let new_join: Arc<dyn ExecutionPlan> =
        HashJoinExecBuilder::new(Arc::clone(join.left()), lower, on, JoinType::Inner)
            .with_partition_mode(PartitionMode::CollectLeft)
            .with_null_equality(join.null_equality)
            .with_projection(Some(projection))
            .build_exec()?;
    let joined = new_join.schema();
    // Likewise above the join (a TopK's filter on a grouping column): the grouping columns'
    // names must be unique in the join's output (`GROUP BY f.k, dim.k` is left alone).
    let unique = |idx: usize| {
        let name = joined.field(idx).name();
        joined.fields().iter().filter(|f| f.name() == name).count() == 1
    };

    // The aggregate above: the same groups and names, merging the partial results.
    let at_build = |j: usize| build_used.iter().position(|u| *u == j).expect("used");
    let at_probe = |i: usize| build_used.len() + kept.iter().position(|k| *k == i).expect("kept");
    let upper_groups = PhysicalGroupBy::new_single(
        group_by
            .expr()
            .iter()
            .zip(&groups)
            .map(|((_, name), side)| {
                let idx = match *side {
                    Side::Build(j) => at_build(j),
                    Side::Probe(i) => at_probe(i),
                };
                let e = Arc::new(Column::new(joined.field(idx).name(), idx));
                (e as Arc<dyn PhysicalExpr>, name.clone())
            })
            .collect(),
    );
    if upper_groups
        .expr()
        .iter()
        .any(|(e, _)| column(e).is_none_or(|c| !unique(c.index())))
    {
        return Ok(None);
    }
    let mut upper_aggr = Vec::with_capacity(args.len());
    for (k, a) in agg.aggr_expr().iter().enumerate() {
        let idx = build_used.len() + kept.len() + k;
        let arg = Arc::new(Column::new(joined.field(idx).name(), idx));
        let mut b = AggregateExprBuilder::new(Arc::new(a.fun().clone()), vec![arg])
            .schema(Arc::clone(&joined))
            .alias(a.name());
        if let Some(h) = a.human_display() {
            b = b.human_display(h);
        }
        upper_aggr.push(Arc::new(b.build()?));
    }
    let upper = AggregateExec::try_new(
        AggregateMode::Partial,
        upper_groups,
        upper_aggr,
        vec![None; args.len()],
        new_join,
        joined,
    )?;

    // The operators above read the new aggregate's output by position and may rely on its
    // order (an input sorted by `date` keeps its order through both aggregates and the join):
    // schema, order and partitioning must be those of the aggregate it replaces.
    let same = upper.schema().fields().len() == agg.schema().fields().len()
        && upper.properties().output_ordering() == agg.properties().output_ordering()
        && same_partitioning(
            upper.properties().output_partitioning(),
            agg.properties().output_partitioning(),
        )
        && upper
            .schema()
            .fields()
            .iter()
            .zip(agg.schema().fields())
            .all(|(a, b)| {
                a.name() == b.name()
                    && a.data_type() == b.data_type()
                    && a.is_nullable() == b.is_nullable()
            });
    Ok(same.then(|| Arc::new(upper) as Arc<dyn ExecutionPlan>))
}

/// A plain `SUM` / `MIN` / `MAX` of one argument (that it is a probe-side column is checked
/// where the column is traced).
fn mergeable(a: &AggregateFunctionExpr) -> bool {
    MERGEABLE.contains(&a.fun().name())
        && !a.is_distinct()
        && a.order_bys().is_empty()
        && a.expressions().len() == 1
}

/// Whether two outputs are partitioned alike: hash partitionings on the same expressions, or
/// (`Partitioning`'s own equality says no for these) any other kinds with as many partitions.
fn same_partitioning(a: &Partitioning, b: &Partitioning) -> bool {
    match (a, b) {
        (Partitioning::Hash(..), _) | (_, Partitioning::Hash(..)) => a == b,
        _ => a.partition_count() == b.partition_count(),
    }
}
