//! WRITE/UPDATE/DELETE_ROWS events → tidewater row changes.
//!
//! This is the hot path of the MySQL source. A rows event carries only packed
//! values; their layout comes from the TABLE_MAP before it. So the work is split
//! in two:
//!
//! * [`plan`] runs once per table map. It resolves every column into a
//!   `ValueOp` (a width, a charset decoder, ENUM labels, a decimal layout…),
//!   the tidewater [`Column`] and the `source_type` text, and refuses what we
//!   cannot decode losslessly (unknown charsets, missing names).
//! * [`decode_rows`] runs per event and only dispatches on the precomputed ops:
//!   no lookups, no allocation besides each row's `Vec<Datum>` and its string
//!   and byte values.
//! * [`decode_rows_columnar`] (in [`crate::columnar`]) runs the same ops but
//!   appends each value straight to Arrow column buffers, for the batcher.
//!
//! ```text
//!  rows event body
//!  +----------+-------+---------------------+-----------+----------------------+
//!  | table_id | flags | v2: extra_len 2     | ncols     | present bitmap       |
//!  |    6     |   2   |     + extra data    | (lenenc)  | ⌈ncols/8⌉ (LSB first)|
//!  +----------+-------+---------------------+-----------+----------------------+
//!  | UPDATE only: after-image present bitmap ⌈ncols/8⌉                         |
//!  +---------------------------------------------------------------------------+
//!  | row*:  null bitmap ⌈present/8⌉ | value of each present non-null column    |
//!  |        UPDATE rows are pairs:  before image, after image                   |
//!  +---------------------------------------------------------------------------+
//!   MariaDB compressed variants (166–171): everything after the bitmaps is
//!   `0x80|n, uncompressed length (n bytes BE), zlib stream`.
//! ```
//!
//! Values are little-endian except the "2" temporal types (DATETIME2,
//! TIMESTAMP2, TIME2), BIT and DECIMAL, which are big-endian so they sort as
//! bytes. Inserts and deletes emit their one image; updates emit the after
//! image, and the before image is only walked for its length and its key
//! values. An update that changes the primary key (a key column's value bytes
//! differ between the images; NULL differs from any value) first emits its
//! before image as a delete: the lake keeps the last image per key, so the old
//! key must go. A missing column in an emitted image (`binlog_row_image`
//! MINIMAL or NOBLOB) is an error, never a NULL: a NULL we made up would
//! overwrite real data in the lake. So is a key column missing from an update's
//! before image, since we could not tell whether the key changed.
//!
//! Zero and partially zero dates (`0000-00-00`, `2020-00-05`), dates that do not
//! exist (`2021-02-30` under ALLOW_INVALID_DATES) and the zero TIMESTAMP become
//! NULL, counted in [`DecodeStats::zero_dates`] so the source can report them.
//! Year 0 with a real month and day (`0000-01-01`) is a date like any other.
//!
//! MariaDB tables still in the 5.3 temporal format have table maps that say
//! DATETIME/TIME/TIMESTAMP with no metadata even when the column has
//! fractional seconds; only the catalog knows the width, so the caller passes
//! [`Special::TemporalPrecision`]. MariaDB's UUID, INET6 and INET4 arrive as
//! BINARY(16)/BINARY(4) with trailing zero bytes stripped; UUIDs are in RFC
//! byte order (checked against MariaDB 10.11, see the fixtures).
//!
//! GEOMETRY values are stored by the server as a 4-byte little-endian SRID and
//! WKB. We emit plain WKB when the SRID is 0 and EWKB otherwise (the PostGIS
//! extension: flag `0x20000000` set in the top-level geometry type, in the WKB's
//! byte order, and the SRID written right after it), so the SRID is not lost.

use std::borrow::Cow;
use std::net::Ipv4Addr;
use std::sync::Arc;

use arrow_buffer::i256;
use tidewater_core::{Column, ColumnType, Datum, Op};

use crate::charset::{max_bytes_per_char, Charset};
pub use crate::columnar::{decode_rows_columnar, ColumnarRows};
use crate::event::{be_uint, le_uint, mariadb_uncompress, Cursor, DecodeError};
use crate::json::decode_binary_json;
use crate::tablemap::{column_type as ct, MapColumn, TableMap};

/// What a rows event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsKind {
    Write,
    Update,
    Delete,
}

/// Rows event layout: v2 (MySQL 5.6+) adds the extra-data block to the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsVersion {
    V1,
    V2,
}

/// The rows events [`decode_rows`] understands: `(kind, version, compressed)`.
///
/// v1: 23/24/25, v2: 30/31/32, MariaDB `log_bin_compress`: 166/167/168 (v1
/// layout; what MariaDB 10.11 writes, see the fixture) and 169/170/171 (v2
/// layout, per MariaDB's `log_event.h`; MariaDB writes v1 rows by default). Returns `None` for every other type,
/// including MySQL PARTIAL_UPDATE_ROWS (39) and the pre-GA v0 events (20–22):
/// route every type for which [`is_rows_event`] is true to [`decode_rows`],
/// which reports those as [`DecodeError::Unsupported`] instead of letting them
/// be skipped silently.
pub fn rows_kind(event_type: u8) -> Option<(RowsKind, RowsVersion, bool)> {
    use RowsKind::*;
    use RowsVersion::*;
    Some(match event_type {
        23 => (Write, V1, false),
        24 => (Update, V1, false),
        25 => (Delete, V1, false),
        30 => (Write, V2, false),
        31 => (Update, V2, false),
        32 => (Delete, V2, false),
        166 => (Write, V1, true),
        167 => (Update, V1, true),
        168 => (Delete, V1, true),
        169 => (Write, V2, true),
        170 => (Update, V2, true),
        171 => (Delete, V2, true),
        _ => return None,
    })
}

/// True for every event type that carries row changes, including the ones we
/// refuse (v0 rows 20–22, MySQL PARTIAL_UPDATE_ROWS 39).
pub fn is_rows_event(event_type: u8) -> bool {
    rows_kind(event_type).is_some() || matches!(event_type, 20..=22 | 39)
}

/// A type the table map cannot express, learned from `information_schema`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// MariaDB `UUID` (or a BINARY(16) the user declares a UUID).
    Uuid,
    /// MariaDB `INET6`.
    Inet6,
    /// MariaDB `INET4`.
    Inet4,
    /// MariaDB `JSON` (a LONGTEXT with a check constraint).
    Json,
    /// A DATETIME, TIME or TIMESTAMP column with `fsp` fractional digits
    /// (`information_schema.COLUMNS.DATETIME_PRECISION`). Needed for MariaDB
    /// tables in the 5.3 temporal format (created with
    /// `mysql56_temporal_format = OFF`, or before MariaDB 10.1, and never
    /// rebuilt): their table map says DATETIME/TIME/TIMESTAMP (12/11/7) with no
    /// metadata, so the width of the value is only known from the catalog.
    /// Harmless on columns in the MySQL 5.6 format (DATETIME2 and friends),
    /// whose table map carries the precision itself; pass it for every temporal
    /// column with `fsp > 0`.
    TemporalPrecision { fsp: u8 },
}

/// Per-column knowledge from `information_schema` that the table map lacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnOverride {
    pub special: Option<Special>,
    /// Replaces the derived `source_type` text (e.g. `uuid`, `inet6`).
    pub source_type: Option<String>,
}

/// What happened while decoding that the caller should report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Zero, partially zero or impossible dates/timestamps emitted as NULL.
    pub zero_dates: u64,
}

/// MySQL's binary DECIMAL layout: digits in groups of nine per 4 bytes, with
/// a shorter leading integer group and trailing fraction group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DecimalLayout {
    pub(crate) precision: u8,
    pub(crate) scale: u8,
    lead_digits: u8,
    int_groups: u8,
    frac_groups: u8,
    trail_digits: u8,
    pub(crate) size: u8,
}

/// Bytes needed for 0–9 decimal digits.
const DIGIT_BYTES: [u8; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];
const POW10_U32: [u32; 10] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];

impl DecimalLayout {
    pub(crate) fn new(precision: u8, scale: u8) -> Option<Self> {
        if precision == 0 || precision > 65 || scale > 30 || scale > precision {
            return None;
        }
        let intg = precision - scale;
        let l = DecimalLayout {
            precision,
            scale,
            lead_digits: intg % 9,
            int_groups: intg / 9,
            frac_groups: scale / 9,
            trail_digits: scale % 9,
            size: 0,
        };
        let size = DIGIT_BYTES[l.lead_digits as usize]
            + l.int_groups * 4
            + l.frac_groups * 4
            + DIGIT_BYTES[l.trail_digits as usize];
        Some(DecimalLayout { size, ..l })
    }

    /// The unscaled value; `bytes` must be exactly `size` long.
    pub(crate) fn decode(&self, bytes: &[u8]) -> Result<Datum, &'static str> {
        let mut buf = [0u8; 32];
        let buf = &mut buf[..bytes.len()];
        buf.copy_from_slice(bytes);
        // The sign bit is set for positive numbers; negatives are stored with
        // every byte inverted.
        let negative = buf[0] & 0x80 == 0;
        buf[0] ^= 0x80;
        if negative {
            buf.iter_mut().for_each(|b| *b = !*b);
        }
        let mut groups = [(0u32, 0u8); 9];
        let mut n = 0;
        let mut pos = 0;
        let mut push = |digits: u8, pos: &mut usize| -> Result<(), &'static str> {
            let width = DIGIT_BYTES[digits as usize] as usize;
            let v = be_uint(&buf[*pos..*pos + width]) as u32;
            if v >= POW10_U32[digits as usize] {
                return Err("decimal digit group out of range");
            }
            groups[n] = (v, digits);
            n += 1;
            *pos += width;
            Ok(())
        };
        if self.lead_digits > 0 {
            push(self.lead_digits, &mut pos)?;
        }
        for _ in 0..self.int_groups + self.frac_groups {
            push(9, &mut pos)?;
        }
        if self.trail_digits > 0 {
            push(self.trail_digits, &mut pos)?;
        }
        let groups = &groups[..n];
        if self.precision <= 38 {
            let mut acc: i128 = 0;
            for &(v, digits) in groups {
                acc = acc * i128::from(POW10_U32[digits as usize]) + i128::from(v);
            }
            Ok(Datum::Decimal128(if negative { -acc } else { acc }))
        } else {
            let mut acc = i256::ZERO;
            for &(v, digits) in groups {
                acc = acc
                    .wrapping_mul(i256::from_i128(i128::from(POW10_U32[digits as usize])))
                    .wrapping_add(i256::from_i128(i128::from(v)));
            }
            Ok(Datum::Decimal256(if negative {
                acc.wrapping_neg()
            } else {
                acc
            }))
        }
    }
}

/// How to decode one column's value. Built once per table map.
#[derive(Debug, Clone)]
pub(crate) enum ValueOp {
    I8,
    U8,
    I16,
    U16,
    I24,
    U24,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
    Decimal(DecimalLayout),
    Bit {
        bytes: u8,
    },
    Year,
    Date,
    Datetime2 {
        fsp: u8,
    },
    Timestamp2 {
        fsp: u8,
    },
    Time2 {
        fsp: u8,
    },
    DatetimeOld,
    TimestampOld,
    TimeOld,
    /// MariaDB 5.3 formats with fractional seconds, see
    /// [`Special::TemporalPrecision`].
    DatetimeHires {
        fsp: u8,
    },
    TimestampHires {
        fsp: u8,
    },
    TimeHires {
        fsp: u8,
    },
    Text {
        len_bytes: u8,
        charset: Charset,
    },
    /// Binary strings; fixed BINARY(n) comes without its trailing zero bytes
    /// and is padded back to `pad_to`.
    Bytes {
        len_bytes: u8,
        pad_to: u16,
    },
    Enum {
        len_bytes: u8,
        labels: Arc<[String]>,
    },
    Set {
        len_bytes: u8,
        labels: Arc<[String]>,
    },
    JsonBinary {
        len_bytes: u8,
    },
    JsonText {
        len_bytes: u8,
    },
    Geometry {
        len_bytes: u8,
    },
    Uuid {
        len_bytes: u8,
    },
    Inet6 {
        len_bytes: u8,
    },
    Inet4 {
        len_bytes: u8,
    },
}

impl ValueOp {
    /// Width of fixed-size values.
    #[inline]
    fn fixed_len(&self) -> Option<usize> {
        use ValueOp::*;
        Some(match self {
            I8 | U8 | Year => 1,
            I16 | U16 => 2,
            I24 | U24 | Date | TimeOld => 3,
            I32 | U32 | F32 | TimestampOld => 4,
            I64 | U64 | F64 | DatetimeOld => 8,
            Decimal(l) => l.size as usize,
            Bit { bytes } => *bytes as usize,
            Datetime2 { fsp } => 5 + fsp_bytes(*fsp),
            Timestamp2 { fsp } => 4 + fsp_bytes(*fsp),
            Time2 { fsp } => 3 + fsp_bytes(*fsp),
            DatetimeHires { fsp } => [5, 6, 6, 7, 7, 7, 8][*fsp as usize],
            TimestampHires { fsp } => 4 + fsp_bytes(*fsp),
            TimeHires { fsp } => [3, 4, 4, 5, 5, 5, 6][*fsp as usize],
            Enum { len_bytes, .. } | Set { len_bytes, .. } => *len_bytes as usize,
            _ => return None,
        })
    }

    /// Width of the length prefix of variable-size values.
    #[inline]
    fn len_bytes(&self) -> usize {
        use ValueOp::*;
        match self {
            Text { len_bytes, .. }
            | Bytes { len_bytes, .. }
            | JsonBinary { len_bytes }
            | JsonText { len_bytes }
            | Geometry { len_bytes }
            | Uuid { len_bytes }
            | Inet6 { len_bytes }
            | Inet4 { len_bytes } => *len_bytes as usize,
            _ => 0,
        }
    }
}

#[inline]
fn fsp_bytes(fsp: u8) -> usize {
    (fsp as usize).div_ceil(2)
}

/// A table map resolved for decoding. Cheap to share; build a new one for
/// every TABLE_MAP event (they repeat before each transaction's rows).
#[derive(Debug, Clone)]
pub struct RowPlan {
    table_id: u64,
    pub(crate) columns: Vec<Column>,
    pub(crate) ops: Vec<ValueOp>,
    /// Indexes of the primary-key columns (`Column::key`), ascending.
    keys: Vec<usize>,
}

impl RowPlan {
    /// The table's columns in tidewater terms, in table-map order.
    pub fn columns(&self) -> Vec<Column> {
        self.columns.clone()
    }

    pub fn table_id(&self) -> u64 {
        self.table_id
    }
}

/// Resolves a table map into a [`RowPlan`]. `overrides[i]` refines column `i`
/// (may be shorter than the column list); `charsets` maps a collation id to the
/// server's charset name.
pub fn plan(
    map: &TableMap,
    overrides: &[ColumnOverride],
    charsets: &dyn Fn(u32) -> Option<String>,
) -> Result<RowPlan, DecodeError> {
    let table = format!("{}.{}", map.schema, map.table);
    let mut columns = Vec::with_capacity(map.columns.len());
    let mut ops = Vec::with_capacity(map.columns.len());
    for (i, col) in map.columns.iter().enumerate() {
        let name = col
            .name
            .clone()
            .ok_or_else(|| DecodeError::MissingMetadata {
                table: table.clone(),
                what: "column names",
            })?;
        let ov = overrides.get(i);
        let (op, ty, source_type) = column_plan(col, &name, ov.and_then(|o| o.special), charsets)?;
        columns.push(Column {
            name,
            ty,
            source_type: ov
                .and_then(|o| o.source_type.clone())
                .unwrap_or(source_type),
            key: col.primary_key,
        });
        ops.push(op);
    }
    let keys = (0..columns.len()).filter(|&i| columns[i].key).collect();
    Ok(RowPlan {
        table_id: map.table_id,
        columns,
        ops,
        keys,
    })
}

