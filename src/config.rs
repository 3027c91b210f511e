//! The TOML config (DESIGN §8): serde structs that reject unknown keys,
//! `${ENV}` interpolation, and pure validation that names the key and the fix.
//! `schemas/config.schema.json` is generated from these types.

use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

/// Default `sink.flush_interval_ms`: a second keeps lake lag low without
/// producing more than one small file per table per second.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 1000;
/// Default `sink.max_batch_rows`: large enough for efficient Parquet row groups,
/// small enough that a batch of wide rows stays far below the memory budget.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 100_000;
/// Default `sink.max_batch_bytes`: bounds the decoded rows held before a cut.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
const MIN_BATCH_BYTES: usize = 1024 * 1024;
/// Arrow string/binary columns use 32-bit offsets: one batch column must stay
/// below 2 GiB, and decoded values are smaller than their column.
const MAX_BATCH_BYTES: usize = 1024 * 1024 * 1024;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub pipeline: PipelineConfig,
    pub source: SourceConfig,
    pub sink: SinkConfig,
    /// Prometheus `/metrics` and `/health` over HTTP; off when absent.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Reverse-ETL jobs: SQL over the lake, pushed by key into a
    /// production table (`tidewater reverse-etl`, or on a schedule next to
    /// `tidewater run`).
    #[serde(default)]
    pub reverse_etl: Vec<ReverseEtlConfig>,
    /// Columns left out or masked at capture, before any batch, sink, log
    /// or error sees their values.
    #[serde(default)]
    pub masking: MaskingConfig,
    /// OpenLineage run events for runs, snapshots, streaming checkpoints
    /// and reverse-ETL jobs; off when absent.
    #[serde(default)]
    pub lineage: Option<LineageConfig>,
}

/// Default `lineage.checkpoint_interval_ms`: a lineage server needs to know
/// a stream is alive and what it writes, not every commit.
pub const DEFAULT_LINEAGE_INTERVAL_MS: u64 = 60_000;

/// `[lineage]`: where OpenLineage events go.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LineageConfig {
    /// POST each event (JSON) here: an OpenLineage HTTP endpoint such as
    /// Marquez's `http://marquez:5000/api/v1/lineage`.
    #[serde(default)]
    pub url: Option<Secret>,
    /// A bearer token sent with each POST (use `${ENV}`).
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Append each event as one JSON line to this file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The namespace of tidewater's jobs. Default `tidewater`.
    #[serde(default = "default_lineage_namespace")]
    pub namespace: String,
    /// While streaming, a RUNNING event naming the tables committed since
    /// the last one, at most this often. Default 60000.
    #[serde(default = "default_lineage_interval_ms")]
    pub checkpoint_interval_ms: u64,
}

fn default_lineage_namespace() -> String {
    "tidewater".into()
}

fn default_lineage_interval_ms() -> u64 {
    DEFAULT_LINEAGE_INTERVAL_MS
}

impl LineageConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        if self.url.is_none() && self.file.is_none() {
            return Err(invalid(
                "lineage",
                "names no destination; set lineage.url (an OpenLineage HTTP endpoint) or lineage.file, or remove [lineage]",
            ));
        }
        if let Some(url) = &self.url {
            let url = url.expose();
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url::Url::parse(url).is_err()
            {
                return Err(invalid(
                    "lineage.url",
                    "must be an http:// or https:// URL such as http://marquez:5000/api/v1/lineage",
                ));
            }
        }
        if self.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(invalid(
                "lineage.file",
                "is empty; name a file to append events to",
            ));
        }
        if self.namespace.trim().is_empty() {
            return Err(invalid("lineage.namespace", "is empty"));
        }
        if self.checkpoint_interval_ms < 1000 {
            return Err(invalid(
                "lineage.checkpoint_interval_ms",
                "must be at least 1000 (a lineage server needs no event per commit)",
            ));
        }
        Ok(())
    }
}

/// `[masking]`: what personal data never reaches the sink.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// The secret key of `action = "hash"` (HMAC-SHA-256), at least 16
    /// bytes: write `${ENV}` and keep it out of the file. The same key gives
    /// the same hashes in every run and table; a new key gives new hashes
    /// (and a new schema version naming the key's id).
    #[serde(default)]
    pub hash_key: Option<Secret>,
    /// Rules; for each column the first rule that matches applies.
    #[serde(default)]
    pub columns: Vec<MaskColumnsConfig>,
}

/// `[[masking.columns]]`: one rule.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskColumnsConfig {
    /// Pattern over `schema.table` (`database.table` on MySQL), `*` and `?`.
    pub table: String,
    /// Column name patterns (`*`, `?`).
    pub columns: Vec<String>,
    /// `exclude` (the column is left out), `constant` (every non-NULL value
    /// becomes `value`) or `hash` (every non-NULL value becomes the hex
    /// HMAC-SHA-256 of its text under `masking.hash_key`). Key columns may
    /// only be hashed.
    pub action: MaskActionConfig,
    /// The text of `action = "constant"`.
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MaskActionConfig {
    Exclude,
    Constant,
    Hash,
}

impl MaskingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            key,
            message: message.into(),
        };
        for (i, rule) in self.columns.iter().enumerate() {
            let key = |field: &str| format!("masking.columns[{i}].{field}");
            if rule.table.trim().is_empty() {
                return Err(invalid(
                    key("table"),
                    "is empty; name a table pattern such as \"public.customers\"",
                ));
            }
            if rule.columns.is_empty() || rule.columns.iter().any(|c| c.trim().is_empty()) {
                return Err(invalid(
                    key("columns"),
                    "must list one or more column name patterns",
                ));
            }
            match (rule.action, &rule.value) {
                (MaskActionConfig::Constant, None) => {
                    return Err(invalid(
                        key("value"),
                        "is required with action = \"constant\" (the text every value becomes)",
                    ))
                }
                (MaskActionConfig::Exclude | MaskActionConfig::Hash, Some(_)) => {
                    return Err(invalid(
                        key("value"),
                        "is only read with action = \"constant\"; remove it",
                    ))
                }
                _ => {}
            }
        }
        let hashes = self
            .columns
            .iter()
            .any(|r| r.action == MaskActionConfig::Hash);
        match &self.hash_key {
            None if hashes => Err(invalid(
                "masking.hash_key".into(),
                "is required when a rule hashes; write hash_key = \"${TIDEWATER_HASH_KEY}\" and export 32 random bytes (e.g. `openssl rand -hex 32`)",
            )),
            Some(key) if key.expose().len() < tidewater_core::mask::MIN_HASH_KEY_BYTES => Err(invalid(
                "masking.hash_key".into(),
                "is shorter than 16 bytes; use 32 random bytes (e.g. `openssl rand -hex 32`)",
            )),
            _ => Ok(()),
        }
    }

    /// The policy the source task applies.
    pub fn policy(&self) -> Result<tidewater_core::mask::MaskPolicy, ConfigError> {
        use tidewater_core::mask::{MaskAction, MaskPolicy, MaskRule};
        let rules = self
            .columns
            .iter()
            .map(|r| MaskRule {
                tables: r.table.clone(),
                columns: r.columns.clone(),
                action: match r.action {
                    MaskActionConfig::Exclude => MaskAction::Exclude,
                    MaskActionConfig::Constant => {
                        MaskAction::Constant(r.value.clone().unwrap_or_default())
                    }
                    MaskActionConfig::Hash => MaskAction::Hash,
                },
            })
            .collect();
        let key = self.hash_key.as_ref().map(|k| k.expose().as_bytes());
        MaskPolicy::new(rules, key).map_err(|err| ConfigError::Invalid {
            key: "masking".into(),
            message: err.to_string(),
        })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseEtlConfig {
    /// The job's name (a-z, 0-9, '_', '-'): `--job`, logs, metrics and its
    /// state file under `pipeline.state_dir/reverse_etl/`.
    pub name: String,
    /// SQL over the lake: each table is `<schema>.<table>` (current state)
    /// and `<schema>.<table>__changes` (the change log). Read-only.
    pub query: String,
    /// `postgres://…/database` or `mysql://…` (`mariadb://…`) of the database
    /// written; use `${ENV}` for the password, percent-encoded as in
    /// `source.url`.
    pub target_url: Secret,
    /// `schema.table` (Postgres; default schema `public`) or
    /// `database.table` (MySQL; default the url's database). Created from
    /// the result's types when missing.
    pub target_table: String,
    /// Result columns that identify a row; the target needs a primary key
    /// or unique index on exactly these.
    pub key: Vec<String>,
    /// `upsert` (insert and update) or `mirror` (also delete the rows it
    /// pushed whose key left the result). Default upsert.
    #[serde(default)]
    pub mode: ReverseEtlMode,
    /// Rows per target transaction. Default 1000.
    #[serde(default = "default_reverse_batch_rows")]
    pub batch_rows: usize,
    /// Upper bound on rows written per second; default unbounded.
    #[serde(default)]
    pub max_rows_per_second: Option<f64>,
    /// Statement timeout on the target; lock waits give up at a quarter of
    /// it. Default 30000.
    #[serde(default = "default_reverse_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Tries of one transaction on lock timeouts, deadlocks, statement
    /// timeouts and lost connections, with exponential backoff. Default 5.
    #[serde(default = "default_reverse_max_retries")]
    pub max_retries: u32,
    /// Memory of the job's query in MiB: sorts, windows and aggregations
    /// spill to `pipeline.state_dir/reverse_etl/<job>.spill/` beyond it.
    /// Default 128.
    #[serde(default = "default_reverse_memory_mb")]
    pub memory_mb: usize,
    /// Under `tidewater run`: run the job this often (`30s`, `15m`, `1h`,
    /// `1d`). At most one of `every` and `cron`; with neither, the job runs
    /// only from `tidewater reverse-etl`.
    #[serde(default)]
    pub every: Option<String>,
    /// Under `tidewater run`: a cron expression in UTC (`*/15 * * * *`;
    /// five fields, or six with seconds first).
    #[serde(default)]
    pub cron: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReverseEtlMode {
    #[default]
    Upsert,
    Mirror,
}

/// Small transactions keep row locks on the production table short.
fn default_reverse_batch_rows() -> usize {
    1000
}
fn default_reverse_statement_timeout_ms() -> u64 {
    30_000
}
fn default_reverse_max_retries() -> u32 {
    5
}
fn default_reverse_memory_mb() -> usize {
    128
}

/// When a scheduled job runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    Every(std::time::Duration),
    Cron(Box<croner::Cron>),
}

/// (table pattern, retention; None for ever) in the order they apply: the
/// per-table ones, then the default for every table; a `forever` rule keeps
/// its tables out of every later one.
pub fn retention_rules(
    default: &Option<String>,
    tables: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, Option<std::time::Duration>)> {
    let mut rules: Vec<(String, Option<std::time::Duration>)> = tables
        .iter()
        .map(|(pattern, keep)| (pattern.clone(), retention_value(keep)))
        .collect();
    if let Some(keep) = default {
        rules.push(("*".into(), retention_value(keep)));
    }
    rules
}

/// Checks `sink.changelog_retention*`; true when a retention is set.
fn check_retention(
    default: &Option<String>,
    tables: &std::collections::BTreeMap<String, String>,
    interval_ms: u64,
) -> Result<bool, ConfigError> {
    let check = |key: String, keep: &str| {
        match keep.trim() {
        "forever" => Ok(()),
        _ => match parse_duration(keep) {
            Some(d) if d >= std::time::Duration::from_secs(1) => Ok(()),
            _ => Err(ConfigError::Invalid {
                key,
                message: format!(
                    "{keep:?} is not a retention: write a number and a unit (`90d`, `12h`, `30m`), or `forever`"
                ),
            }),
        },
    }
    };
    if let Some(keep) = default {
        check("sink.changelog_retention".into(), keep)?;
    }
    for (pattern, keep) in tables {
        check(format!("sink.changelog_retention_tables.{pattern}"), keep)?;
    }
    let any = default.is_some() || !tables.is_empty();
    if any && interval_ms < 1000 {
        return Err(ConfigError::Invalid {
            key: "sink.changelog_retention_interval_ms".into(),
            message: "must be at least 1000".into(),
        });
    }
    Ok(any)
}

/// A retention value: a duration, or None for `forever`.
fn retention_value(text: &str) -> Option<std::time::Duration> {
    match text.trim() {
        "forever" => None,
        other => parse_duration(other),
    }
}

/// `30s`, `15m`, `2h`, `1d`, `500ms`.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" | "min" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(ms))
}

