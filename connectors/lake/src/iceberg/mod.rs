//! The Iceberg change-log sink: the Delta lake's contract (DESIGN §2–§5) on
//! Apache Iceberg tables, registered in a SQL catalog.
//!
//! ```text
//!  ChangeBatch ──narrow, field ids──▶ FileWriter (Parquet under data/, invisible)
//!                                        │ commit(position)
//!                                        ▼
//!  <uuid>-m0.avro  manifest of the new files (ADDED)
//!  snap-<id>-1-<uuid>.avro  manifest list = new manifest + the parent's manifests
//!  <N+1>-<uuid>.metadata.json  = metadata N + snapshot{ summary: tidewater.seq, .ord,
//!                                .position, .snapshot } + properties tidewater.<pipeline>.*
//!        │
//!        ▼  catalog: UPDATE … SET metadata_location = N+1 WHERE metadata_location = N
//! ```
//!
//! Exactly once without an offset store: the mark of a table's last change
//! is in the same metadata file as the snapshot that holds its rows — in the
//! snapshot's summary (for people and audits) and in table properties (what
//! restart reads: one file, however many snapshots were expired) — and the
//! catalog's compare-and-swap makes that file the table's, or not. A crash
//! before the swap leaves files no metadata names (invisible to readers);
//! after it, the restart reads the mark back and the coordinator skips what
//! the table holds.
//!
//! Another writer (pyiceberg appending, a compaction by Spark) makes our swap
//! fail: the commit is rebuilt on the new metadata and tried again — unless
//! the other writer is this pipeline in another process (its commit count
//! moved), which stops, as on Delta.
//!
//! Compaction, snapshot expiry and orphan cleanup run on the Delta sink's
//! keys and schedule: see `maintenance`.

pub mod avro;
pub mod catalog;
mod current;
mod files;
mod log;
mod maintenance;
pub mod metadata;
mod read;
pub mod rest;
pub mod schema;

use std::collections::{BTreeMap, HashMap};

use deltalake::arrow::array::{AsArray, RecordBatch};
use deltalake::arrow::datatypes::{Field, Schema};
use serde_json::{json, Value};
use tidewater_core::{
    arrow_field, metadata_fields, ChangeBatch, Datum, ErrorClass, Mark, Sink, SnapshotPhase,
    TableId, TableSchema,
};
use tracing::{debug, info, warn};

use crate::error::LakeError;
use crate::layout::{path_segment, segment_name};
use crate::state::{commit_plan, LakeState};
use crate::stats::writer_properties;
use crate::store::LakeStore;
use avro::{DataFile, ManifestEntry, ManifestFile};
use catalog::{Catalog, Swap};
use files::{FileTarget, FileWriter};
pub use maintenance::{VacuumReport, MERGE_MANIFESTS};
use metadata::{metadata_file_name, new_table, now_ms, PartitionField, TableMetadata};
use rest::Committed;
use schema::{file_schema, iceberg_fields, narrow_batch, IcebergField};

pub use current::current_identifier;
pub use tidewater_core::state::TableState;

/// The partition field of tables partitioned by commit date:
/// `day(_tw_commit_ts)`.
pub const COMMIT_DATE: &str = "_tw_commit_date";

const SUMMARY_PIPELINE: &str = "tidewater.pipeline";
const SUMMARY_SEQ: &str = "tidewater.seq";
const SUMMARY_ORD: &str = "tidewater.ord";
const SUMMARY_POSITION: &str = "tidewater.position";
const SUMMARY_SNAPSHOT: &str = "tidewater.snapshot";
/// The source table a lake table holds (`schema.table`): two source names
/// that map to one Iceberg name are refused, never mixed.
const PROPERTY_SOURCE: &str = "tidewater.source_table";
/// The source's key columns (a JSON array of names, in key order; empty for
/// a keyless table): what current-state views and lookups key rows by.
pub const PROPERTY_KEY: &str = "tidewater.key_columns";

/// How many times a commit is rebuilt on another writer's newer metadata
/// before the error goes to the pipeline's retry.
const REBASES: usize = 8;

/// The namespace and table name of a source table: single-level namespace
/// `<pipeline>_<schema>`, every character outside `[A-Za-z0-9_]` written as
/// `_` (what Glue and S3 Tables accept, and unambiguous in SQL catalogs,
/// which join namespace levels with `.`).
pub fn identifier(pipeline: &str, table: &TableId) -> (String, String) {
    fn clean(text: &str) -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
    (
        format!("{}_{}", clean(pipeline), clean(&table.schema)),
        clean(&table.table),
    )
}

struct OpenTable {
    namespace: String,
    name: String,
    /// `<pipeline>/<schema>/<table>` below the lake root.
    rel: String,
    metadata: TableMetadata,
    state: Option<TableState>,
    pending: Option<Mark>,
    files: Vec<DataFile>,
    writer: Option<FileWriter>,
    /// The columns after this commit's schema changes (None: unchanged).
    evolved: Option<Vec<IcebergField>>,
}

impl OpenTable {
    /// The columns the next commit's files are written against.
    fn fields(&self) -> Vec<IcebergField> {
        self.evolved
            .clone()
            .unwrap_or_else(|| self.metadata.fields())
    }
}

/// The Iceberg lake sink. See the module docs for the commit protocol.
pub struct IcebergSink {
    store: LakeStore,
    pipeline: String,
    catalog: Catalog,
    catalog_ready: bool,
    tables: BTreeMap<TableId, OpenTable>,
    table_phases: HashMap<TableId, (SnapshotPhase, Mark)>,
    target_file_bytes: u64,
    partition_by_date: bool,
    /// Compaction and vacuum (see `maintenance`).
    maintenance: crate::MaintenancePolicy,
    clock: maintenance::Clock,
    /// Current-state tables keep deleted rows, flagged.
    soft_deletes: bool,
}

