//! `tidewater verify`: proof that what landed is the source's data, table by
//! table, while the pipeline runs — and `--repair` when it is not.
//!
//! ```text
//!  a round, at one source point P:
//!   source ── consistent copy of the tables at P (Postgres: a temporary slot's
//!   │         exported snapshot; MySQL/MariaDB: a consistent-snapshot transaction)
//!   │         ─▶ masking, as the pipeline masks ─▶ batches ─▶ narrowed as the lake
//!   │         stores them ─▶ per row: key hash, row digest
//!   lake ──── waits until the pipeline acknowledged P (every change ≤ P is committed)
//!   │         ─▶ change-log rows ≤ P after the last truncate ≤ P ─▶ each key's last
//!   │         row (a delete drops the key) ─▶ per row: key hash, row digest
//!   both ──── per key-hash range (4 096 of them): row count and the sum of digests
//!
//!  round 1: every range ─▶ ranges that differ ─▶ round 2 at a new point P2, those
//!  ranges only, keys kept ─▶ keys missing from the lake, extra in it, or different:
//!  printed (the key, never another value) ─▶ exit 1
//!  --repair: the running pipeline is asked to copy those tables again (the copy
//!  path of `snapshot --table`), then rounds repeat until the table is equal
//! ```
//!
//! Comparing at P, not "now", is what keeps a running pipeline from causing
//! false alarms: the lake's state as of P is exact (the change log holds
//! every row's mark), and the copy is exact at P. Ranges are ranges of the
//! key's hash, not of the key: the source copy then needs no ordering (the
//! fast chunked copy of a snapshot, in any order) and no side sorts; both
//! sides only add into 4 096 counters. The lake side keeps each key's last
//! row in memory up to `--memory-mb`, past it in 256 partition files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::Array;
use futures_util::StreamExt;
use tidewater_core::mask::{MaskPolicy, Masker};
use tidewater_core::{
    BatchLimits, Batcher, ChangeBatch, ChangeEvent, CommitInfo, Mark, TableId, TableSchema,
};
use tidewater_lake::digest::RowDigests;
use tidewater_mysql::{BinlogPosition, MysqlSource};
use tidewater_postgres::PostgresSource;
use tidewater_reverse::engine::{log_as_of, Resources};
use tidewater_reverse::Lake;
use tidewater_warehouse::WarehouseSink;
use tokio::sync::mpsc;
use tracing::info;

use crate::pipeline::{Settings, SourceSettings};
use crate::policy::exit_code;

/// Key-hash ranges per table.
const RANGES: usize = 4096;
/// Partition files of the lake side's spill.
const PARTS: usize = 256;

/// What `verify` was asked.
pub struct Options {
    pub tables: Vec<String>,
    pub repair: bool,
    /// How long to wait for the pipeline to commit the source's point (and,
    /// with `repair`, for a repair to show).
    pub wait: Duration,
    pub memory_bytes: usize,
    /// Keys printed per table and kind of difference.
    pub max_keys: usize,
}

/// Exit code when verification could not be completed (not a difference).
pub const INCOMPLETE: i32 = 4;

/// `tidewater verify`.
pub async fn verify(settings: &Settings, options: &Options) -> i32 {
    if settings.kafka.is_some() {
        eprintln!(
            "error: verify compares the source with a lake or a warehouse; this pipeline \
             writes to Kafka\nhint: see README, \"Verifying a copy\""
        );
        return exit_code::CONFIG;
    }
    let tables = match chosen_tables(settings, &options.tables).await {
        Ok(tables) => tables,
        Err(code) => return code,
    };
    if tables.is_empty() {
        eprintln!(
            "error: the destination holds none of the pipeline's tables yet\nhint: run the pipeline first"
        );
        return exit_code::CONFIG;
    }
    let mut verifier = Verifier {
        settings,
        options,
        spill_dir: std::env::temp_dir().join(format!("tidewater-verify-{}", std::process::id())),
    };
    let code = verifier.run(tables).await;
    let _ = std::fs::remove_dir_all(&verifier.spill_dir);
    code
}

/// The destination's tables.
async fn held_tables(settings: &Settings) -> Result<Vec<TableId>, String> {
    match &settings.warehouse {
        Some(warehouse) => {
            let sink = WarehouseSink::inspect(warehouse.clone())
                .await
                .map_err(|err| crate::chain(&err))?;
            sink.existing_tables()
                .await
                .map_err(|err| crate::chain(&err))
        }
        None => {
            let mut lake = crate::reverse::open_lake(
                &settings.lake,
                &settings.pipeline,
                settings.iceberg.as_ref(),
            );
            lake.existing_tables()
                .await
                .map_err(|err| crate::chain(&err))
        }
    }
}

async fn chosen_tables(settings: &Settings, asked: &[String]) -> Result<Vec<TableId>, i32> {
    let held = held_tables(settings).await.map_err(|err| {
        eprintln!("error: reading the destination's tables: {err}");
        INCOMPLETE
    })?;
    let filter = settings.source.filter();
    let held: Vec<TableId> = held.into_iter().filter(|t| filter.matches(t)).collect();
    if asked.is_empty() {
        return Ok(held);
    }
    let mut chosen = Vec::new();
    for name in asked {
        let found = name
            .split_once('.')
            .map(|(schema, table)| TableId::new(schema, table))
            .filter(|t| held.contains(t));
        match found {
            Some(table) => chosen.push(table),
            None => {
                eprintln!(
                    "error: --table {name} is not a table of this pipeline's destination\nhint: name it schema.table (database.table on MySQL); it holds {}",
                    held.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
                );
                return Err(exit_code::CONFIG);
            }
        }
    }
    Ok(chosen)
}

