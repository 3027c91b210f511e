//! `changelog_retention` in the warehouse: rows of a `<table>__changes`
//! table older than the retention are deleted, except each key's latest row
//! and every truncate row — the same rule as the lake's (see
//! `tidewater_lake`'s `retention`), in one statement per table:
//!
//! ```text
//!  maintain(), between commits, per change-log table when its pass is due:
//!   DELETE FROM t__changes USING (each row's rank among its key's rows,
//!                                  newest first)
//!   WHERE committed before now − retention
//!     AND (a newer row of its key exists OR a later truncate does)
//! ```
//!
//! The statement reads the whole change log (a window over the key), so a
//! pass costs what the log costs; it runs every
//! `changelog_retention_interval_ms`, outside any batch's transaction.

use std::time::{Duration, Instant};

use tidewater_core::{TableFilter, TableId};
use tidewater_endpoint::quote::double_quoted as ident;
use tracing::{info, warn};

use crate::error::WarehouseError;
use crate::sink::WarehouseSink;
use crate::types::literal;

impl WarehouseSink {
    /// The retention of `table`'s change log: the first rule whose pattern
    /// matches (None: kept for ever).
    fn retention_of(&self, table: &TableId) -> Option<Duration> {
        self.settings
            .changelog_retention
            .iter()
            .find(|(pattern, _)| {
                TableFilter {
                    include: vec![pattern.clone()],
                    exclude: Vec::new(),
                }
                .matches(table)
            })
            .and_then(|(_, keep)| *keep)
    }

    /// Runs the retention passes that are due (nothing may be staged).
    pub(crate) async fn apply_retention(&mut self) {
        if self.settings.changelog_retention.is_empty() || self.in_transaction() {
            return;
        }
        let now = Instant::now();
        let due: Vec<(TableId, Duration, String, String)> = self
            .changelogs()
            .into_iter()
            .filter_map(|(table, target, log)| {
                let keep = self.retention_of(&table)?;
                let last = self.retained.get(&table);
                let due =
                    last.is_none_or(|at| now.duration_since(*at) >= self.settings.retention_every);
                due.then_some((table, keep, target, log))
            })
            .collect();
        for (table, keep, target, log) in due {
            self.retained.insert(table.clone(), now);
            match self.retain(&target, &log, keep).await {
                Ok(0) => {}
                Ok(rows) => {
                    info!(table = %table, log = %log, rows_dropped = rows, "dropped change-log rows past changelog_retention")
                }
                Err(error) => {
                    warn!(table = %table, error = %tidewater_core::error_chain(&error), "the change-log retention pass failed; the change log is unchanged, trying again later")
                }
            }
        }
    }

    /// One pass over `log` (the change log of the warehouse table `target`,
    /// both qualified).
    async fn retain(&self, target: &str, log: &str, keep: Duration) -> Result<u64, WarehouseError> {
        let keys: Vec<String> = self
            .client()
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY a.attnum",
                &[&target],
            )
            .await
            .map_err(WarehouseError::server(
                "reading the key of a warehouse table",
            ))?
            .iter()
            .map(|r| ident(&r.get::<_, String>(0)))
            .collect();
        if keys.is_empty() {
            return Ok(0);
        }
        let cutoff = chrono::Utc::now()
            - chrono::TimeDelta::from_std(keep).unwrap_or(chrono::TimeDelta::MAX);
        let cutoff = literal(&cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        let sql = format!(
            "WITH last_truncate AS (
                 SELECT _tw_seq, _tw_ord FROM {log} WHERE _tw_op = 't'
                 ORDER BY _tw_seq DESC, _tw_ord DESC LIMIT 1),
             ranked AS (
                 SELECT ctid AS row_id, _tw_seq, _tw_ord,
                        row_number() OVER (PARTITION BY {keys}
                                           ORDER BY _tw_seq DESC, _tw_ord DESC) AS newer
                 FROM {log} WHERE _tw_op <> 't')
             DELETE FROM {log} AS l USING ranked AS r
             WHERE l.ctid = r.row_id AND l._tw_commit_ts < {cutoff}::timestamptz
               AND (r.newer > 1 OR EXISTS (
                   SELECT 1 FROM last_truncate t
                   WHERE (t._tw_seq, t._tw_ord) > (r._tw_seq, r._tw_ord)))",
            keys = keys.join(", "),
        );
        self.client()
            .execute(&sql, &[])
            .await
            .map_err(WarehouseError::server(
                "deleting change-log rows past the retention",
            ))
    }
}
