//! MySQL 8 binary JSON → JSON text.
//!
//! MySQL stores a JSON column in its own binary form (`json_binary.cc`) and
//! writes that form to the binlog. We render it to compact JSON text the way
//! `JSON_EXTRACT` would: keys in stored order (MySQL sorts them by length, then
//! bytes, on write), strings escaped as serde_json escapes them, DECIMAL opaque
//! values as bare numbers with their scale, DATE/TIME/DATETIME/TIMESTAMP opaque
//! values as quoted strings with six fractional digits (what MySQL prints).
//! Other opaque values become `"base64:type<N>:<data>"`, as MySQL prints them.
//!
//! ```text
//!  document  = type 1 | value
//!  object    = count | size | key entry × count | value entry × count | keys, values
//!  array     = count | size | value entry × count | values
//!  key entry = offset | length 2      value entry = type 1 | offset or inline value
//!  count, size, offset: 2 bytes (small) or 4 bytes (large); offsets count from
//!  the start of the enclosing object/array (its `count` field)
//!  string    = length (varint, 7 bits per byte) | UTF-8 bytes
//!  opaque    = MySQL type 1 | length (varint) | bytes
//! ```
//!
//! Every offset is checked against the enclosing container, and nesting is
//! bounded ([`MAX_DEPTH`]), so hostile input yields an error, never a panic or
//! a stack overflow.

use std::fmt::Write as _;

use crate::event::{le_uint, DecodeError};
use crate::rows::DecimalLayout;
use tidewater_core::Datum;

/// No real document renders to more than this many times its binary size
/// (the worst case, a string of control characters, is 6×).
const MAX_EXPANSION: usize = 16;

/// Deepest nesting we decode. MySQL itself refuses documents deeper than 100.
pub const MAX_DEPTH: usize = 100;

const SMALL_OBJECT: u8 = 0x00;
const LARGE_OBJECT: u8 = 0x01;
const SMALL_ARRAY: u8 = 0x02;
const LARGE_ARRAY: u8 = 0x03;
const LITERAL: u8 = 0x04;
const INT16: u8 = 0x05;
const UINT16: u8 = 0x06;
const INT32: u8 = 0x07;
const UINT32: u8 = 0x08;
const INT64: u8 = 0x09;
const UINT64: u8 = 0x0a;
const DOUBLE: u8 = 0x0b;
const STRING: u8 = 0x0c;
const OPAQUE: u8 = 0x0f;

/// Decodes a MySQL binary JSON document to compact JSON text. An empty input
/// (MySQL writes no bytes for a JSON `null` in some cases) is `null`.
pub fn decode_binary_json(bytes: &[u8]) -> Result<String, DecodeError> {
    let Some((&t, rest)) = bytes.split_first() else {
        return Ok("null".to_owned());
    };
    let mut out = String::with_capacity(bytes.len() * 2);
    Decoder {
        limit: bytes
            .len()
            .saturating_mul(MAX_EXPANSION)
            .saturating_add(1024),
    }
    .value(t, rest, 1, 0, &mut out)?;
    Ok(out)
}

struct Decoder {
    /// Output cap: offsets may point many entries at one shared value, so a
    /// hostile document could otherwise render exponentially large text.
    limit: usize,
}

fn err(offset: usize, reason: &'static str) -> DecodeError {
    DecodeError::Json { offset, reason }
}