/// One side's sums per key-hash range, and with a focus the keys of the
/// focused ranges.
#[derive(Default)]
struct Side {
    rows: u64,
    count: Vec<u64>,
    sum: Vec<u128>,
    /// key hash → (row digest, the key as JSON), in focused ranges only.
    keys: BTreeMap<u128, (u128, serde_json::Value)>,
    /// Lake side: committed files gone from the store.
    missing_files: Vec<String>,
    /// Warehouse side: columns not read.
    skipped: Vec<String>,
}

impl Side {
    fn new() -> Self {
        Side {
            rows: 0,
            count: vec![0; RANGES],
            sum: vec![0; RANGES],
            keys: BTreeMap::new(),
            missing_files: Vec::new(),
            skipped: Vec::new(),
        }
    }

    fn add(&mut self, key: u128, digest: u128) {
        let range = range_of(key);
        self.rows += 1;
        self.count[range] += 1;
        self.sum[range] = self.sum[range].wrapping_add(digest);
    }
}

fn range_of(key: u128) -> usize {
    (key as u64 % RANGES as u64) as usize
}

/// Which ranges of a table a round looks at.
#[derive(Clone)]
enum Focus {
    All,
    /// These ranges, keeping their keys.
    Ranges(BTreeSet<usize>),
}

impl Focus {
    fn keeps(&self, range: usize) -> bool {
        match self {
            Focus::All => false,
            Focus::Ranges(ranges) => ranges.contains(&range),
        }
    }
    fn skips(&self, range: usize) -> bool {
        match self {
            Focus::All => false,
            Focus::Ranges(ranges) => !ranges.contains(&range),
        }
    }
}

/// What one round found for one table.
struct Compared {
    source: Side,
    lake: Side,
}

impl Compared {
    fn differing_ranges(&self) -> BTreeSet<usize> {
        (0..RANGES)
            .filter(|&r| {
                self.source.count[r] != self.lake.count[r] || self.source.sum[r] != self.lake.sum[r]
            })
            .collect()
    }

    /// The keys (of focused ranges) whose rows differ.
    fn differing_keys(&self) -> Vec<KeyDiff> {
        let mut out = Vec::new();
        for (key, (digest, json)) in &self.source.keys {
            let other = self.lake.keys.get(key).map(|(d, _)| *d);
            if other != Some(*digest) {
                out.push(KeyDiff {
                    key: *key,
                    source: Some(*digest),
                    destination: other,
                    json: json.clone(),
                });
            }
        }
        for (key, (digest, json)) in &self.lake.keys {
            if !self.source.keys.contains_key(key) {
                out.push(KeyDiff {
                    key: *key,
                    source: None,
                    destination: Some(*digest),
                    json: json.clone(),
                });
            }
        }
        out
    }
}

/// A key whose rows differ: each side's row digest (None: no row).
#[derive(PartialEq)]
struct KeyDiff {
    key: u128,
    source: Option<u128>,
    destination: Option<u128>,
    json: serde_json::Value,
}

/// What verification found for one table.
struct Outcome {
    point: String,
    source_rows: u64,
    destination_rows: u64,
    /// Key ranges that differed in the first round.
    ranges: usize,
    missing_files: Vec<String>,
    skipped: Vec<String>,
    missing: Vec<serde_json::Value>,
    extra: Vec<serde_json::Value>,
    changed: Vec<serde_json::Value>,
    /// The lake's current-state table against its change log.
    current: Option<CurrentCheck>,
}

impl Outcome {
    /// No key differs (ranges may have, for keys that changed meanwhile).
    fn equal(&self) -> bool {
        let log = self.ranges == 0
            || (self.missing.is_empty() && self.extra.is_empty() && self.changed.is_empty());
        log && self.current.as_ref().is_none_or(|c| c.ranges == 0)
    }
}

/// A current-state table compared with its change log as of the mark it
/// was merged up to (the log itself is compared with the source).
struct CurrentCheck {
    merged: Mark,
    rows: u64,
    log_rows: u64,
    ranges: usize,
    /// Keys the log has and the current table lacks, has extra, or holds
    /// otherwise.
    missing: Vec<serde_json::Value>,
    extra: Vec<serde_json::Value>,
    changed: Vec<serde_json::Value>,
}

/// A round's columns of a table: names as the source has them (after
/// masking), and the key among them.
#[derive(Clone)]
struct Columns {
    names: Vec<String>,
    key: Vec<String>,
}

impl Columns {
    /// `schema`'s columns, without arrays unless `arrays` (a warehouse
    /// never reads them back).
    fn of(schema: &TableSchema, arrays: bool) -> Self {
        Columns {
            names: schema
                .columns
                .iter()
                .filter(|c| arrays || !matches!(c.ty, tidewater_core::ColumnType::List(_)))
                .map(|c| c.name.clone())
                .collect(),
            key: schema.key_columns().map(|c| c.name.clone()).collect(),
        }
    }
}

struct Verifier<'a> {
    settings: &'a Settings,
    options: &'a Options,
    spill_dir: PathBuf,
}

