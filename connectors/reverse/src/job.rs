//! One run of one job: query, diff against the last push, write the
//! difference (see the crate docs for the flow).
//!
//! Decisions that shape what users see:
//! - `mirror` deletes the rows *it pushed* whose key left the result; rows
//!   of the target table tidewater never wrote are left alone, so a shared
//!   table is safe.
//! - The diff is against what tidewater last pushed, not against the
//!   target's contents: a row changed in the target by someone else is put
//!   back only when its result row changes, or on a `--full` run.
//! - A target table tidewater creates starts with an empty state.
//!
//! Why a merge in key order (and not a hash table of the result, as
//! before): both sides are sorted streams, so memory does not grow with
//! the result or the state; the sort is DataFusion's, which spills. The
//! order is checked in Rust as rows arrive (`key_order`, the order
//! DataFusion sorts in, and the order the state file is written in): equal
//! neighbours are a duplicate key, a step back stops the run (a bug, never
//! a wrong diff). NULL keys sort last (the order of the current-state
//! view, so the result needs no second sort): a NULL key fails the run when
//! the merge reaches it, after earlier transactions committed (journaled,
//! so harmless; the next run starts from there).

use std::cmp::Ordering;
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use futures_util::StreamExt;
use tidewater_core::TableId;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::engine::{self, Lake, Resources};
use crate::error::ReverseError;
use crate::state::{self, Entry, Journal, Previous, StateFiles};
use crate::target::{Described, TableName, Target};
use crate::types::{misfit, TargetColumn};
use crate::value::{canonical_type, key_order, row_hash, Cells, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Insert new keys, update changed rows.
    Upsert,
    /// Upsert, and delete rows whose key left the result.
    Mirror,
}

/// A job as configured.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: String,
    pub query: String,
    pub target_url: tidewater_endpoint::url::SecretUrl,
    pub target_table: String,
    pub key: Vec<String>,
    pub mode: Mode,
    /// Rows per target transaction.
    pub batch_rows: usize,
    /// None: as fast as the target takes them.
    pub max_rows_per_second: Option<f64>,
    pub statement_timeout_ms: u64,
    /// Tries of one transaction on lock timeouts, deadlocks, statement
    /// timeouts and lost connections.
    pub max_retries: u32,
    /// The query's memory pool in MiB: sorts and aggregations spill to
    /// the job's spill directory beyond it.
    pub memory_mb: usize,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Compute and report the difference; write nothing.
    pub dry_run: bool,
    /// Push every result row, as if nothing had been pushed before (keys
    /// pushed before still count for mirror's deletes).
    pub full: bool,
}

/// What a run did (or, dry, would do). An interrupted run counts what it
/// got to before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub result_rows: usize,
    pub added: usize,
    pub changed: usize,
    pub deleted: usize,
    pub unchanged: usize,
    /// The target table did not exist (and was created unless dry).
    pub created: bool,
    pub dry_run: bool,
    /// Stopped by shutdown between transactions; the next run continues.
    pub interrupted: bool,
    pub millis: u64,
    pub transactions: usize,
    pub retries: usize,
    /// Lake tables the query read (for lineage).
    pub inputs: Vec<TableId>,
    /// The result's columns and their Arrow types (for lineage).
    pub columns: Vec<(String, String)>,
}

