//! Postgres text output → [`Datum`].
//!
//! Both pgoutput (text mode) and `COPY ... TO STDOUT` send values in the
//! server's text output format. Sessions are started with `DateStyle=ISO`,
//! `TimeZone=UTC`, `bytea_output=hex` and `extra_float_digits=3`, so one parser
//! serves both paths. `infinity`/`-infinity` dates and timestamps map to the
//! ends of the range a lake can hold ([`date_range_days`],
//! [`timestamp_range_us`]); finite values outside that range are an error,
//! never clamped (documented in the README).

use arrow_buffer::i256;
use tidewater_core::calendar::{days_from_civil, days_in_month};
use tidewater_core::decimal::scaled_digits;
use tidewater_core::uuid_text::parse_uuid;
use tidewater_core::{date_range_days, timestamp_range_us, ColumnType, Datum};

/// A value the server sent that does not fit its column type. It names the
/// type and the length of the text, never the text: row values stay out of
/// logs and error messages.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot read {what} from the server's text ({length} bytes)")]
pub struct ValueError {
    pub what: std::borrow::Cow<'static, str>,
    pub length: usize,
}

fn bad(what: &'static str, text: &str) -> ValueError {
    ValueError {
        what: what.into(),
        length: text.len(),
    }
}

/// An array whose lower bound in dimension `dimension` (1-based) is `bound`,
/// not 1: a list cannot keep it (its elements would shift).
pub(crate) fn lower_bound_error(bound: i64, dimension: usize, length: usize) -> ValueError {
    ValueError {
        what: format!(
            "an array with lower bound {bound} in dimension {dimension} (a lake list keeps only \
             arrays whose every lower bound is 1)"
        )
        .into(),
        length,
    }
}

/// The first lower bound other than 1 in a text array's bounds prefix
/// (`[0:1]={7,8}`, `[1:2][-3:-2]={{…}}`), with its dimension.
fn text_lower_bound(text: &str) -> Option<(i64, usize)> {
    let mut rest = text;
    let mut dimension = 0;
    while let Some(body) = rest.strip_prefix('[') {
        dimension += 1;
        let (range, tail) = body.split_once(']')?;
        let lower: i64 = range.split_once(':')?.0.trim().parse().ok()?;
        if lower != 1 {
            return Some((lower, dimension));
        }
        rest = tail;
    }
    None
}

/// Parses one non-NULL value.
pub fn parse(ty: &ColumnType, text: &str) -> Result<Datum, ValueError> {
    Ok(match ty {
        ColumnType::Bool => match text {
            "t" => Datum::Bool(true),
            "f" => Datum::Bool(false),
            _ => return Err(bad("boolean", text)),
        },
        ColumnType::Int16 => Datum::Int16(text.parse().map_err(|_| bad("int2", text))?),
        ColumnType::Int32 => Datum::Int32(text.parse().map_err(|_| bad("int4", text))?),
        ColumnType::Int64 => Datum::Int64(text.parse().map_err(|_| bad("int8", text))?),
        ColumnType::Float32 => Datum::Float32(text.parse().map_err(|_| bad("float4", text))?),
        ColumnType::Float64 => Datum::Float64(text.parse().map_err(|_| bad("float8", text))?),
        ColumnType::Decimal { precision, scale } => {
            let digits = scaled_digits(text, *scale).ok_or_else(|| bad("numeric", text))?;
            if *precision <= 38 {
                Datum::Decimal128(digits.parse().map_err(|_| bad("numeric", text))?)
            } else {
                Datum::Decimal256(i256::from_string(&digits).ok_or_else(|| bad("numeric", text))?)
            }
        }
        ColumnType::Text | ColumnType::Json => Datum::Text(text.to_string()),
        ColumnType::Binary => Datum::Bytes(parse_bytea(text).ok_or_else(|| bad("bytea", text))?),
        ColumnType::Date => Datum::Date(parse_date(text).ok_or_else(|| {
            bad(
                "a date within the lake's range (years -262143..262142)",
                text,
            )
        })?),
        ColumnType::Timestamp => {
            Datum::Timestamp(parse_timestamp(text, false).ok_or_else(|| {
                bad(
                    "a timestamp within the lake's range (years -262143..262142)",
                    text,
                )
            })?)
        }
        ColumnType::TimestampTz => {
            Datum::Timestamp(parse_timestamp(text, true).ok_or_else(|| {
                bad(
                    "a timestamptz within the lake's range (years -262143..262142)",
                    text,
                )
            })?)
        }
        ColumnType::Time => Datum::Time(parse_time(text).ok_or_else(|| bad("time", text))?),
        ColumnType::Uuid => Datum::Uuid(parse_uuid(text).ok_or_else(|| bad("uuid", text))?),
        // Postgres has no column of these types (see types.rs).
        ColumnType::Int8
        | ColumnType::UInt8
        | ColumnType::UInt16
        | ColumnType::UInt32
        | ColumnType::UInt64
        | ColumnType::Duration => return Err(bad("a type Postgres columns never map to", text)),
        ColumnType::List(_) => {
            // Postgres prints bounds (`[0:1]={7,8}`) only when a lower bound
            // is not 1; a list cannot keep them, so such a value is refused
            // rather than shifted.
            if text.starts_with('[') {
                return Err(match text_lower_bound(text) {
                    Some((bound, dimension)) => lower_bound_error(bound, dimension, text.len()),
                    None => bad("an array literal with explicit bounds", text),
                });
            }
            let node = parse_array(text).ok_or_else(|| bad("an array literal", text))?;
            // `{}` is the empty array of any dimension count.
            if node == ArrayNode::List(Vec::new()) {
                return Ok(Datum::List(Vec::new()));
            }
            array_datum(ty, node, text)?
        }
    })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// bytea in hex (`\x0102`) or the old escape format.
fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if let Some(hex) = text.strip_prefix("\\x") {
        let hex = hex.as_bytes();
        if hex.len() % 2 != 0 {
            return None;
        }
        return hex
            .chunks_exact(2)
            .map(|pair| Some(hex_value(pair[0])? << 4 | hex_value(pair[1])?))
            .collect();
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
        } else if bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = bytes.get(i + 1..i + 4)?;
            let mut v: u32 = 0;
            for &d in octal {
                if !(b'0'..=b'7').contains(&d) {
                    return None;
                }
                v = v * 8 + (d - b'0') as u32;
            }
            out.push(u8::try_from(v).ok()?);
            i += 4;
        }
    }
    Some(out)
}

