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

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use tidewater_lake::LakeSink;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::engine;
use crate::error::ReverseError;
use crate::state::{State, StateFiles};
use crate::target::{Described, TableName, Target};
use crate::types::{misfit, TargetColumn};
use crate::value::{canonical_type, row_hash, Cells, Value};

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
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Compute and report the difference; write nothing.
    pub dry_run: bool,
    /// Push every result row, as if nothing had been pushed before (keys
    /// pushed before still count for mirror's deletes).
    pub full: bool,
}

/// What a run did (or, dry, would do).
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
}

/// A result row to write: where it is and what it hashes to.
struct Pending {
    batch: usize,
    row: usize,
    key: String,
    hash: u128,
}

/// Runs `spec` once over `sink`'s lake.
pub async fn run_job(
    spec: &JobSpec,
    sink: &mut LakeSink,
    state_dir: &Path,
    options: RunOptions,
    shutdown: Option<watch::Receiver<bool>>,
) -> Result<Report, ReverseError> {
    let started = Instant::now();
    let result = engine::query(sink, &spec.query).await?;
    let queried_ms = started.elapsed().as_millis() as u64;
    let key_index = key_columns(spec, &result.schema)?;
    for field in result.schema.fields() {
        canonical_type(field.name(), field.data_type()).map_err(|problem| {
            ReverseError::Result {
                problem,
                hint: "every result column must map to a column type of the target".into(),
            }
        })?;
    }

    let mut target = Target::connect(spec.target_url.expose(), spec.statement_timeout_ms).await?;
    let table = target.table_name(&spec.target_table)?;
    let described = target.describe(&table).await?;
    let mut report = Report {
        dry_run: options.dry_run,
        created: described.is_none(),
        ..Report::default()
    };
    let columns = match &described {
        Some(described) => fit(spec, &table, &result.schema, described, target.is_mysql())?,
        None => planned_columns(spec, &target, &result.schema, &key_index)?,
    };

    let files = StateFiles::new(
        state_dir,
        &spec.name,
        fingerprint(spec, &table, &result.schema),
    );
    let _lock = files.lock().map_err(|err| {
        err.unwrap_or_else(|| ReverseError::Busy {
            job: spec.name.clone(),
        })
    })?;
    let previous = if described.is_none() {
        State::default()
    } else {
        files.load()?.unwrap_or_default()
    };

    // The result, keyed and hashed; the difference from the last push.
    let mut cells = Vec::with_capacity(result.batches.len());
    let mut current: HashMap<String, u128> = HashMap::new();
    let mut writes: Vec<Pending> = Vec::new();
    let all_columns = 0..result.schema.fields().len();
    for (b, batch) in result.batches.iter().enumerate() {
        let batch_cells = Cells::new(batch).map_err(|e| ReverseError::Result {
            problem: e.to_string(),
            hint: "cast the column in the query".into(),
        })?;
        for row in 0..batch.num_rows() {
            let key_values = batch_cells.row(row, key_index.iter().copied());
            if let Some(i) = key_values.iter().position(|v| *v == Value::Null) {
                return Err(ReverseError::Result {
                    problem: format!("key column {} is NULL in a result row", spec.key[i]),
                    hint: "filter NULL keys out in the query (WHERE … IS NOT NULL)".into(),
                });
            }
            let key = serde_json::to_string(&key_values).expect("values serialize");
            let hash = row_hash(&batch_cells.row(row, all_columns.clone()));
            if current.insert(key.clone(), hash).is_some() {
                return Err(ReverseError::Result {
                    problem: format!(
                        "two result rows have the same key ({})",
                        spec.key.join(", ")
                    ),
                    hint: "the key must be unique in the result: GROUP BY it".into(),
                });
            }
            match previous.rows.get(&key) {
                Some(&old) if old == hash && !options.full => report.unchanged += 1,
                Some(_) => {
                    report.changed += 1;
                    writes.push(Pending {
                        batch: b,
                        row,
                        key,
                        hash,
                    });
                }
                None => {
                    report.added += 1;
                    writes.push(Pending {
                        batch: b,
                        row,
                        key,
                        hash,
                    });
                }
            }
        }
        cells.push(batch_cells);
    }
    report.result_rows = current.len();
    let deletes: Vec<&String> = match spec.mode {
        Mode::Mirror => previous
            .rows
            .keys()
            .filter(|k| !current.contains_key(*k))
            .collect(),
        Mode::Upsert => Vec::new(),
    };
    report.deleted = deletes.len();
    debug!(
        job = %spec.name,
        query_ms = queried_ms,
        diff_ms = started.elapsed().as_millis() as u64 - queried_ms,
        "result read and compared with the last push"
    );
    if options.dry_run {
        report.millis = started.elapsed().as_millis() as u64;
        return Ok(report);
    }

    if described.is_none() {
        let ddl: Vec<(String, String, bool)> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), c.type_text.clone(), key_index.contains(&i)))
            .collect();
        target.create(&table, &ddl).await?;
        files.clear()?;
        info!(job = %spec.name, table = %table, "created the target table");
    }
    // A created table's columns as the server names its types.
    let columns = match target.describe(&table).await? {
        Some(described) => fit(spec, &table, &result.schema, &described, target.is_mysql())?,
        None => columns,
    };
    let key_targets: Vec<TargetColumn> = key_index.iter().map(|&i| columns[i].clone()).collect();

    // Nothing to write, every pushed key still in the result and no
    // journal to fold in: the state on disk is this run's already.
    if writes.is_empty()
        && deletes.is_empty()
        && current.len() == previous.rows.len()
        && !files.has_journal()
    {
        report.millis = started.elapsed().as_millis() as u64;
        return Ok(report);
    }
    let mut journal = files.journal()?;
    let mut pace = Pace::new(spec.max_rows_per_second);
    let stopping =
        |shutdown: &Option<watch::Receiver<bool>>| shutdown.as_ref().is_some_and(|rx| *rx.borrow());
    let batch_rows = spec.batch_rows.max(1);
    for chunk in deletes.chunks(batch_rows) {
        if stopping(&shutdown) {
            report.interrupted = true;
            break;
        }
        let keys: Vec<Vec<Value>> = chunk
            .iter()
            .map(|k| serde_json::from_str(k).map_err(|e| state_error(state_dir, e)))
            .collect::<Result<_, _>>()?;
        report.retries += retrying(
            spec,
            &mut target,
            &table,
            &columns,
            &key_index,
            &key_targets,
            Op::Delete(&keys),
        )
        .await?;
        journal.record(std::iter::empty(), chunk.iter().map(|k| k.as_str()))?;
        report.transactions += 1;
        pace.wait(chunk.len()).await;
    }
    for chunk in writes.chunks(batch_rows) {
        if report.interrupted || stopping(&shutdown) {
            report.interrupted = true;
            break;
        }
        let rows: Vec<Vec<Value>> = chunk
            .iter()
            .map(|p| cells[p.batch].row(p.row, all_columns.clone()))
            .collect();
        report.retries += retrying(
            spec,
            &mut target,
            &table,
            &columns,
            &key_index,
            &key_targets,
            Op::Upsert(&rows),
        )
        .await?;
        journal.record(
            chunk.iter().map(|p| (p.key.as_str(), p.hash)),
            std::iter::empty(),
        )?;
        report.transactions += 1;
        pace.wait(chunk.len()).await;
    }
    if !report.interrupted {
        let mut state = State { rows: current };
        // Upsert leaves rows whose key left the result in the target; they
        // are forgotten, and pushed again should they come back.
        state.rows.shrink_to_fit();
        files.save(&state)?;
    }
    report.millis = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn state_error(state_dir: &Path, err: serde_json::Error) -> ReverseError {
    ReverseError::State {
        path: state_dir.join("reverse_etl"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, err),
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
    start: Instant,
    rows: usize,
}

impl Pace {
    fn new(rate: Option<f64>) -> Self {
        Self {
            rate: rate.filter(|r| *r > 0.0),
            start: Instant::now(),
            rows: 0,
        }
    }

    async fn wait(&mut self, rows: usize) {
        self.rows += rows;
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.rows as f64 / rate);
            if let Some(ahead) = due.checked_sub(self.start.elapsed()) {
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
