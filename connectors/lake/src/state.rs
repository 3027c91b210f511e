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
