//! The configured sink, whichever kind: the coordinator drives it through
//! the [`Sink`] contract, and keeps the pipeline's records in its
//! [`StateStore`] ([`AnyState`]): files next to the lake's tables, rows of
//! the warehouse's state schema. The start-up decisions are the same for
//! both.

use std::collections::HashMap;

use tidewater_core::state::{RecordKind, StateStore, TableState};
use tidewater_core::{ChangeBatch, Classified, Datum, Mark, Sink, SnapshotPhase};
use tidewater_core::{TableId, TableSchema};
use tidewater_kafka::{KafkaSink, KafkaState};
use tidewater_lake::{IcebergSink, LakeSink, LakeState};
use tidewater_warehouse::{WarehouseSink, WarehouseState};

use super::{PipelineError, Settings, SinkFailure};

pub enum AnySink {
    Lake(Box<LakeSink>),
    Iceberg(Box<IcebergSink>),
    Warehouse(Box<WarehouseSink>),
    Kafka(Box<KafkaSink>),
}

fn fail<E: Classified>(err: E) -> SinkFailure {
    SinkFailure::new(err)
}

pub(super) fn wrap<E: Classified>(err: E) -> PipelineError {
    PipelineError::Sink(fail(err))
}

/// The pipeline's records, wherever the sink keeps them.
#[derive(Clone)]
pub enum AnyState {
    Lake(LakeState),
    Warehouse(WarehouseState),
    Kafka(KafkaState),
}

impl StateStore for AnyState {
    type Error = SinkFailure;

    async fn get(&self, kind: RecordKind) -> Result<Option<String>, SinkFailure> {
        match self {
            AnyState::Lake(s) => s.get(kind).await.map_err(fail),
            AnyState::Warehouse(s) => s.get(kind).await.map_err(fail),
            AnyState::Kafka(s) => s.get(kind).await.map_err(fail),
        }
    }

    async fn put(&self, kind: RecordKind, text: &str) -> Result<(), SinkFailure> {
        match self {
            AnyState::Lake(s) => s.put(kind, text).await.map_err(fail),
            AnyState::Warehouse(s) => s.put(kind, text).await.map_err(fail),
            AnyState::Kafka(s) => s.put(kind, text).await.map_err(fail),
        }
    }

    async fn delete(&self, kind: RecordKind) -> Result<(), SinkFailure> {
        match self {
            AnyState::Lake(s) => s.delete(kind).await.map_err(fail),
            AnyState::Warehouse(s) => s.delete(kind).await.map_err(fail),
            AnyState::Kafka(s) => s.delete(kind).await.map_err(fail),
        }
    }

    fn corrupt(&self, kind: RecordKind, problem: String) -> SinkFailure {
        match self {
            AnyState::Lake(s) => fail(s.corrupt(kind, problem)),
            AnyState::Warehouse(s) => fail(s.corrupt(kind, problem)),
            AnyState::Kafka(s) => fail(s.corrupt(kind, problem)),
        }
    }
}

impl AnySink {
    /// The sink `settings` name, connected (warehouse) or opened (lake),
    /// with its settings applied.
    pub async fn open(settings: &Settings) -> Result<AnySink, PipelineError> {
        if let Some(kafka) = &settings.kafka {
            return Ok(AnySink::Kafka(Box::new(
                KafkaSink::connect(kafka.clone()).await.map_err(wrap)?,
            )));
        }
        Ok(match &settings.warehouse {
            Some(warehouse) => AnySink::Warehouse(Box::new(
                WarehouseSink::connect(warehouse.clone())
                    .await
                    .map_err(wrap)?,
            )),
            None if settings.iceberg.is_some() => {
                let catalog = settings.iceberg.clone().expect("checked");
                let mut lake = IcebergSink::new(settings.lake.clone(), &settings.pipeline, catalog);
                lake.set_maintenance(settings.maintenance);
                lake.set_partition_by_date(settings.partition_by_date);
                lake.set_target_file_size(settings.target_file_bytes);
                lake.set_soft_deletes(settings.soft_deletes);
                // A lake that refuses writes, or a catalog out of reach,
                // stops the start here, before the source does any work.
                lake.probe_writable().await.map_err(wrap)?;
                AnySink::Iceberg(Box::new(lake))
            }
            None => {
                let mut lake = LakeSink::new(settings.lake.clone(), &settings.pipeline);
                lake.set_maintenance(settings.maintenance);
                lake.set_partition_by_date(settings.partition_by_date);
                lake.set_target_file_size(settings.target_file_bytes);
                lake.set_current_state_deletion_vectors(settings.current_state_dvs);
                lake.set_soft_deletes(settings.soft_deletes);
                lake.set_changelog_retention(
                    settings.changelog_retention.0.clone(),
                    settings.changelog_retention.1,
                );
                // A lake that refuses writes stops the start here, before
                // the source does any work (a slot, a snapshot).
                lake.probe_writable().await.map_err(wrap)?;
                AnySink::Lake(Box::new(lake))
            }
        })
    }

