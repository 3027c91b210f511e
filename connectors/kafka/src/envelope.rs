//! Debezium's change event envelope, written from tidewater's Arrow batches.
//!
//! ```text
//!  ChangeBatch (source columns + _tw_* metadata)
//!     │ per row, in mark order
//!     ▼
//!  key   {"id":1}                                   (primary key, as Debezium keys it)
//!  value {"before":…,"after":…,"source":{…},"transaction":null,
//!         "op":"c|u|d|r|t","ts_ms":…,"ts_us":…,"ts_ns":…}
//!  delete ─▶ the event, then a tombstone (same key, null value)
//!     │ format = "debezium-json-schema": each wrapped as
//!     ▼ {"schema":{Kafka Connect schema},"payload":…}
//! ```
//!
//! Values are encoded as Debezium's default converters encode them for the
//! same source type, so a consumer written against Debezium's topics reads
//! these unchanged: `decimal.handling.mode=precise` (Connect `Decimal`,
//! big-endian two's complement bytes, base64 in JSON), `time.precision.mode`
//! adaptive (PostgreSQL) / `adaptive_time_microseconds` (MySQL),
//! `binary.handling.mode=bytes`. One documented mode differs from Debezium's
//! default, on purpose: MySQL `BIGINT UNSIGNED` is written as
//! `bigint.unsigned.handling.mode=precise` would (a `Decimal` of scale 0),
//! because the default `long` turns values above 2^63-1 into negative numbers.
//! Each encoding is chosen once per table version ([`TableEncoder`]) from the
//! column's tidewater type and its source type name.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Decimal256Type, DurationMicrosecondType, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Int8Type, Time64MicrosecondType, TimestampMicrosecondType,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use base64::Engine as _;
use tidewater_core::{ColumnType, TableSchema};

/// What Debezium writes for a value Postgres did not resend (an unchanged
/// TOAST column) when no earlier image of the row is at hand: its default
/// `unavailable.value.placeholder`.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// The message format of a Kafka sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Kafka Connect's JsonConverter with `schemas.enable=false`.
    Json,
    /// Kafka Connect's JsonConverter with `schemas.enable=true`: every key
    /// and value carries its schema (what the JDBC sink connector needs).
    JsonWithSchema,
}

/// Which Debezium connector's events these look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    Postgres,
    Mysql,
}

impl Connector {
    fn name(self) -> &'static str {
        match self {
            Connector::Postgres => "postgresql",
            Connector::Mysql => "mysql",
        }
    }
}

/// What every event's `source` block names besides the row's own position.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub connector: Connector,
    /// `source.name`: the topic prefix, as Debezium's `topic.prefix`.
    pub name: String,
    /// `source.db` of a Postgres source (its database); a MySQL event names
    /// the table's database there.
    pub database: String,
    /// `source.server_id` of a MySQL event: the server's `server_id` when
    /// known, else 0.
    pub server_id: i64,
}