fn unsigned_suffix(base: &str, unsigned: bool) -> String {
    if unsigned {
        format!("{base} unsigned")
    } else {
        base.to_owned()
    }
}

fn with_fsp(base: &str, fsp: u16) -> String {
    if fsp == 0 {
        base.to_owned()
    } else {
        format!("{base}({fsp})")
    }
}

fn blob_len_bytes(col: &MapColumn, name: &str) -> Result<u8, DecodeError> {
    match col.meta {
        1..=4 => Ok(col.meta as u8),
        _ => Err(DecodeError::UnsupportedColumn {
            column: name.to_owned(),
            type_code: col.type_code,
            reason: "length prefix size must be 1 to 4",
        }),
    }
}

/// The column's charset, and the most bytes one of its characters takes.
fn column_charset(
    col: &MapColumn,
    name: &str,
    charsets: &dyn Fn(u32) -> Option<String>,
) -> Result<(Charset, u16), DecodeError> {
    let collation = col.collation.ok_or_else(|| DecodeError::UnknownCharset {
        column: name.to_owned(),
        collation: 0,
        charset: None,
    })?;
    let charset_name = charsets(collation);
    charset_name
        .as_deref()
        .and_then(|n| Charset::from_server_name(n).map(|c| (c, max_bytes_per_char(n))))
        .ok_or_else(|| DecodeError::UnknownCharset {
            column: name.to_owned(),
            collation,
            charset: charset_name.clone(),
        })
}

/// `enum('a','b')` / `set('a','b')`, the labels quoted as the server's
/// `COLUMN_TYPE` quotes them (a quote doubled).
fn with_labels(base: &str, labels: &[String]) -> String {
    let quoted: Vec<String> = labels
        .iter()
        .map(|l| format!("'{}'", l.replace('\'', "''")))
        .collect();
    format!("{base}({})", quoted.join(","))
}

fn column_plan(
    col: &MapColumn,
    name: &str,
    special: Option<Special>,
    charsets: &dyn Fn(u32) -> Option<String>,
) -> Result<(ValueOp, ColumnType, String), DecodeError> {
    let unsupported = |reason| DecodeError::UnsupportedColumn {
        column: name.to_owned(),
        type_code: col.type_code,
        reason,
    };
    let fits_special = match special {
        None => true,
        Some(Special::Json) => matches!(
            col.type_code,
            ct::JSON | ct::BLOB | ct::VARCHAR | ct::VAR_STRING | ct::STRING
        ),
        Some(Special::TemporalPrecision { fsp }) => {
            fsp <= 6
                && matches!(
                    col.type_code,
                    ct::DATETIME
                        | ct::TIME
                        | ct::TIMESTAMP
                        | ct::DATETIME2
                        | ct::TIME2
                        | ct::TIMESTAMP2
                )
        }
        Some(_) => matches!(col.type_code, ct::STRING | ct::VARCHAR | ct::VAR_STRING),
    };
    let legacy_fsp = match special {
        Some(Special::TemporalPrecision { fsp }) if fsp > 0 => fsp,
        _ => 0,
    };
    if !fits_special {
        return Err(unsupported("override does not fit the binlog column"));
    }
    let u = col.unsigned;
    let int = |signed: (ValueOp, ColumnType), unsigned: (ValueOp, ColumnType), base: &str| {
        let (op, ty) = if u { unsigned } else { signed };
        (op, ty, unsigned_suffix(base, u))
    };
    Ok(match col.type_code {
        ct::TINY => int(
            (ValueOp::I8, ColumnType::Int8),
            (ValueOp::U8, ColumnType::UInt8),
            "tinyint",
        ),
        ct::SHORT => int(
            (ValueOp::I16, ColumnType::Int16),
            (ValueOp::U16, ColumnType::UInt16),
            "smallint",
        ),
        ct::INT24 => int(
            (ValueOp::I24, ColumnType::Int32),
            (ValueOp::U24, ColumnType::UInt32),
            "mediumint",
        ),
        ct::LONG => int(
            (ValueOp::I32, ColumnType::Int32),
            (ValueOp::U32, ColumnType::UInt32),
            "int",
        ),
        ct::LONGLONG => int(
            (ValueOp::I64, ColumnType::Int64),
            (ValueOp::U64, ColumnType::UInt64),
            "bigint",
        ),
        ct::FLOAT => (
            ValueOp::F32,
            ColumnType::Float32,
            unsigned_suffix("float", u),
        ),
        ct::DOUBLE => (
            ValueOp::F64,
            ColumnType::Float64,
            unsigned_suffix("double", u),
        ),
        ct::NEWDECIMAL => {
            let (precision, scale) = ((col.meta >> 8) as u8, (col.meta & 0xff) as u8);
            let layout = DecimalLayout::new(precision, scale)
                .ok_or_else(|| unsupported("decimal precision/scale out of range"))?;
            (
                ValueOp::Decimal(layout),
                ColumnType::Decimal {
                    precision,
                    scale: scale as i8,
                },
                unsigned_suffix(&format!("decimal({precision},{scale})"), u),
            )
        }
        ct::BIT => {
            if !(1..=64).contains(&col.meta) {
                return Err(unsupported("bit length must be 1 to 64"));
            }
            (
                ValueOp::Bit {
                    bytes: col.meta.div_ceil(8) as u8,
                },
                ColumnType::UInt64,
                format!("bit({})", col.meta),
            )
        }
        ct::YEAR => (ValueOp::Year, ColumnType::Int16, "year".to_owned()),
        ct::DATE | ct::NEWDATE => (ValueOp::Date, ColumnType::Date, "date".to_owned()),
        ct::DATETIME2 | ct::TIMESTAMP2 | ct::TIME2 => {
            if col.meta > 6 {
                return Err(unsupported("fractional seconds precision above 6"));
            }
            let fsp = col.meta as u8;
            match col.type_code {
                ct::DATETIME2 => (
                    ValueOp::Datetime2 { fsp },
                    ColumnType::Timestamp,
                    with_fsp("datetime", col.meta),
                ),
                ct::TIMESTAMP2 => (
                    ValueOp::Timestamp2 { fsp },
                    ColumnType::TimestampTz,
                    with_fsp("timestamp", col.meta),
                ),
                _ => (
                    ValueOp::Time2 { fsp },
                    ColumnType::Duration,
                    with_fsp("time", col.meta),
                ),
            }
        }
        ct::DATETIME if legacy_fsp > 0 => (
            ValueOp::DatetimeHires { fsp: legacy_fsp },
            ColumnType::Timestamp,
            with_fsp("datetime", legacy_fsp.into()),
        ),
        ct::TIMESTAMP if legacy_fsp > 0 => (
            ValueOp::TimestampHires { fsp: legacy_fsp },
            ColumnType::TimestampTz,
            with_fsp("timestamp", legacy_fsp.into()),
        ),
        ct::TIME if legacy_fsp > 0 => (
            ValueOp::TimeHires { fsp: legacy_fsp },
            ColumnType::Duration,
            with_fsp("time", legacy_fsp.into()),
        ),
        ct::DATETIME => (
            ValueOp::DatetimeOld,
            ColumnType::Timestamp,
            "datetime".to_owned(),
        ),
        ct::TIMESTAMP => (
            ValueOp::TimestampOld,
            ColumnType::TimestampTz,
            "timestamp".to_owned(),
        ),
        ct::TIME => (ValueOp::TimeOld, ColumnType::Duration, "time".to_owned()),
        ct::VARCHAR | ct::VAR_STRING | ct::STRING | ct::BLOB => {
            let is_blob = col.type_code == ct::BLOB;
            let len_bytes = if is_blob {
                blob_len_bytes(col, name)?
            } else if col.meta > 255 {
                2
            } else {
                1
            };
            let fixed = col.type_code == ct::STRING;
            let (charset, max_bytes) = column_charset(col, name, charsets)?;
            let binary = charset == Charset::Binary;
            let fixed_binary = |n: u16| fixed && binary && col.meta == n;
            match special {
                Some(Special::Uuid) if fixed_binary(16) => (
                    ValueOp::Uuid { len_bytes },
                    ColumnType::Uuid,
                    "uuid".to_owned(),
                ),
                Some(Special::Inet6) if fixed_binary(16) => (
                    ValueOp::Inet6 { len_bytes },
                    ColumnType::Text,
                    "inet6".to_owned(),
                ),
                Some(Special::Inet4) if fixed_binary(4) => (
                    ValueOp::Inet4 { len_bytes },
                    ColumnType::Text,
                    "inet4".to_owned(),
                ),
                Some(Special::Json) if !binary => (
                    ValueOp::JsonText { len_bytes },
                    ColumnType::Json,
                    "json".to_owned(),
                ),
                Some(_) => return Err(unsupported("override does not fit the binlog column")),
                None if binary => {
                    let source = match (is_blob, fixed, len_bytes) {
                        (true, _, 1) => "tinyblob".to_owned(),
                        (true, _, 2) => "blob".to_owned(),
                        (true, _, 3) => "mediumblob".to_owned(),
                        (true, _, _) => "longblob".to_owned(),
                        (false, true, _) => format!("binary({})", col.meta),
                        (false, false, _) => format!("varbinary({})", col.meta),
                    };
                    let pad_to = if fixed { col.meta } else { 0 };
                    (
                        ValueOp::Bytes { len_bytes, pad_to },
                        ColumnType::Binary,
                        source,
                    )
                }
                None => {
                    // The table map gives the length in bytes; the declared
                    // length is in characters.
                    let chars = col.meta / max_bytes.max(1);
                    let source = match (is_blob, fixed, len_bytes) {
                        (true, _, 1) => "tinytext".to_owned(),
                        (true, _, 2) => "text".to_owned(),
                        (true, _, 3) => "mediumtext".to_owned(),
                        (true, _, _) => "longtext".to_owned(),
                        (false, true, _) => format!("char({chars})"),
                        (false, false, _) => format!("varchar({chars})"),
                    };
                    (
                        ValueOp::Text { len_bytes, charset },
                        ColumnType::Text,
                        source,
                    )
                }
            }
        }
        ct::ENUM | ct::SET => {
            let is_set = col.type_code == ct::SET;
            let values = if is_set {
                &col.set_values
            } else {
                &col.enum_values
            };
            let values = values
                .as_ref()
                .ok_or_else(|| DecodeError::MissingMetadata {
                    table: format!("column `{name}`"),
                    what: "ENUM/SET labels",
                })?;
            let (charset, _) = column_charset(col, name, charsets)?;
            let labels: Arc<[String]> = values
                .iter()
                .map(|v| match charset {
                    Charset::Binary => String::from_utf8(v.clone()).ok(),
                    _ => charset.decode(v),
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| unsupported("ENUM/SET label not valid in its charset"))?
                .into();
            let len_bytes = col.meta as u8;
            if is_set {
                if !(1..=8).contains(&len_bytes) || labels.len() > usize::from(len_bytes) * 8 {
                    return Err(unsupported("SET size must be 1 to 8 bytes"));
                }
                let source = with_labels("set", &labels);
                (
                    ValueOp::Set { len_bytes, labels },
                    ColumnType::List(Box::new(ColumnType::Text)),
                    source,
                )
            } else {
                if !(1..=2).contains(&len_bytes) {
                    return Err(unsupported("ENUM size must be 1 or 2 bytes"));
                }
                let source = with_labels("enum", &labels);
                (
                    ValueOp::Enum { len_bytes, labels },
                    ColumnType::Text,
                    source,
                )
            }
        }
        ct::JSON => (
            ValueOp::JsonBinary {
                len_bytes: blob_len_bytes(col, name)?,
            },
            ColumnType::Json,
            "json".to_owned(),
        ),
        ct::GEOMETRY => {
            let source = match col.geometry_type {
                Some(1) => "point",
                Some(2) => "linestring",
                Some(3) => "polygon",
                Some(4) => "multipoint",
                Some(5) => "multilinestring",
                Some(6) => "multipolygon",
                Some(7) => "geometrycollection",
                _ => "geometry",
            };
            (
                ValueOp::Geometry {
                    len_bytes: blob_len_bytes(col, name)?,
                },
                ColumnType::Binary,
                source.to_owned(),
            )
        }
        ct::DECIMAL => return Err(unsupported("pre-5.0 DECIMAL is not supported")),
        _ => return Err(unsupported("no decoder for this type")),
    })
}

/// Decodes a rows event body into `out`: inserts with their image, deletes with
/// the old image, updates with the new image, preceded by the old image as a
/// delete when the update changes the primary key. Error offsets count from the start
/// of the body, or, in compressed events, from the start of the uncompressed
/// row data. On error `out` may hold the event's earlier rows: discard it.
///
/// [`decode_rows_columnar`] is the same decoder writing Arrow columns.
pub fn decode_rows(
    event_type: u8,
    body: &[u8],
    plan: &RowPlan,
    out: &mut Vec<(Op, Vec<Datum>)>,
) -> Result<DecodeStats, DecodeError> {
    let rows = RowsData::parse(event_type, body, plan)?;
    let mut stats = DecodeStats::default();
    let mut pos = 0;
    let data = &rows.data[..];
    let mut keys = Vec::new();
    while pos < data.len() {
        if rows.kind == RowsKind::Update {
            let old =
                plan.skip_before_image(data, &mut pos, rows.before_present, rows.base, &mut keys)?;
            if let Some(mut at) = old {
                let row = plan.decode_image(data, &mut at, rows.base, &mut stats)?;
                out.push((Op::Delete, row));
            }
        }
        let row = plan.decode_image(data, &mut pos, rows.base, &mut stats)?;
        out.push((rows.op, row));
    }
    Ok(stats)
}

/// A rows event past its header: what it does and the packed rows.
pub(crate) struct RowsData<'a> {
    pub(crate) kind: RowsKind,
    pub(crate) op: Op,
    /// Present-columns bitmap of the before image (of the only image for
    /// inserts and deletes); every column is present in the emitted image.
    pub(crate) before_present: &'a [u8],
    /// The rows, uncompressed.
    pub(crate) data: Cow<'a, [u8]>,
    /// Offset of `data` in the body, for error offsets (0 when uncompressed
    /// from a compressed event).
    pub(crate) base: usize,
}

impl<'a> RowsData<'a> {
    /// Checks the event type, table id, column count and images, and
    /// uncompresses MariaDB compressed rows.
    pub(crate) fn parse(
        event_type: u8,
        body: &'a [u8],
        plan: &RowPlan,
    ) -> Result<Self, DecodeError> {
        let Some((kind, version, compressed)) = rows_kind(event_type) else {
            let what = if event_type == crate::event::event_type::PARTIAL_UPDATE_ROWS {
                "PARTIAL_UPDATE_ROWS events (hint: SET GLOBAL binlog_row_value_options = '')"
                    .to_owned()
            } else {
                format!("rows event type {event_type}")
            };
            return Err(DecodeError::Unsupported { what });
        };
        let mut c = Cursor::new(body);
        let table_id = c.uint(6, "rows table id")?;
        if table_id != plan.table_id {
            return Err(DecodeError::TableMismatch {
                expected: plan.table_id,
                got: table_id,
            });
        }
        c.u16("rows flags")?;
        if version == RowsVersion::V2 {
            let at = c.pos();
            let extra = usize::from(c.u16("rows extra data length")?);
            if extra < 2 {
                return Err(DecodeError::Malformed {
                    what: "rows extra data length",
                    offset: at,
                });
            }
            c.take(extra - 2, "rows extra data")?;
        }
        let at = c.pos();
        let ncols = c.lenenc("rows column count")?;
        if ncols != plan.ops.len() as u64 {
            return Err(DecodeError::Malformed {
                what: "rows column count differs from the table map",
                offset: at,
            });
        }
        let ncols = plan.ops.len();
        let bitmap_len = ncols.div_ceil(8);
        let before_present = c.take(bitmap_len, "rows present bitmap")?;
        let after_present = if kind == RowsKind::Update {
            c.take(bitmap_len, "rows after-image bitmap")?
        } else {
            before_present
        };
        for i in 0..ncols {
            if after_present[i / 8] & (1 << (i % 8)) == 0 {
                return Err(DecodeError::PartialImage {
                    column: plan.columns[i].name.clone(),
                });
            }
        }
        let base = c.pos();
        let data: Cow<'a, [u8]> = if compressed {
            Cow::Owned(mariadb_uncompress(c.rest(), "compressed rows")?)
        } else {
            Cow::Borrowed(c.rest())
        };
        let op = match kind {
            RowsKind::Write => Op::Insert,
            RowsKind::Update => Op::Update,
            RowsKind::Delete => Op::Delete,
        };
        Ok(RowsData {
            kind,
            op,
            before_present,
            data,
            base: if compressed { 0 } else { base },
        })
    }
}

