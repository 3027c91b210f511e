//! Pipeline state: what a pipeline keeps between runs, defined once for
//! every sink.
//!
//! A restart must know where the pipeline stood without asking anything but
//! the destination (a crash loses the process, never the destination). Two
//! kinds of state serve that:
//!
//! * **Per-table state** ([`TableState`]) is written *with* each table's
//!   data, in the same atomic commit (Delta commit metadata, the warehouse's
//!   `table_state` row in the applying transaction). It cannot live anywhere
//!   else without losing exactly-once, so it stays with the sink; this module
//!   only defines its one shape.
//! * **Pipeline records** ([`Phase`], [`StoppedTables`], [`SnapshotPlan`],
//!   [`SourcePosition`]) say what the pipeline as a whole is doing. Each is
//!   written on its own (atomically) at a point the start-up logic
//!   tolerates a crash around. A [`StateStore`] keeps them: files next to
//!   the lake's tables, rows in the warehouse's state schema. The store only
//!   moves text; the encoding below is shared, so both read the same thing.
//!
//! ```text
//!   record ──encode──▶ {"format":1,…} ──put──▶ lake file / warehouse row
//!   record ◀─decode─── text ◀──get── (also every format an earlier release wrote)
//! ```
//!
//! Every record is JSON with a `format` number. Text written by releases
//! before formats existed (a one-line slot marker, two spellings of the
//! stopped tables, a bare position) still decodes, flagged legacy;
//! [`StateStore::upgrade`] rewrites such records in the current format when a
//! pipeline starts. A record from a newer release (a higher `format`) is an
//! error rather than a guess. A record that does not decode is damaged: the
//! store names where it is kept and what is wrong (never its content, which
//! may quote a row), and the caller stops with a config error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Classified;
use crate::event::{Mark, TableId};
use crate::state_file::json_problem;
use crate::traits::StoppedTable;

/// The format this release writes (and the newest it reads).
pub const FORMAT: u32 = 1;

/// What a table's newest commit by this pipeline says, read back from the
/// destination at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableState {
    /// (`_tw_seq`, `_tw_ord`) of the last change in the table.
    pub mark: Mark,
    /// Source position that was safe to resume from when it was committed.
    pub position: String,
    /// True once the table's initial copy is complete.
    pub snapshot_done: bool,
    /// The destination's own version of the table (the Delta version; the
    /// warehouse counts commits).
    pub version: u64,
    /// Commits this pipeline made to the table.
    pub commits: i64,
}

/// The pipeline records a [`StateStore`] keeps, each with where it lives and
/// what a person can do when it is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Phase,
    StoppedTables,
    SnapshotPlan,
    SourcePosition,
    CopyRequests,
    ForgetRequests,
    Erasures,
}

impl RecordKind {
    pub const ALL: [RecordKind; 7] = [
        RecordKind::Phase,
        RecordKind::StoppedTables,
        RecordKind::SnapshotPlan,
        RecordKind::SourcePosition,
        RecordKind::CopyRequests,
        RecordKind::ForgetRequests,
        RecordKind::Erasures,
    ];