impl ReverseEtlConfig {
    /// The job's schedule under `tidewater run`, if it has one (validated).
    pub fn schedule(&self) -> Option<Schedule> {
        if let Some(every) = &self.every {
            return parse_duration(every).map(Schedule::Every);
        }
        self.cron
            .as_ref()
            .and_then(|c| parse_cron(c).ok())
            .map(|c| Schedule::Cron(Box::new(c)))
    }

    pub fn spec(&self) -> tidewater_reverse::JobSpec {
        tidewater_reverse::JobSpec {
            name: self.name.clone(),
            query: self.query.clone(),
            target_url: tidewater_endpoint::url::SecretUrl::new(self.target_url.expose()),
            target_table: self.target_table.clone(),
            key: self.key.clone(),
            mode: match self.mode {
                ReverseEtlMode::Upsert => tidewater_reverse::Mode::Upsert,
                ReverseEtlMode::Mirror => tidewater_reverse::Mode::Mirror,
            },
            batch_rows: self.batch_rows,
            max_rows_per_second: self.max_rows_per_second,
            statement_timeout_ms: self.statement_timeout_ms,
            max_retries: self.max_retries,
            memory_mb: self.memory_mb,
        }
    }
}

fn parse_cron(text: &str) -> Result<croner::Cron, String> {
    text.parse::<croner::Cron>().map_err(|e| e.to_string())
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` to listen on, e.g. `127.0.0.1:9187` (0.0.0.0 exposes it).
    pub listen: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Lake folder name, slot/publication name suffix and commit app id.
    pub name: String,
    /// Local scratch directory: spill files of large Postgres transactions
    /// streamed before their commit. Default: `<system temp dir>/tidewater/<name>`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

impl PipelineConfig {
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("tidewater").join(&self.name))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
#[schemars(transform = mariadb_is_mysql)]
pub enum SourceConfig {
    Postgres(PostgresSourceConfig),
    /// MySQL 8 or MariaDB 10.5+ (binlog); `type = "mariadb"` is the same.
    #[serde(alias = "mariadb")]
    Mysql(MysqlSourceConfig),
}

/// The schema of `[source]`: `type = "mariadb"` is read as `"mysql"`
/// (schemars leaves a variant's alias out of the tag's schema).
fn mariadb_is_mysql(schema: &mut schemars::Schema) {
    let variants = schema
        .get_mut("oneOf")
        .and_then(|v| v.as_array_mut())
        .into_iter()
        .flatten();
    for variant in variants {
        let tag = variant.pointer_mut("/properties/type");
        if let Some(tag) = tag.and_then(|t| t.as_object_mut()) {
            if tag.get("const").and_then(|c| c.as_str()) == Some("mysql") {
                tag.remove("const");
                tag.insert("enum".into(), serde_json::json!(["mysql", "mariadb"]));
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Copy every table consistently before streaming (the default).
    Initial,
    /// Stream only changes made after the slot is created.
    Never,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// `postgres://user:password@host:port/database` (the database is
    /// required); use `${ENV}` for the password, and percent-encode `@ / ? # %`
    /// in the user name and password (`p@ss` is written `p%40ss`).
    /// TLS as libpq spells it in the query string: `sslmode` = disable,
    /// prefer (default), require, verify-ca or verify-full, and
    /// `sslrootcert=/path/ca.pem` (needed by the verify modes).
    pub url: Secret,
    /// Include patterns over `schema.table` (`*`, `?`).
    #[serde(default = "default_tables")]
    pub tables: Vec<String>,
    /// Exclude patterns over `schema.table`.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "default_snapshot")]
    pub snapshot: SnapshotMode,
    /// Replication slot name; default `tidewater_<pipeline name>`.
    #[serde(default)]
    pub slot_name: Option<String>,
    /// Publication name; default `tidewater_<pipeline name>`.
    #[serde(default)]
    pub publication: Option<String>,
    /// After this long without changes from the server, tidewater writes a
    /// tiny logical message (`pg_logical_emit_message`) so the slot has a
    /// position to confirm and retains no WAL on an idle database; 0 turns
    /// it off. Default 30000.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// Ask the server for binary column values (PG14+) when every captured
    /// column has a type tidewater reads in binary; otherwise, or when such a
    /// column appears later, text. Default true (see BENCHMARKS.md).
    #[serde(default = "default_true")]
    pub binary: bool,
    /// How often, while streaming, the catalog is read for tables that
    /// match `tables` but are not replicated yet (created after the start,
    /// renamed into the patterns, or whose copy was interrupted): each is
    /// added to the publication, copied consistently and then streamed. 0
    /// turns it off. Default 5000.
    #[serde(default = "default_discovery_ms")]
    pub table_discovery_interval_ms: u64,
    /// After a schema change that gives the rows already in a table other
    /// values than its change log holds — a renamed column, a column added
    /// with a default — copy the table again (while the others stream), so
    /// its current state in the lake is the source's. Default true; false
    /// only warns (a large table costs a full copy).
    #[serde(default = "default_true")]
    pub recopy_on_schema_change: bool,
    /// Connections that read the initial snapshot's chunks in parallel,
    /// all in the slot's exported snapshot. Default 2 (this suits a server
    /// with few cores; each worker is one backend running a COPY).
    #[serde(default = "default_snapshot_workers")]
    pub snapshot_workers: usize,
    /// Heap bytes per snapshot chunk: a larger table is read as ctid
    /// ranges of this size, and an interrupted snapshot resumes after its
    /// last committed chunk. Default 64 MiB.
    #[serde(default = "default_snapshot_chunk_bytes")]
    pub snapshot_chunk_bytes: u64,
    /// A table (`schema.table`, matched by `tables`) whose inserts ask the
    /// running pipeline to copy tables again beside the stream: its column
    /// `tables` (text) names them, `schema.table` separated by commas, e.g.
    /// `CREATE TABLE tidewater_signal (id bigserial PRIMARY KEY, tables text
    /// NOT NULL)`. For operators without shell access; `tidewater snapshot
    /// --table` does the same from the command line. Default: none.
    #[serde(default)]
    pub signal_table: Option<String>,
    /// Memory for the changes of tables being copied while streaming: a
    /// table's own changes during its copy are held until its last copied
    /// row (the other tables stream on meanwhile); past this many bytes
    /// (estimated) the stream waits for the copy to end instead. Default
    /// 64 MiB.
    #[serde(default = "default_copy_hold_bytes")]
    pub copy_hold_bytes: u64,
}

fn default_snapshot_workers() -> usize {
    2
}

fn default_snapshot_chunk_rows() -> u64 {
    1_000_000
}

fn default_snapshot_chunk_bytes() -> u64 {
    64 << 20
}

/// Enough for the changes a busy table gets during a long copy (about a
/// million small rows' changes), small beside a batch budget.
fn default_copy_hold_bytes() -> u64 {
    64 << 20
}

fn default_true() -> bool {
    true
}

/// Cheap (one catalog query), and a new table's first rows wait at most
/// this long to be copied.
fn default_discovery_ms() -> u64 {
    5_000
}

