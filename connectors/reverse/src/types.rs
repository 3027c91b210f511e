//! The reverse type mapping: which column type a created target table gets
//! for each Arrow type of the result, and whether an existing table's
//! column holds a result column.
//!
//! The rule for existing columns: refuse where the target would change a
//! value silently (fewer decimal places, a float into an integer, an
//! integer wider than a float's mantissa, a timestamp into a date); accept
//! where the server refuses a value loudly on write (an integer beyond the
//! column's range, text longer than `varchar(n)`). Fractional seconds a
//! `timestamp(p)` / `DATETIME(p)` column would round are refused value by
//! value when written.

use datafusion::arrow::datatypes::DataType;

/// Integer width of an Arrow type: (bits, signed), or None.
fn int_width(ty: &DataType) -> Option<(u32, bool)> {
    Some(match ty {
        DataType::Int8 => (8, true),
        DataType::Int16 => (16, true),
        DataType::Int32 => (32, true),
        DataType::Int64 => (64, true),
        DataType::UInt8 => (8, false),
        DataType::UInt16 => (16, false),
        DataType::UInt32 => (32, false),
        DataType::UInt64 => (64, false),
        DataType::Dictionary(_, inner) => return int_width(inner),
        _ => return None,
    })
}

fn base(ty: &DataType) -> &DataType {
    match ty {
        DataType::Dictionary(_, inner) => base(inner),
        other => other,
    }
}

fn decimal(ty: &DataType) -> Option<(u8, i8)> {
    match base(ty) {
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => Some((*p, *s)),
        _ => None,
    }
}