    /// Its key in the warehouse's `pipeline_state` table.
    pub fn key(self) -> &'static str {
        match self {
            RecordKind::Phase => "slot_marker",
            RecordKind::StoppedTables => "stopped_tables",
            RecordKind::SnapshotPlan => "snapshot_plan",
            RecordKind::SourcePosition => "source_position",
            RecordKind::CopyRequests => "copy_requests",
            RecordKind::ForgetRequests => "forget_requests",
            RecordKind::Erasures => "erasures",
        }
    }

    /// Its file in the pipeline's folder of the lake.
    pub fn file(self) -> &'static str {
        match self {
            RecordKind::Phase => "_tidewater_slot",
            RecordKind::StoppedTables => "_tidewater_stopped_tables.json",
            RecordKind::SnapshotPlan => "_tidewater_snapshot_plan.json",
            RecordKind::SourcePosition => "_tidewater_source_position",
            RecordKind::CopyRequests => "_tidewater_copy_requests.json",
            RecordKind::ForgetRequests => "_tidewater_forget_requests.json",
            RecordKind::Erasures => "_tidewater_erasures.json",
        }
    }

    /// What a person can do when the record is damaged.
    pub fn fix(self) -> &'static str {
        match self {
            RecordKind::StoppedTables => {
                "restore it from a backup. It lists the tables this pipeline stopped; removing it \
                 is NOT safe on its own: those tables would be replicated again from the current \
                 position, missing the changes skipped while they were stopped. If there is no \
                 backup, remove it and copy every table of the pipeline again \
                 (`tidewater snapshot --table schema.table` for each)"
            }
            RecordKind::Phase => {
                "restore it from a backup, or write it again by hand: \
                 {\"format\":1,\"phase\":\"stream\",\"slot\":\"<slot>\"} if the initial snapshot \
                 had completed, \"phase\":\"snapshot\" if it was still running (<slot> is \
                 source.slot; null for a MySQL source). Do not just remove it: without it a \
                 running initial snapshot is not recognised as this pipeline's"
            }
            RecordKind::SnapshotPlan => {
                "restore it from a backup, or remove it: the interrupted initial snapshot then \
                 starts over (every table is copied again), nothing is lost"
            }
            RecordKind::SourcePosition => {
                "remove it: the pipeline then resumes from the oldest position its tables \
                 recorded, and their marks skip what is replayed (a start does this by itself)"
            }
            RecordKind::CopyRequests => {
                "remove it, then ask again for the copies you want \
                 (`tidewater snapshot --table schema.table`): it only lists tables an operator \
                 asked to copy again"
            }
            RecordKind::ForgetRequests => {
                "remove it, then run the `tidewater forget` commands again: it only lists \
                 erasures asked for and not done yet"
            }
            RecordKind::Erasures => {
                "restore it from a backup: it is the audit of erasures done (when, table, key \
                 hash, rows removed); removing it loses that record, not data"
            }
        }
    }
}

/// A record's value, decoded.
pub trait StateRecord: Sized {
    const KIND: RecordKind;

    /// The record in the current [`FORMAT`].
    fn encode(&self) -> String;

    /// The record from `text`, in any format a release wrote; true when
    /// that was an older one. `Err` says where and what is wrong, never
    /// what the text holds.
    fn decode(text: &str) -> Result<(Self, bool), String>;
}

/// The pipeline's phase, and the replication slot it reads from (Postgres;
/// a binlog source has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// An initial snapshot runs. Written before it creates its slot, so a
    /// crash at any point reads as an interrupted snapshot.
    Snapshot { slot: Option<String> },
    /// The initial snapshot is committed in every table; changes stream.
    Stream { slot: Option<String> },
}

impl Phase {
    pub fn slot(&self) -> Option<&str> {
        match self {
            Phase::Snapshot { slot } | Phase::Stream { slot } => slot.as_deref(),
        }
    }
}

/// The slot name the releases before formats wrote for a binlog source.
const LEGACY_BINLOG_SLOT: &str = "binlog";

impl StateRecord for Phase {
    const KIND: RecordKind = RecordKind::Phase;

    fn encode(&self) -> String {
        with_format(self)
    }

    fn decode(text: &str) -> Result<(Self, bool), String> {
        let trimmed = text.trim();
        if !trimmed.starts_with('{') {
            // `snapshot <slot>` (lake) or `snapshot:<slot>` (warehouse).
            let (phase, slot) = trimmed
                .split_once(' ')
                .or_else(|| trimmed.split_once(':'))
                .ok_or_else(|| "it is not a phase record tidewater writes".to_string())?;
            let slot = slot.trim();
            if slot.is_empty() {
                return Err("it names no slot".into());
            }
            let slot = (slot != LEGACY_BINLOG_SLOT).then(|| slot.to_string());
            return match phase {
                "snapshot" => Ok((Phase::Snapshot { slot }, true)),
                "stream" => Ok((Phase::Stream { slot }, true)),
                _ => Err("it is not a phase record tidewater writes".into()),
            };
        }
        let value = versioned(trimmed)?;
        let phase = serde_json::from_value(value).map_err(|err| json_problem(&err))?;
        Ok((phase, false))
    }
}

/// The tables this pipeline stopped (see [`StoppedTable`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoppedTables(pub Vec<StoppedTable>);

#[derive(Serialize, Deserialize)]
struct StoppedEntry {
    schema: String,
    /// The table's name (the lake's files before formats said `name`, and
    /// `table` for `schema.table`).
    #[serde(alias = "name")]
    table: String,
    #[serde(default)]
    position: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    stopped_at: u64,
}

#[derive(Deserialize)]
struct LegacyLakeEntry {
    schema: String,
    name: String,
    #[serde(default)]
    position: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    stopped_at: u64,
}

impl StateRecord for StoppedTables {
    const KIND: RecordKind = RecordKind::StoppedTables;