fn default_heartbeat_ms() -> u64 {
    30_000
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MysqlSourceConfig {
    /// `mysql://user:password@host:port/database` (or `mariadb://…`); use
    /// `${ENV}` for the password, and percent-encode `@ / ? # %` in the user
    /// name and password (`p@ss` is written `p%40ss`).
    /// TLS as the mysql client spells it in the query string: `ssl-mode` =
    /// DISABLED, PREFERRED (default), REQUIRED, VERIFY_CA or VERIFY_IDENTITY,
    /// and `ssl-ca=/path/ca.pem` (needed by the verify modes).
    pub url: Secret,
    /// Include patterns over `database.table` (`*`, `?`); default: every table
    /// of the url's database.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Exclude patterns over `database.table`.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "default_snapshot")]
    pub snapshot: SnapshotMode,
    /// The replica server id tidewater registers with; must be unique among
    /// the servers and replicas of the source. Default: derived from the
    /// pipeline name (in 2^30..2^31).
    #[serde(default)]
    pub server_id: Option<u32>,
    /// Zero dates (`0000-00-00`, zero month or day): `null` lands them as NULL
    /// and counts them (default), `fail` stops with an error.
    #[serde(default)]
    pub zero_dates: ZeroDatesPolicy,
    /// After DDL that gives the rows already in a table other values than
    /// its change log holds — a renamed column, a column added with a
    /// default — and for a table renamed into `tables`: copy the table
    /// (while the others stream), so its current state in the lake is the
    /// source's. Default true; false only warns.
    #[serde(default = "default_true")]
    pub recopy_on_schema_change: bool,
    /// Connections reading key ranges of large tables in parallel during
    /// the initial snapshot, each in a consistent snapshot of its own
    /// (reconciled by the binlog from the main snapshot's position; see the
    /// README). 1 reads every table on the snapshot's own connection.
    /// Default 2.
    #[serde(default = "default_snapshot_workers")]
    pub snapshot_workers: usize,
    /// Rows per key range (InnoDB's estimate); a table needs two ranges'
    /// worth to be read in parallel. Default 1000000.
    #[serde(default = "default_snapshot_chunk_rows")]
    pub snapshot_chunk_rows: u64,
    /// A table (`schema.table`, matched by `tables`) whose inserts ask the
    /// running pipeline to copy tables again beside the stream: its column
    /// `tables` (text) names them, `schema.table` separated by commas. For
    /// operators without shell access; `tidewater snapshot --table` does
    /// the same from the command line. Default: none.
    #[serde(default)]
    pub signal_table: Option<String>,
    /// Memory for the changes of a table being copied while streaming: its
    /// own changes during its copy are held until its last copied row (the
    /// other tables stream on meanwhile); past this many bytes (estimated)
    /// the binlog connection closes at the next transaction boundary and
    /// opens again there once the copy ends. Default 64 MiB.
    #[serde(default = "default_copy_hold_bytes")]
    pub copy_hold_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ZeroDatesPolicy {
    #[default]
    Null,
    Fail,
}

impl MysqlSourceConfig {
    /// The include patterns: as configured, else the url's database.
    pub fn include(&self) -> Vec<String> {
        if !self.tables.is_empty() {
            return self.tables.clone();
        }
        url_database(self.url.expose())
            .map(|db| vec![format!("{db}.*")])
            .unwrap_or_default()
    }
}

/// The database path segment of a `mysql://…/db?…` url.
fn url_database(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let path = rest.split_once('/')?.1;
    let db = path.split(['?', '#']).next()?;
    (!db.is_empty()).then(|| db.to_string())
}

fn default_tables() -> Vec<String> {
    vec!["public.*".into()]
}

fn default_snapshot() -> SnapshotMode {
    SnapshotMode::Initial
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    Lake(LakeSinkConfig),
    Warehouse(WarehouseSinkConfig),
    Kafka(KafkaSinkConfig),
}

/// `[sink] type = "kafka"`: Debezium change events in Kafka topics.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `bootstrap.servers`: `host:port[,host:port…]`.
    pub brokers: String,
    /// Topics are `<topic_prefix>.<schema>.<table>` (MySQL:
    /// `<topic_prefix>.<database>.<table>`), as Debezium's `topic.prefix`
    /// names them; also `source.name` of every event. Default: the
    /// pipeline's name.
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// `debezium-json` (default: Kafka Connect's JsonConverter with
    /// `schemas.enable=false`) or `debezium-json-schema` (each key and value
    /// carries its Connect schema, as the JDBC sink connector needs). Avro
    /// needs a schema registry and is not offered.
    #[serde(default)]
    pub format: KafkaFormat,
    /// `exactly-once` (default): each commit is a Kafka transaction holding
    /// the messages and the tables' marks; `read_committed` consumers see
    /// each change once. `at-least-once`: for brokers without transactions;
    /// after a crash the changes since the last commit are sent again (each
    /// message carries `tidewater.seq`/`tidewater.ord` headers to drop them).
    #[serde(default)]
    pub delivery: KafkaDelivery,
    /// The compacted topic that keeps the pipeline's state (marks,
    /// positions, schema history). Default `tidewater.<pipeline>.state`.
    #[serde(default)]
    pub state_topic: Option<String>,
    /// Kafka's `transactional.id` (exactly-once). Default
    /// `tidewater-<pipeline>`; only one process may use it at a time.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// librdkafka client properties, spelled as librdkafka spells them:
    /// `security.protocol`, `sasl.mechanism`, `sasl.username`,
    /// `sasl.password`, `ssl.ca.location`, `ssl.certificate.location`,
    /// `ssl.key.location`, `ssl.key.password`,
    /// `ssl.endpoint.identification.algorithm`, `client.id`, and other
    /// `ssl.*`/`sasl.*` keys. Values may use `${ENV}`; they are never logged.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, Secret>,
    /// `transaction.timeout.ms` (exactly-once): a commit must finish within
    /// it, and the brokers' `transaction.max.timeout.ms` must allow it.
    /// Default 300000.
    #[serde(default = "default_kafka_transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// `linger.ms`: how long the producer waits to fill a batch. Default 20.
    #[serde(default = "default_kafka_linger_ms")]
    pub linger_ms: u64,
    /// `batch.size` of the producer in bytes. Default 1048576.
    #[serde(default = "default_kafka_batch_bytes")]
    pub batch_size_bytes: u64,
    /// Bytes the producer may hold unacknowledged (bounds its memory);
    /// writes wait when it is full. Default 67108864.
    #[serde(default = "default_kafka_max_queued_bytes")]
    pub max_queued_bytes: u64,
    /// `message.max.bytes`: a larger event stops its table with a message
    /// naming this key. Default 1000000 (Kafka's own default).
    #[serde(default = "default_kafka_max_message_bytes")]
    pub max_message_bytes: u64,
    /// `none` (default), `gzip`, `snappy` or `lz4`.
    #[serde(default = "default_kafka_compression")]
    pub compression: String,
    /// Partitions of the topics tidewater creates. Default 1 (one ordered
    /// stream per table); -1 leaves it to the brokers' default.
    #[serde(default = "default_kafka_partitions")]
    pub topic_partitions: i32,
    /// Replication factor of the topics tidewater creates; -1 (default)
    /// leaves it to the brokers' default.
    #[serde(default = "default_kafka_replication")]
    pub topic_replication_factor: i32,
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    #[serde(default = "default_max_batch_rows")]
    pub max_batch_rows: usize,
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaFormat {
    #[default]
    DebeziumJson,
    DebeziumJsonSchema,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaDelivery {
    #[default]
    ExactlyOnce,
    AtLeastOnce,
}

fn default_kafka_transaction_timeout_ms() -> u64 {
    300_000
}
fn default_kafka_linger_ms() -> u64 {
    20
}
fn default_kafka_batch_bytes() -> u64 {
    1024 * 1024
}
fn default_kafka_max_queued_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_kafka_max_message_bytes() -> u64 {
    1_000_000
}
fn default_kafka_compression() -> String {
    "none".into()
}
fn default_kafka_partitions() -> i32 {
    1
}
fn default_kafka_replication() -> i32 {
    -1
}

/// The librdkafka properties `sink.properties` may set: security and the
/// client's name. Everything that decides delivery (idempotence, acks,
/// transactions, partitioning) is tidewater's.
pub const KAFKA_PROPERTIES: &[&str] = &[
    "security.protocol",
    "client.id",
    "client.rack",
    "socket.timeout.ms",
    "socket.keepalive.enable",
    "broker.address.family",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "request.timeout.ms",
    "message.timeout.ms",
];

/// Default `sink.snapshot_commit_bytes` of a warehouse: a snapshot commits
/// once this much COPY data is staged (at chunk ends), so one transaction
/// never holds more than a few seconds of loading.
pub const DEFAULT_WAREHOUSE_SNAPSHOT_COMMIT_BYTES: u64 = 64 * 1024 * 1024;
/// Default `sink.max_batch_rows` of a warehouse: a streaming commit applies
/// at most this many changes per table, keeping the warehouse's
/// transactions (and the locks its MERGE takes) short.
pub const DEFAULT_WAREHOUSE_MAX_BATCH_ROWS: usize = 50_000;

/// `[sink] type = "warehouse"`: current-state tables in a Postgres-protocol
/// database.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WarehouseSinkConfig {
    /// `postgres://user:password@host:port/database` (the database is
    /// required, the password percent-encoded as in `source.url`); TLS
    /// settings (`sslmode`, `sslrootcert`) as for a Postgres source.
    pub url: Secret,
    /// Schema of each target table; `{schema}` is the source schema (or
    /// MySQL database), `{table}` the table, `{pipeline}` the pipeline name.
    /// Default `{schema}`.
    #[serde(default = "default_target_schema")]
    pub schema: String,
    /// Name of each target table, with the same placeholders. Default `{table}`.
    #[serde(default = "default_target_table")]
    pub table: String,
    /// Schema of tidewater's state tables (`table_state`, `pipeline_state`).
    /// Default `tidewater`.
    #[serde(default = "default_state_schema")]
    pub state_schema: String,
    /// Also keep `<table>__changes`, the change log with the lake's metadata
    /// columns. Default false.
    #[serde(default)]
    pub changelog: bool,
    /// Keep deleted rows, with `_tw_deleted = true` and the delete's commit
    /// time in `_tw_deleted_at` (a truncate flags every row). Default false.
    #[serde(default)]
    pub soft_deletes: bool,
    /// Change-log (`<table>__changes`) rows older than this (`90d`, `12h`,
    /// …) are deleted, except each key's latest row (and truncates).
    /// Default: kept forever. Needs `changelog = true`.
    #[serde(default)]
    pub changelog_retention: Option<String>,
    /// Per-table retention, by source `schema.table` pattern: the first
    /// pattern that matches wins over `changelog_retention`; `forever`
    /// keeps a table's rows.
    #[serde(default)]
    pub changelog_retention_tables: std::collections::BTreeMap<String, String>,
    /// How often each table's retention pass runs. Default 3600000.
    #[serde(default = "default_retention_interval_ms")]
    pub changelog_retention_interval_ms: u64,
    /// `auto` (default: MERGE on Postgres 15+, else INSERT … ON CONFLICT),
    /// `merge` or `on_conflict`.
    #[serde(default)]
    pub apply: WarehouseApply,
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    #[serde(default = "default_warehouse_max_batch_rows")]
    pub max_batch_rows: usize,
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// During a snapshot, commit once this much COPY data is staged.
    /// Default 67108864 (64 MiB).
    #[serde(default = "default_warehouse_snapshot_commit_bytes")]
    pub snapshot_commit_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WarehouseApply {
    #[default]
    Auto,
    Merge,
    OnConflict,
}

fn default_target_schema() -> String {
    "{schema}".into()
}
fn default_target_table() -> String {
    "{table}".into()
}
fn default_state_schema() -> String {
    "tidewater".into()
}
fn default_warehouse_max_batch_rows() -> usize {
    DEFAULT_WAREHOUSE_MAX_BATCH_ROWS
}
fn default_warehouse_snapshot_commit_bytes() -> u64 {
    DEFAULT_WAREHOUSE_SNAPSHOT_COMMIT_BYTES
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LakeSinkConfig {
    /// `file:///absolute/path`, a plain path (relative to the working
    /// directory), or `s3://bucket/prefix` (see `s3`).
    pub uri: String,
    /// S3 settings for an `s3://` uri. Credentials come from the standard
    /// AWS chain: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`(/`AWS_SESSION_TOKEN`),
    /// `AWS_PROFILE`, web identity (`AWS_WEB_IDENTITY_TOKEN_FILE`), instance
    /// metadata.
    #[serde(default)]
    pub s3: Option<S3Config>,
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    #[serde(default = "default_max_batch_rows")]
    pub max_batch_rows: usize,
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// How often each table's small files (one per flush) are looked at for
    /// compaction; 0 turns compaction off. Default 300000 (5 minutes).
    #[serde(default = "default_compaction_interval_ms")]
    pub compaction_interval_ms: u64,
    /// Files below this size are compacted into files of about this size.
    /// Default 134217728 (128 MiB).
    #[serde(default = "default_target_file_size_bytes")]
    pub target_file_size_bytes: u64,
    /// Compact a table once it has at least this many small files. Default 16.
    #[serde(default = "default_compaction_min_files")]
    pub compaction_min_files: usize,
    /// How often files no table version needs any more are deleted (on
    /// Iceberg tables: old snapshots expired, then the files only they
    /// reached and orphans deleted); 0 turns it off. Default 3600000 (an
    /// hour).
    #[serde(default = "default_vacuum_interval_ms")]
    pub vacuum_interval_ms: u64,
    /// Files replaced by a compaction (and never-committed files) are kept
    /// this long for readers of older versions (on Iceberg tables: snapshots
    /// are expired this long after a newer one replaced them). Default 168
    /// (7 days, Delta's default).
    #[serde(default = "default_vacuum_retention_hours")]
    pub vacuum_retention_hours: u64,
    /// Keep a current-state table (one row per key: the latest image,
    /// deletes removed) next to every change log, at
    /// `<uri>/<pipeline>.current/<schema>/<table>` (on Iceberg registered
    /// as `<pipeline>_current_<schema>.<table>`, copy-on-write). Default
    /// false.
    #[serde(default)]
    pub current_state: bool,
    /// How often current-state tables are merged from the change logs.
    /// Default 60000 (a minute).
    #[serde(default = "default_current_state_interval_ms")]
    pub current_state_interval_ms: u64,
    /// Merges mark the changed rows of a current-state file deleted in a
    /// Delta deletion vector instead of rewriting the file, so a merge costs
    /// what changed, not the table. The tables get the `deletionVectors`
    /// reader feature: DuckDB `delta_scan`, Polars and Python deltalake's
    /// `QueryBuilder` read them; Python deltalake's `to_pyarrow_table()` /
    /// `to_pandas()` refuse them (README). Needs `current_state = true`.
    /// Default false.
    #[serde(default)]
    pub current_state_deletion_vectors: bool,
    /// Current-state tables keep a deleted key's row (the delete's image)
    /// with `_tw_deleted = true` and the delete's commit time in
    /// `_tw_deleted_at`. Needs `current_state = true`. Default false.
    #[serde(default)]
    pub soft_deletes: bool,
    /// Change-log rows older than this (`90d`, `12h`, …) are dropped, except
    /// each key's latest row (and truncates), so the current state stays
    /// intact. Default: kept forever. Delta only.
    #[serde(default)]
    pub changelog_retention: Option<String>,
    /// Per-table retention, by `schema.table` pattern (`*`, `?`): the first
    /// pattern that matches wins over `changelog_retention`; `forever`
    /// keeps a table's rows.
    #[serde(default)]
    pub changelog_retention_tables: std::collections::BTreeMap<String, String>,
    /// How often each table's retention pass runs. Default 3600000.
    #[serde(default = "default_retention_interval_ms")]
    pub changelog_retention_interval_ms: u64,
    /// How change-log tables created from now on are partitioned: `none`
    /// (default) or `commit_date` (by `_tw_commit_date`, the UTC date of
    /// `_tw_commit_ts`, so readers prune by day). An existing table keeps
    /// its layout.
    #[serde(default)]
    pub partitioning: Partitioning,
    /// The table format: `delta` (default) or `iceberg` (Apache Iceberg v2
    /// tables registered in `sink.catalog`).
    #[serde(default)]
    pub format: LakeFormat,
    /// Where Iceberg tables are registered (`format = "iceberg"` only).
    #[serde(default)]
    pub catalog: Option<CatalogConfig>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LakeFormat {
    #[default]
    Delta,
    Iceberg,
}

/// `[sink.catalog]`: the Iceberg catalog the tables are registered in.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// `sql` (default): the catalog tables pyiceberg's `SqlCatalog` and
    /// Java's `JdbcCatalog` share, in SQLite or Postgres. `rest`: an Iceberg
    /// REST catalog (Polaris, Nessie, Lakekeeper, Unity, Gravitino, …).
    #[serde(default, rename = "type")]
    pub kind: CatalogKind,
    /// `sql`: `sqlite:///absolute/path.db` or
    /// `postgres://user:password@host:port/database` (TLS settings as for a
    /// Postgres source); default for a local lake
    /// `sqlite://<sink.uri>/tidewater_catalog.db` (an S3 lake needs one).
    /// `rest`: the catalog's base URL (`https://host/api/catalog`, the part
    /// before `/v1/`), required.
    #[serde(default)]
    pub uri: Option<Secret>,
    /// `sql`: the catalog's name (`catalog_name` in the catalog tables;
    /// readers open the catalog by it). Default `tidewater`.
    #[serde(default = "default_catalog_name")]
    pub name: String,
    /// `rest`: the warehouse to ask the catalog for (sent with `GET
    /// /v1/config`), when the server serves several.
    #[serde(default)]
    pub warehouse: Option<String>,
    /// `rest`: a bearer token sent with every request (use `${ENV}`).
    #[serde(default)]
    pub token: Option<Secret>,
    /// `rest`: OAuth2 client credentials `client_id:client_secret` (use
    /// `${ENV}`), exchanged for a token at the catalog's
    /// `/v1/oauth/tokens` (or `oauth2_server_uri`) and renewed before it
    /// expires. Not with `token`.
    #[serde(default)]
    pub credential: Option<Secret>,
    /// `rest`: the scope asked for with `credential`. Default `catalog`
    /// (Polaris wants `PRINCIPAL_ROLE:ALL`).
    #[serde(default)]
    pub scope: Option<String>,
    /// `rest`: the OAuth2 token endpoint, when it is not the catalog's own.
    #[serde(default)]
    pub oauth2_server_uri: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CatalogKind {
    #[default]
    Sql,
    Rest,
}

fn default_catalog_name() -> String {
    "tidewater".into()
}

/// The SQLite file of the default catalog, at the lake root.
pub const DEFAULT_CATALOG_FILE: &str = "tidewater_catalog.db";

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    #[default]
    None,
    CommitDate,
}

/// Fresh enough for dashboards; readers who need more read the log tail.
fn default_current_state_interval_ms() -> u64 {
    60_000
}

/// Often enough that a table flushed every second holds a few hundred small
/// files at most; rare enough that the rewrite is a small share of the work.
fn default_compaction_interval_ms() -> u64 {
    300_000
}
/// The file size Delta readers handle best (Spark and delta-rs aim at it).
fn default_target_file_size_bytes() -> u64 {
    128 * 1024 * 1024
}
fn default_compaction_min_files() -> usize {
    16
}
fn default_vacuum_interval_ms() -> u64 {
    3_600_000
}
/// Delta's own default retention: readers may run queries that long.
fn default_vacuum_retention_hours() -> u64 {
    168
}

impl LakeSinkConfig {
    /// The compaction and vacuum schedule this config asks for.
    /// (table pattern, retention; None for ever) rules in the order they
    /// apply.
    pub fn retention_rules(&self) -> Vec<(String, Option<std::time::Duration>)> {
        retention_rules(&self.changelog_retention, &self.changelog_retention_tables)
    }

    fn validate_retention(&self) -> Result<(), ConfigError> {
        let any = check_retention(
            &self.changelog_retention,
            &self.changelog_retention_tables,
            self.changelog_retention_interval_ms,
        )?;
        if any && self.format == LakeFormat::Iceberg {
            return Err(ConfigError::Invalid {
                key: "sink.changelog_retention".into(),
                message:
                    "is not built for Iceberg tables yet; remove it, or use format = \"delta\""
                        .into(),
            });
        }
        Ok(())
    }

    pub fn maintenance(&self) -> tidewater_lake::MaintenancePolicy {
        use std::time::Duration;
        tidewater_lake::MaintenancePolicy {
            compaction: (self.compaction_interval_ms > 0).then(|| {
                (
                    tidewater_lake::Compaction {
                        target_file_bytes: self.target_file_size_bytes,
                        min_files: self.compaction_min_files,
                    },
                    Duration::from_millis(self.compaction_interval_ms),
                )
            }),
            current_state: self
                .current_state
                .then(|| Duration::from_millis(self.current_state_interval_ms.max(1))),
            vacuum: (self.vacuum_interval_ms > 0).then(|| {
                (
                    Duration::from_secs(self.vacuum_retention_hours.saturating_mul(3600)),
                    Duration::from_millis(self.vacuum_interval_ms),
                )
            }),
        }
    }
}

fn default_retention_interval_ms() -> u64 {
    3_600_000
}

fn default_flush_interval_ms() -> u64 {
    DEFAULT_FLUSH_INTERVAL_MS
}
fn default_max_batch_rows() -> usize {
    DEFAULT_MAX_BATCH_ROWS
}
fn default_max_batch_bytes() -> usize {
    DEFAULT_MAX_BATCH_BYTES
}

/// A string that never prints: URLs with passwords, keys.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// A config problem: which key, what is wrong, how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML")]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config key {key}: environment variable {var} is not set\nhint: export {var}, or write the value into the file")]
    MissingEnv { key: String, var: String },
    #[error(
        "config key {key}: unterminated ${{...}}\nhint: write ${{NAME}}, or $$ for a literal $"
    )]
    BadInterpolation { key: String },
    #[error("config key {key}: {message}")]
    Invalid { key: String, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parses and validates config text; `env` resolves `${NAME}`.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|source| ConfigError::Toml {
            path: path.to_path_buf(),
            source,
        })?;
        interpolate(&mut value, "", env)?;
        // Tagged sections are read in two steps so that errors inside them
        // still name the full key (serde loses the path inside tagged enums).
        let mut raw: RawConfig = section("", value)?;
        let source_type = take_type("source", &mut raw.source, &["postgres", "mysql", "mariadb"])?;
        let sink_type = take_type("sink", &mut raw.sink, &["lake", "warehouse", "kafka"])?;
        let config = Config {
            pipeline: raw.pipeline,
            source: match source_type.as_str() {
                "mysql" | "mariadb" => SourceConfig::Mysql(section("source", raw.source.into())?),
                _ => SourceConfig::Postgres(section("source", raw.source.into())?),
            },
            sink: match sink_type.as_str() {
                "warehouse" => SinkConfig::Warehouse(section("sink", raw.sink.into())?),
                "kafka" => SinkConfig::Kafka(section("sink", raw.sink.into())?),
                _ => SinkConfig::Lake(section("sink", raw.sink.into())?),
            },
            metrics: raw.metrics,
            reverse_etl: raw.reverse_etl,
            masking: raw.masking,
            lineage: raw.lineage,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        // Names become Postgres identifiers (slot, publication) and folder
        // names: lowercase, so two pipelines can never share a slot.
        let identifier = |key: &str, name: &str, max: usize| {
            let ok = !name.is_empty()
                && name.len() <= max
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if ok {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!("{name:?} must be 1 to {max} characters of a-z, 0-9 and '_'"),
                ))
            }
        };
        identifier("pipeline.name", &self.pipeline.name, 53)?;
        match &self.source {
            SourceConfig::Postgres(pg) => {
                check_postgres_url("source.url", pg.url.expose())?;
                if let Some(slot) = &pg.slot_name {
                    identifier("source.slot_name", slot, 63)?;
                }
                if let Some(publication) = &pg.publication {
                    identifier("source.publication", publication, 63)?;
                }
                if pg.tables.is_empty() {
                    return Err(invalid(
                        "source.tables",
                        "is empty; list include patterns such as [\"public.*\"]".into(),
                    ));
                }
                if !(1..=64).contains(&pg.snapshot_workers) {
                    return Err(invalid(
                        "source.snapshot_workers",
                        format!("{} is outside 1..=64", pg.snapshot_workers),
                    ));
                }
                if pg.snapshot_chunk_bytes < 8192 {
                    return Err(invalid(
                        "source.snapshot_chunk_bytes",
                        "must be at least 8192 (one page; 64 MiB or so is sensible)".into(),
                    ));
                }
                check_signal_table(pg.signal_table.as_deref(), &pg.tables, &pg.exclude)?;
            }
            SourceConfig::Mysql(my) => {
                check_mysql_url("source.url", my.url.expose())?;
                if my.include().is_empty() {
                    return Err(invalid(
                        "source.tables",
                        "is empty and source.url names no database; list include patterns such as [\"shop.*\"]".into(),
                    ));
                }
                check_signal_table(my.signal_table.as_deref(), &my.include(), &my.exclude)?;
                if my.server_id == Some(0) {
                    return Err(invalid(
                        "source.server_id",
                        "0 is not a valid replica id; pick a number unique among the source's servers and replicas".into(),
                    ));
                }
            }
        }
        if let Some(metrics) = &self.metrics {
            if metrics.listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    "metrics.listen",
                    format!("{:?} is not host:port like 127.0.0.1:9187", metrics.listen),
                ));
            }
        }
        self.validate_reverse_etl()?;
        self.masking.validate()?;
        if let Some(lineage) = &self.lineage {
            lineage.validate()?;
        }
        match &self.sink {
            SinkConfig::Kafka(kafka) => kafka.validate()?,
            SinkConfig::Warehouse(warehouse) => {
                let retains = check_retention(
                    &warehouse.changelog_retention,
                    &warehouse.changelog_retention_tables,
                    warehouse.changelog_retention_interval_ms,
                )?;
                if retains && !warehouse.changelog {
                    return Err(invalid(
                        "sink.changelog_retention",
                        "applies to the change-log tables; set sink.changelog = true or remove it"
                            .into(),
                    ));
                }
                if !warehouse.url.expose().starts_with("postgres://")
                    && !warehouse.url.expose().starts_with("postgresql://")
                {
                    return Err(invalid(
                        "sink.url",
                        "must be a postgres:// URL of the warehouse database".into(),
                    ));
                }
                check_postgres_url("sink.url", warehouse.url.expose())?;
                for (key, template) in [
                    ("sink.schema", &warehouse.schema),
                    ("sink.table", &warehouse.table),
                ] {
                    let rest = template
                        .replace("{schema}", "")
                        .replace("{table}", "")
                        .replace("{pipeline}", "");
                    if template.trim().is_empty() || rest.contains('{') || rest.contains('}') {
                        return Err(invalid(
                            key,
                            format!(
                                "{template:?} is not a name; use text and the placeholders {{schema}}, {{table}}, {{pipeline}}"
                            ),
                        ));
                    }
                }
                if !warehouse.table.contains("{table}") {
                    return Err(invalid(
                        "sink.table",
                        "must contain {table}, or every source table would land in one table"
                            .into(),
                    ));
                }
                if warehouse.state_schema.trim().is_empty() {
                    return Err(invalid("sink.state_schema", "must not be empty".into()));
                }
                check_batching(
                    warehouse.flush_interval_ms,
                    warehouse.max_batch_rows,
                    warehouse.max_batch_bytes,
                )?;
                if warehouse.snapshot_commit_bytes < 1024 {
                    return Err(invalid(
                        "sink.snapshot_commit_bytes",
                        "must be at least 1024 (a few MiB or more is sensible)".into(),
                    ));
                }
            }
            SinkConfig::Lake(lake) => {
                if lake.uri.starts_with("s3://") {
                    match url::Url::parse(&lake.uri) {
                        Ok(url) if url.host_str().is_some_and(|h| !h.is_empty()) => {}
                        _ => {
                            return Err(invalid(
                                "sink.uri",
                                format!("{:?} is not s3://bucket[/prefix]", lake.uri),
                            ))
                        }
                    }
                } else if lake.uri.contains("://") && !lake.uri.starts_with("file://") {
                    return Err(invalid(
                        "sink.uri",
                        format!(
                            "{:?} has an unknown scheme; use file:///path, a plain path or s3://bucket/prefix",
                            lake.uri
                        ),
                    ));
                } else if lake.s3.is_some() {
                    return Err(invalid(
                        "sink.s3",
                        "applies only to an s3:// sink.uri; remove it or change the uri".into(),
                    ));
                }
                if let Some(endpoint) = lake.s3.as_ref().and_then(|s| s.endpoint.as_ref()) {
                    if url::Url::parse(endpoint).is_err() {
                        return Err(invalid(
                            "sink.s3.endpoint",
                            format!("{endpoint:?} is not a URL like http://127.0.0.1:9000"),
                        ));
                    }
                }
                check_batching(
                    lake.flush_interval_ms,
                    lake.max_batch_rows,
                    lake.max_batch_bytes,
                )?;
                if lake.soft_deletes && !lake.current_state {
                    return Err(invalid(
                        "sink.soft_deletes",
                        "applies only to current-state tables; set sink.current_state = true or remove it".into(),
                    ));
                }
                if lake.current_state_deletion_vectors && !lake.current_state {
                    return Err(invalid(
                        "sink.current_state_deletion_vectors",
                        "applies only to current-state tables; set sink.current_state = true or remove it".into(),
                    ));
                }
                lake.validate_format()?;
                lake.validate_retention()?;
                if lake.target_file_size_bytes < 1024 {
                    return Err(invalid(
                        "sink.target_file_size_bytes",
                        "must be at least 1024 (a few MiB or more is sensible)".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl KafkaSinkConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        let hosts: Vec<&str> = self.brokers.split(',').map(str::trim).collect();
        if hosts.iter().any(|h| {
            h.rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        }) {
            return Err(invalid(
                "sink.brokers",
                format!(
                    "{:?} is not host:port[,host:port…] like 127.0.0.1:9092",
                    self.brokers
                ),
            ));
        }
        let topic_name = |key: &str, name: &str| {
            if name.is_empty()
                || name.len() > 200
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                Err(invalid(
                    key,
                    format!("{name:?} is not a Kafka topic name: 1 to 200 characters of a-z, A-Z, 0-9, '.', '_', '-'"),
                ))
            } else {
                Ok(())
            }
        };
        if let Some(prefix) = &self.topic_prefix {
            topic_name("sink.topic_prefix", prefix)?;
        }
        if let Some(topic) = &self.state_topic {
            topic_name("sink.state_topic", topic)?;
        }
        if let Some(id) = &self.transactional_id {
            if id.trim().is_empty() {
                return Err(invalid("sink.transactional_id", "must not be empty".into()));
            }
            if self.delivery == KafkaDelivery::AtLeastOnce {
                return Err(invalid(
                    "sink.transactional_id",
                    "applies only to delivery = \"exactly-once\"; remove it".into(),
                ));
            }
        }
        for key in self.properties.keys() {
            let allowed = KAFKA_PROPERTIES.contains(&key.as_str())
                || key.starts_with("ssl.")
                || key.starts_with("sasl.");
            if !allowed {
                return Err(invalid(
                    &format!("sink.properties.{key}"),
                    format!(
                        "is not a property tidewater passes to librdkafka; allowed are ssl.*, sasl.* and {} (delivery settings have keys of their own under [sink])",
                        KAFKA_PROPERTIES.join(", ")
                    ),
                ));
            }
        }
        if !(1000..=3_600_000).contains(&self.transaction_timeout_ms) {
            return Err(invalid(
                "sink.transaction_timeout_ms",
                format!("{} is outside 1000..=3600000", self.transaction_timeout_ms),
            ));
        }
        if self.linger_ms > 900_000 {
            return Err(invalid("sink.linger_ms", "must be at most 900000".into()));
        }
        if !(1..=2_147_483_647).contains(&self.batch_size_bytes) {
            return Err(invalid(
                "sink.batch_size_bytes",
                "must be 1 to 2147483647".into(),
            ));
        }
        if !(1024 * 1024..=2_147_483_647 * 1024).contains(&self.max_queued_bytes) {
            return Err(invalid(
                "sink.max_queued_bytes",
                "must be at least 1048576 (1 MiB)".into(),
            ));
        }
        if !(1000..=1_000_000_000).contains(&self.max_message_bytes) {
            return Err(invalid(
                "sink.max_message_bytes",
                "must be 1000 to 1000000000".into(),
            ));
        }
        if !["none", "gzip", "snappy", "lz4"].contains(&self.compression.as_str()) {
            return Err(invalid(
                "sink.compression",
                format!(
                    "{:?} is not one of none, gzip, snappy, lz4",
                    self.compression
                ),
            ));
        }
        if self.topic_partitions == 0 || self.topic_partitions < -1 {
            return Err(invalid(
                "sink.topic_partitions",
                "must be at least 1, or -1 for the brokers' default".into(),
            ));
        }
        if self.topic_replication_factor == 0 || self.topic_replication_factor < -1 {
            return Err(invalid(
                "sink.topic_replication_factor",
                "must be at least 1, or -1 for the brokers' default".into(),
            ));
        }
        check_batching(
            self.flush_interval_ms,
            self.max_batch_rows,
            self.max_batch_bytes,
        )
    }
}

/// `sink.flush_interval_ms`, `sink.max_batch_rows` and
/// `sink.max_batch_bytes`, which every sink has.
fn check_batching(flush_ms: u64, rows: usize, bytes: usize) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: key.into(),
        message,
    };
    if flush_ms == 0 {
        return Err(invalid(
            "sink.flush_interval_ms",
            "must be at least 1".into(),
        ));
    }
    if rows == 0 {
        return Err(invalid("sink.max_batch_rows", "must be at least 1".into()));
    }
    if !(MIN_BATCH_BYTES..=MAX_BATCH_BYTES).contains(&bytes) {
        return Err(invalid(
            "sink.max_batch_bytes",
            format!(
                "{bytes} is outside {MIN_BATCH_BYTES}..={MAX_BATCH_BYTES} (1 MiB to 1 GiB: smaller makes a commit per few rows, larger can overflow an Arrow column)"
            ),
        ));
    }
    Ok(())
}

