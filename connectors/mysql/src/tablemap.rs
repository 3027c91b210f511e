//! TABLE_MAP (19): the column layout that the rows events after it refer to.
//!
//! A rows event carries only values; the table map before it (same `table_id`)
//! says how wide each value is (type code + per-type metadata) and, with
//! `binlog_row_metadata = FULL`, what the columns are called, their signedness,
//! charsets, ENUM/SET labels and the primary key. We parse it once per map and
//! resolve it into a [`crate::rows::RowPlan`].
//!
//! ```text
//!  table_id 6 | flags 2 | schema len 1, schema, 0 | table len 1, table, 0
//!  | column count (lenenc) | type code × n | meta len (lenenc), meta bytes
//!  | null bitmap ⌈n/8⌉ (LSB first)
//!  | optional metadata: { type 1 | length (lenenc) | value }*
//! ```
//!
//! The optional metadata lists do not cover every column: signedness covers the
//! *numeric* columns (YEAR included), charset lists the *character* columns and,
//! separately, the ENUM/SET columns; name/PK lists cover all columns. MySQL
//! counts VARCHAR/CHAR/BLOB (not ENUM/SET) as character columns; MariaDB counts
//! GEOMETRY too (as a blob with the binary charset). We tell the two apart by
//! the length of the column-charset list, or, for the default-charset form, by
//! whether every geometry column appears as a `binary` exception (MariaDB).
//!
//! Per-type `meta` as [`MapColumn::meta`] holds it, after resolution:
//!
//! | type                           | meta                                   |
//! |--------------------------------|----------------------------------------|
//! | VARCHAR, VAR_STRING, STRING    | maximum length in bytes                |
//! | ENUM, SET (real type of STRING)| value size in bytes                    |
//! | NEWDECIMAL                     | `precision << 8 | scale`               |
//! | BLOB, GEOMETRY, JSON           | size of the length prefix (1–4)        |
//! | FLOAT, DOUBLE                  | value size (4, 8)                      |
//! | BIT                            | length in bits                         |
//! | TIME2, DATETIME2, TIMESTAMP2   | fractional digits (0–6)                |
//! | others                         | 0                                      |

use crate::event::{Cursor, DecodeError};

/// MySQL column type codes as they appear in table maps.
pub mod column_type {
    pub const DECIMAL: u8 = 0;
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const NULL: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
    pub const NEWDATE: u8 = 14;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    pub const VECTOR: u8 = 242;
    pub const JSON: u8 = 245;
    pub const NEWDECIMAL: u8 = 246;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const TINY_BLOB: u8 = 249;
    pub const MEDIUM_BLOB: u8 = 250;
    pub const LONG_BLOB: u8 = 251;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
    pub const GEOMETRY: u8 = 255;
}

use column_type as ct;

/// A parsed TABLE_MAP event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMap {
    pub table_id: u64,
    pub schema: String,
    pub table: String,
    pub columns: Vec<MapColumn>,
}

/// One column of a table map, with its optional metadata resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapColumn {
    /// The real type: STRING columns that are ENUM or SET say so here.
    pub type_code: u8,
    /// Per-type metadata, see the table in the module docs.
    pub meta: u16,
    pub nullable: bool,
    pub name: Option<String>,
    pub unsigned: bool,
    /// Collation id of character, ENUM and SET columns.
    pub collation: Option<u32>,
    pub enum_values: Option<Vec<Vec<u8>>>,
    pub set_values: Option<Vec<Vec<u8>>>,
    pub geometry_type: Option<u32>,
    pub primary_key: bool,
}