/// How one column's values are written, and the Connect schema that says so.
#[derive(Debug, Clone, PartialEq)]
enum Enc {
    Bool,
    /// A `tinyint(1)` that tidewater reads as a boolean: Debezium writes 0/1.
    BoolAsInt16,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// Connect `Decimal`: unscaled big-endian two's complement bytes.
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// An unsigned 64-bit integer as a `Decimal` of scale 0.
    UnsignedDecimal,
    /// `io.debezium.data.VariableScaleDecimal` from exact decimal text.
    VariableDecimal,
    /// A string, with the semantic type name Debezium gives it.
    Str(Option<&'static str>, Option<String>),
    Bytes,
    /// MySQL `BIT(n)`, n > 1: `io.debezium.data.Bits`, little-endian bytes.
    Bits(u32),
    /// MySQL `SET(…)` (a list of members to tidewater): the members joined
    /// by commas, `io.debezium.data.EnumSet`.
    SetMembers(String),
    /// Days since the epoch (`io.debezium.time.Date`).
    Date,
    /// Milliseconds since the epoch (`io.debezium.time.Timestamp`).
    TimestampMillis,
    /// Microseconds since the epoch (`io.debezium.time.MicroTimestamp`).
    MicroTimestamp,
    /// ISO-8601 text in UTC (`io.debezium.time.ZonedTimestamp`) with this
    /// many fraction digits (Postgres: always 6; MySQL: the column's).
    ZonedTimestamp(u32),
    /// Postgres `timetz` text as ISO-8601 time in UTC (`io.debezium.time.ZonedTime`).
    ZonedTime,
    /// Postgres `interval` text as microseconds (`io.debezium.time.MicroDuration`).
    MicroDuration,
    /// Postgres `money` text as a `Decimal` of scale 2.
    Money,
    /// Postgres `bit(n)`/`varbit` text as `io.debezium.data.Bits`.
    BitText(u32),
    /// Postgres `point` text as `io.debezium.data.geometry.Point`.
    Point,
    /// A Postgres array of a type tidewater keeps as text (`inet[]`): its
    /// array literal as an array of strings.
    TextArray,
    /// Milliseconds since midnight (`io.debezium.time.Time`).
    TimeMillis,
    /// Microseconds since midnight or signed elapsed (`io.debezium.time.MicroTime`).
    MicroTime,
    /// `io.debezium.time.Year`.
    Year,
    Array(Box<Enc>),
}

/// The precision written in a source type name such as `timestamp(3)` or
/// `datetime(6)`, if any.
fn precision_of(source_type: &str) -> Option<u32> {
    let open = source_type.find('(')?;
    let close = source_type[open..].find(')')? + open;
    source_type[open + 1..close].trim().parse().ok()
}

fn encoding(ty: &ColumnType, source_type: &str, connector: Connector) -> Enc {
    let lower = source_type.to_ascii_lowercase();
    let fraction = precision_of(&lower);
    match connector {
        Connector::Postgres => match ty {
            ColumnType::Bool => Enc::Bool,
            ColumnType::Int8 | ColumnType::Int16 | ColumnType::UInt8 => Enc::Int16,
            ColumnType::Int32 | ColumnType::UInt16 => Enc::Int32,
            ColumnType::Int64 | ColumnType::UInt32 => Enc::Int64,
            ColumnType::UInt64 => Enc::UnsignedDecimal,
            ColumnType::Float32 => Enc::Float32,
            ColumnType::Float64 => Enc::Float64,
            ColumnType::Decimal { precision, scale } => Enc::Decimal {
                precision: *precision,
                scale: *scale,
            },
            ColumnType::Text if lower == "numeric" || lower == "numeric[]" => Enc::VariableDecimal,
            ColumnType::Text if lower == "xml" => Enc::Str(Some("io.debezium.data.Xml"), None),
            ColumnType::Text if lower == "money" => Enc::Money,
            ColumnType::Text if lower == "interval" || lower.starts_with("interval(") => {
                Enc::MicroDuration
            }
            ColumnType::Text if lower.starts_with("time with time zone") || lower == "timetz" => {
                Enc::ZonedTime
            }
            ColumnType::Text if lower.starts_with("bit(") || lower.starts_with("bit varying") => {
                Enc::BitText(fraction.unwrap_or(1))
            }
            ColumnType::Text if lower == "point" => Enc::Point,
            ColumnType::Text if lower == "tsvector" => {
                Enc::Str(Some("io.debezium.data.Tsvector"), None)
            }
            ColumnType::Text if lower.ends_with("[]") => Enc::TextArray,
            ColumnType::Text => Enc::Str(None, None),
            ColumnType::Json => Enc::Str(Some("io.debezium.data.Json"), None),
            ColumnType::Uuid => Enc::Str(Some("io.debezium.data.Uuid"), None),
            ColumnType::Binary => Enc::Bytes,
            ColumnType::Date => Enc::Date,
            ColumnType::Timestamp if fraction.is_some_and(|p| p <= 3) => Enc::TimestampMillis,
            ColumnType::Timestamp => Enc::MicroTimestamp,
            ColumnType::TimestampTz => Enc::ZonedTimestamp(6),
            ColumnType::Time if fraction.is_some_and(|p| p <= 3) => Enc::TimeMillis,
            ColumnType::Time | ColumnType::Duration => Enc::MicroTime,
            ColumnType::List(inner) => {
                let element = lower.trim_end_matches("[]").to_string();
                Enc::Array(Box::new(encoding(inner, &element, connector)))
            }
        },
        Connector::Mysql => match ty {
            _ if lower.starts_with("year") => Enc::Year,
            ColumnType::UInt64 | ColumnType::Binary if lower.starts_with("bit") => {
                match fraction.unwrap_or(1) {
                    1 => Enc::Bool,
                    n => Enc::Bits(n),
                }
            }
            ColumnType::List(_) if lower.starts_with("set(") => {
                Enc::SetMembers(allowed_values(source_type))
            }
            ColumnType::Bool if lower.starts_with("bit") => Enc::Bool,
            ColumnType::Bool => Enc::BoolAsInt16,
            ColumnType::Int8 | ColumnType::Int16 | ColumnType::UInt8 => Enc::Int16,
            ColumnType::UInt16 => Enc::Int32,
            ColumnType::Int32 => Enc::Int32,
            ColumnType::UInt32 if lower.starts_with("mediumint") => Enc::Int32,
            ColumnType::UInt32 | ColumnType::Int64 => Enc::Int64,
            ColumnType::UInt64 => Enc::UnsignedDecimal,
            ColumnType::Float32 => Enc::Float32,
            ColumnType::Float64 => Enc::Float64,
            ColumnType::Decimal { precision, scale } => Enc::Decimal {
                precision: *precision,
                scale: *scale,
            },
            ColumnType::Text if lower.starts_with("enum(") => Enc::Str(
                Some("io.debezium.data.Enum"),
                Some(allowed_values(source_type)),
            ),
            ColumnType::Text if lower.starts_with("set(") => Enc::Str(
                Some("io.debezium.data.EnumSet"),
                Some(allowed_values(source_type)),
            ),
            // MariaDB's JSON is LONGTEXT with a check: Debezium names it
            // nothing.
            ColumnType::Text | ColumnType::Json | ColumnType::Uuid => Enc::Str(None, None),
            ColumnType::Binary if lower.starts_with("bit") => Enc::Bits(fraction.unwrap_or(1)),
            ColumnType::Binary => Enc::Bytes,
            ColumnType::Date => Enc::Date,
            ColumnType::Timestamp if fraction.unwrap_or(0) <= 3 => Enc::TimestampMillis,
            ColumnType::Timestamp => Enc::MicroTimestamp,
            ColumnType::TimestampTz => Enc::ZonedTimestamp(fraction.unwrap_or(0).min(6)),
            ColumnType::Time | ColumnType::Duration => Enc::MicroTime,
            ColumnType::List(inner) => Enc::Array(Box::new(encoding(inner, "", connector))),
        },
    }
}

/// `a,b` from `enum('a','b')` (Debezium's `allowed` parameter).
fn allowed_values(source_type: &str) -> String {
    let inner = source_type
        .find('(')
        .and_then(|open| {
            source_type
                .rfind(')')
                .map(|close| &source_type[open + 1..close])
        })
        .unwrap_or("");
    let mut values = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if quoted && chars.peek() == Some(&'\'') => {
                current.push('\'');
                chars.next();
            }
            '\'' => quoted = !quoted,
            ',' if !quoted => values.push(std::mem::take(&mut current)),
            c if quoted => current.push(c),
            _ => {}
        }
    }
    values.push(current);
    values.join(",")
}

