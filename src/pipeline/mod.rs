//! One run of the pipeline: start (decide from the records what to do),
//! then drive the source into the sink until shutdown or error.
//!
//! ```text
//!  run ─▶ launch: connect, preflight, read the records ─▶ start::decide ─▶ carry it out
//!                                                                          │
//!        source_task ──(bounded channel)──▶ coordinator ──▶ sink + state ◀─┘
//!              ▲                                 │
//!              └──────── acknowledgements ◀──────┘ (after each commit)
//! ```
//!
//! * [`settings`]: what a run works from, resolved from the config;
//! * [`start`]: the start-up decision, a pure function with table tests;
//! * `launch`: gathers the facts for it and carries the plan out;
//! * `source_task`: the task that owns the source;
//! * `coordinator`: batches, checkpoints, acknowledgements, table stops;
//! * `progress`: snapshot progress lines;
//! * [`requests`]: copies asked for while streaming (command line, signal table);
//! * `sink`: the configured sink and the store of the pipeline's records;
//! * [`error`]: the pipeline's errors and their classes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tidewater_mysql::MysqlSource;
use tidewater_postgres::PostgresSource;
use tokio::sync::watch;
use tracing::{info, warn};

mod coordinator;
#[cfg(test)]
mod coordinator_tests;
pub mod error;
mod launch;
mod progress;
pub mod requests;
pub mod settings;
mod sink;
mod source_task;
pub mod start;

pub use error::{format_problems, PipelineError, SinkFailure};
pub use settings::{Settings, SourceSettings};

/// Records `tables` as asked to be copied again, for the running pipeline
/// to pick up (see [`requests`]); the tables already asked for stay.
pub async fn ask_copies(
    settings: &Settings,
    tables: &[tidewater_core::TableId],
) -> Result<(), PipelineError> {
    use tidewater_core::state::{CopyRequests, StateStore};
    let state = records(settings).await?;
    let mut recorded = state
        .read::<CopyRequests>()
        .await
        .map_err(error::sink_error)?
        .unwrap_or_default();
    for table in tables {
        if !recorded.0.contains(table) {
            recorded.0.push(table.clone());
        }
    }
    state.write(&recorded).await.map_err(error::sink_error)
}

/// Records an erasure for the running pipeline to do (see
/// `tidewater forget`); the requests already recorded stay.
pub async fn ask_forget(
    settings: &Settings,
    request: tidewater_core::state::ForgetRequest,
) -> Result<(), PipelineError> {
    use tidewater_core::state::{ForgetRequests, StateStore};
    let state = records(settings).await?;
    let mut recorded = state
        .read::<ForgetRequests>()
        .await
        .map_err(error::sink_error)?
        .unwrap_or_default();
    recorded.requests.push(request);
    state.write(&recorded).await.map_err(error::sink_error)
}

/// Adds `erasure` to the audit of erasures.
pub async fn record_erasure(
    settings: &Settings,
    erasure: tidewater_core::state::Erasure,
) -> Result<(), PipelineError> {
    use tidewater_core::state::{Erasures, StateStore};
    let state = records(settings).await?;
    let mut audit = state
        .read::<Erasures>()
        .await
        .map_err(error::sink_error)?
        .unwrap_or_default();
    audit.erasures.push(erasure);
    state.write(&audit).await.map_err(error::sink_error)
}

/// The audit of erasures done.
pub async fn erasures(
    settings: &Settings,
) -> Result<tidewater_core::state::Erasures, PipelineError> {
    use tidewater_core::state::{Erasures, StateStore};
    let state = records(settings).await?;
    Ok(state
        .read::<Erasures>()
        .await
        .map_err(error::sink_error)?
        .unwrap_or_default())
}

/// The source position the pipeline acknowledged last, as recorded beside
/// its sink (binlog sources; a slot keeps its own).
pub async fn acknowledged_position(settings: &Settings) -> Result<Option<String>, PipelineError> {
    use tidewater_core::state::{SourcePosition, StateStore};
    let state = records(settings).await?;
    Ok(state
        .read::<SourcePosition>()
        .await
        .map_err(error::sink_error)?
        .map(|p| p.position))
}

/// The store of the pipeline's records, opened beside a running process:
/// a warehouse's state is read and written without its lock (the running
/// process holds it), a lake's record is a file.
async fn records(settings: &Settings) -> Result<sink::AnyState, PipelineError> {
    Ok(match &settings.warehouse {
        None if settings.kafka.is_some() => sink::AnyState::Kafka(
            tidewater_kafka::KafkaState::open(settings.kafka.as_ref().expect("checked"))
                .await
                .map_err(sink::wrap)?,
        ),
        Some(warehouse) => sink::AnyState::Warehouse(
            tidewater_warehouse::WarehouseSink::inspect(warehouse.clone())
                .await
                .map_err(sink::wrap)?
                .state(),
        ),
        None => sink::AnyState::Lake(tidewater_lake::LakeState::new(
            settings.lake.clone(),
            &settings.pipeline,
        )),
    })
}

/// What `run` is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Snapshot if needed, then stream until shutdown.
    Continuous,
    /// Snapshot if needed, then stop.
    SnapshotOnly,
}

/// How a run ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Shutdown,
    SnapshotComplete,
    AlreadySnapshotted,
}

/// One run of the pipeline, from connecting to shutdown or error. The caller
/// retries transient errors by calling it again: every start re-reads the
/// durable marks, so a retry is the same as a restart after a crash.
///
/// A stop during the start (connecting, preflight, creating the
/// publication and the slot, opening the snapshot) ends it at once: what
/// the source server is doing for it is cancelled (a statement waiting for
/// another session's lock would otherwise wait for it, and then still
/// create the slot). Once the pipeline runs, a stop flushes, commits and
/// acknowledges first.
pub async fn run(
    settings: &Settings,
    mode: Mode,
    shutdown: watch::Receiver<bool>,
) -> Result<Outcome, PipelineError> {
    let started = AtomicBool::new(false);
    // Boxed so that dropping it below really ends it (closing its sessions).
    let mut work = Box::pin(async {
        match &settings.source {
            SourceSettings::Postgres(config) => {
                let source = PostgresSource::connect(config.clone()).await?;
                launch::launch(settings, source, mode, shutdown.clone(), &started).await
            }
            SourceSettings::Mysql(config) => {
                let source = MysqlSource::connect(config.clone()).await?;
                launch::launch(settings, source, mode, shutdown.clone(), &started).await
            }
        }
    });
    let mut stop = shutdown.clone();
    tokio::select! {
        result = &mut work => return result,
        _ = stopped(&mut stop) => {}
    }
    if started.load(Ordering::SeqCst) {
        return work.await;
    }
    info!("stopped while starting: cancelling what the source server does for this pipeline");
    // Cancel first, while the sessions are still open (the statements fail
    // and roll back), then drop them with the unfinished start.
    let cancelled = match &settings.source {
        SourceSettings::Postgres(config) => {
            tokio::time::timeout(CANCEL_WAIT, PostgresSource::cancel_sessions(config))
                .await
                .map(|r| r.map_err(|e| tidewater_core::error_chain(&e)))
        }
        SourceSettings::Mysql(_) => Ok(Ok(0)),
    };
    match cancelled {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            warn!(error = %error, "could not cancel the pipeline's statements on the source")
        }
        Err(_) => warn!("cancelling the pipeline's statements on the source took too long"),
    }
    drop(work);
    Ok(Outcome::Shutdown)
}

/// How long a stop during the start waits for the source server to take
/// its cancel request.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Resolves once `shutdown` is true (never if its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