    fn encode(&self) -> String {
        let tables: Vec<StoppedEntry> = self
            .0
            .iter()
            .map(|s| StoppedEntry {
                schema: s.table.schema.clone(),
                table: s.table.table.clone(),
                position: s.position.clone(),
                reason: s.reason.clone(),
                stopped_at: s.stopped_at,
            })
            .collect();
        let value = serde_json::json!({ "format": FORMAT, "tables": tables });
        format!(
            "{}\n",
            serde_json::to_string_pretty(&value).expect("serializes")
        )
    }

    fn decode(text: &str) -> Result<(Self, bool), String> {
        let value: Value = serde_json::from_str(text).map_err(|err| json_problem(&err))?;
        let entries: Vec<StoppedEntry> = match &value {
            // The warehouse's row before formats: a bare list.
            Value::Array(_) => {
                let list = serde_json::from_value(value).map_err(|err| json_problem(&err))?;
                return Ok((Self::from_entries(list), true));
            }
            Value::Object(map) if !map.contains_key("format") => {
                // The lake's file before formats: `table` held `schema.table`.
                #[derive(Deserialize)]
                struct File {
                    tables: Vec<LegacyLakeEntry>,
                }
                let file: File = serde_json::from_value(value).map_err(|err| json_problem(&err))?;
                let list = file
                    .tables
                    .into_iter()
                    .map(|e| StoppedEntry {
                        schema: e.schema,
                        table: e.name,
                        position: e.position,
                        reason: e.reason,
                        stopped_at: e.stopped_at,
                    })
                    .collect();
                return Ok((Self::from_entries(list), true));
            }
            _ => {
                #[derive(Deserialize)]
                struct File {
                    tables: Vec<StoppedEntry>,
                }
                let file: File = serde_json::from_value(checked_format(value)?)
                    .map_err(|err| json_problem(&err))?;
                file.tables
            }
        };
        Ok((Self::from_entries(entries), false))
    }
}

impl StoppedTables {
    fn from_entries(entries: Vec<StoppedEntry>) -> Self {
        StoppedTables(
            entries
                .into_iter()
                .map(|e| StoppedTable {
                    table: TableId::new(e.schema, e.table),
                    position: e.position,
                    reason: e.reason,
                    stopped_at: e.stopped_at,
                })
                .collect(),
        )
    }
}

/// Tables an operator asked to copy again while the pipeline streams
/// (`tidewater snapshot --table` beside a running `run`, or a row of the
/// signal table). Kept until each copy completes, so a restart in between
/// asks again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyRequests(pub Vec<TableId>);

#[derive(Serialize, Deserialize)]
struct RequestedTable {
    schema: String,
    table: String,
}

impl StateRecord for CopyRequests {
    const KIND: RecordKind = RecordKind::CopyRequests;

    fn encode(&self) -> String {
        let tables: Vec<RequestedTable> = self
            .0
            .iter()
            .map(|t| RequestedTable {
                schema: t.schema.clone(),
                table: t.table.clone(),
            })
            .collect();
        let value = serde_json::json!({ "format": FORMAT, "tables": tables });
        format!(
            "{}\n",
            serde_json::to_string_pretty(&value).expect("serializes")
        )
    }

    fn decode(text: &str) -> Result<(Self, bool), String> {
        #[derive(Deserialize)]
        struct File {
            tables: Vec<RequestedTable>,
        }
        let file: File =
            serde_json::from_value(versioned(text)?).map_err(|err| json_problem(&err))?;
        Ok((
            CopyRequests(
                file.tables
                    .into_iter()
                    .map(|t| TableId::new(t.schema, t.table))
                    .collect(),
            ),
            false,
        ))
    }
}

/// Erasures asked for (`tidewater forget`) and not done yet: the running
/// pipeline does each between its commits, then moves it to [`Erasures`].
/// Keys are digests of the lake's key values, never the values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetRequests {
    pub requests: Vec<ForgetRequest>,
}

/// One `tidewater forget`: the keys of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetRequest {
    /// Names the request in the audit.
    pub id: String,
    pub schema: String,
    pub table: String,
    /// Digests of the keys (hex), as the sink finds rows by.
    pub keys: Vec<String>,
    /// The audit's hash of each key (hex SHA-256), in the same order.
    pub key_hashes: Vec<String>,
    /// When it was asked for (RFC 3339).
    pub requested_at: String,
}

impl StateRecord for ForgetRequests {
    const KIND: RecordKind = RecordKind::ForgetRequests;

