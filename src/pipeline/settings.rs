//! The settings one run of the pipeline works from, resolved from the
//! config file: names derived from the pipeline's, the sink's store built.

use std::time::Duration;

use tidewater_core::{BatchLimits, TableId};
use tidewater_lake::{LakeStore, MaintenancePolicy};
use tidewater_mysql::{MysqlConfig, ZeroDates};
use tidewater_postgres::{PostgresConfig, TableFilter};

use crate::config::{Config, ConfigError, SinkConfig, SnapshotMode, SourceConfig, ZeroDatesPolicy};

/// The source a pipeline reads, resolved from the config.
#[derive(Clone)]
pub enum SourceSettings {
    Postgres(PostgresConfig),
    Mysql(MysqlConfig),
}

impl SourceSettings {
    /// The tables the pipeline replicates.
    pub fn filter(&self) -> &TableFilter {
        match self {
            SourceSettings::Postgres(pg) => &pg.filter,
            SourceSettings::Mysql(my) => &my.filter,
        }
    }
}

pub struct Settings {
    pub pipeline: String,
    pub source: SourceSettings,
    pub snapshot: SnapshotMode,
    pub lake: LakeStore,
    pub limits: BatchLimits,
    /// Tables to copy again before streaming (`snapshot --table`).
    pub recopy: Vec<TableId>,
    pub maintenance: MaintenancePolicy,
    /// The size data files aim at (`sink.target_file_size_bytes`).
    pub target_file_bytes: u64,
    /// New change-log tables are partitioned by commit date.
    pub partition_by_date: bool,
    /// Current-state merges write deletion vectors
    /// (`sink.current_state_deletion_vectors`).
    pub current_state_dvs: bool,
    /// Current-state tables keep deleted rows, flagged (`sink.soft_deletes`).
    pub soft_deletes: bool,
    /// `sink.changelog_retention` rules (pattern, None = for ever) and how
    /// often each table's pass runs.
    pub changelog_retention: (Vec<(String, Option<Duration>)>, Duration),
    /// Between chunks, a snapshot commits once this much is staged.
    pub snapshot_commit_bytes: u64,
    /// Set for `sink.format = "iceberg"`: the catalog the lake's Iceberg
    /// tables are registered in.
    pub iceberg: Option<tidewater_lake::Catalog>,
    /// Set for `[sink] type = "warehouse"`: the pipeline writes there, and
    /// `lake` is unused.
    pub warehouse: Option<tidewater_warehouse::WarehouseSettings>,
    /// Set for `[sink] type = "kafka"`: the pipeline writes to Kafka, and
    /// `lake` is unused.
    pub kafka: Option<tidewater_kafka::KafkaSettings>,
    pub metrics: crate::metrics::Metrics,
    /// Inserts into this table ask for copies while streaming
    /// (`source.signal_table`).
    pub signal_table: Option<TableId>,
    /// Columns left out or masked in the source task (`[masking]`).
    pub masking: std::sync::Arc<tidewater_core::mask::MaskPolicy>,
    /// OpenLineage events (`[lineage]`; started by the commands that run
    /// the pipeline).
    pub lineage: crate::lineage::Lineage,
}