impl Verifier<'_> {
    async fn run(&mut self, tables: Vec<TableId>) -> i32 {
        let started = Instant::now();
        let checked = match self.check(&tables).await {
            Ok(checked) => checked,
            Err(message) => return incomplete(&message),
        };
        let mut differing = Vec::new();
        for table in &tables {
            let Some(outcome) = checked.get(table) else {
                println!("{table}: not compared (it has no primary key: the destination keeps no current state of it)");
                continue;
            };
            self.print(table, outcome);
            if !outcome.equal() {
                differing.push(table.clone());
            }
        }
        if differing.is_empty() {
            info!(
                tables = tables.len(),
                seconds = started.elapsed().as_secs_f64(),
                "verified: equal"
            );
            return exit_code::OK;
        }
        if !self.options.repair {
            println!(
                "hint: `tidewater verify --repair` asks the running pipeline to copy {} again",
                names(differing.iter())
            );
            return exit_code::FAILED;
        }
        self.repair(differing).await
    }

    fn print(&self, table: &TableId, outcome: &Outcome) {
        self.print_log(table, outcome);
        let Some(current) = &outcome.current else {
            return;
        };
        if current.ranges == 0 {
            println!(
                "{table}: current-state table equal to its change log ({} rows, merged up to mark {})",
                current.rows, current.merged
            );
            return;
        }
        println!(
            "{table}: current-state table DIFFERENT from its change log as of its merged mark {}: log {} rows, current table {} rows; {} of {RANGES} key ranges differ",
            current.merged, current.log_rows, current.rows, current.ranges
        );
        for (what, keys) in [
            ("missing from the current-state table", &current.missing),
            ("extra in the current-state table", &current.extra),
            ("different in the current-state table", &current.changed),
        ] {
            self.print_key_list(table, what, keys);
        }
    }

    fn print_key_list(&self, table: &TableId, what: &str, keys: &[serde_json::Value]) {
        if keys.is_empty() {
            return;
        }
        let shown: Vec<String> = keys
            .iter()
            .take(self.options.max_keys)
            .map(|k| k.to_string())
            .collect();
        let more = keys.len().saturating_sub(shown.len());
        println!(
            "{table}: {} keys {what}: {}{}",
            keys.len(),
            shown.join(" "),
            if more > 0 {
                format!(" … and {more} more")
            } else {
                String::new()
            }
        );
    }

    fn print_log(&self, table: &TableId, outcome: &Outcome) {
        let sink = self.sink_name();
        if !outcome.skipped.is_empty() {
            println!(
                "{table}: columns not compared: {} (arrays are not read back from a warehouse; a column it lacks is NULL there)",
                outcome.skipped.join(", ")
            );
        }
        if !outcome.missing_files.is_empty() {
            println!(
                "{table}: warning: {} committed data files are gone from the lake's store (their rows count as missing; readers of the change log fail on them until they are restored): {}",
                outcome.missing_files.len(),
                outcome.missing_files.join(", ")
            );
        }
        if outcome.ranges == 0 {
            println!(
                "{table}: equal ({} rows at source position {})",
                outcome.source_rows, outcome.point
            );
            return;
        }
        println!(
            "{table}: {} at source position {}: source {} rows, {sink} {} rows; {} of {RANGES} key ranges differ",
            if outcome.equal() { "changing" } else { "DIFFERENT" },
            outcome.point,
            outcome.source_rows,
            outcome.destination_rows,
            outcome.ranges,
        );
        if outcome.equal() {
            println!(
                "{table}: every key that differed changed again between the comparisons: not counted as a difference"
            );
            return;
        }
        for (what, keys) in [
            (format!("missing from the {sink}"), &outcome.missing),
            (format!("extra in the {sink}"), &outcome.extra),
            (format!("different in the {sink}"), &outcome.changed),
        ] {
            self.print_key_list(table, &what, keys);
        }
    }

    /// `table`'s current-state table against its change log as of the
    /// mark it was merged up to: ranges, then the keys of differing ranges
    /// (read again, at the mark of that moment). None without one.
    async fn check_current(&mut self, table: &TableId) -> Result<Option<CurrentCheck>, String> {
        let Some((merged, current, log)) = self.current_round(table, &Focus::All).await? else {
            return Ok(None);
        };
        let compared = Compared {
            source: log,
            lake: current,
        };
        let ranges = compared.differing_ranges();
        let mut check = CurrentCheck {
            merged,
            rows: compared.lake.rows,
            log_rows: compared.source.rows,
            ranges: ranges.len(),
            missing: Vec::new(),
            extra: Vec::new(),
            changed: Vec::new(),
        };
        if ranges.is_empty() {
            return Ok(Some(check));
        }
        if let Some((_, current, log)) = self.current_round(table, &Focus::Ranges(ranges)).await? {
            let compared = Compared {
                source: log,
                lake: current,
            };
            for diff in compared.differing_keys() {
                match (diff.source, diff.destination) {
                    (Some(_), None) => check.missing.push(diff.json),
                    (None, Some(_)) => check.extra.push(diff.json),
                    _ => check.changed.push(diff.json),
                }
            }
        }
        Ok(Some(check))
    }

    /// The current-state table of `table` and its log as of the mark it
    /// was merged up to, per range: (mark, current, log).
    async fn current_round(
        &mut self,
        table: &TableId,
        focus: &Focus,
    ) -> Result<Option<(Mark, Side, Side)>, String> {
        let mut lake = crate::reverse::open_lake(
            &self.settings.lake,
            &self.settings.pipeline,
            self.settings.iceberg.as_ref(),
        );
        let failed = |err: tidewater_lake::LakeError| {
            format!(
                "reading {table}'s current-state table: {}",
                crate::chain(&err)
            )
        };
        let Some(files) = lake.log_files(table).await.map_err(failed)? else {
            return Ok(None);
        };
        let names: HashMap<String, String> = files
            .columns
            .iter()
            .map(|(name, lake)| (lake.clone(), name.clone()))
            .collect();
        let key: Vec<String> = files
            .key
            .iter()
            .map(|k| names.get(k).cloned().unwrap_or_else(|| k.clone()))
            .collect();
        if key.is_empty() {
            return Ok(None);
        }
        let columns = Columns {
            names: files.columns.iter().map(|(name, _)| name.clone()).collect(),
            key,
        };
        let mut side = Side::new();
        let mut problem: Option<String> = None;
        let mut each = |batch: arrow_array::RecordBatch| {
            if problem.is_some() {
                return;
            }
            if let Err(err) = current_rows(&batch, &names)
                .and_then(|batch| add_rows(&mut side, &columns, focus, &batch))
            {
                problem = Some(err);
            }
        };
        let merged = match &lake {
            Lake::Delta(sink) => sink.scan_current(table, &mut each).await,
            Lake::Iceberg(sink) => sink.scan_current(table, &mut each).await,
        }
        .map_err(failed)?;
        if let Some(problem) = problem {
            return Err(format!("{table}'s current-state table: {problem}"));
        }
        let Some(merged) = merged else {
            return Ok(None);
        };
        let log = self.lake_side(table, &columns, merged, focus).await?;
        Ok(Some((merged, side, log)))
    }

    fn sink_name(&self) -> &'static str {
        if self.settings.warehouse.is_some() {
            "warehouse"
        } else {
            "lake"
        }
    }

    /// Compares `tables`: every range at one point; the ranges that differ
    /// again at a new point, keeping their keys; for a warehouse (which
    /// holds only the state at its own, later, point) once more, counting
    /// only the keys that differed the same way both times.
    async fn check(&mut self, tables: &[TableId]) -> Result<HashMap<TableId, Outcome>, String> {
        let all: HashMap<TableId, Focus> = tables.iter().map(|t| (t.clone(), Focus::All)).collect();
        let (point, first) = self.round(&all).await?;
        let mut outcomes = HashMap::new();
        let mut focus = HashMap::new();
        for (table, compared) in first {
            let ranges = compared.differing_ranges();
            if !ranges.is_empty() {
                focus.insert(table.clone(), Focus::Ranges(ranges.clone()));
            }
            outcomes.insert(
                table,
                Outcome {
                    point: point.clone(),
                    source_rows: compared.source.rows,
                    destination_rows: compared.lake.rows,
                    ranges: ranges.len(),
                    missing_files: compared.lake.missing_files,
                    skipped: compared.lake.skipped,
                    missing: Vec::new(),
                    extra: Vec::new(),
                    changed: Vec::new(),
                    current: None,
                },
            );
        }
        if self.settings.warehouse.is_none() && self.settings.maintenance.current_state.is_some() {
            for (table, outcome) in outcomes.iter_mut() {
                outcome.current = self.check_current(table).await?;
            }
        }
        if focus.is_empty() {
            return Ok(outcomes);
        }
        let (_, second) = self.round(&focus).await?;
        let mut keys: HashMap<TableId, Vec<KeyDiff>> = second
            .iter()
            .map(|(t, c)| (t.clone(), c.differing_keys()))
            .collect();
        if self.settings.warehouse.is_some() {
            let (_, third) = self.round(&focus).await?;
            for (table, diffs) in keys.iter_mut() {
                let again: Vec<KeyDiff> = third
                    .get(table)
                    .map(Compared::differing_keys)
                    .unwrap_or_default();
                diffs.retain(|d| again.contains(d));
            }
        }
        for (table, diffs) in keys {
            let outcome = outcomes.get_mut(&table).expect("compared in round 1");
            for diff in diffs {
                match (diff.source, diff.destination) {
                    (Some(_), None) => outcome.missing.push(diff.json),
                    (None, Some(_)) => outcome.extra.push(diff.json),
                    _ => outcome.changed.push(diff.json),
                }
            }
        }
        Ok(outcomes)
    }

    /// Asks the running pipeline to copy `tables` again, then verifies them
    /// until they are equal or `wait` has passed.
    async fn repair(&mut self, tables: Vec<TableId>) -> i32 {
        if let Err(err) = crate::pipeline::ask_copies(self.settings, &tables).await {
            return incomplete(&format!("asking for copies: {}", crate::chain(&err)));
        }
        println!(
            "repair: asked the running pipeline to copy {} again beside the stream",
            names(tables.iter())
        );
        let deadline = Instant::now() + self.options.wait;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let checked = match self.check(&tables).await {
                Ok(checked) => checked,
                Err(message) => return incomplete(&message),
            };
            let equal = tables
                .iter()
                .all(|t| checked.get(t).is_some_and(Outcome::equal));
            if equal {
                let point = checked
                    .values()
                    .next()
                    .map(|o| o.point.clone())
                    .unwrap_or_default();
                println!(
                    "repair: {} equal at source position {point}",
                    names(tables.iter())
                );
                return exit_code::OK;
            }
            if Instant::now() >= deadline {
                println!(
                    "repair: {} still differ after {} s (is the copy still running? `tidewater status` shows it)",
                    names(tables.iter()),
                    self.options.wait.as_secs()
                );
                return exit_code::FAILED;
            }
        }
    }

    /// One comparison at a new source point: the source's copy and the
    /// destination's state (the lake's as of the point; the warehouse's at
    /// its own point, at or after it), side by side. Returns the point and,
    /// per table with a key, what each side holds.
    async fn round(
        &mut self,
        focus: &HashMap<TableId, Focus>,
    ) -> Result<(String, HashMap<TableId, Compared>), String> {
        let tables: Vec<TableId> = focus.keys().cloned().collect();
        let (schemas_tx, mut schemas_rx) = mpsc::unbounded_channel::<Arc<TableSchema>>();
        let (commit_tx, commit_rx) = tokio::sync::oneshot::channel::<CommitInfo>();
        let source_side = tokio::spawn(source_side(
            self.settings.source.clone(),
            self.settings.masking.clone(),
            tables.clone(),
            focus.clone(),
            self.settings.warehouse.is_none(),
            schemas_tx,
            commit_tx,
        ));
        let commit = match commit_rx.await {
            Ok(commit) => commit,
            Err(_) => {
                return Err(match source_side.await {
                    Ok(Err(message)) => message,
                    _ => "the source copy ended before it started".into(),
                })
            }
        };
        self.wait_for(&commit).await?;
        let mark = Mark::new(commit.seq, u64::MAX);
        let warehouse = match &self.settings.warehouse {
            Some(settings) => Some(
                WarehouseSink::inspect(settings.clone())
                    .await
                    .map_err(|err| crate::chain(&err))?,
            ),
            None => None,
        };
        let mut destination_sides: HashMap<TableId, Side> = HashMap::new();
        while let Some(schema) = schemas_rx.recv().await {
            let columns = Columns::of(&schema, warehouse.is_none());
            if columns.key.is_empty() {
                continue;
            }
            let table = schema.table.clone();
            let side = match &warehouse {
                Some(sink) => warehouse_side(sink, &schema, &columns, &focus[&table]).await?,
                None => {
                    self.lake_side(&table, &columns, mark, &focus[&table])
                        .await?
                }
            };
            destination_sides.insert(table, side);
        }
        let source_sides = match source_side.await {
            Ok(Ok(sides)) => sides,
            Ok(Err(message)) => return Err(message),
            Err(err) => return Err(format!("the source copy failed: {err}")),
        };
        let mut out = HashMap::new();
        for (table, source) in source_sides {
            if let Some(lake) = destination_sides.remove(&table) {
                out.insert(table, Compared { source, lake });
            }
        }
        Ok((commit.position, out))
    }

    /// Waits until the pipeline acknowledged `commit` (everything at or
    /// below it is committed at the destination).
    async fn wait_for(&self, commit: &CommitInfo) -> Result<(), String> {
        let deadline = Instant::now() + self.options.wait;
        loop {
            let acked = acknowledged(self.settings).await?;
            if acked.is_some_and(|a| a >= commit.ack) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the pipeline has not committed source position {} within {} s: verify compares while `tidewater run` streams (it waits for the destination to hold that position)\nhint: start `tidewater run`, or raise --wait",
                    commit.position,
                    self.options.wait.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The lake's state of `table` as of `mark`, per range.
    async fn lake_side(
        &mut self,
        table: &TableId,
        columns: &Columns,
        mark: Mark,
        focus: &Focus,
    ) -> Result<Side, String> {
        let resources = Resources {
            memory_bytes: 64 << 20,
            spill_dir: None,
        };
        // A lake opened now: one opened before the wait could serve the
        // table's log as it stood then.
        let mut lake = crate::reverse::open_lake(
            &self.settings.lake,
            &self.settings.pipeline,
            self.settings.iceberg.as_ref(),
        );
        let Some(as_of) = log_as_of(&mut lake, table, mark, &resources)
            .await
            .map_err(|err| format!("reading {table} from the lake: {}", crate::chain(&err)))?
        else {
            return Err(format!("{table} is not in the lake"));
        };
        let (lake_key, mut stream) = (as_of.key, as_of.stream);
        let missing_files = as_of.missing;
        if lake_key != columns.key {
            return Err(format!(
                "{table}: the lake's key ({}) is not the source's ({}): the table changed its key; copy it again (`tidewater snapshot --table {table}`)",
                lake_key.join(", "),
                columns.key.join(", ")
            ));
        }
        let cap = (self.options.memory_bytes / 96).max(1024);
        let mut latest = Latest::new(cap, self.spill_dir.join(table.to_string()));
        let mut kept: BTreeMap<u128, (Entry, serde_json::Value)> = BTreeMap::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|err| format!("reading {table} from the lake: {err}"))?;
            let digests = RowDigests::new(&batch, &columns.names, &columns.key)
                .map_err(|err| format!("{table}: {err}"))?;
            let seq = batch
                .column_by_name("_tw_seq")
                .and_then(|c| c.as_any().downcast_ref::<arrow_array::Int64Array>())
                .ok_or_else(|| format!("{table}: the lake's _tw_seq is not a long"))?;
            let ord = batch
                .column_by_name("_tw_ord")
                .and_then(|c| c.as_any().downcast_ref::<arrow_array::Int64Array>())
                .ok_or_else(|| format!("{table}: the lake's _tw_ord is not a long"))?;
            let op = batch
                .column_by_name("_tw_op")
                .ok_or_else(|| format!("{table}: the lake has no _tw_op"))?;
            let op = arrow_array::cast::AsArray::as_string_opt::<i32>(op.as_ref())
                .map(|a| {
                    (0..a.len())
                        .map(|i| a.value(i) == "d")
                        .collect::<Vec<bool>>()
                })
                .or_else(|| {
                    arrow_array::cast::AsArray::as_string_view_opt(op.as_ref())
                        .map(|a| (0..a.len()).map(|i| a.value(i) == "d").collect())
                })
                .ok_or_else(|| format!("{table}: the lake's _tw_op is not a string"))?;
            for (row, &deleted) in op.iter().enumerate() {
                let key = digests.key(row);
                let range = range_of(key);
                if focus.skips(range) {
                    continue;
                }
                let entry = Entry {
                    seq: seq.value(row) as u64,
                    ord: ord.value(row) as u64,
                    digest: digests.row(row),
                    deleted,
                };
                if focus.keeps(range) {
                    let newer = kept
                        .get(&key)
                        .is_none_or(|(e, _)| (entry.seq, entry.ord) > (e.seq, e.ord));
                    if newer {
                        kept.insert(key, (entry, digests.key_json(row, &columns.names)));
                    }
                } else {
                    latest
                        .add(key, entry)
                        .map_err(|err| format!("spilling {table}'s keys: {err}"))?;
                }
            }
        }
        let mut side = Side::new();
        side.missing_files = missing_files;
        latest
            .finish(|key, entry| {
                if !entry.deleted {
                    side.add(key, entry.digest);
                }
            })
            .map_err(|err| format!("reading back {table}'s keys: {err}"))?;
        for (key, (entry, json)) in kept {
            if !entry.deleted {
                side.add(key, entry.digest);
                side.keys.insert(key, (entry.digest, json));
            }
        }
        Ok(side)
    }
}

