//! Postgres types onto tidewater column types (DESIGN §4).
//!
//! The first supported set is mapped to its exact Arrow type. Every other type
//! (and unconstrained `numeric`, whose NaN/±Infinity and unbounded digits no
//! Arrow decimal holds) lands as Utf8 holding Postgres's own text output, which
//! round-trips exactly; the field metadata names the source type so readers can
//! cast it back.

use tidewater_core::ColumnType;

pub const BOOL: u32 = 16;
pub const BYTEA: u32 = 17;
pub const CHAR: u32 = 18;
pub const NAME: u32 = 19;
pub const INT8: u32 = 20;
pub const INT2: u32 = 21;
pub const INT4: u32 = 23;
pub const TEXT: u32 = 25;
pub const JSON: u32 = 114;
pub const FLOAT4: u32 = 700;
pub const FLOAT8: u32 = 701;
pub const BPCHAR: u32 = 1042;
pub const VARCHAR: u32 = 1043;
pub const DATE: u32 = 1082;
pub const TIME: u32 = 1083;
pub const TIMESTAMP: u32 = 1114;
pub const TIMESTAMPTZ: u32 = 1184;
pub const NUMERIC: u32 = 1700;
pub const UUID: u32 = 2950;
pub const JSONB: u32 = 3802;

/// Element type of the array types of the supported set.
fn array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => BOOL,
        1001 => BYTEA,
        1002 => CHAR,
        1003 => NAME,
        1005 => INT2,
        1007 => INT4,
        1016 => INT8,
        1009 => TEXT,
        199 => JSON,
        1021 => FLOAT4,
        1022 => FLOAT8,
        1014 => BPCHAR,
        1015 => VARCHAR,
        1182 => DATE,
        1183 => TIME,
        1115 => TIMESTAMP,
        1185 => TIMESTAMPTZ,
        1231 => NUMERIC,
        2951 => UUID,
        3807 => JSONB,
        _ => return None,
    })
}

/// Precision and scale of a `numeric(p,s)` type modifier, when it is one Arrow
/// can hold (0 <= s <= p <= 76).
fn numeric_modifier(type_modifier: i32) -> Option<(u8, i8)> {
    if type_modifier < 4 {
        return None;
    }
    let packed = type_modifier - 4;
    let precision = (packed >> 16) & 0xffff;
    // Postgres 15 allows negative scales, stored as 11-bit two's complement.
    let scale = ((packed & 0x7ff) ^ 1024) - 1024;
    if !(1..=76).contains(&precision) || scale < 0 || scale > precision {
        return None;
    }
    Some((precision as u8, scale as i8))
}

/// The column type of a column declared with `dims` array dimensions
/// (`pg_attribute.attndims`; `int[][]` has 2): one `List` per dimension.
/// Postgres does not enforce the declared count; a value with another one is
/// an error when it arrives, never reshaped.
pub fn column_type_dims(type_oid: u32, type_modifier: i32, dims: i32) -> ColumnType {
    let mut ty = column_type(type_oid, type_modifier);
    if matches!(ty, ColumnType::List(_)) {
        for _ in 1..dims.min(6) {
            ty = ColumnType::List(Box::new(ty));
        }
    }
    ty
}

/// The column type for a Postgres type oid and modifier. Array element
/// modifiers follow the array's (Postgres keeps one typmod for both).
pub fn column_type(type_oid: u32, type_modifier: i32) -> ColumnType {
    if let Some(element) = array_element(type_oid) {
        return ColumnType::List(Box::new(column_type(element, type_modifier)));
    }
    match type_oid {
        BOOL => ColumnType::Bool,
        INT2 => ColumnType::Int16,
        INT4 => ColumnType::Int32,
        INT8 => ColumnType::Int64,
        FLOAT4 => ColumnType::Float32,
        FLOAT8 => ColumnType::Float64,
        NUMERIC => match numeric_modifier(type_modifier) {
            Some((precision, scale)) => ColumnType::Decimal { precision, scale },
            None => ColumnType::Text,
        },
        TEXT | VARCHAR | BPCHAR | CHAR | NAME => ColumnType::Text,
        BYTEA => ColumnType::Binary,
        DATE => ColumnType::Date,
        TIMESTAMP => ColumnType::Timestamp,
        TIMESTAMPTZ => ColumnType::TimestampTz,
        TIME => ColumnType::Time,
        UUID => ColumnType::Uuid,
        JSON | JSONB => ColumnType::Json,
        _ => ColumnType::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_modifiers() {
        let typmod = |p: i32, s: i32| ((p << 16) | (s & 0x7ff)) + 4;
        assert_eq!(
            column_type(NUMERIC, typmod(12, 2)),
            ColumnType::Decimal {
                precision: 12,
                scale: 2
            }
        );
        assert_eq!(
            column_type(NUMERIC, typmod(60, 10)),
            ColumnType::Decimal {
                precision: 60,
                scale: 10
            }
        );
        assert_eq!(column_type(NUMERIC, -1), ColumnType::Text);
        assert_eq!(column_type(NUMERIC, typmod(5, -2)), ColumnType::Text);
        assert_eq!(column_type(NUMERIC, typmod(100, 2)), ColumnType::Text);
    }

    #[test]
    fn arrays_map_to_lists() {
        assert_eq!(
            column_type(1007, -1),
            ColumnType::List(Box::new(ColumnType::Int32))
        );
        assert_eq!(
            column_type(1186, -1),
            ColumnType::Text,
            "interval falls back to text"
        );
    }
}
