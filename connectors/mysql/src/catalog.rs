//! What `information_schema` tells us: the server flavor, which tables the
//! config selects, their columns, and collation ids → charsets.
//!
//! The binlog's TABLE_MAP (with `binlog_row_metadata=FULL`) is what decodes rows
//! while streaming; the catalog adds what the table map cannot say (MariaDB
//! `UUID`, `INET6`, `INET4`, `JSON` as a checked LONGTEXT) and gives the
//! snapshot its schema. Both paths map types through [`catalog_type`] and the
//! row decoder's plan, which follow the same table (DESIGN §4), and spell the
//! declared type the same way ([`canonical_source_type`]), so a table's schema
//! does not change when it goes from snapshot to stream, nor when a table map
//! is read after a later DDL and only the binlog describes it.

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tidewater_core::{Column, ColumnType, TableFilter, TableId};
/// Backtick-quotes an identifier.
pub use tidewater_endpoint::quote::backticked as quote_ident;

use crate::error::{query_error, MysqlError};
use crate::rows::{ColumnOverride, Special};

/// Which server we talk to; a few statements differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    MariaDb,
    MySql,
}

impl Flavor {
    pub fn detect(version: &str) -> Flavor {
        if version.to_ascii_lowercase().contains("mariadb") {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        }
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flavor::MariaDb => "MariaDB",
            Flavor::MySql => "MySQL",
        })
    }
}

/// Databases that are never captured.
const SYSTEM_DATABASES: [&str; 4] = ["mysql", "information_schema", "performance_schema", "sys"];

/// Whether tables of `database` are the server's own, never captured.
pub fn is_system_database(database: &str) -> bool {
    SYSTEM_DATABASES.contains(&database)
}

/// Base tables the filter selects, sorted.
pub async fn list_tables(
    conn: &mut Conn,
    filter: &TableFilter,
) -> Result<Vec<TableId>, MysqlError> {
    let rows: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' ORDER BY 1, 2",
        )
        .await
        .map_err(query_error("listing tables"))?;
    Ok(rows
        .into_iter()
        .filter(|(db, _)| !is_system_database(db))
        .map(|(db, table)| TableId::new(db, table))
        .filter(|t| filter.matches(t))
        .collect())
}

/// One column as the catalog declares it.
#[derive(Debug, Clone)]
pub struct CatalogColumn {
    pub name: String,
    pub data_type: String,
    /// The declared type text (`int(10) unsigned`, `enum('a','b')`).
    pub column_type: String,
    pub charset: Option<String>,
    pub precision: Option<u64>,
    pub scale: Option<u64>,
    pub key: bool,
    /// MariaDB JSON: a LONGTEXT with a `json_valid` check.
    pub json: bool,
    /// Fractional-second digits of a temporal column.
    pub fsp: u8,
}

impl CatalogColumn {
    /// The override the row decoder needs for types the table map cannot name.
    pub fn override_for_stream(&self) -> ColumnOverride {
        let special = match self.data_type.as_str() {
            "uuid" => Some(Special::Uuid),
            "inet6" => Some(Special::Inet6),
            "inet4" => Some(Special::Inet4),
            "json" => Some(Special::Json),
            _ if self.json => Some(Special::Json),
            // Old-format temporal columns carry no precision in the table
            // map; harmless for the current formats, which do.
            "datetime" | "timestamp" | "time" if self.fsp > 0 => {
                Some(Special::TemporalPrecision { fsp: self.fsp })
            }
            _ => None,
        };
        ColumnOverride {
            special,
            source_type: Some(self.source_type()),
        }
    }

    /// The column's `tidewater.source_type`, in the canonical spelling (see
    /// [`canonical_source_type`]).
    pub fn source_type(&self) -> String {
        if self.json && self.data_type != "json" {
            "json".to_string()
        } else {
            canonical_source_type(&self.column_type)
        }
    }