impl IcebergSink {
    pub fn new(store: LakeStore, pipeline: &str, catalog: impl Into<Catalog>) -> Self {
        Self {
            store,
            pipeline: pipeline.to_string(),
            catalog: catalog.into(),
            catalog_ready: false,
            tables: BTreeMap::new(),
            table_phases: HashMap::new(),
            target_file_bytes: 128 << 20,
            partition_by_date: false,
            maintenance: crate::MaintenancePolicy::default(),
            clock: maintenance::Clock::default(),
            soft_deletes: false,
        }
    }

    /// `sink.soft_deletes`: current-state tables keep a deleted key's row,
    /// the delete's image, with `_tw_deleted = true` and `_tw_deleted_at`.
    pub fn set_soft_deletes(&mut self, on: bool) {
        self.soft_deletes = on;
    }

    /// The size data files roll over at (`sink.target_file_size_bytes`).
    pub fn set_target_file_size(&mut self, bytes: u64) {
        self.target_file_bytes = bytes.max(1);
    }

    /// Partition tables created from now on by `day(_tw_commit_ts)`.
    pub fn set_partition_by_date(&mut self, on: bool) {
        self.partition_by_date = on;
    }

    pub fn store(&self) -> &LakeStore {
        &self.store
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn table_rel(&self, table: &TableId) -> String {
        format!(
            "{}/{}/{}",
            self.pipeline,
            path_segment(&table.schema),
            path_segment(&table.table)
        )
    }

    /// Where a table is, for people: `<namespace>.<table>` in the catalog.
    pub fn table_location(&self, table: &TableId) -> String {
        let (ns, name) = identifier(&self.pipeline, table);
        format!(
            "{ns}.{name} at {}",
            self.store.describe(&self.table_rel(table))
        )
    }

    /// The pipeline's records (phase, stopped tables, snapshot plan,
    /// acknowledged position): files below the lake root, as for Delta.
    pub fn state(&self) -> LakeState {
        LakeState::new(self.store.clone(), &self.pipeline)
    }

    fn key(&self, suffix: &str) -> String {
        format!("tidewater.{}.{suffix}", self.pipeline)
    }

    fn failed(
        table: &TableId,
        action: &'static str,
        what: impl ToString,
        class: ErrorClass,
    ) -> LakeError {
        LakeError::Iceberg {
            table: table.clone(),
            action,
            what: what.to_string(),
            class,
        }
    }

    async fn ready(&mut self) -> Result<(), LakeError> {
        if !self.catalog_ready {
            match &self.catalog {
                Catalog::Sql(c) => c.ensure_schema().await?,
                Catalog::Rest(c) => c.probe().await?,
            }
            self.catalog_ready = true;
        }
        Ok(())
    }

    /// Proves the lake writable and the catalog reachable before any work.
    pub async fn probe_writable(&mut self) -> Result<(), LakeError> {
        let rel = format!(
            "{}/.tidewater-write-probe-{}",
            self.pipeline,
            std::process::id()
        );
        self.store.write(&rel, "probe\n").await?;
        self.store.delete(&rel).await?;
        self.ready().await
    }

    /// The table's current metadata, as the catalog names it.
    async fn load_metadata(
        &self,
        table: &TableId,
        namespace: &str,
        name: &str,
    ) -> Result<Option<TableMetadata>, LakeError> {
        load_metadata(&self.store, &self.catalog, table, namespace, name).await
    }
}

/// Reads the metadata file at `location` (a URI below the lake root).
async fn read_metadata(
    store: &LakeStore,
    table: &TableId,
    location: &str,
) -> Result<TableMetadata, LakeError> {
    let rel = store.rel_of(location).ok_or_else(|| {
        IcebergSink::failed(
            table,
            "opening",
            format!(
                "its metadata {location} is outside the lake root {}",
                store.root_uri()
            ),
            ErrorClass::Config,
        )
    })?;
    let text = store.read(&rel).await?.ok_or_else(|| {
        IcebergSink::failed(
            table,
            "opening",
            format!("the catalog names metadata {location}, which does not exist"),
            ErrorClass::Config,
        )
    })?;
    let json: Value = serde_json::from_str(&text).map_err(|err| {
        IcebergSink::failed(
            table,
            "opening",
            format!("metadata {location} is not JSON: {err}"),
            ErrorClass::Config,
        )
    })?;
    // The format version is checked by the one caller, `load_metadata`.
    Ok(TableMetadata {
        json,
        location: location.to_string(),
    })
}

/// A table's current metadata, as `catalog` names it.
async fn load_metadata(
    store: &LakeStore,
    catalog: &Catalog,
    table: &TableId,
    namespace: &str,
    name: &str,
) -> Result<Option<TableMetadata>, LakeError> {
    let metadata = match catalog {
        Catalog::Sql(catalog) => match catalog.load(namespace, name).await? {
            Some(registered) => {
                Some(read_metadata(store, table, &registered.metadata_location).await?)
            }
            None => None,
        },
        Catalog::Rest(catalog) => catalog.load(namespace, name).await?,
    };
    if let Some(metadata) = &metadata {
        if metadata.format_version() != 2 {
            return Err(IcebergSink::failed(
                table,
                "opening",
                format!(
                    "it is Iceberg format version {}; tidewater writes format version 2 tables",
                    metadata.format_version()
                ),
                ErrorClass::Config,
            ));
        }
    }
    Ok(metadata)
}

impl IcebergSink {
    /// The table's state as its metadata records it for this pipeline.
    fn state_of(&self, metadata: &TableMetadata) -> Option<TableState> {
        let seq = metadata.property(&self.key("seq"))?.parse().ok()?;
        let ord = metadata.property(&self.key("ord"))?.parse().ok()?;
        Some(TableState {
            mark: Mark { seq, ord },
            position: metadata.property(&self.key("position"))?.to_string(),
            snapshot_done: metadata.property(&self.key("snapshot")) == Some("done"),
            version: metadata.last_sequence_number().max(0) as u64,
            commits: metadata
                .property(&self.key("commits"))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
        })
    }

