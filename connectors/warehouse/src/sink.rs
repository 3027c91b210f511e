//! The warehouse sink: one current-state table per source table in a
//! Postgres-protocol database, kept exactly once by applying every batch and
//! recording its mark in one transaction.
//!
//! ```text
//!  write(batch) ──binary COPY──▶ pg_temp._tw_stage_N      (BEGIN at the first write)
//!        ⋮                          (one per table and schema version, in order)
//!  commit(position)
//!     for each stage, in write order:
//!        [DELETE FROM target                    when the stage holds a truncate]
//!        MERGE INTO target USING (last change per key) ON key
//!            (or DELETE … USING + INSERT … ON CONFLICT before Postgres 15)
//!            (soft_deletes: deletes and truncates set _tw_deleted and
//!             _tw_deleted_at instead of removing rows)
//!        [INSERT INTO target__changes SELECT * FROM stage  when changelog = true]
//!     INSERT INTO tidewater.table_state (mark, position, …) ON CONFLICT DO UPDATE
//!  COMMIT ── the data and the mark become visible together, or neither
//! ```
//!
//! On start the coordinator reads every table's mark back from
//! `tidewater.table_state` and skips every change at or below it, so a crash
//! at any instant (before COMMIT: the transaction and its staging tables
//! vanish; after it: the mark covers the rows) neither loses nor repeats a
//! change. The other bookkeeping the lake keeps in files next to its tables
//! (phase, stopped tables, snapshot plan, acknowledged binlog position)
//! lives in `tidewater.pipeline_state` ([`crate::WarehouseState`]). An advisory lock held by
//! the session keeps a second process of the same pipeline out.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::SinkExt;
use tidewater_core::{
    arrow_type, build_array, key_string, ChangeBatch, Column, ColumnType, Datum, Mark, Sink,
    SnapshotPhase, TableId, TableSchema,
};
use tokio_postgres::Client;
use tracing::{debug, info, warn};

use crate::copy::{self, Encoding};
use crate::error::WarehouseError;
use crate::state::WarehouseState;
use crate::types::{literal, target_type, widens};
use crate::value::{decode, select_expr, Raw};
use tidewater_endpoint::quote::double_quoted as ident;

/// COPY data is sent in pieces of about this size, so a large batch never
/// sits in memory twice.
const COPY_CHUNK_BYTES: usize = 1024 * 1024;

/// Metadata columns of staging and change-log tables (DESIGN §3), with
/// their warehouse types: marks as bigint, as in the lake.
const META: [(&str, &str); 6] = [
    ("_tw_op", "text"),
    ("_tw_seq", "bigint"),
    ("_tw_ord", "bigint"),
    ("_tw_position", "text"),
    ("_tw_commit_ts", "timestamp with time zone"),
    ("_tw_txid", "text"),
];

/// The columns soft deletes keep in a current-state table: whether the row
/// is deleted, and the commit time of the delete.
const DELETED: &str = "_tw_deleted";
const DELETED_AT: &str = "_tw_deleted_at";

/// How batches are applied to the current-state tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// MERGE on Postgres 15 and later, else INSERT … ON CONFLICT.
    Auto,
    Merge,
    OnConflict,
}

#[derive(Debug, Clone)]
pub struct WarehouseSettings {
    /// Postgres URL of the warehouse database (TLS settings as for sources).
    pub url: tidewater_endpoint::url::SecretUrl,
    pub pipeline: String,
    /// Target schema name; `{schema}` is the source schema or database.
    pub target_schema: String,
    /// Target table name; `{table}` is the source table, `{schema}` too.
    pub target_table: String,
    /// Schema of tidewater's own state tables.
    pub state_schema: String,
    /// Also keep `<target>__changes`, the change log with metadata columns.
    pub changelog: bool,
    pub apply: ApplyMode,
    /// Deleted rows stay, with `_tw_deleted = true` and the delete's commit
    /// time in `_tw_deleted_at`.
    pub soft_deletes: bool,
    /// `changelog_retention`: (source table pattern, how long change-log
    /// rows are kept; None for ever), the first match counts.
    pub changelog_retention: Vec<(String, Option<std::time::Duration>)>,
    /// How often each change log's retention pass runs.
    pub retention_every: std::time::Duration,
}

impl WarehouseSettings {
    /// The warehouse (schema, table) of a source table.
    pub fn target_of(&self, table: &TableId) -> (String, String) {
        let fill = |template: &str| {
            template
                .replace("{schema}", &table.schema)
                .replace("{table}", &table.table)
                .replace("{pipeline}", &self.pipeline)
        };
        (fill(&self.target_schema), fill(&self.target_table))
    }
}

/// What `tidewater.table_state` says of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRecord {
    pub mark: Mark,
    pub position: String,
    pub snapshot_done: bool,
    pub commits: i64,
    /// Changes applied (all commits).
    pub rows: i64,
    /// The warehouse table, `schema.table`.
    pub target: String,
    /// When it last committed (UTC, as the server prints it).
    pub committed_at: String,
}

impl TableRecord {
    /// The pipeline's view of the record (the warehouse counts commits
    /// where the lake has table versions).
    pub fn state(&self) -> tidewater_core::state::TableState {
        tidewater_core::state::TableState {
            mark: self.mark,
            position: self.position.clone(),
            snapshot_done: self.snapshot_done,
            version: self.commits.max(0) as u64,
            commits: self.commits,
        }
    }
}

/// A warehouse table as its catalog describes it.
#[derive(Debug, Clone, Default)]
struct Target {
    schema: String,
    name: String,
    /// (column, format_type) in column order.
    columns: Vec<(String, String)>,
}

impl Target {
    fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }

    /// The warehouse columns holding values of source column `column`: its
    /// own name and its versions (`name__vN`).
    fn versions_of<'a>(&'a self, column: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.columns
            .iter()
            .map(|(c, _)| c.as_str())
            .filter(move |c| *c == column || is_version_of(c, column))
    }

    fn type_of(&self, column: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, t)| t.as_str())
    }

    /// The warehouse column that holds values of `column` (of type `ty`):
    /// the column of its name if it holds the type, else its newest version
    /// (`name__vN`) that does.
    fn column_for(&self, column: &str, ty: &str) -> Option<String> {
        let fits = |name: &str| {
            self.type_of(name)
                .is_some_and(|have| have == ty || widens(ty, have))
        };
        let versions = self
            .columns
            .iter()
            .rev()
            .filter(|(c, _)| is_version_of(c, column));
        for (name, _) in versions {
            if fits(name) {
                return Some(name.clone());
            }
        }
        fits(column).then(|| column.to_string())
    }
}

/// Whether warehouse column `name` is a version (`column__vN`) of `column`.
fn is_version_of(name: &str, column: &str) -> bool {
    name.strip_prefix(column)
        .and_then(|rest| rest.strip_prefix("__v"))
        .is_some_and(|n| n.parse::<u32>().is_ok())
}

/// Rows of one table and schema version copied into a staging table.
struct Stage {
    table: TableId,
    name: String,
    schema: Arc<TableSchema>,
    /// The mark of the last truncate among its rows.
    truncate: Option<Mark>,
    rows: u64,
}

struct Known {
    target: Target,
    changelog: Option<Target>,
    state: Option<TableRecord>,
}