pub(crate) use tidewater_core::calendar::{days_from_civil, days_in_month};

/// Days since the epoch for a real calendar date; `None` for zero, partially
/// zero or impossible dates.
#[inline]
pub(crate) fn checked_days(year: i64, month: u32, day: u32) -> Option<i64> {
    (day >= 1 && day <= days_in_month(year, month)).then(|| days_from_civil(year, month, day))
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// Sign-extends the low `bits` of `v`.
#[inline]
fn sign_extend(v: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

/// Fractional microseconds of DATETIME2/TIME2 (signed storage).
#[inline]
fn frac_signed(bytes: &[u8]) -> i64 {
    match bytes.len() {
        0 => 0,
        1 => i64::from(bytes[0] as i8) * 10_000,
        2 => i64::from(i16::from_be_bytes([bytes[0], bytes[1]])) * 100,
        _ => sign_extend(be_uint(bytes), 24),
    }
}

/// Fractional microseconds of TIMESTAMP2 (unsigned storage).
#[inline]
fn frac_unsigned(bytes: &[u8]) -> i64 {
    let v = be_uint(bytes) as i64;
    match bytes.len() {
        0 => 0,
        1 => v * 10_000,
        2 => v * 100,
        _ => v,
    }
}

/// Microseconds of a packed `hour << 12 | minute << 6 | second` and fraction.
#[inline]
fn hms_micros(hms: i64, frac: i64) -> Result<i64, &'static str> {
    let (hour, minute, second) = (hms >> 12, (hms >> 6) & 63, hms & 63);
    if minute > 59 || second > 59 || !(0..MICROS_PER_SECOND).contains(&frac) {
        return Err("time field out of range");
    }
    Ok(((hour * 60 + minute) * 60 + second) * MICROS_PER_SECOND + frac)
}

/// TIME2: 3-byte integer part `sign | hour 10 | minute 6 | second 6` and the
/// fraction, stored together as one big-endian number offset by half its range
/// (so negatives sort first); negative values borrow from the integer part when
/// the fraction is nonzero.
pub(crate) fn time2_micros(bytes: &[u8], fsp_len: usize) -> Result<i64, &'static str> {
    let int_part = be_uint(&bytes[..3]) as i64 - 0x80_0000;
    let packed = match fsp_len {
        0 => int_part << 24,
        1 | 2 => {
            let mut int_part = int_part;
            let mut frac = be_uint(&bytes[3..3 + fsp_len]) as i64;
            let full = 1i64 << (8 * fsp_len);
            if int_part < 0 && frac != 0 {
                int_part += 1;
                frac -= full;
            }
            let scale = if fsp_len == 1 { 10_000 } else { 100 };
            (int_part << 24) + frac * scale
        }
        _ => be_uint(&bytes[..6]) as i64 - 0x8000_0000_0000,
    };
    let negative = packed < 0;
    let packed = packed.abs();
    let micros = hms_micros(packed >> 24, packed & 0xff_ffff)?;
    Ok(if negative { -micros } else { micros })
}

/// Renders IPv6 as MariaDB prints INET6: lowercase hex words, the longest
/// run of zero words (the first of equals, even a single word) as `::`, and
/// mixed notation when that run is the first five words followed by `ffff`
/// (IPv4-mapped) or the first six (IPv4-compatible): `::ffff:1.2.3.4`,
/// `::1.2.3.4`, but `::100` and `1::1:0:1:0:1:0`.
fn format_inet6(bytes: [u8; 16]) -> String {
    let mut out = String::with_capacity(39);
    write_inet6(bytes, &mut out);
    out
}

/// [`format_inet6`] appending to `out`.
pub(crate) fn write_inet6(bytes: [u8; 16], out: &mut String) {
    use std::fmt::Write as _;
    let words: [u16; 8] =
        std::array::from_fn(|i| u16::from_be_bytes([bytes[2 * i], bytes[2 * i + 1]]));
    let (mut best_pos, mut best_len) = (0, 0);
    let mut i = 0;
    while i < 8 {
        if words[i] == 0 {
            let start = i;
            while i < 8 && words[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                (best_pos, best_len) = (start, i - start);
            }
        } else {
            i += 1;
        }
    }
    let v4 = Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]);
    if best_pos == 0 && best_len == 6 {
        let _ = write!(out, "::{v4}");
        return;
    }
    if best_pos == 0 && best_len == 5 && words[5] == 0xffff {
        let _ = write!(out, "::ffff:{v4}");
        return;
    }
    let start = out.len();
    let mut i = 0;
    while i < 8 {
        if best_len > 0 && i == best_pos {
            out.push_str("::");
            i += best_len;
            continue;
        }
        if out.len() > start && !out.ends_with(':') {
            out.push(':');
        }
        let _ = write!(out, "{:x}", words[i]);
        i += 1;
    }
}

/// MySQL GEOMETRY (SRID + WKB) → WKB, or EWKB when the SRID is not 0. The
/// snapshot reader uses it too, so both paths land the same bytes.
pub(crate) fn geometry_to_wkb(bytes: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(bytes.len());
    append_wkb(bytes, &mut out)?;
    Ok(out)
}

/// [`geometry_to_wkb`] appending to `out`; writes nothing when it fails.
pub(crate) fn append_wkb(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    if bytes.len() < 4 {
        return Err("geometry shorter than its SRID");
    }
    let srid = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let wkb = &bytes[4..];
    if srid == 0 {
        out.extend_from_slice(wkb);
        return Ok(());
    }
    let [order, t0, t1, t2, t3, rest @ ..] = wkb else {
        return Err("WKB shorter than its header");
    };
    let type_bytes = [*t0, *t1, *t2, *t3];
    let (ewkb_type, srid) = match order {
        0 => (
            (u32::from_be_bytes(type_bytes) | 0x2000_0000).to_be_bytes(),
            srid.to_be_bytes(),
        ),
        1 => (
            (u32::from_le_bytes(type_bytes) | 0x2000_0000).to_le_bytes(),
            srid.to_le_bytes(),
        ),
        _ => return Err("WKB byte order must be 0 or 1"),
    };
    out.reserve(wkb.len() + 4);
    out.push(*order);
    out.extend_from_slice(&ewkb_type);
    out.extend_from_slice(&srid);
    out.extend_from_slice(rest);
    Ok(())
}

impl RowPlan {
    #[cold]
    #[inline(never)]
    pub(crate) fn value_error(
        &self,
        column: usize,
        offset: usize,
        reason: &'static str,
    ) -> DecodeError {
        DecodeError::InvalidValue {
            column: self.columns[column].name.clone(),
            column_type: self.columns[column].source_type.clone(),
            offset,
            reason,
        }
    }

    /// Decodes one full image (every column present).
    #[inline]
    fn decode_image(
        &self,
        data: &[u8],
        pos: &mut usize,
        base: usize,
        stats: &mut DecodeStats,
    ) -> Result<Vec<Datum>, DecodeError> {
        let n = self.ops.len();
        let nulls_len = n.div_ceil(8);
        let Some(nulls) = data.get(*pos..*pos + nulls_len) else {
            return Err(DecodeError::Truncated {
                what: "row null bitmap",
                offset: base + *pos,
                needed: nulls_len,
            });
        };
        *pos += nulls_len;
        let mut row = Vec::with_capacity(n);
        for (i, op) in self.ops.iter().enumerate() {
            if nulls[i / 8] & (1 << (i % 8)) != 0 {
                row.push(Datum::Null);
                continue;
            }
            let start = *pos;
            match self.decode_value(op, data, pos, stats) {
                Ok(d) => row.push(d),
                Err(reason) => return Err(self.value_error(i, base + start, reason)),
            }
        }
        Ok(row)
    }

    /// For the update row at `pos`: walks over its before image (whose
    /// columns are those set in `before_present`) without decoding it, leaving
    /// `pos` at the after image, and returns where the before image starts if
    /// it must be emitted as a delete, i.e. if the update changes the primary
    /// key. `keys` is scratch space, reused across the rows of an event.
    ///
    /// Key values are compared as raw value bytes (NULL differs from any
    /// value): equal bytes decode to equal values, and bytes that differ but
    /// decode alike only cost a delete of the key the update then writes.
    /// A changed key needs a full before image and a key column missing from
    /// the before image leaves the change unknown: both are
    /// [`DecodeError::PartialImage`]. When the after image is too short to
    /// reach the key, `None`: decoding the after image reports that error, as
    /// for an update without key change.
    pub(crate) fn skip_before_image<'d>(
        &self,
        data: &'d [u8],
        pos: &mut usize,
        before_present: &[u8],
        base: usize,
        keys: &mut Vec<Option<&'d [u8]>>,
    ) -> Result<Option<usize>, DecodeError> {
        let present = |i: usize| before_present[i / 8] & (1 << (i % 8)) != 0;
        let before = *pos;
        let Some(&last_key) = self.keys.last() else {
            self.walk_image(data, pos, Some(before_present), usize::MAX, base, |_, _| {})?;
            return Ok(None);
        };
        if let Some(&i) = self.keys.iter().find(|&&i| !present(i)) {
            return Err(DecodeError::PartialImage {
                column: self.columns[i].name.clone(),
            });
        }
        keys.clear();
        self.walk_image(data, pos, Some(before_present), usize::MAX, base, |i, v| {
            if self.columns[i].key {
                keys.push(v);
            }
        })?;
        let mut at = *pos;
        let mut next = 0;
        let mut changed = false;
        let walked = self.walk_image(data, &mut at, None, last_key, base, |i, v| {
            if self.columns[i].key {
                changed |= keys.get(next) != Some(&v);
                next += 1;
            }
        });
        if walked.is_err() || !changed {
            return Ok(None);
        }
        if let Some(i) = (0..self.ops.len()).find(|&i| !present(i)) {
            return Err(DecodeError::PartialImage {
                column: self.columns[i].name.clone(),
            });
        }
        Ok(Some(before))
    }

    /// Walks over one image without decoding it: the columns set in `present`
    /// (every column when `None`), up to and including column `last`. Hands
    /// `visit` the index and the raw bytes (length prefix included; `None` for
    /// NULL) of every walked column.
    fn walk_image<'d>(
        &self,
        data: &'d [u8],
        pos: &mut usize,
        present: Option<&[u8]>,
        last: usize,
        base: usize,
        mut visit: impl FnMut(usize, Option<&'d [u8]>),
    ) -> Result<(), DecodeError> {
        let is_present = |i: usize| present.is_none_or(|p| p[i / 8] & (1 << (i % 8)) != 0);
        let count = (0..self.ops.len()).filter(|&i| is_present(i)).count();
        let nulls_len = count.div_ceil(8);
        let Some(nulls) = data.get(*pos..*pos + nulls_len) else {
            return Err(DecodeError::Truncated {
                what: "row null bitmap",
                offset: base + *pos,
                needed: nulls_len,
            });
        };
        *pos += nulls_len;
        let mut k = 0;
        for (i, op) in self.ops.iter().enumerate() {
            if i > last {
                break;
            }
            if !is_present(i) {
                continue;
            }
            let null = nulls[k / 8] & (1 << (k % 8)) != 0;
            k += 1;
            if null {
                visit(i, None);
                continue;
            }
            let start = *pos;
            let len = match op.fixed_len() {
                Some(n) => Some(n),
                None => value_len(data, *pos, op.len_bytes()),
            };
            match len.filter(|&n| n <= data.len() - *pos) {
                Some(n) => {
                    *pos += n;
                    visit(i, Some(&data[start..*pos]));
                }
                None => return Err(self.value_error(i, base + start, "value runs past the event")),
            }
        }
        Ok(())
    }

    #[inline]
    fn decode_value(
        &self,
        op: &ValueOp,
        data: &[u8],
        pos: &mut usize,
        stats: &mut DecodeStats,
    ) -> Result<Datum, &'static str> {
        let (b, fixed) = value_bytes(op, data, pos)?;
        if fixed {
            return decode_fixed(op, b, stats);
        }
        Ok(match op {
            ValueOp::Text { charset, .. } => Datum::Text(
                charset
                    .decode(b)
                    .ok_or("bytes are not valid in the column's charset")?,
            ),
            ValueOp::Bytes { pad_to, .. } => {
                let pad = usize::from(*pad_to);
                if pad > 0 && b.len() < pad {
                    let mut v = Vec::with_capacity(pad);
                    v.extend_from_slice(b);
                    v.resize(pad, 0);
                    Datum::Bytes(v)
                } else if pad > 0 && b.len() > pad {
                    return Err("binary value longer than its column");
                } else {
                    Datum::Bytes(b.to_vec())
                }
            }
            ValueOp::JsonBinary { .. } => {
                Datum::Text(decode_binary_json(b).map_err(|e| match e {
                    DecodeError::Json { reason, .. } => reason,
                    _ => "invalid binary JSON",
                })?)
            }
            ValueOp::JsonText { .. } => Datum::Text(
                std::str::from_utf8(b)
                    .map_err(|_| "JSON text is not UTF-8")?
                    .to_owned(),
            ),
            ValueOp::Geometry { .. } => Datum::Bytes(geometry_to_wkb(b)?),
            ValueOp::Uuid { .. } | ValueOp::Inet6 { .. } => {
                if b.len() > 16 {
                    return Err("value longer than 16 bytes");
                }
                let mut v = [0u8; 16];
                v[..b.len()].copy_from_slice(b);
                if matches!(op, ValueOp::Uuid { .. }) {
                    Datum::Uuid(v)
                } else {
                    Datum::Text(format_inet6(v))
                }
            }
            ValueOp::Inet4 { .. } => {
                if b.len() > 4 {
                    return Err("value longer than 4 bytes");
                }
                let mut v = [0u8; 4];
                v[..b.len()].copy_from_slice(b);
                Datum::Text(Ipv4Addr::from(v).to_string())
            }
            _ => unreachable!("fixed-size ops return above"),
        })
    }
}

