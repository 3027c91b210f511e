//! The configured sink, whichever kind: the coordinator drives it through
//! the [`Sink`] contract, and the startup logic reads and writes the same
//! bookkeeping (slot marker, table states, stopped tables, snapshot plan,
//! acknowledged binlog position) through it. The lake keeps that
//! bookkeeping in files next to its tables, the warehouse in its state
//! tables; the startup decisions are the same for both.

use std::collections::HashMap;

use tidewater_core::{ChangeBatch, Classified, Datum, Mark, Sink, SnapshotPhase, StoppedTable};
use tidewater_core::{TableId, TableSchema};
use tidewater_lake::{LakeSink, SlotMarker, SourcePositionFile, TableState};
use tidewater_warehouse::{Marker, WarehouseSink};

use crate::pipeline::{PipelineError, Settings, SinkFailure};

pub enum AnySink {
    Lake(Box<LakeSink>),
    Warehouse(Box<WarehouseSink>),
}

fn fail<E: Classified>(err: E) -> SinkFailure {
    SinkFailure::new(err)
}

fn wrap<E: Classified>(err: E) -> PipelineError {
    PipelineError::Sink(fail(err))
}

/// Where the acknowledged position of a binlog source is recorded.
pub enum PositionStore {
    Lake(SourcePositionFile),
    Warehouse(tidewater_warehouse::sink::PositionWriter),
}

impl PositionStore {
    pub async fn write(&self, position: &str) -> Result<(), PipelineError> {
        match self {
            PositionStore::Lake(file) => file.write(position).await.map_err(wrap),
            PositionStore::Warehouse(writer) => writer.write(position).await.map_err(wrap),
        }
    }
}

impl AnySink {
    /// The sink `settings` name, connected (warehouse) or opened (lake),
    /// with its settings applied.
    pub async fn open(settings: &Settings) -> Result<AnySink, PipelineError> {
        Ok(match &settings.warehouse {
            Some(warehouse) => AnySink::Warehouse(Box::new(
                WarehouseSink::connect(warehouse.clone())
                    .await
                    .map_err(wrap)?,
            )),
            None => {
                let mut lake = LakeSink::new(settings.lake.clone(), &settings.pipeline);
                lake.set_maintenance(settings.maintenance);
                lake.set_partition_by_date(settings.partition_by_date);
                lake.set_target_file_size(settings.target_file_bytes);
                // A lake that refuses writes stops the start here, before
                // the source does any work (a slot, a snapshot).
                lake.probe_writable().await.map_err(wrap)?;
                AnySink::Lake(Box::new(lake))
            }
        })
    }

    pub fn position_store(&self) -> PositionStore {
        match self {
            AnySink::Lake(lake) => PositionStore::Lake(lake.source_position_file()),
            AnySink::Warehouse(w) => PositionStore::Warehouse(w.position_writer()),
        }
    }

    pub async fn existing_tables(&self) -> Result<Vec<TableId>, PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.existing_tables().await.map_err(wrap),
            AnySink::Warehouse(w) => w.existing_tables().await.map_err(wrap),
        }
    }

    pub async fn table_state(
        &mut self,
        table: &TableId,
    ) -> Result<Option<TableState>, PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.table_state(table).await.map_err(wrap),
            AnySink::Warehouse(w) => {
                Ok(w.table_state(table)
                    .await
                    .map_err(wrap)?
                    .map(|s| TableState {
                        mark: s.mark,
                        position: s.position,
                        snapshot_done: s.snapshot_done,
                        version: s.commits.max(0) as u64,
                        commits: s.commits,
                    }))
            }
        }
    }

    pub async fn marker(&self) -> Result<Option<SlotMarker>, PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.marker().await.map_err(wrap),
            AnySink::Warehouse(w) => Ok(w.marker().await.map_err(wrap)?.map(|m| match m {
                Marker::Snapshot(slot) => SlotMarker::Snapshot(slot),
                Marker::Stream(slot) => SlotMarker::Stream(slot),
            })),
        }
    }

    pub async fn write_marker(&self, marker: &SlotMarker) -> Result<(), PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.write_marker(marker).await.map_err(wrap),
            AnySink::Warehouse(w) => {
                let marker = match marker {
                    SlotMarker::Snapshot(slot) => Marker::Snapshot(slot.clone()),
                    SlotMarker::Stream(slot) => Marker::Stream(slot.clone()),
                };
                w.write_marker(&marker).await.map_err(wrap)
            }
        }
    }

    pub async fn stopped_tables(&self) -> Result<Vec<StoppedTable>, PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.stopped_tables().await.map_err(wrap),
            AnySink::Warehouse(w) => w.stopped_tables().await.map_err(wrap),
        }
    }

    pub async fn write_stopped_tables(
        &self,
        stopped: &[StoppedTable],
    ) -> Result<(), PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.write_stopped_tables(stopped).await.map_err(wrap),
            AnySink::Warehouse(w) => w.write_stopped_tables(stopped).await.map_err(wrap),
        }
    }

    pub async fn remove_table(&mut self, table: &TableId) -> Result<(), PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.remove_table(table).await.map_err(wrap),
            AnySink::Warehouse(w) => w.remove_table(table).await.map_err(wrap),
        }
    }

    pub async fn snapshot_plan(&self) -> Result<Option<String>, PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.snapshot_plan().await.map_err(wrap),
            AnySink::Warehouse(w) => w.snapshot_plan().await.map_err(wrap),
        }
    }

    /// The config-class error for a recorded snapshot plan that does not
    /// parse, naming where it is kept.
    pub fn corrupt_plan(&self, problem: String) -> PipelineError {
        match self {
            AnySink::Lake(lake) => wrap(lake.corrupt_plan(problem)),
            AnySink::Warehouse(w) => wrap(w.corrupt_plan(problem)),
        }
    }

    pub async fn write_snapshot_plan(&self, plan: &str) -> Result<(), PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.write_snapshot_plan(plan).await.map_err(wrap),
            AnySink::Warehouse(w) => w.write_snapshot_plan(plan).await.map_err(wrap),
        }
    }

    pub async fn source_position(&self) -> Result<Option<String>, PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.source_position().await.map_err(wrap),
            AnySink::Warehouse(w) => w.source_position().await.map_err(wrap),
        }
    }

    pub async fn clear_source_position(&self) -> Result<(), PipelineError> {
        match self {
            AnySink::Lake(lake) => lake.clear_source_position().await.map_err(wrap),
            AnySink::Warehouse(w) => w.clear_source_position().await.map_err(wrap),
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
            AnySink::Warehouse(_) => Ok(None),
        }
    }
}

