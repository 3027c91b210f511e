//! Row digests for `tidewater verify`: one hash per row of a batch, equal
//! for equal values whichever side the batch comes from (the source's
//! copy, the lake's Parquet files, a warehouse table), so a comparison
//! never moves the values themselves.
//!
//! Each side's columns are first brought to the same few canonical types
//! ([`canonical_type`]: any integer to 64 bits, any string to
//! Utf8, any timestamp to UTC microseconds, …); a type with no canonical
//! form (a list, a struct) is hashed as its display text, which is the
//! same on both sides once both hold the same Arrow type. Every cell is fed
//! as a tag, a length and bytes, so no two different rows share an
//! encoding. A column a side lacks is NULL there (the lake reads a column
//! added after a file was written as NULL too).

use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Field, Float32Type, Float64Type, Int64Type, Schema,
    Time64MicrosecondType, TimeUnit, TimestampMicrosecondType, UInt64Type,
};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
use xxhash_rust::xxh3::Xxh3;

/// One column of a batch in its canonical form.
enum Canonical {
    /// Every cell NULL (the side lacks the column).
    Missing,
    Array(ArrayRef),
    /// No canonical type: hashed as display text.
    Text(ArrayRef),
}

/// The columns of one batch, named in the order they are hashed.
pub struct RowDigests {
    columns: Vec<Canonical>,
    key: Vec<usize>,
}