impl Enc {
    /// The Connect schema of this encoding, without `field`/`optional`.
    fn schema(&self, out: &mut String) {
        let named = |out: &mut String, ty: &str, name: &str| {
            let _ = write!(out, "\"type\":\"{ty}\",\"name\":\"{name}\",\"version\":1");
        };
        match self {
            Enc::Bool => out.push_str("\"type\":\"boolean\""),
            Enc::BoolAsInt16 | Enc::Int16 => out.push_str("\"type\":\"int16\""),
            Enc::Int32 => out.push_str("\"type\":\"int32\""),
            Enc::Int64 => out.push_str("\"type\":\"int64\""),
            Enc::Float32 => out.push_str("\"type\":\"float\""),
            Enc::Float64 => out.push_str("\"type\":\"double\""),
            Enc::Decimal { precision, scale } => {
                let _ = write!(
                    out,
                    "\"type\":\"bytes\",\"name\":\"org.apache.kafka.connect.data.Decimal\",\"version\":1,\
                     \"parameters\":{{\"scale\":\"{scale}\",\"connect.decimal.precision\":\"{precision}\"}}"
                );
            }
            Enc::UnsignedDecimal => out.push_str(
                "\"type\":\"bytes\",\"name\":\"org.apache.kafka.connect.data.Decimal\",\"version\":1,\
                 \"parameters\":{\"scale\":\"0\",\"connect.decimal.precision\":\"20\"}",
            ),
            Enc::VariableDecimal => out.push_str(
                "\"type\":\"struct\",\"fields\":[{\"type\":\"int32\",\"optional\":false,\"field\":\"scale\"},\
                 {\"type\":\"bytes\",\"optional\":false,\"field\":\"value\"}],\
                 \"name\":\"io.debezium.data.VariableScaleDecimal\",\"version\":1,\
                 \"doc\":\"Variable scaled decimal\"",
            ),
            Enc::Str(None, _) => out.push_str("\"type\":\"string\""),
            Enc::Str(Some(name), allowed) => {
                named(out, "string", name);
                if let Some(allowed) = allowed {
                    out.push_str(",\"parameters\":{\"allowed\":");
                    push_json_str(out, allowed);
                    out.push('}');
                }
            }
            Enc::Bytes => out.push_str("\"type\":\"bytes\""),
            Enc::SetMembers(allowed) => {
                named(out, "string", "io.debezium.data.EnumSet");
                out.push_str(",\"parameters\":{\"allowed\":");
                push_json_str(out, allowed);
                out.push('}');
            }
            Enc::Bits(length) => {
                named(out, "bytes", "io.debezium.data.Bits");
                let _ = write!(out, ",\"parameters\":{{\"length\":\"{length}\"}}");
            }
            Enc::Date => named(out, "int32", "io.debezium.time.Date"),
            Enc::TimestampMillis => named(out, "int64", "io.debezium.time.Timestamp"),
            Enc::MicroTimestamp => named(out, "int64", "io.debezium.time.MicroTimestamp"),
            Enc::ZonedTimestamp(_) => named(out, "string", "io.debezium.time.ZonedTimestamp"),
            Enc::ZonedTime => named(out, "string", "io.debezium.time.ZonedTime"),
            Enc::MicroDuration => named(out, "int64", "io.debezium.time.MicroDuration"),
            Enc::Money => out.push_str(
                "\"type\":\"bytes\",\"name\":\"org.apache.kafka.connect.data.Decimal\",\"version\":1,\
                 \"parameters\":{\"scale\":\"2\"}",
            ),
            Enc::BitText(length) => {
                named(out, "bytes", "io.debezium.data.Bits");
                let _ = write!(out, ",\"parameters\":{{\"length\":\"{length}\"}}");
            }
            Enc::TextArray => out.push_str(
                "\"type\":\"array\",\"items\":{\"type\":\"string\",\"optional\":true}",
            ),
            Enc::Point => out.push_str(
                "\"type\":\"struct\",\"fields\":[{\"type\":\"double\",\"optional\":false,\"field\":\"x\"},\
                 {\"type\":\"double\",\"optional\":false,\"field\":\"y\"},\
                 {\"type\":\"bytes\",\"optional\":true,\"field\":\"wkb\"},\
                 {\"type\":\"int32\",\"optional\":true,\"field\":\"srid\"}],\
                 \"name\":\"io.debezium.data.geometry.Point\",\"version\":1,\
                 \"doc\":\"Geometry (POINT)\"",
            ),
            Enc::TimeMillis => named(out, "int32", "io.debezium.time.Time"),
            Enc::MicroTime => named(out, "int64", "io.debezium.time.MicroTime"),
            Enc::Year => named(out, "int32", "io.debezium.time.Year"),
            Enc::Array(inner) => {
                out.push_str("\"type\":\"array\",\"items\":{");
                inner.schema(out);
                out.push_str(",\"optional\":true}");
            }
        }
    }
}

fn push_json_str(out: &mut String, text: &str) {
    out.push_str(&serde_json::to_string(text).expect("a string always serializes"));
}

fn write_json_str(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(&mut *out, text).expect("writing to a Vec never fails");
}

fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    let start = out.len();
    out.resize(start + bytes.len().div_ceil(3) * 4, 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(bytes, &mut out[start..])
        .expect("sized for the encoding");
    out.truncate(start + written);
    out.push(b'"');
}

/// The shortest big-endian two's complement bytes of `value`, as Java's
/// `BigInteger.toByteArray` writes them (Connect's `Decimal`).
fn twos_complement(bytes: &[u8]) -> &[u8] {
    let negative = bytes[0] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0x00 };
    let mut start = 0;
    while start + 1 < bytes.len()
        && bytes[start] == fill
        && (bytes[start + 1] & 0x80 != 0) == negative
    {
        start += 1;
    }
    &bytes[start..]
}

/// Java's `BigInteger.toByteArray` of the (unsigned) decimal digit string
/// `digits`, negated when `negative`.
fn big_integer_bytes(digits: &str, negative: bool) -> Vec<u8> {
    // Magnitude as big-endian bytes, by repeated multiply-add.
    let mut magnitude: Vec<u8> = vec![0];
    for d in digits.bytes().filter(u8::is_ascii_digit) {
        let mut carry = u32::from(d - b'0');
        for byte in magnitude.iter_mut().rev() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            magnitude.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    // A sign byte, then two's complement when negative.
    magnitude.insert(0, 0);
    if negative {
        for byte in magnitude.iter_mut() {
            *byte = !*byte;
        }
        for byte in magnitude.iter_mut().rev() {
            let (v, overflow) = byte.overflowing_add(1);
            *byte = v;
            if !overflow {
                break;
            }
        }
    }
    twos_complement(&magnitude).to_vec()
}

/// ISO-8601 text of `micros` since the epoch in UTC with `digits` fraction
/// digits, as Debezium writes a `ZonedTimestamp` (`2024-01-02T03:04:05.120000Z`
/// for Postgres, the column's precision for MySQL).
fn zoned_timestamp(micros: i64, digits: u32) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000) as u32;
    let Some(at) = chrono::DateTime::from_timestamp(secs, frac * 1000) else {
        return micros.to_string();
    };
    let mut text = at.format("%Y-%m-%dT%H:%M:%S").to_string();
    if digits > 0 {
        let all = format!("{frac:06}");
        text.push('.');
        text.push_str(&all[..digits.min(6) as usize]);
    }
    text.push('Z');
    text
}

