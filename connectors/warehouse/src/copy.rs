//! Arrow record batches → Postgres binary COPY.
//!
//! ```text
//!  header  "PGCOPY\n\377\r\n\0" · flags i32 = 0 · extension length i32 = 0
//!  row     field count i16 · per field: length i32 (-1 = NULL) · bytes
//!  trailer -1 i16
//! ```
//!
//! Values are written in the server's binary send format of the staging
//! column type ([`crate::types::TargetType::stage`]): big-endian integers and
//! floats, dates as days and timestamps as microseconds since 2000-01-01,
//! intervals as (µs, days, months), UUIDs as 16 bytes. Decimals, unsigned
//! 64-bit integers and arrays go as text, cast by the apply. A column whose
//! Arrow type is not the one tidewater's mapping gives its column type is an
//! error, never a guess.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Decimal256Type, DurationMicrosecondType, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Int8Type, Time64MicrosecondType, TimestampMicrosecondType,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, BooleanArray, PrimitiveArray};
use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use tidewater_core::ColumnType;

/// Days from 1970-01-01 to 2000-01-01, Postgres' epoch.
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// A column the encoder cannot write: its name and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError {
    pub column: String,
    pub reason: String,
}

/// One column of a batch, resolved to its typed array once per batch.
enum Cells<'a> {
    Bool(&'a BooleanArray),
    I8(&'a PrimitiveArray<Int8Type>),
    I16(&'a PrimitiveArray<Int16Type>),
    I32(&'a PrimitiveArray<Int32Type>),
    I64(&'a PrimitiveArray<Int64Type>),
    U8(&'a PrimitiveArray<UInt8Type>),
    U16(&'a PrimitiveArray<UInt16Type>),
    U32(&'a PrimitiveArray<UInt32Type>),
    /// As text (numeric(20,0)); `_tw_seq`/`_tw_ord` use [`Cells::U64AsI64`].
    U64Text(&'a PrimitiveArray<UInt64Type>),
    U64AsI64(&'a PrimitiveArray<UInt64Type>),
    F32(&'a PrimitiveArray<Float32Type>),
    F64(&'a PrimitiveArray<Float64Type>),
    Dec128(&'a PrimitiveArray<Decimal128Type>, i8),
    Dec256(&'a PrimitiveArray<Decimal256Type>, i8),
    Utf8(&'a arrow_array::StringArray),
    Bytes(&'a arrow_array::BinaryArray),
    Date(&'a PrimitiveArray<Date32Type>),
    Timestamp(&'a PrimitiveArray<TimestampMicrosecondType>),
    Time(&'a PrimitiveArray<Time64MicrosecondType>),
    Interval(&'a PrimitiveArray<DurationMicrosecondType>),
    Uuid(&'a arrow_array::FixedSizeBinaryArray),
    /// An array literal (`{1,2,NULL}`) of the element type.
    List(&'a arrow_array::ListArray, ColumnType),
}

/// How a column of a batch is encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoding {
    /// A source column of this tidewater type.
    Source(ColumnType),
    /// `_tw_seq` / `_tw_ord`: UInt64 marks as bigint (they fit: LSNs and
    /// binlog positions stay below 2^63).
    Mark,
}

fn resolve<'a>(
    name: &str,
    array: &'a ArrayRef,
    encoding: &Encoding,
) -> Result<Cells<'a>, EncodeError> {
    let wrong = || EncodeError {
        column: name.to_string(),
        reason: format!(
            "unexpected Arrow type {} for {encoding:?}",
            array.data_type()
        ),
    };
    let a = array.as_ref();
    let ty = match encoding {
        Encoding::Mark => {
            return a
                .as_primitive_opt::<UInt64Type>()
                .map(Cells::U64AsI64)
                .ok_or_else(wrong)
        }
        Encoding::Source(ty) => ty,
    };
    let cells = match ty {
        ColumnType::Bool => a.as_boolean_opt().map(Cells::Bool),
        ColumnType::Int8 => a.as_primitive_opt().map(Cells::I8),
        ColumnType::Int16 => a.as_primitive_opt().map(Cells::I16),
        ColumnType::Int32 => a.as_primitive_opt().map(Cells::I32),
        ColumnType::Int64 => a.as_primitive_opt().map(Cells::I64),
        ColumnType::UInt8 => a.as_primitive_opt().map(Cells::U8),
        ColumnType::UInt16 => a.as_primitive_opt().map(Cells::U16),
        ColumnType::UInt32 => a.as_primitive_opt().map(Cells::U32),
        ColumnType::UInt64 => a.as_primitive_opt().map(Cells::U64Text),
        ColumnType::Float32 => a.as_primitive_opt().map(Cells::F32),
        ColumnType::Float64 => a.as_primitive_opt().map(Cells::F64),
        ColumnType::Decimal { scale, .. } => a
            .as_primitive_opt::<Decimal128Type>()
            .map(|d| Cells::Dec128(d, *scale))
            .or_else(|| {
                a.as_primitive_opt::<Decimal256Type>()
                    .map(|d| Cells::Dec256(d, *scale))
            }),
        ColumnType::Text | ColumnType::Json => a.as_string_opt::<i32>().map(Cells::Utf8),
        ColumnType::Binary => a.as_binary_opt::<i32>().map(Cells::Bytes),
        ColumnType::Date => a.as_primitive_opt().map(Cells::Date),
        ColumnType::Timestamp | ColumnType::TimestampTz => {
            a.as_primitive_opt().map(Cells::Timestamp)
        }
        ColumnType::Time => a.as_primitive_opt().map(Cells::Time),
        ColumnType::Duration => a.as_primitive_opt().map(Cells::Interval),
        ColumnType::Uuid => a.as_fixed_size_binary_opt().map(Cells::Uuid),
        ColumnType::List(inner) => a
            .as_list_opt::<i32>()
            .map(|l| Cells::List(l, inner.as_ref().clone())),
    };
    cells.ok_or_else(wrong)
}

/// The COPY header.
pub fn start(buf: &mut BytesMut) {
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0);
    buf.put_i32(0);
}

/// The COPY trailer.
pub fn finish(buf: &mut BytesMut) {
    buf.put_i16(-1);
}

/// Appends every row of `columns` (name, array, encoding) to `buf`.
pub fn encode_rows(
    columns: &[(&str, &ArrayRef, Encoding)],
    rows: usize,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let cells: Vec<Cells> = columns
        .iter()
        .map(|(name, array, encoding)| resolve(name, array, encoding))
        .collect::<Result<_, _>>()?;
    let count = i16::try_from(cells.len()).map_err(|_| EncodeError {
        column: String::new(),
        reason: format!("{} columns is more than COPY carries", cells.len()),
    })?;
    let mut text = String::new();
    for row in 0..rows {
        buf.put_i16(count);
        for (cell, (name, ..)) in cells.iter().zip(columns) {
            put(cell, row, buf, &mut text).map_err(|reason| EncodeError {
                column: name.to_string(),
                reason,
            })?;
        }
    }
    Ok(())
}

fn put_len(buf: &mut BytesMut, len: usize) -> Result<(), String> {
    let len = i32::try_from(len).map_err(|_| format!("a value of {len} bytes is too large"))?;
    buf.put_i32(len);
    Ok(())
}

/// Days since 1970-01-01 as Postgres date input (`0044-03-15 BC` before
/// year 1: Postgres has no year 0).
fn date_text(days: i32, out: &mut String) -> Result<(), String> {
    use chrono::Datelike;
    let date =
        chrono::NaiveDate::from_num_days_from_ce_opt(days.saturating_add(UNIX_EPOCH_CE_DAYS))
            .ok_or_else(|| format!("date {days} days from 1970-01-01 is out of range"))?;
    let (year, bc) = era(date.year());
    write!(out, "{year:04}-{:02}-{:02}", date.month(), date.day()).unwrap_or(());
    if bc {
        out.push_str(" BC");
    }
    Ok(())
}

/// Microseconds since the Unix epoch as timestamp input, in UTC with `+00`
/// for a `timestamptz`.
fn timestamp_text(micros: i64, zoned: bool, out: &mut String) -> Result<(), String> {
    use chrono::{Datelike, Timelike};
    let at = chrono::DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| format!("timestamp {micros} µs from 1970 is out of range"))?
        .naive_utc();
    let (year, bc) = era(at.year());
    write!(
        out,
        "{year:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
        at.month(),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.nanosecond() / 1000
    )
    .unwrap_or(());
    if zoned {
        out.push_str("+00");
    }
    if bc {
        out.push_str(" BC");
    }
    Ok(())
}

/// Microseconds as `[-]H:MM:SS.ffffff` with unbounded hours: the input
/// both `time` (up to 24:00:00) and `interval` (MySQL TIME's ±838 h) take.
fn clock_text(micros: i64, out: &mut String) {
    let sign = if micros < 0 { "-" } else { "" };
    let v = micros.unsigned_abs();
    let (hours, rest) = (v / 3_600_000_000, v % 3_600_000_000);
    write!(
        out,
        "{sign}{hours}:{:02}:{:02}.{:06}",
        rest / 60_000_000,
        rest / 1_000_000 % 60,
        rest % 1_000_000
    )
    .unwrap_or(());
}

/// Days from 0001-01-01 (proleptic Gregorian, day 1) to 1970-01-01.
const UNIX_EPOCH_CE_DAYS: i32 = 719_163;

/// A proleptic Gregorian year as (year, BC): year 0 is 1 BC.
fn era(year: i32) -> (i32, bool) {
    if year <= 0 {
        (1 - year, true)
    } else {
        (year, false)
    }
}

/// A bytes field, or NULL.
fn put_bytes(buf: &mut BytesMut, value: Option<&[u8]>) -> Result<(), String> {
    match value {
        None => buf.put_i32(-1),
        Some(v) => {
            put_len(buf, v.len())?;
            buf.put_slice(v);
        }
    }
    Ok(())
}

fn put_text(buf: &mut BytesMut, text: &str) -> Result<(), String> {
    put_len(buf, text.len())?;
    buf.put_slice(text.as_bytes());
    Ok(())
}

fn put(cell: &Cells, row: usize, buf: &mut BytesMut, text: &mut String) -> Result<(), String> {
    macro_rules! fixed {
        ($array:expr, $len:expr, $write:expr) => {{
            if $array.is_null(row) {
                buf.put_i32(-1);
            } else {
                buf.put_i32($len);
                let value = $array.value(row);
                #[allow(clippy::redundant_closure_call)]
                ($write)(buf, value);
            }
        }};
    }
    match cell {
        Cells::Bool(a) => fixed!(a, 1, |b: &mut BytesMut, v: bool| b.put_u8(v as u8)),
        Cells::I8(a) => fixed!(a, 2, |b: &mut BytesMut, v: i8| b.put_i16(v as i16)),
        Cells::I16(a) => fixed!(a, 2, |b: &mut BytesMut, v: i16| b.put_i16(v)),
        Cells::U8(a) => fixed!(a, 2, |b: &mut BytesMut, v: u8| b.put_i16(v as i16)),
        Cells::I32(a) => fixed!(a, 4, |b: &mut BytesMut, v: i32| b.put_i32(v)),
        Cells::U16(a) => fixed!(a, 4, |b: &mut BytesMut, v: u16| b.put_i32(v as i32)),
        Cells::I64(a) => fixed!(a, 8, |b: &mut BytesMut, v: i64| b.put_i64(v)),
        Cells::U32(a) => fixed!(a, 8, |b: &mut BytesMut, v: u32| b.put_i64(v as i64)),
        Cells::U64AsI64(a) => fixed!(a, 8, |b: &mut BytesMut, v: u64| b.put_i64(v as i64)),
        Cells::F32(a) => fixed!(a, 4, |b: &mut BytesMut, v: f32| b.put_f32(v)),
        Cells::F64(a) => fixed!(a, 8, |b: &mut BytesMut, v: f64| b.put_f64(v)),
        Cells::Date(a) => fixed!(a, 4, |b: &mut BytesMut, v: i32| b
            .put_i32(v.saturating_sub(PG_EPOCH_DAYS))),
        Cells::Timestamp(a) => fixed!(a, 8, |b: &mut BytesMut, v: i64| b
            .put_i64(v.saturating_sub(PG_EPOCH_US))),
        Cells::Time(a) => fixed!(a, 8, |b: &mut BytesMut, v: i64| b.put_i64(v)),
        Cells::Interval(a) => fixed!(a, 16, |b: &mut BytesMut, v: i64| {
            b.put_i64(v);
            b.put_i32(0);
            b.put_i32(0);
        }),
        Cells::Uuid(a) => put_bytes(buf, (!a.is_null(row)).then(|| a.value(row)))?,
        Cells::Utf8(a) => {
            if a.is_null(row) {
                buf.put_i32(-1);
            } else {
                put_text(buf, a.value(row))?;
            }
        }
        Cells::Bytes(a) => put_bytes(buf, (!a.is_null(row)).then(|| a.value(row)))?,
        Cells::U64Text(a) => {
            if a.is_null(row) {
                buf.put_i32(-1);
            } else {
                put_text(buf, &a.value(row).to_string())?;
            }
        }
        Cells::Dec128(a, scale) => {
            if a.is_null(row) {
                buf.put_i32(-1);
            } else {
                put_text(buf, &decimal_text(&a.value(row).to_string(), *scale))?;
            }
        }
        Cells::Dec256(a, scale) => {
            if a.is_null(row) {
                buf.put_i32(-1);
            } else {
                put_text(buf, &decimal_text(&a.value(row).to_string(), *scale))?;
            }
        }
        Cells::List(a, inner) => {
            if a.is_null(row) {
                buf.put_i32(-1);
            } else {
                text.clear();
                array_literal(&a.value(row), inner, text)?;
                put_text(buf, text)?;
            }
        }
    }
    Ok(())
}

/// An unscaled integer's digits at `scale` as decimal text
/// (("-150", 2) → "-1.50"; ("15", -2) → "1500").
pub fn decimal_text(digits: &str, scale: i8) -> String {
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", digits),
    };
    if scale <= 0 {
        let zeros = "0".repeat((-(scale as i32)) as usize);
        return if digits == "0" {
            "0".into()
        } else {
            format!("{sign}{digits}{zeros}")
        };
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// A Postgres array literal of the values in `values` (one list element),
/// every element quoted; NULL unquoted.
fn array_literal(values: &ArrayRef, inner: &ColumnType, out: &mut String) -> Result<(), String> {
    use std::fmt::Write;
    out.push('{');
    let elements =
        resolve("element", values, &Encoding::Source(inner.clone())).map_err(|e| e.reason)?;
    for i in 0..values.len() {
        if i > 0 {
            out.push(',');
        }
        if values.is_null(i) {
            out.push_str("NULL");
            continue;
        }
        let mut element = String::new();
        match &elements {
            Cells::Bool(a) => element.push_str(if a.value(i) { "t" } else { "f" }),
            Cells::I8(a) => write!(element, "{}", a.value(i)).unwrap_or(()),
            Cells::I16(a) => write!(element, "{}", a.value(i)).unwrap_or(()),
            Cells::I32(a) => write!(element, "{}", a.value(i)).unwrap_or(()),
            Cells::I64(a) => write!(element, "{}", a.value(i)).unwrap_or(()),
            Cells::U8(a) => write!(element, "{}", a.value(i)).unwrap_or(()),
            Cells::U16(a) => write!(element, "{}", a.value(i)).unwrap_or(()),
            Cells::U32(a) => write!(element, "{}", a.value(i)).unwrap_or(()),
            Cells::U64Text(a) | Cells::U64AsI64(a) => {
                write!(element, "{}", a.value(i)).unwrap_or(())
            }
            Cells::F32(a) => float_text(a.value(i) as f64, &mut element),
            Cells::F64(a) => float_text(a.value(i), &mut element),
            Cells::Dec128(a, s) => element.push_str(&decimal_text(&a.value(i).to_string(), *s)),
            Cells::Dec256(a, s) => element.push_str(&decimal_text(&a.value(i).to_string(), *s)),
            Cells::Utf8(a) => element.push_str(a.value(i)),
            Cells::Uuid(a) => {
                for (n, byte) in a.value(i).iter().enumerate() {
                    if matches!(n, 4 | 6 | 8 | 10) {
                        element.push('-');
                    }
                    write!(element, "{byte:02x}").unwrap_or(());
                }
            }
            Cells::Bytes(a) => {
                element.push_str("\\x");
                for byte in a.value(i) {
                    write!(element, "{byte:02x}").unwrap_or(());
                }
            }
            Cells::List(a, nested) => array_literal(&a.value(i), nested, &mut element)?,
            Cells::Date(a) => date_text(a.value(i), &mut element)?,
            Cells::Timestamp(a) => {
                timestamp_text(a.value(i), *inner == ColumnType::TimestampTz, &mut element)?
            }
            Cells::Time(a) => clock_text(a.value(i), &mut element),
            Cells::Interval(a) => clock_text(a.value(i), &mut element),
        }
        out.push('"');
        for ch in element.chars() {
            if ch == '"' || ch == '\\' {
                out.push('\\');
            }
            out.push(ch);
        }
        out.push('"');
    }
    out.push('}');
    Ok(())
}

/// Shortest text that reads back as the same float (Rust's `Display`), with
/// Postgres' names for the special values.
fn float_text(value: f64, out: &mut String) {
    use std::fmt::Write;
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        write!(out, "{value}").unwrap_or(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn decimal_texts() {
        assert_eq!(decimal_text("-150", 2), "-1.50");
        assert_eq!(decimal_text("5", 3), "0.005");
        assert_eq!(decimal_text("-5", 3), "-0.005");
        assert_eq!(decimal_text("15", -2), "1500");
        assert_eq!(decimal_text("0", -2), "0");
        assert_eq!(decimal_text("42", 0), "42");
    }

    #[test]
    fn rows_in_binary_form() {
        let ints: ArrayRef = Arc::new(arrow_array::Int32Array::from(vec![Some(7), None]));
        let texts: ArrayRef = Arc::new(arrow_array::StringArray::from(vec!["a\"b", "c"]));
        let mut buf = BytesMut::new();
        encode_rows(
            &[
                ("i", &ints, Encoding::Source(ColumnType::Int32)),
                ("t", &texts, Encoding::Source(ColumnType::Text)),
            ],
            2,
            &mut buf,
        )
        .unwrap();
        let expected: Vec<u8> = [
            &[0, 2][..],
            &[0, 0, 0, 4, 0, 0, 0, 7],
            &[0, 0, 0, 3, b'a', b'"', b'b'],
            &[0, 2],
            &[0xff, 0xff, 0xff, 0xff],
            &[0, 0, 0, 1, b'c'],
        ]
        .concat();
        assert_eq!(&buf[..], &expected[..]);
    }

    #[test]
    fn wrong_arrow_type_is_an_error() {
        let ints: ArrayRef = Arc::new(arrow_array::Int32Array::from(vec![1]));
        let mut buf = BytesMut::new();
        let err = encode_rows(
            &[("x", &ints, Encoding::Source(ColumnType::Text))],
            1,
            &mut buf,
        )
        .unwrap_err();
        assert_eq!(err.column, "x");
    }

    #[test]
    fn array_literals_quote_elements() {
        let values =
            arrow_array::ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![
                Some(1),
                None,
                Some(-3),
            ])]);
        let mut out = String::new();
        array_literal(&values.value(0), &ColumnType::Int32, &mut out).unwrap();
        assert_eq!(out, r#"{"1",NULL,"-3"}"#);
        let texts: ArrayRef = Arc::new(arrow_array::StringArray::from(vec![r#"a"\b"#]));
        let mut out = String::new();
        array_literal(&texts, &ColumnType::Text, &mut out).unwrap();
        assert_eq!(out, r#"{"a\"\\b"}"#);
    }

    #[test]
    fn temporal_array_elements_are_postgres_input() {
        let days: ArrayRef = Arc::new(arrow_array::Date32Array::from(vec![
            Some(0),
            None,
            Some(-719_162),  // 0001-01-01
            Some(-719_163),  // 0001-12-31 BC
            Some(2_932_896), // 9999-12-31
        ]));
        let mut out = String::new();
        array_literal(&days, &ColumnType::Date, &mut out).unwrap();
        assert_eq!(
            out,
            r#"{"1970-01-01",NULL,"0001-01-01","0001-12-31 BC","9999-12-31"}"#
        );
        let ats: ArrayRef = Arc::new(arrow_array::TimestampMicrosecondArray::from(vec![
            1_709_210_096_123_456,
            -1,
        ]));
        let mut out = String::new();
        array_literal(&ats, &ColumnType::TimestampTz, &mut out).unwrap();
        assert_eq!(
            out,
            r#"{"2024-02-29 12:34:56.123456+00","1969-12-31 23:59:59.999999+00"}"#
        );
        let mut out = String::new();
        array_literal(&ats, &ColumnType::Timestamp, &mut out).unwrap();
        assert_eq!(
            out,
            r#"{"2024-02-29 12:34:56.123456","1969-12-31 23:59:59.999999"}"#
        );
        let times: ArrayRef = Arc::new(arrow_array::Time64MicrosecondArray::from(vec![
            0,
            86_400_000_000,
            45_296_000_001,
        ]));
        let mut out = String::new();
        array_literal(&times, &ColumnType::Time, &mut out).unwrap();
        assert_eq!(
            out,
            r#"{"0:00:00.000000","24:00:00.000000","12:34:56.000001"}"#
        );
        let spans: ArrayRef = Arc::new(arrow_array::DurationMicrosecondArray::from(vec![
            -3_020_399_000_000,
            500_000,
        ]));
        let mut out = String::new();
        array_literal(&spans, &ColumnType::Duration, &mut out).unwrap();
        assert_eq!(out, r#"{"-838:59:59.000000","0:00:00.500000"}"#);
    }
}
