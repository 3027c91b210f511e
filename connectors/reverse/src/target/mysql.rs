//! A MySQL/MariaDB target table: described from `information_schema`,
//! created from the result's types, written one bounded transaction at a
//! time.
//!
//! ```text
//!  upsert: INSERT INTO t (c…) VALUES (?…),(?…)… ON DUPLICATE KEY UPDATE c = VALUES(c)…
//!  delete: DELETE FROM t WHERE (k…) IN ((?…),…)
//! ```
//!
//! A transaction's rows go out in statements of at most 60 000
//! placeholders (the protocol's limit is 65 535). The session is strict
//! (`STRICT_ALL_TABLES`) so an out-of-range or too-long value fails the
//! write instead of being clipped, and in UTC so timestamps land as the
//! lake holds them. `VALUES(c)` works on MariaDB and MySQL 8 (deprecated
//! there, not removed).

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Params, Row, TxOpts};
use tidewater_endpoint::mysql::Endpoint;
use tidewater_endpoint::quote::backticked as quote;

use super::{check_fraction, rounded, Described, TableName};
use crate::error::{redact, ReverseError};
use crate::types::TargetColumn;
use crate::value::{self, Value};

const MAX_PLACEHOLDERS: usize = 60_000;

pub struct MysqlTarget {
    endpoint: Endpoint,
    database: Option<String>,
    conn: Conn,
    statement_timeout_ms: u64,
    closed: bool,
}

fn target_error(action: &str, err: mysql_async::Error) -> ReverseError {
    let (retryable, message) = match &err {
        // 1205 lock wait timeout, 1213 deadlock, 1969 MariaDB statement
        // timeout, 3024 MySQL execution time exceeded, 1040 too many
        // connections, 1927 connection killed.
        mysql_async::Error::Server(server) => (
            matches!(server.code, 1205 | 1213 | 1969 | 3024 | 1040 | 1927),
            format!("{} (error {})", redact(&server.message), server.code),
        ),
        mysql_async::Error::Io(_) => (true, err.to_string()),
        other => (false, other.to_string()),
    };
    ReverseError::Target {
        action: action.to_string(),
        message,
        retryable,
    }
}

impl MysqlTarget {
    pub async fn connect(url: &str, statement_timeout_ms: u64) -> Result<Self, ReverseError> {
        // TLS as for the source: `ssl-mode` / `ssl-ca` in the url.
        let url_error = |message: String| ReverseError::Target {
            action: "reading target_url".into(),
            message,
            retryable: false,
        };
        let endpoint = Endpoint::new(url).map_err(|e| url_error(e.to_string()))?;
        let (rest, _) =
            tidewater_endpoint::mysql::parse_url(url).map_err(|e| url_error(e.to_string()))?;
        let database = Opts::from_url(&rest)
            .map_err(|e| url_error(e.to_string()))?
            .db_name()
            .map(str::to_string);
        let conn = Self::open(&endpoint, statement_timeout_ms).await?;
        Ok(Self {
            endpoint,
            database,
            conn,
            statement_timeout_ms,
            closed: false,
        })
    }

