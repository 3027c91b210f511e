//! A Postgres target table: described from the catalog, created from the
//! result's types, written one bounded transaction at a time.
//!
//! ```text
//!  upsert: INSERT INTO t (c…) SELECT u.c::<column type>… FROM unnest($1::text[], …) AS u(c…)
//!          ON CONFLICT (key) DO UPDATE SET c = EXCLUDED.c … WHERE (t.c…) IS DISTINCT FROM (EXCLUDED.c…)
//!  delete: DELETE FROM t USING unnest($1::text[], …) AS u(k…) WHERE t.k = u.k::<key type> …
//! ```
//!
//! Values travel as text arrays and are cast by the server to the column's
//! own type: one statement per transaction whatever its size, and the
//! server's input rules (ranges, lengths) check every value loudly.

use tidewater_core::ErrorClass;
use tidewater_endpoint::quote::double_quoted as quote;
use tokio_postgres::Client;

use super::{check_fraction, rounded, Described, TableName};
use crate::error::{redact, ReverseError};
use crate::types::TargetColumn;
use crate::value::{self, Value};

pub struct PostgresTarget {
    url: String,
    client: Client,
    statement_timeout_ms: u64,
}

fn target_error(action: &str, err: tokio_postgres::Error) -> ReverseError {
    let retryable = tidewater_endpoint::sqlstate::class(&err) == ErrorClass::Transient;
    let message = match err.as_db_error() {
        Some(db) => format!("{} ({})", redact(db.message()), db.code().code()),
        None => err.to_string(),
    };
    ReverseError::Target {
        action: action.to_string(),
        message,
        retryable,
    }
}