impl Config {
    fn validate_reverse_etl(&self) -> Result<(), ConfigError> {
        let other = match self.sink {
            SinkConfig::Warehouse(_) => Some("a warehouse"),
            SinkConfig::Kafka(_) => Some("Kafka"),
            SinkConfig::Lake(_) => None,
        };
        if let (Some(other), false) = (other, self.reverse_etl.is_empty()) {
            return Err(ConfigError::Invalid {
                key: "reverse_etl".into(),
                message: format!(
                    "reverse ETL queries the lake, and this pipeline's sink is {other}\n\
                     hint: run the job from a pipeline with a lake sink, or remove [[reverse_etl]]"
                ),
            });
        }
        let mut names = std::collections::HashSet::new();
        for (i, job) in self.reverse_etl.iter().enumerate() {
            let invalid = |key: &str, message: String| ConfigError::Invalid {
                key: format!("reverse_etl[{i}].{key}"),
                message,
            };
            let ok = !job.name.is_empty()
                && job.name.len() <= 64
                && job
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !ok {
                return Err(invalid(
                    "name",
                    format!(
                        "{:?} must be 1 to 64 characters of a-z, 0-9, '_' and '-'",
                        job.name
                    ),
                ));
            }
            if !names.insert(job.name.as_str()) {
                return Err(invalid(
                    "name",
                    format!("{:?} names two jobs; give each its own", job.name),
                ));
            }
            if job.query.trim().is_empty() {
                return Err(invalid(
                    "query",
                    "is empty; write a SELECT over the lake tables".into(),
                ));
            }
            let url = job.target_url.expose();
            let url_key = format!("reverse_etl[{i}].target_url");
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                check_postgres_url(&url_key, url)?;
            } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
                check_mysql_url(&url_key, url)?;
                if url_database(url).is_none() && !job.target_table.contains('.') {
                    return Err(invalid(
                        "target_table",
                        format!(
                            "{:?} names no database, and target_url names none either; \
                             write it as database.table, or put the database in target_url",
                            job.target_table
                        ),
                    ));
                }
            } else {
                return Err(invalid(
                    "target_url",
                    "must be postgres://user:password@host:port/database or mysql://user:password@host:port/database".into(),
                ));
            }
            if job.target_table.trim().is_empty() || job.target_table.matches('.').count() > 1 {
                return Err(invalid(
                    "target_table",
                    format!(
                        "{:?} is not schema.table (database.table on MySQL)",
                        job.target_table
                    ),
                ));
            }
            if job.key.is_empty() || job.key.iter().any(|k| k.trim().is_empty()) {
                return Err(invalid(
                    "key",
                    "list the result columns that identify a row, e.g. [\"customer_id\"]".into(),
                ));
            }
            if !(1..=100_000).contains(&job.batch_rows) {
                return Err(invalid(
                    "batch_rows",
                    format!("{} is outside 1..=100000", job.batch_rows),
                ));
            }
            if job
                .max_rows_per_second
                .is_some_and(|r| !(r > 0.0 && r.is_finite()))
            {
                return Err(invalid(
                    "max_rows_per_second",
                    "must be a positive number (leave it out for no limit)".into(),
                ));
            }
            if job.statement_timeout_ms < 100 {
                return Err(invalid(
                    "statement_timeout_ms",
                    "must be at least 100 (30000 is sensible)".into(),
                ));
            }
            if job.max_retries == 0 {
                return Err(invalid("max_retries", "must be at least 1".into()));
            }
            if !(4..=1 << 20).contains(&job.memory_mb) {
                return Err(invalid(
                    "memory_mb",
                    format!(
                        "{} is outside 4..=1048576 (128 is the default)",
                        job.memory_mb
                    ),
                ));
            }
            match (&job.every, &job.cron) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "cron",
                        "set either every or cron, not both".into(),
                    ))
                }
                (Some(every), None) => match parse_duration(every) {
                    Some(d) if d >= std::time::Duration::from_secs(1) => {}
                    _ => {
                        return Err(invalid(
                            "every",
                            format!("{every:?} is not a duration of at least 1s like \"30s\", \"15m\", \"1h\" or \"1d\""),
                        ))
                    }
                },
                (None, Some(cron)) => {
                    if let Err(err) = parse_cron(cron) {
                        return Err(invalid(
                            "cron",
                            format!("{cron:?} is not a cron expression ({err}); e.g. \"*/15 * * * *\""),
                        ));
                    }
                }
                (None, None) => {}
            }
        }
        Ok(())
    }
}

