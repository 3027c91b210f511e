//! Reading values back out of the lake: the inverse of [`crate::narrow`],
//! from a lake column to the [`Datum`] the source produced for its column
//! type. Used to restore values a source did not resend (Postgres' unchanged
//! TOAST values), so a value read back equals the value once written.

use arrow_buffer::i256;
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, TimeUnit, TimestampMicrosecondType,
};
use deltalake::arrow::error::ArrowError;
use tidewater_core::decimal::scaled_digits;
use tidewater_core::uuid_text::parse_uuid;
use tidewater_core::{ColumnType, Datum};

fn mismatch(ty: &ColumnType, got: &DataType) -> ArrowError {
    ArrowError::InvalidArgumentError(format!(
        "a lake column of type {got} cannot hold a {ty:?} value"
    ))
}

/// The value at row `i` of a lake column, as the source's `Datum` for `ty`.
pub fn datum(array: &dyn Array, i: usize, ty: &ColumnType) -> Result<Datum, ArrowError> {
    if array.is_null(i) {
        return Ok(Datum::Null);
    }
    let got = array.data_type();
    Ok(match (ty, got) {
        (ColumnType::Bool, DataType::Boolean) => Datum::Bool(array.as_boolean().value(i)),
        (ColumnType::Int8, DataType::Int8) => {
            Datum::Int8(array.as_primitive::<Int8Type>().value(i))
        }
        (ColumnType::Int16, DataType::Int16) => {
            Datum::Int16(array.as_primitive::<Int16Type>().value(i))
        }
        (ColumnType::Int32, DataType::Int32) => {
            Datum::Int32(array.as_primitive::<Int32Type>().value(i))
        }
        (ColumnType::Int64, DataType::Int64) => {
            Datum::Int64(array.as_primitive::<Int64Type>().value(i))
        }
        // Iceberg has no byte or short: they are stored as int; and an
        // int column promoted to long in place holds the older ints too.
        (ColumnType::Int8, DataType::Int32) => Datum::Int8(
            i8::try_from(array.as_primitive::<Int32Type>().value(i))
                .map_err(|_| mismatch(ty, got))?,
        ),
        (ColumnType::Int16, DataType::Int32) => Datum::Int16(
            i16::try_from(array.as_primitive::<Int32Type>().value(i))
                .map_err(|_| mismatch(ty, got))?,
        ),
        (ColumnType::Int32, DataType::Int64) => Datum::Int32(
            i32::try_from(array.as_primitive::<Int64Type>().value(i))
                .map_err(|_| mismatch(ty, got))?,
        ),
        (ColumnType::UInt8, DataType::Int32) => Datum::UInt(
            u8::try_from(array.as_primitive::<Int32Type>().value(i))
                .map_err(|_| mismatch(ty, got))? as u64,
        ),
        (ColumnType::Uuid, DataType::FixedSizeBinary(16)) => Datum::Uuid(
            array
                .as_fixed_size_binary()
                .value(i)
                .try_into()
                .map_err(|_| mismatch(ty, got))?,
        ),
        (ColumnType::UInt8, DataType::Int16) => {
            Datum::UInt(array.as_primitive::<Int16Type>().value(i) as u64)
        }
        (ColumnType::UInt16, DataType::Int32) => {
            Datum::UInt(array.as_primitive::<Int32Type>().value(i) as u64)
        }
        (ColumnType::UInt32, DataType::Int64) => {
            Datum::UInt(array.as_primitive::<Int64Type>().value(i) as u64)
        }
        (ColumnType::UInt64, DataType::Decimal128(_, 0)) => {
            let v = array.as_primitive::<Decimal128Type>().value(i);
            Datum::UInt(u64::try_from(v).map_err(|_| mismatch(ty, got))?)
        }
        (ColumnType::Float32, DataType::Float32) => {
            Datum::Float32(array.as_primitive::<Float32Type>().value(i))
        }
        (ColumnType::Float64, DataType::Float64) => {
            Datum::Float64(array.as_primitive::<Float64Type>().value(i))
        }
        (ColumnType::Decimal { precision, scale }, DataType::Decimal128(_, s))
            if *precision <= 38 && s == scale =>
        {
            Datum::Decimal128(array.as_primitive::<Decimal128Type>().value(i))
        }
        (ColumnType::Decimal { scale, .. }, DataType::Utf8) => {
            let text = array.as_string::<i32>().value(i);
            let digits = scaled_digits(text, *scale).ok_or_else(|| mismatch(ty, got))?;
            Datum::Decimal256(i256::from_string(&digits).ok_or_else(|| mismatch(ty, got))?)
        }
        (ColumnType::Text | ColumnType::Json, DataType::Utf8) => {
            Datum::Text(array.as_string::<i32>().value(i).to_string())
        }
        (ColumnType::Binary, DataType::Binary) => {
            Datum::Bytes(array.as_binary::<i32>().value(i).to_vec())
        }
        (ColumnType::Date, DataType::Date32) => {
            Datum::Date(array.as_primitive::<Date32Type>().value(i))
        }
        (
            ColumnType::Timestamp | ColumnType::TimestampTz,
            DataType::Timestamp(TimeUnit::Microsecond, _),
        ) => Datum::Timestamp(array.as_primitive::<TimestampMicrosecondType>().value(i)),
        (ColumnType::Time, DataType::Int64) => {
            Datum::Time(array.as_primitive::<Int64Type>().value(i))
        }
        (ColumnType::Duration, DataType::Int64) => {
            Datum::Duration(array.as_primitive::<Int64Type>().value(i))
        }
        (ColumnType::Uuid, DataType::Utf8) => {
            let text = array.as_string::<i32>().value(i);
            Datum::Uuid(parse_uuid(text).ok_or_else(|| mismatch(ty, got))?)
        }
        (ColumnType::List(element), DataType::List(_)) => {
            let items = array.as_list::<i32>().value(i);
            let mut out = Vec::with_capacity(items.len());
            for j in 0..items.len() {
                out.push(datum(items.as_ref(), j, element)?);
            }
            Datum::List(out)
        }
        _ => return Err(mismatch(ty, got)),
    })
}