pub struct WarehouseSink {
    pub(crate) settings: WarehouseSettings,
    client: Arc<Client>,
    merge: bool,
    tables: HashMap<TableId, Known>,
    stages: Vec<Stage>,
    in_transaction: bool,
    staged_bytes: u64,
    /// Highest mark and row count written per table since the last commit.
    pending: HashMap<TableId, (Mark, u64)>,
    phases: HashMap<TableId, (SnapshotPhase, Mark)>,
    next_stage: u64,
    /// When each change log's retention pass last ran.
    pub(crate) retained: HashMap<TableId, std::time::Instant>,
}

/// The first key of the pipeline's advisory lock (the two-key form keeps
/// it apart from other applications' single-bigint locks): "tw" in ASCII.
const LOCK_CLASS: i32 = 0x7477;

/// The second key of the lock that serialises tidewater's DDL in a
/// warehouse across pipelines (a pipeline's own lock takes hashtext of its
/// name).
const DDL_LOCK: i32 = 0;

/// Postgres truncates longer identifiers (NAMEDATALEN - 1).
const MAX_IDENTIFIER: usize = 63;

const HINT_TABLE_STATE: &str = "restore the row from a backup, or delete it and copy the table \
    again (`tidewater snapshot --table schema.table`)";

impl WarehouseSink {
    /// Connects, takes the pipeline's advisory lock and creates the state
    /// tables when missing.
    pub async fn connect(settings: WarehouseSettings) -> Result<Self, WarehouseError> {
        Self::open(settings, true).await
    }

    /// Connects for reading the state only (`tidewater status`): no lock,
    /// no DDL, so it works beside the running daemon.
    pub async fn inspect(settings: WarehouseSettings) -> Result<Self, WarehouseError> {
        Self::open(settings, false).await
    }