    /// Opens a table the catalog has and reads its state; None when the
    /// catalog has no such table (or no commit of this pipeline in it).
    pub async fn table_state(&mut self, table: &TableId) -> Result<Option<TableState>, LakeError> {
        if let Some(open) = self.tables.get(table) {
            return Ok(open.state.clone());
        }
        self.ready().await?;
        let (namespace, name) = identifier(&self.pipeline, table);
        let Some(metadata) = self.load_metadata(table, &namespace, &name).await? else {
            return Ok(None);
        };
        let source = metadata.property(PROPERTY_SOURCE).unwrap_or_default();
        if source != table.to_string() {
            return Err(Self::failed(
                table,
                "opening",
                format!(
                    "catalog table {namespace}.{name} holds {}, not {table}: two source tables \
                     map to one Iceberg name, or the table is not tidewater's; rename one, or \
                     give this pipeline its own catalog",
                    if source.is_empty() {
                        "another writer's data"
                    } else {
                        source
                    }
                ),
                ErrorClass::Config,
            ));
        }
        let state = self.state_of(&metadata);
        self.tables.insert(
            table.clone(),
            OpenTable {
                namespace,
                name,
                rel: self.table_rel(table),
                metadata,
                state: state.clone(),
                pending: None,
                files: Vec::new(),
                writer: None,
                evolved: None,
            },
        );
        Ok(state)
    }

    /// Makes sure the table exists with (at least) the columns of `schema`.
    pub async fn ensure_table(&mut self, schema: &TableSchema) -> Result<(), LakeError> {
        let table = &schema.table;
        self.table_state(table).await?;
        if self.tables.contains_key(table) {
            return Ok(());
        }
        let rel = self.table_rel(table);
        let (namespace, name) = identifier(&self.pipeline, table);
        let mut last_id = 0;
        let fields = iceberg_fields(&lake_schema(schema), &HashMap::new(), &mut last_id)
            .map_err(|err| Self::failed(table, "creating", err, ErrorClass::Definite))?;
        let day_of = self
            .partition_by_date
            .then(|| {
                fields
                    .iter()
                    .find(|f| f.name == "_tw_commit_ts")
                    .map(|f| f.id)
            })
            .flatten();
        let location = self.store.uri_of(&rel);
        let properties = BTreeMap::from([
            (PROPERTY_SOURCE.to_string(), table.to_string()),
            (
                "comment".to_string(),
                format!(
                    "change log of {table}, written by tidewater pipeline {}",
                    self.pipeline
                ),
            ),
            ("write.format.default".to_string(), "parquet".to_string()),
            (
                PROPERTY_KEY.to_string(),
                serde_json::to_string(
                    &schema
                        .key_columns()
                        .map(|c| c.name.clone())
                        .collect::<Vec<_>>(),
                )
                .unwrap_or_default(),
            ),
        ]);
        let json = new_table(&location, &fields, properties, day_of);
        let created = match &self.catalog {
            Catalog::Sql(catalog) => {
                let file = format!("{rel}/metadata/{}", metadata_file_name(0));
                self.store.write(&file, &json.to_string()).await?;
                catalog.ensure_namespace(&namespace).await?;
                let metadata_location = self.store.uri_of(&file);
                if catalog
                    .create(&namespace, &name, &metadata_location)
                    .await?
                {
                    Some(TableMetadata {
                        json,
                        location: metadata_location,
                    })
                } else {
                    self.store.delete(&file).await?;
                    None
                }
            }
            Catalog::Rest(catalog) => {
                catalog.ensure_namespace(&namespace).await?;
                catalog.create(&namespace, &name, &json).await?
            }
        };
        let Some(metadata) = created else {
            // Someone registered it first (or a run that crashed right
            // after registering): open theirs.
            self.table_state(table).await?;
            return Ok(());
        };
        info!(table = %table, iceberg = %format!("{namespace}.{name}"), path = %self.store.describe(&rel), "created Iceberg table");
        self.tables.insert(
            table.clone(),
            OpenTable {
                namespace,
                name,
                rel,
                metadata,
                state: None,
                pending: None,
                files: Vec::new(),
                writer: None,
                evolved: None,
            },
        );
        Ok(())
    }

    /// Writes a batch into uncommitted files. Batches wholly at or below the
    /// table's committed mark are skipped (idempotence).
    pub async fn write(&mut self, batch: ChangeBatch) -> Result<(), LakeError> {
        self.ensure_table(&batch.schema).await?;
        let table = batch.table.clone();
        let target_bytes = self.target_file_bytes;
        let store = self.store.clone();
        let open = self.tables.get_mut(&table).expect("ensured above");
        if let Some(state) = &open.state {
            if batch.last <= state.mark {
                debug!(table = %table, mark = %batch.last, "batch already committed, skipping");
                return Ok(());
            }
        }
        let current = open.fields();
        let (columns, changed) = plan_columns(
            &table,
            batch.batch.schema().as_ref(),
            &current,
            open.metadata.last_column_id(),
        )?;
        if let Some(changed) = changed {
            open.evolved = Some(changed);
        }
        let renamed = Schema::new(
            batch
                .batch
                .schema()
                .fields()
                .iter()
                .zip(&columns)
                .map(|(f, c)| f.as_ref().clone().with_name(c.name.clone()))
                .collect::<Vec<Field>>(),
        );
        let file_schema = file_schema(&renamed, &columns);
        let narrowed =
            narrow_batch(&batch.batch, &file_schema).map_err(|source| LakeError::Arrow {
                table: table.clone(),
                source,
            })?;
        let reusable = open
            .writer
            .as_ref()
            .is_some_and(|w| w.schema == file_schema);
        if !reusable {
            if let Some(old) = open.writer.take() {
                open.files.extend(old.finish(&table).await?);
            }
            let keys: Vec<&str> = batch
                .schema
                .key_columns()
                .map(|c| c.name.as_str())
                .collect();
            let properties = writer_properties(&narrowed, &keys);
            let (_, _, spec) = open.metadata.default_spec();
            let partition = partition_of(&spec, &batch.batch);
            if spec.len() != partition.len() {
                return Err(Self::failed(
                    &table,
                    "writing to",
                    "its partition spec is not one tidewater writes (only day(_tw_commit_ts))",
                    ErrorClass::Config,
                ));
            }
            open.writer = Some(FileWriter::start(
                FileTarget {
                    store,
                    table: table.clone(),
                    data_rel: format!("{}/data", open.rel),
                    target_bytes,
                    partition,
                },
                file_schema,
                properties,
            ));
        }
        let writer = open.writer.as_mut().expect("set above");
        writer.write(&table, narrowed).await?;
        open.pending = Some(open.pending.map_or(batch.last, |m| m.max(batch.last)));
        Ok(())
    }