fn names<'a>(tables: impl Iterator<Item = &'a TableId>) -> String {
    tables.map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
}

fn incomplete(message: &str) -> i32 {
    eprintln!("error: verify could not finish: {message}");
    INCOMPLETE
}

/// What the pipeline acknowledged to its source, as a packed position
/// comparable with [`CommitInfo::ack`]: the slot's confirmed LSN, or the
/// binlog position recorded beside the sink.
async fn acknowledged(settings: &Settings) -> Result<Option<u64>, String> {
    match &settings.source {
        SourceSettings::Postgres(config) => {
            let source = PostgresSource::connect(verify_pg(config))
                .await
                .map_err(|err| crate::chain(&err))?;
            let row = source
                .client()
                .query_opt(
                    "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
                    &[&config.slot],
                )
                .await
                .map_err(|err| format!("reading the pipeline's slot: {err}"))?;
            Ok(row
                .and_then(|r| r.get::<_, Option<i64>>(0))
                .map(|lsn| lsn as u64))
        }
        SourceSettings::Mysql(_) => {
            let position = crate::pipeline::acknowledged_position(settings)
                .await
                .map_err(|err| crate::chain(&err))?;
            Ok(position
                .as_deref()
                .and_then(BinlogPosition::parse)
                .map(|p| p.seq()))
        }
    }
}

