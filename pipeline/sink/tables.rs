//! The two stored tables as Arrow schemas, rows → `RecordBatch`, and `RecordBatch` → Parquet bytes.
//! The column lists are the contract in `schemas/aggregates.json` and `schemas/quarantine.json`
//! (a test keeps them in step).

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::config::SensorRegistry;
use crate::quarantine::QuarantineRecord;
use crate::window::AggRow;

fn utc_ms() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// Columns of `aggregates` (the `date` partition column comes from the path).
pub static AGGREGATES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("sensor_id", DataType::Utf8, false),
        Field::new("direction", DataType::Utf8, false),
        Field::new("window_start", utc_ms(), false),
        Field::new("count", DataType::Int64, false),
        Field::new("events", DataType::Int64, false),
        Field::new("heartbeats", DataType::Int64, false),
        Field::new("faults", DataType::Int64, false),
        Field::new("fault_code", DataType::Utf8, true),
        Field::new("up", DataType::Boolean, false),
        Field::new("late", DataType::Boolean, false),
    ]))
});

/// Columns of `quarantine` (the `date` partition column is the local date it was received).
pub static QUARANTINE: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("partition", DataType::Int64, true),
        Field::new("position", DataType::UInt64, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
        Field::new("payload", DataType::Binary, false),
        Field::new("payload_bytes", DataType::UInt64, false),
        Field::new("received_at", utc_ms(), false),
    ]))
});

/// Aggregate rows as a batch, in the order given.
pub fn aggregates_batch<'a>(
    rows: impl ExactSizeIterator<Item = &'a AggRow>,
    registry: &SensorRegistry,
) -> RecordBatch {
    let n = rows.len();
    let mut sensor = StringBuilder::with_capacity(n, n * 6);
    let mut direction = StringBuilder::with_capacity(n, n * 6);
    let mut ws = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut count = Int64Builder::with_capacity(n);
    let mut events = Int64Builder::with_capacity(n);
    let mut heartbeats = Int64Builder::with_capacity(n);
    let mut faults = Int64Builder::with_capacity(n);
    let mut code = StringBuilder::new();
    let mut up = BooleanBuilder::with_capacity(n);
    let mut late = BooleanBuilder::with_capacity(n);
    for r in rows {
        let s = registry.get(r.sensor);
        sensor.append_value(&s.id);
        direction.append_value(&s.directions[r.direction as usize]);
        ws.append_value(r.window_start);
        count.append_value(r.count as i64);
        events.append_value(r.events as i64);
        heartbeats.append_value(i64::from(r.heartbeats));
        faults.append_value(i64::from(r.faults));
        code.append_option(r.fault_code.as_deref());
        up.append_value(r.up);
        late.append_value(r.late);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(sensor.finish()),
        Arc::new(direction.finish()),
        Arc::new(ws.finish()),
        Arc::new(count.finish()),
        Arc::new(events.finish()),
        Arc::new(heartbeats.finish()),
        Arc::new(faults.finish()),
        Arc::new(code.finish()),
        Arc::new(up.finish()),
        Arc::new(late.finish()),
    ];
    RecordBatch::try_new(AGGREGATES.clone(), cols).expect("aggregates columns match the schema")
}

/// Quarantine records as a batch.
pub fn quarantine_batch(records: &[QuarantineRecord]) -> RecordBatch {
    let n = records.len();
    let mut source = StringBuilder::new();
    let mut partition = Int64Builder::with_capacity(n);
    let mut position = UInt64Builder::with_capacity(n);
    let mut reason = StringBuilder::new();
    let mut detail = StringBuilder::new();
    let mut payload = BinaryBuilder::new();
    let mut bytes = UInt64Builder::with_capacity(n);
    let mut received = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    for q in records {
        source.append_value(&q.source);
        partition.append_option(q.partition);
        position.append_value(q.position);
        reason.append_value(q.reason.code());
        detail.append_value(&q.detail);
        payload.append_value(&q.payload);
        bytes.append_value(q.payload_bytes);
        received.append_value(q.received_at_ms);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(source.finish()),
        Arc::new(partition.finish()),
        Arc::new(position.finish()),
        Arc::new(reason.finish()),
        Arc::new(detail.finish()),
        Arc::new(payload.finish()),
        Arc::new(bytes.finish()),
        Arc::new(received.finish()),
    ];
    RecordBatch::try_new(QUARANTINE.clone(), cols).expect("quarantine columns match the schema")
}

/// Encodes one batch as a complete Parquet file (Snappy, statistics on).
pub fn to_parquet(batch: &RecordBatch) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("jinryu {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 4 + 1024);
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    w.write(batch)?;
    w.close()?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `schemas/*.json` lists the same columns, SQL types and nullability as the code writes.
    #[test]
    fn schema_files_match_the_code() {
        use crate::sink::delta::Table;
        for table in Table::ALL {
            let file = format!("schemas/{}.json", table.name());
            let file = file.as_str();
            // What SQL shows: the written columns, text as Utf8View.
            let view = table.view_schema();
            let schema = Schema::new(view.fields()[..view.fields().len() - 1].to_vec());
            let written = match table {
                Table::Aggregates => AGGREGATES.clone(),
                Table::Quarantine => QUARANTINE.clone(),
            };
            assert_eq!(
                written
                    .fields()
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>(),
                schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
                "{file}"
            );
            let text =
                std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
            let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
            let cols = doc["columns"].as_array().unwrap();
            let data_cols: Vec<_> = cols
                .iter()
                .filter(|c| c["partition"].as_bool() != Some(true))
                .collect();
            assert_eq!(data_cols.len(), schema.fields().len(), "{file}");
            for (c, f) in data_cols.iter().zip(schema.fields()) {
                assert_eq!(c["name"].as_str().unwrap(), f.name(), "{file}");
                assert_eq!(
                    c["arrow_type"].as_str().unwrap(),
                    f.data_type().to_string(),
                    "{file} {}",
                    f.name()
                );
                assert_eq!(
                    c["nullable"].as_bool().unwrap(),
                    f.is_nullable(),
                    "{file} {}",
                    f.name()
                );
            }
        }
    }

    /// `delta_type` in `schemas/*.json` is the type of each column in the Delta table jinryu
    /// creates, the `date` partition included.
    #[test]
    fn schema_files_match_the_delta_tables() {
        use crate::sink::delta::Table;
        for table in Table::ALL {
            let file = format!("schemas/{}.json", table.name());
            let text =
                std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
            let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
            let cols = doc["columns"].as_array().unwrap();
            let stored = table.stored_schema();
            assert_eq!(cols.len(), stored.fields().len(), "{file}");
            for (c, f) in cols.iter().zip(stored.fields()) {
                assert_eq!(c["name"].as_str().unwrap(), f.name(), "{file}");
                let delta = match f.data_type() {
                    DataType::Utf8 => "string",
                    DataType::Int64 => "long",
                    DataType::Boolean => "boolean",
                    DataType::Binary => "binary",
                    DataType::Timestamp(TimeUnit::Microsecond, Some(tz))
                        if tz.as_ref() == "UTC" =>
                    {
                        "timestamp"
                    }
                    other => panic!("{file} {}: no Delta type for {other}", f.name()),
                };
                assert_eq!(
                    c["delta_type"].as_str().unwrap(),
                    delta,
                    "{file} {}",
                    f.name()
                );
            }
        }
    }
}