/// The bytes of the value at `pos` (without its length prefix) and whether
/// `op` is fixed-size; moves `pos` past the value.
#[inline]
pub(crate) fn value_bytes<'d>(
    op: &ValueOp,
    data: &'d [u8],
    pos: &mut usize,
) -> Result<(&'d [u8], bool), &'static str> {
    const PAST_END: &str = "value runs past the event";
    if let Some(n) = op.fixed_len() {
        let b = data.get(*pos..*pos + n).ok_or(PAST_END)?;
        *pos += n;
        return Ok((b, true));
    }
    let lb = op.len_bytes();
    let header = data.get(*pos..*pos + lb).ok_or(PAST_END)?;
    let len = le_uint(header) as usize;
    let b = data
        .get(*pos + lb..)
        .and_then(|rest| rest.get(..len))
        .ok_or(PAST_END)?;
    *pos += lb + len;
    Ok((b, false))
}

/// Length of a variable-size value at `pos` including its prefix.
fn value_len(data: &[u8], pos: usize, len_bytes: usize) -> Option<usize> {
    let header = data.get(pos..pos + len_bytes)?;
    (le_uint(header) as usize).checked_add(len_bytes)
}

#[inline]
pub(crate) fn decode_fixed(
    op: &ValueOp,
    b: &[u8],
    stats: &mut DecodeStats,
) -> Result<Datum, &'static str> {
    Ok(match op {
        ValueOp::I8 => Datum::Int8(b[0] as i8),
        ValueOp::U8 => Datum::UInt(u64::from(b[0])),
        ValueOp::I16 => Datum::Int16(i16::from_le_bytes([b[0], b[1]])),
        ValueOp::U16 => Datum::UInt(u64::from(u16::from_le_bytes([b[0], b[1]]))),
        ValueOp::I24 => Datum::Int32(sign_extend(le_uint(b), 24) as i32),
        ValueOp::U24 => Datum::UInt(le_uint(b)),
        ValueOp::I32 => Datum::Int32(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ValueOp::U32 => Datum::UInt(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        ValueOp::I64 => Datum::Int64(le_uint(b) as i64),
        ValueOp::U64 => Datum::UInt(le_uint(b)),
        ValueOp::F32 => Datum::Float32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ValueOp::F64 => Datum::Float64(f64::from_bits(le_uint(b))),
        ValueOp::Decimal(layout) => layout.decode(b)?,
        ValueOp::Bit { .. } => Datum::UInt(be_uint(b)),
        ValueOp::Year => Datum::Int16(if b[0] == 0 { 0 } else { 1900 + i16::from(b[0]) }),
        ValueOp::Date => {
            let v = le_uint(b);
            let (day, month, year) = ((v & 31) as u32, ((v >> 5) & 15) as u32, (v >> 9) as i64);
            match checked_days(year, month, day) {
                Some(days) => Datum::Date(days as i32),
                None => zero_date(stats),
            }
        }
        ValueOp::Datetime2 { .. } => {
            let int_part = be_uint(&b[..5]) as i64 - 0x80_0000_0000;
            let frac = frac_signed(&b[5..]);
            if int_part < 0 || frac < 0 {
                return Err("negative datetime");
            }
            let ymd = int_part >> 17;
            let ym = ymd >> 5;
            let (year, month, day) = (ym / 13, (ym % 13) as u32, (ymd & 31) as u32);
            let time = hms_micros(int_part & 0x1_ffff, frac)?;
            if time >= MICROS_PER_DAY {
                return Err("hour out of range");
            }
            match checked_days(year, month, day) {
                Some(days) => Datum::Timestamp(days * MICROS_PER_DAY + time),
                None => zero_date(stats),
            }
        }
        ValueOp::Timestamp2 { .. } => {
            let seconds = be_uint(&b[..4]) as i64;
            let frac = frac_unsigned(&b[4..]);
            if frac >= MICROS_PER_SECOND {
                return Err("fraction out of range");
            }
            if seconds == 0 && frac == 0 {
                zero_date(stats)
            } else {
                Datum::Timestamp(seconds * MICROS_PER_SECOND + frac)
            }
        }
        ValueOp::Time2 { fsp } => Datum::Duration(time2_micros(b, fsp_bytes(*fsp))?),
        ValueOp::DatetimeOld => {
            let v = le_uint(b);
            let (date, time) = (v / 1_000_000, (v % 1_000_000) as i64);
            let (year, month, day) = (
                (date / 10_000) as i64,
                (date / 100 % 100) as u32,
                (date % 100) as u32,
            );
            let (h, m, s) = (time / 10_000, time / 100 % 100, time % 100);
            if year > 9999 || h > 23 || m > 59 || s > 59 {
                return Err("time field out of range");
            }
            match checked_days(year, month, day) {
                Some(days) => Datum::Timestamp(
                    days * MICROS_PER_DAY + (h * 3600 + m * 60 + s) * MICROS_PER_SECOND,
                ),
                None => zero_date(stats),
            }
        }
        ValueOp::TimestampOld => match le_uint(b) as i64 {
            0 => zero_date(stats),
            s => Datum::Timestamp(s * MICROS_PER_SECOND),
        },
        ValueOp::TimeOld => {
            let v = sign_extend(le_uint(b), 24);
            let a = v.abs();
            let (h, m, s) = (a / 10_000, a / 100 % 100, a % 100);
            if m > 59 || s > 59 {
                return Err("time field out of range");
            }
            let micros = (h * 3600 + m * 60 + s) * MICROS_PER_SECOND;
            Datum::Duration(if v < 0 { -micros } else { micros })
        }
        ValueOp::DatetimeHires { fsp } => {
            // sec_part_shift(((((year*13 + month)*32 + day)*24 + hour)*60 +
            // minute)*60 + second)*10^6 + µs, fsp), big-endian.
            let total = be_uint(b)
                .checked_mul(POW10_U32[6 - usize::from(*fsp)].into())
                .ok_or("datetime out of range")?;
            let (micros, mut t) = (total % 1_000_000, total / 1_000_000);
            let mut next = |base: u64| {
                let v = t % base;
                t /= base;
                v
            };
            let (s, mi, h) = (next(60), next(60), next(24));
            let (day, month) = (next(32) as u32, next(13) as u32);
            let year = t as i64;
            if year > 9999 {
                return Err("year out of range");
            }
            match checked_days(year, month, day) {
                Some(days) => Datum::Timestamp(
                    days * MICROS_PER_DAY + ((h * 3600 + mi * 60 + s) * 1_000_000 + micros) as i64,
                ),
                None => zero_date(stats),
            }
        }
        ValueOp::TimestampHires { fsp } => {
            let seconds = be_uint(&b[..4]) as i64;
            let frac = be_uint(&b[4..]) as i64 * i64::from(POW10_U32[6 - usize::from(*fsp)]);
            if frac >= MICROS_PER_SECOND {
                return Err("fraction out of range");
            }
            if seconds == 0 && frac == 0 {
                zero_date(stats)
            } else {
                Datum::Timestamp(seconds * MICROS_PER_SECOND + frac)
            }
        }
        ValueOp::TimeHires { fsp } => {
            // sec_part_shift(±(h*3600 + m*60 + s)*10^6 + µs, fsp), offset by the
            // shifted (838:59:59 + 1 s) so it is stored unsigned, big-endian.
            let unit = i64::from(POW10_U32[6 - usize::from(*fsp)]);
            let zero_point = 3_020_400 * MICROS_PER_SECOND / unit;
            Datum::Duration((be_uint(b) as i64 - zero_point) * unit)
        }
        ValueOp::Enum { labels, .. } => Datum::Text(enum_label(labels, b)?.to_owned()),
        ValueOp::Set { labels, .. } => {
            let mut items = Vec::with_capacity(le_uint(b).count_ones() as usize);
            for_each_set_label(labels, b, |label| items.push(Datum::Text(label.to_owned())))?;
            Datum::List(items)
        }
        _ => unreachable!("variable-size ops are decoded by the caller"),
    })
}

/// The label of a packed ENUM value; index 0 (an invalid value stored by a
/// non-strict server) is the empty string, as MySQL shows it.
#[inline]
pub(crate) fn enum_label<'l>(labels: &'l [String], b: &[u8]) -> Result<&'l str, &'static str> {
    match le_uint(b) as usize {
        0 => Ok(""),
        i => Ok(labels.get(i - 1).ok_or("enum index out of range")?),
    }
}

/// Calls `f` with the label of every member of a packed SET value, in
/// definition order; checks the bits before the first call.
#[inline]
pub(crate) fn for_each_set_label(
    labels: &[String],
    b: &[u8],
    mut f: impl FnMut(&str),
) -> Result<(), &'static str> {
    let mut bits = le_uint(b);
    if labels.len() < 64 && bits >> labels.len() != 0 {
        return Err("set bit out of range");
    }
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        f(&labels[i]);
        bits &= bits - 1;
    }
    Ok(())
}