fn verify_pg(config: &tidewater_postgres::PostgresConfig) -> tidewater_postgres::PostgresConfig {
    let mut config = config.clone();
    // Not the pipeline's sessions: a stop of the pipeline cancels those.
    config.application_name = format!("{}-verify", config.application_name);
    config
}

/// The source side of a round: a consistent copy of `tables`, masked,
/// batched and narrowed as the lake stores it, summed per range. Sends
/// each table's columns as its schema arrives and the copy's commit once
/// it is open.
async fn source_side(
    source: SourceSettings,
    masking: Arc<MaskPolicy>,
    tables: Vec<TableId>,
    focus: HashMap<TableId, Focus>,
    narrow: bool,
    schemas: mpsc::UnboundedSender<Arc<TableSchema>>,
    opened: tokio::sync::oneshot::Sender<CommitInfo>,
) -> Result<HashMap<TableId, Side>, String> {
    let mut copy = match source {
        SourceSettings::Postgres(config) => {
            let mut pg = PostgresSource::connect(verify_pg(&config))
                .await
                .map_err(|err| crate::chain(&err))?;
            let commit = pg
                .start_copy_only(tables)
                .await
                .map_err(|err| crate::chain(&err))?;
            let _ = opened.send(commit);
            Copy::Postgres(Box::new(pg))
        }
        SourceSettings::Mysql(config) => {
            let mut my = MysqlSource::connect(config)
                .await
                .map_err(|err| crate::chain(&err))?;
            let commit = my
                .start_copy_only(tables)
                .await
                .map_err(|err| crate::chain(&err))?;
            let _ = opened.send(commit);
            Copy::Mysql(Box::new(my))
        }
    };
    let result = read_copy(&mut copy, masking, &focus, narrow, &schemas).await;
    copy.close().await;
    result
}