impl Sink for AnySink {
    type Error = SinkFailure;

    async fn prepare(&mut self, schema: &TableSchema) -> Result<(), SinkFailure> {
        match self {
            AnySink::Lake(s) => Sink::prepare(s.as_mut(), schema).await.map_err(fail),
            AnySink::Warehouse(s) => Sink::prepare(s.as_mut(), schema).await.map_err(fail),
        }
    }

    async fn mark(&mut self, table: &TableId) -> Result<Option<Mark>, SinkFailure> {
        match self {
            AnySink::Lake(s) => Sink::mark(s.as_mut(), table).await.map_err(fail),
            AnySink::Warehouse(s) => Sink::mark(s.as_mut(), table).await.map_err(fail),
        }
    }

    async fn write(&mut self, batch: ChangeBatch) -> Result<(), SinkFailure> {
        match self {
            AnySink::Lake(s) => Sink::write(s.as_mut(), batch).await.map_err(fail),
            AnySink::Warehouse(s) => Sink::write(s.as_mut(), batch).await.map_err(fail),
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
            AnySink::Warehouse(s) => Sink::latest_rows(s.as_mut(), schema, keys)
                .await
                .map_err(fail),
        }
    }

    fn note_ddl(&mut self, table: &TableId, seq: u64, statement: String) {
        match self {
            AnySink::Lake(s) => Sink::note_ddl(s.as_mut(), table, seq, statement),
            AnySink::Warehouse(s) => Sink::note_ddl(s.as_mut(), table, seq, statement),
        }
    }

    async fn maintain(&mut self) {
        match self {
            AnySink::Lake(s) => Sink::maintain(s.as_mut()).await,
            AnySink::Warehouse(s) => Sink::maintain(s.as_mut()).await,
        }
    }

    async fn record_stopped(&mut self, stopped: &[StoppedTable]) -> Result<(), SinkFailure> {
        match self {
            AnySink::Lake(s) => Sink::record_stopped(s.as_mut(), stopped)
                .await
                .map_err(fail),
            AnySink::Warehouse(s) => Sink::record_stopped(s.as_mut(), stopped)
                .await
                .map_err(fail),
        }
    }

    fn table_phase(&mut self, table: &TableId, phase: SnapshotPhase, mark: Mark) {
        match self {
            AnySink::Lake(s) => Sink::table_phase(s.as_mut(), table, phase, mark),
            AnySink::Warehouse(s) => Sink::table_phase(s.as_mut(), table, phase, mark),
        }
    }

    fn staged_bytes(&self) -> u64 {
        match self {
            AnySink::Lake(s) => Sink::staged_bytes(s.as_ref()),
            AnySink::Warehouse(s) => Sink::staged_bytes(s.as_ref()),
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
            AnySink::Warehouse(s) => Sink::commit(s.as_mut(), position, phase)
                .await
                .map_err(fail),
        }
    }
}