mod metadata_type {
    pub const SIGNEDNESS: u8 = 1;
    pub const DEFAULT_CHARSET: u8 = 2;
    pub const COLUMN_CHARSET: u8 = 3;
    pub const COLUMN_NAME: u8 = 4;
    pub const SET_STR_VALUE: u8 = 5;
    pub const ENUM_STR_VALUE: u8 = 6;
    pub const GEOMETRY_TYPE: u8 = 7;
    pub const SIMPLE_PRIMARY_KEY: u8 = 8;
    pub const PRIMARY_KEY_WITH_PREFIX: u8 = 9;
    pub const ENUM_AND_SET_DEFAULT_CHARSET: u8 = 10;
    pub const ENUM_AND_SET_COLUMN_CHARSET: u8 = 11;
    pub const COLUMN_VISIBILITY: u8 = 12;
}

/// The `binary` collation, which MariaDB gives its GEOMETRY columns.
const BINARY_COLLATION: u32 = 63;

fn is_numeric(t: u8) -> bool {
    matches!(
        t,
        ct::TINY
            | ct::SHORT
            | ct::INT24
            | ct::LONG
            | ct::LONGLONG
            | ct::DECIMAL
            | ct::NEWDECIMAL
            | ct::FLOAT
            | ct::DOUBLE
            | ct::YEAR
    )
}

fn is_character(t: u8) -> bool {
    matches!(
        t,
        ct::STRING
            | ct::VAR_STRING
            | ct::VARCHAR
            | ct::BLOB
            | ct::TINY_BLOB
            | ct::MEDIUM_BLOB
            | ct::LONG_BLOB
    )
}

/// Parses a TABLE_MAP body (post-header with a 6-byte table id, v4 binlogs).
pub fn parse_table_map(body: &[u8]) -> Result<TableMap, DecodeError> {
    let mut c = Cursor::new(body);
    let table_id = c.uint(6, "table id")?;
    c.u16("table map flags")?;
    let schema = name_z(&mut c, "schema name")?;
    let table = name_z(&mut c, "table name")?;
    let count = c.lenenc_len("column count")?;
    let types = c.take(count, "column types")?;
    let meta_len = c.lenenc_len("column metadata length")?;
    let meta_start = c.pos();
    let mut meta = Cursor::new(c.take(meta_len, "column metadata")?);
    let null_bitmap = c.take(count.div_ceil(8), "null bitmap")?;

    let mut columns = Vec::with_capacity(count);
    for (i, &raw_type) in types.iter().enumerate() {
        let (type_code, m) =
            column_meta(raw_type, &mut meta).map_err(|e| shift_offset(e, meta_start))?;
        columns.push(MapColumn {
            type_code,
            meta: m,
            nullable: null_bitmap[i / 8] & (1 << (i % 8)) != 0,
            name: None,
            unsigned: false,
            collation: None,
            enum_values: None,
            set_values: None,
            geometry_type: None,
            primary_key: false,
        });
    }
    if meta.remaining() != 0 {
        return Err(DecodeError::Malformed {
            what: "column metadata longer than the types need",
            offset: meta_start + meta.pos(),
        });
    }

    while c.remaining() > 0 {
        let start = c.pos();
        let kind = c.u8("optional metadata type")?;
        let value = c.lenenc_bytes("optional metadata")?;
        let value_start = c.pos() - value.len();
        optional_metadata(kind, value, &mut columns).map_err(|e| shift_offset(e, value_start))?;
        debug_assert!(c.pos() > start);
    }

    Ok(TableMap {
        table_id,
        schema,
        table,
        columns,
    })
}

/// Errors from a sub-cursor carry offsets relative to its slice; make them
/// relative to the event body.
fn shift_offset(err: DecodeError, base: usize) -> DecodeError {
    match err {
        DecodeError::Truncated {
            what,
            offset,
            needed,
        } => DecodeError::Truncated {
            what,
            offset: offset + base,
            needed,
        },
        DecodeError::Malformed { what, offset } => DecodeError::Malformed {
            what,
            offset: offset + base,
        },
        other => other,
    }
}

fn name_z(c: &mut Cursor<'_>, what: &'static str) -> Result<String, DecodeError> {
    let len = usize::from(c.u8(what)?);
    let name = String::from_utf8_lossy(c.take(len, what)?).into_owned();
    let at = c.pos();
    if c.u8(what)? != 0 {
        return Err(DecodeError::Malformed { what, offset: at });
    }
    Ok(name)
}

