//! Postgres binary send format → [`Datum`], for pgoutput's `binary 'true'`.
//!
//! Binary mode saves the server its text output functions (timestamps,
//! numerics and floats are the expensive ones) and us the parsing. It is a
//! session-wide switch: the server then sends every column whose type has a
//! send function in binary. So tidewater asks for it only when every column
//! of every captured table has a type decoded here ([`supported`]); a column
//! of another type appearing later (ALTER TABLE) makes the source reconnect in
//! text mode (see `source.rs`).
//!
//! ```text
//!  bool 1 byte · int2/4/8 big-endian · float4/8 IEEE big-endian
//!  text, varchar, bpchar, name, json: the characters · jsonb: 0x01 + text
//!  bytea: the bytes · uuid: 16 bytes · date: i32 days since 2000-01-01
//!  time: i64 µs · timestamp[tz]: i64 µs since 2000-01-01 (UTC)
//!  numeric: ndigits i16, weight i16, sign u16, dscale u16, base-10000 digits
//!  array: ndim i32, has-null i32, element oid u32, (len i32, lbound i32)×ndim,
//!         then per element: len i32 (-1 NULL) + bytes
//! ```
//!
//! Infinite dates and timestamps land as the ends of the lake's range, like
//! in text mode; every length is checked and a value that does not fit its
//! column is an error naming the type, never the value.

use tidewater_core::{date_range_days, timestamp_range_us, ColumnType, Datum};

use crate::types::{
    BOOL, BPCHAR, BYTEA, DATE, FLOAT4, FLOAT8, INT2, INT4, INT8, JSON, JSONB, NAME, NUMERIC, TEXT,
    TIME, TIMESTAMP, TIMESTAMPTZ, UUID, VARCHAR,
};
use crate::value::ValueError;

/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
const PG_EPOCH_US: i64 = PG_EPOCH_DAYS * 86_400_000_000;

const SCALARS: [u32; 19] = [
    BOOL,
    INT2,
    INT4,
    INT8,
    FLOAT4,
    FLOAT8,
    NUMERIC,
    TEXT,
    VARCHAR,
    BPCHAR,
    NAME,
    BYTEA,
    DATE,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    UUID,
    JSON,
    JSONB,
];

/// Element type of the array types whose binary form is decoded.
fn array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => BOOL,
        1005 => INT2,
        1007 => INT4,
        1016 => INT8,
        1021 => FLOAT4,
        1022 => FLOAT8,
        1231 => NUMERIC,
        1009 => TEXT,
        1015 => VARCHAR,
        1014 => BPCHAR,
        1003 => NAME,
        1001 => BYTEA,
        1182 => DATE,
        1183 => TIME,
        1115 => TIMESTAMP,
        1185 => TIMESTAMPTZ,
        2951 => UUID,
        199 => JSON,
        3807 => JSONB,
        _ => return None,
    })
}

/// Whether values of the (base) type `oid` can be read in binary.
pub fn supported(oid: u32) -> bool {
    SCALARS.contains(&oid) || array_element(oid).is_some()
}

fn bad(what: &'static str, bytes: &[u8]) -> ValueError {
    ValueError {
        what: what.into(),
        length: bytes.len(),
    }
}

fn fixed<const N: usize>(what: &'static str, bytes: &[u8]) -> Result<[u8; N], ValueError> {
    bytes.try_into().map_err(|_| bad(what, bytes))
}

fn utf8<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a str, ValueError> {
    std::str::from_utf8(bytes).map_err(|_| bad(what, bytes))
}