impl Decoder {
    /// Renders the value of type `t` whose bytes start at `data` (document
    /// offset `at`).
    fn value<'a>(
        &self,
        t: u8,
        data: &'a [u8],
        at: usize,
        depth: usize,
        out: &mut String,
    ) -> Result<(), DecodeError> {
        let need = |n: usize| -> Result<&'a [u8], DecodeError> {
            data.get(..n)
                .ok_or(err(at, "value runs past its container"))
        };
        match t {
            SMALL_OBJECT | LARGE_OBJECT | SMALL_ARRAY | LARGE_ARRAY => {
                if depth >= MAX_DEPTH {
                    return Err(err(at, "document nested too deeply"));
                }
                self.container(t, data, at, depth + 1, out)?;
            }
            LITERAL => self.literal(need(1)?[0], at, out)?,
            INT16 => write_num(out, i16::from_le_bytes(need(2)?.try_into().expect("2"))),
            UINT16 => write_num(out, u16::from_le_bytes(need(2)?.try_into().expect("2"))),
            INT32 => write_num(out, i32::from_le_bytes(need(4)?.try_into().expect("4"))),
            UINT32 => write_num(out, u32::from_le_bytes(need(4)?.try_into().expect("4"))),
            INT64 => write_num(out, le_uint(need(8)?) as i64),
            UINT64 => write_num(out, le_uint(need(8)?)),
            DOUBLE => {
                let v = f64::from_bits(le_uint(need(8)?));
                if !v.is_finite() {
                    return Err(err(at, "double is not finite"));
                }
                let mut buf = Vec::new();
                serde_json::to_writer(&mut buf, &v).map_err(|_| err(at, "double"))?;
                out.push_str(std::str::from_utf8(&buf).map_err(|_| err(at, "double"))?);
            }
            STRING => {
                let (len, n) = varlen(data, at)?;
                let s = data
                    .get(n..)
                    .and_then(|d| d.get(..len))
                    .ok_or(err(at, "string runs past its container"))?;
                let s = std::str::from_utf8(s).map_err(|_| err(at + n, "string is not UTF-8"))?;
                write_str(out, s);
            }
            OPAQUE => {
                let field_type = *need(1)?.first().expect("1 byte");
                let (len, n) = varlen(&data[1..], at + 1)?;
                let payload = data
                    .get(1 + n..)
                    .and_then(|d| d.get(..len))
                    .ok_or(err(at, "opaque value runs past its container"))?;
                opaque(field_type, payload, at + 1 + n, out)?;
            }
            _ => return Err(err(at.saturating_sub(1), "unknown value type")),
        }
        Ok(())
    }

    fn literal(&self, v: u8, at: usize, out: &mut String) -> Result<(), DecodeError> {
        out.push_str(match v {
            0 => "null",
            1 => "true",
            2 => "false",
            _ => return Err(err(at, "unknown literal")),
        });
        Ok(())
    }

    fn container(
        &self,
        t: u8,
        data: &[u8],
        at: usize,
        depth: usize,
        out: &mut String,
    ) -> Result<(), DecodeError> {
        let large = t == LARGE_OBJECT || t == LARGE_ARRAY;
        let is_object = t == SMALL_OBJECT || t == LARGE_OBJECT;
        let w = if large { 4 } else { 2 };
        let read = |pos: usize, n: usize| -> Result<usize, DecodeError> {
            data.get(pos..pos + n)
                .map(|b| le_uint(b) as usize)
                .ok_or(err(at + pos, "container header runs past its end"))
        };
        let count = read(0, w)?;
        let size = read(w, w)?;
        if size > data.len() {
            return Err(err(at, "container size exceeds the document"));
        }
        let data = &data[..size];
        let key_entry = w + 2;
        let value_entry = 1 + w;
        let header = 2 * w;
        let values_at = header
            + if is_object {
                count.saturating_mul(key_entry)
            } else {
                0
            };
        let entries_end = count
            .checked_mul(value_entry)
            .and_then(|n| n.checked_add(values_at))
            .filter(|&end| end <= size)
            .ok_or(err(at, "container entries exceed its size"))?;
        debug_assert!(entries_end <= data.len());

        out.push(if is_object { '{' } else { '[' });
        for i in 0..count {
            if out.len() > self.limit {
                return Err(err(
                    at,
                    "document renders larger than its binary size allows",
                ));
            }
            if i > 0 {
                out.push(',');
            }
            if is_object {
                let e = header + i * key_entry;
                let key_offset = read(e, w)?;
                let key_len = read(e + w, 2)?;
                let key = data
                    .get(key_offset..)
                    .and_then(|d| d.get(..key_len))
                    .ok_or(err(at + e, "key runs past its container"))?;
                let key = std::str::from_utf8(key)
                    .map_err(|_| err(at + key_offset, "key is not UTF-8"))?;
                write_str(out, key);
                out.push(':');
            }
            let e = values_at + i * value_entry;
            let vt = data[e];
            let inline = match vt {
                LITERAL | INT16 | UINT16 => true,
                INT32 | UINT32 => large,
                _ => false,
            };
            if inline {
                self.value(vt, &data[e + 1..e + 1 + w], at + e + 1, depth, out)?;
            } else {
                let offset = read(e + 1, w)?;
                let value = data
                    .get(offset..)
                    .filter(|v| !v.is_empty() && offset >= entries_end)
                    .ok_or(err(at + e + 1, "value offset outside its container"))?;
                self.value(vt, value, at + offset, depth, out)?;
            }
        }
        out.push(if is_object { '}' } else { ']' });
        Ok(())
    }
}

