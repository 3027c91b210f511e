//! The production table a job writes: Postgres or MySQL/MariaDB, chosen by
//! the scheme of `target_url`.

mod mysql;
mod postgres;

use crate::error::ReverseError;
use crate::types::{self, TargetColumn};
use crate::value::Value;
use datafusion::arrow::datatypes::DataType;

pub use self::mysql::MysqlTarget;
pub use self::postgres::PostgresTarget;

/// `schema.table` (Postgres) or `database.table` (MySQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// An existing target table.
#[derive(Debug, Clone)]
pub struct Described {
    pub columns: Vec<TargetColumn>,
    /// Column sets of the primary key and every unique index.
    pub unique_keys: Vec<Vec<String>>,
}

pub enum Target {
    Postgres(PostgresTarget),
    Mysql(MysqlTarget),
}

impl Target {
    pub async fn connect(url: &str, statement_timeout_ms: u64) -> Result<Self, ReverseError> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme {
            "postgres" | "postgresql" => Ok(Target::Postgres(
                PostgresTarget::connect(url, statement_timeout_ms).await?,
            )),
            "mysql" | "mariadb" => {
                let url = match url.strip_prefix("mariadb://") {
                    Some(rest) => format!("mysql://{rest}"),
                    None => url.to_string(),
                };
                Ok(Target::Mysql(
                    MysqlTarget::connect(&url, statement_timeout_ms).await?,
                ))
            }
            _ => Err(ReverseError::Target {
                action: "reading target_url".into(),
                message: "it must start with postgres:// or mysql://".into(),
                retryable: false,
            }),
        }
    }

    pub fn is_mysql(&self) -> bool {
        matches!(self, Target::Mysql(_))
    }

    /// `target_table` as this kind of server names it: Postgres defaults to
    /// schema `public`, MySQL to the URL's database.
    pub fn table_name(&self, target_table: &str) -> Result<TableName, ReverseError> {
        let (schema, table) = match target_table.split_once('.') {
            Some((schema, table)) => (schema.to_string(), table.to_string()),
            None => match self {
                Target::Postgres(_) => ("public".to_string(), target_table.to_string()),
                Target::Mysql(my) => match my.default_database() {
                    Some(db) => (db, target_table.to_string()),
                    None => {
                        return Err(ReverseError::Result {
                            problem: format!("target_table {target_table} names no database"),
                            hint: "write it as database.table, or put the database in target_url"
                                .into(),
                        })
                    }
                },
            },
        };
        if schema.is_empty() || table.is_empty() {
            return Err(ReverseError::Result {
                problem: format!("target_table {target_table} is not schema.table"),
                hint: "write it as schema.table (database.table on MySQL)".into(),
            });
        }
        Ok(TableName { schema, table })
    }

    /// The column type a created table gets for a result column.
    pub fn column_type(&self, ty: &DataType, key: bool) -> Option<String> {
        match self {
            Target::Postgres(_) => types::postgres_type(ty),
            Target::Mysql(_) => types::mysql_type(ty, key),
        }
    }

    pub async fn describe(&mut self, table: &TableName) -> Result<Option<Described>, ReverseError> {
        match self {
            Target::Postgres(pg) => pg.describe(table).await,
            Target::Mysql(my) => my.describe(table).await,
        }
    }

    pub async fn create(
        &mut self,
        table: &TableName,
        columns: &[(String, String, bool)],
    ) -> Result<(), ReverseError> {
        match self {
            Target::Postgres(pg) => pg.create(table, columns).await,
            Target::Mysql(my) => my.create(table, columns).await,
        }
    }

    pub async fn upsert(
        &mut self,
        table: &TableName,
        columns: &[TargetColumn],
        key: &[usize],
        rows: &[Vec<Value>],
    ) -> Result<(), ReverseError> {
        match self {
            Target::Postgres(pg) => pg.upsert(table, columns, key, rows).await,
            Target::Mysql(my) => my.upsert(table, columns, key, rows).await,
        }
    }

    pub async fn delete(
        &mut self,
        table: &TableName,
        key_columns: &[TargetColumn],
        keys: &[Vec<Value>],
    ) -> Result<(), ReverseError> {
        match self {
            Target::Postgres(pg) => pg.delete(table, key_columns, keys).await,
            Target::Mysql(my) => my.delete(table, key_columns, keys).await,
        }
    }

    /// Reconnects when the last error lost the connection.
    pub async fn recover(&mut self) -> Result<(), ReverseError> {
        match self {
            Target::Postgres(pg) if pg.is_closed() => pg.reconnect().await,
            Target::Mysql(my) if my.is_closed() => my.reconnect().await,
            _ => Ok(()),
        }
    }
}

/// What a value of `column` would lose to rounding, for the error.
pub(crate) fn rounded(column: &TargetColumn) -> String {
    format!(
        "has fractional seconds that {} would round",
        column.type_text
    )
}

/// Err when `us` has more fractional digits than `column` keeps.
pub(crate) fn check_fraction(us: i64, column: &TargetColumn) -> Result<(), ()> {
    let digits = column.fraction_digits.min(6);
    let unit = 10i64.pow(6 - digits);
    if us.rem_euclid(unit) == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// The column list of a CREATE TABLE for `columns` (name, type, in the key)
/// with its primary key: `a bigint<key>, b text<other>, PRIMARY KEY (a)`,
/// names quoted by `quote`.
pub(crate) fn table_definition(
    columns: &[(String, String, bool)],
    quote: fn(&str) -> String,
    key_null: &str,
    other_null: &str,
) -> String {
    let mut defs: Vec<String> = columns
        .iter()
        .map(|(name, ty, key)| {
            let null = if *key { key_null } else { other_null };
            format!("{} {ty}{null}", quote(name))
        })
        .collect();
    let key: Vec<String> = columns
        .iter()
        .filter(|c| c.2)
        .map(|c| quote(&c.0))
        .collect();
    defs.push(format!("PRIMARY KEY ({})", key.join(", ")));
    defs.join(", ")
}