/// Postgres `timetz` text (`10:11:12.345+05:30`) as UTC time, as Java's
/// `ISO_OFFSET_TIME` writes it (`04:41:12.345Z`).
fn zoned_time(text: &str) -> Option<String> {
    let split = text.rfind(['+', '-'])?;
    let (time, offset) = text.split_at(split);
    let sign: i64 = if offset.starts_with('-') { -1 } else { 1 };
    let mut parts = offset[1..].split(':');
    let oh: i64 = parts.next()?.parse().ok()?;
    let om: i64 = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    let os: i64 = parts.next().map_or(Some(0), |s| s.parse().ok())?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = hms.split(':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next()?.parse().ok()?;
    let s: i64 = hms.next().map_or(Some(0), |s| s.parse().ok())?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let local = h * 3600 + m * 60 + s;
    let utc = (local - sign * (oh * 3600 + om * 60 + os)).rem_euclid(86_400);
    let mut out = format!("{:02}:{:02}:{:02}", utc / 3600, utc / 60 % 60, utc % 60);
    let frac = frac.trim_end_matches('0');
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out.push('Z');
    Some(out)
}

/// Postgres `interval` text (IntervalStyle `postgres`: `1 year 2 mons 3 days
/// 04:05:06.789`) as microseconds, as Debezium's `MicroDuration` counts them
/// (a month is 30.4375 days, a year 12 months).
fn interval_micros(text: &str) -> Option<i64> {
    let (mut months, mut days, mut seconds) = (0f64, 0f64, 0f64);
    let mut words = text.split_whitespace().peekable();
    while let Some(word) = words.next() {
        if word.contains(':') {
            let (negative, body) = match word.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, word.strip_prefix('+').unwrap_or(word)),
            };
            let mut parts = body.split(':');
            let h: f64 = parts.next()?.parse().ok()?;
            let m: f64 = parts.next()?.parse().ok()?;
            let s: f64 = parts.next().map_or(Some(0.0), |s| s.parse().ok())?;
            let total = h * 3600.0 + m * 60.0 + s;
            seconds += if negative { -total } else { total };
            continue;
        }
        let amount: f64 = word.parse().ok()?;
        let unit = words.next()?;
        match unit.trim_end_matches('s') {
            "year" => months += amount * 12.0,
            "mon" => months += amount,
            "day" => days += amount,
            _ => return None,
        }
    }
    let all_days = months * 30.4375 + days;
    Some(((all_days * 24.0 * 3600.0 + seconds) * 1e6) as i64)
}

/// Postgres bit-string text (`101`) as Java's `BitSet.toByteArray`: bit 0
/// is the last character, little-endian bytes, no high zero bytes.
fn bit_string(text: &str) -> Option<Vec<u8>> {
    let mut bytes = vec![0u8; text.len().div_ceil(8)];
    for (i, c) in text.bytes().rev().enumerate() {
        match c {
            b'1' => bytes[i / 8] |= 1 << (i % 8),
            b'0' => {}
            _ => return None,
        }
    }
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    Some(bytes)
}