/// Reads one column's metadata bytes and resolves STRING's real type.
fn column_meta(raw_type: u8, meta: &mut Cursor<'_>) -> Result<(u8, u16), DecodeError> {
    Ok(match raw_type {
        ct::FLOAT
        | ct::DOUBLE
        | ct::BLOB
        | ct::TINY_BLOB
        | ct::MEDIUM_BLOB
        | ct::LONG_BLOB
        | ct::GEOMETRY
        | ct::JSON
        | ct::TIME2
        | ct::DATETIME2
        | ct::TIMESTAMP2
        | ct::VECTOR => (raw_type, u16::from(meta.u8("column metadata")?)),
        ct::VARCHAR | ct::VAR_STRING => (raw_type, meta.u16("column metadata")?),
        ct::NEWDECIMAL | ct::DECIMAL => {
            let precision = meta.u8("decimal precision")?;
            let scale = meta.u8("decimal scale")?;
            (raw_type, u16::from(precision) << 8 | u16::from(scale))
        }
        ct::BIT => {
            let bits = meta.u8("bit length")?;
            let bytes = meta.u8("bit length")?;
            (raw_type, u16::from(bytes) * 8 + u16::from(bits))
        }
        ct::STRING | ct::ENUM | ct::SET => {
            let hi = meta.u8("string metadata")?;
            let lo = meta.u8("string metadata")?;
            // Lengths above 255 borrow bits 4–5 of the type byte, inverted.
            let (real, len) = if hi & 0x30 != 0x30 {
                (
                    hi | 0x30,
                    (u16::from((hi & 0x30) ^ 0x30) << 4) | u16::from(lo),
                )
            } else {
                (hi, u16::from(lo))
            };
            match real {
                ct::ENUM | ct::SET => (real, u16::from(lo)),
                _ => (ct::STRING, len),
            }
        }
        _ => (raw_type, 0),
    })
}