/// Decodes one non-NULL value of base type `oid` into a `ty` column.
pub fn decode(oid: u32, ty: &ColumnType, bytes: &[u8]) -> Result<Datum, ValueError> {
    if let Some(element) = array_element(oid) {
        if !matches!(ty, ColumnType::List(_)) {
            return Err(bad("an array for a non-list column", bytes));
        }
        return decode_array(element, ty, bytes);
    }
    Ok(match oid {
        BOOL => match bytes {
            [0] => Datum::Bool(false),
            [1] => Datum::Bool(true),
            _ => return Err(bad("boolean", bytes)),
        },
        INT2 => Datum::Int16(i16::from_be_bytes(fixed("int2", bytes)?)),
        INT4 => Datum::Int32(i32::from_be_bytes(fixed("int4", bytes)?)),
        INT8 => Datum::Int64(i64::from_be_bytes(fixed("int8", bytes)?)),
        FLOAT4 => Datum::Float32(f32::from_be_bytes(fixed("float4", bytes)?)),
        FLOAT8 => Datum::Float64(f64::from_be_bytes(fixed("float8", bytes)?)),
        NUMERIC => decode_numeric(ty, bytes)?,
        TEXT | VARCHAR | BPCHAR | NAME | JSON => Datum::Text(utf8("text", bytes)?.to_string()),
        JSONB => match bytes.split_first() {
            Some((1, json)) => Datum::Text(utf8("jsonb", json)?.to_string()),
            _ => return Err(bad("jsonb version 1", bytes)),
        },
        BYTEA => Datum::Bytes(bytes.to_vec()),
        UUID => Datum::Uuid(fixed("uuid", bytes)?),
        DATE => {
            let raw = i32::from_be_bytes(fixed("date", bytes)?);
            let (min, max) = date_range_days();
            Datum::Date(match raw {
                i32::MAX => max,
                i32::MIN => min,
                _ => {
                    let days = i64::from(raw) + PG_EPOCH_DAYS;
                    i32::try_from(days)
                        .ok()
                        .filter(|d| (min..=max).contains(d))
                        .ok_or_else(|| bad("a date within the lake's range", bytes))?
                }
            })
        }
        TIME => {
            let micros = i64::from_be_bytes(fixed("time", bytes)?);
            if !(0..=86_400_000_000).contains(&micros) {
                return Err(bad("time", bytes));
            }
            Datum::Time(micros)
        }
        TIMESTAMP | TIMESTAMPTZ => {
            let raw = i64::from_be_bytes(fixed("timestamp", bytes)?);
            let (min, max) = timestamp_range_us();
            Datum::Timestamp(match raw {
                i64::MAX => max,
                i64::MIN => min,
                _ => raw
                    .checked_add(PG_EPOCH_US)
                    .filter(|v| (min..=max).contains(v))
                    .ok_or_else(|| bad("a timestamp within the lake's range", bytes))?,
            })
        }
        _ => return Err(bad("a type without a binary decoder", bytes)),
    })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
}

/// An array into a column of list type `ty` (one `List` per dimension).
fn decode_array(element: u32, ty: &ColumnType, bytes: &[u8]) -> Result<Datum, ValueError> {
    let mut c = Cursor { bytes, at: 0 };
    let malformed = || bad("binary array", bytes);
    let ndim = c.i32().ok_or_else(malformed)?;
    let _has_null = c.i32().ok_or_else(malformed)?;
    let element_oid = c.i32().ok_or_else(malformed)? as u32;
    if element_oid != element || !(0..=6).contains(&ndim) {
        return Err(malformed());
    }
    let mut dims = Vec::with_capacity(ndim as usize);
    let mut total: usize = 1;
    for dimension in 1..=ndim as usize {
        let len = usize::try_from(c.i32().ok_or_else(malformed)?).map_err(|_| malformed())?;
        let lower = c.i32().ok_or_else(malformed)?;
        if lower != 1 {
            // As in text mode: a list cannot keep other lower bounds.
            return Err(crate::value::lower_bound_error(
                lower.into(),
                dimension,
                bytes.len(),
            ));
        }
        total = total.checked_mul(len).ok_or_else(malformed)?;
        dims.push(len);
    }
    if ndim == 0 {
        // The empty array, of any dimension count.
        return if c.at == bytes.len() {
            Ok(Datum::List(Vec::new()))
        } else {
            Err(malformed())
        };
    }
    // Each element needs at least its 4-byte length: no huge allocation
    // from a forged count.
    if total > (bytes.len() - c.at) / 4 {
        return Err(malformed());
    }
    let mut items = Vec::with_capacity(total);
    let mut scalar = ty;
    for _ in 0..ndim {
        let ColumnType::List(inner) = scalar else {
            return Err(bad(
                "an array with as many dimensions as the column declares",
                bytes,
            ));
        };
        scalar = inner;
    }
    if matches!(scalar, ColumnType::List(_)) {
        return Err(bad(
            "an array with as many dimensions as the column declares",
            bytes,
        ));
    }
    for _ in 0..total {
        let len = c.i32().ok_or_else(malformed)?;
        items.push(if len < 0 {
            Datum::Null
        } else {
            let item = c.take(len as usize).ok_or_else(malformed)?;
            decode(element, scalar, item)?
        });
    }
    if c.at != bytes.len() {
        return Err(malformed());
    }
    // Row-major: fold the innermost dimension first.
    for &len in dims.iter().skip(1).rev() {
        items = chunk(items, len);
    }
    Ok(Datum::List(items))
}