/// How a connection url is written, for the config errors about it; never
/// with the url itself (it may hold a password).
const POSTGRES_URL_FORM: &str = "postgres://user:password@host:5432/database";
const MYSQL_URL_FORM: &str = "mysql://user:password@host:3306/database";

/// `source.signal_table`: `schema.table`, among the replicated tables (its
/// inserts must reach the stream).
fn check_signal_table(
    signal: Option<&str>,
    include: &[String],
    exclude: &[String],
) -> Result<(), ConfigError> {
    let Some(signal) = signal else {
        return Ok(());
    };
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: key.into(),
        message,
    };
    let filter = tidewater_core::TableFilter {
        include: include.to_vec(),
        exclude: exclude.to_vec(),
    };
    match signal.split_once('.') {
        Some((schema, table)) if !schema.is_empty() && !table.is_empty() => {
            if filter.matches(&tidewater_core::TableId::new(schema, table)) {
                Ok(())
            } else {
                Err(invalid(
                    "source.signal_table",
                    format!("{signal} is not among source.tables: its inserts must reach the stream; add it to source.tables"),
                ))
            }
        }
        _ => Err(invalid(
            "source.signal_table",
            format!("{signal:?} is not schema.table"),
        )),
    }
}

/// Reads a Postgres url (`key` names it) as a connection will, so that a
/// url no connection could use stops the start with exit 2, and requires
/// the database (Postgres would otherwise pick the one named after the
/// user, silently). No message holds any part of the url.
fn check_postgres_url(key: &str, url: &str) -> Result<(), ConfigError> {
    use tidewater_endpoint::postgres::TlsConfigError;
    let invalid = |message: String| ConfigError::Invalid {
        key: key.to_string(),
        message,
    };
    let config = match tidewater_endpoint::postgres::parse_url(url) {
        Ok((config, _)) => config,
        Err(TlsConfigError::Userinfo(err)) => return Err(invalid(err.to_string())),
        // tokio-postgres names the option or the problem, never a value
        // (its cause says which option).
        Err(TlsConfigError::Url(err)) => {
            let cause = std::error::Error::source(&err)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            return Err(invalid(format!(
                "is not a Postgres url that can be read ({err}{cause}); expected {POSTGRES_URL_FORM}"
            )));
        }
        Err(err) => return Err(invalid(err.to_string())),
    };
    if config.get_user().is_none() {
        return Err(invalid(format!(
            "names no user; write it as {POSTGRES_URL_FORM}"
        )));
    }
    if config.get_dbname().is_none() {
        return Err(invalid(format!(
            "names no database (Postgres would use the one named after the user); \
             write it as {POSTGRES_URL_FORM}"
        )));
    }
    Ok(())
}

/// Reads a MySQL/MariaDB url (`mysql://` or `mariadb://`) as a connection
/// will; no message holds any part of the url.
fn check_mysql_url(key: &str, url: &str) -> Result<(), ConfigError> {
    use tidewater_endpoint::mysql::TlsConfigError;
    let invalid = |message: String| ConfigError::Invalid {
        key: key.to_string(),
        message,
    };
    if !url.starts_with("mysql://") && !url.starts_with("mariadb://") {
        return Err(invalid(format!(
            "is not a MySQL url; expected {MYSQL_URL_FORM} (or mariadb://…)"
        )));
    }
    match tidewater_endpoint::mysql::check_url(url) {
        Ok(()) => Ok(()),
        Err(TlsConfigError::Userinfo(err)) => Err(invalid(err.to_string())),
        // The url crate's and mysql_async's messages name the part or the
        // query parameter; the userinfo was checked above.
        Err(TlsConfigError::Url(err)) => Err(invalid(format!(
            "is not a MySQL url that can be read ({err}); expected {MYSQL_URL_FORM}"
        ))),
        Err(err) => Err(invalid(err.to_string())),
    }
}

/// The top level as read, before the tagged sections are resolved.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    pipeline: PipelineConfig,
    source: toml::Table,
    sink: toml::Table,
    #[serde(default)]
    metrics: Option<MetricsConfig>,
    #[serde(default)]
    reverse_etl: Vec<ReverseEtlConfig>,
    #[serde(default)]
    masking: MaskingConfig,
    #[serde(default)]
    lineage: Option<LineageConfig>,
}

