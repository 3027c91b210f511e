//! Reading an Iceberg change log back: the key of the row at a mark (where
//! an interrupted MySQL snapshot stood) and the latest image of rows by key
//! (Postgres' unchanged TOAST values). Files are chosen by the manifests'
//! bounds — `_tw_seq`/`_tw_ord` for a mark, the key's for a key of one
//! integer, date or timestamp column — and only the key and mark columns of
//! a chosen file are decoded before its matching rows are.

use std::collections::{BTreeSet, HashMap};

use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::datatypes::Int64Type;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::arrow::ProjectionMask;
use tidewater_core::{key_string, ColumnType, Datum, ErrorClass, Mark, TableId, TableSchema};

use super::avro::ManifestEntry;
use super::IcebergSink;
use crate::error::LakeError;
use crate::restore;

/// The bounds of field `id` in a file, as longs (ints widened).
fn long_bounds(entry: &ManifestEntry, id: i32) -> Option<(i64, i64)> {
    let decode = |b: &Vec<u8>| match b.len() {
        4 => Some(i64::from(i32::from_le_bytes(b[..4].try_into().ok()?))),
        8 => Some(i64::from_le_bytes(b[..8].try_into().ok()?)),
        _ => None,
    };
    Some((
        decode(entry.file.lower_bounds.get(&id)?)?,
        decode(entry.file.upper_bounds.get(&id)?)?,
    ))
}

/// A key value as a long, for comparing with bounds (integer, date and
/// timestamp keys).
fn key_long(datum: &Datum) -> Option<i64> {
    Some(match datum {
        Datum::Int8(v) => i64::from(*v),
        Datum::Int16(v) => i64::from(*v),
        Datum::Int32(v) => i64::from(*v),
        Datum::Int64(v) => *v,
        Datum::Date(v) => i64::from(*v),
        Datum::Timestamp(v) => *v,
        _ => return None,
    })
}