/// Runs `spec` once over `sink`'s lake.
///
/// The result streams in key order and is merged with the last push (the
/// state file, also in key order): memory holds one result batch and one
/// target transaction, whatever the size of the result.
pub async fn run_job(
    spec: &JobSpec,
    sink: &mut Lake,
    state_dir: &Path,
    options: RunOptions,
    shutdown: Option<watch::Receiver<bool>>,
) -> Result<Report, ReverseError> {
    let started = Instant::now();
    let _lock = state::lock(state_dir, &spec.name).map_err(|err| {
        err.unwrap_or_else(|| ReverseError::Busy {
            job: spec.name.clone(),
        })
    })?;
    let resources = Resources {
        memory_bytes: spec.memory_mb.max(1) << 20,
        spill_dir: Some(state::spill_dir(state_dir, &spec.name)?),
    };
    let result = engine::query(sink, &spec.query, &resources).await?;
    let planned_ms = started.elapsed().as_millis() as u64;
    let key_index = key_columns(spec, &result.schema)?;
    for field in result.schema.fields() {
        canonical_type(field.name(), field.data_type()).map_err(|problem| {
            ReverseError::Result {
                problem,
                hint: "every result column must map to a column type of the target".into(),
            }
        })?;
    }
    let schema = result.schema.clone();

    let mut target = Target::connect(spec.target_url.expose(), spec.statement_timeout_ms).await?;
    let table = target.table_name(&spec.target_table)?;
    let described = target.describe(&table).await?;
    let mut report = Report {
        dry_run: options.dry_run,
        created: described.is_none(),
        inputs: result.tables.clone(),
        columns: schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().to_string()))
            .collect(),
        ..Report::default()
    };
    let mut columns = match &described {
        Some(described) => fit(spec, &table, &schema, described, target.is_mysql())?,
        None => planned_columns(spec, &target, &schema, &key_index)?,
    };
    let files = StateFiles::new(state_dir, &spec.name, fingerprint(spec, &table, &schema));
    let mut previous = if described.is_none() {
        Previous::empty()
    } else {
        files.previous()?
    };
    if described.is_none() && !options.dry_run {
        let ddl: Vec<(String, String, bool)> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), c.type_text.clone(), key_index.contains(&i)))
            .collect();
        target.create(&table, &ddl).await?;
        files.clear()?;
        info!(job = %spec.name, table = %table, "created the target table");
        // A created table's columns as the server names its types.
        if let Some(described) = target.describe(&table).await? {
            columns = fit(spec, &table, &schema, &described, target.is_mysql())?;
        }
    }
    let key_targets: Vec<TargetColumn> = key_index.iter().map(|&i| columns[i].clone()).collect();

    let mut stream = result.ordered_by(&spec.key).await?;
    let mut push = Push {
        spec,
        target: &mut target,
        table: &table,
        columns: &columns,
        key_index: &key_index,
        key_targets: &key_targets,
        files: &files,
        journal: None,
        pace: Pace::new(spec.max_rows_per_second),
        upserts: Vec::new(),
        deletes: Vec::new(),
        dry_run: options.dry_run,
        shutdown,
        report: &mut report,
    };
    let mut next_state = if options.dry_run {
        None
    } else {
        Some(files.writer()?)
    };
    // The state differs from the result (rows to write, keys gone, or a
    // journal to fold in): the next state replaces it.
    let mut differs = files.has_journal();
    let mut pushed = previous.next()?;
    let mut last_key: Option<Vec<Value>> = None;
    let mut first_batch_ms = None;
    let all_columns = 0..schema.fields().len();
    'result: while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|source| ReverseError::Query { source })?;
        first_batch_ms.get_or_insert_with(|| started.elapsed().as_millis() as u64);
        let cells = Cells::new(&batch).map_err(|e| ReverseError::Result {
            problem: e.to_string(),
            hint: "cast the column in the query".into(),
        })?;
        for row in 0..batch.num_rows() {
            let key = cells.row(row, key_index.iter().copied());
            if let Some(i) = key.iter().position(|v| *v == Value::Null) {
                return Err(ReverseError::Result {
                    problem: format!("key column {} is NULL in a result row", spec.key[i]),
                    hint: "filter NULL keys out in the query (WHERE … IS NOT NULL)".into(),
                });
            }
            if let Some(last) = &last_key {
                match key_order(last, &key) {
                    Ordering::Less => {}
                    Ordering::Equal => {
                        return Err(ReverseError::Result {
                            problem: format!(
                                "two result rows have the same key ({})",
                                spec.key.join(", ")
                            ),
                            hint: "the key must be unique in the result: GROUP BY it".into(),
                        })
                    }
                    Ordering::Greater => return Err(ReverseError::Order),
                }
            }
            push.report.result_rows += 1;
            let values = cells.row(row, all_columns.clone());
            let hash = row_hash(&values);
            // Pushed keys before this one left the result.
            while let Some(gone) = pushed.take_if(|p| key_order(&p.key, &key).is_lt()) {
                differs = true;
                if spec.mode == Mode::Mirror {
                    push.report.deleted += 1;
                    push.delete(gone).await?;
                    if push.report.interrupted {
                        break 'result;
                    }
                }
                pushed = previous.next()?;
            }
            let entry = Entry::new(key, hash);
            let same = match pushed.take_if(|p| key_order(&p.key, &entry.key).is_eq()) {
                Some(old) => {
                    pushed = previous.next()?;
                    if old.hash == hash && !options.full {
                        push.report.unchanged += 1;
                        true
                    } else {
                        push.report.changed += 1;
                        false
                    }
                }
                None => {
                    push.report.added += 1;
                    false
                }
            };
            if let Some(next_state) = &mut next_state {
                next_state.push(&entry.key_json, hash)?;
            }
            if !same {
                differs = true;
                push.upsert(values, entry.key_json.clone(), hash).await?;
                if push.report.interrupted {
                    break 'result;
                }
            }
            last_key = Some(entry.key);
        }
    }
    // Pushed keys after the last result row left it too.
    while !push.report.interrupted {
        let Some(gone) = pushed.take() else { break };
        differs = true;
        if spec.mode == Mode::Mirror {
            push.report.deleted += 1;
            push.delete(gone).await?;
        }
        pushed = previous.next()?;
    }
    push.flush_all().await?;
    let interrupted = push.report.interrupted;
    drop(push);
    if let Some(next_state) = next_state {
        if interrupted || !differs {
            // Interrupted: the journal holds what was done. Unchanged: the
            // state on disk is this run's already.
            next_state.discard();
        } else {
            // Upsert leaves rows whose key left the result in the target;
            // they are forgotten, and pushed again should they come back.
            next_state.finish(true)?;
        }
    }
    // The query runs as the merge goes: until the first batch it reads
    // and sorts (spilling as needed); from then on rows stream.
    debug!(
        job = %spec.name,
        rows = report.result_rows,
        planned_ms,
        first_batch_ms = first_batch_ms.unwrap_or_default(),
        total_ms = started.elapsed().as_millis() as u64,
        "result compared with the last push"
    );
    report.millis = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The writes of a run, `batch_rows` per transaction, journaled as each