enum Copy {
    Postgres(Box<PostgresSource>),
    Mysql(Box<MysqlSource>),
}

impl Copy {
    async fn next(&mut self) -> Result<ChangeEvent, String> {
        match self {
            Copy::Postgres(pg) => pg.next_event().await.map_err(|err| crate::chain(&err)),
            Copy::Mysql(my) => my.next_event().await.map_err(|err| crate::chain(&err)),
        }
    }

    async fn close(self) {
        match self {
            Copy::Postgres(pg) => tidewater_core::Source::close(*pg).await,
            Copy::Mysql(my) => my.close().await,
        }
    }
}

async fn read_copy(
    copy: &mut Copy,
    masking: Arc<MaskPolicy>,
    focus: &HashMap<TableId, Focus>,
    narrow: bool,
    schemas: &mpsc::UnboundedSender<Arc<TableSchema>>,
) -> Result<HashMap<TableId, Side>, String> {
    let mut masker = Masker::new(masking);
    let mut batcher = Batcher::new(BatchLimits {
        max_rows: 65_536,
        max_bytes: 32 << 20,
        max_delay: Duration::from_secs(3600),
    });
    let mut sides: HashMap<TableId, (Columns, Side)> = HashMap::new();
    loop {
        let event = copy.next().await?;
        let event = masker.apply(event).map_err(|err| crate::chain(&err))?;
        let mut cut = Vec::new();
        let done = match event {
            ChangeEvent::Schema(schema) => {
                let columns = Columns::of(&schema, narrow);
                let _ = schemas.send(schema.clone());
                if !columns.key.is_empty() {
                    sides
                        .entry(schema.table.clone())
                        .or_insert_with(|| (columns, Side::new()));
                }
                cut.extend(batcher.set_schema(schema).map_err(|e| e.to_string())?);
                false
            }
            ChangeEvent::Begin(commit) => {
                batcher.begin(commit);
                false
            }
            ChangeEvent::Row(row) => {
                batcher.push(row).map_err(|e| e.to_string())?;
                false
            }
            ChangeEvent::Block(block) => {
                batcher.push_block(block).map_err(|e| e.to_string())?;
                false
            }
            ChangeEvent::SnapshotDone { .. } => true,
            ChangeEvent::TableFailed { table, reason } => {
                return Err(format!("copying {table}: {reason}"))
            }
            _ => false,
        };
        if done || batcher.is_full() {
            cut.extend(batcher.cut_all().map_err(|e| e.to_string())?);
        }
        for batch in cut {
            add_batch(&mut sides, focus, narrow, batch)?;
        }
        if done {
            return Ok(sides.into_iter().map(|(t, (_, side))| (t, side)).collect());
        }
    }
}