impl IcebergSink {
    /// The decoded rows of `columns` (those the file has) of one data file.
    async fn read_columns(
        &self,
        table: &TableId,
        entry: &ManifestEntry,
        columns: Option<&[&str]>,
    ) -> Result<Vec<RecordBatch>, LakeError> {
        let bytes = self.read_file(table, &entry.file.path).await?;
        let failed = |what: String| {
            Self::failed(
                table,
                "reading a data file of",
                format!("{}: {what}", entry.file.path),
                ErrorClass::Definite,
            )
        };
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| failed(e.to_string()))?;
        let builder = match columns {
            Some(names) => {
                let wanted: BTreeSet<&str> = names.iter().copied().collect();
                let schema = builder.parquet_schema();
                let roots: Vec<usize> = builder
                    .schema()
                    .fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| wanted.contains(f.name().as_str()))
                    .map(|(i, _)| i)
                    .collect();
                let mask = ProjectionMask::roots(schema, roots);
                builder.with_projection(mask)
            }
            None => builder,
        };
        let reader = builder.build().map_err(|e| failed(e.to_string()))?;
        reader
            .map(|batch| batch.map_err(|e| failed(e.to_string())))
            .collect()
    }

    /// The field id of column `name` in the table's current schema.
    fn field_id(&self, table: &TableId, name: &str) -> Option<i32> {
        self.tables
            .get(table)?
            .metadata
            .fields()
            .into_iter()
            .find(|f| f.name == name)
            .map(|f| f.id)
    }

    /// The key column values of the row at `mark`, if the table holds it.
    pub async fn key_at_mark(
        &mut self,
        schema: &TableSchema,
        mark: Mark,
    ) -> Result<Option<Vec<Datum>>, LakeError> {
        let table = &schema.table;
        let files = self.data_files(table).await?;
        let (Some(seq_id), Some(ord_id)) = (
            self.field_id(table, "_tw_seq"),
            self.field_id(table, "_tw_ord"),
        ) else {
            return Ok(None);
        };
        let keys: Vec<&tidewater_core::Column> = schema.key_columns().collect();
        let mut names: Vec<&str> = keys.iter().map(|c| c.name.as_str()).collect();
        names.extend(["_tw_seq", "_tw_ord"]);
        let (seq, ord) = (mark.seq as i64, mark.ord as i64);
        for entry in files {
            let holds =
                |id, v: i64| long_bounds(&entry, id).is_none_or(|(lo, hi)| lo <= v && v <= hi);
            if !holds(seq_id, seq) || !holds(ord_id, ord) {
                continue;
            }
            for batch in self.read_columns(table, &entry, Some(&names)).await? {
                let (Some(seqs), Some(ords)) = (
                    batch
                        .column_by_name("_tw_seq")
                        .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned()),
                    batch
                        .column_by_name("_tw_ord")
                        .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned()),
                ) else {
                    continue;
                };
                for row in 0..batch.num_rows() {
                    if (seqs.value(row), ords.value(row)) != (seq, ord) {
                        continue;
                    }
                    let mut key = Vec::with_capacity(keys.len());
                    for column in &keys {
                        let Some(array) = batch.column_by_name(&column.name) else {
                            return Ok(None);
                        };
                        key.push(restore::datum(array.as_ref(), row, &column.ty).map_err(
                            |source| LakeError::Arrow {
                                table: table.clone(),
                                source,
                            },
                        )?);
                    }
                    return Ok(Some(key));
                }
            }
        }
        Ok(None)
    }

    /// The latest committed image of each row whose key is in `keys` (see
    /// [`tidewater_core::Sink::latest_rows`]): absent when its latest
    /// change was a delete, or a truncate came after it.
    pub async fn lookup_rows(
        &mut self,
        schema: &TableSchema,
        keys: &[Vec<Datum>],
    ) -> Result<HashMap<String, Vec<Datum>>, LakeError> {
        let table = &schema.table;
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let files = self.data_files(table).await?;
        let key_columns: Vec<&tidewater_core::Column> = schema.key_columns().collect();
        let wanted: HashMap<String, ()> = keys.iter().map(|k| (key_string(k), ())).collect();
        // One integer-like key column: files whose key bounds miss every
        // wanted key are skipped (a truncate's NULL key is in no bound, so
        // files holding only truncates are read for them: `_tw_op`'s
        // bounds are not kept, the file is read when its key bounds are
        // absent, which is when it holds only NULL keys).
        let key_id = match key_columns.as_slice() {
            [only] => self.field_id(table, &only.name),
            _ => None,
        };
        let wanted_longs: Option<Vec<i64>> =
            key_id.and_then(|_| keys.iter().map(|k| k.first().and_then(key_long)).collect());
        let mut names: Vec<&str> = key_columns.iter().map(|c| c.name.as_str()).collect();
        names.extend(["_tw_seq", "_tw_ord", "_tw_op"]);
        // key → (mark, delete, file index, row)
        let mut latest: HashMap<String, (Mark, bool, usize, usize)> = HashMap::new();
        let mut truncated = Mark::ZERO;
        let arrow = |source| LakeError::Arrow {
            table: table.clone(),
            source,
        };
        for (index, entry) in files.iter().enumerate() {
            if let (Some(id), Some(longs)) = (key_id, &wanted_longs) {
                if let Some((lo, hi)) = long_bounds(entry, id) {
                    let null_keys = entry.file.null_value_counts.get(&id).copied().unwrap_or(1);
                    if null_keys == 0 && !longs.iter().any(|v| lo <= *v && *v <= hi) {
                        continue;
                    }
                }
            }
            let mut offset = 0;
            for batch in self.read_columns(table, entry, Some(&names)).await? {
                let (Some(seqs), Some(ords), Some(ops)) = (
                    batch
                        .column_by_name("_tw_seq")
                        .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned()),
                    batch
                        .column_by_name("_tw_ord")
                        .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned()),
                    batch
                        .column_by_name("_tw_op")
                        .and_then(|c| c.as_string_opt::<i32>().cloned()),
                ) else {
                    offset += batch.num_rows();
                    continue;
                };
                for row in 0..batch.num_rows() {
                    let mark = Mark::new(seqs.value(row) as u64, ords.value(row) as u64);
                    if ops.value(row) == "t" {
                        truncated = truncated.max(mark);
                        continue;
                    }
                    let mut key = Vec::with_capacity(key_columns.len());
                    for column in &key_columns {
                        let Some(array) = batch.column_by_name(&column.name) else {
                            break;
                        };
                        key.push(restore::datum(array.as_ref(), row, &column.ty).map_err(arrow)?);
                    }
                    if key.len() != key_columns.len() {
                        continue;
                    }
                    let text = key_string(&key);
                    if !wanted.contains_key(&text) {
                        continue;
                    }
                    let delete = ops.value(row) == "d";
                    if latest.get(&text).is_none_or(|(seen, ..)| *seen < mark) {
                        latest.insert(text, (mark, delete, index, offset + row));
                    }
                }
                offset += batch.num_rows();
            }
        }
        // The winners' whole rows, one read per file holding any.
        let mut by_file: HashMap<usize, Vec<(String, usize)>> = HashMap::new();
        for (key, (mark, delete, file, row)) in latest {
            if delete || mark <= truncated {
                continue;
            }
            by_file.entry(file).or_default().push((key, row));
        }
        let mut found = HashMap::new();
        for (file, rows) in by_file {
            let batches = self.read_columns(table, &files[file], None).await?;
            let Some(first) = batches.first() else {
                continue;
            };
            let whole = deltalake::arrow::compute::concat_batches(&first.schema(), &batches)
                .map_err(arrow)?;
            for (key, row) in rows {
                let mut values = Vec::with_capacity(schema.columns.len());
                for column in &schema.columns {
                    values.push(value_of(&whole, row, &column.name, &column.ty).map_err(arrow)?);
                }
                found.insert(key, values);
            }
        }
        Ok(found)
    }
}

/// The value of source column `name` at `row`: from its newest versioned
/// column holding one (`name__vN`, a type change), else the column itself;
/// NULL when the file has neither (a column added after it was written).
fn value_of(
    batch: &RecordBatch,
    row: usize,
    name: &str,
    ty: &ColumnType,
) -> Result<Datum, deltalake::arrow::error::ArrowError> {
    let schema = batch.schema();
    let mut versions: Vec<(u32, usize)> = schema
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let n = f
                .name()
                .strip_prefix(name)?
                .strip_prefix("__v")?
                .parse()
                .ok()?;
            Some((n, i))
        })
        .collect();
    versions.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    for (_, i) in versions {
        let column = batch.column(i);
        if !column.is_null(row) {
            return restore::datum(column.as_ref(), row, ty);
        }
    }
    match batch.column_by_name(name) {
        Some(column) => restore::datum(column.as_ref(), row, ty),
        None => Ok(Datum::Null),
    }
}