impl Settings {
    /// The settings `config` names, with the lake's store built: an S3
    /// store that cannot be built is a config error naming `sink.uri` (never
    /// a local directory in its place).
    pub fn from_config(config: &Config) -> Result<Settings, ConfigError> {
        let (source, snapshot) = match &config.source {
            SourceConfig::Postgres(pg) => {
                let (slot, publication) = PostgresConfig::names_for(&config.pipeline.name);
                (
                    SourceSettings::Postgres(PostgresConfig {
                        url: tidewater_endpoint::url::SecretUrl::new(pg.url.expose()),
                        filter: TableFilter {
                            include: pg.tables.clone(),
                            exclude: with_echo_exclusions(&pg.exclude, config),
                        },
                        slot: pg.slot_name.clone().unwrap_or(slot),
                        publication: pg.publication.clone().unwrap_or(publication),
                        application_name: format!("tidewater:{}", config.pipeline.name),
                        spill_dir: config.pipeline.state_dir().join("spill"),
                        heartbeat: (pg.heartbeat_interval_ms > 0)
                            .then(|| Duration::from_millis(pg.heartbeat_interval_ms)),
                        binary: pg.binary,
                        discovery: (pg.table_discovery_interval_ms > 0)
                            .then(|| Duration::from_millis(pg.table_discovery_interval_ms)),
                        recopy_on_schema_change: pg.recopy_on_schema_change,
                        snapshot_workers: pg.snapshot_workers,
                        snapshot_chunk_bytes: pg.snapshot_chunk_bytes,
                        copy_hold_bytes: usize::try_from(pg.copy_hold_bytes).unwrap_or(usize::MAX),
                    }),
                    pg.snapshot,
                )
            }
            SourceConfig::Mysql(my) => (
                SourceSettings::Mysql(MysqlConfig {
                    url: tidewater_endpoint::url::SecretUrl::new(my.url.expose()),
                    filter: TableFilter {
                        include: my.include(),
                        exclude: with_echo_exclusions(&my.exclude, config),
                    },
                    server_id: my
                        .server_id
                        .unwrap_or_else(|| MysqlConfig::server_id_for(&config.pipeline.name)),
                    zero_dates: match my.zero_dates {
                        ZeroDatesPolicy::Null => ZeroDates::Null,
                        ZeroDatesPolicy::Fail => ZeroDates::Fail,
                    },
                    recopy_on_schema_change: my.recopy_on_schema_change,
                    snapshot_workers: my.snapshot_workers,
                    snapshot_chunk_rows: my.snapshot_chunk_rows,
                    copy_hold_bytes: usize::try_from(my.copy_hold_bytes).unwrap_or(usize::MAX),
                }),
                my.snapshot,
            ),
        };
        let warehouse = match &config.sink {
            SinkConfig::Lake(_) | SinkConfig::Kafka(_) => None,
            SinkConfig::Warehouse(w) => Some(tidewater_warehouse::WarehouseSettings {
                url: tidewater_endpoint::url::SecretUrl::new(w.url.expose()),
                pipeline: config.pipeline.name.clone(),
                target_schema: w.schema.clone(),
                target_table: w.table.clone(),
                state_schema: w.state_schema.clone(),
                changelog: w.changelog,
                soft_deletes: w.soft_deletes,
                changelog_retention: crate::config::retention_rules(
                    &w.changelog_retention,
                    &w.changelog_retention_tables,
                ),
                retention_every: Duration::from_millis(w.changelog_retention_interval_ms),
                apply: match w.apply {
                    crate::config::WarehouseApply::Auto => tidewater_warehouse::ApplyMode::Auto,
                    crate::config::WarehouseApply::Merge => tidewater_warehouse::ApplyMode::Merge,
                    crate::config::WarehouseApply::OnConflict => {
                        tidewater_warehouse::ApplyMode::OnConflict
                    }
                },
            }),
        };
        let signal_table = match &config.source {
            SourceConfig::Postgres(pg) => pg.signal_table.as_deref(),
            SourceConfig::Mysql(my) => my.signal_table.as_deref(),
        }
        .and_then(|s| s.split_once('.'))
        .map(|(schema, table)| TableId::new(schema, table));
        let masking = std::sync::Arc::new(config.masking.policy()?);
        let kafka = match &config.sink {
            SinkConfig::Kafka(k) => Some(kafka_settings(config, k)),
            _ => None,
        };
        Ok(match &config.sink {
            SinkConfig::Kafka(k) => Settings {
                pipeline: config.pipeline.name.clone(),
                source,
                snapshot,
                lake: LakeStore::local(&config.pipeline.state_dir().join("no-lake")),
                limits: BatchLimits {
                    max_rows: k.max_batch_rows,
                    max_bytes: k.max_batch_bytes,
                    max_delay: Duration::from_millis(k.flush_interval_ms),
                },
                recopy: Vec::new(),
                maintenance: MaintenancePolicy::default(),
                target_file_bytes: k.max_queued_bytes / 2,
                partition_by_date: false,
                current_state_dvs: false,
                soft_deletes: false,
                changelog_retention: (Vec::new(), Duration::from_secs(3600)),
                snapshot_commit_bytes: k.max_queued_bytes / 2,
                iceberg: None,
                warehouse: None,
                kafka,
                metrics: crate::metrics::Metrics::default(),
                signal_table: signal_table.clone(),
                masking: masking.clone(),
                lineage: crate::lineage::Lineage::default(),
            },
            SinkConfig::Lake(lake) => Settings {
                pipeline: config.pipeline.name.clone(),
                source,
                snapshot,
                lake: LakeStore::open(lake.location()).map_err(|err| ConfigError::Invalid {
                    key: "sink.uri".into(),
                    message: format!(
                        "the object store for {:?} cannot be built: {}\n\
                         hint: fix sink.uri (s3://bucket[/prefix]) or sink.s3, or the AWS_* \
                         environment variables the store reads, then start again",
                        lake.uri,
                        store_causes(&err)
                    ),
                })?,
                limits: BatchLimits {
                    max_rows: lake.max_batch_rows,
                    max_bytes: lake.max_batch_bytes,
                    max_delay: Duration::from_millis(lake.flush_interval_ms),
                },
                recopy: Vec::new(),
                maintenance: lake.maintenance(),
                target_file_bytes: lake.target_file_size_bytes,
                partition_by_date: lake.partitioning == crate::config::Partitioning::CommitDate,
                current_state_dvs: lake.current_state_deletion_vectors,
                soft_deletes: lake.soft_deletes,
                changelog_retention: (
                    lake.retention_rules(),
                    Duration::from_millis(lake.changelog_retention_interval_ms),
                ),
                snapshot_commit_bytes: lake.target_file_size_bytes,
                iceberg: lake.iceberg_catalog(),
                warehouse,
                kafka: None,
                metrics: crate::metrics::Metrics::default(),
                signal_table: signal_table.clone(),
                masking: masking.clone(),
                lineage: crate::lineage::Lineage::default(),
            },
            SinkConfig::Warehouse(w) => Settings {
                pipeline: config.pipeline.name.clone(),
                source,
                snapshot,
                lake: LakeStore::local(&config.pipeline.state_dir().join("no-lake")),
                limits: BatchLimits {
                    max_rows: w.max_batch_rows,
                    max_bytes: w.max_batch_bytes,
                    max_delay: Duration::from_millis(w.flush_interval_ms),
                },
                recopy: Vec::new(),
                maintenance: MaintenancePolicy::default(),
                target_file_bytes: w.snapshot_commit_bytes,
                partition_by_date: false,
                current_state_dvs: false,
                soft_deletes: false,
                changelog_retention: (Vec::new(), Duration::from_secs(3600)),
                snapshot_commit_bytes: w.snapshot_commit_bytes,
                iceberg: None,
                warehouse,
                kafka: None,
                metrics: crate::metrics::Metrics::default(),
                signal_table: signal_table.clone(),
                masking: masking.clone(),
                lineage: crate::lineage::Lineage::default(),
            },
        })
    }
}

