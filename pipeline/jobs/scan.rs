//! How DataFusion reads a stored table: the live files of one Delta snapshot, scanned by
//! DataFusion's own Parquet source.
//!
//! jinryu writes its tables with the simplest Delta protocol (reader version 1: no deletion
//! vectors, no column mapping, partition values only in paths), so a snapshot is fully described
//! by its file list: path, size, `date` partition value and the `add` action's statistics. This
//! provider hands exactly those files to DataFusion's Parquet scan, which then does what it does
//! for any Parquet table:
//!
//! * **partition pruning**: filters on `date` drop files before the plan is built (exact: they are
//!   not re-applied row by row);
//! * **file pruning** by the Delta statistics (row count, min/max/null count per column), attached
//!   to each file so that the scan skips a file without opening it;
//! * **row-group and page pruning** by the Parquet footer's statistics and page index.
//!
//! `EXPLAIN` shows the files kept (`file_groups`), the `predicate` and, with `ANALYZE`, what each
//! pruning step skipped (`files_ranges_pruned_statistics`, `row_groups_pruned_statistics`,
//! `page_index_rows_pruned`).
//!
//! Why not delta-rs's own provider: it rebuilds every batch through the Delta kernel (partition
//! values materialised row by row, then cast), which cost more than the query itself on a year of
//! aggregates (BENCHMARKS.md, 2026-12-03). A table this provider does not understand (a newer
//! reader protocol, other partition columns, files outside the table folder) is read through
//! delta-rs's provider instead — never guessed at.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringViewArray};

use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::{DFSchema, ScalarValue, Statistics};
use datafusion::datasource::TableProvider;
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use object_store::path::{Path, PathPart};

use crate::sink::delta::Table;

/// The partition column of both tables.
const PARTITION: &str = "date";

/// The column type a scan yields for a stored column: strings as `Utf8View` (what DataFusion's
/// Parquet reader produces without a copy); everything else as stored.
fn scan_type(stored: &DataType) -> DataType {
    match stored {
        DataType::Utf8 | DataType::LargeUtf8 => DataType::Utf8View,
        other => other.clone(),
    }
}

/// The `date` of one of our files (set in [`DeltaFiles::try_new`]).
fn date_of(f: &PartitionedFile) -> &str {
    match f.partition_values.first() {
        Some(ScalarValue::Utf8View(Some(d))) => d,
        other => unreachable!("a file's date is set as Utf8View, not {other:?}"),
    }
}

/// A Delta snapshot's live files as a DataFusion table (see the module docs).
#[derive(Debug)]
pub struct DeltaFiles {
    /// Data columns (as scanned) then `date`.
    schema: SchemaRef,
    /// Data columns as scanned.
    file_schema: SchemaRef,
    partition: FieldRef,
    files: Vec<PartitionedFile>,
    url: ObjectStoreUrl,
}