    fn encode(&self) -> String {
        with_format(self)
    }

    fn decode(text: &str) -> Result<(Self, bool), String> {
        let value = versioned(text)?;
        let record = serde_json::from_value(value).map_err(|err| json_problem(&err))?;
        Ok((record, false))
    }
}

/// The audit of erasures done: when, which table, each key's hash, how
/// many rows went where. Never a value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasures {
    pub erasures: Vec<Erasure>,
}

/// One erasure done (or refused, with why).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    pub id: String,
    pub schema: String,
    pub table: String,
    pub key_hashes: Vec<String>,
    pub requested_at: String,
    pub done_at: String,
    /// "erased", or "failed: <why>".
    pub outcome: String,
    pub changelog_rows: u64,
    pub current_rows: u64,
    pub files_rewritten: u64,
    pub log_entries_deleted: u64,
}

impl StateRecord for Erasures {
    const KIND: RecordKind = RecordKind::Erasures;

    fn encode(&self) -> String {
        with_format(self)
    }

    fn decode(text: &str) -> Result<(Self, bool), String> {
        let value = versioned(text)?;
        let record = serde_json::from_value(value).map_err(|err| json_problem(&err))?;
        Ok((record, false))
    }
}

/// How a running initial snapshot split its tables into chunks, recorded
/// before its first commit so that an interrupted one can read the same
/// chunks again (Postgres: page ranges of the exported snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPlan {
    /// The slot whose exported snapshot the chunks are read in.
    pub slot: String,
    /// The slot's consistent point (an LSN).
    pub consistent_point: u64,
    pub tables: Vec<PlannedChunks>,
}

/// One table of a [`SnapshotPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChunks {
    pub table: TableId,
    /// Pages per chunk.
    pub chunk_pages: u64,
    pub chunks: u32,
}

#[derive(Serialize, Deserialize)]
struct PlanFile {
    slot: String,
    consistent_point: u64,
    tables: Vec<PlanEntry>,
}

#[derive(Serialize, Deserialize)]
struct PlanEntry {
    schema: String,
    /// `name` before formats.
    #[serde(alias = "name")]
    table: String,
    chunk_pages: u64,
    chunks: u32,
}

impl StateRecord for SnapshotPlan {
    const KIND: RecordKind = RecordKind::SnapshotPlan;

    fn encode(&self) -> String {
        let file = PlanFile {
            slot: self.slot.clone(),
            consistent_point: self.consistent_point,
            tables: self
                .tables
                .iter()
                .map(|t| PlanEntry {
                    schema: t.table.schema.clone(),
                    table: t.table.table.clone(),
                    chunk_pages: t.chunk_pages,
                    chunks: t.chunks,
                })
                .collect(),
        };
        let mut value = serde_json::to_value(file).expect("a plan serializes");
        value["format"] = FORMAT.into();
        format!(
            "{}\n",
            serde_json::to_string_pretty(&value).expect("serializes")
        )
    }

    fn decode(text: &str) -> Result<(Self, bool), String> {
        let value: Value = serde_json::from_str(text).map_err(|err| json_problem(&err))?;
        let legacy = value.get("format").is_none();
        let value = if legacy {
            value
        } else {
            checked_format(value)?
        };
        let file: PlanFile = serde_json::from_value(value).map_err(|err| json_problem(&err))?;
        let plan = SnapshotPlan {
            slot: file.slot,
            consistent_point: file.consistent_point,
            tables: file
                .tables
                .into_iter()
                .map(|t| PlannedChunks {
                    table: TableId::new(t.schema, t.table),
                    chunk_pages: t.chunk_pages,
                    chunks: t.chunks,
                })
                .collect(),
        };
        Ok((plan, legacy))
    }
}

/// The source position acknowledged last, for sources whose server keeps no
/// replica state (the binlog): the analogue of a slot's confirmed position.
/// Written only after the commits that made it safe; a stale one only means
/// a longer replay, which the tables' marks deduplicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    pub position: String,
}

impl StateRecord for SourcePosition {
    const KIND: RecordKind = RecordKind::SourcePosition;

    fn encode(&self) -> String {
        with_format(self)
    }

