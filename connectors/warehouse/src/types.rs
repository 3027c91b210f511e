//! The reverse type mapping: the Postgres column type a warehouse table gets
//! for each tidewater column type, the type its staging column has in the
//! binary COPY, and which type changes `ALTER TABLE … TYPE` can follow in
//! place.
//!
//! Postgres holds every value tidewater carries except two, both loud: text
//! with a NUL character (the server refuses the COPY) and unsigned 64-bit
//! integers, which become `numeric(20,0)` (exact, just not an integer type).
//! Staging columns are the target type where the binary wire form is simple
//! and `text` where it is not (numeric, json, arrays): the apply casts them,
//! so the server's own parser checks every value.

use tidewater_core::{Column, ColumnType};

/// How one source column lands in the warehouse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetType {
    /// The column type of the warehouse table (`numeric(12,2)`).
    pub ddl: String,
    /// The column type of the staging table the COPY fills.
    pub stage: &'static str,
}

impl TargetType {
    /// The staging column `column` of alias `alias` as a value of the target
    /// type.
    pub fn cast(&self, alias: &str, column: &str) -> String {
        if self.stage == self.ddl {
            format!("{alias}.{column}")
        } else {
            format!("{alias}.{column}::{}", self.ddl)
        }
    }
}

/// The warehouse type of a source column.
pub fn target_type(column: &Column) -> TargetType {
    let native = |name: &'static str| TargetType {
        ddl: name.to_string(),
        stage: name,
    };
    let cast = |ddl: String| TargetType { ddl, stage: "text" };
    match &column.ty {
        ColumnType::List(inner) => cast(format!("{}[]", element_type(inner))),
        ColumnType::Json if column.source_type.starts_with("jsonb") => cast("jsonb".into()),
        ColumnType::Json => cast("json".into()),
        ColumnType::UInt64 | ColumnType::Decimal { .. } => cast(element_type(&column.ty)),
        ty => native(native_name(ty)),
    }
}

/// Types whose staging column is the target type itself.
fn native_name(ty: &ColumnType) -> &'static str {
    match ty {
        ColumnType::Bool => "boolean",
        ColumnType::Int8 | ColumnType::Int16 | ColumnType::UInt8 => "smallint",
        ColumnType::Int32 | ColumnType::UInt16 => "integer",
        ColumnType::Int64 | ColumnType::UInt32 => "bigint",
        ColumnType::Float32 => "real",
        ColumnType::Float64 => "double precision",
        ColumnType::Text => "text",
        ColumnType::Binary => "bytea",
        ColumnType::Date => "date",
        ColumnType::Timestamp => "timestamp without time zone",
        ColumnType::TimestampTz => "timestamp with time zone",
        ColumnType::Time => "time without time zone",
        // MySQL TIME (±838 h) and other elapsed times: microseconds exactly.
        ColumnType::Duration => "interval",
        ColumnType::Uuid => "uuid",
        ColumnType::UInt64
        | ColumnType::Decimal { .. }
        | ColumnType::Json
        | ColumnType::List(_) => "text",
    }
}

/// The type of a value of `ty` as an array element or a cast target.
fn element_type(ty: &ColumnType) -> String {
    match ty {
        ColumnType::UInt64 => "numeric(20,0)".into(),
        // Postgres 15 takes a negative scale, but older warehouses do not:
        // numeric(p - s, 0) holds the same values.
        ColumnType::Decimal { precision, scale } if *scale < 0 => {
            format!("numeric({},0)", *precision as i32 - *scale as i32)
        }
        ColumnType::Decimal { precision, scale } => format!("numeric({precision},{scale})"),
        ColumnType::Json => "json".into(),
        ColumnType::List(inner) => format!("{}[]", element_type(inner)),
        other => native_name(other).into(),
    }
}

/// Whether `ALTER TABLE … ALTER COLUMN … TYPE to` keeps every value of a
/// column of type `from` exactly (integer and float widening, decimals that
/// gain digits on both sides of the point, anything into text). Other
/// changes get a new column version instead (`amount__v2`), as in the lake.
pub fn widens(from: &str, to: &str) -> bool {
    if from == to {
        return true;
    }
    let rank = |t: &str| match t {
        "smallint" => Some(1),
        "integer" => Some(2),
        "bigint" => Some(3),
        _ => None,
    };
    if let (Some(a), Some(b)) = (rank(from), rank(to)) {
        return a < b;
    }
    if let (Some(a), Some(b)) = (rank(from), numeric_digits(to)) {
        // Digits before the point an integer type needs.
        let needed = [0, 5, 10, 19][a as usize];
        return b.0 - b.1 >= needed;
    }
    if let (Some((p1, s1)), Some((p2, s2))) = (numeric_digits(from), numeric_digits(to)) {
        return s2 >= s1 && p2 - s2 >= p1 - s1;
    }
    matches!((from, to), ("real", "double precision") | (_, "text"))
        && !from.ends_with("[]")
        && from != "bytea"
}

fn numeric_digits(ty: &str) -> Option<(i64, i64)> {
    let inner = ty.strip_prefix("numeric(")?.strip_suffix(')')?;
    let (p, s) = inner.split_once(',')?;
    Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
}

/// A quoted string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(ty: ColumnType, source_type: &str) -> Column {
        Column {
            name: "c".into(),
            ty,
            source_type: source_type.into(),
            key: false,
        }
    }

    #[test]
    fn mapping_keeps_values() {
        let cases = [
            (ColumnType::UInt8, "", "smallint", "smallint"),
            (ColumnType::UInt32, "", "bigint", "bigint"),
            (ColumnType::UInt64, "", "numeric(20,0)", "text"),
            (
                ColumnType::Decimal {
                    precision: 12,
                    scale: 2,
                },
                "",
                "numeric(12,2)",
                "text",
            ),
            (
                ColumnType::Decimal {
                    precision: 5,
                    scale: -2,
                },
                "",
                "numeric(7,0)",
                "text",
            ),
            (ColumnType::Json, "jsonb", "jsonb", "text"),
            (ColumnType::Json, "json", "json", "text"),
            (ColumnType::Duration, "time(6)", "interval", "interval"),
            (
                ColumnType::List(Box::new(ColumnType::Int32)),
                "",
                "integer[]",
                "text",
            ),
            (ColumnType::Uuid, "uuid", "uuid", "uuid"),
        ];
        for (ty, source, ddl, stage) in cases {
            let got = target_type(&column(ty.clone(), source));
            assert_eq!((got.ddl.as_str(), got.stage), (ddl, stage), "{ty:?}");
        }
    }

    #[test]
    fn widening_rules() {
        assert!(widens("integer", "bigint"));
        assert!(!widens("bigint", "integer"));
        assert!(widens("numeric(5,2)", "numeric(12,4)"));
        assert!(!widens("numeric(12,4)", "numeric(12,2)"));
        assert!(!widens("numeric(5,2)", "numeric(6,4)"));
        assert!(widens("integer", "numeric(10,0)"));
        assert!(!widens("bigint", "numeric(10,0)"));
        assert!(widens("real", "double precision"));
        assert!(widens("integer", "text"));
        assert!(!widens("text", "integer"));
        assert!(!widens("bytea", "text"));
    }
}
