//! Result cells as plain values: what is hashed for the diff, kept for the
//! keys in the state file, and rendered for each target.
//!
//! A query's Arrow columns are first cast to a few canonical types (any
//! string to Utf8, any timestamp to microseconds, …), then read cell by
//! cell. Targets store at most microseconds, so nanoseconds are cut there.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Decimal256Type, DecimalType, Float32Type, Float64Type,
    Int64Type, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType, UInt64Type,
};
use datafusion::arrow::error::ArrowError;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

pub use tidewater_lake::digest::canonical_type;

/// One cell. Dates, times and timestamps are counts (days, microseconds)
/// so the state file needs no date format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Real(f32),
    /// Exact decimal text, e.g. `-12.50`.
    Decimal(String),
    Text(String),
    Bytes(Vec<u8>),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01 00:00, no time zone.
    Timestamp(i64),
    /// Microseconds since 1970-01-01 00:00 UTC.
    TimestampTz(i64),
    /// Microseconds since midnight.
    Time(i64),
}

impl Value {
    /// Feeds a tagged, unambiguous encoding into the row hash: a tag byte,
    /// the length (u64 LE) and the bytes. Per cell of every result row, so
    /// fixed-size values go through a stack buffer, never the heap. The
    /// encoding is what state files hold hashes of: changing it re-pushes
    /// every row once.
    fn feed(&self, h: &mut Xxh3) {
        let mut fixed = [0u8; 8];
        let mut put = |bytes: &[u8]| {
            fixed[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        };
        let (tag, len) = match self {
            Value::Null => (0, 0),
            Value::Bool(b) => (1, put(&[*b as u8])),
            Value::Int(v) => (2, put(&v.to_le_bytes())),
            Value::UInt(v) => (3, put(&v.to_le_bytes())),
            Value::Float(v) => (4, put(&v.to_bits().to_le_bytes())),
            Value::Real(v) => (5, put(&v.to_bits().to_le_bytes())),
            Value::Date(d) => (9, put(&d.to_le_bytes())),
            Value::Timestamp(t) => (10, put(&t.to_le_bytes())),
            Value::TimestampTz(t) => (11, put(&t.to_le_bytes())),
            Value::Time(t) => (12, put(&t.to_le_bytes())),
            Value::Decimal(s) => return feed_bytes(h, 6, s.as_bytes()),
            Value::Text(s) => return feed_bytes(h, 7, s.as_bytes()),
            Value::Bytes(b) => return feed_bytes(h, 8, b),
        };
        feed_bytes(h, tag, &fixed[..len]);
    }
}

fn feed_bytes(h: &mut Xxh3, tag: u8, bytes: &[u8]) {
    h.update(&[tag]);
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// The hash of a whole row, compared with the last pushed one.
pub fn row_hash(row: &[Value]) -> u128 {
    let mut h = Xxh3::new();
    for value in row {
        value.feed(&mut h);
    }
    h.digest128()
}

/// Reads the cells of one result batch, column by column.
pub struct Cells {
    columns: Vec<ArrayRef>,
}

impl Cells {
    pub fn new(batch: &RecordBatch) -> Result<Self, ArrowError> {
        let columns = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, array)| {
                let target = canonical_type(field.name(), field.data_type())
                    .map_err(ArrowError::CastError)?;
                if array.data_type() == &target {
                    Ok(array.clone())
                } else if matches!(array.data_type(), DataType::Timestamp(_, _))
                    && matches!(target, DataType::Timestamp(_, Some(_)))
                {
                    // The instant, in UTC microseconds, whatever its zone.
                    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")));
                    cast(array, &utc)
                } else {
                    cast(array, &target)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { columns })
    }

    pub fn value(&self, column: usize, row: usize) -> Value {
        let array = &self.columns[column];
        if array.is_null(row) {
            return Value::Null;
        }
        match array.data_type() {
            DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
            DataType::Int64 => Value::Int(array.as_primitive::<Int64Type>().value(row)),
            DataType::UInt64 => Value::UInt(array.as_primitive::<UInt64Type>().value(row)),
            DataType::Float32 => Value::Real(array.as_primitive::<Float32Type>().value(row)),
            DataType::Float64 => Value::Float(array.as_primitive::<Float64Type>().value(row)),
            DataType::Decimal128(p, s) => Value::Decimal(Decimal128Type::format_decimal(
                array.as_primitive::<Decimal128Type>().value(row),
                *p,
                *s,
            )),
            DataType::Decimal256(p, s) => Value::Decimal(Decimal256Type::format_decimal(
                array.as_primitive::<Decimal256Type>().value(row),
                *p,
                *s,
            )),
            DataType::Utf8 => Value::Text(array.as_string::<i32>().value(row).to_string()),
            DataType::Binary => Value::Bytes(array.as_binary::<i32>().value(row).to_vec()),
            DataType::Date32 => Value::Date(array.as_primitive::<Date32Type>().value(row)),
            DataType::Timestamp(_, None) => {
                Value::Timestamp(array.as_primitive::<TimestampMicrosecondType>().value(row))
            }
            DataType::Timestamp(_, Some(_)) => {
                Value::TimestampTz(array.as_primitive::<TimestampMicrosecondType>().value(row))
            }
            DataType::Time64(_) => {
                Value::Time(array.as_primitive::<Time64MicrosecondType>().value(row))
            }
            // DataType::Null: every cell is NULL (handled above).
            _ => Value::Null,
        }
    }

    pub fn row(&self, row: usize, columns: impl Iterator<Item = usize>) -> Vec<Value> {
        columns.map(|c| self.value(c, row)).collect()
    }
}

/// The order of keys: the order the engine sorts the result in (ascending,
/// NULL last; numbers by value, floats by IEEE total order, text and bytes
/// byte by byte) and the order of state files. The diff walks both in this
/// order and checks it as it goes, so a mismatch stops the run instead of
/// pushing a wrong difference.
pub fn key_order(a: &[Value], b: &[Value]) -> std::cmp::Ordering {
    a.iter()
        .zip(b)
        .map(|(a, b)| value_order(a, b))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}

fn value_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Greater,
        (_, Value::Null) => Ordering::Less,
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Int(a), Value::Int(b)) => a.cmp(b),
        (Value::UInt(a), Value::UInt(b)) => a.cmp(b),
        (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
        (Value::Real(a), Value::Real(b)) => a.total_cmp(b),
        (Value::Decimal(a), Value::Decimal(b)) => decimal_order(a, b),
        (Value::Text(a), Value::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
        (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
        (Value::Date(a), Value::Date(b)) => a.cmp(b),
        (Value::Timestamp(a), Value::Timestamp(b))
        | (Value::TimestampTz(a), Value::TimestampTz(b))
        | (Value::Time(a), Value::Time(b)) => a.cmp(b),
        // One column has one type; across types only a stable order.
        _ => variant(a).cmp(&variant(b)),
    }
}

fn variant(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Int(_) => 2,
        Value::UInt(_) => 3,
        Value::Float(_) => 4,
        Value::Real(_) => 5,
        Value::Decimal(_) => 6,
        Value::Text(_) => 7,
        Value::Bytes(_) => 8,
        Value::Date(_) => 9,
        Value::Timestamp(_) => 10,
        Value::TimestampTz(_) => 11,
        Value::Time(_) => 12,
    }
}

/// Decimal text (`-12.50`, `3`, `0.05`) by value.
fn decimal_order(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn parts(s: &str) -> (bool, &str, &str) {
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let int = int.trim_start_matches('0');
        let frac = frac.trim_end_matches('0');
        // -0 is 0
        let negative = negative && !(int.is_empty() && frac.is_empty());
        (negative, int, frac)
    }
    let (an, ai, af) = parts(a);
    let (bn, bi, bf) = parts(b);
    let magnitude = ai
        .len()
        .cmp(&bi.len())
        .then_with(|| ai.cmp(bi))
        .then_with(|| af.cmp(bf));
    match (an, bn) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
    }
}