    fn decode(text: &str) -> Result<(Self, bool), String> {
        let trimmed = text.trim();
        if !trimmed.starts_with('{') {
            // Before formats: the position's own text on one line.
            if trimmed.is_empty() || trimmed.contains('\n') {
                return Err("it is not one position".into());
            }
            return Ok((
                SourcePosition {
                    position: trimmed.to_string(),
                },
                true,
            ));
        }
        let value = versioned(trimmed)?;
        let position = serde_json::from_value(value).map_err(|err| json_problem(&err))?;
        Ok((position, false))
    }
}

/// `record` as one line of JSON with the current `format`.
fn with_format<T: Serialize>(record: &T) -> String {
    let mut value = serde_json::to_value(record).expect("records serialize");
    value["format"] = FORMAT.into();
    format!("{value}\n")
}

/// `text` as JSON whose `format` this release reads.
fn versioned(text: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(text).map_err(|err| json_problem(&err))?;
    checked_format(value)
}

fn checked_format(value: Value) -> Result<Value, String> {
    match value.get("format").and_then(Value::as_u64) {
        Some(n) if n >= 1 && n <= u64::from(FORMAT) => Ok(value),
        Some(n) if n > u64::from(FORMAT) => Err(format!(
            "it was written by a newer tidewater (format {n}; this release reads up to {FORMAT}): \
             run that release, or restore the state a release of this one wrote"
        )),
        _ => Err("valid JSON, but its `format` is missing or not a number tidewater wrote".into()),
    }
}

/// Where a pipeline's records are kept. Implementations move text (files
/// next to the lake, rows of the warehouse's state schema); the records'
/// encoding is the provided methods', so every store reads what any other
/// wrote.
///
/// # Contract
/// * `put` replaces the record atomically and durably: a crash leaves the
///   old text or the new, never a mix. `delete` of an absent record is Ok.
/// * `get` returns exactly what the last `put` stored (None if none).
/// * `corrupt` builds the config-class error for a damaged record, naming
///   where the store keeps it and [`RecordKind::fix`].
#[allow(async_fn_in_trait)] // dispatched through concrete types, never `dyn`
pub trait StateStore {
    type Error: Classified;

    async fn get(&self, kind: RecordKind) -> Result<Option<String>, Self::Error>;

    async fn put(&self, kind: RecordKind, text: &str) -> Result<(), Self::Error>;

    async fn delete(&self, kind: RecordKind) -> Result<(), Self::Error>;

    fn corrupt(&self, kind: RecordKind, problem: String) -> Self::Error;

    /// The record, if one was written.
    async fn read<R: StateRecord>(&self) -> Result<Option<R>, Self::Error> {
        let Some(text) = self.get(R::KIND).await? else {
            return Ok(None);
        };
        match R::decode(&text) {
            Ok((record, _)) => Ok(Some(record)),
            Err(problem) => Err(self.corrupt(R::KIND, problem)),
        }
    }

    async fn write<R: StateRecord>(&self, record: &R) -> Result<(), Self::Error> {
        self.put(R::KIND, &record.encode()).await
    }

    async fn remove<R: StateRecord>(&self) -> Result<(), Self::Error> {
        self.delete(R::KIND).await
    }

    /// Rewrites every record an earlier release wrote in the current
    /// format; returns which. A damaged record is an error here too.
    async fn upgrade(&self) -> Result<Vec<RecordKind>, Self::Error> {
        let mut upgraded = Vec::new();
        for kind in RecordKind::ALL {
            let Some(text) = self.get(kind).await? else {
                continue;
            };
            let encoded = match kind {
                RecordKind::Phase => reencode::<Phase>(&text),
                RecordKind::StoppedTables => reencode::<StoppedTables>(&text),
                RecordKind::SnapshotPlan => reencode::<SnapshotPlan>(&text),
                RecordKind::SourcePosition => reencode::<SourcePosition>(&text),
                RecordKind::CopyRequests => reencode::<CopyRequests>(&text),
                RecordKind::ForgetRequests => reencode::<ForgetRequests>(&text),
                RecordKind::Erasures => reencode::<Erasures>(&text),
            };
            match encoded {
                // The position is a shortcut (a restart can replay from the
                // tables' own positions): a damaged one is left for the
                // reader to ignore, never a reason to stop.
                Err(_) if kind == RecordKind::SourcePosition => {}
                Ok(Some(current)) => {
                    self.put(kind, &current).await?;
                    upgraded.push(kind);
                }
                Ok(None) => {}
                Err(problem) => return Err(self.corrupt(kind, problem)),
            }
        }
        Ok(upgraded)
    }
}

/// `text` in the current format when it was written in an older one.
fn reencode<R: StateRecord>(text: &str) -> Result<Option<String>, String> {
    let (record, legacy) = R::decode(text)?;
    Ok(legacy.then(|| record.encode()))
}

