//! DataFusion's partial aggregate, with group lookups that exploit how the aggregates table is
//! laid out: its files are sorted by sensor and window, so the keys of neighbouring rows repeat.
//!
//! Two questions analysts ask of a year (70 M stored windows) spent about half their cycles
//! finding each row's group in DataFusion's general hash tables (hash, probe, compare):
//!
//! * "the busiest 15-minute windows" groups by `window_start`: within a file the same 96 window
//!   starts come back for every sensor and direction. For one key of a 64-bit integer type
//!   (Int64, Timestamp, Date64, Duration) a small direct-mapped cache (key → group) sits in front
//!   of a hash map: almost every row is one multiply, one load and one compare (`keys=cache` in
//!   `EXPLAIN`).
//! * "daily totals per array" groups by `(date, sensor_id)` below the join with the registry
//!   (`eager_aggregation`): a sensor's rows of a date are one run of ~200 rows. For any other
//!   grouping, the rows where the key changes are found with Arrow's vectorised `distinct`
//!   comparison of each key column with itself shifted by one row, and only the first row of
//!   each run is looked up, in DataFusion's own group table (`keys=runs`). A batch whose runs
//!   are short (under two rows on average) is looked up row by row, as DataFusion does.
//!
//! The operator replaces DataFusion's `AggregateExec` in `Partial` mode only, and keeps
//! DataFusion's own accumulators (the same `GroupsAccumulator` objects, fed the same arguments),
//! so each aggregate function computes exactly what it computes in DataFusion's plan; only the
//! mapping of rows to group numbers is new. Its output has the replaced node's schema and
//! partitioning, and the final aggregate above merges it as before. A partial aggregate may emit
//! a key more than once (the final merges duplicates), which is what makes two safety valves
//! simple:
//!
//! * memory: the groups are accounted in DataFusion's memory pool; when the pool refuses more,
//!   the groups gathered so far are emitted and the operator starts afresh (`early_emits`);
//! * cost: like DataFusion's partial aggregate, after
//!   `skip_partial_aggregation_probe_rows_threshold` input rows it checks how many groups it
//!   found; at `skip_partial_aggregation_probe_ratio_threshold` or more groups per row it stops
//!   aggregating and passes each row on as its own state (`skipped_aggregation_rows`).
//!
//! Taken only without grouping sets, aggregate filters, `DISTINCT`, ordered aggregates or
//! limits, on an unordered input, with every accumulator in grouped form and every key of a
//! flat type (no dictionaries, lists or structs). The rule runs after DataFusion's last filter
//! pushdown, so dynamic filters are already wired to the scans below.
//!
//! **Keys as stored.** The views show `window_start` in milliseconds, the tables store it in
//! microseconds: every row read through a view is divided by 1,000 (Arrow divides by a divisor
//! known only at run time: 14 % of the busiest-windows query's cycles). A single key that only
//! coarsens a timestamp (`CAST(µs AS TIMESTAMP(3))`) is looked up in the cache by the value as
//! stored, and only the groups' keys are cast when they are emitted (`key_cast=on_emit` in
//! `EXPLAIN`). Two stored values may fall in one millisecond and so be emitted as two groups
//! with equal keys: the final aggregate merges them, as it merges any key emitted twice. A
//! second rule, [`StoredKeys`], run before DataFusion pushes projections into the scans, moves
//! such a cast from the projection below a partial aggregate into its grouping, so that the scan
//! yields the stored values (as `__stored_<name>`) — unless that could keep a dynamic filter
//! from reaching the scan (see [`StoredKeys`]).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayData, ArrayRef, BooleanArray, RecordBatch, UInt32Array, make_array,
};
use datafusion::arrow::buffer::{Buffer, NullBuffer};
use datafusion::arrow::compute::kernels::cmp::distinct;
use datafusion::arrow::compute::{BatchCoalescer, cast, or, take};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, internal_err};
use datafusion::config::ConfigOptions;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, RecordOutput,
};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode, PlanProperties,
};
use futures::StreamExt;

/// The rule; see the module documentation.
#[derive(Debug, Default)]
pub struct PartialAggregation;