/// Splits microseconds into (seconds, microseconds 0..1e6).
pub fn split_micros(us: i64) -> (i64, u32) {
    (us.div_euclid(1_000_000), us.rem_euclid(1_000_000) as u32)
}

pub fn date(days: i32) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::from_num_days_from_ce_opt(days.checked_add(719_163)?)
}

pub fn timestamp(us: i64) -> Option<chrono::NaiveDateTime> {
    let (secs, micros) = split_micros(us);
    chrono::DateTime::from_timestamp(secs, micros * 1000).map(|t| t.naive_utc())
}

pub fn time(us: i64) -> Option<chrono::NaiveTime> {
    let (secs, micros) = split_micros(us);
    chrono::NaiveTime::from_num_seconds_from_midnight_opt(u32::try_from(secs).ok()?, micros * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Decimal128Array, Int32Array, StringViewArray, TimestampNanosecondArray,
    };
    use datafusion::arrow::datatypes::{Field, Schema};

    #[test]
    fn cells_are_read_as_canonical_values() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("b", DataType::Decimal128(10, 2), true),
            Field::new("c", DataType::Utf8View, true),
            Field::new(
                "d",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("+02:00".into())),
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![Some(-7), None])),
                Arc::new(
                    Decimal128Array::from(vec![Some(-1250), Some(5)])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
                Arc::new(StringViewArray::from(vec![Some("ü"), None])),
                Arc::new(
                    TimestampNanosecondArray::from(vec![Some(1_500), None]).with_timezone("+02:00"),
                ),
            ],
        )
        .unwrap();
        let cells = Cells::new(&batch).unwrap();
        assert_eq!(
            cells.row(0, 0..4),
            vec![
                Value::Int(-7),
                Value::Decimal("-12.50".into()),
                Value::Text("ü".into()),
                Value::TimestampTz(1),
            ]
        );
        assert_eq!(cells.row(1, 0..4)[0], Value::Null);
        assert_eq!(cells.value(1, 1), Value::Decimal("0.05".into()));
    }

    #[test]
    fn hashes_tell_types_and_boundaries_apart() {
        let a = row_hash(&[Value::Text("ab".into()), Value::Text("c".into())]);
        let b = row_hash(&[Value::Text("a".into()), Value::Text("bc".into())]);
        let c = row_hash(&[Value::Int(1)]);
        let d = row_hash(&[Value::UInt(1)]);
        assert_ne!(a, b);
        assert_ne!(c, d);
        assert_eq!(
            a,
            row_hash(&[Value::Text("ab".into()), Value::Text("c".into())])
        );
    }

    /// The hash encoding state files depend on, spelled out byte by byte.
    #[test]
    fn the_hash_encoding_does_not_drift() {
        let row = [
            Value::Null,
            Value::Bool(true),
            Value::Int(-2),
            Value::UInt(3),
            Value::Float(0.5),
            Value::Real(-1.5),
            Value::Decimal("12.50".into()),
            Value::Text("é".into()),
            Value::Bytes(vec![0, 255]),
            Value::Date(-1),
            Value::Timestamp(4),
            Value::TimestampTz(-5),
            Value::Time(6),
        ];
        let mut expected = Xxh3::new();
        let mut field = |tag: u8, bytes: &[u8]| {
            expected.update(&[tag]);
            expected.update(&(bytes.len() as u64).to_le_bytes());
            expected.update(bytes);
        };
        field(0, &[]);
        field(1, &[1]);
        field(2, &(-2i64).to_le_bytes());
        field(3, &3u64.to_le_bytes());
        field(4, &0.5f64.to_bits().to_le_bytes());
        field(5, &(-1.5f32).to_bits().to_le_bytes());
        field(6, b"12.50");
        field(7, "é".as_bytes());
        field(8, &[0, 255]);
        field(9, &(-1i32).to_le_bytes());
        field(10, &4i64.to_le_bytes());
        field(11, &(-5i64).to_le_bytes());
        field(12, &6i64.to_le_bytes());
        assert_eq!(row_hash(&row), expected.digest128());
    }

    /// The Rust key order is the order DataFusion sorts keys in: a column
    /// of each key type, shuffled, sorted by the engine, comes out in
    /// strictly increasing `key_order`.
    #[tokio::test]
    async fn key_order_is_the_engine_sort_order() {
        use datafusion::arrow::array::{
            BinaryArray, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
            UInt64Array,
        };
        use datafusion::prelude::{ident, SessionContext};
        let ints = [i64::MIN, -300, -2, -1, 0, 1, 2, 10, 255, 256, i64::MAX];
        let floats = [
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -0.0,
            0.0,
            1e-300,
            0.5,
            2.5,
            f64::INFINITY,
            f64::NAN,
        ];
        let texts = [
            "", "A", "Z", "a", "aa", "ab", "b", "z", "Ä", "ä", "é", "ü", "中",
        ];
        let decimals = [-99999, -1250, -5, 0, 5, 10, 1250, 99999];
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("int", Arc::new(Int64Array::from(ints.to_vec()))),
            (
                "uint",
                Arc::new(UInt64Array::from(vec![0, 1, 2, 255, 1 << 40, u64::MAX])),
            ),
            ("float", Arc::new(Float64Array::from(floats.to_vec()))),
            ("text", Arc::new(StringArray::from(texts.to_vec()))),
            (
                "bytes",
                Arc::new(BinaryArray::from_iter_values([
                    &b""[..],
                    b"\x00",
                    b"\x00\x01",
                    b"\x01",
                    b"\x7f",
                    b"\x80",
                    b"\xff",
                ])),
            ),
            (
                "dec",
                Arc::new(
                    datafusion::arrow::array::Decimal128Array::from(decimals.to_vec())
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
            ),
            (
                "date",
                Arc::new(Date32Array::from(vec![-10_000, -1, 0, 1, 20_000])),
            ),
            ("bool", Arc::new(BooleanArray::from(vec![false, true]))),
        ];
        let ctx = SessionContext::new();
        for (name, array) in columns {
            // Reversed and rotated: not in order to begin with.
            let n = array.len();
            let order: Vec<u32> = (0..n as u32).rev().cycle().skip(n / 2).take(n).collect();
            let shuffled = datafusion::arrow::compute::take(
                &array,
                &datafusion::arrow::array::UInt32Array::from(order),
                None,
            )
            .unwrap();
            let batch = RecordBatch::try_from_iter([(name, shuffled)]).unwrap();
            let sorted = ctx
                .read_batch(batch)
                .unwrap()
                .sort(vec![ident(name).sort(true, false)])
                .unwrap()
                .collect()
                .await
                .unwrap();
            let mut values = Vec::new();
            for batch in &sorted {
                let cells = Cells::new(batch).unwrap();
                for row in 0..batch.num_rows() {
                    values.push(cells.row(row, 0..1));
                }
            }
            assert_eq!(values.len(), n, "{name}");
            for pair in values.windows(2) {
                assert_eq!(
                    key_order(&pair[0], &pair[1]),
                    std::cmp::Ordering::Less,
                    "{name}: {:?} before {:?}",
                    pair[0],
                    pair[1]
                );
            }
        }
        assert!(key_order(
            &[Value::Int(1), Value::Int(5)],
            &[Value::Int(2), Value::Int(0)]
        )
        .is_lt());
        assert!(key_order(
            &[Value::Int(1), Value::Int(5)],
            &[Value::Int(1), Value::Int(0)]
        )
        .is_gt());
        assert!(decimal_order("-0.00", "0").is_eq());
        assert!(decimal_order("-0.5", "-0.25").is_lt());
        assert!(decimal_order("100", "99.99").is_gt());
    }

    #[test]
    fn dates_and_times_convert_around_the_epoch() {
        assert_eq!(date(0).unwrap().to_string(), "1970-01-01");
        assert_eq!(date(-1).unwrap().to_string(), "1969-12-31");
        assert_eq!(
            timestamp(-1).unwrap().to_string(),
            "1969-12-31 23:59:59.999999"
        );
        assert_eq!(time(3_600_000_001).unwrap().to_string(), "01:00:00.000001");
        assert!(time(86_400_000_000).is_none());
    }
}