/// The elements of a one-dimensional Postgres array literal
/// (`{a,"b c",NULL}`); None for anything else (several dimensions, bounds).
fn array_literal(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.is_empty() {
        return Some(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let item = if chars.peek() == Some(&'"') {
            chars.next();
            let mut item = String::new();
            loop {
                match chars.next()? {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
            Some(item)
        } else {
            let mut item = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if matches!(c, '{' | '}' | '"') {
                    return None;
                }
                item.push(c);
                chars.next();
            }
            (item != "NULL").then_some(item)
        };
        items.push(item);
        match chars.next() {
            None => return Some(items),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// (x, y) of Postgres `point` text `(1.5,-2)`.
fn point(text: &str) -> Option<(f64, f64)> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (x, y) = inner.split_once(',')?;
    Some((x.trim().parse().ok()?, y.trim().parse().ok()?))
}

/// Debezium's `Point` struct: x, y, the point as little-endian WKB, no SRID.
fn write_point(out: &mut Vec<u8>, x: f64, y: f64) {
    let mut wkb = vec![1u8, 1, 0, 0, 0];
    wkb.extend_from_slice(&x.to_le_bytes());
    wkb.extend_from_slice(&y.to_le_bytes());
    out.extend_from_slice(b"{\"x\":");
    write_float(out, x, x);
    out.extend_from_slice(b",\"y\":");
    write_float(out, y, y);
    out.extend_from_slice(b",\"wkb\":");
    write_base64(out, &wkb);
    out.extend_from_slice(b",\"srid\":null}");
}

fn write_float(out: &mut Vec<u8>, value: f64, text: impl std::fmt::Debug) {
    if value.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if value.is_infinite() {
        out.extend_from_slice(if value > 0.0 {
            b"\"Infinity\""
        } else {
            b"\"-Infinity\""
        });
    } else {
        let _ = write!(out, "{text:?}");
    }
}

/// An integer from any integer array.
fn integer(array: &dyn Array, row: usize) -> Option<i128> {
    Some(match array.data_type() {
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).into(),
        DataType::Date32 => array.as_primitive::<Date32Type>().value(row).into(),
        DataType::Timestamp(_, _) => array
            .as_primitive::<TimestampMicrosecondType>()
            .value(row)
            .into(),
        DataType::Time64(_) => array
            .as_primitive::<Time64MicrosecondType>()
            .value(row)
            .into(),
        DataType::Duration(_) => array
            .as_primitive::<DurationMicrosecondType>()
            .value(row)
            .into(),
        DataType::Boolean => i128::from(array.as_boolean().value(row)),
        _ => return None,
    })
}

/// Writes the value at `row` of `array` as `enc` says (`null` for a null).
fn write_value(out: &mut Vec<u8>, enc: &Enc, array: &dyn Array, row: usize) {
    if array.is_null(row) {
        out.extend_from_slice(b"null");
        return;
    }
    match enc {
        Enc::Bool => {
            let truth = match array.data_type() {
                DataType::Boolean => array.as_boolean().value(row),
                _ => integer(array, row).unwrap_or(0) != 0,
            };
            out.extend_from_slice(if truth { b"true" } else { b"false" });
        }
        Enc::BoolAsInt16
        | Enc::Int16
        | Enc::Int32
        | Enc::Int64
        | Enc::Date
        | Enc::MicroTimestamp
        | Enc::MicroTime
        | Enc::Year => match integer(array, row) {
            Some(v) => {
                let _ = write!(out, "{v}");
            }
            None => write_text(out, array, row),
        },
        Enc::TimestampMillis | Enc::TimeMillis => match integer(array, row) {
            Some(v) => {
                let _ = write!(out, "{}", v.div_euclid(1000));
            }
            None => write_text(out, array, row),
        },
        Enc::Float32 => match array.data_type() {
            DataType::Float32 => {
                let v = array.as_primitive::<Float32Type>().value(row);
                write_float(out, f64::from(v), v);
            }
            _ => write_text(out, array, row),
        },
        Enc::Float64 => match array.data_type() {
            DataType::Float64 => {
                let v = array.as_primitive::<Float64Type>().value(row);
                write_float(out, v, v);
            }
            DataType::Float32 => {
                let v = array.as_primitive::<Float32Type>().value(row);
                write_float(out, f64::from(v), f64::from(v));
            }
            _ => write_text(out, array, row),
        },
        Enc::Decimal { .. } | Enc::UnsignedDecimal => match array.data_type() {
            DataType::Decimal128(_, _) => {
                let v = array.as_primitive::<Decimal128Type>().value(row);
                write_base64(out, twos_complement(&v.to_be_bytes()));
            }
            DataType::Decimal256(_, _) => {
                let v = array.as_primitive::<Decimal256Type>().value(row);
                write_base64(out, twos_complement(&v.to_be_bytes()));
            }
            _ => match integer(array, row) {
                Some(v) => write_base64(out, twos_complement(&v.to_be_bytes())),
                None => write_text(out, array, row),
            },
        },
        Enc::VariableDecimal => match array.data_type() {
            DataType::Utf8 => write_variable_decimal(out, array.as_string::<i32>().value(row)),
            _ => write_text(out, array, row),
        },
        Enc::Str(..) => write_text(out, array, row),
        Enc::Bytes => match array.data_type() {
            DataType::Binary => write_base64(out, array.as_binary::<i32>().value(row)),
            DataType::FixedSizeBinary(_) => {
                write_base64(out, array.as_fixed_size_binary().value(row))
            }
            _ => write_text(out, array, row),
        },
        Enc::Bits(length) => {
            // Debezium writes MySQL's BIT(n) as its ceil(n/8) bytes,
            // little-endian (MySQL sends them big-endian).
            let width = length.div_ceil(8) as usize;
            let mut bytes = match array.data_type() {
                DataType::Binary => {
                    let mut b = array.as_binary::<i32>().value(row).to_vec();
                    b.reverse();
                    b
                }
                _ => match integer(array, row) {
                    Some(v) => (v as u64).to_le_bytes().to_vec(),
                    None => return write_text(out, array, row),
                },
            };
            bytes.resize(width.max(1), 0);
            write_base64(out, &bytes);
        }
        Enc::SetMembers(_) => match array.data_type() {
            DataType::List(_) => {
                let list = array.as_list::<i32>();
                let members = list.value(row);
                let mut joined = String::new();
                if let Some(strings) = members.as_string_opt::<i32>() {
                    for (i, m) in strings.iter().flatten().enumerate() {
                        if i > 0 {
                            joined.push(',');
                        }
                        joined.push_str(m);
                    }
                }
                write_json_str(out, &joined);
            }
            _ => write_text(out, array, row),
        },
        Enc::ZonedTimestamp(digits) => match integer(array, row) {
            Some(v) => write_json_str(out, &zoned_timestamp(v as i64, *digits)),
            None => write_text(out, array, row),
        },
        Enc::ZonedTime
        | Enc::MicroDuration
        | Enc::Money
        | Enc::BitText(_)
        | Enc::Point
        | Enc::TextArray => {
            let DataType::Utf8 = array.data_type() else {
                return write_text(out, array, row);
            };
            let text = array.as_string::<i32>().value(row);
            let written = match enc {
                Enc::ZonedTime => zoned_time(text).map(|t| write_json_str(out, &t)),
                Enc::MicroDuration => interval_micros(text).map(|v| {
                    let _ = write!(out, "{v}");
                }),
                Enc::Money => {
                    let plain: String = text
                        .chars()
                        .filter(|c| c.is_ascii_digit() || matches!(c, '-' | '.'))
                        .collect();
                    tidewater_core::decimal::scaled_digits(&plain, 2).map(|digits| {
                        let negative = digits.starts_with('-');
                        write_base64(out, &big_integer_bytes(&digits, negative));
                    })
                }
                Enc::BitText(_) => bit_string(text).map(|b| write_base64(out, &b)),
                Enc::TextArray => array_literal(text).map(|items| {
                    out.push(b'[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        match item {
                            Some(item) => write_json_str(out, item),
                            None => out.extend_from_slice(b"null"),
                        }
                    }
                    out.push(b']');
                }),
                _ => point(text).map(|(x, y)| write_point(out, x, y)),
            };
            if written.is_none() {
                write_json_str(out, text);
            }
        }
        Enc::Array(inner) => match array.data_type() {
            DataType::List(_) => {
                let list = array.as_list::<i32>();
                let values = list.value(row);
                out.push(b'[');
                for i in 0..values.len() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_value(out, inner, values.as_ref(), i);
                }
                out.push(b']');
            }
            _ => write_text(out, array, row),
        },
    }
}

/// `{"scale":s,"value":"<base64>"}` of exact decimal text; null for the
/// values a `BigDecimal` cannot hold (NaN, infinities), as Debezium writes.
fn write_variable_decimal(out: &mut Vec<u8>, text: &str) {
    let text = text.trim();
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        out.extend_from_slice(b"null");
        return;
    }
    let scale = unsigned.find('.').map_or(0, |dot| unsigned.len() - dot - 1);
    let bytes = big_integer_bytes(unsigned, negative);
    let _ = write!(out, "{{\"scale\":{scale},\"value\":");
    write_base64(out, &bytes);
    out.push(b'}');
}

