//! Parquet statistics policy.
//!
//! Delta readers turn the min/max statistics of date and timestamp columns into
//! their language's date types to prune files. Python's `datetime` (used by the
//! `deltalake` package) only holds years 1..=9999, and delta-rs itself panics on
//! dates beyond chrono's range, so a file whose date/timestamp column holds a
//! value outside years 1..=9999 (a BC date, a Postgres `infinity`) is written
//! without min/max statistics *for that column*. Every other file and column
//! keeps its statistics, so data skipping still works for ordinary data.

use deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use deltalake::arrow::datatypes::{DataType, Date32Type, TimeUnit, TimestampMicrosecondType};
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::{
    EnabledStatistics, WriterProperties, WriterPropertiesBuilder,
};
use deltalake::parquet::schema::types::ColumnPath;

/// 0001-01-01 and 9999-12-31 as days since 1970-01-01.
/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 128 * 1024;

const SAFE_DAYS: (i32, i32) = (-719_162, 2_932_896);
/// 0001-01-01T00:00:00 and 9999-12-31T23:59:59.999999 in microseconds.
const SAFE_MICROS: (i64, i64) = (-62_135_596_800_000_000, 253_402_300_799_999_999);

/// Bytes of a data page of the key and mark columns. Lookups by key read
/// those columns of only the pages whose min/max (the page index) may hold
/// a wanted key, so small pages make a lookup cost what its keys cost: at
/// 8 KiB an 8-byte key has ~1 000 values a page (the writer checks the
/// limit every 1 024 values).
pub const LOOKUP_PAGE_BYTES: usize = 8 * 1024;

/// The columns lookups by key read first: the key's and the marks.
fn lookup_columns<'a>(keys: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
    keys.iter().copied().chain(["_tw_seq", "_tw_ord", "_tw_op"])
}

/// Writer properties for one batch of a table keyed by `keys`: snappy,
/// small pages for the key and mark columns, and no statistics on the
/// columns [`columns_without_stats`] names.
pub fn writer_properties(batch: &RecordBatch, keys: &[&str]) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_created_by(format!("tidewater {}", env!("CARGO_PKG_VERSION")))
        .set_compression(Compression::SNAPPY)
        // Row groups of a bounded size: a file of many batches is encoded
        // one row group at a time, in bounded memory.
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    // A dictionary never pays off for columns whose values repeat little
    // (`_tw_ord`, a single-column key): interning each value is pure cost.
    let unique: &[&str] = if keys.len() == 1 { keys } else { &[] };
    for name in unique.iter().copied().chain(["_tw_ord"]) {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(name), false);
    }
    builder = lookup_pages(builder, keys);
    for path in columns_without_stats(batch) {
        builder = builder.set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    builder.build()
}

/// Small pages (see [`LOOKUP_PAGE_BYTES`]) for the key and mark columns.
pub fn lookup_pages(
    mut builder: WriterPropertiesBuilder,
    keys: &[&str],
) -> WriterPropertiesBuilder {
    for name in lookup_columns(keys) {
        builder =
            builder.set_column_data_page_size_limit(ColumnPath::from(name), LOOKUP_PAGE_BYTES);
    }
    builder
}

/// Parquet leaf paths of date/timestamp columns holding values outside years
/// 1..=9999.
pub fn columns_without_stats(batch: &RecordBatch) -> Vec<ColumnPath> {
    let mut paths = Vec::new();
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        visit(vec![field.name().clone()], array, &mut paths);
    }
    paths
}

fn visit(path: Vec<String>, array: &ArrayRef, out: &mut Vec<ColumnPath>) {
    let outside = match array.data_type() {
        DataType::Date32 => array
            .as_primitive::<Date32Type>()
            .iter()
            .flatten()
            .any(|d| d < SAFE_DAYS.0 || d > SAFE_DAYS.1),
        DataType::Timestamp(TimeUnit::Microsecond, _) => array
            .as_primitive::<TimestampMicrosecondType>()
            .iter()
            .flatten()
            .any(|t| t < SAFE_MICROS.0 || t > SAFE_MICROS.1),
        DataType::List(element) => {
            let mut child = path;
            child.push("list".into());
            child.push(element.name().clone());
            visit(child, array.as_list::<i32>().values(), out);
            return;
        }
        _ => false,
    };
    if outside {
        out.push(ColumnPath::new(path));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Date32Array, Int32Array, ListArray};
    use deltalake::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn flags_only_out_of_range_temporal_columns() {
        let dates = Date32Array::from(vec![Some(0), Some(SAFE_DAYS.0 - 1), None]);
        let schema = Schema::new(vec![
            Field::new("bc", DataType::Date32, true),
            Field::new("fine", DataType::Date32, true),
            Field::new("n", DataType::Int32, true),
            Field::new(
                "ad",
                DataType::List(Arc::new(Field::new("element", DataType::Date32, true))),
                true,
            ),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(dates),
                Arc::new(Date32Array::from(vec![Some(0), Some(SAFE_DAYS.1), None])),
                Arc::new(Int32Array::from(vec![1, 2, 3])),
                Arc::new(ListArray::new(
                    Arc::new(Field::new("element", DataType::Date32, true)),
                    deltalake::arrow::buffer::OffsetBuffer::from_lengths([1, 0, 0]),
                    Arc::new(Date32Array::from(vec![i32::MAX])),
                    None,
                )),
            ],
        )
        .unwrap();
        let paths: Vec<String> = columns_without_stats(&batch)
            .iter()
            .map(|p| p.string())
            .collect();
        assert_eq!(paths, vec!["bc".to_string(), "ad.list.element".to_string()]);
    }
}