/// commits.
struct Push<'a> {
    spec: &'a JobSpec,
    target: &'a mut Target,
    table: &'a TableName,
    columns: &'a [TargetColumn],
    key_index: &'a [usize],
    key_targets: &'a [TargetColumn],
    files: &'a StateFiles,
    journal: Option<Journal>,
    pace: Pace,
    /// (row, key JSON, hash)
    upserts: Vec<(Vec<Value>, String, u128)>,
    deletes: Vec<Entry>,
    dry_run: bool,
    shutdown: Option<watch::Receiver<bool>>,
    report: &'a mut Report,
}

impl Push<'_> {
    fn batch_rows(&self) -> usize {
        self.spec.batch_rows.max(1)
    }

    async fn upsert(
        &mut self,
        row: Vec<Value>,
        key: String,
        hash: u128,
    ) -> Result<(), ReverseError> {
        if self.dry_run {
            return Ok(());
        }
        self.upserts.push((row, key, hash));
        if self.upserts.len() >= self.batch_rows() {
            self.flush_upserts().await?;
        }
        Ok(())
    }

    async fn delete(&mut self, entry: Entry) -> Result<(), ReverseError> {
        if self.dry_run {
            return Ok(());
        }
        self.deletes.push(entry);
        if self.deletes.len() >= self.batch_rows() {
            self.flush_deletes().await?;
        }
        Ok(())
    }

    async fn flush_all(&mut self) -> Result<(), ReverseError> {
        self.flush_deletes().await?;
        self.flush_upserts().await
    }

    /// Whether to stop (shutdown) before the next transaction.
    fn stopping(&mut self) -> bool {
        if self.shutdown.as_ref().is_some_and(|rx| *rx.borrow()) {
            self.report.interrupted = true;
        }
        self.report.interrupted
    }

    fn journal(&mut self) -> Result<&mut Journal, ReverseError> {
        if self.journal.is_none() {
            self.journal = Some(self.files.journal()?);
        }
        Ok(self.journal.as_mut().expect("opened"))
    }

    async fn flush_upserts(&mut self) -> Result<(), ReverseError> {
        if self.upserts.is_empty() || self.stopping() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.upserts);
        self.pace.begin();
        let rows: Vec<Vec<Value>> = chunk.iter().map(|(row, _, _)| row.clone()).collect();
        self.report.retries += retrying(
            self.spec,
            self.target,
            self.table,
            self.columns,
            self.key_index,
            self.key_targets,
            Op::Upsert(&rows),
        )
        .await?;
        self.journal()?.record(
            chunk.iter().map(|(_, key, hash)| (key.as_str(), *hash)),
            std::iter::empty(),
        )?;
        self.report.transactions += 1;
        self.pace.wait(chunk.len()).await;
        Ok(())
    }

    async fn flush_deletes(&mut self) -> Result<(), ReverseError> {
        if self.deletes.is_empty() || self.stopping() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.deletes);
        self.pace.begin();
        let keys: Vec<Vec<Value>> = chunk.iter().map(|e| e.key.clone()).collect();
        self.report.retries += retrying(
            self.spec,
            self.target,
            self.table,
            self.columns,
            self.key_index,
            self.key_targets,
            Op::Delete(&keys),
        )
        .await?;
        self.journal()?.record(
            std::iter::empty(),
            chunk.iter().map(|e| e.key_json.as_str()),
        )?;
        self.report.transactions += 1;
        self.pace.wait(chunk.len()).await;
        Ok(())
    }
}