/// The value as text, whatever its array (strings as they are; UUIDs in
/// their canonical form; anything else through Arrow's display).
fn write_text(out: &mut Vec<u8>, array: &dyn Array, row: usize) {
    match array.data_type() {
        DataType::Utf8 => write_json_str(out, array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => write_json_str(out, array.as_string::<i64>().value(row)),
        DataType::Utf8View => write_json_str(out, array.as_string_view().value(row)),
        DataType::FixedSizeBinary(16) => {
            let b = array.as_fixed_size_binary().value(row);
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            write_json_str(
                out,
                &format!(
                    "{}-{}-{}-{}-{}",
                    &hex[0..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..32]
                ),
            );
        }
        _ => {
            let text = arrow_cast_display(array, row);
            write_json_str(out, &text);
        }
    }
}

fn arrow_cast_display(array: &dyn Array, row: usize) -> String {
    match integer(array, row) {
        Some(v) => v.to_string(),
        None => format!("{:?}", array.slice(row, 1)),
    }
}

/// Where one row's event comes from in the source, as `source` says it.
pub struct RowSource<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    pub snapshot: &'a str,
    pub commit_ts_us: i64,
    pub position: &'a str,
    pub txid: Option<&'a str>,
}

/// Everything needed to write one table version's events: the encodings
/// and, for the schema-carrying format, the schemas written once.
pub struct TableEncoder {
    pub schema: Arc<TableSchema>,
    format: Format,
    source: SourceInfo,
    columns: Vec<Enc>,
    key_columns: Vec<usize>,
    /// `"<column>":` of each column, escaped once.
    names: Vec<Vec<u8>>,
    /// `{"schema":…,"payload":` of keys and values (schema format only).
    key_prefix: String,
    value_prefix: String,
}

impl TableEncoder {
    pub fn new(schema: Arc<TableSchema>, format: Format, source: SourceInfo) -> TableEncoder {
        let columns: Vec<Enc> = schema
            .columns
            .iter()
            .map(|c| encoding(&c.ty, &c.source_type, source.connector))
            .collect();
        let key_columns: Vec<usize> = schema
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        let names = schema
            .columns
            .iter()
            .map(|c| {
                let mut name = serde_json::to_vec(&c.name).expect("a string serializes");
                name.push(b':');
                name
            })
            .collect();
        let mut encoder = TableEncoder {
            names,
            schema,
            format,
            source,
            columns,
            key_columns,
            key_prefix: String::new(),
            value_prefix: String::new(),
        };
        if format == Format::JsonWithSchema {
            encoder.key_prefix = format!("{{\"schema\":{},\"payload\":", encoder.key_schema());
            encoder.value_prefix = format!("{{\"schema\":{},\"payload\":", encoder.value_schema());
        }
        encoder
    }

    /// Debezium's name for the table's records: `<prefix>.<schema>.<table>`.
    fn record_name(&self) -> String {
        format!(
            "{}.{}.{}",
            self.source.name, self.schema.table.schema, self.schema.table.table
        )
    }