#[cold]
fn zero_date(stats: &mut DecodeStats) -> Datum {
    stats.zero_dates += 1;
    Datum::Null
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{self, event_type as et};
    use crate::tablemap::parse_table_map;
    use crate::tablemap::tests::{names_tlv, table_map_body};
    use arrow_array::{Array, ArrayRef};
    use arrow_schema::DataType;
    use std::net::Ipv6Addr;
    use tidewater_core::arrow_type;

    /// Datum rows → one Arrow array per column, with Arrow's own builders: the
    /// oracle the columnar path is held to.
    fn datum_arrays(columns: &[Column], rows: &[(Op, Vec<Datum>)]) -> Vec<ArrayRef> {
        columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                let values: Vec<&Datum> = rows.iter().map(|r| &r.1[i]).collect();
                datum_array(&arrow_type(&column.ty), &values)
            })
            .collect()
    }

    fn datum_array(ty: &DataType, values: &[&Datum]) -> ArrayRef {
        use arrow_array::builder::*;
        macro_rules! primitive {
            ($builder:ty, $variant:path) => {{
                let mut b = <$builder>::new().with_data_type(ty.clone());
                for v in values {
                    match v {
                        Datum::Null => b.append_null(),
                        $variant(x) => b.append_value(*x),
                        other => panic!("{other:?} in a {ty} column"),
                    }
                }
                Arc::new(b.finish()) as ArrayRef
            }};
        }
        macro_rules! unsigned {
            ($builder:ty, $width:ty) => {{
                let mut b = <$builder>::new();
                for v in values {
                    match v {
                        Datum::Null => b.append_null(),
                        Datum::UInt(x) => b.append_value(<$width>::try_from(*x).unwrap()),
                        other => panic!("{other:?} in a {ty} column"),
                    }
                }
                Arc::new(b.finish()) as ArrayRef
            }};
        }
        match ty {
            DataType::Int8 => primitive!(Int8Builder, Datum::Int8),
            DataType::Int16 => primitive!(Int16Builder, Datum::Int16),
            DataType::Int32 => primitive!(Int32Builder, Datum::Int32),
            DataType::Int64 => primitive!(Int64Builder, Datum::Int64),
            DataType::UInt8 => unsigned!(UInt8Builder, u8),
            DataType::UInt16 => unsigned!(UInt16Builder, u16),
            DataType::UInt32 => unsigned!(UInt32Builder, u32),
            DataType::UInt64 => unsigned!(UInt64Builder, u64),
            DataType::Float32 => primitive!(Float32Builder, Datum::Float32),
            DataType::Float64 => primitive!(Float64Builder, Datum::Float64),
            DataType::Decimal128(..) => primitive!(Decimal128Builder, Datum::Decimal128),
            DataType::Decimal256(..) => primitive!(Decimal256Builder, Datum::Decimal256),
            DataType::Date32 => primitive!(Date32Builder, Datum::Date),
            DataType::Timestamp(..) => primitive!(TimestampMicrosecondBuilder, Datum::Timestamp),
            DataType::Duration(..) => primitive!(DurationMicrosecondBuilder, Datum::Duration),
            DataType::Utf8 => {
                let mut b = StringBuilder::new();
                for v in values {
                    match v {
                        Datum::Null => b.append_null(),
                        Datum::Text(x) => b.append_value(x),
                        other => panic!("{other:?} in a {ty} column"),
                    }
                }
                Arc::new(b.finish())
            }
            DataType::Binary => {
                let mut b = BinaryBuilder::new();
                for v in values {
                    match v {
                        Datum::Null => b.append_null(),
                        Datum::Bytes(x) => b.append_value(x),
                        other => panic!("{other:?} in a {ty} column"),
                    }
                }
                Arc::new(b.finish())
            }
            DataType::FixedSizeBinary(16) => {
                let mut b = FixedSizeBinaryBuilder::new(16);
                for v in values {
                    match v {
                        Datum::Null => b.append_null(),
                        Datum::Uuid(x) => b.append_value(x).unwrap(),
                        other => panic!("{other:?} in a {ty} column"),
                    }
                }
                Arc::new(b.finish())
            }
            DataType::List(field) => {
                let mut b = ListBuilder::new(StringBuilder::new()).with_field(field.clone());
                for v in values {
                    match v {
                        Datum::Null => b.append(false),
                        Datum::List(items) => {
                            for item in items {
                                match item {
                                    Datum::Text(x) => b.values().append_value(x),
                                    other => panic!("{other:?} in a {ty} column"),
                                }
                            }
                            b.append(true);
                        }
                        other => panic!("{other:?} in a {ty} column"),
                    }
                }
                Arc::new(b.finish())
            }
            other => panic!("no test converter for {other}"),
        }
    }

    /// Asserts that `columnar` holds `rows` (typed as `plan.columns()`) and
    /// finishes it.
    fn assert_columnar_eq(plan: &RowPlan, columnar: &mut ColumnarRows, rows: &[(Op, Vec<Datum>)]) {
        let columns = plan.columns();
        let want_ops: Vec<Op> = rows.iter().map(|r| r.0).collect();
        assert_eq!(columnar.len(), rows.len());
        assert_eq!(columnar.ops(), &want_ops[..]);
        let (arrays, ops) = columnar.finish();
        assert!(columnar.is_empty() && columnar.ops().is_empty());
        assert_eq!(ops, want_ops);
        assert_eq!(arrays.len(), columns.len());
        for ((array, want), column) in arrays
            .iter()
            .zip(datum_arrays(&columns, rows))
            .zip(&columns)
        {
            assert_eq!(
                array.data_type(),
                &arrow_type(&column.ty),
                "column {}",
                column.name
            );
            assert_eq!(array.len(), rows.len(), "column {}", column.name);
            assert_eq!(array, &want, "column {}", column.name);
        }
    }

    /// [`decode_rows`] and [`decode_rows_columnar`] on the same event: both
    /// succeed with the same stats and values, or fail with the same error
    /// (and the columnar output rolled back). Returns what `decode_rows` did.
    fn decode_both(
        event_type: u8,
        body: &[u8],
        plan: &RowPlan,
        out: &mut Vec<(Op, Vec<Datum>)>,
    ) -> Result<DecodeStats, DecodeError> {
        let mut rows = Vec::new();
        let datum = decode_rows(event_type, body, plan, &mut rows);
        let mut columnar = ColumnarRows::new(plan);
        let arrow = decode_rows_columnar(event_type, body, plan, &mut columnar);
        match (&datum, &arrow) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "stats");
                assert_columnar_eq(plan, &mut columnar, &rows);
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string());
                assert!(columnar.is_empty(), "a failed event leaves no rows");
                let (arrays, _) = columnar.finish();
                assert!(arrays.iter().all(|a| a.is_empty()));
            }
            _ => panic!("datum path {datum:?}, columnar path {arrow:?}"),
        }
        out.extend(rows);
        datum
    }

    /// Collation ids of the fixture server (`information_schema.COLLATIONS`).
    fn charsets(collation: u32) -> Option<String> {
        Some(
            match collation {
                8 => "latin1",
                33 | 83 => "utf8mb3",
                45 | 46 | 224 | 255 => "utf8mb4",
                51 => "cp1251",
                63 => "binary",
                _ => return None,
            }
            .to_owned(),
        )
    }

    /// The events of a binlog file: (type, body without header and CRC32).
    fn binlog_events(file: &[u8]) -> Vec<(u8, Vec<u8>)> {
        assert_eq!(&file[..4], b"\xfebin");
        let mut events = Vec::new();
        let mut pos = 4;
        while pos < file.len() {
            let header = event::event_header(&file[pos..]).unwrap();
            let end = pos + header.event_size as usize;
            events.push((
                header.event_type,
                file[pos + event::EVENT_HEADER_LEN..end - 4].to_vec(),
            ));
            pos = end;
        }
        events
    }

    const ALL_TYPES: &[u8] = include_bytes!("../tests/fixtures/mariadb-10.11-all-types.binlog");
    const COMPRESSED: &[u8] = include_bytes!("../tests/fixtures/mariadb-10.11-compressed.binlog");
    const DDL: &[u8] = include_bytes!("../tests/fixtures/mariadb-10.11-ddl.binlog");
    const UUIDS: &[u8] = include_bytes!("../tests/fixtures/mariadb-10.11-uuid.binlog");
    const HIRES: &[u8] = include_bytes!("../tests/fixtures/mariadb-10.11-hires-temporal.binlog");

    fn special(special: Special) -> ColumnOverride {
        ColumnOverride {
            special: Some(special),
            source_type: None,
        }
    }

    /// Overrides for `tw.t_all` as information_schema describes it.
    fn t_all_overrides() -> Vec<ColumnOverride> {
        let mut o = vec![ColumnOverride::default(); 45];
        o[39] = special(Special::Json);
        o[42] = special(Special::Uuid);
        o[43] = special(Special::Inet6);
        o[44] = special(Special::Inet4);
        o
    }

    /// (table, op, row) per row; zero dates; (table, columns) per table map.
    type Decoded = (
        Vec<(String, Op, Vec<Datum>)>,
        u64,
        Vec<(String, Vec<Column>)>,
    );

    /// Decodes every rows event of a binlog, planning from the table map before
    /// it. Returns (table, op, row) and the summed stats.
    fn decode_file(file: &[u8], overrides: &dyn Fn(&str) -> Vec<ColumnOverride>) -> Decoded {
        let mut rows = Vec::new();
        let mut zero_dates = 0;
        let mut schemas = Vec::new();
        let mut current: Option<(String, RowPlan)> = None;
        for (t, body) in binlog_events(file) {
            if t == et::TABLE_MAP {
                let map = parse_table_map(&body).unwrap();
                let plan = plan(&map, &overrides(&map.table), &charsets).unwrap();
                schemas.push((map.table.clone(), plan.columns()));
                current = Some((map.table, plan));
            } else if is_rows_event(t) {
                let (table, plan) = current.as_ref().unwrap();
                let mut out = Vec::new();
                zero_dates += decode_both(t, &body, plan, &mut out).unwrap().zero_dates;
                rows.extend(out.into_iter().map(|(op, r)| (table.clone(), op, r)));
            }
        }
        (rows, zero_dates, schemas)
    }

    fn ts(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64, us: i64) -> Datum {
        Datum::Timestamp(
            days_from_civil(y, mo, d) * MICROS_PER_DAY
                + ((h * 60 + mi) * 60 + s) * MICROS_PER_SECOND
                + us,
        )
    }

    fn text(s: &str) -> Datum {
        Datum::Text(s.to_owned())
    }

    fn texts(items: &[&str]) -> Datum {
        Datum::List(items.iter().map(|s| text(s)).collect())
    }

    fn uuid(s: &str) -> Datum {
        Datum::Uuid(event::parse_uuid(s).unwrap())
    }

    fn nines(n: usize, negative: bool) -> Datum {
        let digits = format!("{}{}", if negative { "-" } else { "" }, "9".repeat(n));
        Datum::Decimal256(i256::from_string(&digits).unwrap())
    }

    fn hms(negative: bool, h: i64, m: i64, s: i64, us: i64) -> Datum {
        let v = ((h * 60 + m) * 60 + s) * MICROS_PER_SECOND + us;
        Datum::Duration(if negative { -v } else { v })
    }

    /// Row 1 of the fixture: maximum values (see the INSERT in the fixture's
    /// ANNOTATE_ROWS event, and `SELECT` output checked when it was captured).
    fn t_all_row1() -> Vec<Datum> {
        use Datum::*;
        vec![
            Int32(1),
            Int8(127),
            UInt(255),
            Int16(32767),
            UInt(65535),
            Int32(8_388_607),
            UInt(16_777_215),
            Int32(i32::MAX),
            UInt(u64::from(u32::MAX)),
            Int64(i64::MAX),
            UInt(u64::MAX),
            Float32(3.5),
            Float64(2.25),
            nines(65, false),
            Decimal128(1_234_567_890),
            Decimal128(12_345),
            Decimal128(123_456_789_012),
            UInt(u64::MAX),
            UInt(0b10101),
            Int16(2155),
            Date(days_from_civil(9999, 12, 31) as i32),
            ts(9999, 12, 31, 23, 59, 59, 999_999),
            ts(2024, 2, 29, 12, 34, 56, 0),
            Timestamp(2_147_483_647 * MICROS_PER_SECOND + 999_000),
            hms(false, 838, 59, 59, 0),
            hms(true, 838, 59, 59, 0),
            hms(true, 0, 0, 0, 500_000),
            text("héllo 😀"),
            text("é€"),
            text("ab"),
            text(&"ü".repeat(100)),
            text("x"),
            Bytes(vec![1, 0, 0, 0]),
            Bytes(vec![0, 0xff, 0]),
            text("text ✓"),
            Bytes(vec![0xde, 0xad, 0xbe, 0xef, 0]),
            text("Привет"),
            text("c"),
            texts(&["x", "z", "w"]),
            text(r#"{"a":[1,2.5,"s",null,true],"b":{"c":"\u00e9\n"}}"#),
            // EWKB: LE, type POINT | 0x20000000, SRID 4326, x = 1, y = 2.
            Bytes(
                [
                    &[1u8, 1, 0, 0, 0x20, 0xe6, 0x10, 0, 0][..],
                    &1f64.to_le_bytes(),
                    &2f64.to_le_bytes(),
                ]
                .concat(),
            ),
            // Plain WKB for SRID 0: LINESTRING(0 0, 1 1).
            Bytes(
                [
                    &[1u8, 2, 0, 0, 0, 2, 0, 0, 0][..],
                    &0f64.to_le_bytes(),
                    &0f64.to_le_bytes(),
                    &1f64.to_le_bytes(),
                    &1f64.to_le_bytes(),
                ]
                .concat(),
            ),
            uuid("123e4567-e89b-12d3-a456-426614174000"),
            text("::ffff:1.2.3.4"),
            text("192.168.0.1"),
        ]
    }

    /// Row 2: minimum values, zero dates, empty strings.
    fn t_all_row2() -> Vec<Datum> {
        use Datum::*;
        vec![
            Int32(2),
            Int8(-128),
            UInt(0),
            Int16(-32768),
            UInt(0),
            Int32(-8_388_608),
            UInt(0),
            Int32(i32::MIN),
            UInt(0),
            Int64(i64::MIN),
            UInt(0),
            Float32(-1.5),
            Float64(-1e300),
            nines(65, true),
            Decimal128(-1),
            Decimal128(-1),
            Decimal128(-1),
            UInt(0),
            UInt(0),
            Int16(0),
            Null,
            Null,
            Null,
            Null,
            hms(true, 0, 0, 0, 1),
            hms(false, 0, 0, 0, 0),
            hms(true, 12, 34, 56, 780_000),
            text(""),
            text(""),
            text(""),
            text(""),
            text(""),
            Bytes(vec![0, 0, 0, 0]),
            Bytes(vec![]),
            text(""),
            Bytes(vec![]),
            text(""),
            text(""),
            texts(&[]),
            text("null"),
            Null,
            Null,
            uuid("00000000-0000-0000-0000-000000000001"),
            text("2001:db8::1"),
            text("0.0.0.0"),
        ]
    }

    fn row3(mi: i32, vc: Option<&str>) -> Vec<Datum> {
        let mut r = vec![Datum::Null; 45];
        r[0] = Datum::Int32(3);
        r[5] = Datum::Int32(mi);
        if let Some(vc) = vc {
            r[27] = text(vc);
        }
        r
    }

    fn overrides_for(table: &str) -> Vec<ColumnOverride> {
        match table {
            "t_all" => t_all_overrides(),
            "t_uuid" => vec![
                ColumnOverride::default(),
                special(Special::Uuid),
                special(Special::Json),
            ],
            "t_hires" => std::iter::once(ColumnOverride::default())
                .chain(
                    [0u8, 0, 0, 3, 3, 6, 1, 1, 3, 6, 1]
                        .iter()
                        .map(|&fsp| special(Special::TemporalPrecision { fsp })),
                )
                .collect(),
            _ => vec![],
        }
    }

    /// MariaDB's 5.3 temporal format (`mysql56_temporal_format = OFF`): the
    /// table map says DATETIME/TIME/TIMESTAMP without metadata; the catalog's
    /// precision picks the width.
    #[test]
    fn mariadb_fixture_hires_temporal() {
        let types: Vec<u8> = binlog_events(HIRES)
            .iter()
            .filter(|e| e.0 == et::TABLE_MAP)
            .map(|e| parse_table_map(&e.1).unwrap().columns[4].type_code)
            .collect();
        assert_eq!(types, vec![ct::DATETIME]);
        let (rows, zero_dates, schemas) = decode_file(HIRES, &overrides_for);
        use Datum::*;
        let got: Vec<Vec<Datum>> = rows.into_iter().map(|r| r.2).collect();
        assert_eq!(
            got,
            vec![
                vec![
                    Int32(1),
                    ts(2024, 2, 29, 12, 34, 56, 0),
                    hms(true, 838, 59, 59, 0),
                    Timestamp(2_147_483_647 * MICROS_PER_SECOND),
                    ts(2024, 2, 29, 12, 34, 56, 789_000),
                    hms(true, 1, 2, 3, 456_000),
                    ts(9999, 12, 31, 23, 59, 59, 999_999),
                    hms(true, 0, 0, 0, 500_000),
                    ts(2001, 2, 3, 4, 5, 6, 700_000),
                    ts(2001, 2, 3, 4, 5, 6, 789_000),
                    Timestamp(2_147_483_647 * MICROS_PER_SECOND + 999_999),
                    ts(1000, 1, 1, 0, 0, 0, 100_000),
                ],
                vec![
                    Int32(2),
                    Null,
                    hms(false, 0, 0, 0, 0),
                    Null,
                    Null,
                    hms(false, 838, 59, 59, 999_000),
                    Null,
                    hms(false, 0, 0, 0, 100_000),
                    Null,
                    Timestamp(MICROS_PER_SECOND + 1_000),
                    Timestamp(1),
                    Null,
                ],
            ]
        );
        assert_eq!(zero_dates, 5);
        let source: Vec<&str> = schemas[0]
            .1
            .iter()
            .map(|c| c.source_type.as_str())
            .collect();
        assert_eq!(
            &source[1..5],
            &["datetime", "time", "timestamp", "datetime(3)"]
        );
    }

    #[test]
    fn mariadb_fixture_all_types() {
        let (rows, zero_dates, schemas) = decode_file(ALL_TYPES, &overrides_for);
        let expected = vec![
            ("t_all", Op::Insert, t_all_row1()),
            ("t_all", Op::Insert, t_all_row2()),
            ("t_all", Op::Insert, row3(-1, None)),
            ("t_all", Op::Update, row3(-2, Some("updated"))),
            ("t_all", Op::Delete, t_all_row2()),
            (
                "t_small",
                Op::Insert,
                vec![
                    Datum::UInt(1),
                    text("a"),
                    Datum::Decimal128(15_000),
                    ts(2024, 1, 1, 0, 0, 0, 1),
                ],
            ),
            (
                "t_small",
                Op::Insert,
                vec![
                    Datum::UInt(u64::MAX),
                    text("zz"),
                    Datum::Decimal128(-999_999_999_999),
                    ts(1970, 1, 1, 0, 0, 0, 0),
                ],
            ),
        ];
        assert_eq!(rows.len(), expected.len());
        for (i, ((table, op, row), (e_table, e_op, e_row))) in
            rows.iter().zip(&expected).enumerate()
        {
            assert_eq!((table.as_str(), op), (*e_table, e_op), "row {i}");
            for (c, (got, want)) in row.iter().zip(e_row).enumerate() {
                assert_eq!(got, want, "row {i} column {c}");
            }
            assert_eq!(row.len(), e_row.len(), "row {i}");
        }
        // Row 2's insert and delete: dt, dtm, dtm0, ts each; row 3's insert and
        // update: dt ('2020-00-05').
        assert_eq!(zero_dates, 4 + 4 + 1 + 1);

        let (_, t_all) = &schemas[0];
        let described: Vec<(&str, &str, bool)> = t_all
            .iter()
            .map(|c| (c.name.as_str(), c.source_type.as_str(), c.key))
            .collect();
        for want in [
            ("id", "int", true),
            ("tu", "tinyint unsigned", false),
            ("mi", "mediumint", false),
            ("bu", "bigint unsigned", false),
            ("dec1", "decimal(65,30)", false),
            ("b64", "bit(64)", false),
            ("y", "year", false),
            ("dtm", "datetime(6)", false),
            ("dtm0", "datetime", false),
            ("ts", "timestamp(3)", false),
            ("tm2", "time(2)", false),
            ("vc", "varchar(20)", false),
            ("cbig", "char(100)", false),
            ("bn", "binary(4)", false),
            ("vb", "varbinary(10)", false),
            ("tx", "text", false),
            ("bl", "blob", false),
            ("e", "enum('a','b','c')", false),
            ("s", "set('x','y','z','w')", false),
            ("j", "json", false),
            ("g", "geometry", false),
            ("u", "uuid", false),
            ("i6", "inet6", false),
            ("i4", "inet4", false),
        ] {
            assert!(described.contains(&want), "{want:?} not in {described:?}");
        }
        let ty = |name: &str| t_all.iter().find(|c| c.name == name).unwrap().ty.clone();
        assert_eq!(ty("mu"), ColumnType::UInt32);
        assert_eq!(
            ty("dec1"),
            ColumnType::Decimal {
                precision: 65,
                scale: 30
            }
        );
        assert_eq!(ty("ts"), ColumnType::TimestampTz);
        assert_eq!(ty("tm"), ColumnType::Duration);
        assert_eq!(ty("s"), ColumnType::List(Box::new(ColumnType::Text)));
        assert_eq!(ty("u"), ColumnType::Uuid);
        assert_eq!(ty("j"), ColumnType::Json);
        let (_, t_small) = &schemas.last().unwrap();
        assert_eq!(
            t_small.iter().map(|c| c.key).collect::<Vec<_>>(),
            vec![true, true, false, false]
        );
    }

    #[test]
    fn mariadb_fixture_compressed_rows() {
        let types: Vec<u8> = binlog_events(COMPRESSED).iter().map(|e| e.0).collect();
        assert!(types.contains(&166) && types.contains(&167) && types.contains(&168));
        let (rows, _, _) = decode_file(COMPRESSED, &overrides_for);
        let row = |id: u64, k: &str, v: i128, us: i64| {
            vec![
                Datum::UInt(id),
                text(k),
                Datum::Decimal128(v),
                ts(2001, 2, 3, 4, 5, 6, us),
            ]
        };
        let got: Vec<(Op, Vec<Datum>)> = rows.into_iter().map(|(_, op, r)| (op, r)).collect();
        assert_eq!(
            got,
            vec![
                (Op::Insert, row(2, "compressed", 32_500, 500_000)),
                (Op::Insert, row(3, "bb", 40_000, 0)),
                (Op::Update, row(2, "compressed", 70_000, 500_000)),
                (Op::Delete, row(3, "bb", 40_000, 0)),
            ]
        );
    }

    /// MariaDB 10.11 writes UUID columns to the binlog in RFC byte order (the
    /// text order), as a BINARY(16) with trailing zero bytes stripped, for
    /// every UUID version in the fixture (v1, v4, v7, version 0, a v1 with a
    /// non-RFC variant): no segment swapping to undo.
    #[test]
    fn mariadb_fixture_uuid_byte_order() {
        let (rows, _, _) = decode_file(UUIDS, &overrides_for);
        let got: Vec<Datum> = rows.iter().map(|(_, _, r)| r[1].clone()).collect();
        assert_eq!(
            got,
            vec![
                uuid("123e4567-e89b-12d3-a456-426614174000"),
                uuid("00000000-0000-0000-0000-000000000001"),
                uuid("f81d4fae-7dec-41d0-a765-00a0c91e6bf6"),
                uuid("01890a5d-ac96-774b-bcce-b302099a8057"),
                uuid("6ccd780c-baba-1026-0000-000000000000"),
            ]
        );
        assert_eq!(rows[0].2[2], text("{\"k\": 1}"));
        assert_eq!(rows[2].2[2], text("[]"));
        assert_eq!(rows[1].2[2], Datum::Null);
    }

    #[test]
    fn mariadb_fixture_events() {
        let events = binlog_events(DDL);
        let q = events
            .iter()
            .find(|e| e.0 == et::QUERY)
            .map(|e| event::query(&e.1).unwrap())
            .unwrap();
        assert_eq!(q.schema, "tw");
        assert!(q.sql.starts_with("CREATE TABLE t_uuid"), "{}", q.sql);
        let g = events
            .iter()
            .find(|e| e.0 == et::MARIADB_GTID)
            .map(|e| event::gtid(&e.1).unwrap())
            .unwrap();
        assert!(g.standalone && g.domain_id == 0 && g.seq_no > 0);
        let (pos, name) = event::rotate(&events.last().unwrap().1).unwrap();
        assert_eq!((pos, name.as_str()), (4, "binlog.000005"));

        let list = binlog_events(UUIDS)
            .iter()
            .find(|e| e.0 == et::MARIADB_GTID_LIST)
            .map(|e| event::gtid_list(&e.1).unwrap())
            .unwrap();
        assert_eq!(list, vec![(0, 1, g.seq_no)]);
        let xids: Vec<u64> = binlog_events(UUIDS)
            .iter()
            .filter(|e| e.0 == et::XID)
            .map(|e| event::xid(&e.1).unwrap())
            .collect();
        assert_eq!(xids.len(), 1);
    }

    // ---- hand-built events -------------------------------------------------

    /// A rows event body: header, then the given row bytes.
    fn rows_body(table_id: u64, v2: bool, ncols: usize, update: bool, rows: &[u8]) -> Vec<u8> {
        let mut b = table_id.to_le_bytes()[..6].to_vec();
        b.extend_from_slice(&[1, 0]);
        if v2 {
            b.extend_from_slice(&[5, 0, 1, 2, 3]); // extra data: length 5 incl. itself
        }
        b.push(ncols as u8);
        let full: Vec<u8> = (0..ncols.div_ceil(8))
            .map(|i| {
                if (i + 1) * 8 <= ncols {
                    0xff
                } else {
                    (1u8 << (ncols % 8)) - 1
                }
            })
            .collect();
        b.extend_from_slice(&full);
        if update {
            b.extend_from_slice(&full);
        }
        b.extend_from_slice(rows);
        b
    }

    fn plan_for(cols: &[(u8, &[u8])], tlvs: Vec<(u8, Vec<u8>)>) -> RowPlan {
        let names: Vec<String> = (0..cols.len()).map(|i| format!("c{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut all = vec![names_tlv(&names)];
        all.extend(tlvs);
        let map = parse_table_map(&table_map_body(7, cols, &all)).unwrap();
        plan(&map, &[], &charsets).unwrap()
    }

    fn decode_one(
        plan: &RowPlan,
        event_type: u8,
        v2: bool,
        row: &[u8],
    ) -> Result<Vec<Datum>, DecodeError> {
        let body = rows_body(7, v2, plan.ops.len(), false, row);
        let mut out = Vec::new();
        decode_both(event_type, &body, plan, &mut out)?;
        assert_eq!(out.len(), 1);
        Ok(out.pop().unwrap().1)
    }

    #[test]
    fn integers_sign_extend_and_unsigned() {
        let p = plan_for(
            &[
                (ct::INT24, &[]),
                (ct::INT24, &[]),
                (ct::INT24, &[]),
                (ct::LONGLONG, &[]),
            ],
            vec![(1, vec![0b0001_0000])],
        );
        let mut row = vec![0u8];
        row.extend_from_slice(&[0xff, 0xff, 0xff]);
        row.extend_from_slice(&[0x00, 0x00, 0x80]);
        row.extend_from_slice(&[0xff, 0xff, 0x7f]);
        row.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            decode_one(&p, 30, true, &row).unwrap(),
            vec![
                Datum::Int32(-1),
                Datum::Int32(-8_388_608),
                Datum::Int32(8_388_607),
                Datum::UInt(u64::MAX)
            ]
        );
    }

    #[test]
    fn decimal_binary_format() {
        // Examples from the MySQL manual's decimal storage section.
        let l = DecimalLayout::new(14, 4).unwrap();
        assert_eq!(l.size, 7);
        let pos = [0x81, 0x0d, 0xfb, 0x38, 0xd2, 0x04, 0xd2];
        assert_eq!(l.decode(&pos), Ok(Datum::Decimal128(12_345_678_901_234)));
        let neg = [0x7e, 0xf2, 0x04, 0xc7, 0x2d, 0xfb, 0x2d];
        assert_eq!(l.decode(&neg), Ok(Datum::Decimal128(-12_345_678_901_234)));
        // DECIMAL(10,0): 1 leading digit (1 byte) + one 9-digit group.
        let l = DecimalLayout::new(10, 0).unwrap();
        assert_eq!(l.size, 5);
        assert_eq!(
            l.decode(&[0x89, 0x3b, 0x9a, 0xc9, 0xff]),
            Ok(Datum::Decimal128(9_999_999_999))
        );
        assert_eq!(l.decode(&[0x80, 0, 0, 0, 0]), Ok(Datum::Decimal128(0)));
        // DECIMAL(5,5): only a 5-digit fraction (3 bytes).
        let l = DecimalLayout::new(5, 5).unwrap();
        assert_eq!(l.size, 3);
        assert_eq!(l.decode(&[0x81, 0x86, 0x9f]), Ok(Datum::Decimal128(99_999)));
        assert_eq!(l.decode(&[0x7f, 0xff, 0xfe]), Ok(Datum::Decimal128(-1)));
        // A group of nines above 999999999 is corrupt, not a wrong number.
        let l = DecimalLayout::new(18, 0).unwrap();
        assert!(l.decode(&[0xff; 8]).is_err());
        // (38, x) still fits Decimal128; (39, x) is Decimal256.
        let l = DecimalLayout::new(38, 0).unwrap();
        let max: Vec<u8> = {
            // 2 leading digits (1 byte, 99) + four groups of 999999999.
            let mut v = vec![0x80 | 99];
            for _ in 0..4 {
                v.extend_from_slice(&999_999_999u32.to_be_bytes());
            }
            v
        };
        assert_eq!(l.decode(&max), Ok(Datum::Decimal128(10i128.pow(38) - 1)));
        assert!(DecimalLayout::new(66, 0).is_none());
        assert!(DecimalLayout::new(10, 11).is_none());
    }

    /// MySQL's `my_time_packed_to_binary`, for round-trips.
    fn time2_bytes(negative: bool, h: i64, m: i64, s: i64, us: i64, fsp: u8) -> Vec<u8> {
        let hms = (h << 12) | (m << 6) | s;
        let frac = match fsp {
            0 => 0,
            1 | 2 => us / 10_000 * 10_000,
            3 | 4 => us / 100 * 100,
            _ => us,
        };
        let mut packed = (hms << 24) + frac;
        if negative {
            packed = -packed;
        }
        let n = fsp_bytes(fsp);
        match n {
            0 => ((packed >> 24) + 0x80_0000).to_be_bytes()[5..].to_vec(),
            1 | 2 => {
                let mut int_part = packed >> 24;
                let mut f = packed & 0xff_ffff;
                let unit = if n == 1 { 10_000 } else { 100 };
                let mut fr = if packed < 0 && f != 0 {
                    // Borrow, as MySQL does for negative values with a fraction.
                    int_part = -(((-packed) >> 24) + 1);
                    f = (-packed) & 0xff_ffff;
                    (1i64 << (8 * n)) - f / unit
                } else {
                    f / unit
                };
                if packed < 0 && f == 0 {
                    int_part = -((-packed) >> 24);
                    fr = 0;
                }
                let mut v = (int_part + 0x80_0000).to_be_bytes()[5..].to_vec();
                v.extend_from_slice(&fr.to_be_bytes()[8 - n..]);
                v
            }
            _ => (packed + 0x8000_0000_0000).to_be_bytes()[2..].to_vec(),
        }
    }

    #[test]
    fn time2_round_trips() {
        for fsp in 0..=6u8 {
            for &(neg, h, m, s, us) in &[
                (false, 0, 0, 0, 0),
                (true, 0, 0, 0, 500_000),
                (true, 0, 0, 1, 500_000),
                (true, 838, 59, 59, 0),
                (false, 838, 59, 59, 990_000),
                (true, 12, 34, 56, 780_000),
                (true, 0, 0, 0, 10_000),
            ] {
                let bytes = time2_bytes(neg, h, m, s, us, fsp);
                let want = match fsp {
                    0 => 0,
                    1 | 2 => us / 10_000 * 10_000,
                    3 | 4 => us / 100 * 100,
                    _ => us,
                };
                let expect = hms(neg, h, m, s, want);
                assert_eq!(
                    Datum::Duration(time2_micros(&bytes, fsp_bytes(fsp)).unwrap()),
                    expect,
                    "fsp {fsp} {neg} {h}:{m}:{s}.{us}"
                );
            }
        }
        // From the fixture server: TIME(2) '-00:00:00.50' and TIME(6) '-00:00:00.000001'.
        assert_eq!(time2_micros(&[0x7f, 0xff, 0xff, 0xce], 1), Ok(-500_000));
        assert_eq!(
            time2_micros(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff], 3),
            Ok(-1)
        );
    }

    #[test]
    fn temporal_types() {
        let p = plan_for(
            &[
                (ct::DATETIME2, &[6]),
                (ct::DATETIME2, &[0]),
                (ct::TIMESTAMP2, &[4]),
                (ct::DATE, &[]),
                (ct::DATETIME, &[]),
                (ct::TIMESTAMP, &[]),
                (ct::TIME, &[]),
                (ct::YEAR, &[]),
            ],
            vec![],
        );
        let dt2 = |y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64| {
            let ymd = ((y * 13 + mo) << 5) | d;
            let int_part = (ymd << 17) | (h << 12) | (mi << 6) | s;
            (int_part + 0x80_0000_0000).to_be_bytes()[3..].to_vec()
        };
        let mut row = vec![0u8];
        row.extend(dt2(9999, 12, 31, 23, 59, 59));
        row.extend_from_slice(&999_999u32.to_be_bytes()[1..]);
        row.extend(dt2(2020, 0, 5, 0, 0, 0)); // partially zero
        row.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        row.extend_from_slice(&1234u16.to_be_bytes()); // .1234 at fsp 4
        let date = (2021u32 << 9) | (2 << 5) | 30; // 2021-02-30 does not exist
        row.extend_from_slice(&date.to_le_bytes()[..3]);
        row.extend_from_slice(&20_240_229_123_456u64.to_le_bytes());
        row.extend_from_slice(&0u32.to_le_bytes()); // zero TIMESTAMP
        row.extend_from_slice(&(-8_385_959i32).to_le_bytes()[..3]); // -838:59:59
        row.push(0);
        let body = rows_body(7, false, 8, false, &row);
        let mut out = Vec::new();
        let stats = decode_both(23, &body, &p, &mut out).unwrap();
        assert_eq!(stats.zero_dates, 3);
        assert_eq!(
            out[0].1,
            vec![
                ts(9999, 12, 31, 23, 59, 59, 999_999),
                Datum::Null,
                Datum::Timestamp(1_700_000_000 * MICROS_PER_SECOND + 123_400),
                Datum::Null,
                ts(2024, 2, 29, 12, 34, 56, 0),
                Datum::Null,
                hms(true, 838, 59, 59, 0),
                Datum::Int16(0),
            ]
        );
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn strings_enums_sets_bits() {
        let p = plan_for(
            &[
                (ct::STRING, &[0xfe, 4]),     // BINARY(4)
                (ct::VARCHAR, &[0x2c, 0x01]), // latin1 VARCHAR(300): 2-byte length
                (ct::STRING, &[0xf7, 1]),
                (ct::STRING, &[0xf8, 1]),
                (ct::BIT, &[0, 8]),
                (ct::BLOB, &[2]),
            ],
            vec![
                (3, vec![63, 8, 45]),
                (11, vec![45, 45]),
                (6, vec![2, 1, b'a', 1, b'b']),
                (5, vec![4, 1, b'p', 1, b'q', 1, b'r', 2, b's', b's']),
            ],
        );
        let mut row = vec![0u8];
        row.extend_from_slice(&[2, 0xab, 0]); // "ab\0" shortened: trailing zeros padded back
        row.extend_from_slice(&[2, 0, 0xe9, 0x80]);
        row.push(0); // enum index 0: ''
        row.push(0b1101);
        row.extend_from_slice(&[0xff; 8]);
        row.extend_from_slice(&[3, 0, b'a', b'b', b'c']);
        assert_eq!(
            decode_one(&p, 23, false, &row).unwrap(),
            vec![
                Datum::Bytes(
                    vec![2, 0xab, 0, 0][1..]
                        .iter()
                        .copied()
                        .chain([0])
                        .collect()
                ),
                text("é€"),
                text(""),
                texts(&["p", "r", "ss"]),
                Datum::UInt(u64::MAX),
                text("abc"),
            ]
        );
        let mut bad = row.clone();
        bad[8] = 3; // enum index past the labels
        let err = decode_one(&p, 23, false, &bad).unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidValue { ref column, offset, .. } if column == "c2" && offset > 0),
            "{err}"
        );
        let mut bad = row.clone();
        bad[9] = 0b1_0000; // set bit past the labels
        assert!(decode_one(&p, 23, false, &bad).is_err());
    }

    #[test]
    fn invalid_text_is_an_error_without_the_value() {
        let p = plan_for(&[(ct::VARCHAR, &[40, 0])], vec![(3, vec![45])]);
        let err = decode_one(&p, 23, false, &[0, 2, 0xc3, 0x28]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("c0") && msg.contains("varchar(10)"), "{msg}");
        // The bad value's bytes hold a `(`: only the type's may show.
        assert!(!msg.replace("varchar(10)", "").contains('('), "{msg}");
    }

    /// A small MySQL 8 binary JSON encoder for tests (keys in the given order).
    fn jsonb(v: &serde_json::Value, large: bool) -> Vec<u8> {
        let (t, body) = jsonb_value(v, large);
        let mut out = vec![t];
        out.extend(body);
        out
    }

    fn jsonb_value(v: &serde_json::Value, large: bool) -> (u8, Vec<u8>) {
        use serde_json::Value;
        match v {
            Value::Null => (0x04, vec![0]),
            Value::Bool(b) => (0x04, vec![if *b { 1 } else { 2 }]),
            Value::Number(n) if n.is_i64() => (0x09, n.as_i64().unwrap().to_le_bytes().to_vec()),
            Value::Number(n) if n.is_u64() => (0x0a, n.as_u64().unwrap().to_le_bytes().to_vec()),
            Value::Number(n) => (0x0b, n.as_f64().unwrap().to_le_bytes().to_vec()),
            Value::String(s) => {
                let mut b = Vec::new();
                let mut len = s.len();
                loop {
                    let byte = (len & 0x7f) as u8;
                    len >>= 7;
                    if len == 0 {
                        b.push(byte);
                        break;
                    }
                    b.push(byte | 0x80);
                }
                b.extend_from_slice(s.as_bytes());
                (0x0c, b)
            }
            Value::Array(_) | Value::Object(_) => {
                let w = if large { 4 } else { 2 };
                let entries: Vec<(Option<&str>, &Value)> = match v {
                    Value::Array(a) => a.iter().map(|x| (None, x)).collect(),
                    Value::Object(o) => o.iter().map(|(k, x)| (Some(k.as_str()), x)).collect(),
                    _ => unreachable!(),
                };
                let is_obj = matches!(v, Value::Object(_));
                let n = entries.len();
                let header = 2 * w + if is_obj { n * (w + 2) } else { 0 } + n * (1 + w);
                let mut tail = Vec::new();
                let mut keys = Vec::new();
                let mut vals = Vec::new();
                for (k, _) in &entries {
                    if let Some(k) = k {
                        keys.push((header + tail.len(), k.len()));
                        tail.extend_from_slice(k.as_bytes());
                    }
                }
                for (_, x) in &entries {
                    let (t, body) = jsonb_value(x, large);
                    if t == 0x04 {
                        let mut inline = body.clone();
                        inline.resize(w, 0);
                        vals.push((t, inline));
                    } else {
                        let off = header + tail.len();
                        tail.extend(body);
                        vals.push((t, off.to_le_bytes()[..w].to_vec()));
                    }
                }
                let size = header + tail.len();
                let mut out = Vec::new();
                out.extend_from_slice(&n.to_le_bytes()[..w]);
                out.extend_from_slice(&size.to_le_bytes()[..w]);
                for (off, len) in keys {
                    out.extend_from_slice(&off.to_le_bytes()[..w]);
                    out.extend_from_slice(&(len as u16).to_le_bytes());
                }
                for (t, inline) in vals {
                    out.push(t);
                    out.extend(inline);
                }
                out.extend(tail);
                let t = match (is_obj, large) {
                    (true, false) => 0x00,
                    (true, true) => 0x01,
                    (false, false) => 0x02,
                    (false, true) => 0x03,
                };
                (t, out)
            }
        }
    }

    #[test]
    fn binary_json_columns() {
        let doc = serde_json::json!({"a": [1, 2.5, "s\u{1}\"\\é😀\n", null, true, false, -7],
                                      "b": {"c": {"d": []}}, "big": 18446744073709551615u64});
        let p = plan_for(&[(ct::LONG, &[]), (ct::JSON, &[4])], vec![]);
        for large in [false, true] {
            let bytes = jsonb(&doc, large);
            let mut row = vec![0u8];
            row.extend_from_slice(&5i32.to_le_bytes());
            row.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            row.extend_from_slice(&bytes);
            let got = decode_one(&p, 30, true, &row).unwrap();
            assert_eq!(got[1], text(&serde_json::to_string(&doc).unwrap()));
        }
        let cols = p.columns();
        assert_eq!(
            (cols[1].ty.clone(), cols[1].source_type.as_str()),
            (ColumnType::Json, "json")
        );
    }

    #[test]
    fn update_emits_after_image_and_skips_before() {
        let p = plan_for(
            &[(ct::LONG, &[]), (ct::VARCHAR, &[10, 0])],
            vec![(3, vec![45])],
        );
        let mut rows = Vec::new();
        for (id, before, after) in [(1i32, "old", "new"), (2, "x", "yy")] {
            rows.push(0);
            rows.extend_from_slice(&id.to_le_bytes());
            rows.push(before.len() as u8);
            rows.extend_from_slice(before.as_bytes());
            rows.push(0b10); // after image: c1 NULL
            rows.extend_from_slice(&id.to_le_bytes());
            let _ = after;
        }
        let body = rows_body(7, true, 2, true, &rows);
        let mut out = Vec::new();
        decode_both(31, &body, &p, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                (Op::Update, vec![Datum::Int32(1), Datum::Null]),
                (Op::Update, vec![Datum::Int32(2), Datum::Null]),
            ]
        );
    }

    /// One image of `(id INT, name VARCHAR(10))`; `None` is NULL.
    fn id_name_image(id: Option<i32>, name: Option<&str>) -> Vec<u8> {
        let mut b = vec![u8::from(id.is_none()) | u8::from(name.is_none()) << 1];
        if let Some(id) = id {
            b.extend_from_slice(&id.to_le_bytes());
        }
        if let Some(name) = name {
            b.push(name.len() as u8);
            b.extend_from_slice(name.as_bytes());
        }
        b
    }

    fn id_name(id: i32, name: &str) -> Vec<Datum> {
        vec![Datum::Int32(id), text(name)]
    }

    #[test]
    fn update_changing_key_emits_delete_of_old_image() {
        // PRIMARY KEY (c0): the table map's SIMPLE_PRIMARY_KEY metadata.
        let p = plan_for(
            &[(ct::LONG, &[]), (ct::VARCHAR, &[10, 0])],
            vec![(3, vec![45]), (8, vec![0])],
        );
        assert_eq!(p.keys, [0]);
        let update = |pairs: &[(Vec<u8>, Vec<u8>)]| {
            let rows: Vec<u8> = pairs
                .iter()
                .flat_map(|(b, a)| [&b[..], a].concat())
                .collect();
            rows_body(7, true, 2, true, &rows)
        };
        // UPDATE t SET id = 100 WHERE id = 5: the old key goes.
        let changed = update(&[(
            id_name_image(Some(5), Some("old")),
            id_name_image(Some(100), Some("new")),
        )]);
        let mut out = Vec::new();
        decode_both(31, &changed, &p, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                (Op::Delete, id_name(5, "old")),
                (Op::Update, id_name(100, "new")),
            ]
        );
        // Same key, other values: only the new image, as before.
        let same = update(&[(
            id_name_image(Some(5), Some("old")),
            id_name_image(Some(5), Some("new")),
        )]);
        let mut out = Vec::new();
        decode_both(31, &same, &p, &mut out).unwrap();
        assert_eq!(out, vec![(Op::Update, id_name(5, "new"))]);
        // Several rows, NULL vs a value (a changed key), a NULL key on both sides
        // (unchanged), v1 and v2 layouts.
        let mixed = [
            (
                id_name_image(Some(1), Some("a")),
                id_name_image(Some(1), None),
            ),
            (
                id_name_image(Some(2), Some("b")),
                id_name_image(Some(3), Some("b")),
            ),
            (id_name_image(None, Some("c")), id_name_image(Some(4), None)),
            (
                id_name_image(None, Some("d")),
                id_name_image(None, Some("e")),
            ),
        ];
        let rows: Vec<u8> = mixed
            .iter()
            .flat_map(|(b, a)| [&b[..], a].concat())
            .collect();
        let want = vec![
            (Op::Update, vec![Datum::Int32(1), Datum::Null]),
            (Op::Delete, id_name(2, "b")),
            (Op::Update, id_name(3, "b")),
            (Op::Delete, vec![Datum::Null, text("c")]),
            (Op::Update, vec![Datum::Int32(4), Datum::Null]),
            (Op::Update, vec![Datum::Null, text("e")]),
        ];
        for (t, v2) in [(24, false), (31, true)] {
            let mut out = Vec::new();
            decode_both(t, &rows_body(7, v2, 2, true, &rows), &p, &mut out).unwrap();
            assert_eq!(out, want, "event type {t}");
        }
        // Without key columns nothing changes: the new images only.
        let no_key = plan_for(
            &[(ct::LONG, &[]), (ct::VARCHAR, &[10, 0])],
            vec![(3, vec![45])],
        );
        let mut out = Vec::new();
        decode_both(31, &changed, &no_key, &mut out).unwrap();
        assert_eq!(out, vec![(Op::Update, id_name(100, "new"))]);
        // A key column after a non-key one: PRIMARY KEY (c1) changes.
        let name_key = plan_for(
            &[(ct::LONG, &[]), (ct::VARCHAR, &[10, 0])],
            vec![(3, vec![45]), (8, vec![1])],
        );
        let mut out = Vec::new();
        decode_both(31, &same, &name_key, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                (Op::Delete, id_name(5, "old")),
                (Op::Update, id_name(5, "new")),
            ]
        );
        // The columnar rows of a key-changing row roll back with a failed event.
        let mut bad = id_name_image(Some(9), Some("new"));
        bad[6] = 0xff; // invalid UTF-8 in the after image
        let failing = update(&[
            (
                id_name_image(Some(5), Some("old")),
                id_name_image(Some(6), Some("new")),
            ),
            (id_name_image(Some(8), Some("old")), bad),
        ]);
        let err = decode_both(31, &failing, &p, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("charset"), "{err}");
        let mut columnar = ColumnarRows::new(&p);
        decode_rows_columnar(31, &changed, &p, &mut columnar).unwrap();
        assert!(decode_rows_columnar(31, &failing, &p, &mut columnar).is_err());
        assert_eq!(columnar.ops(), &[Op::Delete, Op::Update]);
        assert_columnar_eq(
            &p,
            &mut columnar,
            &[
                (Op::Delete, id_name(5, "old")),
                (Op::Update, id_name(100, "new")),
            ],
        );
    }

    #[test]
    fn update_key_change_needs_key_and_full_before_image() {
        // PRIMARY KEY (c0), two INT columns, binlog_row_image = MINIMAL: the
        // before image holds the key only.
        let p = plan_for(&[(ct::LONG, &[]), (ct::LONG, &[])], vec![(8, vec![0])]);
        let minimal = |before_present: u8, before: &[u8], after: &[u8]| {
            let mut b = rows_body(7, false, 2, true, &[]);
            b[9] = before_present;
            b.extend_from_slice(before);
            b.extend_from_slice(after);
            b
        };
        // Key unchanged: fine, the new image.
        let same = minimal(0b01, &[0, 1, 0, 0, 0], &[0, 1, 0, 0, 0, 2, 0, 0, 0]);
        let mut out = Vec::new();
        decode_both(24, &same, &p, &mut out).unwrap();
        assert_eq!(
            out,
            vec![(Op::Update, vec![Datum::Int32(1), Datum::Int32(2)])]
        );
        // Key changed: the old image would need c1, which MINIMAL left out.
        let changed = minimal(0b01, &[0, 1, 0, 0, 0], &[0, 3, 0, 0, 0, 2, 0, 0, 0]);
        let err = decode_both(24, &changed, &p, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, DecodeError::PartialImage { ref column } if column == "c1"));
        // No key in the before image: whether it changed is unknown.
        let keyless = minimal(0b10, &[0, 2, 0, 0, 0], &[0, 1, 0, 0, 0, 2, 0, 0, 0]);
        let err = decode_both(24, &keyless, &p, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, DecodeError::PartialImage { ref column } if column == "c0"));
        // A truncated after image reports the same error as without a key.
        let no_key = plan_for(&[(ct::LONG, &[]), (ct::LONG, &[])], vec![]);
        let short = minimal(0b11, &[0, 1, 0, 0, 0, 2, 0, 0, 0], &[0, 1, 0]);
        let keyed = decode_both(24, &short, &p, &mut Vec::new()).unwrap_err();
        let plain = decode_both(24, &short, &no_key, &mut Vec::new()).unwrap_err();
        assert_eq!(keyed.to_string(), plain.to_string());
    }

    #[test]
    fn partial_images_and_unsupported_events_are_errors() {
        let p = plan_for(&[(ct::LONG, &[]), (ct::LONG, &[])], vec![]);
        let mut body = rows_body(7, false, 2, false, &[0, 1, 0, 0, 0]);
        body[9] = 0b01; // c1 absent (binlog_row_image = MINIMAL)
        let err = decode_both(25, &body, &p, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, DecodeError::PartialImage { ref column } if column == "c1"));
        assert!(err.to_string().contains("binlog_row_image"));
        // An update whose before image is minimal (key only) but after image full is fine.
        let mut body = rows_body(
            7,
            false,
            2,
            true,
            &[0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0],
        );
        body[9] = 0b01;
        body.remove(14); // before image: one column → 1-byte bitmap, 4-byte value
        body.splice(10..10, []);
        let mut out = Vec::new();
        let fixed = {
            let mut b = rows_body(7, false, 2, true, &[]);
            b[9] = 0b01;
            b.extend_from_slice(&[0, 1, 0, 0, 0]);
            b.extend_from_slice(&[0, 1, 0, 0, 0, 2, 0, 0, 0]);
            b
        };
        decode_both(24, &fixed, &p, &mut out).unwrap();
        assert_eq!(
            out,
            vec![(Op::Update, vec![Datum::Int32(1), Datum::Int32(2)])]
        );

        let err = decode_both(39, &body, &p, &mut Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("binlog_row_value_options"),
            "{err}"
        );
        assert!(is_rows_event(39) && rows_kind(39).is_none());
        let other = rows_body(8, false, 2, false, &[]);
        assert!(matches!(
            decode_both(23, &other, &p, &mut Vec::new()),
            Err(DecodeError::TableMismatch {
                expected: 7,
                got: 8
            })
        ));
    }

    #[test]
    fn plan_errors_name_the_setting() {
        let map = parse_table_map(&table_map_body(1, &[(ct::LONG, &[])], &[])).unwrap();
        let err = plan(&map, &[], &charsets).unwrap_err();
        assert!(
            err.to_string().contains("binlog_row_metadata = FULL"),
            "{err}"
        );
        let map = parse_table_map(&table_map_body(
            1,
            &[(ct::VARCHAR, &[10, 0])],
            &[names_tlv(&["name"]), (3, vec![99])],
        ))
        .unwrap();
        let err = plan(&map, &[], &charsets).unwrap_err();
        assert!(
            matches!(err, DecodeError::UnknownCharset { ref column, collation: 99, .. } if column == "name")
        );
        let map = parse_table_map(&table_map_body(
            1,
            &[(ct::VARCHAR, &[10, 0])],
            &[names_tlv(&["name"]), (3, vec![45])],
        ))
        .unwrap();
        assert!(plan(&map, &[special(Special::Uuid)], &charsets).is_err());
        let map =
            parse_table_map(&table_map_body(1, &[(ct::LONG, &[])], &[names_tlv(&["n"])])).unwrap();
        assert!(plan(&map, &[special(Special::Inet4)], &charsets).is_err());
        assert!(plan(&map, &[ColumnOverride::default()], &charsets).is_ok());
    }

    #[test]
    fn geometry_ewkb_big_endian() {
        let mut g = 3857u32.to_le_bytes().to_vec();
        g.extend_from_slice(&[0, 0, 0, 0, 1]);
        g.extend_from_slice(&1f64.to_be_bytes());
        g.extend_from_slice(&2f64.to_be_bytes());
        let out = geometry_to_wkb(&g).unwrap();
        assert_eq!(&out[..9], &[0, 0x20, 0, 0, 1, 0, 0, 0x0f, 0x11]);
        assert_eq!(out.len(), g.len());
        assert!(geometry_to_wkb(&[1, 0, 0, 0, 7, 1, 0, 0, 0]).is_err());
    }

    #[test]
    fn inet6_text_matches_mariadb() {
        // `SELECT CAST(x AS INET6)` on the MariaDB 10.11 fixture server.
        for (input, server) in [
            ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
            ("::1.2.3.4", "::1.2.3.4"),
            ("::0.0.0.1", "::1"),
            ("::0.0.1.0", "::100"),
            ("::0.1.0.0", "::0.1.0.0"),
            ("::0.0.255.255", "::ffff"),
            ("::ffff:0.0.0.0", "::ffff:0.0.0.0"),
            ("::ffff:0.0.0.1", "::ffff:0.0.0.1"),
            ("::ffff:0:1.2.3.4", "::ffff:0:102:304"),
            ("1:0:0:1:0:0:0:1", "1:0:0:1::1"),
            ("1:0:1:0:1:0:1:0", "1::1:0:1:0:1:0"),
            ("0:0:0:0:0:1:0:0", "::1:0:0"),
            ("FE80::ABCD", "fe80::abcd"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
            ("::", "::"),
        ] {
            let bytes = input.parse::<Ipv6Addr>().unwrap().octets();
            assert_eq!(format_inet6(bytes), server, "{input}");
        }
    }

    /// A failed event leaves the columnar rows as they were, even when it
    /// fails mid-row after text, list and null-bitmap buffers were written;
    /// the rows stay usable and the buffers reusable after `finish`.
    #[test]
    fn columnar_failed_event_rolls_back_whole() {
        let p = plan_for(
            &[
                (ct::STRING, &[0xfe, 4]),
                (ct::VARCHAR, &[0x2c, 0x01]),
                (ct::STRING, &[0xf7, 1]),
                (ct::STRING, &[0xf8, 1]),
                (ct::BIT, &[0, 8]),
                (ct::BLOB, &[2]),
            ],
            vec![
                (3, vec![63, 8, 45]),
                (11, vec![45, 45]),
                (6, vec![2, 1, b'a', 1, b'b']),
                (5, vec![4, 1, b'p', 1, b'q', 1, b'r', 2, b's', b's']),
            ],
        );
        let mut row = vec![0u8, 2, 0xab, 0, 2, 0, 0xe9, 0x80, 1, 0b1101];
        row.extend_from_slice(&[0xff; 8]);
        row.extend_from_slice(&[3, 0, b'a', b'b', b'c']);
        // c1 NULL: the null bitmap is materialized from here on.
        let mut null_row = vec![0b10u8, 2, 0xab, 0, 2, 0b1];
        null_row.extend_from_slice(&[7; 8]);
        null_row.extend_from_slice(&[0, 0]);
        let mut bad_set = row.clone();
        bad_set[9] = 0b1_0000;
        let mut bad_blob = row.clone();
        bad_blob[18] = 9; // blob longer than the event
        let event = |rows: &[&[u8]]| rows_body(7, false, 6, false, &rows.concat());

        let mut columnar = ColumnarRows::new(&p);
        let mut want = Vec::new();
        for (body, ok) in [
            (event(&[&row]), true),
            (event(&[&null_row, &row, &bad_set]), false),
            (event(&[&row, &null_row]), true),
            (event(&[&null_row, &bad_blob]), false),
            (event(&[&row, &row[..12]]), false),
            (event(&[&null_row]), true),
        ] {
            let before = columnar.len();
            let result = decode_rows_columnar(23, &body, &p, &mut columnar);
            assert_eq!(result.is_ok(), ok, "{result:?}");
            if ok {
                decode_rows(23, &body, &p, &mut want).unwrap();
            } else {
                assert_eq!(columnar.len(), before);
            }
        }
        assert_eq!(want.len(), 4);
        assert_columnar_eq(&p, &mut columnar, &want);
        // Reused after finish, with an update (before image skipped).
        let update = rows_body(7, false, 6, true, &[&null_row[..], &row].concat());
        let mut want = Vec::new();
        decode_rows(24, &update, &p, &mut want).unwrap();
        decode_rows_columnar(24, &update, &p, &mut columnar).unwrap();
        assert_eq!(columnar.ops(), &[Op::Update]);
        assert_columnar_eq(&p, &mut columnar, &want);
    }

    // ---- robustness --------------------------------------------------------

    /// Random and mutated bodies for every parser: only `Ok` or `Err`, never a
    /// panic. Lengths inside bodies are capped by the body size, so nothing
    /// allocates more than a small multiple of the input.
    #[test]
    fn fuzz_decoders_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x7469_6465);
        let mut corpus: Vec<(u8, Vec<u8>)> = Vec::new();
        for file in [ALL_TYPES, COMPRESSED, DDL, UUIDS, HIRES] {
            corpus.extend(binlog_events(file));
        }
        let doc = serde_json::json!({"k": [1, "two", {"x": null}], "y": 2.5});
        corpus.push((245, jsonb(&doc, false)));
        corpus.push((245, jsonb(&doc, true)));
        // Plans of the fixture tables, to push mutated rows through.
        let plans: Vec<RowPlan> = corpus
            .iter()
            .filter(|e| e.0 == et::TABLE_MAP)
            .map(|e| {
                let map = parse_table_map(&e.1).unwrap();
                plan(&map, &overrides_for(&map.table), &charsets).unwrap()
            })
            .collect();
        // A plan with every hand-built op, fed random row bytes.
        let every_op = plan_for(
            &[
                (ct::INT24, &[]),
                (ct::NEWDECIMAL, &[65, 30]),
                (ct::NEWDECIMAL, &[20, 2]),
                (ct::BIT, &[3, 2]),
                (ct::YEAR, &[]),
                (ct::DATE, &[]),
                (ct::DATETIME2, &[3]),
                (ct::TIMESTAMP2, &[6]),
                (ct::TIME2, &[2]),
                (ct::DATETIME, &[]),
                (ct::TIMESTAMP, &[]),
                (ct::TIME, &[]),
                (ct::JSON, &[2]),
                (ct::GEOMETRY, &[1]),
                (ct::STRING, &[0xfe, 4]),
                (ct::STRING, &[0xf8, 1]),
                (ct::STRING, &[0xf7, 2]),
                (ct::VARCHAR, &[0x2c, 0x01]),
                (ct::BLOB, &[1]),
            ],
            vec![
                (3, vec![63, 8, 45]),
                (11, vec![45, 45]),
                (5, vec![3, 1, b'a', 1, b'b', 1, b'c']),
                (6, vec![2, 1, b'x', 1, b'y']),
            ],
        );
        // A small table with a composite primary key (c0, c1), so that random
        // updates decode often and change keys (their before images become
        // deletes) or keep them.
        let keyed = plan_for(
            &[(ct::LONG, &[]), (ct::TINY, &[]), (ct::VARCHAR, &[10, 0])],
            vec![(3, vec![63]), (8, vec![0, 1])],
        );
        let hires = {
            let cols: &[(u8, &[u8])] = &[
                (ct::DATETIME, &[]),
                (ct::TIME, &[]),
                (ct::TIMESTAMP, &[]),
                (ct::DATETIME, &[]),
                (ct::TIME, &[]),
                (ct::TIMESTAMP, &[]),
            ];
            let names = names_tlv(&["a", "b", "c", "d", "e", "f"]);
            let map = parse_table_map(&table_map_body(9, cols, &[names])).unwrap();
            let overrides: Vec<ColumnOverride> = [1u8, 2, 3, 6, 5, 6]
                .iter()
                .map(|&fsp| special(Special::TemporalPrecision { fsp }))
                .collect();
            plan(&map, &overrides, &charsets).unwrap()
        };
        // Both decoders see every body and must agree. Each plan's columnar
        // rows accumulate across events (failed events must roll back) and are
        // compared with the Datum rows of the events that succeeded.
        type Both = (RowPlan, ColumnarRows, Vec<(Op, Vec<Datum>)>);
        let both = |plan: RowPlan| {
            let columnar = ColumnarRows::new(&plan);
            (plan, columnar, Vec::new())
        };
        let decode = |t: u8, body: &[u8], (plan, columnar, rows): &mut Both| {
            let mut out = Vec::new();
            let datum = decode_rows(t, body, plan, &mut out);
            let arrow = decode_rows_columnar(t, body, plan, columnar);
            assert_eq!(
                datum.as_ref().map_err(ToString::to_string),
                arrow.as_ref().map_err(ToString::to_string),
                "event type {t}, body {body:?}"
            );
            if datum.is_ok() {
                rows.extend(out);
            }
        };
        let check = |(plan, columnar, rows): &mut Both| {
            assert_columnar_eq(plan, columnar, rows);
            rows.clear();
        };
        let mut hires = both(hires);
        let mut every_op = both(every_op);
        let mut keyed = both(keyed);
        let mut plans: Vec<Both> = plans.into_iter().map(both).collect();
        let mut decoded_rows = 0;
        for i in 0..20_000 {
            let random_rows: Vec<u8> = (0..rng.gen_range(0..120)).map(|_| rng.gen()).collect();
            let body = rows_body(9, false, 6, false, &random_rows);
            decode(23, &body, &mut hires);
            for t in [23, 24, 30, 31] {
                let body = rows_body(7, t >= 30, 19, matches!(t, 24 | 31), &random_rows);
                decode(t, &body, &mut every_op);
                let body = rows_body(7, t >= 30, 3, matches!(t, 24 | 31), &random_rows);
                decode(t, &body, &mut keyed);
            }
            let (t, base) = &corpus[rng.gen_range(0..corpus.len())];
            let mut body = base.clone();
            match i % 4 {
                0 => {
                    for _ in 0..rng.gen_range(1..4) {
                        if !body.is_empty() {
                            let at = rng.gen_range(0..body.len());
                            body[at] = rng.gen();
                        }
                    }
                }
                1 => body.truncate(rng.gen_range(0..=body.len())),
                2 => {
                    let at = rng.gen_range(0..=body.len());
                    let junk: Vec<u8> = (0..rng.gen_range(1..16)).map(|_| rng.gen()).collect();
                    body.splice(at..at, junk);
                }
                _ => body = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect(),
            }
            let _ = parse_table_map(&body);
            let _ = decode_binary_json(&body);
            let _ = event::query(&body);
            let _ = event::query_compressed(&body);
            let _ = event::gtid(&body);
            let _ = event::gtid_list(&body);
            let _ = event::mysql_gtid(&body);
            let _ = event::rotate(&body);
            let _ = event::transaction_payload(&body);
            let _ = event::split_events(&body);
            let _ = event::heartbeat_v2(&body);
            if is_rows_event(*t) {
                for p in &mut plans {
                    decode(*t, &body, p);
                }
            }
            if let Ok(map) = parse_table_map(&body) {
                let _ = plan(&map, &[], &charsets);
            }
            if i % 1000 == 999 {
                for b in [&mut hires, &mut every_op, &mut keyed]
                    .into_iter()
                    .chain(&mut plans)
                {
                    decoded_rows += b.2.len();
                    check(b);
                }
            }
        }
        // The comparison must have had rows to compare.
        assert!(decoded_rows > 1000, "{decoded_rows}");
    }

    #[test]
    fn json_bombs_and_depth_are_errors() {
        // 200 nested one-element arrays.
        let mut v = serde_json::json!(1);
        for _ in 0..200 {
            v = serde_json::json!([v]);
        }
        let err = decode_binary_json(&jsonb(&v, false)).unwrap_err();
        assert!(err.to_string().contains("deeply"), "{err}");
        // Every entry of every level points at the same child: a DAG whose text
        // would be 2^40 elements long.
        let mut doc = vec![0x02u8];
        let levels = 40;
        let level_len = 4 + 2 * 3;
        let mut body = Vec::new();
        for l in 0..levels {
            let size = (levels - l) * level_len + 4;
            body.extend_from_slice(&2u16.to_le_bytes());
            body.extend_from_slice(&(size as u16).to_le_bytes());
            for _ in 0..2 {
                body.push(0x02);
                body.extend_from_slice(&(level_len as u16).to_le_bytes());
            }
        }
        body.extend_from_slice(&[0, 0, 4, 0]); // innermost: empty array
                                               // Offsets are relative to each level's start: every level's child is
                                               // `level_len` bytes further on.
        doc.extend(body);
        let err = decode_binary_json(&doc).unwrap_err();
        assert!(err.to_string().contains("renders larger"), "{err}");
        // The same shape with 3 levels is a valid document: [[[[],[]],[[],[]]],...].
        let mut small = vec![0x02u8];
        let levels = 3;
        for l in 0..levels {
            let size = (levels - l) * level_len + 4;
            small.extend_from_slice(&2u16.to_le_bytes());
            small.extend_from_slice(&(size as u16).to_le_bytes());
            for _ in 0..2 {
                small.push(0x02);
                small.extend_from_slice(&(level_len as u16).to_le_bytes());
            }
        }
        small.extend_from_slice(&[0, 0, 4, 0]);
        assert_eq!(
            decode_binary_json(&small).unwrap(),
            "[[[[],[]],[[],[]]],[[[],[]],[[],[]]]]"
        );
    }

    /// Throughput of the row decoder: `cargo test -p tidewater-mysql --release
    /// -- --ignored --nocapture decode_throughput`.
    #[test]
    #[ignore]
    fn decode_throughput() {
        // id INT, k BIGINT UNSIGNED, name VARCHAR(64) utf8mb4, amount DECIMAL(12,4),
        // at DATETIME(6): a typical narrow OLTP row.
        let p = plan_for(
            &[
                (ct::LONG, &[]),
                (ct::LONGLONG, &[]),
                (ct::VARCHAR, &[0, 1]),
                (ct::NEWDECIMAL, &[12, 4]),
                (ct::DATETIME2, &[6]),
            ],
            vec![(1, vec![0b0100_0000]), (3, vec![45])],
        );
        let rows_per_event = 100;
        let mut rows = Vec::new();
        for i in 0..rows_per_event as i64 {
            rows.push(0u8);
            rows.extend_from_slice(&(i as i32).to_le_bytes());
            rows.extend_from_slice(&(i as u64 * 7919).to_le_bytes());
            let name = format!("customer-{i:06}-ünïcode");
            // VARCHAR(64) utf8mb4 holds up to 256 bytes: a 2-byte length.
            rows.extend_from_slice(&(name.len() as u16).to_le_bytes());
            rows.extend_from_slice(name.as_bytes());
            // 12345678.9012 in DECIMAL(12,4): 8 integer digits (4 bytes) + 4 fraction (2).
            let mut dec = 12_345_678u32.to_be_bytes().to_vec();
            dec.extend_from_slice(&9012u16.to_be_bytes());
            dec[0] |= 0x80;
            rows.extend(dec);
            let ymd = ((2024i64 * 13 + 5) << 5) | 17;
            let int_part = (ymd << 17) | (13 << 12) | (14 << 6) | 15;
            rows.extend_from_slice(&(int_part + 0x80_0000_0000).to_be_bytes()[3..]);
            rows.extend_from_slice(&(i as u32 * 13).to_be_bytes()[1..]);
        }
        let body = rows_body(7, true, 5, false, &rows);
        let events = 20_000;
        let mb_per_s = |secs: f64| (body.len() * events) as f64 / secs / 1e6;

        let mut out = Vec::with_capacity(rows_per_event);
        let start = std::time::Instant::now();
        let mut total = 0usize;
        for _ in 0..events {
            out.clear();
            decode_rows(30, &body, &p, &mut out).unwrap();
            total += out.len();
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(out[1].1[3], Datum::Decimal128(123_456_789_012));
        println!(
            "decode_throughput datum:               {total} rows in {secs:.3} s = {:.0} rows/s, {:.0} MB/s",
            total as f64 / secs,
            mb_per_s(secs)
        );

        // What the batcher adds today: the Datum rows of a batch into Arrow
        // builders (the test oracle, which mirrors the batcher's converter).
        let batch_events = 100;
        let columns = p.columns();
        let mut batch = Vec::with_capacity(rows_per_event * batch_events);
        let start = std::time::Instant::now();
        let mut total = 0usize;
        for e in 0..events {
            decode_rows(30, &body, &p, &mut batch).unwrap();
            if e % batch_events == batch_events - 1 {
                total += datum_arrays(&columns, &batch)[0].len();
                batch.clear();
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "decode_throughput datum + arrow:       {total} rows in {secs:.3} s = {:.0} rows/s, {:.0} MB/s",
            total as f64 / secs,
            mb_per_s(secs)
        );

        for (label, batch_events) in [("finish per event:  ", 1), ("finish per 100 ev.:", 100)] {
            let mut columnar = ColumnarRows::new(&p);
            let start = std::time::Instant::now();
            let mut total = 0usize;
            let mut last = Vec::new();
            for e in 0..events {
                decode_rows_columnar(30, &body, &p, &mut columnar).unwrap();
                if e % batch_events == batch_events - 1 {
                    let (arrays, ops) = columnar.finish();
                    total += ops.len();
                    last = arrays;
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let amount = last[3]
                .as_any()
                .downcast_ref::<arrow_array::Decimal128Array>()
                .unwrap()
                .value(1);
            assert_eq!(amount, 123_456_789_012);
            println!(
                "decode_throughput columnar, {label} {total} rows in {secs:.3} s = {:.0} rows/s, {:.0} MB/s",
                total as f64 / secs,
                mb_per_s(secs)
            );
        }
    }
}
