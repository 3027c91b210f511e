//! The pipeline's records ([`tidewater_core::state`]) as files in the
//! pipeline's folder of the lake, next to its tables: one file per record,
//! replaced atomically (a rename on disk, one PUT on S3). The encoding is
//! the core's; this store only says where the text lives.

use tidewater_core::state::{RecordKind, StateStore};

use crate::error::{LakeError, StateFile};
use crate::store::LakeStore;

/// The files of one pipeline's records.
#[derive(Debug, Clone)]
pub struct LakeState {
    store: LakeStore,
    pipeline: String,
}

impl LakeState {
    pub fn new(store: LakeStore, pipeline: &str) -> Self {
        LakeState {
            store,
            pipeline: pipeline.to_string(),
        }
    }

    fn rel(&self, kind: RecordKind) -> String {
        format!("{}/{}", self.pipeline, kind.file())
    }
}

impl StateStore for LakeState {
    type Error = LakeError;

    async fn get(&self, kind: RecordKind) -> Result<Option<String>, LakeError> {
        self.store.read(&self.rel(kind)).await
    }

    async fn put(&self, kind: RecordKind, text: &str) -> Result<(), LakeError> {
        self.store.write(&self.rel(kind), text).await
    }

    async fn delete(&self, kind: RecordKind) -> Result<(), LakeError> {
        self.store.delete(&self.rel(kind)).await
    }

    fn corrupt(&self, kind: RecordKind, problem: String) -> LakeError {
        LakeError::CorruptState {
            location: self.store.describe(&self.rel(kind)),
            file: StateFile::Record(kind),
            problem,
        }
    }
}

/// What a table's next commit records, or None when it has nothing to
/// commit: no new rows (`pending`) and no snapshot phase to record. `copy`
/// is the phase and floor mark of a table copied while the others stream
/// (see [`tidewater_core::Sink::table_phase`]), which overrides the
/// commit's own `phase`. Both lake formats commit on this one rule.
pub(crate) fn commit_plan(
    pending: Option<tidewater_core::Mark>,
    state: Option<&tidewater_core::state::TableState>,
    copy: Option<(tidewater_core::SnapshotPhase, tidewater_core::Mark)>,
    phase: Option<tidewater_core::SnapshotPhase>,
) -> Option<(tidewater_core::Mark, bool)> {
    use tidewater_core::{Mark, SnapshotPhase};
    let phase = copy.map(|(phase, _)| phase).or(phase);
    let phase_changes = match (phase, state) {
        (Some(SnapshotPhase::Done), Some(state)) => !state.snapshot_done,
        (Some(_), None) => true,
        _ => false,
    };
    if pending.is_none() && !phase_changes {
        return None;
    }
    let mark = pending
        .or(state.map(|s| s.mark))
        .unwrap_or(Mark::ZERO)
        .max(copy.map_or(Mark::ZERO, |(_, floor)| floor));
    let snapshot_done = match phase {
        Some(SnapshotPhase::Done) => true,
        Some(SnapshotPhase::Running) => false,
        None => state.is_none_or(|s| s.snapshot_done),
    };
    Some((mark, snapshot_done))
}