    fn fields_schema(&self, out: &mut String, indexes: &[usize], key: bool) {
        out.push('[');
        for (n, &i) in indexes.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push('{');
            self.columns[i].schema(out);
            let _ = write!(out, ",\"optional\":{},\"field\":", !key);
            push_json_str(out, &self.schema.columns[i].name);
            out.push('}');
        }
        out.push(']');
    }

    fn key_schema(&self) -> String {
        let mut out = String::from("{\"type\":\"struct\",\"fields\":");
        self.fields_schema(&mut out, &self.key_columns, true);
        out.push_str(",\"optional\":false,\"name\":");
        push_json_str(&mut out, &format!("{}.Key", self.record_name()));
        out.push('}');
        out
    }

    fn value_schema(&self) -> String {
        let all: Vec<usize> = (0..self.columns.len()).collect();
        let mut row = String::from("{\"type\":\"struct\",\"fields\":");
        // Key columns are NOT NULL at the source; others may be null.
        row.push('[');
        for (n, &i) in all.iter().enumerate() {
            if n > 0 {
                row.push(',');
            }
            row.push('{');
            self.columns[i].schema(&mut row);
            let _ = write!(
                row,
                ",\"optional\":{},\"field\":",
                !self.schema.columns[i].key
            );
            push_json_str(&mut row, &self.schema.columns[i].name);
            row.push('}');
        }
        row.push_str("],\"optional\":true,\"name\":");
        push_json_str(&mut row, &format!("{}.Value", self.record_name()));
        // The fields both connectors' `source` blocks begin with.
        const COMMON: &str = "{\"type\":\"string\",\"optional\":false,\"field\":\"version\"},\
             {\"type\":\"string\",\"optional\":false,\"field\":\"connector\"},\
             {\"type\":\"string\",\"optional\":false,\"field\":\"name\"},\
             {\"type\":\"int64\",\"optional\":false,\"field\":\"ts_ms\"},\
             {\"type\":\"string\",\"optional\":true,\"name\":\"io.debezium.data.Enum\",\"version\":1,\
               \"parameters\":{\"allowed\":\"true,first,first_in_data_collection,last_in_data_collection,last,false,incremental\"},\
               \"default\":\"false\",\"field\":\"snapshot\"},\
             {\"type\":\"string\",\"optional\":false,\"field\":\"db\"},\
             {\"type\":\"string\",\"optional\":true,\"field\":\"sequence\"},\
             {\"type\":\"int64\",\"optional\":true,\"field\":\"ts_us\"},\
             {\"type\":\"int64\",\"optional\":true,\"field\":\"ts_ns\"},";
        let (own, name) = match self.source.connector {
            Connector::Postgres => (
                "{\"type\":\"string\",\"optional\":false,\"field\":\"schema\"},\
                 {\"type\":\"string\",\"optional\":false,\"field\":\"table\"},\
                 {\"type\":\"int64\",\"optional\":true,\"field\":\"txId\"},\
                 {\"type\":\"int64\",\"optional\":true,\"field\":\"lsn\"},\
                 {\"type\":\"int64\",\"optional\":true,\"field\":\"xmin\"},\
                 {\"type\":\"string\",\"optional\":true,\"field\":\"origin\"},\
                 {\"type\":\"int64\",\"optional\":true,\"field\":\"origin_lsn\"}",
                "postgresql",
            ),
            Connector::Mysql => (
                "{\"type\":\"string\",\"optional\":true,\"field\":\"table\"},\
                 {\"type\":\"int64\",\"optional\":false,\"field\":\"server_id\"},\
                 {\"type\":\"string\",\"optional\":true,\"field\":\"gtid\"},\
                 {\"type\":\"string\",\"optional\":false,\"field\":\"file\"},\
                 {\"type\":\"int64\",\"optional\":false,\"field\":\"pos\"},\
                 {\"type\":\"int32\",\"optional\":false,\"field\":\"row\"},\
                 {\"type\":\"int64\",\"optional\":true,\"field\":\"thread\"},\
                 {\"type\":\"string\",\"optional\":true,\"field\":\"query\"}",
                "mysql",
            ),
        };
        let source = format!(
            "{{\"type\":\"struct\",\"fields\":[{COMMON}{own}],\"optional\":false,\
             \"name\":\"io.debezium.connector.{name}.Source\",\"version\":1,\"field\":\"source\"}}"
        );
        let mut out = String::from("{\"type\":\"struct\",\"fields\":[");
        let _ = write!(
            out,
            "{row},\"field\":\"before\"}},{row},\"field\":\"after\"}},{source},"
        );
        out.push_str(
            "{\"type\":\"struct\",\"fields\":[\
             {\"type\":\"string\",\"optional\":false,\"field\":\"id\"},\
             {\"type\":\"int64\",\"optional\":false,\"field\":\"total_order\"},\
             {\"type\":\"int64\",\"optional\":false,\"field\":\"data_collection_order\"}],\
             \"optional\":true,\"name\":\"event.block\",\"version\":1,\"field\":\"transaction\"},\
             {\"type\":\"string\",\"optional\":false,\"field\":\"op\"},\
             {\"type\":\"int64\",\"optional\":true,\"field\":\"ts_ms\"},\
             {\"type\":\"int64\",\"optional\":true,\"field\":\"ts_us\"},\
             {\"type\":\"int64\",\"optional\":true,\"field\":\"ts_ns\"}],\
             \"optional\":false,\"name\":",
        );
        push_json_str(&mut out, &format!("{}.Envelope", self.record_name()));
        out.push_str(",\"version\":2}");
        out
    }

    /// True when the table has a key (Debezium keys only those events).
    pub fn has_key(&self) -> bool {
        !self.key_columns.is_empty()
    }

    /// The key of `row` of `columns` (the batch's source columns), or None
    /// for a table without a key.
    pub fn key(&self, columns: &[ArrayRef], row: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.key_prefix.len() + 32);
        self.key_into(&mut out, columns, row).then_some(out)
    }

    /// Writes the key of `row` into `out` (cleared first); false for a
    /// table without a key.
    pub fn key_into(&self, out: &mut Vec<u8>, columns: &[ArrayRef], row: usize) -> bool {
        out.clear();
        if self.key_columns.is_empty() {
            return false;
        }
        out.extend_from_slice(self.key_prefix.as_bytes());
        out.push(b'{');
        for (n, &i) in self.key_columns.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.names[i]);
            write_value(out, &self.columns[i], columns[i].as_ref(), row);
        }
        out.push(b'}');
        if self.format == Format::JsonWithSchema {
            out.push(b'}');
        }
        true
    }

    fn write_row(&self, out: &mut Vec<u8>, columns: &[ArrayRef], row: usize) {
        out.push(b'{');
        for (i, enc) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.names[i]);
            match columns.get(i) {
                Some(array) => write_value(out, enc, array.as_ref(), row),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
    }

    /// The `source` block of events at `at` (the same for every row of a
    /// transaction and table: callers keep it while those last).
    pub fn source_block(&self, at: &RowSource<'_>) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_source(&mut out, at);
        out
    }

    fn write_source(&self, out: &mut Vec<u8>, at: &RowSource<'_>) {
        let ts_ms = at.commit_ts_us.div_euclid(1000);
        out.extend_from_slice(b"{\"version\":");
        write_json_str(out, concat!("tidewater-", env!("CARGO_PKG_VERSION")));
        let _ = write!(
            out,
            ",\"connector\":\"{}\",\"name\":",
            self.source.connector.name()
        );
        write_json_str(out, &self.source.name);
        let _ = write!(out, ",\"ts_ms\":{ts_ms},\"snapshot\":");
        write_json_str(out, at.snapshot);
        out.extend_from_slice(b",\"db\":");
        match self.source.connector {
            Connector::Postgres => {
                write_json_str(out, &self.source.database);
                let lsn = parse_lsn(at.position);
                out.extend_from_slice(b",\"sequence\":");
                match lsn {
                    Some(lsn) => write_json_str(out, &format!("[null,\"{lsn}\"]")),
                    None => out.extend_from_slice(b"null"),
                }
                let _ = write!(
                    out,
                    ",\"ts_us\":{},\"ts_ns\":{},\"schema\":",
                    at.commit_ts_us,
                    i128::from(at.commit_ts_us) * 1000
                );
                write_json_str(out, at.schema);
                out.extend_from_slice(b",\"table\":");
                write_json_str(out, at.table);
                out.extend_from_slice(b",\"txId\":");
                match at.txid.and_then(|t| t.parse::<i64>().ok()) {
                    Some(t) => {
                        let _ = write!(out, "{t}");
                    }
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"lsn\":");
                match lsn {
                    Some(lsn) => {
                        let _ = write!(out, "{lsn}");
                    }
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"xmin\":null,\"origin\":null,\"origin_lsn\":null}");
            }
            Connector::Mysql => {
                write_json_str(out, at.schema);
                let _ = write!(
                    out,
                    ",\"sequence\":null,\"ts_us\":{},\"ts_ns\":{},\"table\":",
                    at.commit_ts_us,
                    i128::from(at.commit_ts_us) * 1000
                );
                write_json_str(out, at.table);
                let (file, pos, gtid) = parse_binlog(at.position);
                let _ = write!(out, ",\"server_id\":{},\"gtid\":", self.source.server_id);
                match gtid {
                    Some(g) => write_json_str(out, g),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"file\":");
                write_json_str(out, file);
                let _ = write!(
                    out,
                    ",\"pos\":{pos},\"row\":0,\"thread\":null,\"query\":null}}"
                );
            }
        }
    }

    /// The value of one event: `before`/`after` from `row` as `op` puts
    /// them. `now_us` is when the event was made (`ts_ms` and its kin).
    pub fn value(
        &self,
        op: &str,
        columns: &[ArrayRef],
        row: usize,
        at: &RowSource<'_>,
        now_us: i64,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.value_prefix.len() + 256 + 32 * self.columns.len());
        self.value_into(&mut out, op, columns, row, &self.source_block(at), now_us);
        out
    }

    /// Writes the value of one event into `out` (cleared first), with the
    /// `source` block `source` ([`Self::source_block`]).
    pub fn value_into(
        &self,
        out: &mut Vec<u8>,
        op: &str,
        columns: &[ArrayRef],
        row: usize,
        source: &[u8],
        now_us: i64,
    ) {
        out.clear();
        out.extend_from_slice(self.value_prefix.as_bytes());
        out.extend_from_slice(b"{\"before\":");
        match op {
            "d" => self.write_row(out, columns, row),
            _ => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"after\":");
        match op {
            "c" | "u" | "r" => self.write_row(out, columns, row),
            _ => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"source\":");
        out.extend_from_slice(source);
        let _ = write!(
            out,
            ",\"transaction\":null,\"op\":\"{op}\",\"ts_ms\":{},\"ts_us\":{now_us},\"ts_ns\":{}}}",
            now_us.div_euclid(1000),
            i128::from(now_us) * 1000
        );
        if self.format == Format::JsonWithSchema {
            out.push(b'}');
        }
    }
}