    /// Commits every table with written data (and, when `phase` says so,
    /// every known table, so each records the snapshot state), each in one
    /// Iceberg snapshot with its mark and `position`.
    pub async fn commit(
        &mut self,
        position: &str,
        phase: Option<SnapshotPhase>,
    ) -> Result<usize, LakeError> {
        let mut committed = 0;
        let tables: Vec<TableId> = self.tables.keys().cloned().collect();
        for table in tables {
            let copy = self.table_phases.get(&table).copied();
            let open = self.tables.get_mut(&table).expect("listed above");
            let Some((mark, snapshot_done)) =
                commit_plan(open.pending, open.state.as_ref(), copy, phase)
            else {
                continue;
            };
            if let Some(writer) = open.writer.take() {
                open.files.extend(writer.finish(&table).await?);
            }
            let commits = open.state.as_ref().map_or(0, |s| s.commits) + 1;
            let state = TableState {
                mark,
                position: position.to_string(),
                snapshot_done,
                version: 0,
                commits,
            };
            let version = self.commit_table(&table, &state).await?;
            let open = self.tables.get_mut(&table).expect("listed above");
            open.files.clear();
            open.evolved = None;
            open.pending = None;
            open.state = Some(TableState { version, ..state });
            debug!(table = %table, version, mark = %mark, "committed");
            committed += 1;
            if snapshot_done {
                self.table_phases.remove(&table);
            }
        }
        Ok(committed)
    }