    async fn open(endpoint: &Endpoint, statement_timeout_ms: u64) -> Result<Conn, ReverseError> {
        let mut conn = endpoint.connect().await.map_err(|e| ReverseError::Target {
            action: "connecting".into(),
            message: crate::error::redact(&e.to_string()),
            retryable: e.class() == tidewater_core::ErrorClass::Transient,
        })?;
        let lock_s = (statement_timeout_ms / 4000).max(1);
        conn.query_drop(format!(
            "SET SESSION time_zone = '+00:00', SESSION innodb_lock_wait_timeout = {lock_s}, \
             SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')"
        ))
        .await
        .map_err(|e| target_error("setting up the session", e))?;
        // MariaDB bounds every statement; MySQL 8 has no such setting for
        // writes (its max_execution_time is for SELECT), so its lock wait
        // timeout is the bound there.
        let _ = conn
            .query_drop(format!(
                "SET SESSION max_statement_time = {}",
                statement_timeout_ms as f64 / 1000.0
            ))
            .await;
        Ok(conn)
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub async fn reconnect(&mut self) -> Result<(), ReverseError> {
        self.conn = Self::open(&self.endpoint, self.statement_timeout_ms).await?;
        self.closed = false;
        Ok(())
    }

    /// The database a table without one is in.
    pub fn default_database(&self) -> Option<String> {
        self.database.clone()
    }

    fn qualified(table: &TableName) -> String {
        format!("{}.{}", quote(&table.schema), quote(&table.table))
    }

    pub async fn describe(&mut self, table: &TableName) -> Result<Option<Described>, ReverseError> {
        let rows: Vec<Row> = self
            .conn
            .exec(
                "SELECT COLUMN_NAME, COLUMN_TYPE, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, \
                        DATETIME_PRECISION, IS_NULLABLE = 'YES', \
                        (COLUMN_DEFAULT IS NOT NULL OR EXTRA LIKE '%auto_increment%' \
                         OR EXTRA LIKE '%GENERATED%') \
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
                 ORDER BY ORDINAL_POSITION",
                (&table.schema, &table.table),
            )
            .await
            .map_err(|e| target_error("reading the target table's columns", e))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut columns = Vec::with_capacity(rows.len());
        for row in rows {
            let text = |i: usize| -> String {
                row.get::<Option<String>, _>(i)
                    .flatten()
                    .unwrap_or_default()
            };
            let number = |i: usize| -> Option<u32> { row.get::<Option<u32>, _>(i).flatten() };
            let base = text(2).to_lowercase();
            let numeric = matches!(base.as_str(), "decimal" | "numeric")
                .then(|| (number(3).unwrap_or(10), number(4).unwrap_or(0)));
            columns.push(TargetColumn {
                name: text(0),
                type_text: text(1),
                base,
                category: String::new(),
                numeric,
                fraction_digits: number(5).unwrap_or(0),
                nullable: row.get::<Option<i64>, _>(6).flatten() == Some(1),
                has_default: row.get::<Option<i64>, _>(7).flatten() == Some(1),
            });
        }
        let index_rows: Vec<(String, String)> = self
            .conn
            .exec(
                "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
                 ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                (&table.schema, &table.table),
            )
            .await
            .map_err(|e| target_error("reading the target table's unique keys", e))?;
        let mut unique_keys: Vec<Vec<String>> = Vec::new();
        let mut last: Option<String> = None;
        for (index, column) in index_rows {
            if last.as_deref() != Some(index.as_str()) {
                unique_keys.push(Vec::new());
                last = Some(index);
            }
            unique_keys.last_mut().expect("pushed").push(column);
        }
        Ok(Some(Described {
            columns,
            unique_keys,
        }))
    }

    pub async fn create(
        &mut self,
        table: &TableName,
        columns: &[(String, String, bool)],
    ) -> Result<(), ReverseError> {
        let sql = format!(
            "CREATE TABLE {} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            Self::qualified(table),
            super::table_definition(columns, quote, " NOT NULL", " NULL")
        );
        self.conn
            .query_drop(sql)
            .await
            .map_err(|e| target_error("creating the target table", e))
    }

    pub async fn upsert(
        &mut self,
        table: &TableName,
        columns: &[TargetColumn],
        key: &[usize],
        rows: &[Vec<Value>],
    ) -> Result<(), ReverseError> {
        let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
        let rest: Vec<&String> = (0..columns.len())
            .filter(|i| !key.contains(i))
            .map(|i| &names[i])
            .collect();
        let update = if rest.is_empty() {
            // Every column is the key: nothing to change on a duplicate.
            format!("{0} = {0}", names[key[0]])
        } else {
            rest.iter()
                .map(|n| format!("{n} = VALUES({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let tuple = format!("({})", vec!["?"; columns.len()].join(","));
        let per_statement = (MAX_PLACEHOLDERS / columns.len().max(1)).max(1);
        let mut statements = Vec::new();
        for chunk in rows.chunks(per_statement) {
            let sql = format!(
                "INSERT INTO {} ({}) VALUES {} ON DUPLICATE KEY UPDATE {update}",
                Self::qualified(table),
                names.join(", "),
                vec![tuple.as_str(); chunk.len()].join(",")
            );
            let mut params = Vec::with_capacity(chunk.len() * columns.len());
            for row in chunk {
                for (value, column) in row.iter().zip(columns) {
                    params.push(param(value, column)?);
                }
            }
            statements.push((sql, params));
        }
        self.transaction(statements, "upserting rows").await
    }

    pub async fn delete(
        &mut self,
        table: &TableName,
        key_columns: &[TargetColumn],
        keys: &[Vec<Value>],
    ) -> Result<(), ReverseError> {
        let names: Vec<String> = key_columns.iter().map(|c| quote(&c.name)).collect();
        let tuple = format!("({})", vec!["?"; key_columns.len()].join(","));
        let per_statement = (MAX_PLACEHOLDERS / key_columns.len().max(1)).max(1);
        let mut statements = Vec::new();
        for chunk in keys.chunks(per_statement) {
            let sql = format!(
                "DELETE FROM {} WHERE ({}) IN ({})",
                Self::qualified(table),
                names.join(", "),
                vec![tuple.as_str(); chunk.len()].join(",")
            );
            let mut params = Vec::with_capacity(chunk.len() * key_columns.len());
            for row in chunk {
                for (value, column) in row.iter().zip(key_columns) {
                    params.push(param(value, column)?);
                }
            }
            statements.push((sql, params));
        }
        self.transaction(statements, "deleting rows").await
    }

    async fn transaction(
        &mut self,
        statements: Vec<(String, Vec<mysql_async::Value>)>,
        action: &str,
    ) -> Result<(), ReverseError> {
        let result = async {
            let mut tx = self.conn.start_transaction(TxOpts::default()).await?;
            for (sql, params) in statements {
                tx.exec_drop(sql, Params::Positional(params)).await?;
            }
            tx.commit().await
        }
        .await;
        result.map_err(|e| {
            if matches!(e, mysql_async::Error::Io(_)) {
                self.closed = true;
            }
            target_error(action, e)
        })
    }
}

/// `value` as a statement parameter for `column`.
fn param(value: &Value, column: &TargetColumn) -> Result<mysql_async::Value, ReverseError> {
    use chrono::{Datelike, Timelike};
    use mysql_async::Value as M;
    let bad = |what: &str| ReverseError::Result {
        problem: format!("a value of column {} {what}", column.name),
        hint: "filter or cast it in the query".into(),
    };
    let fraction = |us: i64| check_fraction(us, column).map_err(|_| bad(&rounded(column)));
    Ok(match value {
        Value::Null => M::NULL,
        Value::Bool(b) => M::Int(*b as i64),
        Value::Int(v) => M::Int(*v),
        Value::UInt(v) => M::UInt(*v),
        Value::Float(v) if v.is_finite() => M::Double(*v),
        Value::Real(v) if v.is_finite() => M::Float(*v),
        Value::Float(_) | Value::Real(_) => {
            return Err(bad("is NaN or infinite, which MySQL cannot store"))
        }
        Value::Decimal(s) | Value::Text(s) => M::Bytes(s.clone().into_bytes()),
        Value::Bytes(b) => M::Bytes(b.clone()),
        Value::Date(d) => {
            let d = value::date(*d)
                .filter(|d| d.year() >= 0 && d.year() <= 9999)
                .ok_or_else(|| bad("is outside the years 0–9999 MySQL holds"))?;
            M::Date(d.year() as u16, d.month() as u8, d.day() as u8, 0, 0, 0, 0)
        }
        Value::Timestamp(us) | Value::TimestampTz(us) => {
            fraction(*us)?;
            let t = value::timestamp(*us)
                .filter(|t| t.year() >= 0 && t.year() <= 9999)
                .ok_or_else(|| bad("is outside the years 0–9999 MySQL holds"))?;
            M::Date(
                t.year() as u16,
                t.month() as u8,
                t.day() as u8,
                t.hour() as u8,
                t.minute() as u8,
                t.second() as u8,
                t.nanosecond() / 1000,
            )
        }
        Value::Time(us) => {
            fraction(*us)?;
            let t = value::time(*us).ok_or_else(|| bad("is out of range"))?;
            M::Time(
                false,
                0,
                t.hour() as u8,
                t.minute() as u8,
                t.second() as u8,
                t.nanosecond() / 1000,
            )
        }
    })
}