    /// Where this sink keeps the pipeline's records.
    pub fn state(&self) -> AnyState {
        match self {
            AnySink::Lake(lake) => AnyState::Lake(lake.state()),
            AnySink::Iceberg(lake) => AnyState::Lake(lake.state()),
            AnySink::Warehouse(w) => AnyState::Warehouse(w.state()),
            AnySink::Kafka(k) => AnyState::Kafka(k.state()),
        }
    }

    pub async fn existing_tables(&mut self) -> Result<Vec<TableId>, PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.existing_tables().await.map_err(wrap),
            AnySink::Iceberg(lake) => lake.existing_tables().await.map_err(wrap),
            AnySink::Warehouse(w) => w.existing_tables().await.map_err(wrap),
            AnySink::Kafka(k) => k.existing_tables().map_err(wrap),
        }
    }

    pub async fn table_state(
        &mut self,
        table: &TableId,
    ) -> Result<Option<TableState>, PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.table_state(table).await.map_err(wrap),
            AnySink::Iceberg(lake) => lake.table_state(table).await.map_err(wrap),
            AnySink::Warehouse(w) => Ok(w
                .table_state(table)
                .await
                .map_err(wrap)?
                .map(|record| record.state())),
            AnySink::Kafka(k) => k.table_state(table).map_err(wrap),
        }
    }

    pub async fn remove_table(&mut self, table: &TableId) -> Result<(), PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.remove_table(table).await.map_err(wrap),
            AnySink::Iceberg(lake) => lake.remove_table(table).await.map_err(wrap),
            AnySink::Warehouse(w) => w.remove_table(table).await.map_err(wrap),
            AnySink::Kafka(k) => k.remove_table(table).await.map_err(wrap),
        }
    }

    /// The key of the row at `mark` (where an interrupted MySQL snapshot
    /// stood). The warehouse keeps no marks per row: None, so such a
    /// snapshot starts over.
    pub async fn key_at_mark(
        &mut self,
        schema: &TableSchema,
        mark: Mark,
    ) -> Result<Option<Vec<Datum>>, PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.key_at_mark(schema, mark).await.map_err(wrap),
            AnySink::Iceberg(lake) => lake.key_at_mark(schema, mark).await.map_err(wrap),
            AnySink::Warehouse(_) | AnySink::Kafka(_) => Ok(None),
        }
    }
}

impl Sink for AnySink {
    type Error = SinkFailure;

    async fn prepare(&mut self, schema: &TableSchema) -> Result<(), SinkFailure> {
        match self {
            AnySink::Lake(s) => Sink::prepare(s.as_mut(), schema).await.map_err(fail),
            AnySink::Iceberg(s) => Sink::prepare(s.as_mut(), schema).await.map_err(fail),
            AnySink::Warehouse(s) => Sink::prepare(s.as_mut(), schema).await.map_err(fail),
            AnySink::Kafka(s) => Sink::prepare(s.as_mut(), schema).await.map_err(fail),
        }
    }

    async fn mark(&mut self, table: &TableId) -> Result<Option<Mark>, SinkFailure> {
        match self {
            AnySink::Lake(s) => Sink::mark(s.as_mut(), table).await.map_err(fail),
            AnySink::Iceberg(s) => Sink::mark(s.as_mut(), table).await.map_err(fail),
            AnySink::Warehouse(s) => Sink::mark(s.as_mut(), table).await.map_err(fail),
            AnySink::Kafka(s) => Sink::mark(s.as_mut(), table).await.map_err(fail),
        }
    }