    /// One table's commit: manifest, manifest list, metadata, swap; rebuilt
    /// on another writer's newer metadata when the swap loses. Returns the
    /// new sequence number.
    async fn commit_table(
        &mut self,
        table: &TableId,
        state: &TableState,
    ) -> Result<u64, LakeError> {
        let open = self.tables.get(table).expect("open");
        let files = open.files.clone();
        let evolved = open.evolved.clone();
        let (namespace, name, rel) = (open.namespace.clone(), open.name.clone(), open.rel.clone());
        let mut base = open.metadata.clone();
        let snapshot_id = (rand_u64() >> 1).max(1) as i64;
        // The new files' manifest is the same whatever the base.
        let (spec_id, spec_fields, spec) = base.default_spec();
        let mut json_base = match &evolved {
            Some(fields) => base.with_schema(fields),
            None => base.json.clone(),
        };
        let schema_json = current_schema_json(&json_base);
        let schema_id = json_base["current-schema-id"].as_i64().unwrap_or(0);
        let new_manifest = if files.is_empty() {
            None
        } else {
            let entries: Vec<ManifestEntry> = files
                .iter()
                .map(|file| ManifestEntry {
                    status: 1,
                    snapshot_id: Some(snapshot_id),
                    sequence_number: None,
                    content: 0,
                    file: file.clone(),
                })
                .collect();
            let partition: Vec<(String, i32)> =
                spec.iter().map(|f| (f.name.clone(), f.field_id)).collect();
            let bytes = avro::write_manifest(
                &entries,
                &schema_json,
                schema_id,
                spec_id,
                &spec_fields,
                &partition,
            )
            .map_err(|err| {
                Self::failed(table, "writing a manifest of", err, ErrorClass::Definite)
            })?;
            let manifest_rel = format!("{rel}/metadata/{}-m0.avro", uuid::Uuid::new_v4());
            let length = bytes.len() as i64;
            self.store.write_new(&manifest_rel, bytes.into()).await?;
            Some(ManifestFile {
                path: self.store.uri_of(&manifest_rel),
                length,
                spec_id,
                content: 0,
                sequence_number: 0,
                min_sequence_number: 0,
                added_snapshot_id: snapshot_id,
                added_files: files.len() as i32,
                added_rows: files.iter().map(|f| f.record_count).sum(),
                partitions: partition_summaries(&spec, &files),
                ..Default::default()
            })
        };
        let added_records: i64 = files.iter().map(|f| f.record_count).sum();
        let added_size: i64 = files.iter().map(|f| f.size).sum();
        for attempt in 0..=REBASES {
            let sequence = base.last_sequence_number() + 1;
            let parent = base.current_snapshot_id();
            let mut manifests = Vec::new();
            if let Some(mut manifest) = new_manifest.clone() {
                manifest.sequence_number = sequence;
                manifest.min_sequence_number = sequence;
                manifests.push(manifest);
            }
            if let Some(parent_snapshot) = base.current_snapshot() {
                let carried = self.manifests_of(table, parent_snapshot).await?;
                if carried.len() >= maintenance::MERGE_MANIFESTS {
                    manifests.extend(
                        self.fold_manifests(
                            table,
                            &rel,
                            carried,
                            (spec_id, &spec_fields, &spec),
                            (&schema_json, schema_id),
                            snapshot_id,
                            sequence,
                        )
                        .await?,
                    );
                } else {
                    manifests.extend(carried);
                }
            }
            let list = avro::write_manifest_list(&manifests, snapshot_id, parent, sequence)
                .map_err(|err| {
                    Self::failed(
                        table,
                        "writing the manifest list of",
                        err,
                        ErrorClass::Definite,
                    )
                })?;
            let list_rel = format!(
                "{rel}/metadata/snap-{snapshot_id}-{}-{}.avro",
                attempt + 1,
                uuid::Uuid::new_v4()
            );
            self.store.write_new(&list_rel, list.into()).await?;
            let parent_summary = base
                .current_snapshot()
                .and_then(|s| s.get("summary"))
                .cloned()
                .unwrap_or_else(|| json!({}));
            let total = |key: &str, added: i64| -> Option<String> {
                let before = match parent_summary.get(key) {
                    Some(Value::String(v)) => v.parse::<i64>().ok()?,
                    None if parent.is_none() => 0,
                    _ => return None,
                };
                Some((before + added).to_string())
            };
            let mut summary = serde_json::Map::new();
            summary.insert("operation".into(), "append".into());
            summary.insert("added-data-files".into(), files.len().to_string().into());
            summary.insert("added-records".into(), added_records.to_string().into());
            summary.insert("added-files-size".into(), added_size.to_string().into());
            for (key, added) in [
                ("total-data-files", files.len() as i64),
                ("total-records", added_records),
                ("total-files-size", added_size),
                ("total-delete-files", 0),
                ("total-position-deletes", 0),
                ("total-equality-deletes", 0),
            ] {
                if let Some(value) = total(key, added) {
                    summary.insert(key.into(), value.into());
                }
            }
            summary.insert(SUMMARY_PIPELINE.into(), self.pipeline.clone().into());
            summary.insert(SUMMARY_SEQ.into(), state.mark.seq.to_string().into());
            summary.insert(SUMMARY_ORD.into(), state.mark.ord.to_string().into());
            summary.insert(SUMMARY_POSITION.into(), state.position.clone().into());
            summary.insert(
                SUMMARY_SNAPSHOT.into(),
                (if state.snapshot_done {
                    "done"
                } else {
                    "running"
                })
                .into(),
            );
            let mut snapshot = json!({
                "snapshot-id": snapshot_id,
                "sequence-number": sequence,
                "timestamp-ms": now_ms(),
                "manifest-list": self.store.uri_of(&list_rel),
                "summary": Value::Object(summary),
                "schema-id": schema_id,
            });
            if let Some(parent) = parent {
                snapshot["parent-snapshot-id"] = Value::from(parent);
            }
            let properties = vec![
                (self.key("seq"), state.mark.seq.to_string()),
                (self.key("ord"), state.mark.ord.to_string()),
                (self.key("position"), state.position.clone()),
                (
                    self.key("snapshot"),
                    (if state.snapshot_done {
                        "done"
                    } else {
                        "running"
                    })
                    .to_string(),
                ),
                (self.key("commits"), state.commits.to_string()),
            ];
            let outcome = match &self.catalog {
                Catalog::Sql(catalog) => {
                    let json = base.with_snapshot(json_base.clone(), snapshot, &properties);
                    let file = format!("{rel}/metadata/{}", metadata_file_name(base.version() + 1));
                    self.store.write(&file, &json.to_string()).await?;
                    let location = self.store.uri_of(&file);
                    match catalog
                        .swap(&namespace, &name, &base.location, &location)
                        .await?
                    {
                        Swap::Done => Some(TableMetadata { json, location }),
                        Swap::Conflict => None,
                    }
                }
                Catalog::Rest(catalog) => {
                    let mut requirements = vec![
                        json!({"type": "assert-table-uuid", "uuid": base.table_uuid()}),
                        json!({"type": "assert-ref-snapshot-id", "ref": "main", "snapshot-id": parent}),
                    ];
                    let mut updates = Vec::new();
                    if evolved.is_some() {
                        requirements.push(json!({
                            "type": "assert-current-schema-id",
                            "current-schema-id": base.current_schema_id(),
                        }));
                        updates.push(json!({
                            "action": "add-schema",
                            "schema": current_schema_json(&json_base),
                            "last-column-id": json_base["last-column-id"],
                        }));
                        updates.push(json!({"action": "set-current-schema", "schema-id": -1}));
                    }
                    updates.push(json!({"action": "add-snapshot", "snapshot": snapshot}));
                    updates.push(json!({
                        "action": "set-snapshot-ref",
                        "ref-name": "main",
                        "type": "branch",
                        "snapshot-id": snapshot_id,
                    }));
                    updates.push(json!({
                        "action": "set-properties",
                        "updates": properties.iter().cloned().collect::<BTreeMap<_, _>>(),
                    }));
                    match catalog
                        .commit(&namespace, &name, requirements, updates)
                        .await?
                    {
                        Committed::Done(metadata) => Some(metadata),
                        Committed::Conflict => None,
                        Committed::Unknown(why) => {
                            // The table says whether our snapshot is in.
                            warn!(table = %table, why = %why, "the Iceberg catalog did not say whether the commit happened; reading the table back");
                            match catalog.load(&namespace, &name).await? {
                                Some(now) if now.snapshot(snapshot_id).is_some() => Some(now),
                                _ => None,
                            }
                        }
                    }
                }
            };
            match outcome {
                Some(metadata) => {
                    let open = self.tables.get_mut(table).expect("open");
                    open.metadata = metadata;
                    return Ok(sequence as u64);
                }
                None => {
                    let Some(newer) = self.load_metadata(table, &namespace, &name).await? else {
                        return Err(Self::failed(
                            table,
                            "committing to",
                            "the table was dropped from the catalog while tidewater wrote it",
                            ErrorClass::Config,
                        ));
                    };
                    let theirs = self.state_of(&newer).map_or(0, |s| s.commits);
                    if theirs >= state.commits {
                        return Err(LakeError::ConcurrentWriter {
                            table: table.clone(),
                            pipeline: self.pipeline.clone(),
                            theirs: theirs.to_string(),
                            ours: state.commits.to_string(),
                        });
                    }
                    if newer.current_schema() != base.current_schema()
                        || newer.default_spec().0 != base.default_spec().0
                    {
                        return Err(Self::failed(
                            table,
                            "committing to",
                            "another writer changed the table's schema or partitioning during \
                             this commit; retrying from the durable marks",
                            ErrorClass::Transient,
                        ));
                    }
                    warn!(table = %table, attempt, "another writer committed to the Iceberg table first; rebuilding this commit on its snapshot");
                    json_base = match &evolved {
                        Some(fields) => newer.with_schema(fields),
                        None => newer.json.clone(),
                    };
                    base = newer;
                }
            }
        }
        Err(Self::failed(
            table,
            "committing to",
            format!("other writers committed first {REBASES} times in a row; retrying from the durable marks"),
            ErrorClass::Transient,
        ))
    }