/// Groups `items` into lists of `len` (a dimension of length 0 leaves no
/// items to group).
fn chunk(items: Vec<Datum>, len: usize) -> Vec<Datum> {
    if len == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(items.len() / len);
    let mut iter = items.into_iter();
    loop {
        let group: Vec<Datum> = iter.by_ref().take(len).collect();
        if group.is_empty() {
            return out;
        }
        out.push(Datum::List(group));
    }
}

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// The numeric's text as Postgres prints it (`numeric_out`): exactly
/// `dscale` fraction digits.
fn numeric_text(bytes: &[u8]) -> Result<String, ValueError> {
    let mut c = Cursor { bytes, at: 0 };
    let malformed = || bad("binary numeric", bytes);
    let ndigits = c.i16().ok_or_else(malformed)?;
    let weight = c.i16().ok_or_else(malformed)? as i32;
    let sign = c.i16().ok_or_else(malformed)? as u16;
    let dscale = c.i16().ok_or_else(malformed)?;
    match sign {
        NUMERIC_NAN => return Ok("NaN".into()),
        NUMERIC_PINF => return Ok("Infinity".into()),
        NUMERIC_NINF => return Ok("-Infinity".into()),
        0 | NUMERIC_NEG => {}
        _ => return Err(malformed()),
    }
    if ndigits < 0 || dscale < 0 {
        return Err(malformed());
    }
    let mut digits = Vec::with_capacity(ndigits as usize);
    for _ in 0..ndigits {
        let d = c.i16().ok_or_else(malformed)?;
        if !(0..10_000).contains(&d) {
            return Err(malformed());
        }
        digits.push(d as i32);
    }
    if c.at != bytes.len() {
        return Err(malformed());
    }
    let digit = |i: i32| -> i32 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == NUMERIC_NEG {
        out.push('-');
    }
    // Integer part: groups 0..=weight.
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            let d = digit(i);
            if i == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut fraction = String::new();
        let mut group = weight + 1;
        while (fraction.len() as i32) < i32::from(dscale) {
            fraction.push_str(&format!("{:04}", digit(group)));
            group += 1;
        }
        fraction.truncate(dscale as usize);
        out.push_str(&fraction);
    }
    Ok(out)
}