impl RowDigests {
    /// `batch`'s columns `names` (by name; one it lacks is NULL), of which
    /// the `key` columns make the key hash.
    pub fn new(batch: &RecordBatch, names: &[String], key: &[String]) -> Result<Self, ArrowError> {
        let mut columns = Vec::with_capacity(names.len());
        for name in names {
            let Some(array) = batch.column_by_name(name) else {
                columns.push(Canonical::Missing);
                continue;
            };
            columns.push(canonical(name, array)?);
        }
        let key = key
            .iter()
            .map(|k| {
                names.iter().position(|n| n == k).ok_or_else(|| {
                    ArrowError::InvalidArgumentError(format!("key column {k} is not compared"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { columns, key })
    }

    /// The hash of `row`'s key.
    pub fn key(&self, row: usize) -> u128 {
        let mut h = Xxh3::new();
        for &c in &self.key {
            feed(&mut h, &self.columns[c], row);
        }
        h.digest128()
    }

    /// The hash of all of `row`'s compared columns.
    pub fn row(&self, row: usize) -> u128 {
        let mut h = Xxh3::new();
        for column in &self.columns {
            feed(&mut h, column, row);
        }
        h.digest128()
    }

    /// `row`'s key as a JSON object (column → value), for printing the key
    /// of a difference; never called for other columns.
    pub fn key_json(&self, row: usize, names: &[String]) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        for &c in &self.key {
            object.insert(names[c].clone(), json_cell(&self.columns[c], row));
        }
        serde_json::Value::Object(object)
    }
}

/// The key digests ([`RowDigests::key`]) of keys given as text: one
/// `(column, type, values)` per key column, the n-th values making the n-th
/// key; each text is cast to the column's type first (as the lake holds
/// it), so the digests match those of the lake's rows.
pub fn key_digests(columns: &[(String, DataType, Vec<String>)]) -> Result<Vec<u128>, ArrowError> {
    let mut arrays = Vec::with_capacity(columns.len());
    let mut fields = Vec::with_capacity(columns.len());
    for (name, ty, texts) in columns {
        let strings: ArrayRef = Arc::new(StringArray::from(texts.clone()));
        let typed = cast(&strings, ty)?;
        if typed.null_count() > 0 {
            return Err(ArrowError::CastError(format!(
                "key column {name}: a value is not a {ty} (the lake's type)"
            )));
        }
        arrays.push(typed);
        fields.push(Field::new(name, ty.clone(), true));
    }
    let names: Vec<String> = columns.iter().map(|(n, _, _)| n.clone()).collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
    let digests = RowDigests::new(&batch, &names, &names)?;
    Ok((0..batch.num_rows()).map(|row| digests.key(row)).collect())
}

/// The canonical type a result column is read as, or why it cannot be.
pub fn canonical_type(name: &str, ty: &DataType) -> Result<DataType, String> {
    Ok(match ty {
        DataType::Null => DataType::Null,
        DataType::Boolean => DataType::Boolean,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => DataType::Int64,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            DataType::UInt64
        }
        DataType::Float16 | DataType::Float32 => DataType::Float32,
        DataType::Float64 => DataType::Float64,
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) => {
            DataType::Decimal128(*p, *s)
        }
        DataType::Decimal256(p, s) => DataType::Decimal256(*p, *s),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => DataType::Binary,
        DataType::Date32 | DataType::Date64 => DataType::Date32,
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Time32(_) | DataType::Time64(_) => DataType::Time64(TimeUnit::Microsecond),
        DataType::Dictionary(_, inner) => canonical_type(name, inner)?,
        other => {
            return Err(format!(
                "column {name} is {other}, which no target column type holds; cast it in the query (e.g. to a string)"
            ))
        }
    })
}

fn canonical(name: &str, array: &ArrayRef) -> Result<Canonical, ArrowError> {
    if array.data_type() == &DataType::FixedSizeBinary(16) {
        // A uuid: its canonical text, as a Delta lake holds it (an Iceberg
        // lake keeps the 16 bytes), so both digest alike.
        return canonical(name, &crate::narrow::narrow_array(array, &DataType::Utf8)?);
    }
    let Ok(target) = canonical_type(name, array.data_type()) else {
        return Ok(Canonical::Text(array.clone()));
    };
    let array = if array.data_type() == &target {
        array.clone()
    } else if matches!(array.data_type(), DataType::Timestamp(_, _))
        && matches!(target, DataType::Timestamp(_, Some(_)))
    {
        let utc = DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")));
        cast(array, &utc)?
    } else {
        cast(array, &target)?
    };
    Ok(Canonical::Array(array))
}

fn put(h: &mut Xxh3, tag: u8, bytes: &[u8]) {
    h.update(&[tag]);
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn feed(h: &mut Xxh3, column: &Canonical, row: usize) {
    let array = match column {
        Canonical::Missing => return put(h, 0, &[]),
        Canonical::Array(array) | Canonical::Text(array) => array,
    };
    if array.is_null(row) {
        return put(h, 0, &[]);
    }
    if let Canonical::Text(array) = column {
        let text = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
            .map(|f| f.value(row).to_string())
            .unwrap_or_default();
        return put(h, 20, text.as_bytes());
    }
    match array.data_type() {
        DataType::Boolean => put(h, 1, &[array.as_boolean().value(row) as u8]),
        DataType::Int64 => put(
            h,
            2,
            &array.as_primitive::<Int64Type>().value(row).to_le_bytes(),
        ),
        DataType::UInt64 => put(
            h,
            3,
            &array.as_primitive::<UInt64Type>().value(row).to_le_bytes(),
        ),
        DataType::Float64 => put(
            h,
            4,
            &array
                .as_primitive::<Float64Type>()
                .value(row)
                .to_bits()
                .to_le_bytes(),
        ),
        DataType::Float32 => put(
            h,
            5,
            &array
                .as_primitive::<Float32Type>()
                .value(row)
                .to_bits()
                .to_le_bytes(),
        ),
        DataType::Decimal128(_, scale) => {
            let mut bytes = [0u8; 17];
            bytes[..16].copy_from_slice(
                &array
                    .as_primitive::<Decimal128Type>()
                    .value(row)
                    .to_le_bytes(),
            );
            bytes[16] = *scale as u8;
            put(h, 6, &bytes)
        }
        DataType::Utf8 => put(h, 7, array.as_string::<i32>().value(row).as_bytes()),
        DataType::Binary => put(h, 8, array.as_binary::<i32>().value(row)),
        DataType::Date32 => put(
            h,
            9,
            &array.as_primitive::<Date32Type>().value(row).to_le_bytes(),
        ),
        DataType::Timestamp(_, zone) => put(
            h,
            if zone.is_some() { 11 } else { 10 },
            &array
                .as_primitive::<TimestampMicrosecondType>()
                .value(row)
                .to_le_bytes(),
        ),
        DataType::Time64(_) => put(
            h,
            12,
            &array
                .as_primitive::<Time64MicrosecondType>()
                .value(row)
                .to_le_bytes(),
        ),
        // Decimal256 and anything else: the value's text.
        _ => {
            let text = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
                .map(|f| f.value(row).to_string())
                .unwrap_or_default();
            put(h, 20, text.as_bytes())
        }
    }
}

fn json_cell(column: &Canonical, row: usize) -> serde_json::Value {
    let array = match column {
        Canonical::Missing => return serde_json::Value::Null,
        Canonical::Array(array) | Canonical::Text(array) => array,
    };
    if array.is_null(row) {
        return serde_json::Value::Null;
    }
    match array.data_type() {
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).into(),
        DataType::Boolean => array.as_boolean().value(row).into(),
        _ => ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
            .map(|f| serde_json::Value::String(f.value(row).to_string()))
            .unwrap_or(serde_json::Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Int16Array, Int32Array, StringArray, StringViewArray};
    use deltalake::arrow::datatypes::{Field, Schema};

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap()
    }

    #[test]
    fn equal_values_in_other_arrow_types_digest_alike() {
        let names = vec!["id".to_string(), "name".to_string(), "note".to_string()];
        let key = vec!["id".to_string()];
        let a = batch(vec![
            ("id", Arc::new(Int32Array::from(vec![1, 2]))),
            ("name", Arc::new(StringArray::from(vec![Some("x"), None]))),
        ]);
        let b = batch(vec![
            (
                "name",
                Arc::new(StringViewArray::from(vec![Some("x"), None])),
            ),
            ("id", Arc::new(Int16Array::from(vec![1, 2]))),
            (
                "note",
                Arc::new(StringArray::from(vec![None::<&str>, None])),
            ),
        ]);
        let (da, db) = (
            RowDigests::new(&a, &names, &key).unwrap(),
            RowDigests::new(&b, &names, &key).unwrap(),
        );
        for row in 0..2 {
            assert_eq!(da.key(row), db.key(row));
            assert_eq!(da.row(row), db.row(row));
        }
        assert_ne!(da.row(0), da.row(1));
        assert_eq!(da.key_json(1, &names), serde_json::json!({"id": 2}));
        // NULL and the empty string differ.
        let c = batch(vec![
            ("id", Arc::new(Int32Array::from(vec![2]))),
            ("name", Arc::new(StringArray::from(vec![Some("")]))),
        ]);
        let dc = RowDigests::new(&c, &names, &key).unwrap();
        assert_eq!(dc.key(0), da.key(1));
        assert_ne!(dc.row(0), da.row(1));
    }
}