    pub fn unsigned(&self) -> bool {
        self.column_type.contains("unsigned")
    }
}

/// A declared type (`information_schema.COLUMNS.COLUMN_TYPE`) spelt as a
/// table map with full metadata spells it, so a column carries one
/// `tidewater.source_type` whether its schema came from the catalog (snapshot,
/// a copy again) or from the binlog (a table map read after a later DDL, when
/// the catalog no longer matches it). What the binlog does not carry is left
/// out: integer display widths (`int(11)` → `int`; MySQL 8.0.19+ no longer
/// reports them either), `zerofill`, the `(M,D)` of FLOAT/DOUBLE and the `(4)`
/// of YEAR. Everything else (`varchar(200)`, `decimal(12,4) unsigned`,
/// `enum('a','b')`, `datetime(6)`) is kept as the server writes it.
pub fn canonical_source_type(column_type: &str) -> String {
    let text = column_type.trim();
    let text = text.strip_suffix(" zerofill").unwrap_or(text);
    let base_len = text
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (base, rest) = text.split_at(base_len);
    let widthless = matches!(
        base.to_ascii_lowercase().as_str(),
        "tinyint"
            | "smallint"
            | "mediumint"
            | "int"
            | "integer"
            | "bigint"
            | "float"
            | "double"
            | "real"
            | "year"
    );
    match rest.strip_prefix('(').and_then(|r| r.split_once(')')) {
        Some((_, after)) if widthless => format!("{base}{after}"),
        _ => text.to_string(),
    }
}

/// The columns of `table` in ordinal order (empty if it does not exist).
pub async fn table_columns(
    conn: &mut Conn,
    table: &TableId,
) -> Result<Vec<CatalogColumn>, MysqlError> {
    type Raw = (
        String,
        String,
        String,
        Option<String>,
        Option<u64>,
        Option<u64>,
        String,
        Option<u64>,
    );
    let rows: Vec<Raw> = conn
        .exec(
            "SELECT COLUMN_NAME, LOWER(DATA_TYPE), LOWER(COLUMN_TYPE), CHARACTER_SET_NAME, \
             NUMERIC_PRECISION, NUMERIC_SCALE, COLUMN_KEY, DATETIME_PRECISION \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (&table.schema, &table.table),
        )
        .await
        .map_err(query_error(format!("reading the columns of {table}")))?;
    // MariaDB's JSON is LONGTEXT plus a column check `json_valid(`c`)`;
    // MySQL has no CHECK_CONSTRAINTS.LEVEL column, so a failure here just
    // means "no such checks".
    let checks: Vec<(String, String)> = conn
        .exec(
            "SELECT CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ? AND LEVEL = 'Column'",
            (&table.schema, &table.table),
        )
        .await
        .unwrap_or_default();
    let json_columns: Vec<String> = checks
        .into_iter()
        .filter(|(name, clause)| {
            clause.replace(' ', "").to_ascii_lowercase()
                == format!("json_valid(`{}`)", name.to_ascii_lowercase())
        })
        .map(|(name, _)| name)
        .collect();
    Ok(rows
        .into_iter()
        .map(
            |(name, data_type, column_type, charset, precision, scale, key, fsp)| CatalogColumn {
                json: json_columns.contains(&name),
                name,
                data_type,
                column_type,
                charset,
                precision,
                scale,
                key: key == "PRI",
                fsp: fsp.and_then(|f| u8::try_from(f).ok()).unwrap_or(0),
            },
        )
        .collect())
}