/// Why a lake store could not be built: the causes below the error (which
/// only repeats the uri), each said once (the storage libraries wrap an
/// error in one that repeats its text).
fn store_causes(err: &tidewater_lake::LakeError) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut cause = std::error::Error::source(err);
    while let Some(current) = cause {
        let text = current.to_string();
        if !out.last().is_some_and(|last| last.contains(&text)) {
            out.push(text);
        }
        cause = current.source();
    }
    if out.is_empty() {
        out.push(err.to_string());
    }
    out.join(": ")
}

/// `exclude` plus the reverse-ETL target tables that live in the source
/// database: their pushes must not come back through capture.
fn with_echo_exclusions(exclude: &[String], config: &Config) -> Vec<String> {
    let mut out = exclude.to_vec();
    for table in crate::config::echo_exclusions(config) {
        if !out.contains(&table) {
            out.push(table);
        }
    }
    out
}

/// The Kafka sink's settings from `[sink] type = "kafka"`.
fn kafka_settings(
    config: &Config,
    k: &crate::config::KafkaSinkConfig,
) -> tidewater_kafka::KafkaSettings {
    use crate::config::{KafkaDelivery, KafkaFormat};
    let pipeline = &config.pipeline.name;
    let (connector, url) = match &config.source {
        SourceConfig::Postgres(pg) => (tidewater_kafka::Connector::Postgres, pg.url.expose()),
        SourceConfig::Mysql(my) => (tidewater_kafka::Connector::Mysql, my.url.expose()),
    };
    let database = url::Url::parse(url)
        .ok()
        .map(|u| u.path().trim_start_matches('/').to_string())
        .unwrap_or_default();
    let topic_prefix = k.topic_prefix.clone().unwrap_or_else(|| pipeline.clone());
    tidewater_kafka::KafkaSettings {
        pipeline: pipeline.clone(),
        brokers: k.brokers.clone(),
        topic_prefix: topic_prefix.clone(),
        state_topic: k
            .state_topic
            .clone()
            .unwrap_or_else(|| format!("tidewater.{pipeline}.state")),
        transactional_id: k
            .transactional_id
            .clone()
            .unwrap_or_else(|| format!("tidewater-{pipeline}")),
        format: match k.format {
            KafkaFormat::DebeziumJson => tidewater_kafka::Format::Json,
            KafkaFormat::DebeziumJsonSchema => tidewater_kafka::Format::JsonWithSchema,
        },
        delivery: match k.delivery {
            KafkaDelivery::ExactlyOnce => tidewater_kafka::Delivery::ExactlyOnce,
            KafkaDelivery::AtLeastOnce => tidewater_kafka::Delivery::AtLeastOnce,
        },
        properties: k
            .properties
            .iter()
            .map(|(key, value)| (key.clone(), value.expose().to_string()))
            .collect(),
        transaction_timeout_ms: k.transaction_timeout_ms,
        linger_ms: k.linger_ms,
        batch_bytes: k.batch_size_bytes,
        max_queued_bytes: k.max_queued_bytes,
        compression: k.compression.clone(),
        max_message_bytes: k.max_message_bytes,
        topic_partitions: k.topic_partitions,
        replication_factor: k.topic_replication_factor,
        source: tidewater_kafka::SourceInfo {
            connector,
            name: topic_prefix,
            database,
            server_id: 0,
        },
        stats: Default::default(),
    }
}