/// Applies one optional-metadata TLV to the columns.
fn optional_metadata(kind: u8, value: &[u8], columns: &mut [MapColumn]) -> Result<(), DecodeError> {
    use metadata_type as mt;
    let mut c = Cursor::new(value);
    let numeric: Vec<usize> = indexes(columns, |col| is_numeric(col.type_code));
    let enum_set: Vec<usize> = indexes(columns, |col| matches!(col.type_code, ct::ENUM | ct::SET));
    match kind {
        mt::SIGNEDNESS => {
            for (bit, &i) in numeric.iter().enumerate() {
                let Some(byte) = value.get(bit / 8) else {
                    return Err(DecodeError::Truncated {
                        what: "signedness bitmap",
                        offset: bit / 8,
                        needed: 1,
                    });
                };
                columns[i].unsigned = byte & (0x80 >> (bit % 8)) != 0;
            }
        }
        mt::DEFAULT_CHARSET | mt::COLUMN_CHARSET => {
            let collations = if kind == mt::DEFAULT_CHARSET {
                default_charset_pairs(&mut c)?
            } else {
                column_list(&mut c, "column charset")?
                    .into_iter()
                    .map(|collation| (None, collation))
                    .collect()
            };
            let with_geometry = indexes(columns, |col| {
                is_character(col.type_code) || col.type_code == ct::GEOMETRY
            });
            let without_geometry = indexes(columns, |col| is_character(col.type_code));
            let targets = if mariadb_counts_geometry(
                kind,
                &collations,
                columns,
                &with_geometry,
                &without_geometry,
            ) {
                with_geometry
            } else {
                without_geometry
            };
            apply_collations(kind, &collations, &targets, columns)?;
        }
        mt::ENUM_AND_SET_DEFAULT_CHARSET => {
            let pairs = default_charset_pairs(&mut c)?;
            apply_collations(mt::DEFAULT_CHARSET, &pairs, &enum_set, columns)?;
        }
        mt::ENUM_AND_SET_COLUMN_CHARSET => {
            let list: Vec<(Option<usize>, u32)> = column_list(&mut c, "enum/set charset")?
                .into_iter()
                .map(|collation| (None, collation))
                .collect();
            apply_collations(mt::COLUMN_CHARSET, &list, &enum_set, columns)?;
        }
        mt::COLUMN_NAME => {
            for col in columns.iter_mut() {
                let name = c.lenenc_bytes("column name")?;
                col.name = Some(String::from_utf8_lossy(name).into_owned());
            }
        }
        mt::SET_STR_VALUE | mt::ENUM_STR_VALUE => {
            let wanted = if kind == mt::SET_STR_VALUE {
                ct::SET
            } else {
                ct::ENUM
            };
            for i in indexes(columns, |col| col.type_code == wanted) {
                let n = c.lenenc_len("enum/set label count")?;
                let mut labels = Vec::with_capacity(n);
                for _ in 0..n {
                    labels.push(c.lenenc_bytes("enum/set label")?.to_vec());
                }
                if kind == mt::SET_STR_VALUE {
                    columns[i].set_values = Some(labels);
                } else {
                    columns[i].enum_values = Some(labels);
                }
            }
        }
        mt::GEOMETRY_TYPE => {
            for i in indexes(columns, |col| col.type_code == ct::GEOMETRY) {
                columns[i].geometry_type = Some(c.lenenc("geometry type")? as u32);
            }
        }
        mt::SIMPLE_PRIMARY_KEY | mt::PRIMARY_KEY_WITH_PREFIX => {
            while c.remaining() > 0 {
                let at = c.pos();
                let index = c.lenenc("primary key column")?;
                if kind == mt::PRIMARY_KEY_WITH_PREFIX {
                    c.lenenc("primary key prefix")?;
                }
                let col = usize::try_from(index)
                    .ok()
                    .and_then(|i| columns.get_mut(i))
                    .ok_or(DecodeError::Malformed {
                        what: "primary key column index",
                        offset: at,
                    })?;
                col.primary_key = true;
            }
        }
        // Invisible columns are still in every row image; nothing to do.
        mt::COLUMN_VISIBILITY => {}
        _ => {}
    }
    Ok(())
}

fn indexes(columns: &[MapColumn], keep: impl Fn(&MapColumn) -> bool) -> Vec<usize> {
    columns
        .iter()
        .enumerate()
        .filter(|(_, col)| keep(col))
        .map(|(i, _)| i)
        .collect()
}

/// DEFAULT_CHARSET form: the default collation (index `None`), then
/// `(index among the covered columns, collation)` exceptions.
fn default_charset_pairs(c: &mut Cursor<'_>) -> Result<Vec<(Option<usize>, u32)>, DecodeError> {
    let mut pairs = vec![(None, c.lenenc("default collation")? as u32)];
    while c.remaining() > 0 {
        let index = c.lenenc("charset column index")?;
        let collation = c.lenenc("charset collation")? as u32;
        pairs.push((
            Some(usize::try_from(index).unwrap_or(usize::MAX)),
            collation,
        ));
    }
    Ok(pairs)
}

fn column_list(c: &mut Cursor<'_>, what: &'static str) -> Result<Vec<u32>, DecodeError> {
    let mut list = Vec::new();
    while c.remaining() > 0 {
        list.push(c.lenenc(what)? as u32);
    }
    Ok(list)
}