impl PhysicalOptimizerRule for PartialAggregation {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        super::rewrite_nodes(plan, |node| {
            let Some(agg) = super::node_as::<AggregateExec>(node) else {
                return Ok(None);
            };
            if !eligible(agg)? {
                return Ok(None);
            }
            let exec = PartialAggregateExec::new(Arc::new(agg.clone()))?;
            Ok(Some(Arc::new(exec) as Arc<dyn ExecutionPlan>))
        })
    }

    fn name(&self) -> &str {
        "partial_aggregation"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The rule that lets a partial aggregate group by a timestamp as stored (see the module
/// documentation). It must run before DataFusion's `ProjectionPushdown`, while the view's cast
/// is still a `ProjectionExec` of its own: `AggregateExec(Partial, gby=[k@i])` over a projection
/// whose `i`-th expression coarsens a timestamp (and which no aggregate argument reads) becomes
/// `AggregateExec(Partial, gby=[CAST(__stored_k@i) as k])` over the projection with that
/// expression's input instead. The aggregate's output is unchanged.
///
/// A filter pushed down through a partial aggregate is matched to its input's columns by name,
/// and `k` is no longer among them: the plan is left alone where a dynamic filter on a group key
/// could otherwise reach the scan (and prune files with it) — a top-k sorted by group keys only,
/// a join, a union, or a global aggregate (its MIN/MAX filter) anywhere in the plan.
#[derive(Debug, Default)]
pub struct StoredKeys;

impl PhysicalOptimizerRule for StoredKeys {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if may_filter_group_keys(&plan)? {
            return Ok(plan);
        }
        super::rewrite_nodes(plan, |node| match super::node_as::<AggregateExec>(node) {
            Some(agg) => group_by_stored_key(agg),
            None => Ok(None),
        })
    }

    fn name(&self) -> &str {
        "jinryu_stored_keys"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `agg` grouping by the stored key below its projection's cast, if it applies.
fn group_by_stored_key(agg: &AggregateExec) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let group = agg.group_expr();
    // (A limited partial aggregate stays DataFusion's, which the rebuild would lose the limit of.)
    if *agg.mode() != AggregateMode::Partial
        || !group.is_single()
        || group.expr().len() != 1
        || agg.limit_options().is_some()
    {
        return Ok(None);
    }
    let Some(proj) = super::node_as::<ProjectionExec>(agg.input()) else {
        return Ok(None);
    };
    let (key, name) = &group.expr()[0];
    let Some(col) = key.downcast_ref::<Column>() else {
        return Ok(None);
    };
    let index = col.index();
    let Some(cast) = coarsening_cast(&proj.expr()[index].expr, &proj.input().schema())? else {
        return Ok(None);
    };
    // An aggregate's arguments, ordering (`FIRST_VALUE(v ORDER BY k)`) or filter reading the key
    // would read the stored value in place of the view's.
    let read_elsewhere = agg
        .aggr_expr()
        .iter()
        .flat_map(|a| {
            let e = a.all_expressions();
            e.args.into_iter().chain(e.order_by_exprs)
        })
        .chain(agg.filter_expr().iter().flatten().cloned())
        .any(|e| collect_columns(&e).iter().any(|c| c.index() == index));
    // Filters are matched to the projection's columns by name: no other column may take the
    // key's name, nor the stored column's.
    let stored = format!("__stored_{name}");
    let names_taken = proj
        .expr()
        .iter()
        .enumerate()
        .any(|(i, e)| e.alias == stored || (i != index && e.alias == *name));
    if read_elsewhere || names_taken {
        return Ok(None);
    }
    let mut exprs = proj.expr().to_vec();
    exprs[index] = ProjectionExpr::new(Arc::clone(cast.expr()), stored.clone());
    let input: Arc<dyn ExecutionPlan> =
        Arc::new(ProjectionExec::try_new(exprs, Arc::clone(proj.input()))?);
    let stored_col: Arc<dyn PhysicalExpr> = Arc::new(Column::new(&stored, index));
    // The projection's own cast, of the stored column.
    let key = Arc::clone(&proj.expr()[index].expr).with_new_children(vec![stored_col])?;
    let folded = AggregateExec::try_new(
        AggregateMode::Partial,
        PhysicalGroupBy::new_single(vec![(key, name.clone())]),
        agg.aggr_expr().to_vec(),
        agg.filter_expr().to_vec(),
        Arc::clone(&input),
        input.schema(),
    )?;
    // The same output, or nothing: the final aggregate above was planned for it.
    Ok((folded.schema() == agg.schema()).then(|| Arc::new(folded) as Arc<dyn ExecutionPlan>))
}

/// Whether a dynamic filter on some aggregate's group keys might be pushed down to a scan (see
/// [`StoredKeys`]); unsure counts as yes.
fn may_filter_group_keys(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    plan.exists(|node| {
        let global_aggregate =
            super::node_as::<AggregateExec>(node).is_some_and(|a| a.group_expr().is_empty());
        let top_k_by_keys = super::node_as::<SortExec>(node).is_some_and(|sort| {
            sort.fetch().is_some()
                && !sort.expr().iter().any(|s| {
                    collect_columns(&s.expr)
                        .iter()
                        .any(|c| aggregate_result(sort.input(), c.index()))
                })
        });
        Ok(node.children().len() > 1 || global_aggregate || top_k_by_keys)
    })
}

/// Whether column `index` of `node`'s output is computed from an aggregate's result (not only
/// from group keys), followed down through projections and nodes that pass their input's
/// columns on; unsure counts as no.
fn aggregate_result(node: &Arc<dyn ExecutionPlan>, index: usize) -> bool {
    if let Some(agg) = super::node_as::<AggregateExec>(node) {
        return index >= agg.group_expr().expr().len();
    }
    if let Some(proj) = super::node_as::<ProjectionExec>(node) {
        return proj.expr().get(index).is_some_and(|e| {
            collect_columns(&e.expr)
                .iter()
                .any(|c| aggregate_result(proj.input(), c.index()))
        });
    }
    match node.children().as_slice() {
        [child] if child.schema().fields() == node.schema().fields() => {
            aggregate_result(child, index)
        }
        _ => false,
    }
}

/// `e` as a cast that only coarsens a timestamp (to a coarser unit, the time zone kept or
/// dropped — Arrow shifts values only when one is added): a division of the stored value, so
/// grouping by the stored value and casting the keys afterwards finds the same groups once equal
/// keys are merged.
fn coarsening_cast<'a>(
    e: &'a Arc<dyn PhysicalExpr>,
    input: &Schema,
) -> Result<Option<&'a CastExpr>> {
    let Some(cast) = e.downcast_ref::<CastExpr>() else {
        return Ok(None);
    };
    // (`TimeUnit` orders from seconds to nanoseconds: finer is greater.)
    Ok(match (cast.expr().data_type(input)?, cast.cast_type()) {
        (DataType::Timestamp(from, from_tz), DataType::Timestamp(to, to_tz))
            if (from_tz == *to_tz || to_tz.is_none()) && from > *to =>
        {
            Some(cast)
        }
        _ => None,
    })
}