fn decode_numeric(ty: &ColumnType, bytes: &[u8]) -> Result<Datum, ValueError> {
    let text = numeric_text(bytes)?;
    match ty {
        ColumnType::Decimal { .. } => crate::value::parse(ty, &text).map_err(|e| ValueError {
            what: e.what,
            length: bytes.len(),
        }),
        ColumnType::Text => Ok(Datum::Text(text)),
        _ => Err(bad("numeric for a non-numeric column", bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: &[i16], weight: i16, sign: u16, dscale: i16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((ndigits.len() as i16).to_be_bytes());
        b.extend(weight.to_be_bytes());
        b.extend(sign.to_be_bytes());
        b.extend(dscale.to_be_bytes());
        for d in ndigits {
            b.extend(d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_print_like_numeric_out() {
        assert_eq!(
            numeric_text(&numeric(&[12, 3456], 1, 0, 2)).unwrap(),
            "123456.00"
        );
        assert_eq!(
            numeric_text(&numeric(&[1, 5000], 0, NUMERIC_NEG, 1)).unwrap(),
            "-1.5"
        );
        assert_eq!(numeric_text(&numeric(&[5], -1, 0, 4)).unwrap(), "0.0005");
        assert_eq!(numeric_text(&numeric(&[], 0, 0, 3)).unwrap(), "0.000");
        assert_eq!(numeric_text(&numeric(&[1], 2, 0, 0)).unwrap(), "100000000");
        assert_eq!(
            numeric_text(&numeric(&[], 0, NUMERIC_NAN, 0)).unwrap(),
            "NaN"
        );
        assert_eq!(
            decode(
                NUMERIC,
                &ColumnType::Decimal {
                    precision: 12,
                    scale: 2
                },
                &numeric(&[1, 5000], 0, NUMERIC_NEG, 1)
            )
            .unwrap(),
            Datum::Decimal128(-150)
        );
        assert!(numeric_text(&numeric(&[10_000], 0, 0, 0)).is_err());
        assert!(numeric_text(&[0, 1]).is_err());
    }

    #[test]
    fn dates_and_timestamps_shift_epochs_and_clamp_infinities() {
        assert_eq!(
            decode(DATE, &ColumnType::Date, &0i32.to_be_bytes()).unwrap(),
            Datum::Date(10_957)
        );
        assert_eq!(
            decode(DATE, &ColumnType::Date, &i32::MAX.to_be_bytes()).unwrap(),
            Datum::Date(date_range_days().1)
        );
        assert_eq!(
            decode(TIMESTAMPTZ, &ColumnType::TimestampTz, &1i64.to_be_bytes()).unwrap(),
            Datum::Timestamp(PG_EPOCH_US + 1)
        );
        assert_eq!(
            decode(TIMESTAMP, &ColumnType::Timestamp, &i64::MIN.to_be_bytes()).unwrap(),
            Datum::Timestamp(timestamp_range_us().0)
        );
        assert!(decode(TIMESTAMP, &ColumnType::Timestamp, &[0; 7]).is_err());
    }

    #[test]
    fn arrays_decode_and_forged_headers_fail() {
        let mut b = Vec::new();
        b.extend(1i32.to_be_bytes());
        b.extend(1i32.to_be_bytes());
        b.extend((INT4 as i32).to_be_bytes());
        b.extend(2i32.to_be_bytes());
        b.extend(1i32.to_be_bytes());
        b.extend(4i32.to_be_bytes());
        b.extend(7i32.to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        let ty = ColumnType::List(Box::new(ColumnType::Int32));
        assert_eq!(
            decode(1007, &ty, &b).unwrap(),
            Datum::List(vec![Datum::Int32(7), Datum::Null])
        );
        let mut forged = b.clone();
        forged[12..16].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode(1007, &ty, &forged).is_err());
        // A lower bound of 0 is named as such, with the rule.
        let mut zero_based = b.clone();
        zero_based[16..20].copy_from_slice(&0i32.to_be_bytes());
        let err = decode(1007, &ty, &zero_based).unwrap_err().to_string();
        assert!(
            err.contains("lower bound 0 in dimension 1")
                && err.contains("every lower bound is 1")
                && !err.contains("lower bounds are 1"),
            "{err}"
        );
        let mut two_dims = b;
        two_dims[0..4].copy_from_slice(&2i32.to_be_bytes());
        assert!(decode(1007, &ty, &two_dims).is_err());

        // {{1,2},{3,NULL}} into int4[][].
        let mut m = Vec::new();
        for v in [2i32, 1, INT4 as i32, 2, 1, 2, 1] {
            m.extend(v.to_be_bytes());
        }
        for v in [Some(1i32), Some(2), Some(3), None] {
            match v {
                Some(v) => {
                    m.extend(4i32.to_be_bytes());
                    m.extend(v.to_be_bytes());
                }
                None => m.extend((-1i32).to_be_bytes()),
            }
        }
        let ty2 = ColumnType::List(Box::new(ty.clone()));
        assert_eq!(
            decode(1007, &ty2, &m).unwrap(),
            Datum::List(vec![
                Datum::List(vec![Datum::Int32(1), Datum::Int32(2)]),
                Datum::List(vec![Datum::Int32(3), Datum::Null]),
            ])
        );
        assert!(decode(1007, &ty, &m).is_err(), "2-D value, 1-D column");
        for len in 0..12 {
            assert!(decode(1007, &ty, &[0u8; 12][..len]).is_err());
        }
    }
}