fn is_text(ty: &DataType) -> bool {
    matches!(
        base(ty),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

fn is_binary(ty: &DataType) -> bool {
    matches!(
        base(ty),
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    )
}

/// The Postgres column type a created table gets.
pub fn postgres_type(ty: &DataType) -> Option<String> {
    Some(match base(ty) {
        DataType::Null => "text".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 => "numeric(20,0)".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        t if decimal(t).is_some() => {
            let (p, s) = decimal(t).expect("checked");
            if s < 0 {
                format!("numeric({},0)", p as i32 - s as i32)
            } else {
                format!("numeric({p},{s})")
            }
        }
        t if is_text(t) => "text".into(),
        t if is_binary(t) => "bytea".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Time32(_) | DataType::Time64(_) => "time without time zone".into(),
        _ => return None,
    })
}

/// The MySQL/MariaDB column type a created table gets. Key columns of text
/// or bytes get a bounded type: an index cannot cover TEXT/BLOB whole.
pub fn mysql_type(ty: &DataType, key: bool) -> Option<String> {
    Some(match base(ty) {
        DataType::Null => "LONGTEXT".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INT UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float16 | DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        t if decimal(t).is_some() => {
            let (p, s) = decimal(t).expect("checked");
            let s = s.max(0) as u8;
            if p > 65 || s > 30 {
                return None;
            }
            format!("DECIMAL({p},{s})")
        }
        // 768 characters of utf8mb4 is InnoDB's 3072-byte index limit.
        t if is_text(t) && key => "VARCHAR(768)".into(),
        t if is_text(t) => "LONGTEXT".into(),
        t if is_binary(t) && key => "VARBINARY(3072)".into(),
        t if is_binary(t) => "LONGBLOB".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        // UTC wall time: DATETIME has the range, TIMESTAMP ends in 2038.
        DataType::Timestamp(_, _) => "DATETIME(6)".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME(6)".into(),
        _ => return None,
    })
}

/// A target column as its catalog describes it.
#[derive(Debug, Clone)]
pub struct TargetColumn {
    pub name: String,
    /// As the server prints it (`numeric(12,2)`, `int(10) unsigned`).
    pub type_text: String,
    /// Lower-case base type name (`numeric`, `int`, `varchar`, `timestamptz`).
    pub base: String,
    /// Postgres `typcategory` (N, S, D, B, U, E, …); empty on MySQL.
    pub category: String,
    /// (precision, scale) of a decimal column; None when unbounded.
    pub numeric: Option<(u32, u32)>,
    /// Fractional digits of a time/timestamp column.
    pub fraction_digits: u32,
    pub nullable: bool,
    pub has_default: bool,
}

/// Why `column` cannot hold a result column of type `ty`, or None if it can.
pub fn misfit(ty: &DataType, column: &TargetColumn, mysql: bool) -> Option<String> {
    let b = column.base.as_str();
    let integer_column = if mysql {
        matches!(
            b,
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "bit"
        )
    } else {
        matches!(b, "int2" | "int4" | "int8")
    };
    let decimal_column = matches!(b, "numeric" | "decimal");
    let float_column = if mysql {
        matches!(b, "float" | "double" | "real")
    } else {
        matches!(b, "float4" | "float8")
    };
    let fits = match base(ty) {
        DataType::Null => true,
        DataType::Boolean => b == "bool" || integer_column,
        t if int_width(t).is_some() => {
            let (bits, _) = int_width(t).expect("checked");
            let mantissa = match b {
                "float4" | "float" => 24,
                "float8" | "double" | "real" => 53,
                _ => 0,
            };
            integer_column || decimal_column || float_column && bits < mantissa
        }
        DataType::Float16 | DataType::Float32 => float_column,
        DataType::Float64 => matches!(b, "float8" | "double" | "real"),
        t if decimal(t).is_some() => {
            let (_, s) = decimal(t).expect("checked");
            decimal_column
                && match column.numeric {
                    None => true,
                    Some((_, scale)) => scale as i32 >= s as i32,
                }
        }
        t if is_text(t) => {
            if mysql {
                matches!(
                    b,
                    "char"
                        | "varchar"
                        | "tinytext"
                        | "text"
                        | "mediumtext"
                        | "longtext"
                        | "enum"
                        | "set"
                        | "json"
                )
            } else {
                !matches!(column.category.as_str(), "N" | "B" | "D" | "A") && b != "bytea"
            }
        }
        t if is_binary(t) => {
            if mysql {
                matches!(
                    b,
                    "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob"
                )
            } else {
                b == "bytea"
            }
        }
        DataType::Date32 | DataType::Date64 => {
            matches!(b, "date" | "timestamp" | "timestamptz" | "datetime")
        }
        DataType::Timestamp(_, _) => matches!(b, "timestamp" | "timestamptz" | "datetime"),
        DataType::Time32(_) | DataType::Time64(_) => b == "time",
        _ => false,
    };
    if fits {
        return None;
    }
    Some(format!(
        "column {} is {} and cannot hold the result's {} without changing values",
        column.name, column.type_text, ty
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(base: &str, numeric: Option<(u32, u32)>, category: &str) -> TargetColumn {
        TargetColumn {
            name: "c".into(),
            type_text: base.into(),
            base: base.into(),
            category: category.into(),
            numeric,
            fraction_digits: 6,
            nullable: true,
            has_default: false,
        }
    }

    #[test]
    fn values_that_would_change_silently_do_not_fit() {
        let dec = DataType::Decimal128(12, 2);
        assert!(misfit(&dec, &column("numeric", Some((12, 2)), "N"), false).is_none());
        assert!(misfit(&dec, &column("numeric", Some((20, 4)), "N"), false).is_none());
        assert!(misfit(&dec, &column("numeric", Some((12, 1)), "N"), false).is_some());
        assert!(misfit(&dec, &column("decimal", Some((10, 0)), ""), true).is_some());
        assert!(misfit(&DataType::Int64, &column("float8", None, "N"), false).is_some());
        assert!(misfit(&DataType::Int32, &column("float8", None, "N"), false).is_none());
        assert!(misfit(&DataType::Float64, &column("int8", None, "N"), false).is_some());
        assert!(misfit(&DataType::Float64, &column("float4", None, "N"), false).is_some());
        let ts = DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None);
        assert!(misfit(&ts, &column("date", None, "D"), false).is_some());
        assert!(misfit(&DataType::Date32, &column("timestamp", None, "D"), false).is_none());
        assert!(misfit(&DataType::Utf8, &column("int4", None, "N"), false).is_some());
        assert!(misfit(&DataType::Utf8, &column("jsonb", None, "U"), false).is_none());
        assert!(misfit(&DataType::Utf8, &column("varchar", None, ""), true).is_none());
        assert!(misfit(&DataType::Utf8, &column("int", None, ""), true).is_some());
        // Range is the server's to check, loudly.
        assert!(misfit(&DataType::Int64, &column("int4", None, "N"), false).is_none());
        assert!(misfit(&DataType::Int64, &column("int", None, ""), true).is_none());
    }

    #[test]
    fn created_columns_hold_their_type() {
        assert_eq!(
            postgres_type(&DataType::Decimal128(20, 2)).unwrap(),
            "numeric(20,2)"
        );
        assert_eq!(mysql_type(&DataType::Utf8, true).unwrap(), "VARCHAR(768)");
        assert_eq!(mysql_type(&DataType::Utf8, false).unwrap(), "LONGTEXT");
        assert!(mysql_type(&DataType::Decimal256(70, 2), false).is_none());
        assert!(postgres_type(&DataType::List(std::sync::Arc::new(
            datafusion::arrow::datatypes::Field::new("e", DataType::Int32, true)
        )))
        .is_none());
    }
}
