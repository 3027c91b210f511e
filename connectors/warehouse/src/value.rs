//! Warehouse values read back as [`Datum`]s, for the rows a source did not
//! resend in full (Postgres' unchanged TOAST values).
//!
//! Each column is selected in a form with a simple binary layout (its own
//! type for integers, floats, dates, timestamps, UUIDs and bytes; text for
//! numerics and JSON) and decoded from the raw bytes. A value that cannot
//! be decoded is [`Datum::Unchanged`], so restoring from it fails loudly
//! instead of landing a wrong value.

use arrow_buffer::i256;
use tidewater_core::{Column, ColumnType, Datum};
use tokio_postgres::types::{FromSql, Type};

use crate::types::TargetType;

const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// A value's raw binary form, whatever its type.
pub struct Raw(pub Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The select expression for `column` held in warehouse column `expr`.
pub fn select_expr(expr: &str, column: &Column, ty: &TargetType) -> String {
    match column.ty {
        ColumnType::UInt64 | ColumnType::Decimal { .. } | ColumnType::Json => {
            format!("({expr})::text")
        }
        // Arrays are not read back: an unchanged TOASTed array fails loudly.
        ColumnType::List(_) => "NULL::text".into(),
        _ => format!("({expr})::{}", ty.ddl),
    }
}

/// The datum of a value selected by [`select_expr`].
pub fn decode(raw: Option<&[u8]>, ty: &ColumnType) -> Datum {
    let Some(raw) = raw else {
        return match ty {
            ColumnType::List(_) => Datum::Unchanged,
            _ => Datum::Null,
        };
    };
    decode_value(raw, ty).unwrap_or(Datum::Unchanged)
}

fn decode_value(raw: &[u8], ty: &ColumnType) -> Option<Datum> {
    let i16v = || raw.try_into().ok().map(i16::from_be_bytes);
    let i32v = || raw.try_into().ok().map(i32::from_be_bytes);
    let i64v = || raw.get(..8)?.try_into().ok().map(i64::from_be_bytes);
    let text = || std::str::from_utf8(raw).ok();
    Some(match ty {
        ColumnType::Bool => Datum::Bool(*raw.first()? != 0),
        ColumnType::Int8 => Datum::Int8(i8::try_from(i16v()?).ok()?),
        ColumnType::Int16 => Datum::Int16(i16v()?),
        ColumnType::Int32 => Datum::Int32(i32v()?),
        ColumnType::Int64 => Datum::Int64(i64v()?),
        ColumnType::UInt8 => Datum::UInt(u64::try_from(i16v()?).ok()?),
        ColumnType::UInt16 => Datum::UInt(u64::try_from(i32v()?).ok()?),
        ColumnType::UInt32 => Datum::UInt(u64::try_from(i64v()?).ok()?),
        ColumnType::UInt64 => Datum::UInt(text()?.parse().ok()?),
        ColumnType::Float32 => Datum::Float32(f32::from_be_bytes(raw.try_into().ok()?)),
        ColumnType::Float64 => Datum::Float64(f64::from_be_bytes(raw.try_into().ok()?)),
        ColumnType::Decimal { precision, scale } => {
            let digits = tidewater_core::decimal::scaled_digits(text()?, *scale)?;
            if *precision <= 38 {
                Datum::Decimal128(digits.parse().ok()?)
            } else {
                Datum::Decimal256(i256::from_string(&digits)?)
            }
        }
        ColumnType::Text | ColumnType::Json => Datum::Text(text()?.to_string()),
        ColumnType::Binary => Datum::Bytes(raw.to_vec()),
        ColumnType::Date => Datum::Date(i32v()?.checked_add(PG_EPOCH_DAYS)?),
        ColumnType::Timestamp | ColumnType::TimestampTz => {
            Datum::Timestamp(i64v()?.checked_add(PG_EPOCH_US)?)
        }
        ColumnType::Time => Datum::Time(i64v()?),
        ColumnType::Duration => {
            // (µs, days, months); tidewater writes microseconds only.
            let days = i32::from_be_bytes(raw.get(8..12)?.try_into().ok()?);
            let months = i32::from_be_bytes(raw.get(12..16)?.try_into().ok()?);
            if months != 0 {
                return None;
            }
            Datum::Duration(i64v()?.checked_add(days as i64 * 86_400_000_000)?)
        }
        ColumnType::Uuid => Datum::Uuid(raw.try_into().ok()?),
        ColumnType::List(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_binary_forms() {
        assert_eq!(
            decode(Some(&7i32.to_be_bytes()), &ColumnType::Int32),
            Datum::Int32(7)
        );
        assert_eq!(
            decode(Some(&0i32.to_be_bytes()), &ColumnType::Date),
            Datum::Date(10_957)
        );
        assert_eq!(
            decode(
                Some(b"-1.50"),
                &ColumnType::Decimal {
                    precision: 5,
                    scale: 2
                }
            ),
            Datum::Decimal128(-150)
        );
        assert_eq!(decode(None, &ColumnType::Text), Datum::Null);
        // A value of the wrong width is unknown, not a guess.
        assert_eq!(
            decode(Some(&[1, 2, 3]), &ColumnType::Int32),
            Datum::Unchanged
        );
    }
}