/// A variable-length length: 7 bits per byte, least significant first, at most
/// 5 bytes. Returns (length, bytes used).
fn varlen(data: &[u8], at: usize) -> Result<(usize, usize), DecodeError> {
    let mut len: u64 = 0;
    for i in 0..5 {
        let b = *data
            .get(i)
            .ok_or(err(at, "length runs past its container"))?;
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let len = usize::try_from(len).map_err(|_| err(at, "length too large"))?;
            return Ok((len, i + 1));
        }
    }
    Err(err(at, "length longer than 5 bytes"))
}

fn write_num(out: &mut String, v: impl std::fmt::Display) {
    let _ = write!(out, "{v}");
}

fn write_str(out: &mut String, s: &str) {
    let mut buf = Vec::with_capacity(s.len() + 2);
    serde_json::to_writer(&mut buf, s).expect("writing to a Vec cannot fail");
    out.push_str(std::str::from_utf8(&buf).expect("serde_json writes UTF-8"));
}

/// MySQL field types that may appear in opaque JSON values.
const TYPE_TIMESTAMP: u8 = 7;
const TYPE_DATE: u8 = 10;
const TYPE_TIME: u8 = 11;
const TYPE_DATETIME: u8 = 12;
const TYPE_NEWDECIMAL: u8 = 246;

fn opaque(field_type: u8, payload: &[u8], at: usize, out: &mut String) -> Result<(), DecodeError> {
    match field_type {
        TYPE_NEWDECIMAL => {
            let [precision, scale, bin @ ..] = payload else {
                return Err(err(at, "decimal without precision and scale"));
            };
            let layout = DecimalLayout::new(*precision, *scale)
                .ok_or(err(at, "decimal precision/scale out of range"))?;
            let bin = bin
                .get(..layout.size as usize)
                .ok_or(err(at, "decimal shorter than its precision"))?;
            let value = layout.decode(bin).map_err(|reason| err(at + 2, reason))?;
            out.push_str(&decimal_text(&value, layout.scale));
        }
        TYPE_DATE | TYPE_TIME | TYPE_DATETIME | TYPE_TIMESTAMP => {
            let b = payload
                .get(..8)
                .ok_or(err(at, "temporal value shorter than 8 bytes"))?;
            let text = packed_temporal_text(field_type, le_uint(b) as i64)
                .ok_or(err(at, "temporal value out of range"))?;
            write_str(out, &text);
        }
        _ => {
            let text = format!("base64:type{field_type}:{}", base64(payload));
            write_str(out, &text);
        }
    }
    Ok(())
}