impl PostgresTarget {
    pub async fn connect(url: &str, statement_timeout_ms: u64) -> Result<Self, ReverseError> {
        // TLS as for the source: `sslmode` / `sslrootcert` in the url.
        let tls_error = |e: tidewater_endpoint::postgres::TlsConfigError| ReverseError::Target {
            action: "reading target_url".into(),
            message: e.to_string(),
            retryable: false,
        };
        let (config, options) = tidewater_endpoint::postgres::parse_url(url).map_err(tls_error)?;
        let tls = tidewater_endpoint::postgres::TlsSetup::new(&options).map_err(tls_error)?;
        let (client, connection) = config
            .connect(tls.connector())
            .await
            .map_err(|e| target_error("connecting", e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        // Lock waits end well before the statement timeout, so a blocked
        // write gives way to the application and is retried later.
        let lock_ms = (statement_timeout_ms / 4).max(100);
        client
            .batch_execute(&format!(
                "SET statement_timeout = {statement_timeout_ms}; SET lock_timeout = {lock_ms}; \
                 SET TimeZone = 'UTC'; SET application_name = 'tidewater reverse-etl'"
            ))
            .await
            .map_err(|e| target_error("setting up the session", e))?;
        Ok(Self {
            url: url.to_string(),
            client,
            statement_timeout_ms,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub async fn reconnect(&mut self) -> Result<(), ReverseError> {
        *self = Self::connect(&self.url.clone(), self.statement_timeout_ms).await?;
        Ok(())
    }

    fn qualified(table: &TableName) -> String {
        format!("{}.{}", quote(&table.schema), quote(&table.table))
    }

    pub async fn describe(&self, table: &TableName) -> Result<Option<Described>, ReverseError> {
        let name = Self::qualified(table);
        let exists = self
            .client
            .query_one("SELECT to_regclass($1)::oid", &[&name])
            .await
            .map_err(|e| target_error("looking up the target table", e))?;
        let Some(oid) = exists.get::<_, Option<u32>>(0) else {
            return Ok(None);
        };
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), bt.typname::text, \
                        bt.typcategory::text, \
                        CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END, \
                        NOT a.attnotnull, \
                        a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '' \
                 FROM pg_attribute a \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .map_err(|e| target_error("reading the target table's columns", e))?;
        let columns = rows
            .iter()
            .map(|row| {
                let base: String = row.get(2);
                let typmod: i32 = row.get(4);
                let numeric = (base == "numeric" && typmod >= 4).then(|| {
                    let t = (typmod - 4) as u32;
                    (t >> 16, t & 0xffff)
                });
                let fraction_digits = match base.as_str() {
                    "timestamp" | "timestamptz" | "time" | "timetz" if typmod >= 0 => typmod as u32,
                    _ => 6,
                };
                TargetColumn {
                    name: row.get(0),
                    type_text: row.get(1),
                    base,
                    category: row.get(3),
                    numeric,
                    fraction_digits,
                    nullable: row.get(5),
                    has_default: row.get(6),
                }
            })
            .collect();
        let keys = self
            .client
            .query(
                "SELECT array_agg(a.attname::text ORDER BY k.ord) \
                 FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL \
                 GROUP BY i.indexrelid",
                &[&oid],
            )
            .await
            .map_err(|e| target_error("reading the target table's unique keys", e))?
            .iter()
            .map(|row| row.get::<_, Vec<String>>(0))
            .collect();
        Ok(Some(Described {
            columns,
            unique_keys: keys,
        }))
    }

    pub async fn create(
        &self,
        table: &TableName,
        columns: &[(String, String, bool)],
    ) -> Result<(), ReverseError> {
        let sql = format!(
            "CREATE TABLE {} ({})",
            Self::qualified(table),
            super::table_definition(columns, quote, " NOT NULL", "")
        );
        self.client
            .batch_execute(&sql)
            .await
            .map_err(|e| target_error("creating the target table", e))
    }

    /// One transaction: rows upserted by `key`.
    pub async fn upsert(
        &mut self,
        table: &TableName,
        columns: &[TargetColumn],
        key: &[usize],
        rows: &[Vec<Value>],
    ) -> Result<(), ReverseError> {
        let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
        let params: Vec<String> = (1..=columns.len())
            .map(|i| format!("${i}::text[]"))
            .collect();
        let casts: Vec<String> = columns
            .iter()
            .map(|c| format!("u.{}::{}", quote(&c.name), c.type_text))
            .collect();
        let rest: Vec<usize> = (0..columns.len()).filter(|i| !key.contains(i)).collect();
        let conflict = if rest.is_empty() {
            "DO NOTHING".to_string()
        } else {
            let set: Vec<String> = rest
                .iter()
                .map(|&i| format!("{0} = EXCLUDED.{0}", names[i]))
                .collect();
            let mine: Vec<String> = rest.iter().map(|&i| format!("t.{}", names[i])).collect();
            let theirs: Vec<String> = rest
                .iter()
                .map(|&i| format!("EXCLUDED.{}", names[i]))
                .collect();
            format!(
                "DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})",
                set.join(", "),
                mine.join(", "),
                theirs.join(", ")
            )
        };
        let key_names: Vec<&str> = key.iter().map(|&i| names[i].as_str()).collect();
        let sql = format!(
            "INSERT INTO {} AS t ({}) SELECT {} FROM unnest({}) AS u({}) ON CONFLICT ({}) {conflict}",
            Self::qualified(table),
            names.join(", "),
            casts.join(", "),
            params.join(", "),
            names.join(", "),
            key_names.join(", "),
        );
        let arrays = text_arrays(columns, rows.iter().map(|r| r.as_slice()))?;
        self.execute(&sql, &arrays, "upserting rows").await
    }

    /// One transaction: rows deleted by key.
    pub async fn delete(
        &mut self,
        table: &TableName,
        key_columns: &[TargetColumn],
        keys: &[Vec<Value>],
    ) -> Result<(), ReverseError> {
        let names: Vec<String> = key_columns.iter().map(|c| quote(&c.name)).collect();
        let params: Vec<String> = (1..=key_columns.len())
            .map(|i| format!("${i}::text[]"))
            .collect();
        let matches: Vec<String> = key_columns
            .iter()
            .map(|c| format!("t.{0} = u.{0}::{1}", quote(&c.name), c.type_text))
            .collect();
        let sql = format!(
            "DELETE FROM {} AS t USING unnest({}) AS u({}) WHERE {}",
            Self::qualified(table),
            params.join(", "),
            names.join(", "),
            matches.join(" AND ")
        );
        let arrays = text_arrays(key_columns, keys.iter().map(|r| r.as_slice()))?;
        self.execute(&sql, &arrays, "deleting rows").await
    }

    async fn execute(
        &mut self,
        sql: &str,
        arrays: &[Vec<Option<String>>],
        action: &str,
    ) -> Result<(), ReverseError> {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = arrays
            .iter()
            .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let tx = self
            .client
            .transaction()
            .await
            .map_err(|e| target_error(action, e))?;
        tx.execute(sql, &params)
            .await
            .map_err(|e| target_error(action, e))?;
        tx.commit().await.map_err(|e| target_error(action, e))
    }
}

/// Column-major text arrays of `rows`, rendered for `columns`.
fn text_arrays<'a>(
    columns: &[TargetColumn],
    rows: impl Iterator<Item = &'a [Value]>,
) -> Result<Vec<Vec<Option<String>>>, ReverseError> {
    let mut arrays: Vec<Vec<Option<String>>> = vec![Vec::new(); columns.len()];
    for row in rows {
        for ((value, column), array) in row.iter().zip(columns).zip(arrays.iter_mut()) {
            array.push(text(value, column)?);
        }
    }
    Ok(arrays)
}

/// `value` in Postgres input syntax for `column`.
fn text(value: &Value, column: &TargetColumn) -> Result<Option<String>, ReverseError> {
    let bad = |what: &str| ReverseError::Result {
        problem: format!("a value of column {} {what}", column.name),
        hint: "filter or cast it in the query".into(),
    };
    let integer_column = matches!(column.base.as_str(), "int2" | "int4" | "int8" | "numeric");
    Ok(Some(match value {
        Value::Null => return Ok(None),
        Value::Bool(b) if integer_column => (if *b { "1" } else { "0" }).into(),
        Value::Bool(b) => (if *b { "t" } else { "f" }).into(),
        Value::Int(v) => v.to_string(),
        Value::UInt(v) => v.to_string(),
        Value::Float(v) => float_text(*v),
        Value::Real(v) if v.is_finite() => v.to_string(),
        Value::Real(v) => float_text(*v as f64),
        Value::Decimal(s) | Value::Text(s) => s.clone(),
        Value::Bytes(b) => {
            let mut out = String::with_capacity(2 + b.len() * 2);
            out.push_str("\\x");
            for byte in b {
                out.push_str(&format!("{byte:02x}"));
            }
            out
        }
        Value::Date(d) => era(
            value::date(*d).ok_or_else(|| bad("is out of range"))?,
            "%Y-%m-%d",
        ),
        Value::Timestamp(us) | Value::TimestampTz(us) => {
            check_fraction(*us, column).map_err(|_| bad(&rounded(column)))?;
            let t = value::timestamp(*us).ok_or_else(|| bad("is out of range"))?;
            let mut s = era_datetime(t);
            if matches!(value, Value::TimestampTz(_)) {
                s.push_str("+00");
            }
            s
        }
        Value::Time(us) => {
            check_fraction(*us, column).map_err(|_| bad(&rounded(column)))?;
            value::time(*us)
                .ok_or_else(|| bad("is out of range"))?
                .format("%H:%M:%S%.6f")
                .to_string()
        }
    }))
}

fn float_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "Infinity".into()
    } else if v == f64::NEG_INFINITY {
        "-Infinity".into()
    } else {
        // Rust prints the shortest text that reads back as the same value.
        v.to_string()
    }
}

/// A date in Postgres syntax: years before 1 are written `… BC`.
fn era(date: chrono::NaiveDate, format: &str) -> String {
    use chrono::Datelike;
    if date.year() > 0 {
        return date.format(format).to_string();
    }
    let bc = date
        .with_year(1 - date.year())
        .map(|d| d.format(format).to_string())
        .unwrap_or_default();
    format!("{bc} BC")
}

fn era_datetime(t: chrono::NaiveDateTime) -> String {
    let date = era(t.date(), "%Y-%m-%d");
    let time = t.time().format("%H:%M:%S%.6f").to_string();
    match date.strip_suffix(" BC") {
        Some(d) => format!("{d} {time} BC"),
        None => format!("{date} {time}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(base: &str, digits: u32) -> TargetColumn {
        TargetColumn {
            name: "c".into(),
            type_text: base.into(),
            base: base.into(),
            category: String::new(),
            numeric: None,
            fraction_digits: digits,
            nullable: true,
            has_default: false,
        }
    }

    #[test]
    fn values_render_in_postgres_input_syntax() {
        let ts = column("timestamptz", 6);
        assert_eq!(
            text(&Value::TimestampTz(1), &ts).unwrap().unwrap(),
            "1970-01-01 00:00:00.000001+00"
        );
        assert_eq!(
            text(&Value::Date(-719_528), &column("date", 6))
                .unwrap()
                .unwrap(),
            "0001-01-01 BC"
        );
        assert_eq!(
            text(&Value::Bytes(vec![0, 255]), &column("bytea", 6))
                .unwrap()
                .unwrap(),
            "\\x00ff"
        );
        assert_eq!(
            text(&Value::Real(0.1), &column("float4", 6))
                .unwrap()
                .unwrap(),
            "0.1"
        );
        assert_eq!(
            text(&Value::Float(f64::NEG_INFINITY), &column("float8", 6))
                .unwrap()
                .unwrap(),
            "-Infinity"
        );
        assert_eq!(
            text(&Value::Bool(true), &column("int4", 6))
                .unwrap()
                .unwrap(),
            "1"
        );
        assert_eq!(text(&Value::Null, &ts).unwrap(), None);
        // timestamp(3) would round 1 µs away: refused, not rounded.
        assert!(text(&Value::Timestamp(1), &column("timestamp", 3)).is_err());
        assert!(text(&Value::Timestamp(1000), &column("timestamp", 3)).is_ok());
    }
}
