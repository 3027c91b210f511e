//! `tidewater check` for MySQL/MariaDB: every server setting and privilege the
//! binlog source needs, each with the statement that fixes it.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tidewater_core::{Problem, TableId};

use crate::catalog::{quote_ident, quote_table, Flavor};
use crate::error::{query_error, MysqlError};

/// Binlogs kept for less than this are flagged: a pipeline stopped over a
/// weekend would find its position purged.
const MIN_RETENTION_SECONDS: u64 = 86_400;

async fn variable(conn: &mut Conn, name: &str) -> Result<Option<String>, MysqlError> {
    // `name` is always one of our constants; SHOW works on MySQL and MariaDB.
    let row: Option<(String, String)> = conn
        .query_first(format!("SHOW GLOBAL VARIABLES LIKE '{name}'"))
        .await
        .map_err(query_error(format!("reading {name}")))?;
    Ok(row.map(|(_, v)| v))
}

/// Server settings, privileges and table access the source needs.
pub async fn preflight(
    conn: &mut Conn,
    flavor: Flavor,
    tables: &[TableId],
) -> Result<Vec<Problem>, MysqlError> {
    let mut problems = Vec::new();
    let mut expect = |actual: Option<String>, name: &str, want: &str, fix: String| {
        let ok = actual
            .as_deref()
            .is_some_and(|v| v.eq_ignore_ascii_case(want));
        if !ok {
            problems.push(Problem {
                what: format!(
                    "{name} is {}, the binlog source needs {want}",
                    actual.as_deref().unwrap_or("not available on this server")
                ),
                fix,
            });
        }
    };
    expect(
        variable(conn, "log_bin").await?,
        "log_bin",
        "ON",
        "start the server with log_bin=<path> (and server_id=<n>) in its config file; it cannot be set at runtime".into(),
    );
    expect(
        variable(conn, "binlog_format").await?,
        "binlog_format",
        "ROW",
        "SET GLOBAL binlog_format = 'ROW'; (and binlog_format=ROW in the server config; \
         every session must stay on ROW: a data change logged as a statement stops the tables \
         it may have written)"
            .into(),
    );
    expect(
        variable(conn, "binlog_row_image").await?,
        "binlog_row_image",
        "FULL",
        "SET GLOBAL binlog_row_image = 'FULL'; (and in the server config)".into(),
    );
    expect(
        variable(conn, "binlog_row_metadata").await?,
        "binlog_row_metadata",
        "FULL",
        "SET GLOBAL binlog_row_metadata = 'FULL'; (and in the server config; MySQL 8.0.1+ / MariaDB 10.5+)".into(),
    );
    // MariaDB's log_bin_compress is decoded (events 165-171).
    if flavor == Flavor::MySql {
        if let Some(value) = variable(conn, "binlog_row_value_options").await? {
            if !value.is_empty() {
                problems.push(Problem {
                    what: format!(
                    "binlog_row_value_options is {value}: partial JSON updates carry only diffs"
                ),
                    fix: "SET GLOBAL binlog_row_value_options = ''; (and in the server config)"
                        .into(),
                });
            }
        }
    }
    let retention = retention_seconds(conn).await?;
    if let Some(seconds) = retention.filter(|s| *s > 0 && *s < MIN_RETENTION_SECONDS) {
        problems.push(Problem {
            what: format!(
                "binlogs are kept for {seconds} s only: a pipeline stopped for longer loses its position"
            ),
            fix: "SET GLOBAL binlog_expire_logs_seconds = 604800; (7 days; on MariaDB < 10.6: SET GLOBAL expire_logs_days = 7)".into(),
        });
    }

    let grants = grants(conn).await?;
    let has = |privilege: &str| {
        grants.iter().any(|g| {
            let g = g.to_ascii_uppercase();
            g.contains("ALL PRIVILEGES ON *.*") || (g.contains(privilege) && g.contains(" ON *.*"))
        })
    };
    let current: Option<String> = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .map_err(query_error("reading the current user"))?;
    let user = current
        .as_deref()
        .and_then(|u| u.rsplit_once('@'))
        .map(|(name, host)| format!("'{name}'@'{host}'"))
        .unwrap_or_else(|| "<the tidewater user>".into());
    if !has("REPLICATION SLAVE") && !has("REPLICATION REPLICA") {
        problems.push(Problem {
            what: "the user lacks REPLICATION SLAVE (needed to read the binlog)".into(),
            fix: format!("GRANT REPLICATION SLAVE ON *.* TO {user};"),
        });
    }
    let monitor = match flavor {
        Flavor::MariaDb => has("BINLOG MONITOR") || has("REPLICATION CLIENT") || has("SUPER"),
        Flavor::MySql => has("REPLICATION CLIENT") || has("SUPER"),
    };
    if !monitor {
        let privilege = match flavor {
            Flavor::MariaDb => "BINLOG MONITOR",
            Flavor::MySql => "REPLICATION CLIENT",
        };
        problems.push(Problem {
            what: format!("the user lacks {privilege} (needed to read binlog positions)"),
            fix: format!("GRANT {privilege} ON *.* TO {user};"),
        });
    }
    if flavor == Flavor::MySql && !has("RELOAD") {
        problems.push(Problem {
            what: "the user lacks RELOAD (the snapshot takes a brief FLUSH TABLES WITH READ LOCK)"
                .into(),
            fix: format!("GRANT RELOAD ON *.* TO {user};"),
        });
    }
    for table in tables {
        let probe = format!("SELECT 1 FROM {} LIMIT 0", quote_table(table));
        if conn.query_drop(probe).await.is_err() {
            problems.push(Problem {
                what: format!("the user cannot SELECT from {table}"),
                fix: format!(
                    "GRANT SELECT ON {}.* TO {user};",
                    quote_ident(&table.schema)
                ),
            });
        }
    }
    Ok(problems)
}

async fn grants(conn: &mut Conn) -> Result<Vec<String>, MysqlError> {
    conn.query("SHOW GRANTS")
        .await
        .map_err(query_error("reading the user's grants"))
}

/// Binlog retention in seconds (0 = forever), when the server says.
pub async fn retention_seconds(conn: &mut Conn) -> Result<Option<u64>, MysqlError> {
    if let Some(v) = variable(conn, "binlog_expire_logs_seconds").await? {
        if let Ok(seconds) = v.parse::<u64>() {
            if seconds > 0 {
                return Ok(Some(seconds));
            }
        }
    }
    if let Some(v) = variable(conn, "expire_logs_days").await? {
        if let Ok(days) = v.parse::<f64>() {
            return Ok(Some((days * 86_400.0) as u64));
        }
    }
    Ok(None)
}