    async fn open(settings: WarehouseSettings, writer: bool) -> Result<Self, WarehouseError> {
        let client = session(
            &settings,
            "warehouse connection ended",
            &format!(
                "SET TimeZone = 'UTC'; SET standard_conforming_strings = on; \
                 SET application_name = {}",
                literal(&format!("tidewater:{}", settings.pipeline))
            ),
        )
        .await?;
        let lock = if writer {
            format!("pg_try_advisory_lock({LOCK_CLASS}, hashtext($1))")
        } else {
            "$1::text IS NOT NULL".to_string()
        };
        let row = client
            .query_one(
                &format!("SELECT {lock}, current_setting('server_version_num')::int"),
                &[&format!("tidewater:{}", settings.pipeline)],
            )
            .await
            .map_err(WarehouseError::server("taking the pipeline lock"))?;
        if writer && !row.get::<_, bool>(0) {
            return Err(WarehouseError::Busy {
                pipeline: settings.pipeline.clone(),
            });
        }
        let version: i32 = row.get(1);
        let merge = match settings.apply {
            ApplyMode::Auto => version >= 150_000,
            ApplyMode::Merge => true,
            ApplyMode::OnConflict => false,
        };
        let state = ident(&settings.state_schema);
        if writer {
            client
                .batch_execute(&format!(
                    // One implicit transaction: the lock keeps two pipelines'
                    // IF NOT EXISTS apart until it commits.
                    "SELECT pg_advisory_xact_lock({LOCK_CLASS}, {DDL_LOCK});
                 CREATE SCHEMA IF NOT EXISTS {state};
                 CREATE TABLE IF NOT EXISTS {state}.table_state (
                     pipeline text NOT NULL,
                     source_schema text NOT NULL,
                     source_table text NOT NULL,
                     target_schema text NOT NULL,
                     target_table text NOT NULL,
                     seq numeric(20,0) NOT NULL,
                     ord numeric(20,0) NOT NULL,
                     position text NOT NULL,
                     snapshot_done boolean NOT NULL,
                     commits bigint NOT NULL,
                     rows_applied bigint NOT NULL,
                     committed_at timestamptz NOT NULL,
                     PRIMARY KEY (pipeline, source_schema, source_table));
                 CREATE TABLE IF NOT EXISTS {state}.pipeline_state (
                     pipeline text NOT NULL,
                     key text NOT NULL,
                     value text NOT NULL,
                     PRIMARY KEY (pipeline, key));"
                ))
                .await
                .map_err(WarehouseError::server("creating the state tables"))?;
        }
        info!(
            merge,
            server_version = version,
            "connected to the warehouse"
        );
        Ok(WarehouseSink {
            settings,
            client: Arc::new(client),
            merge,
            tables: HashMap::new(),
            stages: Vec::new(),
            in_transaction: false,
            staged_bytes: 0,
            pending: HashMap::new(),
            phases: HashMap::new(),
            next_stage: 0,
            retained: HashMap::new(),
        })
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn in_transaction(&self) -> bool {
        self.in_transaction || !self.stages.is_empty()
    }

    /// (source table, warehouse table, its change log), qualified, of every
    /// table with a change log.
    pub(crate) fn changelogs(&self) -> Vec<(TableId, String, String)> {
        self.tables
            .iter()
            .filter_map(|(table, known)| {
                let log = known.changelog.as_ref()?;
                Some((table.clone(), known.target.qualified(), log.qualified()))
            })
            .collect()
    }

    /// The pipeline's records (phase, stopped tables, snapshot plan,
    /// acknowledged position), on this sink's session.
    pub fn state(&self) -> WarehouseState {
        WarehouseState::new(
            self.client.clone(),
            self.state_table("pipeline_state"),
            self.settings.pipeline.clone(),
        )
    }

    fn state_table(&self, name: &str) -> String {
        format!("{}.{name}", ident(&self.settings.state_schema))
    }

    /// The tables this pipeline has state for.
    pub async fn existing_tables(&self) -> Result<Vec<TableId>, WarehouseError> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT source_schema, source_table FROM {} WHERE pipeline = $1 ORDER BY 1, 2",
                    self.state_table("table_state")
                ),
                &[&self.settings.pipeline],
            )
            .await
            .map_err(WarehouseError::server("listing the tables of the pipeline"))?;
        Ok(rows
            .iter()
            .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect())
    }

    /// Every table's recorded state, for `tidewater status`.
    pub async fn table_states(&self) -> Result<Vec<(TableId, TableRecord)>, WarehouseError> {
        let mut out = Vec::new();
        for table in self.existing_tables().await? {
            if let Some(state) = self.read_state(&table).await? {
                out.push((table, state));
            }
        }
        Ok(out)
    }

    async fn read_state(&self, table: &TableId) -> Result<Option<TableRecord>, WarehouseError> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT seq::text, ord::text, position, snapshot_done, commits, rows_applied,
                            target_schema, target_table, committed_at::text
                     FROM {} WHERE pipeline = $1 AND source_schema = $2 AND source_table = $3",
                    self.state_table("table_state")
                ),
                &[&self.settings.pipeline, &table.schema, &table.table],
            )
            .await
            .map_err(WarehouseError::server(format!(
                "reading the state of {table}"
            )))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let number = |i: usize| {
            row.get::<_, String>(i)
                .parse::<u64>()
                .map_err(|_| WarehouseError::State {
                    location: format!(
                        "{}, pipeline {:?}, table {table}",
                        self.state_table("table_state"),
                        self.settings.pipeline
                    ),
                    detail: "seq or ord is not an unsigned integer".into(),
                    hint: HINT_TABLE_STATE,
                })
        };
        Ok(Some(TableRecord {
            mark: Mark::new(number(0)?, number(1)?),
            position: row.get(2),
            snapshot_done: row.get(3),
            commits: row.get(4),
            rows: row.get(5),
            target: format!("{}.{}", row.get::<_, String>(6), row.get::<_, String>(7)),
            committed_at: row.get(8),
        }))
    }

    /// The table's committed state (cached after the first read).
    pub async fn table_state(
        &mut self,
        table: &TableId,
    ) -> Result<Option<TableRecord>, WarehouseError> {
        if let Some(known) = self.tables.get(table) {
            if known.state.is_some() {
                return Ok(known.state.clone());
            }
        }
        let state = self.read_state(table).await?;
        if let Some(known) = self.tables.get_mut(table) {
            known.state = state.clone();
        }
        Ok(state)
    }

    async fn catalog(&self, schema: &str, name: &str) -> Result<Target, WarehouseError> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
                 FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attnum",
                &[&schema, &name],
            )
            .await
            .map_err(WarehouseError::server(format!(
                "reading the columns of {schema}.{name}"
            )))?;
        Ok(Target {
            schema: schema.to_string(),
            name: name.to_string(),
            columns: rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        })
    }

    /// Creates the table (and its change log) or evolves it to hold every
    /// column of `schema`: new columns are added, widened types altered in
    /// place, other type changes get a new column version; no column is
    /// ever dropped.
    async fn ensure_table(&mut self, schema: &TableSchema) -> Result<(), WarehouseError> {
        let table = &schema.table;
        let keys: Vec<&Column> = schema.key_columns().collect();
        if keys.is_empty() {
            return Err(WarehouseError::NoKey {
                table: table.clone(),
            });
        }
        let (target_schema, target_name) = self.settings.target_of(table);
        self.check_target(table, &target_schema, &target_name)
            .await?;
        let mut target = self.catalog(&target_schema, &target_name).await?;
        let mut statements = Vec::new();
        if target.columns.is_empty() {
            let mut columns: Vec<String> = schema
                .columns
                .iter()
                .map(|c| {
                    let not_null = if c.key { " NOT NULL" } else { "" };
                    format!("{} {}{not_null}", ident(&c.name), target_type(c).ddl)
                })
                .collect();
            if self.settings.soft_deletes {
                columns.push(format!("{DELETED} boolean NOT NULL DEFAULT false"));
                columns.push(format!("{DELETED_AT} timestamp with time zone"));
            }
            columns.push(format!(
                "PRIMARY KEY ({})",
                keys.iter()
                    .map(|c| ident(&c.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            statements.push(format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                ident(&target_schema)
            ));
            statements.push(format!(
                "CREATE TABLE {} ({})",
                target.qualified(),
                columns.join(", ")
            ));
            statements.push(format!(
                "COMMENT ON TABLE {} IS {}",
                target.qualified(),
                literal(&format!(
                    "current state of {table}, kept by tidewater pipeline {}",
                    self.settings.pipeline
                ))
            ));
            info!(table = %table, target = %target.qualified(), "creating warehouse table");
        } else {
            statements.extend(evolve(&target, schema, table));
            if self.settings.soft_deletes && target.type_of(DELETED).is_none() {
                statements.push(format!(
                    "ALTER TABLE {} ADD COLUMN {DELETED} boolean NOT NULL DEFAULT false, \
                     ADD COLUMN {DELETED_AT} timestamp with time zone",
                    target.qualified()
                ));
            }
        }
        let mut changelog = None;
        if self.settings.changelog {
            let name = format!("{target_name}__changes");
            let log = self.catalog(&target_schema, &name).await?;
            if log.columns.is_empty() {
                let mut columns: Vec<String> = schema
                    .columns
                    .iter()
                    .map(|c| format!("{} {}", ident(&c.name), target_type(c).ddl))
                    .collect();
                columns.extend(
                    META.iter()
                        .map(|(name, ty)| format!("{} {ty} NOT NULL", ident(name))),
                );
                // `_tw_txid` may be unknown.
                if let Some(last) = columns.last_mut() {
                    *last = last.replace(" NOT NULL", "");
                }
                statements.push(format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    ident(&target_schema)
                ));
                statements.push(format!(
                    "CREATE TABLE {}.{} ({})",
                    ident(&target_schema),
                    ident(&name),
                    columns.join(", ")
                ));
            } else {
                statements.extend(evolve(&log, schema, table));
            }
            changelog = Some(name);
        }
        if !statements.is_empty() {
            // DDL commits with the next batch when a transaction is open,
            // else now; either way before any row needs the columns.
            // Pipelines sharing a warehouse create schemas (IF NOT EXISTS
            // races between two sessions) one at a time: the lock lasts to
            // the end of the transaction the DDL is in.
            statements.insert(
                0,
                format!("SELECT pg_advisory_xact_lock({LOCK_CLASS}, {DDL_LOCK})"),
            );
            let sql = statements.join(";\n");
            self.client
                .batch_execute(&sql)
                .await
                .map_err(WarehouseError::server(format!(
                    "creating or altering the warehouse table of {table}"
                )))?;
            target = self.catalog(&target_schema, &target_name).await?;
        }
        let changelog = match changelog {
            Some(name) => Some(self.catalog(&target_schema, &name).await?),
            None => None,
        };
        let state = match self.tables.remove(table) {
            Some(known) => known.state,
            None => self.read_state(table).await?,
        };
        self.tables.insert(
            table.clone(),
            Known {
                target,
                changelog,
                state,
            },
        );
        Ok(())
    }

    /// Refuses a target name Postgres would cut short, and a target that
    /// another source table of the pipeline already writes (the name
    /// templates can map two source tables to one name: a truncate of one
    /// would empty the other's rows).
    async fn check_target(
        &self,
        table: &TableId,
        schema: &str,
        name: &str,
    ) -> Result<(), WarehouseError> {
        let target = format!("{}.{}", ident(schema), ident(name));
        let problem = |problem: String, hint: &str| WarehouseError::Target {
            table: table.clone(),
            target: target.clone(),
            problem,
            hint: hint.to_string(),
        };
        let longest = if self.settings.changelog {
            format!("{name}__changes")
        } else {
            name.to_string()
        };
        for part in [schema, longest.as_str()] {
            if part.len() > MAX_IDENTIFIER {
                return Err(problem(
                    format!(
                        "the name {part:?} is {} bytes, more than Postgres keeps ({MAX_IDENTIFIER})",
                        part.len()
                    ),
                    "shorten sink.schema / sink.table (a versioned column adds __vN, the change \
                     log __changes)",
                ));
            }
        }
        let hint = "make sink.schema / sink.table give each source table its own name \
                    (use both {schema} and {table})";
        for (other, known) in &self.tables {
            if other != table && known.target.schema == schema && known.target.name == name {
                return Err(problem(format!("{other} is written there too"), hint));
            }
        }
        let owner = self
            .client
            .query_opt(
                &format!(
                    "SELECT source_schema, source_table FROM {} WHERE pipeline = $1 \
                     AND target_schema = $2 AND target_table = $3 \
                     AND (source_schema, source_table) <> ($4, $5) LIMIT 1",
                    self.state_table("table_state")
                ),
                &[
                    &self.settings.pipeline,
                    &schema,
                    &name,
                    &table.schema,
                    &table.table,
                ],
            )
            .await
            .map_err(WarehouseError::server(format!(
                "checking the target of {table}"
            )))?;
        if let Some(row) = owner {
            let other = TableId::new(row.get::<_, String>(0), row.get::<_, String>(1));
            return Err(problem(format!("{other} is written there too"), hint));
        }
        Ok(())
    }

    async fn begin(&mut self) -> Result<(), WarehouseError> {
        if !self.in_transaction {
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(WarehouseError::server("beginning a transaction"))?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Copies a batch into its staging table (created when the table or its
    /// schema version changes). Batches at or below the committed mark are
    /// skipped.
    pub async fn write(&mut self, batch: ChangeBatch) -> Result<(), WarehouseError> {
        let table = batch.table.clone();
        if !self.tables.contains_key(&table) {
            self.ensure_table(&batch.schema).await?;
        }
        let committed = self.tables.get(&table).and_then(|k| k.state.as_ref());
        if committed.is_some_and(|s| batch.last <= s.mark) {
            debug!(table = %table, mark = %batch.last, "batch already in the warehouse, skipping");
            return Ok(());
        }
        if batch.batch.num_rows() == 0 {
            return Ok(());
        }
        self.begin().await?;
        let reuse = self
            .stages
            .iter()
            .rposition(|s| s.table == table)
            .filter(|&i| {
                i == self.stages.len() - 1 && self.stages[i].schema.columns == batch.schema.columns
            });
        let index = match reuse {
            Some(i) => i,
            None => {
                self.next_stage += 1;
                let name = format!("_tw_stage_{}", self.next_stage);
                let mut columns: Vec<String> = batch
                    .schema
                    .columns
                    .iter()
                    .map(|c| format!("{} {}", ident(&c.name), target_type(c).stage))
                    .collect();
                columns.extend(META.iter().map(|(n, t)| format!("{} {t}", ident(n))));
                self.client
                    .batch_execute(&format!(
                        "CREATE TEMP TABLE {} ({}) ON COMMIT DROP",
                        ident(&name),
                        columns.join(", ")
                    ))
                    .await
                    .map_err(WarehouseError::server(format!(
                        "creating a staging table for {table}"
                    )))?;
                self.stages.push(Stage {
                    table: table.clone(),
                    name,
                    schema: batch.schema.clone(),
                    truncate: None,
                    rows: 0,
                });
                self.stages.len() - 1
            }
        };
        let rows = batch.batch.num_rows();
        let encode_error = |e: copy::EncodeError| WarehouseError::Encode {
            table: table.clone(),
            column: e.column,
            reason: e.reason,
        };
        let mut encoded: Vec<(&str, &arrow_array::ArrayRef, Encoding)> = Vec::new();
        for (i, column) in batch.schema.columns.iter().enumerate() {
            encoded.push((
                column.name.as_str(),
                batch.batch.column(i),
                Encoding::Source(column.ty.clone()),
            ));
        }
        let meta_at = batch.schema.columns.len();
        for (j, (name, _)) in META.iter().enumerate() {
            let encoding = match *name {
                "_tw_seq" | "_tw_ord" => Encoding::Mark,
                "_tw_commit_ts" => Encoding::Source(ColumnType::TimestampTz),
                _ => Encoding::Source(ColumnType::Text),
            };
            encoded.push((name, batch.batch.column(meta_at + j), encoding));
        }
        let truncate = last_truncate(&batch);
        let names: Vec<String> = encoded.iter().map(|(n, ..)| ident(n)).collect();
        let statement = format!(
            "COPY pg_temp.{} ({}) FROM STDIN (FORMAT binary)",
            ident(&self.stages[index].name),
            names.join(", ")
        );
        let sink = self
            .client
            .copy_in::<_, bytes::Bytes>(statement.as_str())
            .await
            .map_err(WarehouseError::server_on(
                &table,
                format!("copying a batch of {table}"),
            ))?;
        futures_util::pin_mut!(sink);
        // Rows are encoded in slices, each sent as it is ready.
        let slice_rows = (COPY_CHUNK_BYTES / 64).max(1);
        let mut buf = BytesMut::with_capacity(COPY_CHUNK_BYTES + 4096);
        copy::start(&mut buf);
        let mut start = 0;
        let mut sent = 0u64;
        while start < rows {
            let len = slice_rows.min(rows - start);
            let sliced: Vec<arrow_array::ArrayRef> = encoded
                .iter()
                .map(|(_, a, _)| a.slice(start, len))
                .collect();
            let columns: Vec<(&str, &arrow_array::ArrayRef, Encoding)> = encoded
                .iter()
                .zip(&sliced)
                .map(|((n, _, e), a)| (*n, a, e.clone()))
                .collect();
            copy::encode_rows(&columns, len, &mut buf).map_err(encode_error)?;
            start += len;
            if start == rows {
                copy::finish(&mut buf);
            }
            sent += buf.len() as u64;
            sink.send(buf.split().freeze())
                .await
                .map_err(WarehouseError::server_on(
                    &table,
                    format!("copying a batch of {table}"),
                ))?;
        }
        sink.as_mut()
            .finish()
            .await
            .map_err(WarehouseError::server_on(
                &table,
                format!("copying a batch of {table}"),
            ))?;
        self.staged_bytes += sent;
        let stage = &mut self.stages[index];
        stage.rows += rows as u64;
        if truncate.is_some() {
            stage.truncate = truncate;
        }
        let pending = self.pending.entry(table).or_insert((Mark::ZERO, 0));
        pending.0 = pending.0.max(batch.last);
        pending.1 += rows as u64;
        Ok(())
    }

    /// Applies every staged batch and records each table's mark and
    /// `position`, all in one transaction; returns the tables committed.
    pub async fn commit(
        &mut self,
        position: &str,
        phase: Option<SnapshotPhase>,
    ) -> Result<usize, WarehouseError> {
        let mut record: Vec<(TableId, TableRecord)> = Vec::new();
        for (table, known) in &self.tables {
            let pending = self.pending.get(table).copied();
            let copy = self.phases.get(table).copied();
            let phase = copy.map(|(p, _)| p).or(phase);
            let phase_changes = match (phase, &known.state) {
                (Some(SnapshotPhase::Done), Some(state)) => !state.snapshot_done,
                (Some(_), None) => true,
                _ => false,
            };
            if pending.is_none() && !phase_changes {
                continue;
            }
            let mark = pending
                .map(|(m, _)| m)
                .or(known.state.as_ref().map(|s| s.mark))
                .unwrap_or(Mark::ZERO)
                .max(copy.map_or(Mark::ZERO, |(_, floor)| floor));
            let snapshot_done = match phase {
                Some(SnapshotPhase::Done) => true,
                Some(SnapshotPhase::Running) => false,
                None => known.state.as_ref().is_none_or(|s| s.snapshot_done),
            };
            let before = known.state.as_ref();
            record.push((
                table.clone(),
                TableRecord {
                    mark,
                    position: position.to_string(),
                    snapshot_done,
                    commits: before.map_or(0, |s| s.commits) + 1,
                    rows: before.map_or(0, |s| s.rows) + pending.map_or(0, |(_, n)| n as i64),
                    target: known.target.qualified(),
                    committed_at: String::new(),
                },
            ));
        }
        if record.is_empty() && self.stages.is_empty() {
            if self.in_transaction {
                self.finish_transaction("COMMIT").await?;
            }
            return Ok(0);
        }
        self.begin().await?;
        for stage in std::mem::take(&mut self.stages) {
            let known = self
                .tables
                .get(&stage.table)
                .expect("staged tables are known");
            let sql = apply_sql(known, &stage, self.merge, self.settings.soft_deletes);
            self.client
                .batch_execute(&sql)
                .await
                .map_err(WarehouseError::server_on(
                    &stage.table,
                    format!("applying a batch to the warehouse table of {}", stage.table),
                ))?;
            debug!(table = %stage.table, rows = stage.rows, "applied");
        }
        let statement = format!(
            "INSERT INTO {} AS s (pipeline, source_schema, source_table, target_schema, target_table,
                                  seq, ord, position, snapshot_done, commits, rows_applied, committed_at)
             VALUES ($1, $2, $3, $4, $5, ($6::text)::numeric, ($7::text)::numeric, $8, $9, $10, $11, now())
             ON CONFLICT (pipeline, source_schema, source_table) DO UPDATE SET
                 target_schema = EXCLUDED.target_schema, target_table = EXCLUDED.target_table,
                 seq = EXCLUDED.seq, ord = EXCLUDED.ord, position = EXCLUDED.position,
                 snapshot_done = EXCLUDED.snapshot_done, commits = EXCLUDED.commits,
                 rows_applied = EXCLUDED.rows_applied, committed_at = EXCLUDED.committed_at",
            self.state_table("table_state")
        );
        for (table, state) in &record {
            let (schema, name) = self.settings.target_of(table);
            self.client
                .execute(
                    statement.as_str(),
                    &[
                        &self.settings.pipeline,
                        &table.schema,
                        &table.table,
                        &schema,
                        &name,
                        &state.mark.seq.to_string(),
                        &state.mark.ord.to_string(),
                        &state.position,
                        &state.snapshot_done,
                        &state.commits,
                        &state.rows,
                    ],
                )
                .await
                .map_err(WarehouseError::server(format!(
                    "recording the mark of {table}"
                )))?;
        }
        self.finish_transaction("COMMIT").await?;
        let committed = record.len();
        for (table, state) in record {
            if state.snapshot_done {
                self.phases.remove(&table);
            }
            if let Some(known) = self.tables.get_mut(&table) {
                known.state = Some(state);
            }
        }
        Ok(committed)
    }

    /// `result`, after rolling back the transaction it failed in: the server
    /// refuses every later statement of it, and the session must stay usable
    /// to record a table's stop. The staged rows are dropped; the pipeline
    /// sends them again from the durable marks.
    async fn roll_back_on_error<T>(
        &mut self,
        result: Result<T, WarehouseError>,
    ) -> Result<T, WarehouseError> {
        if result.is_err() && self.in_transaction {
            if let Err(err) = self.finish_transaction("ROLLBACK").await {
                debug!(error = %err, "rolling back after a failed write");
            }
        }
        result
    }

    async fn finish_transaction(&mut self, how: &str) -> Result<(), WarehouseError> {
        self.in_transaction = false;
        self.stages.clear();
        self.pending.clear();
        self.staged_bytes = 0;
        self.client
            .batch_execute(how)
            .await
            .map_err(WarehouseError::server("committing"))
    }

    /// Erases every row of `keys` (per key, each key column's value as
    /// text, in the order of the table's primary key; see
    /// [`WarehouseSink::key_columns`]) from `table`'s warehouse table and
    /// its change log, in one transaction, then rewrites both with `VACUUM
    /// FULL` so no page keeps the deleted rows' bytes (the server's WAL
    /// and backups still do, until they age out). Returns the rows deleted
    /// from (the current table, the change log). Works beside the running
    /// pipeline: its next change of a key erased takes a row lock like any
    /// writer; the rewrite takes a short exclusive lock.
    pub async fn erase(
        &mut self,
        table: &TableId,
        keys: &[Vec<String>],
    ) -> Result<(u64, u64), WarehouseError> {
        let (target_schema, target_name) = self.settings.target_of(table);
        let columns = self.key_columns(table).await?;
        let current = self.catalog(&target_schema, &target_name).await?;
        let log_name = format!("{target_name}__changes");
        let log = self.catalog(&target_schema, &log_name).await?;
        let failed = |what: &str| WarehouseError::server(format!("{what} for {table}"));
        let mut deleted = (0u64, 0u64);
        self.begin().await?;
        for (target, count) in [(&current, &mut deleted.0), (&log, &mut deleted.1)] {
            if target.columns.is_empty() {
                continue;
            }
            let mut conditions = Vec::new();
            for (i, column) in columns.iter().enumerate() {
                let ty = target
                    .type_of(column)
                    .ok_or_else(|| WarehouseError::NoKey {
                        table: table.clone(),
                    })?;
                conditions.push(format!("{} = ${}::text::{ty}", ident(column), i + 1));
            }
            let statement = format!(
                "DELETE FROM {} WHERE {}",
                target.qualified(),
                conditions.join(" AND ")
            );
            for key in keys {
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = key
                    .iter()
                    .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                *count += self
                    .client
                    .execute(&statement, &params)
                    .await
                    .map_err(failed("erasing keys"))?;
            }
        }
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(failed("erasing keys"))?;
        self.in_transaction = false;
        for target in [&current, &log] {
            if !target.columns.is_empty() {
                self.client
                    .batch_execute(&format!("VACUUM (FULL) {}", target.qualified()))
                    .await
                    .map_err(failed("rewriting the table after an erasure"))?;
            }
        }
        Ok(deleted)
    }

    /// The primary-key columns of `table`'s warehouse table, in key order.
    pub async fn key_columns(&self, table: &TableId) -> Result<Vec<String>, WarehouseError> {
        let (target_schema, target_name) = self.settings.target_of(table);
        let rows = self
            .client
            .query(
                "SELECT a.attname::text
                 FROM pg_index i
                 JOIN pg_class c ON c.oid = i.indrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, pos) ON true
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                 WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary
                 ORDER BY k.pos",
                &[&target_schema, &target_name],
            )
            .await
            .map_err(WarehouseError::server(format!(
                "reading the key of {target_schema}.{target_name}"
            )))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Every current row of `table`'s warehouse table, as `schema`'s
    /// columns, in chunks of `chunk` rows handed to `each` as they stream
    /// in (never the whole table in memory), for `tidewater verify`. Rows
    /// soft-deleted are left out. Reads only (no lock, no DDL). Returns the
    /// columns that were not read: arrays (never read back) and those the
    /// table has no column for (NULL), or None when there is no table.
    pub async fn scan_current(
        &self,
        schema: &TableSchema,
        chunk: usize,
        mut each: impl FnMut(Vec<Vec<Datum>>) -> Result<(), String>,
    ) -> Result<Option<Vec<String>>, WarehouseError> {
        let table = &schema.table;
        let (target_schema, target_name) = self.settings.target_of(table);
        let target = self.catalog(&target_schema, &target_name).await?;
        if target.columns.is_empty() {
            return Ok(None);
        }
        let mut selected = Vec::new();
        let mut skipped = Vec::new();
        for column in &schema.columns {
            let ty = target_type(column);
            match target.column_for(&column.name, &ty.ddl) {
                Some(_) if matches!(column.ty, ColumnType::List(_)) => {
                    skipped.push(column.name.clone());
                    selected.push("NULL::text".to_string());
                }
                Some(name) => {
                    selected.push(select_expr(&format!("t.{}", ident(&name)), column, &ty))
                }
                None => {
                    skipped.push(column.name.clone());
                    selected.push("NULL::text".to_string());
                }
            }
        }
        let live = if target.type_of(DELETED).is_some() {
            format!(" WHERE NOT t.{}", ident(DELETED))
        } else {
            String::new()
        };
        let failed = |what: &str| WarehouseError::server(format!("{what} for {table}"));
        let rows = self
            .client
            .query_raw(
                &format!(
                    "SELECT {} FROM {} t{live}",
                    selected.join(", "),
                    target.qualified()
                ),
                std::iter::empty::<i32>(),
            )
            .await
            .map_err(failed("reading current rows"))?;
        futures_util::pin_mut!(rows);
        let mut held = Vec::with_capacity(chunk);
        while let Some(row) = futures_util::StreamExt::next(&mut rows).await {
            let row = row.map_err(failed("reading current rows"))?;
            let mut values = Vec::with_capacity(schema.columns.len());
            for (c, column) in schema.columns.iter().enumerate() {
                if skipped.contains(&column.name) {
                    values.push(Datum::Null);
                    continue;
                }
                let raw: Raw = row.get(c);
                values.push(decode(raw.0.as_deref(), &column.ty));
            }
            held.push(values);
            if held.len() >= chunk {
                each(std::mem::take(&mut held)).map_err(|reason| WarehouseError::Encode {
                    table: table.clone(),
                    column: String::new(),
                    reason,
                })?;
            }
        }
        if !held.is_empty() {
            each(held).map_err(|reason| WarehouseError::Encode {
                table: table.clone(),
                column: String::new(),
                reason,
            })?;
        }
        Ok(Some(skipped))
    }

    /// The current row of each key in `keys` (see [`Sink::latest_rows`]),
    /// read from the warehouse table: the keys go by COPY into a temporary
    /// table joined with it.
    pub async fn latest_rows(
        &mut self,
        schema: &TableSchema,
        keys: &[Vec<Datum>],
    ) -> Result<HashMap<String, Vec<Datum>>, WarehouseError> {
        let table = &schema.table;
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        if !self.tables.contains_key(table) {
            self.ensure_table(schema).await?;
        }
        let target = self
            .tables
            .get(table)
            .expect("ensured above")
            .target
            .clone();
        let key_columns: Vec<&Column> = schema.key_columns().collect();
        // A key the warehouse table has no column for: no current rows (and
        // nothing begun that would stay open).
        let mut on = Vec::new();
        for column in &key_columns {
            let ty = target_type(column);
            let Some(name) = target.column_for(&column.name, &ty.ddl) else {
                return Ok(HashMap::new());
            };
            on.push(format!(
                "t.{} = {}",
                ident(&name),
                ty.cast("k", &ident(&column.name))
            ));
        }
        let mut arrays = Vec::new();
        for (k, column) in key_columns.iter().enumerate() {
            let values: Vec<&Datum> = keys.iter().map(|key| &key[k]).collect();
            let array = build_array(&arrow_type(&column.ty), &values).map_err(|e| {
                WarehouseError::Encode {
                    table: table.clone(),
                    column: column.name.clone(),
                    reason: e.to_string(),
                }
            })?;
            arrays.push(array);
        }
        let ordinal: arrow_array::ArrayRef = Arc::new(arrow_array::Int32Array::from_iter_values(
            0..keys.len() as i32,
        ));
        let mut columns: Vec<(&str, &arrow_array::ArrayRef, Encoding)> = key_columns
            .iter()
            .zip(&arrays)
            .map(|(c, a)| (c.name.as_str(), a, Encoding::Source(c.ty.clone())))
            .collect();
        columns.push(("_tw_i", &ordinal, Encoding::Source(ColumnType::Int32)));
        let mut buf = BytesMut::new();
        copy::start(&mut buf);
        copy::encode_rows(&columns, keys.len(), &mut buf).map_err(|e| WarehouseError::Encode {
            table: table.clone(),
            column: e.column,
            reason: e.reason,
        })?;
        copy::finish(&mut buf);

        let own_transaction = !self.in_transaction;
        if own_transaction {
            self.begin().await?;
        }
        self.next_stage += 1;
        let temp = format!("_tw_keys_{}", self.next_stage);
        let mut definitions: Vec<String> = key_columns
            .iter()
            .map(|c| format!("{} {}", ident(&c.name), target_type(c).stage))
            .collect();
        definitions.push("_tw_i integer".into());
        let failed = |what: &str| WarehouseError::server(format!("{what} for {table}"));
        self.client
            .batch_execute(&format!(
                "CREATE TEMP TABLE {} ({}) ON COMMIT DROP",
                ident(&temp),
                definitions.join(", ")
            ))
            .await
            .map_err(failed("creating a key table"))?;
        let names: Vec<String> = columns.iter().map(|(n, ..)| ident(n)).collect();
        let sink = self
            .client
            .copy_in::<_, bytes::Bytes>(
                format!(
                    "COPY pg_temp.{} ({}) FROM STDIN (FORMAT binary)",
                    ident(&temp),
                    names.join(", ")
                )
                .as_str(),
            )
            .await
            .map_err(failed("copying keys"))?;
        futures_util::pin_mut!(sink);
        sink.send(buf.freeze())
            .await
            .map_err(failed("copying keys"))?;
        sink.as_mut()
            .finish()
            .await
            .map_err(failed("copying keys"))?;
        let target = &target;
        let mut selected = vec!["k._tw_i".to_string()];
        let mut present = Vec::new();
        // Per column, whether another version of it (an older type's
        // column) holds a value: then a NULL in the current one means "not
        // written since the type change", not NULL. Selected after the
        // columns.
        let mut elsewhere = Vec::new();
        let mut checks = Vec::new();
        for column in &schema.columns {
            let ty = target_type(column);
            match target.column_for(&column.name, &ty.ddl) {
                Some(name) => {
                    selected.push(select_expr(&format!("t.{}", ident(&name)), column, &ty));
                    present.push(true);
                    let others: Vec<String> = target
                        .versions_of(&column.name)
                        .filter(|other| *other != name)
                        .map(|other| format!("t.{} IS NOT NULL", ident(other)))
                        .collect();
                    if others.is_empty() {
                        elsewhere.push(None);
                    } else {
                        elsewhere.push(Some(checks.len()));
                        checks.push(format!("({})", others.join(" OR ")));
                    }
                }
                None => {
                    selected.push("NULL".into());
                    present.push(false);
                    elsewhere.push(None);
                }
            }
        }
        let first_check = selected.len();
        selected.extend(checks);
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {} FROM {} t JOIN pg_temp.{} k ON {}",
                    selected.join(", "),
                    target.qualified(),
                    ident(&temp),
                    on.join(" AND ")
                ),
                &[],
            )
            .await
            .map_err(failed("reading current rows"))?;
        if own_transaction {
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(failed("reading current rows"))?;
            self.in_transaction = false;
        }
        let mut found = HashMap::new();
        for row in rows {
            let i: i32 = row.get(0);
            let mut values = Vec::with_capacity(schema.columns.len());
            for (c, column) in schema.columns.iter().enumerate() {
                if !present[c] {
                    values.push(Datum::Unchanged);
                    continue;
                }
                let raw: Raw = row.get(c + 1);
                let older = elsewhere[c].is_some_and(|k| row.get::<_, bool>(first_check + k));
                if raw.0.is_none() && older {
                    // Its value is in an older type's column: never guessed.
                    values.push(Datum::Unchanged);
                    continue;
                }
                values.push(decode(raw.0.as_deref(), &column.ty));
            }
            found.insert(key_string(&keys[i as usize]), values);
        }
        Ok(found)
    }

    /// Drops the warehouse table (and change log) of `table` and forgets
    /// its state: what an interrupted initial snapshot left behind.
    pub async fn remove_table(&mut self, table: &TableId) -> Result<(), WarehouseError> {
        let (schema, name) = self.settings.target_of(table);
        self.client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {s}.{t}; DROP TABLE IF EXISTS {s}.{l};
                 DELETE FROM {state} WHERE pipeline = {p} AND source_schema = {ss} AND source_table = {st}",
                s = ident(&schema),
                t = ident(&name),
                l = ident(&format!("{name}__changes")),
                state = self.state_table("table_state"),
                p = literal(&self.settings.pipeline),
                ss = literal(&table.schema),
                st = literal(&table.table),
            ))
            .await
            .map_err(WarehouseError::server(format!(
                "removing the warehouse table of {table}"
            )))?;
        self.tables.remove(table);
        Ok(())
    }
}

