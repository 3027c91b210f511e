//! The lake sink: one Delta Lake change-log table per source table, written
//! exactly once. See [`sink`] for the commit protocol and [`narrow`] for how
//! Arrow types are stored in Delta.

pub mod digest;
mod error;
pub mod history;
pub mod iceberg;
pub mod layout;
pub mod lease;
mod merges;
pub mod narrow;
pub mod restore;
pub mod sink;
pub(crate) mod soft_delete;
mod state;
mod stats;
pub mod store;

pub use error::{quiet_caught_storage_panics, LakeError, Refusal, StateFile};
pub use iceberg::catalog::{Catalog, SqlBackend, SqlCatalog};
pub use iceberg::rest::RestCatalog;
pub use iceberg::IcebergSink;
pub use sink::dv::DeletionVectors;
pub use sink::{
    Compaction, CompactionReport, LakeFile, LakeFiles, LakeLog, LakeSink, MaintenancePolicy,
};
pub use soft_delete::{soft_delete_fields, with_soft_delete_flags};
pub use state::LakeState;
pub use store::{LakeLocation, LakeStore};
pub use tidewater_core::state::TableState;
pub use tidewater_core::StoppedTable;