/// One transaction for the target.
enum Op<'a> {
    Upsert(&'a [Vec<Value>]),
    Delete(&'a [Vec<Value>]),
}

/// Runs one transaction, retrying what the server says may pass later
/// (lock timeouts, deadlocks, statement timeouts, lost connections) with
/// exponential backoff and jitter. Returns the retries it took.
#[allow(clippy::too_many_arguments)]
async fn retrying(
    spec: &JobSpec,
    target: &mut Target,
    table: &TableName,
    columns: &[TargetColumn],
    key_index: &[usize],
    key_targets: &[TargetColumn],
    op: Op<'_>,
) -> Result<usize, ReverseError> {
    let mut tries = 0u32;
    loop {
        let done = match op {
            Op::Upsert(rows) => target.upsert(table, columns, key_index, rows).await,
            Op::Delete(keys) => target.delete(table, key_targets, keys).await,
        };
        match done {
            Ok(()) => return Ok(tries as usize),
            Err(ReverseError::Target {
                action,
                message,
                retryable: true,
            }) if tries + 1 < spec.max_retries.max(1) => {
                let base = 100u64 << tries.min(8);
                let wait = Duration::from_millis(base + rand::random::<u64>() % base);
                warn!(job = %spec.name, %action, error = %message, attempt = tries + 1, wait_ms = wait.as_millis() as u64, "target busy; retrying the transaction");
                tokio::time::sleep(wait).await;
                tries += 1;
                if let Err(err) = target.recover().await {
                    warn!(job = %spec.name, error = %err, "reconnecting to the target failed");
                }
            }
            Err(err) => return Err(err),
        }
    }
}

/// Spaces transactions so the rows written stay under the rate.
struct Pace {
    rate: Option<f64>,
    /// When the first transaction began: the query before it (which can
    /// take long, and now overlaps the writes) does not count.
    start: Option<Instant>,
    rows: usize,
}

impl Pace {
    fn new(rate: Option<f64>) -> Self {
        Self {
            rate: rate.filter(|r| *r > 0.0),
            start: None,
            rows: 0,
        }
    }

    /// A transaction begins.
    fn begin(&mut self) {
        self.start.get_or_insert_with(Instant::now);
    }

    async fn wait(&mut self, rows: usize) {
        self.rows += rows;
        if let (Some(rate), Some(start)) = (self.rate, self.start) {
            let due = Duration::from_secs_f64(self.rows as f64 / rate);
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
        }
    }
}

/// Positions of the key columns in the result.
fn key_columns(spec: &JobSpec, schema: &SchemaRef) -> Result<Vec<usize>, ReverseError> {
    if spec.key.is_empty() {
        return Err(ReverseError::Result {
            problem: "the job has no key".into(),
            hint: "set key = [\"…\"] to the result columns that identify a row".into(),
        });
    }
    let mut seen = HashSet::new();
    for field in schema.fields() {
        if !seen.insert(field.name().to_lowercase()) {
            return Err(ReverseError::Result {
                problem: format!("two result columns are named {}", field.name()),
                hint: "give each result column its own name with AS".into(),
            });
        }
    }
    spec.key
        .iter()
        .map(|k| {
            schema.index_of(k).map_err(|_| ReverseError::Result {
                problem: format!("key column {k} is not in the result"),
                hint: format!(
                    "the result has {}; name the key columns as the query does",
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        })
        .collect()
}

/// The columns of a table to be created, in result order.
fn planned_columns(
    spec: &JobSpec,
    target: &Target,
    schema: &SchemaRef,
    key_index: &[usize],
) -> Result<Vec<TargetColumn>, ReverseError> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let key = key_index.contains(&i);
            let ty =
                target
                    .column_type(field.data_type(), key)
                    .ok_or_else(|| ReverseError::Result {
                        problem: format!(
                            "column {} is {}, which a created {} table has no type for",
                            field.name(),
                            field.data_type(),
                            if target.is_mysql() {
                                "MySQL"
                            } else {
                                "Postgres"
                            }
                        ),
                        hint: format!(
                            "cast it in the query, or create {} yourself",
                            spec.target_table
                        ),
                    })?;
            Ok(TargetColumn {
                name: field.name().clone(),
                type_text: ty.clone(),
                base: ty.to_lowercase(),
                category: String::new(),
                numeric: None,
                fraction_digits: 6,
                nullable: !key,
                has_default: false,
            })
        })
        .collect()
}

/// The target's columns for each result column, in result order, or every
/// reason the table does not fit.
fn fit(
    spec: &JobSpec,
    table: &TableName,
    schema: &SchemaRef,
    described: &Described,
    mysql: bool,
) -> Result<Vec<TargetColumn>, ReverseError> {
    let same = |a: &str, b: &str| {
        if mysql {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    };
    let mut problems = Vec::new();
    let mut columns = Vec::new();
    for field in schema.fields() {
        match described
            .columns
            .iter()
            .find(|c| same(&c.name, field.name()))
        {
            Some(column) => {
                if let Some(problem) = misfit(field.data_type(), column, mysql) {
                    problems.push(problem);
                }
                columns.push(column.clone());
            }
            None => problems.push(format!(
                "it has no column {} (the result's {})",
                field.name(),
                field.data_type()
            )),
        }
    }
    for column in &described.columns {
        let written = schema.fields().iter().any(|f| same(f.name(), &column.name));
        if !written && !column.nullable && !column.has_default {
            problems.push(format!(
                "its column {} is NOT NULL without a default, and the result does not fill it",
                column.name
            ));
        }
    }
    let has_key = described.unique_keys.iter().any(|unique| {
        unique.len() == spec.key.len() && unique.iter().all(|u| spec.key.iter().any(|k| same(k, u)))
    });
    if !has_key {
        problems.push(format!(
            "it has no primary key or unique index on exactly ({}), which writes by key need",
            spec.key.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(columns)
    } else {
        Err(ReverseError::TargetMismatch {
            table: table.to_string(),
            problems,
        })
    }
}

/// What the state depends on: the query, the result's columns, the target
/// (server, table) and the key. No password goes in.
fn fingerprint(spec: &JobSpec, table: &TableName, schema: &SchemaRef) -> String {
    let server = spec
        .target_url
        .expose()
        .split_once("://")
        .map(|(scheme, rest)| {
            let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
            let host = host.split_once('?').map(|(h, _)| h).unwrap_or(host);
            format!("{scheme}://{host}")
        })
        .unwrap_or_default();
    let fields: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{}:{}", f.name(), f.data_type()))
        .collect();
    let text = format!(
        "{}\n{server}\n{table}\n{}\n{}",
        spec.query,
        spec.key.join(","),
        fields.join(",")
    );
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}