/// The `ALTER TABLE` statements that let `target` hold `schema`.
fn evolve(target: &Target, schema: &TableSchema, table: &TableId) -> Vec<String> {
    let mut statements = Vec::new();
    for column in &schema.columns {
        let ty = target_type(column);
        if target.column_for(&column.name, &ty.ddl).is_some() {
            continue;
        }
        match target.type_of(&column.name) {
            None => {
                info!(table = %table, target = %target.qualified(), column = %column.name, "adding a warehouse column");
                statements.push(format!(
                    "ALTER TABLE {} ADD COLUMN {} {}",
                    target.qualified(),
                    ident(&column.name),
                    ty.ddl
                ));
            }
            Some(have) if widens(have, &ty.ddl) => {
                info!(table = %table, target = %target.qualified(), column = %column.name, from = have, to = %ty.ddl, "widening a warehouse column");
                statements.push(format!(
                    "ALTER TABLE {} ALTER COLUMN {} TYPE {}",
                    target.qualified(),
                    ident(&column.name),
                    ty.ddl
                ));
            }
            Some(have) => {
                let mut n = 2;
                while target.type_of(&format!("{}__v{n}", column.name)).is_some() {
                    n += 1;
                }
                let name = format!("{}__v{n}", column.name);
                warn!(
                    table = %table,
                    target = %target.qualified(),
                    column = %column.name,
                    from = have,
                    to = %ty.ddl,
                    warehouse_column = %name,
                    "column type changed in a way the warehouse cannot widen in place: \
                     its values go to a new column from here on"
                );
                statements.push(format!(
                    "ALTER TABLE {} ADD COLUMN {} {}",
                    target.qualified(),
                    ident(&name),
                    ty.ddl
                ));
            }
        }
    }
    // Columns the source dropped stay, and must take NULL from now on.
    for (name, _) in &target.columns {
        let in_source = schema.columns.iter().any(|c| {
            c.name == *name
                || name
                    .strip_prefix(c.name.as_str())
                    .is_some_and(|r| r.starts_with("__v"))
        });
        let key = schema.key_columns().any(|c| c.name == *name);
        if !in_source && !key && !name.starts_with("_tw_") {
            statements.push(format!(
                "ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL",
                target.qualified(),
                ident(name)
            ));
        }
    }
    statements
}