/// Every table's state, by table.
pub type TableStates = BTreeMap<TableId, TableState>;

#[cfg(test)]
mod tests {
    use super::*;

    fn stopped() -> StoppedTables {
        StoppedTables(vec![StoppedTable {
            table: TableId::new("public", "orders"),
            position: "0/16B3748".into(),
            reason: "a reason".into(),
            stopped_at: 1_700_000_000,
        }])
    }

    #[test]
    fn records_round_trip_in_the_current_format() {
        for phase in [
            Phase::Snapshot {
                slot: Some("tidewater_p".into()),
            },
            Phase::Stream { slot: None },
        ] {
            assert_eq!(Phase::decode(&phase.encode()).unwrap(), (phase, false));
        }
        let s = stopped();
        assert_eq!(StoppedTables::decode(&s.encode()).unwrap(), (s, false));
        let plan = SnapshotPlan {
            slot: "tidewater_p".into(),
            consistent_point: 42,
            tables: vec![PlannedChunks {
                table: TableId::new("public", "orders"),
                chunk_pages: 128,
                chunks: 3,
            }],
        };
        assert_eq!(SnapshotPlan::decode(&plan.encode()).unwrap(), (plan, false));
        let position = SourcePosition {
            position: "mysql-bin.000003:4567".into(),
        };
        assert_eq!(
            SourcePosition::decode(&position.encode()).unwrap(),
            (position, false)
        );
    }

    /// The exact text the releases before formats wrote.
    #[test]
    fn records_before_formats_still_read() {
        let lake_marker = Phase::decode("snapshot tidewater_p\n").unwrap();
        assert_eq!(
            lake_marker,
            (
                Phase::Snapshot {
                    slot: Some("tidewater_p".into())
                },
                true
            )
        );
        let warehouse_marker = Phase::decode("stream:binlog").unwrap();
        assert_eq!(warehouse_marker, (Phase::Stream { slot: None }, true));

        let lake_stopped = r#"{
  "tables": [
    {
      "name": "orders",
      "position": "0/16B3748",
      "reason": "a reason",
      "schema": "public",
      "stopped_at": 1700000000,
      "table": "public.orders"
    }
  ]
}
"#;
        assert_eq!(
            StoppedTables::decode(lake_stopped).unwrap(),
            (stopped(), true)
        );
        let warehouse_stopped = r#"[{"position":"0/16B3748","reason":"a reason","schema":"public","stopped_at":1700000000,"table":"orders"}]"#;
        assert_eq!(
            StoppedTables::decode(warehouse_stopped).unwrap(),
            (stopped(), true)
        );

        let plan = r#"{
  "consistent_point": 42,
  "slot": "tidewater_p",
  "tables": [
    {
      "chunk_pages": 128,
      "chunks": 3,
      "name": "orders",
      "schema": "public"
    }
  ]
}
"#;
        let (plan, legacy) = SnapshotPlan::decode(plan).unwrap();
        assert!(legacy);
        assert_eq!(plan.tables[0].table, TableId::new("public", "orders"));
        assert_eq!(plan.tables[0].chunks, 3);

        assert_eq!(
            SourcePosition::decode("mysql-bin.000003:4567\n").unwrap(),
            (
                SourcePosition {
                    position: "mysql-bin.000003:4567".into()
                },
                true
            )
        );
    }

    #[test]
    fn damaged_or_newer_records_say_what_without_the_content() {
        let problem = Phase::decode("sideways tidewater_secret").unwrap_err();
        assert!(!problem.contains("secret"), "{problem}");
        let problem =
            StoppedTables::decode("{\"format\":1,\"tables\":[{\"schema\":\"secret\"").unwrap_err();
        assert!(problem.starts_with("it ends too early"), "{problem}");
        assert!(!problem.contains("secret"), "{problem}");
        let problem = SourcePosition::decode("{\"format\":7,\"position\":\"x\"}").unwrap_err();
        assert!(problem.contains("newer tidewater (format 7"), "{problem}");
        let problem = SnapshotPlan::decode(
            "{\"format\":1,\"slot\":\"s\",\"consistent_point\":1,\"tables\":[{\"schema\":\"a\",\"table\":\"b\",\"chunk_pages\":1,\"chunks\":-3}]}",
        )
        .unwrap_err();
        assert!(problem.contains("not the structure"), "{problem}");
    }
}