/// Key types stored as `i64`: looked up through the cache.
fn int_key(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int64 | DataType::Timestamp(..) | DataType::Date64 | DataType::Duration(_)
    )
}

/// Key types DataFusion's group tables and Arrow's `distinct` both handle as plain values.
fn flat_key(t: &DataType) -> bool {
    t.is_primitive()
        || matches!(
            t,
            DataType::Boolean
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
        )
}

/// Whether the replacement computes what `agg` computes (see the module documentation).
fn eligible(agg: &AggregateExec) -> Result<bool> {
    let group = agg.group_expr();
    if *agg.mode() != AggregateMode::Partial
        || !group.is_single()
        || group.expr().is_empty()
        || *agg.input_order_mode() != InputOrderMode::Linear
        || agg.limit_options().is_some()
        || !agg.dynamic_expressions_produced().is_empty()
        || agg.filter_expr().iter().any(Option::is_some)
        || agg.aggr_expr().is_empty()
    {
        return Ok(false);
    }
    let schema = agg.input_schema();
    for (e, _) in group.expr() {
        if !flat_key(&e.data_type(&schema)?) {
            return Ok(false);
        }
    }
    Ok(agg
        .aggr_expr()
        .iter()
        .all(|a| !a.is_distinct() && a.order_bys().is_empty() && a.groups_accumulator_supported()))
}

/// How rows find their groups (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    Cache,
    Runs,
}