/// The statements applying one staging table (see the module diagram).
fn apply_sql(known: &Known, stage: &Stage, merge: bool, soft: bool) -> String {
    let target = &known.target;
    // A table that has kept soft deletes (now or in an earlier run) clears
    // the flag when a key comes back.
    let flagged = target.type_of(DELETED).is_some();
    let soft = soft && flagged;
    let staged = format!("pg_temp.{}", ident(&stage.name));
    // (target column, value expression over alias s, is key)
    let mut columns: Vec<(String, String, bool)> = Vec::new();
    for column in &stage.schema.columns {
        let ty = target_type(column);
        let name = target
            .column_for(&column.name, &ty.ddl)
            .unwrap_or_else(|| column.name.clone());
        columns.push((ident(&name), ty.cast("s", &ident(&column.name)), column.key));
    }
    let key_names: Vec<String> = stage
        .schema
        .key_columns()
        .map(|c| format!("s.{}", ident(&c.name)))
        .collect();
    let after_truncate = match stage.truncate {
        Some(mark) => format!(
            " AND (s._tw_seq, s._tw_ord) > ({}, {})",
            mark.seq as i64, mark.ord as i64
        ),
        None => String::new(),
    };
    let latest = format!(
        "SELECT DISTINCT ON ({keys}) s.* FROM {staged} s WHERE s._tw_op <> 't'{after_truncate} \
         ORDER BY {keys}, s._tw_seq DESC, s._tw_ord DESC",
        keys = key_names.join(", ")
    );
    let on: Vec<String> = columns
        .iter()
        .filter(|(_, _, key)| *key)
        .map(|(name, value, _)| format!("t.{name} = {value}"))
        .collect();
    let names: Vec<&str> = columns.iter().map(|(n, _, _)| n.as_str()).collect();
    let values: Vec<&str> = columns.iter().map(|(_, v, _)| v.as_str()).collect();
    // Target columns this schema does not write — a column the source
    // dropped, the older versions of a column whose type changed — are NULL
    // in every row changed from now on, as in the lake.
    let written: Vec<&str> = columns.iter().map(|(n, _, _)| n.as_str()).collect();
    let stale: Vec<String> = target
        .columns
        .iter()
        .map(|(name, _)| name)
        .filter(|name| {
            !written.contains(&ident(name).as_str())
                && *name != DELETED
                && *name != DELETED_AT
                && !stage
                    .schema
                    .key_columns()
                    .any(|k| **name == k.name || is_version_of(name, &k.name))
        })
        .map(|name| format!("{} = NULL", ident(name)))
        .collect();
    let mut updates: Vec<String> = columns
        .iter()
        .filter(|(_, _, key)| !key)
        .map(|(name, value, _)| format!("{name} = {value}"))
        .collect();
    updates.extend(stale.iter().cloned());
    let revive = format!("{DELETED} = false, {DELETED_AT} = NULL");
    if flagged {
        updates.push(revive.clone());
    }
    // The INSERT … ON CONFLICT path: the key, and what a conflicting row
    // takes from the new one.
    let conflict: Vec<String> = columns
        .iter()
        .filter(|(_, _, key)| *key)
        .map(|(n, _, _)| n.clone())
        .collect();
    let mut set: Vec<String> = columns
        .iter()
        .filter(|(_, _, key)| !key)
        .map(|(n, _, _)| format!("{n} = EXCLUDED.{n}"))
        .collect();
    set.extend(stale);
    if flagged {
        set.push(revive);
    }
    let mut sql = Vec::new();
    if stage.truncate.is_some() && soft {
        sql.push(format!(
            "UPDATE {} SET {DELETED} = true, {DELETED_AT} = \
             (SELECT max(_tw_commit_ts) FROM {staged} WHERE _tw_op = 't') WHERE NOT {DELETED}",
            target.qualified()
        ));
    } else if stage.truncate.is_some() {
        sql.push(format!("DELETE FROM {}", target.qualified()));
    }
    if merge && soft {
        sql.push(format!(
            "MERGE INTO {target} AS t USING ({latest}) AS s ON {on}
             WHEN MATCHED AND s._tw_op = 'd' THEN
                 UPDATE SET {DELETED} = true, {DELETED_AT} = s._tw_commit_ts
             WHEN MATCHED THEN UPDATE SET {updates}
             WHEN NOT MATCHED AND s._tw_op = 'd' THEN
                 INSERT ({names}, {DELETED}, {DELETED_AT}) VALUES ({values}, true, s._tw_commit_ts)
             WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})",
            target = target.qualified(),
            on = on.join(" AND "),
            updates = updates.join(", "),
            names = names.join(", "),
            values = values.join(", "),
        ));
    } else if merge {
        let matched = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("UPDATE SET {}", updates.join(", "))
        };
        sql.push(format!(
            "MERGE INTO {target} AS t USING ({latest}) AS s ON {on}
             WHEN MATCHED AND s._tw_op = 'd' THEN DELETE
             WHEN MATCHED THEN {matched}
             WHEN NOT MATCHED AND s._tw_op <> 'd' THEN INSERT ({names}) VALUES ({values})",
            target = target.qualified(),
            on = on.join(" AND "),
            names = names.join(", "),
            values = values.join(", "),
        ));
    } else if soft {
        // Deletes of rows the table holds flag them; the rest (changes, and
        // deletes of keys it never held) go through one upsert that leaves
        // a flagged row alone.
        sql.push(format!(
            "UPDATE {target} AS t SET {DELETED} = true, {DELETED_AT} = s._tw_commit_ts \
             FROM ({latest}) AS s WHERE s._tw_op = 'd' AND {on}",
            target = target.qualified(),
            on = on.join(" AND "),
        ));
        sql.push(format!(
            "INSERT INTO {target} AS t ({names}, {DELETED}, {DELETED_AT}) \
             SELECT {values}, s._tw_op = 'd', CASE WHEN s._tw_op = 'd' THEN s._tw_commit_ts END \
             FROM ({latest}) AS s \
             ON CONFLICT ({conflict}) DO UPDATE SET {set} WHERE NOT EXCLUDED.{DELETED}",
            target = target.qualified(),
            names = names.join(", "),
            values = values.join(", "),
            conflict = conflict.join(", "),
            set = set.join(", "),
        ));
    } else {
        sql.push(format!(
            "DELETE FROM {target} AS t USING ({latest}) AS s WHERE s._tw_op = 'd' AND {on}",
            target = target.qualified(),
            on = on.join(" AND "),
        ));
        let action = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", set.join(", "))
        };
        sql.push(format!(
            "INSERT INTO {target} AS t ({names}) SELECT {values} FROM ({latest}) AS s \
             WHERE s._tw_op <> 'd' ON CONFLICT ({conflict}) {action}",
            target = target.qualified(),
            names = names.join(", "),
            values = values.join(", "),
            conflict = conflict.join(", "),
        ));
    }
    if let Some(log) = &known.changelog {
        let mut names = Vec::new();
        let mut values = Vec::new();
        for column in &stage.schema.columns {
            let ty = target_type(column);
            let name = log
                .column_for(&column.name, &ty.ddl)
                .unwrap_or_else(|| column.name.clone());
            names.push(ident(&name));
            values.push(ty.cast("s", &ident(&column.name)));
        }
        for (meta, _) in META {
            names.push(ident(meta));
            values.push(format!("s.{}", ident(meta)));
        }
        sql.push(format!(
            "INSERT INTO {} ({}) SELECT {} FROM {staged} s ORDER BY s._tw_seq, s._tw_ord",
            log.qualified(),
            names.join(", "),
            values.join(", ")
        ));
    }
    sql.join(";\n")
}