/// Text of an unscaled decimal at `scale`: `-12.3400`, `0.00001`.
pub(crate) fn decimal_text(value: &Datum, scale: u8) -> String {
    let digits = match value {
        Datum::Decimal128(v) => v.to_string(),
        Datum::Decimal256(v) => v.to_string(),
        _ => return String::new(),
    };
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", digits.as_str()),
    };
    let scale = usize::from(scale);
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// MySQL's packed temporal integer (`TIME_to_longlong_*_packed`) as text.
fn packed_temporal_text(field_type: u8, packed: i64) -> Option<String> {
    let negative = packed < 0;
    let v = packed.unsigned_abs();
    let frac = v & 0xff_ffff;
    let int_part = v >> 24;
    if field_type == TYPE_TIME {
        let (h, m, s) = (int_part >> 12, (int_part >> 6) & 63, int_part & 63);
        if m > 59 || s > 59 || frac > 999_999 {
            return None;
        }
        let sign = if negative { "-" } else { "" };
        return Some(format!("{sign}{h:02}:{m:02}:{s:02}.{frac:06}"));
    }
    if negative {
        return None;
    }
    let ymd = int_part >> 17;
    let hms = int_part & 0x1_ffff;
    let (year, month, day) = ((ymd >> 5) / 13, (ymd >> 5) % 13, ymd & 31);
    if field_type == TYPE_DATE {
        return Some(format!("{year:04}-{month:02}-{day:02}"));
    }
    let (h, m, s) = (hms >> 12, (hms >> 6) & 63, hms & 63);
    if h > 23 || m > 59 || s > 59 || frac > 999_999 {
        return None;
    }
    Some(format!(
        "{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{frac:06}"
    ))
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed_datetime(y: u64, mo: u64, d: u64, h: u64, mi: u64, s: u64, us: u64) -> i64 {
        let ymd = ((y * 13 + mo) << 5) | d;
        let int_part = (ymd << 17) | (h << 12) | (mi << 6) | s;
        ((int_part << 24) | us) as i64
    }

    fn opaque_doc(field_type: u8, payload: &[u8]) -> Vec<u8> {
        let mut d = vec![OPAQUE, field_type, payload.len() as u8];
        d.extend_from_slice(payload);
        d
    }

    #[test]
    fn scalars() {
        assert_eq!(decode_binary_json(&[]).unwrap(), "null");
        assert_eq!(decode_binary_json(&[LITERAL, 1]).unwrap(), "true");
        let mut d = vec![INT64];
        d.extend_from_slice(&i64::MIN.to_le_bytes());
        assert_eq!(decode_binary_json(&d).unwrap(), i64::MIN.to_string());
        let mut d = vec![UINT64];
        d.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode_binary_json(&d).unwrap(), u64::MAX.to_string());
        let mut d = vec![DOUBLE];
        d.extend_from_slice(&1e300f64.to_le_bytes());
        // Doubles are printed by serde_json (shortest round-trip form).
        let text = decode_binary_json(&d).unwrap();
        assert_eq!(text.parse::<f64>().unwrap(), 1e300);
        d[1..].copy_from_slice(&f64::NAN.to_le_bytes());
        assert!(decode_binary_json(&d).is_err());
        let s = "é😀\u{1}\"\\\n\t";
        let mut d = vec![STRING, s.len() as u8];
        d.extend_from_slice(s.as_bytes());
        assert_eq!(decode_binary_json(&d).unwrap(), r#""é😀\u0001\"\\\n\t""#);
        d[2] = 0xff; // not UTF-8
        assert!(decode_binary_json(&d).is_err());
    }

    #[test]
    fn small_object_by_hand() {
        // {"a":1,"bb":"x"}: count 2, size, key entries, value entries, keys, values.
        let doc = [
            SMALL_OBJECT,
            2,
            0,
            23,
            0, // count, size
            18,
            0,
            1,
            0, // key "a" at 18
            19,
            0,
            2,
            0, // key "bb" at 19
            INT16,
            1,
            0, // inline 1
            STRING,
            21,
            0, // string at 21
            b'a',
            b'b',
            b'b',
            1,
            b'x',
        ];
        assert_eq!(decode_binary_json(&doc).unwrap(), r#"{"a":1,"bb":"x"}"#);
        let mut bad = doc;
        bad[17] = 200; // value offset outside the object
        assert!(decode_binary_json(&bad).is_err());
    }

    #[test]
    fn opaque_values_render_like_mysql() {
        let dec = [14, 4, 0x81, 0x0d, 0xfb, 0x38, 0xd2, 0x04, 0xd2];
        assert_eq!(
            decode_binary_json(&opaque_doc(TYPE_NEWDECIMAL, &dec)).unwrap(),
            "1234567890.1234"
        );
        let neg = [5, 5, 0x7f, 0xff, 0xfe];
        assert_eq!(
            decode_binary_json(&opaque_doc(TYPE_NEWDECIMAL, &neg)).unwrap(),
            "-0.00001"
        );
        let dt = packed_datetime(2015, 1, 15, 23, 24, 25, 500_000);
        assert_eq!(
            decode_binary_json(&opaque_doc(TYPE_DATETIME, &dt.to_le_bytes())).unwrap(),
            r#""2015-01-15 23:24:25.500000""#
        );
        let date = packed_datetime(2015, 1, 15, 0, 0, 0, 0);
        assert_eq!(
            decode_binary_json(&opaque_doc(TYPE_DATE, &date.to_le_bytes())).unwrap(),
            r#""2015-01-15""#
        );
        let time: i64 = -((((838 << 12) | (59 << 6) | 59) << 24) | 1);
        assert_eq!(
            decode_binary_json(&opaque_doc(TYPE_TIME, &time.to_le_bytes())).unwrap(),
            r#""-838:59:59.000001""#
        );
        assert_eq!(
            decode_binary_json(&opaque_doc(252, b"hi")).unwrap(),
            r#""base64:type252:aGk=""#
        );
    }

    #[test]
    fn decimal_text_places_the_point() {
        assert_eq!(decimal_text(&Datum::Decimal128(-1), 5), "-0.00001");
        assert_eq!(decimal_text(&Datum::Decimal128(123_400), 4), "12.3400");
        assert_eq!(decimal_text(&Datum::Decimal128(7), 0), "7");
        assert_eq!(base64(b"abcd"), "YWJjZA==");
    }
}
