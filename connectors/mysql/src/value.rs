//! Snapshot values: what the binary protocol returns for a `SELECT`, turned
//! into the same [`Datum`]s the binlog decoder produces for that column.
//!
//! The binary protocol (a prepared statement) is used on purpose: FLOAT and
//! DOUBLE arrive as their exact IEEE bits, dates and times as fields, not as
//! text the server has already rounded.

use arrow_buffer::i256;
use mysql_async::Value;
use tidewater_core::decimal::scaled_digits;
use tidewater_core::{ColumnType, Datum};

/// Why a value could not be converted; never holds the value itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(pub String);

fn bad(what: &str, ty: &ColumnType) -> ValueError {
    ValueError(format!("unexpected {what} for a {ty:?} column"))
}

/// Converts one value. `zero_dates` counts zero dates turned into NULL.
pub fn datum(ty: &ColumnType, value: Value, zero_dates: &mut u64) -> Result<Datum, ValueError> {
    if value == Value::NULL {
        return Ok(Datum::Null);
    }
    Ok(match ty {
        ColumnType::Int8 => Datum::Int8(int(value, ty)?.try_into().map_err(|_| bad("range", ty))?),
        ColumnType::Int16 => {
            Datum::Int16(int(value, ty)?.try_into().map_err(|_| bad("range", ty))?)
        }
        ColumnType::Int32 => {
            Datum::Int32(int(value, ty)?.try_into().map_err(|_| bad("range", ty))?)
        }
        ColumnType::Int64 => {
            Datum::Int64(int(value, ty)?.try_into().map_err(|_| bad("range", ty))?)
        }
        ColumnType::UInt8 | ColumnType::UInt16 | ColumnType::UInt32 | ColumnType::UInt64 => {
            match value {
                // BIT(n) arrives as big-endian bytes.
                Value::Bytes(bytes) if bytes.len() <= 8 => {
                    Datum::UInt(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
                }
                other => Datum::UInt(int(other, ty)?.try_into().map_err(|_| bad("range", ty))?),
            }
        }
        ColumnType::Float32 => match value {
            Value::Float(f) => Datum::Float32(f),
            Value::Double(d) => Datum::Float32(d as f32),
            _ => return Err(bad("value kind", ty)),
        },
        ColumnType::Float64 => match value {
            Value::Double(d) => Datum::Float64(d),
            Value::Float(f) => Datum::Float64(f64::from(f)),
            _ => return Err(bad("value kind", ty)),
        },
        ColumnType::Decimal { precision, scale } => {
            let text = text(value, ty)?;
            let digits = scaled_digits(&text, *scale).ok_or_else(|| bad("decimal text", ty))?;
            if *precision <= 38 {
                Datum::Decimal128(digits.parse().map_err(|_| bad("decimal text", ty))?)
            } else {
                Datum::Decimal256(
                    i256::from_string(&digits).ok_or_else(|| bad("decimal text", ty))?,
                )
            }
        }
        ColumnType::Text | ColumnType::Json => Datum::Text(text(value, ty)?),
        ColumnType::List(_) => {
            // SET: comma-separated labels (labels cannot contain commas).
            let text = text(value, ty)?;
            Datum::List(
                text.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| Datum::Text(s.to_string()))
                    .collect(),
            )
        }
        ColumnType::Binary => match value {
            Value::Bytes(bytes) => Datum::Bytes(bytes),
            _ => return Err(bad("value kind", ty)),
        },
        ColumnType::Uuid => {
            let text = text(value, ty)?;
            Datum::Uuid(crate::event::parse_uuid(&text).ok_or_else(|| bad("uuid text", ty))?)
        }
        ColumnType::Date => match value {
            Value::Date(y, m, d, ..) => match days(y, m, d) {
                Some(days) => Datum::Date(days),
                None => {
                    *zero_dates += 1;
                    Datum::Null
                }
            },
            _ => return Err(bad("value kind", ty)),
        },
        ColumnType::Timestamp | ColumnType::TimestampTz => match value {
            Value::Date(y, m, d, h, mi, s, us) => match days(y, m, d) {
                Some(days) => Datum::Timestamp(
                    i64::from(days) * 86_400_000_000
                        + (i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s)) * 1_000_000
                        + i64::from(us),
                ),
                None => {
                    *zero_dates += 1;
                    Datum::Null
                }
            },
            _ => return Err(bad("value kind", ty)),
        },
        ColumnType::Duration => match value {
            Value::Time(negative, d, h, m, s, us) => {
                let micros =
                    ((i64::from(d) * 24 + i64::from(h)) * 3600 + i64::from(m) * 60 + i64::from(s))
                        * 1_000_000
                        + i64::from(us);
                Datum::Duration(if negative { -micros } else { micros })
            }
            _ => return Err(bad("value kind", ty)),
        },
        ColumnType::Bool | ColumnType::Time => return Err(bad("type", ty)),
    })
}

fn int(value: Value, ty: &ColumnType) -> Result<i128, ValueError> {
    match value {
        Value::Int(i) => Ok(i128::from(i)),
        Value::UInt(u) => Ok(i128::from(u)),
        _ => Err(bad("value kind", ty)),
    }
}

fn text(value: Value, ty: &ColumnType) -> Result<String, ValueError> {
    match value {
        Value::Bytes(bytes) => String::from_utf8(bytes).map_err(|_| bad("non-UTF-8 text", ty)),
        _ => Err(bad("value kind", ty)),
    }
}

/// Days since 1970-01-01, or None for zero or partly zero dates.
fn days(y: u16, m: u8, d: u8) -> Option<i32> {
    if m == 0 || d == 0 {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(i32::from(y), u32::from(m), u32::from(d))?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((date - epoch).num_days() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_protocol_values() {
        let mut zero = 0;
        assert_eq!(
            datum(
                &ColumnType::Duration,
                Value::Time(true, 34, 22, 59, 59, 0),
                &mut zero
            ),
            Ok(Datum::Duration(-3_020_399_000_000))
        );
        assert_eq!(
            datum(
                &ColumnType::Date,
                Value::Date(0, 0, 0, 0, 0, 0, 0),
                &mut zero
            ),
            Ok(Datum::Null)
        );
        assert_eq!(zero, 1);
        assert_eq!(
            datum(
                &ColumnType::Timestamp,
                Value::Date(1970, 1, 2, 0, 0, 1, 5),
                &mut zero
            ),
            Ok(Datum::Timestamp(86_401_000_005))
        );
        assert_eq!(
            datum(
                &ColumnType::UInt64,
                Value::Bytes(vec![0x01, 0x00]),
                &mut zero
            ),
            Ok(Datum::UInt(256))
        );
        assert_eq!(
            datum(&ColumnType::UInt64, Value::UInt(u64::MAX), &mut zero),
            Ok(Datum::UInt(u64::MAX))
        );
        assert_eq!(
            datum(
                &ColumnType::Decimal {
                    precision: 10,
                    scale: 3
                },
                Value::Bytes(b"-1.5".to_vec()),
                &mut zero
            ),
            Ok(Datum::Decimal128(-1500))
        );
        assert_eq!(
            datum(
                &ColumnType::List(Box::new(ColumnType::Text)),
                Value::Bytes(b"a,c".to_vec()),
                &mut zero
            ),
            Ok(Datum::List(vec![
                Datum::Text("a".into()),
                Datum::Text("c".into())
            ]))
        );
        assert_eq!(
            datum(&ColumnType::Int8, Value::Int(300), &mut zero),
            Err(ValueError("unexpected range for a Int8 column".into()))
        );
    }
}