/// Deserializes a section, naming the full key of any error.
fn section<T: serde::de::DeserializeOwned>(
    prefix: &str,
    value: toml::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let inner = err.path().to_string();
        let key = match (prefix.is_empty(), inner.as_str()) {
            (true, ".") => "(top level)".to_string(),
            (true, _) => inner,
            (false, ".") => prefix.to_string(),
            (false, _) => format!("{prefix}.{inner}"),
        };
        let message = plain_type_message(&key, &err.into_inner().to_string());
        ConfigError::Invalid { key, message }
    })
}

/// serde's type errors say what Rust wanted ("invalid type: string \"x\",
/// expected u64"); the config's readers want "a whole number". Rewrites the
/// Rust type names, keeping the rest of the message.
fn plain_type_message(key: &str, message: &str) -> String {
    let list = if key == "reverse_etl" {
        "a list of [[reverse_etl]] tables"
    } else {
        "a list of strings, like [\"a\", \"b\"]"
    };
    let expected = [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected LIST"),
        ("expected a boolean", "expected true or false"),
        ("expected a map", "expected a table"),
    ];
    // toml repeats the key on a line of its own ("\nin `tables`"); the
    // error names the whole key already.
    let mut out = match message.trim_end().rsplit_once("\nin `") {
        Some((head, tail)) if tail.ends_with('`') && !tail.contains('\n') => head.to_string(),
        _ => message.trim_end().to_string(),
    };
    // `expected struct S3Config`: the Rust name means nothing in TOML.
    if let Some(at) = out.find("expected struct ") {
        let end = out[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == ' ' || c == '_'))
            .map_or(out.len(), |n| at + n);
        out.replace_range(at..end, "expected a table");
    }
    for (rust, plain) in expected {
        if let Some(at) = out.find(rust) {
            // Only a whole word: `expected u64` but not `expected u6400`.
            let end = at + rust.len();
            if rust.ends_with(' ') || !out[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                out.replace_range(at..end, &plain.replace("LIST", list));
                break;
            }
        }
    }
    // What was found, as TOML spells it.
    for (rust, plain) in [
        ("invalid type: sequence", "invalid type: a list"),
        ("invalid type: map", "invalid type: a table"),
        ("invalid type: integer `", "invalid type: the number `"),
        (
            "invalid type: floating point `",
            "invalid type: the number `",
        ),
        ("invalid type: boolean `", "invalid type: `"),
        ("invalid type: string ", "invalid type: the string "),
        ("invalid value: integer `", "invalid value: `"),
    ] {
        if out.starts_with(rust) {
            out.replace_range(..rust.len(), plain);
            break;
        }
    }
    out
}

/// Removes and checks the `type` key of a tagged section.
fn take_type(prefix: &str, table: &mut toml::Table, known: &[&str]) -> Result<String, ConfigError> {
    let key = format!("{prefix}.type");
    match table.remove("type") {
        Some(toml::Value::String(kind)) if known.contains(&kind.as_str()) => Ok(kind),
        Some(toml::Value::String(kind)) => Err(ConfigError::Invalid {
            key,
            message: format!("unknown type {kind:?}; expected one of {known:?}"),
        }),
        Some(_) => Err(ConfigError::Invalid {
            key,
            message: format!("must be a string, one of {known:?}"),
        }),
        None => Err(ConfigError::Invalid {
            key,
            message: format!("is missing; set it to one of {known:?}"),
        }),
    }
}

/// `[sink.s3]`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// An S3-compatible server (`http://127.0.0.1:9000` for MinIO); default AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The bucket's region; default from the AWS chain, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), which most
    /// S3-compatible servers want; default false (virtual-hosted, as AWS).
    #[serde(default)]
    pub path_style: bool,
}

impl LakeSinkConfig {
    /// The Iceberg catalog this config names: None for a Delta lake.
    pub fn iceberg_catalog(&self) -> Option<tidewater_lake::Catalog> {
        if self.format != LakeFormat::Iceberg {
            return None;
        }
        let catalog = self.catalog.as_ref();
        let name = catalog.map_or_else(default_catalog_name, |c| c.name.clone());
        Some(match catalog.map_or(CatalogKind::Sql, |c| c.kind) {
            CatalogKind::Sql => {
                let backend = match catalog.and_then(|c| c.uri.as_ref()) {
                    Some(uri) => sql_backend(uri.expose()).expect("validated"),
                    None => tidewater_lake::SqlBackend::Sqlite(
                        std::path::absolute(self.root().join(DEFAULT_CATALOG_FILE))
                            .unwrap_or_else(|_| self.root().join(DEFAULT_CATALOG_FILE)),
                    ),
                };
                tidewater_lake::Catalog::Sql(tidewater_lake::SqlCatalog::new(backend, &name))
            }
            CatalogKind::Rest => {
                let mut rest = tidewater_lake::RestCatalog::new(
                    catalog
                        .and_then(|c| c.uri.as_ref())
                        .map(|u| u.expose())
                        .expect("validated"),
                    catalog.and_then(|c| c.warehouse.clone()),
                    catalog
                        .and_then(|c| c.token.as_ref())
                        .map(|t| t.expose().to_string()),
                );
                if let Some(c) = catalog {
                    if let Some((id, secret)) = c
                        .credential
                        .as_ref()
                        .and_then(|c| c.expose().split_once(':'))
                    {
                        rest = rest.with_oauth(tidewater_lake::iceberg::rest::OAuth {
                            client_id: id.to_string(),
                            client_secret: secret.to_string(),
                            scope: c.scope.clone().unwrap_or_else(|| "catalog".into()),
                            server: c.oauth2_server_uri.clone(),
                        });
                    }
                }
                tidewater_lake::Catalog::Rest(rest)
            }
        })
    }

    fn validate_format(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        if self.format == LakeFormat::Delta {
            if self.catalog.is_some() {
                return Err(invalid(
                    "sink.catalog",
                    "applies only to sink.format = \"iceberg\"; remove it or set the format".into(),
                ));
            }
            return Ok(());
        }
        if self.current_state_deletion_vectors {
            return Err(invalid(
                "sink.current_state_deletion_vectors",
                "is a Delta Lake feature; Iceberg current-state tables are copy-on-write \
                 (README); remove it, or use format = \"delta\""
                    .into(),
            ));
        }
        let kind = self.catalog.as_ref().map_or(CatalogKind::Sql, |c| c.kind);
        if kind == CatalogKind::Rest {
            let Some(uri) = self.catalog.as_ref().and_then(|c| c.uri.as_ref()) else {
                return Err(invalid(
                    "sink.catalog.uri",
                    "is required for a REST catalog: its base URL, e.g. https://catalog.example.com/api/catalog".into(),
                ));
            };
            match url::Url::parse(uri.expose()) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
                }
                _ => {
                    return Err(invalid(
                        "sink.catalog.uri",
                        "a REST catalog's uri must be an http:// or https:// URL".into(),
                    ))
                }
            }
            let catalog = self.catalog.as_ref().expect("a rest catalog is configured");
            if let Some(credential) = &catalog.credential {
                if catalog.token.is_some() {
                    return Err(invalid(
                        "sink.catalog.credential",
                        "set either sink.catalog.token or sink.catalog.credential, not both".into(),
                    ));
                }
                if !credential
                    .expose()
                    .split_once(':')
                    .is_some_and(|(id, secret)| !id.is_empty() && !secret.is_empty())
                {
                    return Err(invalid(
                        "sink.catalog.credential",
                        "must be client_id:client_secret (use ${ENV} for the secret)".into(),
                    ));
                }
            } else if catalog.scope.is_some() || catalog.oauth2_server_uri.is_some() {
                return Err(invalid(
                    if catalog.scope.is_some() {
                        "sink.catalog.scope"
                    } else {
                        "sink.catalog.oauth2_server_uri"
                    },
                    "applies only with sink.catalog.credential".into(),
                ));
            }
            if let Some(server) = &catalog.oauth2_server_uri {
                if !url::Url::parse(server).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                    return Err(invalid(
                        "sink.catalog.oauth2_server_uri",
                        "must be an http:// or https:// URL".into(),
                    ));
                }
            }
            return Ok(());
        }
        if let Some(catalog) = &self.catalog {
            let rest_only = [
                ("sink.catalog.token", catalog.token.is_some()),
                ("sink.catalog.warehouse", catalog.warehouse.is_some()),
                ("sink.catalog.credential", catalog.credential.is_some()),
                ("sink.catalog.scope", catalog.scope.is_some()),
                (
                    "sink.catalog.oauth2_server_uri",
                    catalog.oauth2_server_uri.is_some(),
                ),
            ];
            if let Some((key, _)) = rest_only.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    key,
                    "applies only to sink.catalog.type = \"rest\"".into(),
                ));
            }
        }
        match self.catalog.as_ref().and_then(|c| c.uri.as_ref()) {
            Some(uri) => {
                if let Err(problem) = sql_backend(uri.expose()) {
                    return Err(invalid("sink.catalog.uri", problem));
                }
            }
            None if self.uri.starts_with("s3://") => {
                return Err(invalid(
                    "sink.catalog.uri",
                    "is required for an s3:// lake (the default SQLite catalog file lives in a \
                     local lake); name a Postgres catalog: postgres://user:password@host/database"
                        .into(),
                ));
            }
            None => {}
        }
        if let Some(catalog) = &self.catalog {
            if catalog.name.is_empty() || catalog.name.len() > 255 {
                return Err(invalid(
                    "sink.catalog.name",
                    "must be 1 to 255 characters".into(),
                ));
            }
        }
        Ok(())
    }

    /// The lake root as a local directory (a `file://` or plain uri).
    pub fn root(&self) -> PathBuf {
        PathBuf::from(self.uri.strip_prefix("file://").unwrap_or(&self.uri))
    }

    /// Where the lake is: a local directory or an S3 prefix with the
    /// storage options delta-rs and object_store read.
    pub fn location(&self) -> tidewater_lake::LakeLocation {
        if !self.uri.starts_with("s3://") {
            return tidewater_lake::LakeLocation::Local(self.root());
        }
        let url = url::Url::parse(&self.uri).expect("validated as an s3:// url");
        let s3 = self.s3.as_ref();
        let mut options = std::collections::HashMap::new();
        if let Some(endpoint) = s3.and_then(|s| s.endpoint.as_ref()) {
            options.insert("AWS_ENDPOINT_URL".to_string(), endpoint.clone());
            if endpoint.starts_with("http://") {
                options.insert("AWS_ALLOW_HTTP".to_string(), "true".to_string());
            }
        }
        if let Some(region) = s3.and_then(|s| s.region.as_ref()) {
            options.insert("AWS_REGION".to_string(), region.clone());
        }
        // object_store retries a failed request 10 times within 3 minutes by
        // default; an outage of the store longer than that is the pipeline's
        // own retry (from its marks) to ride out, but most blips end sooner.
        options.insert("max_retries".to_string(), "20".to_string());
        options.insert("retry_timeout".to_string(), "300s".to_string());
        let path_style = s3.is_some_and(|s| s.path_style);
        options.insert(
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST".to_string(),
            (!path_style).to_string(),
        );
        tidewater_lake::LakeLocation::S3 { url, options }
    }
}

/// The SQL catalog database `uri` names; the problem (never the uri's
/// text, which may hold a password) when it names none.
fn sql_backend(uri: &str) -> Result<tidewater_lake::SqlBackend, String> {
    if let Some(path) = uri.strip_prefix("sqlite://") {
        // SQLAlchemy spells an absolute path with four slashes.
        let path = path
            .strip_prefix("//")
            .map(|p| format!("/{p}"))
            .unwrap_or_else(|| path.to_string());
        if !path.starts_with('/') {
            return Err(
                "a sqlite:// catalog uri needs an absolute path: sqlite:///var/lib/lake/catalog.db"
                    .into(),
            );
        }
        return Ok(tidewater_lake::SqlBackend::Sqlite(PathBuf::from(path)));
    }
    if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
        return match tidewater_endpoint::postgres::parse_url(uri) {
            Ok(_) => Ok(tidewater_lake::SqlBackend::Postgres(
                tidewater_endpoint::url::SecretUrl::new(uri),
            )),
            Err(err) => Err(format!("is not a Postgres URL tidewater can use: {err}")),
        };
    }
    Err("must start with sqlite:// (a SQLite file) or postgres:// (a Postgres database)".into())
}

/// Replaces `${NAME}` in every string value; `$$` is a literal `$`.
fn interpolate(
    value: &mut toml::Value,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) if s.contains('$') => {
            *s = interpolate_str(s, key, env)?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &format!("{key}[{i}]"), env)?;
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let child = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                interpolate(v, &child, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn interpolate_str(
    s: &str,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| ConfigError::BadInterpolation {
                    key: key.to_string(),
                })?;
            let var = &body[..end];
            let value = env(var).ok_or_else(|| ConfigError::MissingEnv {
                key: key.to_string(),
                var: var.to_string(),
            })?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The JSON Schema of the config file, as committed in `schemas/`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    serde_json::to_string_pretty(&schema).expect("schema serializes") + "\n"
}