/// The LSN of a Postgres position (`16/B374D848`) as a number.
fn parse_lsn(position: &str) -> Option<u64> {
    let (high, low) = position.trim().split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    Some(high << 32 | low)
}

/// (file, offset, gtid) of a binlog position (`binlog.000003:4711 gtid=0-1-57`).
fn parse_binlog(position: &str) -> (&str, u64, Option<&str>) {
    let (place, gtid) = match position.split_once(" gtid=") {
        Some((place, gtid)) => (place, Some(gtid)),
        None => (position, None),
    };
    match place.rsplit_once(':') {
        Some((file, offset)) => (file, offset.parse().unwrap_or(0), gtid),
        None => (place, 0, gtid),
    }
}

/// The source columns of `batch` (everything before the metadata columns).
pub fn source_columns(batch: &RecordBatch, schema: &TableSchema) -> Vec<ArrayRef> {
    batch.columns()[..schema.columns.len().min(batch.num_columns())].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        let mut out = Vec::new();
        write_base64(&mut out, bytes);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn decimals_are_javas_big_integer_bytes() {
        // BigInteger.valueOf(x).toByteArray() for a few x.
        let cases: [(i128, &[u8]); 6] = [
            (0, &[0]),
            (1, &[1]),
            (127, &[0x7f]),
            (128, &[0x00, 0x80]),
            (-1, &[0xff]),
            (-129, &[0xff, 0x7f]),
        ];
        for (value, bytes) in cases {
            assert_eq!(twos_complement(&value.to_be_bytes()), bytes, "{value}");
            let digits = value.unsigned_abs().to_string();
            assert_eq!(big_integer_bytes(&digits, value < 0), bytes, "{value}");
        }
        // 12345.67 at scale 2 → unscaled 1234567 → 0x12D687
        assert_eq!(b64(twos_complement(&1234567i128.to_be_bytes())), "\"EtaH\"");
    }

    #[test]
    fn variable_scale_decimals_keep_their_scale() {
        let mut out = Vec::new();
        write_variable_decimal(&mut out, "-12.340");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "{{\"scale\":3,\"value\":{}}}",
                b64(&big_integer_bytes("12340", true))
            )
        );
        let mut out = Vec::new();
        write_variable_decimal(&mut out, "NaN");
        assert_eq!(out, b"null");
    }

    #[test]
    fn times_are_written_as_debezium_writes_them() {
        assert_eq!(zoned_timestamp(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(zoned_timestamp(1_500_000, 6), "1970-01-01T00:00:01.500000Z");
        assert_eq!(zoned_timestamp(-1, 6), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            zoned_time("10:11:12.345+05:30").as_deref(),
            Some("04:41:12.345Z")
        );
        assert_eq!(zoned_time("08:00:00+00").as_deref(), Some("08:00:00Z"));
        assert_eq!(zoned_time("01:00:00-02").as_deref(), Some("03:00:00Z"));
        // Debezium's figure for 1 year 2 mons 3 days 04:05:06.789
        assert_eq!(
            interval_micros("1 year 2 mons 3 days 04:05:06.789"),
            Some(37_091_106_789_000)
        );
        assert_eq!(interval_micros("-00:00:01.5"), Some(-1_500_000));
        assert_eq!(interval_micros("1 day"), Some(86_400_000_000));
        assert_eq!(interval_micros("P1D"), None);
    }

    #[test]
    fn array_literals_become_arrays_of_strings() {
        assert_eq!(
            array_literal(r#"{10.0.0.1,NULL,"a \"b\"",""}"#),
            Some(vec![
                Some("10.0.0.1".into()),
                None,
                Some("a \"b\"".into()),
                Some(String::new())
            ])
        );
        assert_eq!(array_literal("{}"), Some(vec![]));
        assert_eq!(array_literal("{{1,2},{3,4}}"), None);
    }

    #[test]
    fn bits_and_points_match_debeziums_bytes() {
        assert_eq!(b64(&bit_string("101").unwrap()), "\"BQ==\"");
        assert_eq!(b64(&bit_string("000").unwrap()), "\"\"");
        assert_eq!(b64(&bit_string("1010101011").unwrap()), "\"qwI=\"");
        let mut out = Vec::new();
        write_point(&mut out, 1.5, -2.0);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"x\":1.5,\"y\":-2.0,\"wkb\":\"AQEAAAAAAAAAAAD4PwAAAAAAAADA\",\"srid\":null}"
        );
    }

    #[test]
    fn positions_fill_the_source_block() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("nonsense"), None);
        assert_eq!(
            parse_binlog("binlog.000003:4711 gtid=0-1-57"),
            ("binlog.000003", 4711, Some("0-1-57"))
        );
        assert_eq!(allowed_values("enum('a','b''c')"), "a,b'c");
    }
}