/// The mark of the last truncate row of `batch`, if any.
fn last_truncate(batch: &ChangeBatch) -> Option<Mark> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt64Type;
    use arrow_array::Array;
    let ops = batch
        .batch
        .column_by_name("_tw_op")?
        .as_string_opt::<i32>()?;
    let seqs = batch
        .batch
        .column_by_name("_tw_seq")?
        .as_primitive_opt::<UInt64Type>()?;
    let ords = batch
        .batch
        .column_by_name("_tw_ord")?
        .as_primitive_opt::<UInt64Type>()?;
    (0..ops.len())
        .rev()
        .find(|&i| ops.value(i) == "t")
        .map(|i| Mark::new(seqs.value(i), ords.value(i)))
}

impl Sink for WarehouseSink {
    type Error = WarehouseError;

    async fn maintain(&mut self) {
        self.apply_retention().await;
    }

    fn staged_bytes(&self) -> u64 {
        self.staged_bytes
    }

    async fn prepare(&mut self, schema: &TableSchema) -> Result<(), WarehouseError> {
        self.ensure_table(schema).await
    }

    async fn mark(&mut self, table: &TableId) -> Result<Option<Mark>, WarehouseError> {
        Ok(self.table_state(table).await?.map(|s| s.mark))
    }

    async fn write(&mut self, batch: ChangeBatch) -> Result<(), WarehouseError> {
        let result = WarehouseSink::write(self, batch).await;
        self.roll_back_on_error(result).await
    }