/// Source tables that are also reverse-ETL targets, as exclude patterns:
/// capturing them would carry each push back into the lake (an echo loop).
/// Matched on the server (host, with loopback names equal, and port) and
/// the database; a target reached under another name is not recognised
/// (exclude it in `source.exclude` yourself).
pub fn echo_exclusions(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for job in &config.reverse_etl {
        let target = job.target_url.expose();
        match &config.source {
            SourceConfig::Postgres(pg) => {
                let (Ok(source), Ok(dest)) = (
                    pg.url.expose().parse::<tokio_postgres::Config>(),
                    target.parse::<tokio_postgres::Config>(),
                ) else {
                    continue;
                };
                let host = |c: &tokio_postgres::Config| match c.get_hosts().first() {
                    Some(tokio_postgres::config::Host::Tcp(h)) => loopback(h),
                    Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
                    None => "localhost".into(),
                };
                let port =
                    |c: &tokio_postgres::Config| c.get_ports().first().copied().unwrap_or(5432);
                if host(&source) == host(&dest)
                    && port(&source) == port(&dest)
                    && source.get_dbname() == dest.get_dbname()
                {
                    let name = match job.target_table.split_once('.') {
                        Some(_) => job.target_table.clone(),
                        None => format!("public.{}", job.target_table),
                    };
                    out.push(name);
                }
            }
            SourceConfig::Mysql(my) => {
                let (Ok(source), Ok(dest)) = (
                    url::Url::parse(my.url.expose()),
                    url::Url::parse(&target.replacen("mariadb://", "mysql://", 1)),
                ) else {
                    continue;
                };
                if dest.scheme() != "mysql"
                    || loopback(source.host_str().unwrap_or("localhost"))
                        != loopback(dest.host_str().unwrap_or("localhost"))
                    || source.port().unwrap_or(3306) != dest.port().unwrap_or(3306)
                {
                    continue;
                }
                let db = dest.path().trim_start_matches('/').to_string();
                let name = match job.target_table.split_once('.') {
                    Some(_) => job.target_table.clone(),
                    None if !db.is_empty() => format!("{db}.{}", job.target_table),
                    None => continue,
                };
                out.push(name);
            }
        }
    }
    out
}

