//! Narrowing Arrow types to what Delta Lake stores, without loss (DESIGN §4).
//!
//! | Arrow (core mapping)        | Delta column            | how                           |
//! |-----------------------------|-------------------------|-------------------------------|
//! | UInt64 `_tw_seq`, `_tw_ord` | long                    | checked cast (fails > 2^63-1) |
//! | UInt64 (source column)      | decimal(20,0)           | exact                         |
//! | UInt8/16/32                 | next wider signed int   | exact                         |
//! | Time64(µs)                  | long                    | microseconds since midnight   |
//! | Duration(µs) (MySQL TIME)   | long                    | signed microseconds           |
//! | FixedSizeBinary(16) (uuid)  | string                  | canonical 8-4-4-4-12 hex      |
//! | Decimal256(p,s)             | string                  | exact decimal text at scale s |
//! | List<T>                     | array<narrow(T)>        | element-wise                  |
//!
//! Every narrowed field gets `tidewater.lake_encoding` metadata saying how,
//! next to `tidewater.source_type`, so readers can restore the value.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, Decimal256Array, FixedSizeBinaryArray, ListArray, RecordBatch,
    StringBuilder,
};
use deltalake::arrow::compute::{cast_with_options, CastOptions};
use deltalake::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::error::ArrowError;

/// Field metadata key describing how a narrowed value is encoded in the lake.
pub const LAKE_ENCODING_KEY: &str = "tidewater.lake_encoding";

fn narrow_type(field: &Field) -> (DataType, Option<&'static str>) {
    match field.data_type() {
        DataType::UInt64 if field.name().starts_with("_tw_") => (DataType::Int64, None),
        DataType::UInt64 => (
            DataType::Decimal128(20, 0),
            Some("decimal(20,0) of an unsigned 64-bit integer"),
        ),
        DataType::UInt32 => (DataType::Int64, Some("long of an unsigned 32-bit integer")),
        DataType::UInt16 => (
            DataType::Int32,
            Some("integer of an unsigned 16-bit integer"),
        ),
        DataType::UInt8 => (DataType::Int16, Some("short of an unsigned 8-bit integer")),
        DataType::Time64(TimeUnit::Microsecond) => {
            (DataType::Int64, Some("microseconds since midnight"))
        }
        DataType::Duration(TimeUnit::Microsecond) => (DataType::Int64, Some("signed microseconds")),
        DataType::FixedSizeBinary(16) => (DataType::Utf8, Some("canonical uuid text")),
        DataType::Decimal256(_, _) => (DataType::Utf8, Some("exact decimal text")),
        DataType::List(element) => {
            let (inner, how) = narrow_type(element);
            let element = Field::new(element.name(), inner, element.is_nullable());
            (DataType::List(Arc::new(element)), how)
        }
        other => (other.clone(), None),
    }
}

/// The lake field for a core field.
pub fn narrow_field(field: &Field) -> Field {
    let (data_type, how) = narrow_type(field);
    let mut metadata: HashMap<String, String> = field.metadata().clone();
    if let Some(how) = how {
        metadata.remove("ARROW:extension:name");
        metadata.insert(LAKE_ENCODING_KEY.into(), how.into());
    }
    Field::new(field.name(), data_type, field.is_nullable()).with_metadata(metadata)
}

pub fn narrow_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| narrow_field(f))
            .collect::<Vec<_>>(),
    ))
}

/// Rewrites a batch into the lake's types.
pub fn narrow_batch(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = narrow_schema(batch.schema().as_ref());
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(array, field)| narrow_array(array, field.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, columns)
}

pub(crate) fn narrow_array(array: &ArrayRef, target: &DataType) -> Result<ArrayRef, ArrowError> {
    if array.data_type() == target {
        return Ok(array.clone());
    }
    match (array.data_type(), target) {
        (DataType::FixedSizeBinary(16), DataType::Utf8) => {
            Ok(uuid_text(array.as_fixed_size_binary()))
        }
        (DataType::Decimal256(_, scale), DataType::Utf8) => {
            let decimals: &Decimal256Array = array.as_primitive();
            let mut out = StringBuilder::with_capacity(decimals.len(), decimals.len() * 24);
            for value in decimals.iter() {
                out.append_option(value.map(|v| decimal_text(&v.to_string(), *scale)));
            }
            Ok(Arc::new(out.finish()))
        }
        (DataType::List(_), DataType::List(target_element)) => {
            let list: &ListArray = array.as_list();
            let values = narrow_array(list.values(), target_element.data_type())?;
            Ok(Arc::new(ListArray::try_new(
                target_element.clone() as FieldRef,
                list.offsets().clone(),
                values,
                list.nulls().cloned(),
            )?))
        }
        _ => cast_with_options(
            array,
            target,
            &CastOptions {
                safe: false,
                ..Default::default()
            },
        ),
    }
}

fn uuid_text(array: &FixedSizeBinaryArray) -> ArrayRef {
    let mut out = StringBuilder::with_capacity(array.len(), array.len() * 36);
    for value in array.iter() {
        out.append_option(value.map(|b| {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            )
        }));
    }
    Arc::new(out.finish())
}

/// Places the decimal point into an unscaled integer's digits.
fn decimal_text(unscaled: &str, scale: i8) -> String {
    let (sign, digits) = match unscaled.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", unscaled),
    };
    if scale <= 0 {
        return format!(
            "{sign}{digits}{}",
            "0".repeat(scale.unsigned_abs() as usize)
        );
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Time64MicrosecondArray, UInt64Array};
    use deltalake::arrow::datatypes::i256;

    #[test]
    fn decimal_text_places_the_point() {
        assert_eq!(decimal_text("-150", 2), "-1.50");
        assert_eq!(decimal_text("5", 3), "0.005");
        assert_eq!(decimal_text("0", 1), "0.0");
        assert_eq!(decimal_text("12", 0), "12");
    }

    #[test]
    fn narrows_every_kind() {
        let fields = vec![
            Field::new("t", DataType::Time64(TimeUnit::Microsecond), true),
            Field::new("u", DataType::FixedSizeBinary(16), true),
            Field::new("d", DataType::Decimal256(40, 2), true),
            Field::new("_tw_seq", DataType::UInt64, false),
        ];
        let uuid = FixedSizeBinaryArray::try_from_iter(vec![[0xabu8; 16]].into_iter()).unwrap();
        let decimal = Decimal256Array::from(vec![i256::from_i128(-12345)])
            .with_precision_and_scale(40, 2)
            .unwrap();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            vec![
                Arc::new(Time64MicrosecondArray::from(vec![86_400_000_000])),
                Arc::new(uuid),
                Arc::new(decimal),
                Arc::new(UInt64Array::from(vec![42])),
            ],
        )
        .unwrap();
        let narrowed = narrow_batch(&batch).unwrap();
        assert_eq!(
            narrowed
                .column(0)
                .as_primitive::<deltalake::arrow::datatypes::Int64Type>()
                .value(0),
            86_400_000_000
        );
        assert_eq!(
            narrowed.column(1).as_string::<i32>().value(0),
            "abababab-abab-abab-abab-abababababab"
        );
        assert_eq!(narrowed.column(2).as_string::<i32>().value(0), "-123.45");
        assert_eq!(narrowed.column(3).data_type(), &DataType::Int64);
        assert!(narrowed
            .schema()
            .field(1)
            .metadata()
            .contains_key(LAKE_ENCODING_KEY));
    }
}