    async fn write(&mut self, batch: ChangeBatch) -> Result<(), SinkFailure> {
        match self {
            AnySink::Lake(s) => Sink::write(s.as_mut(), batch).await.map_err(fail),
            AnySink::Iceberg(s) => Sink::write(s.as_mut(), batch).await.map_err(fail),
            AnySink::Warehouse(s) => Sink::write(s.as_mut(), batch).await.map_err(fail),
            AnySink::Kafka(s) => Sink::write(s.as_mut(), batch).await.map_err(fail),
        }
    }

    async fn latest_rows(
        &mut self,
        schema: &TableSchema,
        keys: &[Vec<Datum>],
    ) -> Result<HashMap<String, Vec<Datum>>, SinkFailure> {
        match self {
            AnySink::Lake(s) => Sink::latest_rows(s.as_mut(), schema, keys)
                .await
                .map_err(fail),
            AnySink::Iceberg(s) => Sink::latest_rows(s.as_mut(), schema, keys)
                .await
                .map_err(fail),
            AnySink::Warehouse(s) => Sink::latest_rows(s.as_mut(), schema, keys)
                .await
                .map_err(fail),
            AnySink::Kafka(s) => Sink::latest_rows(s.as_mut(), schema, keys)
                .await
                .map_err(fail),
        }
    }

    fn note_ddl(&mut self, table: &TableId, seq: u64, statement: String) {
        match self {
            AnySink::Lake(s) => Sink::note_ddl(s.as_mut(), table, seq, statement),
            AnySink::Iceberg(s) => Sink::note_ddl(s.as_mut(), table, seq, statement),
            AnySink::Warehouse(s) => Sink::note_ddl(s.as_mut(), table, seq, statement),
            AnySink::Kafka(s) => Sink::note_ddl(s.as_mut(), table, seq, statement),
        }
    }

    async fn forget(
        &mut self,
        table: &TableId,
        keys: &std::collections::HashSet<u128>,
    ) -> Result<Option<tidewater_core::Erased>, SinkFailure> {
        match self {
            AnySink::Lake(s) => Sink::forget(s.as_mut(), table, keys).await.map_err(fail),
            AnySink::Iceberg(s) => Sink::forget(s.as_mut(), table, keys).await.map_err(fail),
            AnySink::Warehouse(s) => Sink::forget(s.as_mut(), table, keys).await.map_err(fail),
            AnySink::Kafka(s) => Sink::forget(s.as_mut(), table, keys).await.map_err(fail),
        }
    }

    async fn maintain(&mut self) {
        match self {
            AnySink::Lake(s) => Sink::maintain(s.as_mut()).await,
            AnySink::Iceberg(s) => Sink::maintain(s.as_mut()).await,
            AnySink::Warehouse(s) => Sink::maintain(s.as_mut()).await,
            AnySink::Kafka(s) => Sink::maintain(s.as_mut()).await,
        }
    }

    fn table_phase(&mut self, table: &TableId, phase: SnapshotPhase, mark: Mark) {
        match self {
            AnySink::Lake(s) => Sink::table_phase(s.as_mut(), table, phase, mark),
            AnySink::Iceberg(s) => Sink::table_phase(s.as_mut(), table, phase, mark),
            AnySink::Warehouse(s) => Sink::table_phase(s.as_mut(), table, phase, mark),
            AnySink::Kafka(s) => Sink::table_phase(s.as_mut(), table, phase, mark),
        }
    }

    fn staged_bytes(&self) -> u64 {
        match self {
            AnySink::Lake(s) => Sink::staged_bytes(s.as_ref()),
            AnySink::Iceberg(s) => Sink::staged_bytes(s.as_ref()),
            AnySink::Warehouse(s) => Sink::staged_bytes(s.as_ref()),
            AnySink::Kafka(s) => Sink::staged_bytes(s.as_ref()),
        }
    }

    async fn commit(
        &mut self,
        position: &str,
        phase: Option<SnapshotPhase>,
    ) -> Result<usize, SinkFailure> {
        match self {
            AnySink::Lake(s) => Sink::commit(s.as_mut(), position, phase)
                .await
                .map_err(fail),
            AnySink::Iceberg(s) => Sink::commit(s.as_mut(), position, phase)
                .await
                .map_err(fail),
            AnySink::Warehouse(s) => Sink::commit(s.as_mut(), position, phase)
                .await
                .map_err(fail),
            AnySink::Kafka(s) => Sink::commit(s.as_mut(), position, phase)
                .await
                .map_err(fail),
        }
    }
}