/// `YYYY-MM-DD` (year may have more than 4 digits), returning days since epoch;
/// `BC` handled by the caller.
fn parse_ymd(text: &str, bc: bool) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    // Postgres dates end in year 5874897; anything longer is not a date (and
    // would overflow the day arithmetic).
    if year > 10_000_000 {
        return None;
    }
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let year = if bc { 1 - year } else { year };
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

fn split_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

pub fn parse_date(text: &str) -> Option<i32> {
    let (min, max) = date_range_days();
    match text {
        "infinity" => return Some(max),
        "-infinity" => return Some(min),
        _ => {}
    }
    let (text, bc) = split_bc(text);
    let days = parse_ymd(text, bc)?;
    (min as i64..=max as i64)
        .contains(&days)
        .then_some(days as i32)
}

/// `HH:MM:SS[.ffffff]` → microseconds. `24:00:00` is a valid Postgres time.
pub fn parse_time(text: &str) -> Option<i64> {
    let (hms, frac) = text.split_once('.').unwrap_or((text, ""));
    let mut parts = hms.splitn(3, ':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let s: i64 = parts.next()?.parse().ok()?;
    if frac.len() > 6
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || !(0..=24).contains(&h)
        || !(0..=59).contains(&m)
        || !(0..=60).contains(&s)
    {
        return None;
    }
    let mut micros: i64 = 0;
    for (i, d) in frac.bytes().enumerate() {
        micros += (d - b'0') as i64 * 10i64.pow(5 - i as u32);
    }
    let total = (h * 3600 + m * 60 + s) * 1_000_000 + micros;
    (0..=86_400_000_000).contains(&total).then_some(total)
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]][ BC]` → microseconds since the
/// epoch (UTC for `with_zone`, else wall clock).
pub fn parse_timestamp(text: &str, with_zone: bool) -> Option<i64> {
    let (min, max) = timestamp_range_us();
    match text {
        "infinity" => return Some(max),
        "-infinity" => return Some(min),
        _ => {}
    }
    let (text, bc) = split_bc(text);
    let (date, rest) = text.split_once(' ')?;
    let days = parse_ymd(date, bc)?;
    let (time, offset_seconds) = if with_zone {
        let at = rest.rfind(['+', '-'])?;
        let (time, zone) = rest.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let mut seconds = 0i64;
        for (i, part) in zone[1..].split(':').enumerate() {
            let v: i64 = part.parse().ok()?;
            if !(0..=99).contains(&v) {
                return None;
            }
            seconds += v * [3600, 60, 1].get(i)?;
        }
        (time, sign * seconds)
    } else {
        (rest, 0)
    };
    let micros = parse_time(time)?;
    let value = days
        .checked_mul(86_400_000_000)?
        .checked_add(micros)?
        .checked_sub(offset_seconds * 1_000_000)?;
    (min..=max).contains(&value).then_some(value)
}

/// An array literal's structure: a leaf element (None for NULL) or a
/// sub-array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArrayNode {
    Item(Option<String>),
    List(Vec<ArrayNode>),
}

/// An array literal (`{1,NULL,"a b"}`, `{{1,2},{3,4}}`, optionally with a
/// `[lo:hi]...=` bounds prefix, which is dropped) → its nested structure.
/// None when it is not a well-formed literal with `,` as delimiter.
pub fn parse_array(text: &str) -> Option<ArrayNode> {
    let body = match text.find("={") {
        Some(i) if text.starts_with('[') => &text[i + 1..],
        _ => text,
    };
    let bytes = body.as_bytes();
    let mut at = 0;
    let node = parse_list(bytes, &mut at, 0)?;
    (at == bytes.len()).then_some(node)
}

/// Nesting deeper than Postgres allows (MAXDIM = 6) is malformed.
const MAX_DIMS: usize = 6;

fn parse_list(bytes: &[u8], at: &mut usize, depth: usize) -> Option<ArrayNode> {
    if depth >= MAX_DIMS || bytes.get(*at) != Some(&b'{') {
        return None;
    }
    *at += 1;
    let mut items = Vec::new();
    if bytes.get(*at) == Some(&b'}') {
        *at += 1;
        return Some(ArrayNode::List(items));
    }
    loop {
        match *bytes.get(*at)? {
            b'{' => items.push(parse_list(bytes, at, depth + 1)?),
            b'"' => {
                let mut item = Vec::new();
                *at += 1;
                loop {
                    match *bytes.get(*at)? {
                        b'"' => break,
                        b'\\' => {
                            item.push(*bytes.get(*at + 1)?);
                            *at += 2;
                        }
                        b => {
                            item.push(b);
                            *at += 1;
                        }
                    }
                }
                *at += 1;
                items.push(ArrayNode::Item(Some(String::from_utf8(item).ok()?)));
            }
            _ => {
                let rest = &bytes[*at..];
                let len = rest.iter().position(|&b| b == b',' || b == b'}')?;
                let item = std::str::from_utf8(&rest[..len]).ok()?;
                if item.contains(['{', '"']) {
                    return None;
                }
                items.push(ArrayNode::Item(if item.eq_ignore_ascii_case("NULL") {
                    None
                } else {
                    Some(item.to_string())
                }));
                *at += len;
            }
        }
        match *bytes.get(*at)? {
            b',' => *at += 1,
            b'}' => {
                *at += 1;
                return Some(ArrayNode::List(items));
            }
            _ => return None,
        }
    }
}

/// An array value into a column of list type `ty` (`List` nested once per
/// declared dimension): the value's dimensions must be the column's.
fn array_datum(ty: &ColumnType, node: ArrayNode, text: &str) -> Result<Datum, ValueError> {
    match (ty, node) {
        (ColumnType::List(element), ArrayNode::List(children)) => {
            let mut out = Vec::with_capacity(children.len());
            for child in children {
                out.push(array_datum(element, child, text)?);
            }
            Ok(Datum::List(out))
        }
        (ColumnType::List(_), ArrayNode::Item(_)) => Err(bad(
            "an array with as many dimensions as the column declares",
            text,
        )),
        (_, ArrayNode::Item(None)) => Ok(Datum::Null),
        (element, ArrayNode::Item(Some(item))) => parse(element, &item),
        (_, ArrayNode::List(_)) => Err(bad(
            "an array with as many dimensions as the column declares",
            text,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_scale_exactly() {
        let ty = ColumnType::Decimal {
            precision: 12,
            scale: 2,
        };
        assert_eq!(parse(&ty, "-1.5").unwrap(), Datum::Decimal128(-150));
        assert_eq!(parse(&ty, "12345.67").unwrap(), Datum::Decimal128(1234567));
        assert_eq!(parse(&ty, "0.00").unwrap(), Datum::Decimal128(0));
        assert!(parse(&ty, "NaN").is_err());
        assert!(parse(&ty, "1.234").is_err(), "never rounds");
        let wide = ColumnType::Decimal {
            precision: 50,
            scale: 1,
        };
        assert_eq!(
            parse(&wide, "123456789012345678901234567890123456789012.5").unwrap(),
            Datum::Decimal256(
                i256::from_string("1234567890123456789012345678901234567890125").unwrap()
            )
        );
    }

    #[test]
    fn dates_and_timestamps() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11017));
        assert_eq!(parse_date("0001-01-01 BC"), Some(-719_528));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("infinity"), Some(date_range_days().1));
        assert_eq!(
            parse_date("5874897-12-31"),
            None,
            "beyond the lake's range: refused"
        );
        assert_eq!(
            parse_timestamp("1970-01-02 00:00:01.5", false),
            Some(86_401_500_000)
        );
        assert_eq!(parse_timestamp("1970-01-01 05:30:00+05:30", true), Some(0));
        assert_eq!(
            parse_timestamp("1969-12-31 23:59:59.999999+00", true),
            Some(-1)
        );
        assert_eq!(parse_time("24:00:00"), Some(86_400_000_000));
        assert_eq!(parse_time("12:00:00.000001"), Some(43_200_000_001));
    }

    #[test]
    fn bytea_both_formats() {
        assert_eq!(parse_bytea("\\x00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(parse_bytea("a\\\\b\\000"), Some(vec![b'a', b'\\', b'b', 0]));
        assert_eq!(parse_bytea("\\x0"), None);
    }

    fn items(items: &[Option<&str>]) -> ArrayNode {
        ArrayNode::List(
            items
                .iter()
                .map(|i| ArrayNode::Item(i.map(str::to_string)))
                .collect(),
        )
    }

    #[test]
    fn arrays() {
        assert_eq!(
            parse_array(r#"{1,NULL,"a,b","q\"x",null}"#),
            Some(items(&[Some("1"), None, Some("a,b"), Some("q\"x"), None]))
        );
        assert_eq!(parse_array("{}"), Some(items(&[])));
        assert_eq!(
            parse_array("[0:1]={7,8}"),
            Some(items(&[Some("7"), Some("8")]))
        );
        assert_eq!(
            parse_array("{{1,2},{3,NULL}}"),
            Some(ArrayNode::List(vec![
                items(&[Some("1"), Some("2")]),
                items(&[Some("3"), None])
            ]))
        );
        assert_eq!(parse_array(r#"{"NULL"}"#), Some(items(&[Some("NULL")])));
        for bad in [
            "{1,2",
            "{1}}",
            "{{{{{{{1}}}}}}}",
            "{a\"b}",
            "1,2",
            "{1,{2}x}",
        ] {
            assert_eq!(parse_array(bad), None, "{bad}");
        }
        let int2d = ColumnType::List(Box::new(ColumnType::List(Box::new(ColumnType::Int32))));
        assert_eq!(
            parse(&int2d, "{{1,2},{3,NULL}}").unwrap(),
            Datum::List(vec![
                Datum::List(vec![Datum::Int32(1), Datum::Int32(2)]),
                Datum::List(vec![Datum::Int32(3), Datum::Null]),
            ])
        );
        assert_eq!(parse(&int2d, "{}").unwrap(), Datum::List(vec![]));
        assert!(parse(&int2d, "{1,2}").is_err());
        let int1d = ColumnType::List(Box::new(ColumnType::Int32));
        assert!(parse(&int1d, "{{1,2}}").is_err());
        // The error states the bound the value has and the rule.
        let err = parse(&int1d, "[0:1]={7,8}").unwrap_err().to_string();
        assert!(
            err.contains("an array with lower bound 0 in dimension 1")
                && err.contains("every lower bound is 1")
                && !err.contains("7,8"),
            "{err}"
        );
        let err = parse(&int2d, "[1:1][-2:-1]={{7,8}}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lower bound -2 in dimension 2"), "{err}");
    }

    #[test]
    fn uuid_and_floats() {
        assert_eq!(
            parse(&ColumnType::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap(),
            Datum::Uuid([
                0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
                0x0a, 0x11
            ])
        );
        assert!(
            matches!(parse(&ColumnType::Float64, "NaN").unwrap(), Datum::Float64(v) if v.is_nan())
        );
        assert_eq!(
            parse(&ColumnType::Float64, "-Infinity").unwrap(),
            Datum::Float64(f64::NEG_INFINITY)
        );
    }

    /// Random text for every type parses or fails, never panics.
    #[test]
    fn random_text_never_panics() {
        let types = [
            ColumnType::Bool,
            ColumnType::Int16,
            ColumnType::Float64,
            ColumnType::Decimal {
                precision: 10,
                scale: 3,
            },
            ColumnType::Decimal {
                precision: 60,
                scale: 3,
            },
            ColumnType::Binary,
            ColumnType::Date,
            ColumnType::Timestamp,
            ColumnType::TimestampTz,
            ColumnType::Time,
            ColumnType::Uuid,
            ColumnType::List(Box::new(ColumnType::Int32)),
            ColumnType::List(Box::new(ColumnType::Text)),
        ];
        let alphabet = b"0123456789-+:.,{}\"\\ xBCinfyNaLU=[]abcdef";
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let text: String = (0..len)
                .map(|i| alphabet[((state >> (i % 50)) as usize + i * 7) % alphabet.len()] as char)
                .collect();
            for ty in &types {
                let _ = parse(ty, &text);
            }
        }
        for text in [
            "9223372036854775807-12-31",
            "2024-01-01 9223372036854775807:00:00",
            "2024-01-01 00:00:00+9223372036854775807",
            "99999999999-12-31",
            "2024-01-01 99:99:99",
            "-",
            "1e400",
            "{",
            "\\x",
            "24:00:00.000001",
        ] {
            for ty in &types {
                let _ = parse(ty, text);
            }
        }
    }
}