impl DeltaFiles {
    /// The provider for `loaded`, a snapshot of `table` whose objects DataFusion reaches under
    /// `url` (the table's folder is `<url>/<table name>/`); `None` when the snapshot uses
    /// something this provider does not read (see the module docs).
    pub fn try_new(
        table: Table,
        loaded: &deltalake_core::DeltaTable,
        url: ObjectStoreUrl,
    ) -> anyhow::Result<Option<Self>> {
        let snap = loaded.snapshot()?;
        let protocol = serde_json::to_value(snap.protocol())?;
        let metadata = serde_json::to_value(snap.metadata())?;
        if protocol["minReaderVersion"].as_i64() != Some(1)
            || metadata["partitionColumns"] != serde_json::json!([PARTITION])
        {
            tracing::debug!(table = table.name(), %protocol, "read through delta-rs");
            return Ok(None);
        }
        // The stored columns jinryu wrote, by name; a table whose schema has other columns is
        // not ours to shortcut.
        let stored = table.stored_schema();
        let table_cols: Vec<String> = snap.schema().fields().map(|f| f.name().clone()).collect();
        let ours: Vec<String> = stored.fields().iter().map(|f| f.name().clone()).collect();
        if table_cols != ours {
            tracing::debug!(
                table = table.name(),
                ?table_cols,
                "unexpected columns: read through delta-rs"
            );
            return Ok(None);
        }
        let file_fields: Vec<Field> = stored
            .fields()
            .iter()
            .filter(|f| f.name() != PARTITION)
            .map(|f| Field::new(f.name(), scan_type(f.data_type()), f.is_nullable()))
            .collect();
        let file_schema = Arc::new(Schema::new(file_fields));
        let partition: FieldRef = Arc::new(Field::new(PARTITION, DataType::Utf8View, false));
        let mut fields: Vec<FieldRef> = file_schema.fields().iter().cloned().collect();
        fields.push(partition.clone());
        let schema = Arc::new(Schema::new(fields));

        let mut files = Vec::new();
        for f in snap.log_data().iter() {
            let rel = f.path();
            let date = f.partition_values_map().remove(PARTITION).flatten();
            let (Some(date), false) = (date, rel.contains("://") || rel.starts_with('/')) else {
                tracing::debug!(table = table.name(), path = %rel, "file outside the table folder or without a date: read through delta-rs");
                return Ok(None);
            };
            let rel_path = f.object_store_path();
            let location = Path::from_iter(
                std::iter::once(PathPart::from(table.name())).chain(rel_path.parts()),
            );
            let meta = object_store::ObjectMeta {
                location,
                last_modified: f.modification_datetime()?,
                size: f.size() as u64,
                e_tag: None,
                version: None,
            };
            // Per file only, for pruning (the scan's file pruner reads Exact bounds). They must
            // never become the table's statistics: a max rounded up to its millisecond would then
            // answer `SELECT MAX(window_start)` by itself.
            let stats = file_statistics(&file_schema, f.stats().as_deref());
            let file = PartitionedFile::new_from_meta(meta)
                .with_partition_values(vec![ScalarValue::Utf8View(Some(date))])
                .with_statistics(Arc::new(stats));
            files.push(file);
        }
        // Dates in order: a scan reads a date's file(s) together and EXPLAIN lists them in order.
        files.sort_by(|a, b| a.path().as_ref().cmp(b.path().as_ref()));
        Ok(Some(DeltaFiles {
            schema,
            file_schema,
            partition,
            files,
            url,
        }))
    }

    /// The dates whose files `filters` (on `date` only) keep; `None`: no such filter. Each date is
    /// evaluated once, as SQL's WHERE does a row: kept only when the filter is true (not false,
    /// not NULL). These filters are pushed down as exact, so nothing re-checks the rows.
    fn dates_kept(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> datafusion::error::Result<Option<HashSet<String>>> {
        let Some(filter) = conjunction(filters) else {
            return Ok(None);
        };
        let dates: BTreeSet<&str> = self.files.iter().map(date_of).collect();
        let schema = Arc::new(Schema::new(vec![self.partition.clone()]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringViewArray::from_iter_values(dates.iter()))],
        )?;
        let expr = state.create_physical_expr(filter, &DFSchema::try_from(schema)?)?;
        let result = expr.evaluate(&batch)?.into_array(batch.num_rows())?;
        let keep = result.as_boolean_opt().ok_or_else(|| {
            datafusion::error::DataFusionError::Plan(format!(
                "a filter on `{PARTITION}` is not true or false but {}",
                result.data_type()
            ))
        })?;
        Ok(Some(
            dates
                .iter()
                .enumerate()
                .filter(|(i, _)| keep.is_valid(*i) && keep.value(*i))
                .map(|(_, d)| d.to_string())
                .collect(),
        ))
    }

    /// `files` split into at most `n` groups of consecutive files with about equal bytes.
    fn groups(files: Vec<PartitionedFile>, n: usize) -> Vec<FileGroup> {
        let total: u64 = files.iter().map(|f| f.object_meta.size).sum();
        let per = total.div_ceil(n.max(1) as u64).max(1);
        let mut groups = vec![];
        let mut current = vec![];
        let mut bytes = 0;
        for f in files {
            bytes += f.object_meta.size;
            current.push(f);
            if bytes >= per && groups.len() + 1 < n {
                groups.push(FileGroup::new(std::mem::take(&mut current)));
                bytes = 0;
            }
        }
        if !current.is_empty() {
            groups.push(FileGroup::new(current));
        }
        groups
    }
}