fn add_batch(
    sides: &mut HashMap<TableId, (Columns, Side)>,
    focus: &HashMap<TableId, Focus>,
    narrow: bool,
    batch: ChangeBatch,
) -> Result<(), String> {
    let Some((columns, side)) = sides.get_mut(&batch.table) else {
        return Ok(());
    };
    let focus = focus.get(&batch.table).cloned().unwrap_or(Focus::All);
    // As the lake stores it (its Parquet types), or as the pipeline hands
    // it to a warehouse.
    let batch_rows = if narrow {
        tidewater_lake::narrow::narrow_batch(&batch.batch)
            .map_err(|err| format!("{}: {err}", batch.table))?
    } else {
        batch.batch
    };
    add_rows(side, columns, &focus, &batch_rows).map_err(|err| format!("{}: {err}", batch.table))
}

/// Adds `batch`'s rows (`columns` by name) to `side`.
fn add_rows(
    side: &mut Side,
    columns: &Columns,
    focus: &Focus,
    batch: &arrow_array::RecordBatch,
) -> Result<(), String> {
    let digests =
        RowDigests::new(batch, &columns.names, &columns.key).map_err(|err| err.to_string())?;
    for row in 0..batch.num_rows() {
        let key = digests.key(row);
        let range = range_of(key);
        if focus.skips(range) {
            continue;
        }
        let digest = digests.row(row);
        side.add(key, digest);
        if focus.keeps(range) {
            side.keys
                .insert(key, (digest, digests.key_json(row, &columns.names)));
        }
    }
    Ok(())
}

/// A batch of a current-state table under the source's column names, its
/// soft-deleted rows left out.
fn current_rows(
    batch: &arrow_array::RecordBatch,
    names: &HashMap<String, String>,
) -> Result<arrow_array::RecordBatch, String> {
    let fields: Vec<arrow_schema::Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let name = names
                .get(f.name())
                .cloned()
                .unwrap_or_else(|| f.name().clone());
            f.as_ref().clone().with_name(name)
        })
        .collect();
    let batch = arrow_array::RecordBatch::try_new(
        Arc::new(arrow_schema::Schema::new(fields)),
        batch.columns().to_vec(),
    )
    .map_err(|err| err.to_string())?;
    let Some(deleted) = batch
        .column_by_name("_tw_deleted")
        .and_then(|c| c.as_any().downcast_ref::<arrow_array::BooleanArray>())
    else {
        return Ok(batch);
    };
    let live: arrow_array::BooleanArray = deleted.iter().map(|d| Some(d != Some(true))).collect();
    arrow_select::filter::filter_record_batch(&batch, &live).map_err(|err| err.to_string())
}

/// The warehouse table's current rows of `schema`'s table, per range.
async fn warehouse_side(
    sink: &WarehouseSink,
    schema: &TableSchema,
    columns: &Columns,
    focus: &Focus,
) -> Result<Side, String> {
    let table = &schema.table;
    let fields: Vec<arrow_schema::Field> = schema
        .columns
        .iter()
        .map(tidewater_core::arrow_field)
        .collect();
    let arrow_schema = Arc::new(arrow_schema::Schema::new(fields));
    let mut side = Side::new();
    let scanned = sink
        .scan_current(schema, 8192, |rows| {
            let mut arrays = Vec::with_capacity(schema.columns.len());
            for (c, column) in schema.columns.iter().enumerate() {
                let values: Vec<&tidewater_core::Datum> = rows.iter().map(|r| &r[c]).collect();
                let array =
                    tidewater_core::build_array(&tidewater_core::arrow_type(&column.ty), &values)
                        .map_err(|err| format!("column {}: {err}", column.name))?;
                arrays.push(array);
            }
            let batch = arrow_array::RecordBatch::try_new(arrow_schema.clone(), arrays)
                .map_err(|err| err.to_string())?;
            add_rows(&mut side, columns, focus, &batch)
        })
        .await
        .map_err(|err| format!("reading {table} from the warehouse: {}", crate::chain(&err)))?;
    match scanned {
        Some(skipped) => side.skipped = skipped,
        None => return Err(format!("{table} has no warehouse table")),
    }
    Ok(side)
}