/// The tidewater type of a catalog column: the same answer the row decoder's
/// plan gives for the table map of that column.
pub fn catalog_type(column: &CatalogColumn) -> Option<ColumnType> {
    let unsigned = column.unsigned();
    let binary_charset = column.charset.as_deref() == Some("binary");
    Some(match column.data_type.as_str() {
        "tinyint" if unsigned => ColumnType::UInt8,
        "tinyint" => ColumnType::Int8,
        "smallint" if unsigned => ColumnType::UInt16,
        "smallint" => ColumnType::Int16,
        "mediumint" | "int" | "integer" if unsigned => ColumnType::UInt32,
        "mediumint" | "int" | "integer" => ColumnType::Int32,
        "bigint" if unsigned => ColumnType::UInt64,
        "bigint" => ColumnType::Int64,
        "float" => ColumnType::Float32,
        "double" | "real" => ColumnType::Float64,
        "decimal" | "numeric" => ColumnType::Decimal {
            precision: u8::try_from(column.precision?).ok()?,
            scale: i8::try_from(column.scale.unwrap_or(0)).ok()?,
        },
        "bit" => ColumnType::UInt64,
        "year" => ColumnType::Int16,
        "date" => ColumnType::Date,
        "datetime" => ColumnType::Timestamp,
        "timestamp" => ColumnType::TimestampTz,
        "time" => ColumnType::Duration,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" if binary_charset => {
            ColumnType::Binary
        }
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" if column.json => {
            ColumnType::Json
        }
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => ColumnType::Text,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            ColumnType::Binary
        }
        "enum" => ColumnType::Text,
        "set" => ColumnType::List(Box::new(ColumnType::Text)),
        "json" => ColumnType::Json,
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => ColumnType::Binary,
        "uuid" => ColumnType::Uuid,
        "inet6" | "inet4" => ColumnType::Text,
        _ => return None,
    })
}

/// The snapshot schema's columns of a table.
pub fn schema_columns(
    table: &TableId,
    columns: &[CatalogColumn],
) -> Result<Vec<Column>, MysqlError> {
    columns
        .iter()
        .map(|c| {
            let ty = catalog_type(c).ok_or_else(|| MysqlError::SnapshotValue {
                table: table.clone(),
                column: c.name.clone(),
                what: format!("type {} is not supported", c.column_type),
            })?;
            Ok(Column {
                name: c.name.clone(),
                ty,
                source_type: c.source_type(),
                key: c.key,
            })
        })
        .collect()
}

/// Collation id → charset name, from the server itself.
pub async fn charsets(conn: &mut Conn) -> Result<HashMap<u32, String>, MysqlError> {
    let rows: Vec<(u64, String)> = conn
        .query(
            "SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE ID IS NOT NULL",
        )
        .await
        .map_err(query_error("reading collations"))?;
    Ok(rows.into_iter().map(|(id, cs)| (id as u32, cs)).collect())
}

pub fn quote_table(table: &TableId) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.table)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The catalog's spelling of a type, canonical: what a table map with
    /// full metadata spells (`rows::plan`), so one column never carries two.
    #[test]
    fn canonical_source_types_drop_what_the_binlog_cannot_carry() {
        for (declared, canonical) in [
            ("int(11)", "int"),
            ("int(10) unsigned", "int unsigned"),
            ("int(5) unsigned zerofill", "int unsigned"),
            ("tinyint(1)", "tinyint"),
            ("bigint(20) unsigned", "bigint unsigned"),
            ("mediumint(9)", "mediumint"),
            ("year(4)", "year"),
            ("float(7,3)", "float"),
            ("double(10,2) unsigned", "double unsigned"),
            ("int", "int"),
            ("decimal(12,4)", "decimal(12,4)"),
            ("decimal(5,2) unsigned", "decimal(5,2) unsigned"),
            ("varchar(200)", "varchar(200)"),
            ("char(10)", "char(10)"),
            ("binary(16)", "binary(16)"),
            ("datetime(6)", "datetime(6)"),
            ("bit(1)", "bit(1)"),
            ("enum('a','it''s')", "enum('a','it''s')"),
            ("set('int(11)')", "set('int(11)')"),
            ("longtext", "longtext"),
        ] {
            assert_eq!(canonical_source_type(declared), canonical, "{declared}");
        }
    }
}