/// The dates of `loaded`'s data files that hold rows (a file's `numRecords`; a file without
/// statistics counts as holding rows), in order.
pub fn dates_with_rows(
    loaded: &deltalake_core::DeltaTable,
) -> anyhow::Result<std::collections::BTreeSet<chrono::NaiveDate>> {
    let mut out = std::collections::BTreeSet::new();
    for f in loaded.snapshot()?.log_data().iter() {
        if f.num_records() == Some(0) {
            continue;
        }
        if let Some(Some(d)) = f.partition_values_map().remove(PARTITION) {
            out.insert(
                chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d")
                    .map_err(|e| anyhow::anyhow!("data file {} has date `{d}`: {e}", f.path()))?,
            );
        }
    }
    Ok(out)
}

/// A file's Delta statistics (`numRecords`, `minValues`, `maxValues`, `nullCount`) for the
/// columns of `schema`; what is missing or not trustworthy is left `Absent`.
fn file_statistics(schema: &Schema, stats: Option<&str>) -> Statistics {
    let mut out = Statistics::new_unknown(schema);
    let Some(v) = stats.and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok()) else {
        return out;
    };
    if let Some(n) = v["numRecords"].as_u64() {
        out.num_rows = Precision::Exact(n as usize);
    }
    for (field, col) in schema.fields().iter().zip(out.column_statistics.iter_mut()) {
        let name = field.name();
        if let Some(n) = v["nullCount"][name].as_u64() {
            col.null_count = Precision::Exact(n as usize);
        }
        if let Some(min) = stat_value(field.data_type(), &v["minValues"][name], false) {
            col.min_value = Precision::Exact(min);
        }
        if let Some(max) = stat_value(field.data_type(), &v["maxValues"][name], true) {
            col.max_value = Precision::Exact(max);
        }
    }
    out
}

/// One min or max value of the Delta statistics as a scalar of `t`. Strings are used only when
/// shorter than 32 bytes (writers shorten longer ones — Spark to 32 characters, delta-rs to 64
/// bytes — and a shortened value is not the column's own); timestamps are stored to the
/// millisecond, so a max is rounded up to the last microsecond of its millisecond.
fn stat_value(t: &DataType, v: &serde_json::Value, is_max: bool) -> Option<ScalarValue> {
    match t {
        DataType::Int64 => v.as_i64().map(|n| ScalarValue::Int64(Some(n))),
        DataType::Utf8View => v
            .as_str()
            .filter(|s| s.len() < 32)
            .map(|s| ScalarValue::Utf8View(Some(s.to_string()))),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let t = chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
            let us = t.timestamp_micros();
            let us = if is_max {
                us - us.rem_euclid(1000) + 999
            } else {
                us
            };
            Some(ScalarValue::TimestampMicrosecond(Some(us), tz.clone()))
        }
        _ => None,
    }
}

#[async_trait]
impl TableProvider for DeltaFiles {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if expr_applicable_for_cols(&[PARTITION], f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let on_date: Vec<Expr> = filters
            .iter()
            .filter(|f| expr_applicable_for_cols(&[PARTITION], f))
            .cloned()
            .collect();
        let kept = self.dates_kept(state, on_date)?;
        let files: Vec<PartitionedFile> = self
            .files
            .iter()
            .filter(|f| kept.as_ref().is_none_or(|k| k.contains(date_of(f))))
            .cloned()
            .collect();
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let groups = Self::groups(files, state.config().target_partitions());
        let source = ParquetSource::new(
            TableSchema::builder(self.file_schema.clone())
                .with_table_partition_cols(vec![self.partition.clone()])
                .build(),
        );
        let config = FileScanConfigBuilder::new(self.url.clone(), Arc::new(source))
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        // As DataFusion's listing tables do: the session's Parquet options and footer cache.
        ParquetFormat::default()
            .with_options(state.table_options().parquet.clone())
            .create_physical_plan(state, config)
            .await
    }
}
