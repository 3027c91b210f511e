//! Soft deletes in current-state tables (`sink.soft_deletes`): a deleted
//! key keeps a row — the delete's image as the change log holds it (every
//! column under `REPLICA IDENTITY FULL` and on MySQL, else the key) — with
//! `_tw_deleted = true` and the delete's commit time in `_tw_deleted_at`.
//! Live rows have `_tw_deleted = false` (NULL in rows merged before soft
//! deletes were turned on). A truncate still empties the current table: a
//! table copied again starts with one, and flagging the old rows would mean
//! holding every key of the copy to keep them apart from its rows.

use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMicrosecondArray,
};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit, TimestampMicrosecondType};
use deltalake::arrow::error::ArrowError;

/// Whether the row is a kept delete.
pub const DELETED: &str = "_tw_deleted";
/// The delete's commit time.
pub const DELETED_AT: &str = "_tw_deleted_at";

fn deleted_at_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The two columns soft deletes add to a current-state table.
pub fn soft_delete_fields() -> [Field; 2] {
    [
        Field::new(DELETED, DataType::Boolean, true),
        Field::new(DELETED_AT, deleted_at_type(), true),
    ]
}

/// `batch` (change-log rows, with `_tw_op` and `_tw_commit_ts`) with the
/// soft-delete columns appended.
pub fn with_soft_delete_flags(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| ArrowError::SchemaError(format!("a change-log batch without {name}")))
    };
    let ops = cast(&column("_tw_op")?, &DataType::Utf8)?;
    let ops = ops.as_string::<i32>();
    let commit_ts = cast(&column("_tw_commit_ts")?, &deleted_at_type())?;
    let commit_ts = commit_ts.as_primitive::<TimestampMicrosecondType>();
    let deleted: BooleanArray = (0..batch.num_rows())
        .map(|i| Some(ops.is_valid(i) && ops.value(i) == "d"))
        .collect();
    let deleted_at: TimestampMicrosecondArray = (0..batch.num_rows())
        .map(|i| (deleted.value(i) && commit_ts.is_valid(i)).then(|| commit_ts.value(i)))
        .collect::<TimestampMicrosecondArray>()
        .with_timezone("UTC");
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .filter(|f| f.name() != DELETED && f.name() != DELETED_AT)
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns: Vec<ArrayRef> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| f.name() != DELETED && f.name() != DELETED_AT)
        .map(|(_, c)| c.clone())
        .collect();
    fields.extend(soft_delete_fields());
    columns.push(Arc::new(deleted));
    columns.push(Arc::new(deleted_at));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::StringArray;

    #[test]
    fn deletes_are_flagged_with_their_commit_time() {
        let schema = Schema::new(vec![
            Field::new("_tw_op", DataType::Utf8, false),
            Field::new("_tw_commit_ts", deleted_at_type(), false),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec!["c", "d", "u"])),
                Arc::new(TimestampMicrosecondArray::from(vec![1, 2, 3]).with_timezone("UTC")),
            ],
        )
        .unwrap();
        let flagged = with_soft_delete_flags(&batch).unwrap();
        let deleted = flagged.column_by_name(DELETED).unwrap().as_boolean();
        assert_eq!(
            deleted.iter().collect::<Vec<_>>(),
            [Some(false), Some(true), Some(false)]
        );
        let at = flagged
            .column_by_name(DELETED_AT)
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        assert_eq!(at.iter().collect::<Vec<_>>(), [None, Some(2), None]);
    }
}