impl Lookup {
    fn of(agg: &AggregateExec) -> Result<Self> {
        let keys = agg.group_expr().expr();
        Ok(
            if keys.len() == 1 && int_key(&keys[0].0.data_type(&agg.input_schema())?) {
                Lookup::Cache
            } else {
                Lookup::Runs
            },
        )
    }
}

/// The operator; see the module documentation. It keeps the `AggregateExec` it replaces as its
/// description (key, aggregates, output schema, partitioning) and never executes it.
#[derive(Debug)]
pub struct PartialAggregateExec {
    agg: Arc<AggregateExec>,
    lookup: Lookup,
    /// The expression under the key's cast, when the key only coarsens a timestamp: looked up as
    /// stored (`key_cast=on_emit`).
    stored_key: Option<Arc<dyn PhysicalExpr>>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl PartialAggregateExec {
    fn new(agg: Arc<AggregateExec>) -> Result<Self> {
        let p = agg.properties();
        // The same partitioning (a key's rows stay in their input partition), no ordering, and
        // no uniqueness of the key: a key may be emitted more than once.
        let properties = PlanProperties::new(
            EquivalenceProperties::new(agg.schema()),
            p.partitioning.clone(),
            EmissionType::Final,
            p.boundedness,
        );
        let lookup = Lookup::of(&agg)?;
        let stored_key = match lookup {
            Lookup::Cache => coarsening_cast(&agg.group_expr().expr()[0].0, &agg.input_schema())?
                .map(|c| Arc::clone(c.expr())),
            Lookup::Runs => None,
        };
        Ok(Self {
            lookup,
            stored_key,
            agg,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for PartialAggregateExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let aggr: Vec<&str> = self.agg.aggr_expr().iter().map(|a| a.name()).collect();
        let keys = match (self.lookup, &self.stored_key) {
            (Lookup::Cache, None) => "cache",
            (Lookup::Cache, Some(_)) => "cache, key_cast=on_emit",
            (Lookup::Runs, _) => "runs",
        };
        let group = self.agg.group_expr().expr();
        match t {
            DisplayFormatType::TreeRender => {
                let names: Vec<&str> = group.iter().map(|(_, n)| n.as_str()).collect();
                write!(
                    f,
                    "gby={}\naggr={}\nkeys={keys}",
                    names.join(", "),
                    aggr.join(", ")
                )
            }
            _ => {
                let gby: Vec<String> = group.iter().map(|(e, n)| format!("{e} as {n}")).collect();
                write!(
                    f,
                    "PartialAggregateExec: gby=[{}], aggr=[{}], keys={keys}",
                    gby.join(", "),
                    aggr.join(", ")
                )
            }
        }
    }
}

impl ExecutionPlan for PartialAggregateExec {
    fn name(&self) -> &str {
        "PartialAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.agg.input()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.agg.apply_expressions(f)
    }

    #[allow(deprecated)] // the trait still requires it (DataFusion 55)
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let agg = Arc::clone(&self.agg).with_new_children(children)?;
        let Some(agg) = agg.downcast_ref::<AggregateExec>() else {
            return internal_err!("AggregateExec::with_new_children returned another node");
        };
        Ok(Arc::new(Self::new(Arc::new(agg.clone()))?))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.agg.input().execute(partition, Arc::clone(&context))?;
        let options = &context.session_config().options().execution;
        let input_schema = self.agg.input_schema();
        let group = self.agg.group_expr();
        let schema = self.agg.schema();
        let groups = match self.lookup {
            Lookup::Cache => {
                let key_type = group.expr()[0].0.data_type(&input_schema)?;
                Groups::Cache {
                    keys: KeyGroups::new(),
                    stored_type: match &self.stored_key {
                        Some(k) => k.data_type(&input_schema)?,
                        None => key_type.clone(),
                    },
                    key_type,
                }
            }
            Lookup::Runs => Groups::Runs {
                values: new_group_values(group.group_schema(&input_schema)?, &GroupOrdering::None)?,
                run_groups: Vec::new(),
            },
        };
        let state = Partial {
            input,
            keys: group.expr().iter().map(|(e, _)| Arc::clone(e)).collect(),
            stored_key: self.stored_key.clone(),
            args: self
                .agg
                .aggr_expr()
                .iter()
                .map(|a| a.expressions())
                .collect(),
            accumulators: self
                .agg
                .aggr_expr()
                .iter()
                .map(|a| a.create_groups_accumulator())
                .collect::<Result<_>>()?,
            groups,
            indices: Vec::new(),
            schema: Arc::clone(&schema),
            batch_size: context.session_config().batch_size(),
            reservation: MemoryConsumer::new(format!("PartialAggregate[{partition}]"))
                // It can give memory back (by emitting): a fair pool may limit it.
                .with_can_spill(true)
                .register(context.memory_pool()),
            probe_rows: options.skip_partial_aggregation_probe_rows_threshold,
            probe_ratio: options.skip_partial_aggregation_probe_ratio_threshold,
            rows_seen: 0,
            skipping: false,
            out: VecDeque::new(),
            done: false,
            baseline: BaselineMetrics::new(&self.metrics, partition),
            skipped_rows: MetricBuilder::new(&self.metrics)
                .counter("skipped_aggregation_rows", partition),
            early_emits: MetricBuilder::new(&self.metrics).counter("early_emits", partition),
        };
        let stream = futures::stream::unfold(state, |mut s| async move {
            s.next().await.map(|item| (item, s))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Slots of the direct-mapped cache (a power of two, 64 KiB). The slot is the top bits of the
/// key times 2⁶⁴/φ (Fibonacci hashing), which spreads a date's windows — an arithmetic
/// progression — over distinct slots for 15-minute, hourly and one-minute steps in s, ms, µs and
/// ns. With 1,024 slots, 15-minute windows in µs (the stored unit) shared ~76 slots among 96:
/// every fifth row missed the cache, and grouping by the stored value cost more than it saved.
const CACHE_SLOTS: usize = 1 << 12;
/// An empty cache slot.
const EMPTY: u32 = u32::MAX;
/// Groups above which the operator emits and starts afresh (group numbers are `u32`).
const MAX_GROUPS: usize = (u32::MAX - 1) as usize;

/// Group numbers of keys, in order of first appearance.
struct KeyGroups {
    /// `(key, group)` by a multiplicative hash of the key; `EMPTY` group when unused.
    cache: Box<[(i64, u32)]>,
    map: HashMap<i64, u32, foldhash::fast::FixedState>,
    keys: Vec<i64>,
    null_group: Option<u32>,
}

impl KeyGroups {
    fn new() -> Self {
        Self {
            cache: vec![(0, EMPTY); CACHE_SLOTS].into_boxed_slice(),
            map: HashMap::default(),
            keys: Vec::new(),
            null_group: None,
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// Bytes held, for the memory pool.
    fn size(&self) -> usize {
        self.cache.len() * size_of::<(i64, u32)>()
            + self.map.capacity() * (size_of::<(i64, u32)>() + 1)
            + self.keys.capacity() * size_of::<i64>()
    }

    #[inline]
    fn slot(key: i64) -> usize {
        ((key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - CACHE_SLOTS.trailing_zeros()))
            as usize
    }

    /// The group of a non-null key.
    #[inline]
    fn group(&mut self, key: i64) -> u32 {
        let slot = &mut self.cache[Self::slot(key)];
        if slot.1 != EMPTY && slot.0 == key {
            return slot.1;
        }
        let next = self.keys.len() as u32;
        let g = *self.map.entry(key).or_insert(next);
        if g == next {
            self.keys.push(key);
        }
        *slot = (key, g);
        g
    }

    /// Group numbers of `values` (nulls where `nulls` says) into `out`.
    fn intern(&mut self, values: &[i64], nulls: Option<&NullBuffer>, out: &mut Vec<usize>) {
        out.clear();
        out.reserve(values.len());
        match nulls {
            None => out.extend(values.iter().map(|&k| self.group(k) as usize)),
            Some(n) => {
                for (i, &k) in values.iter().enumerate() {
                    let g = if n.is_valid(i) {
                        self.group(k)
                    } else {
                        *self.null_group.get_or_insert_with(|| {
                            self.keys.push(0);
                            (self.keys.len() - 1) as u32
                        })
                    };
                    out.push(g as usize);
                }
            }
        }
    }

    /// The keys as an array of `key_type`, and a fresh start.
    fn take(&mut self, key_type: &DataType) -> Result<ArrayRef> {
        let keys = std::mem::take(&mut self.keys);
        let len = keys.len();
        let nulls = self
            .null_group
            .take()
            .map(|g| NullBuffer::from_iter((0..len).map(|i| i != g as usize)));
        // A fresh map: a cleared one keeps its capacity, which `size` would count again.
        self.map = HashMap::default();
        self.cache.fill((0, EMPTY));
        let data = ArrayData::builder(key_type.clone())
            .len(len)
            .add_buffer(Buffer::from_vec(keys))
            .nulls(nulls)
            .build()?;
        Ok(make_array(data))
    }
}

/// The groups found so far, by one of the two lookups.
enum Groups {
    Cache {
        keys: KeyGroups,
        /// The type the keys are interned as; cast to `key_type` on emission when it differs.
        stored_type: DataType,
        key_type: DataType,
    },
    Runs {
        values: Box<dyn GroupValues>,
        /// Scratch: the group of each run of equal keys in a batch.
        run_groups: Vec<usize>,
    },
}

impl Groups {
    fn len(&self) -> usize {
        match self {
            Groups::Cache { keys, .. } => keys.len(),
            Groups::Runs { values, .. } => values.len(),
        }
    }

    fn size(&self) -> usize {
        match self {
            Groups::Cache { keys, .. } => keys.size(),
            Groups::Runs { values, run_groups } => {
                values.size() + run_groups.capacity() * size_of::<usize>()
            }
        }
    }

    /// The group of each of a batch's rows, given its key columns, into `out`.
    fn intern(&mut self, keys: &[ArrayRef], rows: usize, out: &mut Vec<usize>) -> Result<()> {
        match self {
            Groups::Cache { keys: groups, .. } => {
                let data = keys[0].to_data();
                let values: &[i64] = &data.buffer::<i64>(0)[..rows];
                groups.intern(values, keys[0].nulls(), out);
            }
            Groups::Runs { values, run_groups } => {
                let firsts = run_starts(keys, rows)?;
                out.clear();
                if firsts.len() * 2 > rows {
                    // Short runs: finding them saves nothing.
                    return values.intern(keys, out);
                }
                let heads = keys
                    .iter()
                    .map(|k| take(k, &firsts, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                run_groups.clear();
                values.intern(&heads, run_groups)?;
                out.reserve(rows);
                let starts = firsts.values();
                for (r, &g) in run_groups.iter().enumerate() {
                    let end = starts.get(r + 1).map_or(rows, |&e| e as usize);
                    out.extend(std::iter::repeat_n(g, end - starts[r] as usize));
                }
            }
        }
        Ok(())
    }

    /// The key columns of every group, and a fresh start.
    fn take(&mut self) -> Result<Vec<ArrayRef>> {
        match self {
            Groups::Cache {
                keys,
                stored_type,
                key_type,
            } => {
                let keys = keys.take(stored_type)?;
                // A coarsening cast divides: it cannot fail, so the cast's options do not matter.
                Ok(vec![if stored_type == key_type {
                    keys
                } else {
                    cast(&keys, key_type)?
                }])
            }
            Groups::Runs { values, .. } => {
                let keys = values.emit(EmitTo::All)?;
                // `emit(All)` leaves the table's index behind (DataFusion clears it the same way).
                values.clear_shrink(0);
                Ok(keys)
            }
        }
    }
}

/// The first row of each run of rows with equal keys (NULL equal to NULL).
fn run_starts(keys: &[ArrayRef], rows: usize) -> Result<UInt32Array> {
    if rows == 0 {
        return Ok(UInt32Array::from(Vec::<u32>::new()));
    }
    let mut starts = vec![0u32];
    let mut changed: Option<BooleanArray> = None;
    for k in keys {
        let d = distinct(&k.slice(1, rows - 1), &k.slice(0, rows - 1))?;
        changed = Some(match changed {
            None => d,
            Some(c) => or(&c, &d)?,
        });
    }
    if let Some(c) = changed {
        starts.extend(c.values().set_indices().map(|i| i as u32 + 1));
    }
    Ok(UInt32Array::from(starts))
}

/// One partition's state while it runs.
struct Partial {
    input: SendableRecordBatchStream,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The key as stored, looked up instead of `keys` while aggregating (`key_cast=on_emit`).
    stored_key: Option<Arc<dyn PhysicalExpr>>,
    args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    groups: Groups,
    indices: Vec<usize>,
    schema: SchemaRef,
    batch_size: usize,
    reservation: MemoryReservation,
    probe_rows: usize,
    probe_ratio: f64,
    rows_seen: usize,
    skipping: bool,
    out: VecDeque<RecordBatch>,
    done: bool,
    baseline: BaselineMetrics,
    /// Rows passed on as their own state (after the probe found too many groups).
    skipped_rows: Count,
    /// Emissions before the end of the input (the memory pool refused more).
    early_emits: Count,
}

impl Partial {
    /// The next output batch, `None` at the end.
    async fn next(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            if let Some(batch) = self.out.pop_front() {
                return Some(Ok(batch.record_output(&self.baseline)));
            }
            if self.done {
                self.reservation.free();
                self.baseline.done();
                return None;
            }
            let step = match self.input.next().await {
                Some(Ok(batch)) => self.consume(&batch),
                Some(Err(e)) => {
                    self.done = true;
                    Err(e)
                }
                None => {
                    self.done = true;
                    self.emit()
                }
            };
            if let Err(e) = step {
                self.done = true;
                self.out.clear();
                return Some(Err(e));
            }
        }
    }

    fn arguments(&self, batch: &RecordBatch) -> Result<Vec<Vec<ArrayRef>>> {
        self.args
            .iter()
            .map(|exprs| {
                exprs
                    .iter()
                    .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
                    .collect()
            })
            .collect()
    }

    fn consume(&mut self, batch: &RecordBatch) -> Result<()> {
        let elapsed = self.baseline.elapsed_compute().clone();
        let _timer = elapsed.timer();
        let rows = batch.num_rows();
        let keys = match (&self.stored_key, self.skipping) {
            (Some(stored), false) => vec![stored.evaluate(batch)?.into_array(rows)?],
            // Passed-through rows carry their keys as the output has them.
            _ => self
                .keys
                .iter()
                .map(|k| k.evaluate(batch)?.into_array(rows))
                .collect::<Result<Vec<_>>>()?,
        };
        let args = self.arguments(batch)?;
        if self.skipping {
            let mut columns = keys;
            for (acc, values) in self.accumulators.iter().zip(&args) {
                columns.extend(acc.convert_to_state(values, None)?);
            }
            self.out
                .push_back(RecordBatch::try_new(Arc::clone(&self.schema), columns)?);
            self.skipped_rows.add(rows);
            return Ok(());
        }
        if self.groups.len() + rows > MAX_GROUPS {
            // Group numbers must stay below the cache's `EMPTY`.
            self.early_emits.add(1);
            self.emit()?;
        }
        self.groups.intern(&keys, rows, &mut self.indices)?;
        let total = self.groups.len();
        for (acc, values) in self.accumulators.iter_mut().zip(&args) {
            acc.update_batch(values, &self.indices, None, total)?;
        }
        // DataFusion's rule (`SkipAggregationProbe`): once past the probe rows, after every
        // batch, skip when the groups per row exceed the ratio (never, at a ratio of 1).
        self.rows_seen += rows;
        if self.rows_seen >= self.probe_rows
            && total as f64 / self.rows_seen as f64 > self.probe_ratio
        {
            self.skipping = true;
            return self.emit();
        }
        let size = self.groups.size() + self.accumulators.iter().map(|a| a.size()).sum::<usize>();
        if self.reservation.try_resize(size).is_err() {
            self.early_emits.add(1);
            self.emit()?;
        }
        Ok(())
    }

    /// Every group gathered so far, as output batches; the groups start afresh.
    fn emit(&mut self) -> Result<()> {
        if self.groups.len() == 0 {
            return Ok(());
        }
        let mut columns = self.groups.take()?;
        for acc in &mut self.accumulators {
            columns.extend(acc.state(EmitTo::All)?);
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        if batch.num_rows() <= self.batch_size {
            self.out.push_back(batch);
        } else {
            // Copied into batches of the session's size (slices would each hold, and be
            // accounted as, the whole state downstream; view columns are compacted too).
            let mut chunks = BatchCoalescer::new(Arc::clone(&self.schema), self.batch_size);
            chunks.push_batch(batch)?;
            chunks.finish_buffered_batch()?;
            self.out
                .extend(std::iter::from_fn(|| chunks.next_completed_batch()));
        }
        self.reservation.free();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::TimestampMillisecondArray;
    use proptest::prelude::*;

    /// Group numbers in order of first appearance, NULL a group of its own: what any group table
    /// must give.
    fn reference(rows: &[Option<i64>]) -> (Vec<usize>, Vec<Option<i64>>) {
        let mut seen: Vec<Option<i64>> = Vec::new();
        let groups = rows
            .iter()
            .map(|k| match seen.iter().position(|s| s == k) {
                Some(g) => g,
                None => {
                    seen.push(*k);
                    seen.len() - 1
                }
            })
            .collect();
        (groups, seen)
    }

    /// A date's windows find distinct cache slots (no row of a compacted file misses the cache
    /// once each window has been seen): 15-minute, hourly and one-minute steps, the first 96 of
    /// each day of 2024–2026 (JST), in every timestamp unit.
    #[test]
    fn a_dates_windows_take_distinct_slots() {
        let first_day_ms = 1_704_034_800_000i64; // 2024-01-01T00:00+09:00
        for per_ms in [1_000_000i64, 1_000, 1] {
            for step_ms in [900_000i64, 3_600_000, 60_000] {
                for day in 0..(3 * 366) {
                    let start = first_day_ms + day * 86_400_000;
                    let slots: std::collections::HashSet<usize> = (0..96)
                        .map(|i| KeyGroups::slot((start + i * step_ms) * per_ms))
                        .collect();
                    assert_eq!(slots.len(), 96, "day {day}, step {step_ms} ms, ×{per_ms}");
                }
            }
        }
        // Seconds.
        for day in 0..(3 * 366) {
            let start = first_day_ms / 1_000 + day * 86_400;
            let slots: std::collections::HashSet<usize> =
                (0..96).map(|i| KeyGroups::slot(start + i * 900)).collect();
            assert_eq!(slots.len(), 96, "day {day}, seconds");
        }
    }

    proptest! {
        /// Keys from a pool larger than the cache (so slots collide), with 0, NULL and the i64
        /// extremes; two batches, the groups taken in between, then a third: every batch's group
        /// numbers and the taken keys (type and time zone kept) equal the reference's.
        #[test]
        fn the_cache_numbers_groups_as_a_plain_table_does(
            batches in prop::collection::vec(
                prop::collection::vec(
                    prop::option::weighted(
                        0.95,
                        prop_oneof![
                            8 => (0i64..12_000).prop_map(|k| k * 900_000),
                            1 => Just(0i64),
                            1 => Just(i64::MIN),
                            1 => Just(i64::MAX),
                        ],
                    ),
                    0..700,
                ),
                3,
            ),
        ) {
            let key_type = DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Millisecond,
                Some("Asia/Tokyo".into()),
            );
            let mut groups = KeyGroups::new();
            let mut out = Vec::new();
            let mut since_take: Vec<Option<i64>> = Vec::new();
            for (i, batch) in batches.iter().enumerate() {
                if i == 2 {
                    let keys = groups.take(&key_type).unwrap();
                    prop_assert_eq!(keys.data_type(), &key_type);
                    let got: Vec<Option<i64>> = keys
                        .as_any()
                        .downcast_ref::<TimestampMillisecondArray>()
                        .unwrap()
                        .iter()
                        .collect();
                    prop_assert_eq!(got, reference(&since_take).1);
                    since_take.clear();
                    prop_assert_eq!(groups.len(), 0);
                }
                let array = TimestampMillisecondArray::from(batch.clone())
                    .with_timezone("Asia/Tokyo");
                // A slice, so that offsets are exercised too.
                let array = array.slice(0, batch.len());
                let data = array.to_data();
                let values: &[i64] = &data.buffer::<i64>(0)[..batch.len()];
                groups.intern(values, array.nulls(), &mut out);
                let before = since_take.len();
                since_take.extend(batch.iter().copied());
                let (want, _) = reference(&since_take);
                prop_assert_eq!(&out[..], &want[before..]);
            }
        }
    }
}