    /// The parent's manifests with every data manifest of the default spec
    /// folded into one (their live entries as EXISTING, each keeping its
    /// sequence numbers and snapshot id), so a manifest list stops growing
    /// by one manifest per commit: past [`maintenance::MERGE_MANIFESTS`] a
    /// commit reads them once and lists two. Other manifests (delete
    /// manifests, other specs) are carried as they are.
    #[allow(clippy::too_many_arguments)]
    async fn fold_manifests(
        &self,
        table: &TableId,
        rel: &str,
        carried: Vec<ManifestFile>,
        (spec_id, spec_fields, spec): (i32, &Value, &[PartitionField]),
        (schema_json, schema_id): (&Value, i64),
        snapshot_id: i64,
        sequence: i64,
    ) -> Result<Vec<ManifestFile>, LakeError> {
        let (data, other): (Vec<ManifestFile>, Vec<ManifestFile>) = carried
            .into_iter()
            .partition(|m| m.content == 0 && m.spec_id == spec_id);
        let mut entries = Vec::new();
        for manifest in &data {
            let bytes = self.read_file(table, &manifest.path).await?;
            let read =
                avro::read_manifest(&bytes, manifest.sequence_number, manifest.added_snapshot_id)
                    .map_err(|err| {
                    Self::failed(
                        table,
                        "reading a manifest of",
                        format!("{}: {err}", manifest.path),
                        ErrorClass::Definite,
                    )
                })?;
            entries.extend(read.into_iter().filter(|e| e.status != 2).map(|mut e| {
                e.status = 0;
                e
            }));
        }
        let mut out = other;
        if entries.is_empty() {
            return Ok(out);
        }
        let partition: Vec<(String, i32)> =
            spec.iter().map(|f| (f.name.clone(), f.field_id)).collect();
        let bytes = avro::write_manifest(
            &entries,
            schema_json,
            schema_id,
            spec_id,
            spec_fields,
            &partition,
        )
        .map_err(|err| Self::failed(table, "writing a manifest of", err, ErrorClass::Definite))?;
        let manifest_rel = format!("{rel}/metadata/{}-m1.avro", uuid::Uuid::new_v4());
        let length = bytes.len() as i64;
        self.store.write_new(&manifest_rel, bytes.into()).await?;
        let files: Vec<DataFile> = entries.iter().map(|e| e.file.clone()).collect();
        out.insert(
            0,
            ManifestFile {
                path: self.store.uri_of(&manifest_rel),
                length,
                spec_id,
                content: 0,
                sequence_number: sequence,
                min_sequence_number: entries
                    .iter()
                    .filter_map(|e| e.sequence_number)
                    .min()
                    .unwrap_or(sequence),
                added_snapshot_id: snapshot_id,
                existing_files: entries.len() as i32,
                existing_rows: entries.iter().map(|e| e.file.record_count).sum(),
                partitions: partition_summaries(spec, &files),
                ..Default::default()
            },
        );
        debug!(table = %table, folded = data.len(), files = entries.len(), "folded the table's manifests into one");
        Ok(out)
    }

    /// The manifests of a snapshot, from its manifest list.
    async fn manifests_of(
        &self,
        table: &TableId,
        snapshot: &Value,
    ) -> Result<Vec<ManifestFile>, LakeError> {
        let Some(list) = snapshot.get("manifest-list").and_then(Value::as_str) else {
            return Err(Self::failed(
                table,
                "reading",
                "its current snapshot has no manifest list (a format v1 table with inline manifests)",
                ErrorClass::Config,
            ));
        };
        let bytes = self.read_file(table, list).await?;
        avro::read_manifest_list(&bytes).map_err(|err| {
            Self::failed(
                table,
                "reading the manifest list of",
                format!("{list}: {err}"),
                ErrorClass::Definite,
            )
        })
    }

    /// The bytes of a file of `table` named by URI (a data file of
    /// [`Self::data_files`], a manifest).
    pub async fn read_file(&self, table: &TableId, uri: &str) -> Result<bytes::Bytes, LakeError> {
        let rel = self.store.rel_of(uri).ok_or_else(|| {
            Self::failed(
                table,
                "reading",
                format!("{uri} is outside the lake root"),
                ErrorClass::Config,
            )
        })?;
        self.store.read_bytes(&rel).await?.ok_or_else(|| {
            Self::failed(
                table,
                "reading",
                format!("{uri} does not exist"),
                ErrorClass::Config,
            )
        })
    }