    async fn latest_rows(
        &mut self,
        schema: &TableSchema,
        keys: &[Vec<Datum>],
    ) -> Result<HashMap<String, Vec<Datum>>, WarehouseError> {
        WarehouseSink::latest_rows(self, schema, keys).await
    }

    /// The warehouse keeps no schema history (its catalog is the current
    /// schema): DDL statements are only logged at debug level.
    fn note_ddl(&mut self, table: &TableId, seq: u64, _statement: String) {
        debug!(table = %table, seq, "ddl noted");
    }

    fn table_phase(&mut self, table: &TableId, phase: SnapshotPhase, mark: Mark) {
        self.phases.insert(table.clone(), (phase, mark));
    }

    async fn commit(
        &mut self,
        position: &str,
        phase: Option<SnapshotPhase>,
    ) -> Result<usize, WarehouseError> {
        let result = WarehouseSink::commit(self, position, phase).await;
        self.roll_back_on_error(result).await
    }
}

/// A session on the warehouse: TLS as `settings.url` asks, its connection
/// driven by a task of its own (`ended` is logged when it fails), then
/// `setup` run on it.
pub(crate) async fn session(
    settings: &WarehouseSettings,
    ended: &'static str,
    setup: &str,
) -> Result<Client, WarehouseError> {
    let (config, options) = tidewater_endpoint::postgres::parse_url(settings.url.expose())
        .map_err(WarehouseError::Url)?;
    let tls = tidewater_endpoint::postgres::TlsSetup::new(&options).map_err(WarehouseError::Url)?;
    let (client, connection) = config
        .connect(tls.connector())
        .await
        .map_err(WarehouseError::server("connecting"))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            warn!(error = %error, "{ended}");
        }
    });
    client
        .batch_execute(setup)
        .await
        .map_err(WarehouseError::server("setting up the session"))?;
    Ok(client)
}