/// True when the charset list follows MariaDB's rule (geometry columns count
/// as character columns). See the module docs.
fn mariadb_counts_geometry(
    kind: u8,
    collations: &[(Option<usize>, u32)],
    columns: &[MapColumn],
    with_geometry: &[usize],
    without_geometry: &[usize],
) -> bool {
    if with_geometry.len() == without_geometry.len() {
        return false;
    }
    if kind == metadata_type::COLUMN_CHARSET {
        return collations.len() == with_geometry.len();
    }
    let default = collations.first().map(|p| p.1);
    with_geometry
        .iter()
        .enumerate()
        .filter(|(_, &i)| columns[i].type_code == ct::GEOMETRY)
        .all(|(pos, _)| {
            default == Some(BINARY_COLLATION)
                || collations
                    .iter()
                    .any(|&(index, collation)| index == Some(pos) && collation == BINARY_COLLATION)
        })
}

fn apply_collations(
    kind: u8,
    collations: &[(Option<usize>, u32)],
    targets: &[usize],
    columns: &mut [MapColumn],
) -> Result<(), DecodeError> {
    if kind == metadata_type::COLUMN_CHARSET {
        if collations.len() != targets.len() {
            return Err(DecodeError::Malformed {
                what: "column charset list does not match the character columns",
                offset: 0,
            });
        }
        for (&i, &(_, collation)) in targets.iter().zip(collations) {
            columns[i].collation = Some(collation);
        }
        return Ok(());
    }
    let default = collations.first().map(|p| p.1);
    for &i in targets {
        columns[i].collation = default;
    }
    for &(index, collation) in collations.iter().skip(1) {
        let i = index
            .and_then(|n| targets.get(n))
            .ok_or(DecodeError::Malformed {
                what: "charset column index out of range",
                offset: 0,
            })?;
        columns[*i].collation = Some(collation);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a TABLE_MAP body: `(raw type, meta bytes)` per column, then TLVs.
    pub(crate) fn table_map_body(
        table_id: u64,
        cols: &[(u8, &[u8])],
        tlvs: &[(u8, Vec<u8>)],
    ) -> Vec<u8> {
        let mut b = table_id.to_le_bytes()[..6].to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(b"\x02tw\0\x01t\0");
        b.push(cols.len() as u8);
        b.extend(cols.iter().map(|c| c.0));
        let meta: Vec<u8> = cols.iter().flat_map(|c| c.1.iter().copied()).collect();
        b.push(meta.len() as u8);
        b.extend_from_slice(&meta);
        b.extend(std::iter::repeat_n(0xff, cols.len().div_ceil(8)));
        for (kind, value) in tlvs {
            b.push(*kind);
            b.push(value.len() as u8);
            b.extend_from_slice(value);
        }
        b
    }

    pub(crate) fn names_tlv(names: &[&str]) -> (u8, Vec<u8>) {
        let mut v = Vec::new();
        for n in names {
            v.push(n.len() as u8);
            v.extend_from_slice(n.as_bytes());
        }
        (metadata_type::COLUMN_NAME, v)
    }

    #[test]
    fn meta_decoding_and_real_types() {
        let body = table_map_body(
            0x0102_0304_0506,
            &[
                (ct::LONG, &[]),
                (ct::VARCHAR, &[0x2c, 0x01]),
                (ct::STRING, &[0xee, 0x90]),
                (ct::STRING, &[0xf7, 0x01]),
                (ct::STRING, &[0xf8, 0x02]),
                (ct::NEWDECIMAL, &[65, 30]),
                (ct::BIT, &[5, 0]),
                (ct::BIT, &[0, 8]),
                (ct::DATETIME2, &[6]),
                (ct::BLOB, &[4]),
                (ct::GEOMETRY, &[4]),
                (ct::DOUBLE, &[8]),
            ],
            &[
                names_tlv(&["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"]),
                // numeric: a, f(decimal), l(double)
                (metadata_type::SIGNEDNESS, vec![0b1010_0000]),
                // character: b, c, j (+ k on MariaDB); default 45, b → 8
                (metadata_type::DEFAULT_CHARSET, vec![45, 0, 8]),
                (metadata_type::ENUM_AND_SET_COLUMN_CHARSET, vec![8, 45]),
                (metadata_type::ENUM_STR_VALUE, vec![2, 1, b'x', 1, b'y']),
                (metadata_type::SET_STR_VALUE, vec![1, 2, b'p', b'q']),
                (metadata_type::GEOMETRY_TYPE, vec![1]),
                (metadata_type::SIMPLE_PRIMARY_KEY, vec![0, 2]),
                (99, vec![1, 2, 3]),
            ],
        );
        let map = parse_table_map(&body).unwrap();
        assert_eq!(map.table_id, 0x0102_0304_0506);
        assert_eq!((map.schema.as_str(), map.table.as_str()), ("tw", "t"));
        let c = &map.columns;
        assert_eq!((c[1].type_code, c[1].meta), (ct::VARCHAR, 300));
        assert_eq!((c[2].type_code, c[2].meta), (ct::STRING, 400));
        assert_eq!((c[3].type_code, c[3].meta), (ct::ENUM, 1));
        assert_eq!((c[4].type_code, c[4].meta), (ct::SET, 2));
        assert_eq!(c[5].meta, 65 << 8 | 30);
        assert_eq!((c[6].meta, c[7].meta), (5, 64));
        assert_eq!(c[8].meta, 6);
        assert!(c[0].unsigned && !c[5].unsigned && c[11].unsigned);
        assert_eq!(c[1].collation, Some(8));
        assert_eq!((c[2].collation, c[9].collation), (Some(45), Some(45)));
        assert_eq!(c[10].collation, None);
        assert_eq!((c[3].collation, c[4].collation), (Some(8), Some(45)));
        assert_eq!(c[3].enum_values, Some(vec![b"x".to_vec(), b"y".to_vec()]));
        assert_eq!(c[4].set_values, Some(vec![b"pq".to_vec()]));
        assert_eq!(c[10].geometry_type, Some(1));
        assert!(c[0].primary_key && c[2].primary_key && !c[1].primary_key);
        assert_eq!(c[11].name.as_deref(), Some("l"));
    }

    #[test]
    fn mariadb_geometry_counts_as_character() {
        let cols: &[(u8, &[u8])] = &[
            (ct::VARCHAR, &[10, 0]),
            (ct::GEOMETRY, &[4]),
            (ct::BLOB, &[2]),
        ];
        let maria = table_map_body(1, cols, &[(metadata_type::COLUMN_CHARSET, vec![45, 63, 8])]);
        let m = parse_table_map(&maria).unwrap();
        assert_eq!(
            m.columns.iter().map(|c| c.collation).collect::<Vec<_>>(),
            vec![Some(45), Some(63), Some(8)]
        );
        let mysql = table_map_body(1, cols, &[(metadata_type::COLUMN_CHARSET, vec![45, 8])]);
        let m = parse_table_map(&mysql).unwrap();
        assert_eq!(
            m.columns.iter().map(|c| c.collation).collect::<Vec<_>>(),
            vec![Some(45), None, Some(8)]
        );
        let maria_default = table_map_body(
            1,
            cols,
            &[(metadata_type::DEFAULT_CHARSET, vec![45, 1, 63, 2, 8])],
        );
        let m = parse_table_map(&maria_default).unwrap();
        assert_eq!(m.columns[2].collation, Some(8));
        let mysql_default =
            table_map_body(1, cols, &[(metadata_type::DEFAULT_CHARSET, vec![45, 1, 8])]);
        let m = parse_table_map(&mysql_default).unwrap();
        assert_eq!(m.columns[2].collation, Some(8));
    }

    #[test]
    fn truncated_maps_are_errors() {
        let body = table_map_body(
            1,
            &[(ct::VARCHAR, &[10, 0]), (ct::LONG, &[])],
            &[names_tlv(&["a", "b"])],
        );
        for len in 0..body.len() - 3 {
            // Cutting inside the fixed part or a TLV must fail, never panic.
            let _ = parse_table_map(&body[..len]);
        }
        assert!(parse_table_map(&body[..10]).is_err());
    }
}