fn loopback(host: &str) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host {
        "localhost" | "127.0.0.1" | "::1" => "localhost".into(),
        other => other.to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[pipeline]
name = "shop"
[source]
type = "postgres"
url = "postgres://cdc:${PGPASSWORD}@127.0.0.1:5432/shop"
tables = ["public.*"]
[sink]
type = "lake"
uri = "file:///tmp/lake"
"#;

    fn env(name: &str) -> Option<String> {
        (name == "PGPASSWORD").then(|| "s3cret".to_string())
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.toml"), &env)
    }

    #[test]
    fn masking_rules_are_checked_key_by_key() {
        let rule = |body: &str| {
            format!("{GOOD}\n[masking]\nhash_key = \"${{PGPASSWORD}}-0123456789abcdef\"\n[[masking.columns]]\n{body}\n")
        };
        let config = parse(&rule(
            "table = \"public.*\"\ncolumns = [\"email\"]\naction = \"hash\"",
        ))
        .unwrap();
        let policy = config.masking.policy().unwrap();
        let table = tidewater_core::TableId::new("public", "users");
        assert_eq!(
            policy.action(&table, "email"),
            Some(&tidewater_core::mask::MaskAction::Hash)
        );
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "the key never prints"
        );
        for (body, key, says) in [
            (
                "table = \"\"\ncolumns = [\"a\"]\naction = \"hash\"",
                "masking.columns[0].table",
                "pattern",
            ),
            (
                "table = \"*\"\ncolumns = []\naction = \"hash\"",
                "masking.columns[0].columns",
                "column name",
            ),
            (
                "table = \"*\"\ncolumns = [\"a\"]\naction = \"constant\"",
                "masking.columns[0].value",
                "required",
            ),
            (
                "table = \"*\"\ncolumns = [\"a\"]\naction = \"hash\"\nvalue = \"x\"",
                "masking.columns[0].value",
                "only",
            ),
            (
                "table = \"*\"\ncolumns = [\"a\"]\naction = \"scramble\"",
                "masking.columns[0].action",
                "exclude",
            ),
        ] {
            let err = parse(&rule(body)).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(says),
                "{body:?}: expected {key} and {says:?} in: {err}"
            );
        }
        let no_key = format!(
            "{GOOD}\n[[masking.columns]]\ntable = \"*\"\ncolumns = [\"a\"]\naction = \"hash\"\n"
        );
        let err = parse(&no_key).unwrap_err().to_string();
        assert!(
            err.contains("masking.hash_key") && err.contains("required"),
            "{err}"
        );
        let short = format!("{GOOD}\n[masking]\nhash_key = \"abc\"\n");
        let err = parse(&short).unwrap_err().to_string();
        assert!(
            err.contains("masking.hash_key") && err.contains("16 bytes"),
            "{err}"
        );
    }

    #[test]
    fn reverse_etl_jobs_are_checked_key_by_key() {
        let job = |extra: &str| {
            format!(
                "{GOOD}\n[[reverse_etl]]\nname = \"ltv\"\nquery = \"SELECT 1 AS k\"\n\
                 target_url = \"postgres://app:${{PGPASSWORD}}@127.0.0.1/shop\"\n\
                 target_table = \"public.ltv\"\nkey = [\"k\"]\n{extra}"
            )
        };
        let config = parse(&job("every = \"15m\"")).unwrap();
        let ltv = &config.reverse_etl[0];
        assert!(matches!(ltv.schedule(), Some(Schedule::Every(d)) if d.as_secs() == 900));
        assert_eq!(ltv.spec().mode, tidewater_reverse::Mode::Upsert);
        assert!(format!("{ltv:?}").contains("<redacted>"));
        assert!(!format!("{ltv:?}").contains("s3cret"));
        assert!(matches!(
            parse(&job("cron = \"*/15 * * * *\"")).unwrap().reverse_etl[0].schedule(),
            Some(Schedule::Cron(_))
        ));
        for (extra, key, says) in [
            ("every = \"soon\"", "reverse_etl[0].every", "not a duration"),
            (
                "cron = \"61 * * * *\"",
                "reverse_etl[0].cron",
                "not a cron expression",
            ),
            (
                "every = \"1m\"\ncron = \"* * * * *\"",
                "reverse_etl[0].cron",
                "not both",
            ),
            ("batch_rows = 0", "reverse_etl[0].batch_rows", "outside"),
            (
                "max_rows_per_second = -1.0",
                "reverse_etl[0].max_rows_per_second",
                "positive",
            ),
            ("mode = \"merge\"", "reverse_etl[0].mode", "unknown variant"),
        ] {
            let err = parse(&job(extra)).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{extra}: {err}");
        }
        let twice = format!(
            "{}\n[[reverse_etl]]\nname = \"ltv\"\nquery = \"SELECT 1 AS k\"\n\
             target_url = \"mysql://app@127.0.0.1/shop\"\ntarget_table = \"ltv\"\nkey = [\"k\"]\n",
            job("")
        );
        let err = parse(&twice).unwrap_err().to_string();
        assert!(
            err.contains("reverse_etl[1].name") && err.contains("two jobs"),
            "{err}"
        );
        let err = parse(&job("").replace("postgres://app", "redis://app"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("reverse_etl[0].target_url"), "{err}");
    }

    #[test]
    fn interpolates_and_hides_secrets() {
        let config = parse(GOOD).unwrap();
        let SourceConfig::Postgres(pg) = &config.source else {
            panic!("postgres source expected")
        };
        assert_eq!(pg.url.expose(), "postgres://cdc:s3cret@127.0.0.1:5432/shop");
        assert!(!format!("{config:?}").contains("s3cret"));
        let SinkConfig::Lake(lake) = &config.sink else {
            panic!("a lake sink")
        };
        assert_eq!(lake.flush_interval_ms, DEFAULT_FLUSH_INTERVAL_MS);
        assert_eq!(lake.root(), PathBuf::from("/tmp/lake"));
    }

    #[test]
    fn kafka_sinks_are_checked_key_by_key() {
        let kafka = |extra: &str| {
            GOOD.replace(
                "type = \"lake\"\nuri = \"file:///tmp/lake\"",
                &format!("type = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\n{extra}"),
            )
        };
        let SinkConfig::Kafka(sink) = parse(&kafka(
            "format = \"debezium-json-schema\"\n[sink.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.password\" = \"${PGPASSWORD}\"",
        ))
        .unwrap()
        .sink
        else {
            panic!("a kafka sink")
        };
        assert_eq!(sink.format, KafkaFormat::DebeziumJsonSchema);
        assert_eq!(sink.delivery, KafkaDelivery::ExactlyOnce);
        assert_eq!(sink.properties["sasl.password"].expose(), "s3cret");
        // Secrets never print.
        assert!(!format!("{sink:?}").contains("s3cret"));
        for (extra, key, says) in [
            ("brokers = \"nohost\"", "sink.brokers", "host:port"),
            ("topic_prefix = \"a b\"", "sink.topic_prefix", "topic name"),
            ("state_topic = \"\"", "sink.state_topic", "topic name"),
            ("format = \"avro\"", "sink.format", "debezium-json"),
            ("delivery = \"maybe\"", "sink.delivery", "exactly-once"),
            (
                "delivery = \"at-least-once\"\ntransactional_id = \"x\"",
                "sink.transactional_id",
                "exactly-once",
            ),
            (
                "[sink.properties]\n\"enable.idempotence\" = \"false\"",
                "sink.properties.enable.idempotence",
                "ssl.*",
            ),
            (
                "transaction_timeout_ms = 10",
                "sink.transaction_timeout_ms",
                "1000",
            ),
            ("compression = \"zstd\"", "sink.compression", "lz4"),
            ("topic_partitions = 0", "sink.topic_partitions", "-1"),
            ("max_queued_bytes = 10", "sink.max_queued_bytes", "1 MiB"),
            ("linger = 5", "sink.linger", "unknown"),
        ] {
            let text = if extra.starts_with("brokers") {
                kafka("").replace("brokers = \"127.0.0.1:9092\"", extra)
            } else {
                kafka(extra)
            };
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(says),
                "{extra:?}: expected {key} and {says:?} in: {err}"
            );
        }
        // Reverse ETL reads a lake; a Kafka pipeline has none.
        let err = parse(&format!(
            "{}\n[[reverse_etl]]\nname = \"j\"\nquery = \"SELECT 1 AS k\"\ntarget_url = \"postgres://a@h/d\"\ntarget_table = \"t\"\nkey = [\"k\"]\n",
            kafka("")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("reverse_etl") && err.contains("Kafka"),
            "{err}"
        );
    }

    #[test]
    fn iceberg_format_and_catalogs_are_checked_key_by_key() {
        let sink = |extra: &str| {
            GOOD.replace(
                "uri = \"file:///tmp/lake\"",
                &format!("uri = \"file:///tmp/lake\"\n{extra}"),
            )
        };
        // Delta by default; Iceberg with the SQLite file at the lake root.
        let SinkConfig::Lake(lake) = parse(GOOD).unwrap().sink else {
            panic!("a lake sink")
        };
        assert_eq!(lake.format, LakeFormat::Delta);
        assert!(lake.iceberg_catalog().is_none());
        let SinkConfig::Lake(lake) = parse(&sink("format = \"iceberg\"")).unwrap().sink else {
            panic!("a lake sink")
        };
        let Some(tidewater_lake::Catalog::Sql(catalog)) = lake.iceberg_catalog() else {
            panic!("a SQL catalog")
        };
        assert_eq!(
            catalog.describe(),
            "tidewater (SQLite /tmp/lake/tidewater_catalog.db)"
        );
        let rest = parse(&sink(
            "format = \"iceberg\"\n[sink.catalog]\ntype = \"rest\"\nuri = \"http://127.0.0.1:8181\"\ntoken = \"t\"",
        ))
        .unwrap();
        let SinkConfig::Lake(lake) = rest.sink else {
            panic!("a lake sink")
        };
        assert!(matches!(
            lake.iceberg_catalog(),
            Some(tidewater_lake::Catalog::Rest(_))
        ));
        for (extra, key, says) in [
            (
                "[sink.catalog]\nname = \"x\"",
                "sink.catalog",
                "format = \"iceberg\"",
            ),
            (
                "format = \"iceberg\"\ncurrent_state = true\ncurrent_state_deletion_vectors = true",
                "sink.current_state_deletion_vectors",
                "copy-on-write",
            ),
            (
                "soft_deletes = true",
                "sink.soft_deletes",
                "current_state = true",
            ),
            (
                "changelog_retention = \"soon\"",
                "sink.changelog_retention",
                "90d",
            ),
            (
                "[sink.changelog_retention_tables]\n\"public.x\" = \"0s\"",
                "sink.changelog_retention_tables.public.x",
                "forever",
            ),
            (
                "format = \"iceberg\"\nchangelog_retention = \"30d\"",
                "sink.changelog_retention",
                "Iceberg",
            ),
            (
                "format = \"iceberg\"\n[sink.catalog]\nuri = \"sqlite://relative.db\"",
                "sink.catalog.uri",
                "absolute path",
            ),
            (
                "format = \"iceberg\"\n[sink.catalog]\nuri = \"mysql://db/x\"",
                "sink.catalog.uri",
                "sqlite://",
            ),
            (
                "format = \"iceberg\"\n[sink.catalog]\ntype = \"rest\"",
                "sink.catalog.uri",
                "required",
            ),
            (
                "format = \"iceberg\"\n[sink.catalog]\ntype = \"rest\"\nuri = \"ftp://x\"",
                "sink.catalog.uri",
                "http://",
            ),
            (
                "format = \"iceberg\"\n[sink.catalog]\ntoken = \"t\"",
                "sink.catalog.token",
                "rest",
            ),
            (
                "format = \"iceberg\"\n[sink.catalog]\ntype = \"rest\"\nuri = \"http://c\"\ncredential = \"nosecret\"",
                "sink.catalog.credential",
                "client_id:client_secret",
            ),
            (
                "format = \"iceberg\"\n[sink.catalog]\ntype = \"rest\"\nuri = \"http://c\"\ncredential = \"a:b\"\ntoken = \"t\"",
                "sink.catalog.credential",
                "not both",
            ),
            (
                "format = \"iceberg\"\n[sink.catalog]\ntype = \"rest\"\nuri = \"http://c\"\nscope = \"x\"",
                "sink.catalog.scope",
                "credential",
            ),
            (
                "format = \"iceberg\"\n[sink.catalog]\ntype = \"glue\"",
                "sink.catalog.type",
                "sql",
            ),
            ("format = \"hudi\"", "sink.format", "iceberg"),
        ] {
            let err = parse(&sink(extra)).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{extra}: {err}");
        }
        let s3 = GOOD.replace(
            "uri = \"file:///tmp/lake\"",
            "uri = \"s3://bucket/lake\"\nformat = \"iceberg\"",
        );
        let err = parse(&s3).unwrap_err().to_string();
        assert!(
            err.contains("sink.catalog.uri") && err.contains("s3://"),
            "{err}"
        );
    }

    #[test]
    fn deletion_vectors_need_current_state_tables() {
        let sink = |extra: &str| {
            GOOD.replace(
                "uri = \"file:///tmp/lake\"",
                &format!("uri = \"file:///tmp/lake\"\n{extra}"),
            )
        };
        let SinkConfig::Lake(lake) = parse(GOOD).unwrap().sink else {
            panic!("a lake sink")
        };
        assert!(!lake.current_state_deletion_vectors, "off by default");
        let on = parse(&sink(
            "current_state = true\ncurrent_state_deletion_vectors = true",
        ))
        .unwrap();
        let SinkConfig::Lake(lake) = on.sink else {
            panic!("a lake sink")
        };
        assert!(lake.current_state_deletion_vectors);
        let err = parse(&sink("current_state_deletion_vectors = true"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sink.current_state_deletion_vectors")
                && err.contains("current_state = true"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_names_the_key() {
        let err = parse(&GOOD.replace("tables =", "tabels ="))
            .unwrap_err()
            .to_string();
        assert!(err.contains("source") && err.contains("tabels"), "{err}");
    }

    #[test]
    fn missing_env_names_key_and_variable() {
        let err = parse(&GOOD.replace("PGPASSWORD", "NOPE"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("source.url") && err.contains("NOPE"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = GOOD.replace(
            "uri = \"file:///tmp/lake\"",
            "uri = \"x\"\nflush_interval_ms = \"soon\"",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("sink.flush_interval_ms"), "{err}");
    }

    #[test]
    fn warehouse_sink_keys_are_checked() {
        let warehouse = |extra: &str| {
            GOOD.replace(
                "type = \"lake\"\nuri = \"file:///tmp/lake\"",
                &format!(
                    "type = \"warehouse\"\nurl = \"postgres://wh:${{PGPASSWORD}}@127.0.0.1/dw\"\n{extra}"
                ),
            )
        };
        let config = parse(&warehouse("changelog = true\nschema = \"raw_{schema}\"")).unwrap();
        let SinkConfig::Warehouse(w) = &config.sink else {
            panic!("a warehouse sink")
        };
        assert!(w.changelog);
        assert_eq!(
            (w.schema.as_str(), w.table.as_str()),
            ("raw_{schema}", "{table}")
        );
        assert_eq!(w.apply, WarehouseApply::Auto);
        assert_eq!(w.max_batch_rows, DEFAULT_WAREHOUSE_MAX_BATCH_ROWS);
        assert!(!format!("{config:?}").contains("s3cret"));
        for (extra, key) in [
            ("uri = \"file:///x\"", "uri"),
            ("apply = \"sometimes\"", "sink.apply"),
            ("table = \"all\"", "sink.table"),
            ("schema = \"{schma}\"", "sink.schema"),
            ("max_batch_rows = 0", "sink.max_batch_rows"),
        ] {
            let err = parse(&warehouse(extra)).unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
        let err = parse(&GOOD.replace("type = \"lake\"", "type = \"warehous\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sink.type") && err.contains("warehouse"),
            "{err}"
        );
        let err = parse(&GOOD.replace(
            "type = \"lake\"\nuri = \"file:///tmp/lake\"",
            "type = \"warehouse\"\nurl = \"mysql://x/y\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("sink.url"), "{err}");
    }

    #[test]
    fn bad_pipeline_name() {
        for bad in ["a b", "Shop", "a-b", ""] {
            let text = GOOD.replace("\"shop\"", &format!("{bad:?}"));
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("pipeline.name"), "{bad}: {err}");
        }
    }

    #[test]
    fn batch_bytes_bounds_and_tls_are_checked() {
        let text = GOOD.replace(
            "uri = \"file:///tmp/lake\"",
            "uri = \"x\"\nmax_batch_bytes = 0",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("sink.max_batch_bytes"), "{err}");
        let text = GOOD.replace("5432/shop", "5432/shop?sslmode=verify-full");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("source.url") && err.contains("sslrootcert"),
            "{err}"
        );
        let text = GOOD.replace(
            "5432/shop",
            "5432/shop?sslmode=verify-full&sslrootcert=/ca.pem",
        );
        parse(&text).unwrap();
    }

    #[test]
    fn mysql_source_defaults_to_the_url_database() {
        let text = GOOD
            .replace("type = \"postgres\"", "type = \"mysql\"")
            .replace(
                "postgres://cdc:${PGPASSWORD}@127.0.0.1:5432/shop",
                "mysql://cdc:x@127.0.0.1:3306/shop",
            )
            .replace("tables = [\"public.*\"]\n", "");
        let config = parse(&text).unwrap();
        let SourceConfig::Mysql(my) = &config.source else {
            panic!("mysql source expected")
        };
        assert_eq!(my.include(), vec!["shop.*".to_string()]);
        assert_eq!(my.zero_dates, ZeroDatesPolicy::Null);
        let err = parse(&text.replace("3306/shop", "3306/shop?ssl-mode=VERIFY_IDENTITY"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("source.url") && err.contains("ssl-ca"),
            "{err}"
        );
        let err = parse(&text.replace("3306/shop", "3306/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("source.tables"), "{err}");
        let err = parse(&text.replace("[sink]", "server_id = 0\n[sink]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("source.server_id"), "{err}");
        let err = parse(&text.replace("[sink]", "zero_dates = \"maybe\"\n[sink]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("source.zero_dates"), "{err}");
    }

    #[test]
    fn mariadb_is_an_alias_of_mysql() {
        let text = GOOD
            .replace("type = \"postgres\"", "type = \"mariadb\"")
            .replace(
                "postgres://cdc:${PGPASSWORD}@127.0.0.1:5432/shop",
                "mariadb://cdc:x@127.0.0.1:3306/shop",
            )
            .replace("tables = [\"public.*\"]\n", "");
        let config = parse(&text).unwrap();
        let SourceConfig::Mysql(my) = &config.source else {
            panic!("mysql source expected")
        };
        assert_eq!(my.include(), vec!["shop.*".to_string()]);
        let (rest, _) = tidewater_endpoint::mysql::parse_url(my.url.expose()).unwrap();
        assert!(rest.starts_with("mysql://"), "{rest}");
        assert!(json_schema().contains("\"mariadb\""));
    }

    #[test]
    fn every_connection_url_is_read_at_validation_without_echoing_it() {
        let raw = "Zq7@v/W#k?3j";
        let pieces = |err: &str| (0..raw.len() - 2).all(|i| !err.contains(&raw[i..i + 3]));
        // The source, a warehouse and a reverse-ETL target, both kinds.
        let source = GOOD.replace("${PGPASSWORD}", raw);
        let warehouse = GOOD.replace(
            "type = \"lake\"\nuri = \"file:///tmp/lake\"",
            &format!("type = \"warehouse\"\nurl = \"postgres://wh:{raw}@127.0.0.1/dw\""),
        );
        let job = |url: &str, table: &str| {
            format!(
                "{GOOD}\n[[reverse_etl]]\nname = \"j\"\nquery = \"SELECT 1 AS k\"\n\
                 target_url = \"{url}\"\ntarget_table = \"{table}\"\nkey = [\"k\"]\n"
            )
        };
        for (text, key) in [
            (source, "source.url"),
            (warehouse, "sink.url"),
            (
                job(&format!("postgres://app:{raw}@h/shop"), "t"),
                "reverse_etl[0].target_url",
            ),
            (
                job(&format!("mysql://app:{raw}@h/shop"), "t"),
                "reverse_etl[0].target_url",
            ),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("percent-encode") && pieces(&err),
                "{err}"
            );
        }
        // Encoded, they pass; a Postgres target needs its database, a
        // MySQL one a database in the url or in target_table.
        parse(&job("postgres://app:Zq7%40v%2FW%23k%3F3j@h/shop", "t")).unwrap();
        let err = parse(&job("postgres://app@h", "t"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("names no database"), "{err}");
        parse(&job("mysql://app@h", "shop.t")).unwrap();
        let err = parse(&job("mysql://app@h", "t")).unwrap_err().to_string();
        assert!(err.contains("reverse_etl[0].target_table"), "{err}");
        let err = parse(&GOOD.replace("5432/shop", "5432"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("source.url") && err.contains("names no database"),
            "{err}"
        );
        let err = parse(&GOOD.replace("127.0.0.1:5432", "127.0.0.1:port"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("source.url") && err.contains("port"), "{err}");
    }

    #[test]
    fn type_errors_are_said_plainly() {
        for (message, plain) in [
            (
                "invalid type: string \"soon\", expected u64",
                "invalid type: the string \"soon\", expected a whole number, 0 or more",
            ),
            (
                "invalid type: string \"x\", expected a sequence",
                "invalid type: the string \"x\", expected a list of strings, like [\"a\", \"b\"]",
            ),
            (
                "invalid value: integer `-1`, expected u32",
                "invalid value: `-1`, expected a whole number from 0 to 4294967295",
            ),
            (
                "invalid type: integer `5`, expected a boolean",
                "invalid type: the number `5`, expected true or false",
            ),
        ] {
            assert_eq!(plain_type_message("k", message), plain);
        }
        assert_eq!(
            plain_type_message("reverse_etl", "invalid type: map, expected a sequence"),
            "invalid type: a table, expected a list of [[reverse_etl]] tables"
        );
        assert_eq!(
            plain_type_message(
                "sink.s3",
                "invalid type: integer `5`, expected struct S3Config\nin `s3`\n"
            ),
            "invalid type: the number `5`, expected a table"
        );
    }

    #[test]
    fn committed_json_schema_is_current() {
        let committed = include_str!("../schemas/config.schema.json");
        assert_eq!(
            committed,
            json_schema(),
            "schemas/config.schema.json is stale: run `tidewater schema > schemas/config.schema.json`"
        );
    }
}
