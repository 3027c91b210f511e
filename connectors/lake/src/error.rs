use std::path::PathBuf;

use deltalake::arrow::error::ArrowError;
use deltalake::DeltaTableError;
use tidewater_core::{ErrorClass, TableId};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LakeError {
    #[error("{action} lake table {table}")]
    Delta {
        table: TableId,
        action: &'static str,
        #[source]
        source: Box<DeltaTableError>,
    },
    #[error("converting a batch of {table} to lake types")]
    Arrow {
        table: TableId,
        #[source]
        source: ArrowError,
    },
    #[error("lake path {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another process committed to lake table {table} as pipeline {pipeline} \
         (its transaction {theirs}, this one expected {ours}): two tidewater processes write the same lake\n\
         hint: stop one of them; every running pipeline needs its own name or its own sink.uri \
         (this process stopped before writing anything twice)"
    )]
    ConcurrentWriter {
        table: TableId,
        pipeline: String,
        theirs: String,
        ours: String,
    },
    #[error("opening the lake at {location}")]
    Store {
        location: String,
        #[source]
        source: Box<DeltaTableError>,
    },
    #[error("{action} lake table {table}: the storage library failed ({what}); retrying from the durable marks")]
    Panicked {
        table: TableId,
        action: &'static str,
        what: String,
    },
    #[error("object storage at {location}")]
    Remote {
        location: String,
        #[source]
        source: Box<deltalake::ObjectStoreError>,
    },
}

impl tidewater_core::Classified for LakeError {
    fn class(&self) -> ErrorClass {
        LakeError::class(self)
    }
}

impl LakeError {
    pub(crate) fn delta(table: &TableId, action: &'static str, source: DeltaTableError) -> Self {
        LakeError::Delta {
            table: table.clone(),
            action,
            source: Box::new(source),
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            LakeError::Delta { source, .. } => match source.as_ref() {
                DeltaTableError::ObjectStore { .. }
                | DeltaTableError::Io { .. }
                | DeltaTableError::VersionAlreadyExists(_) => ErrorClass::Transient,
                _ => ErrorClass::Definite,
            },
            LakeError::Arrow { .. } => ErrorClass::Definite,
            LakeError::Io { .. } => ErrorClass::Transient,
            LakeError::ConcurrentWriter { .. } | LakeError::Store { .. } => ErrorClass::Config,
            LakeError::Panicked { .. } => ErrorClass::Transient,
            // Credentials refused and missing buckets do not fix themselves;
            // the rest (network, throttling, 5xx) is worth a retry.
            LakeError::Remote { source, .. } => match source.as_ref() {
                deltalake::ObjectStoreError::PermissionDenied { .. }
                | deltalake::ObjectStoreError::Unauthenticated { .. } => ErrorClass::Config,
                _ => ErrorClass::Transient,
            },
        }
    }
}