/// A key's last row seen in the lake.
#[derive(Clone, Copy)]
struct Entry {
    seq: u64,
    ord: u64,
    digest: u128,
    deleted: bool,
}

const ENTRY_BYTES: usize = 16 + 8 + 8 + 16 + 1;

/// Each key's last row: in memory up to `cap` keys, then in partition
/// files by key hash, each read back alone.
struct Latest {
    map: HashMap<u128, Entry>,
    cap: usize,
    dir: PathBuf,
    parts: Option<Vec<BufWriter<File>>>,
}

impl Latest {
    fn new(cap: usize, dir: PathBuf) -> Self {
        Latest {
            map: HashMap::new(),
            cap,
            dir,
            parts: None,
        }
    }

    fn add(&mut self, key: u128, entry: Entry) -> std::io::Result<()> {
        if let Some(parts) = &mut self.parts {
            return write_entry(&mut parts[part_of(key)], key, &entry);
        }
        keep_newer(&mut self.map, key, entry);
        if self.map.len() > self.cap {
            std::fs::create_dir_all(&self.dir)?;
            let mut parts = (0..PARTS)
                .map(|i| {
                    File::create(self.dir.join(format!("{i}.keys")))
                        .map(|f| BufWriter::with_capacity(32 << 10, f))
                })
                .collect::<std::io::Result<Vec<_>>>()?;
            for (key, entry) in self.map.drain() {
                write_entry(&mut parts[part_of(key)], key, &entry)?;
            }
            self.parts = Some(parts);
        }
        Ok(())
    }

    fn finish(mut self, mut visit: impl FnMut(u128, Entry)) -> std::io::Result<()> {
        let Some(parts) = self.parts.take() else {
            for (key, entry) in self.map.drain() {
                visit(key, entry);
            }
            return Ok(());
        };
        for mut part in parts {
            part.flush()?;
        }
        for i in 0..PARTS {
            let path = self.dir.join(format!("{i}.keys"));
            let mut reader = BufReader::with_capacity(64 << 10, File::open(&path)?);
            let mut map: HashMap<u128, Entry> = HashMap::new();
            let mut buf = [0u8; ENTRY_BYTES];
            loop {
                match reader.read_exact(&mut buf) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(err) => return Err(err),
                }
                let key = u128::from_le_bytes(buf[0..16].try_into().expect("16 bytes"));
                let entry = Entry {
                    seq: u64::from_le_bytes(buf[16..24].try_into().expect("8 bytes")),
                    ord: u64::from_le_bytes(buf[24..32].try_into().expect("8 bytes")),
                    digest: u128::from_le_bytes(buf[32..48].try_into().expect("16 bytes")),
                    deleted: buf[48] != 0,
                };
                keep_newer(&mut map, key, entry);
            }
            for (key, entry) in map {
                visit(key, entry);
            }
            std::fs::remove_file(&path)?;
        }
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }
}

fn part_of(key: u128) -> usize {
    ((key >> 64) as u64 % PARTS as u64) as usize
}

fn keep_newer(map: &mut HashMap<u128, Entry>, key: u128, entry: Entry) {
    match map.get_mut(&key) {
        Some(old) if (old.seq, old.ord) >= (entry.seq, entry.ord) => {}
        Some(old) => *old = entry,
        None => {
            map.insert(key, entry);
        }
    }
}

fn write_entry(out: &mut BufWriter<File>, key: u128, entry: &Entry) -> std::io::Result<()> {
    let mut buf = [0u8; ENTRY_BYTES];
    buf[0..16].copy_from_slice(&key.to_le_bytes());
    buf[16..24].copy_from_slice(&entry.seq.to_le_bytes());
    buf[24..32].copy_from_slice(&entry.ord.to_le_bytes());
    buf[32..48].copy_from_slice(&entry.digest.to_le_bytes());
    buf[48] = entry.deleted as u8;
    out.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, digest: u128, deleted: bool) -> Entry {
        Entry {
            seq,
            ord: 0,
            digest,
            deleted,
        }
    }

    /// The spilled and the in-memory paths keep the same last rows.
    #[test]
    fn latest_keeps_each_keys_last_row_in_memory_and_spilled() {
        for cap in [1_000_000, 10] {
            let dir = std::env::temp_dir().join(format!(
                "tidewater-verify-test-{}-{cap}",
                std::process::id()
            ));
            let mut latest = Latest::new(cap, dir.clone());
            for key in 0..500u128 {
                let key = key.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
                latest.add(key, entry(2, key ^ 2, false)).unwrap();
                latest.add(key, entry(1, key ^ 1, false)).unwrap();
                latest.add(key, entry(3, key ^ 3, key % 7 == 0)).unwrap();
            }
            let mut seen = HashMap::new();
            latest
                .finish(|key, e| {
                    seen.insert(key, e);
                })
                .unwrap();
            assert_eq!(seen.len(), 500, "cap {cap}");
            for (key, e) in &seen {
                assert_eq!((e.seq, e.digest), (3, key ^ 3), "cap {cap}");
                assert_eq!(e.deleted, key % 7 == 0);
            }
            assert!(!dir.exists(), "spill files are removed");
        }
    }
}