    /// Every live data file of the table's current snapshot (for reading
    /// it back: lookups, reverse ETL, tests).
    pub async fn data_files(&mut self, table: &TableId) -> Result<Vec<ManifestEntry>, LakeError> {
        if self.table_state(table).await?.is_none() && !self.tables.contains_key(table) {
            return Ok(Vec::new());
        }
        let open = self.tables.get(table).expect("opened above");
        let Some(snapshot) = open.metadata.current_snapshot().cloned() else {
            return Ok(Vec::new());
        };
        let snapshot_id = open.metadata.current_snapshot_id().unwrap_or_default();
        let mut out = Vec::new();
        for manifest in self.manifests_of(table, &snapshot).await? {
            let bytes = self.read_file(table, &manifest.path).await?;
            let entries = avro::read_manifest(&bytes, manifest.sequence_number, snapshot_id)
                .map_err(|err| {
                    Self::failed(
                        table,
                        "reading a manifest of",
                        format!("{}: {err}", manifest.path),
                        ErrorClass::Definite,
                    )
                })?;
            out.extend(entries.into_iter().filter(|e| e.status != 2));
        }
        Ok(out)
    }

    /// The table's current columns and the Arrow type each reads as
    /// (older files may hold a narrower type a promotion widened since).
    pub async fn columns(
        &mut self,
        table: &TableId,
    ) -> Result<Vec<(String, deltalake::arrow::datatypes::DataType)>, LakeError> {
        self.table_state(table).await?;
        Ok(self
            .tables
            .get(table)
            .map(|open| {
                open.metadata
                    .fields()
                    .into_iter()
                    .map(|f| (f.name, f.ty.arrow()))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Rows and data files of the table's current snapshot (from its
    /// summary's totals).
    pub async fn table_stats(
        &mut self,
        table: &TableId,
    ) -> Result<Option<(usize, usize)>, LakeError> {
        self.table_state(table).await?;
        let Some(open) = self.tables.get(table) else {
            return Ok(None);
        };
        let Some(summary) = open
            .metadata
            .current_snapshot()
            .and_then(|s| s.get("summary"))
        else {
            return Ok(Some((0, 0)));
        };
        let total = |key: &str| {
            summary
                .get(key)
                .and_then(Value::as_str)
                .and_then(|v| v.parse().ok())
        };
        Ok(total("total-records").zip(total("total-data-files")))
    }

    /// When this pipeline last committed to the table (RFC 3339), from the
    /// newest snapshot carrying its mark.
    pub async fn last_commit_time(&mut self, table: &TableId) -> Result<Option<String>, LakeError> {
        self.table_state(table).await?;
        let Some(open) = self.tables.get(table) else {
            return Ok(None);
        };
        let mut at = open.metadata.current_snapshot_id();
        while let Some(snapshot) = at.and_then(|id| open.metadata.snapshot(id)) {
            let ours = snapshot
                .get("summary")
                .and_then(|s| s.get(SUMMARY_PIPELINE))
                .and_then(Value::as_str)
                == Some(self.pipeline.as_str());
            if ours {
                return Ok(snapshot
                    .get("timestamp-ms")
                    .and_then(Value::as_i64)
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
            }
            at = snapshot.get("parent-snapshot-id").and_then(Value::as_i64);
        }
        Ok(None)
    }

    /// The tables of this pipeline the lake holds (directories with
    /// Iceberg metadata, as the catalog registers them).
    pub async fn existing_tables(&mut self) -> Result<Vec<TableId>, LakeError> {
        let mut found = Vec::new();
        for schema in self.store.list_dirs(&self.pipeline).await? {
            let Some(schema_name) = segment_name(&schema) else {
                continue;
            };
            for dir in self
                .store
                .list_dirs(&format!("{}/{schema}", self.pipeline))
                .await?
            {
                let Some(table_name) = segment_name(&dir) else {
                    continue;
                };
                let table = TableId::new(schema_name.clone(), table_name);
                let (namespace, name) = identifier(&self.pipeline, &table);
                self.ready().await?;
                if self
                    .load_metadata(&table, &namespace, &name)
                    .await?
                    .is_some()
                {
                    found.push(table);
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Removes a table of this pipeline (before a fresh snapshot replaces an
    /// interrupted one): out of the catalog first, so no reader sees it
    /// half gone, then its files.
    pub async fn remove_table(&mut self, table: &TableId) -> Result<(), LakeError> {
        self.tables.remove(table);
        self.clock.forget(table);
        self.ready().await?;
        let (namespace, name) = identifier(&self.pipeline, table);
        match &self.catalog {
            Catalog::Sql(c) => c.drop_table(&namespace, &name).await?,
            Catalog::Rest(c) => c.drop_table(&namespace, &name).await?,
        }
        self.remove_current(table).await?;
        let rel = self.table_rel(table);
        let tombstone = format!(
            "{}/{}/.tidewater-removed-{}",
            self.pipeline,
            path_segment(&table.schema),
            path_segment(&table.table)
        );
        self.store.remove_tree(&rel, &tombstone).await
    }
}

/// Each of the batch's columns as the table stores it, and the table's
/// columns after this batch when they change: a new column gets the next
/// id; a type Iceberg widens in place (int → long, float → double, a
/// decimal's precision) is promoted; a narrower type than the table's is
/// written in the table's; any other change goes to a versioned column
/// (`name__v2`, the DESIGN §5 rule), never a lost value.
fn plan_columns(
    table: &TableId,
    batch: &Schema,
    current: &[IcebergField],
    last_column_id: i32,
) -> Result<(Vec<IcebergField>, Option<Vec<IcebergField>>), LakeError> {
    let known: HashMap<String, IcebergField> = current
        .iter()
        .map(|f| (f.name.clone(), f.clone()))
        .collect();
    let mut last_id = last_column_id.max(schema::highest_id(current));
    let wanted = iceberg_fields(batch, &known, &mut last_id)
        .map_err(|err| IcebergSink::failed(table, "writing to", err, ErrorClass::Definite))?;
    let mut fields = current.to_vec();
    let mut changed = false;
    let mut columns = Vec::with_capacity(wanted.len());
    for want in wanted {
        let Some(existing) = fields.iter().position(|f| f.name == want.name) else {
            changed = true;
            fields.push(want.clone());
            columns.push(want);
            continue;
        };
        let have = fields[existing].clone();
        if have.ty == want.ty {
            columns.push(have);
        } else if have.ty.promotes_to(&want.ty) {
            warn!(table = %table, column = %want.name, "column type widened; promoting it in place");
            changed = true;
            fields[existing].ty = want.ty.clone();
            fields[existing].doc = want.doc.clone().or(have.doc);
            columns.push(fields[existing].clone());
        } else if want.ty.promotes_to(&have.ty) {
            columns.push(have);
        } else {
            // A versioned column of this type, or the next free name.
            let versions: Vec<&IcebergField> = fields
                .iter()
                .filter(|f| f.name.starts_with(&format!("{}__v", want.name)))
                .collect();
            if let Some(version) = versions.iter().rev().find(|v| v.ty.holds(&want.ty)) {
                columns.push((*version).clone());
                continue;
            }
            let mut n = versions.len() + 2;
            while fields
                .iter()
                .any(|f| f.name == format!("{}__v{n}", want.name))
            {
                n += 1;
            }
            last_id += 1;
            let versioned = IcebergField {
                id: last_id,
                name: format!("{}__v{n}", want.name),
                ty: want.ty.clone(),
                required: false,
                doc: Some(format!(
                    "values of source column {} from a type change on; {}",
                    want.name,
                    want.doc.clone().unwrap_or_default()
                )),
            };
            warn!(
                table = %table,
                column = %want.name,
                lake_column = %versioned.name,
                "column type changed in a way Iceberg cannot widen in place: \
                 its values go to a new column from here on (readers: coalesce the versions)"
            );
            changed = true;
            fields.push(versioned.clone());
            columns.push(versioned);
        }
    }
    Ok((columns, changed.then_some(fields)))
}

/// The partition values of a batch's files: `day(_tw_commit_ts)` of its
/// first row (a batch never spans a commit, and a commit has one time).
fn partition_of(spec: &[PartitionField], batch: &RecordBatch) -> Vec<(String, Option<i32>)> {
    spec.iter()
        .filter(|f| f.transform == "day")
        .map(|f| {
            let day = batch
                .column_by_name("_tw_commit_ts")
                .filter(|c| !c.is_empty())
                .and_then(|c| {
                    c.as_primitive_opt::<deltalake::arrow::datatypes::TimestampMicrosecondType>()
                        .map(|c| c.value(0).div_euclid(86_400_000_000) as i32)
                });
            (f.name.clone(), day)
        })
        .collect()
}

fn partition_summaries(
    spec: &[PartitionField],
    files: &[DataFile],
) -> Option<Vec<avro::PartitionSummary>> {
    if spec.is_empty() {
        return Some(Vec::new());
    }
    Some(
        spec.iter()
            .enumerate()
            .map(|(i, _)| {
                let days: Vec<Option<i32>> = files
                    .iter()
                    .map(|f| f.partition.get(i).and_then(|(_, d)| *d))
                    .collect();
                let present: Vec<i32> = days.iter().flatten().copied().collect();
                avro::PartitionSummary {
                    contains_null: days.iter().any(Option::is_none),
                    contains_nan: Some(false),
                    lower: present.iter().min().map(|d| d.to_le_bytes().to_vec()),
                    upper: present.iter().max().map(|d| d.to_le_bytes().to_vec()),
                }
            })
            .collect(),
    )
}

fn current_schema_json(json: &Value) -> Value {
    let id = json["current-schema-id"].as_i64().unwrap_or(0);
    json["schemas"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|x| x["schema-id"].as_i64().unwrap_or(0) == id)
                .cloned()
        })
        .unwrap_or_else(|| json!({"type": "struct", "fields": []}))
}

fn rand_u64() -> u64 {
    let id = uuid::Uuid::new_v4();
    let bytes = id.as_bytes();
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

fn lake_schema(schema: &TableSchema) -> Schema {
    let mut fields: Vec<_> = schema.columns.iter().map(arrow_field).collect();
    fields.extend(metadata_fields());
    Schema::new(fields)
}

impl Sink for IcebergSink {
    type Error = LakeError;

    fn staged_bytes(&self) -> u64 {
        self.tables
            .values()
            .map(|t| {
                t.writer.as_ref().map_or(0, FileWriter::encoded)
                    + t.files.iter().map(|f| f.size as u64).sum::<u64>()
            })
            .sum()
    }

    async fn prepare(&mut self, schema: &TableSchema) -> Result<(), LakeError> {
        self.ensure_table(schema).await
    }

    async fn mark(&mut self, table: &TableId) -> Result<Option<Mark>, LakeError> {
        Ok(self.table_state(table).await?.map(|s| s.mark))
    }

    async fn write(&mut self, batch: ChangeBatch) -> Result<(), LakeError> {
        IcebergSink::write(self, batch).await
    }

    async fn latest_rows(
        &mut self,
        schema: &TableSchema,
        keys: &[Vec<Datum>],
    ) -> Result<HashMap<String, Vec<Datum>>, LakeError> {
        self.lookup_rows(schema, keys).await
    }

    async fn maintain(&mut self) {
        IcebergSink::maintain(self).await
    }

    fn note_ddl(&mut self, table: &TableId, seq: u64, statement: String) {
        // The schema history file is Delta-only for now.
        let _ = (table, seq, statement);
    }

    fn table_phase(&mut self, table: &TableId, phase: SnapshotPhase, mark: Mark) {
        self.table_phases.insert(table.clone(), (phase, mark));
    }

    async fn commit(
        &mut self,
        position: &str,
        phase: Option<SnapshotPhase>,
    ) -> Result<usize, LakeError> {
        IcebergSink::commit(self, position, phase).await
    }
}

#[cfg(test)]
mod maintenance_tests;
#[cfg(test)]
mod tests;
