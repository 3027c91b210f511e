//! The pipeline's records ([`tidewater_core::state`]) as rows of
//! `<state_schema>.pipeline_state` (pipeline, key, value), written on the
//! sink's own session: one upsert is atomic, and one made while the sink's
//! transaction is open commits with it. The encoding is the core's; this
//! store only says where the text lives.

use std::sync::Arc;

use tidewater_core::state::{RecordKind, StateStore};
use tokio_postgres::Client;

use crate::error::WarehouseError;

/// The `pipeline_state` rows of one pipeline.
#[derive(Clone)]
pub struct WarehouseState {
    client: Arc<Client>,
    /// `<state_schema>.pipeline_state`, quoted.
    table: String,
    pipeline: String,
}

impl WarehouseState {
    pub(crate) fn new(client: Arc<Client>, table: String, pipeline: String) -> Self {
        WarehouseState {
            client,
            table,
            pipeline,
        }
    }
}

impl StateStore for WarehouseState {
    type Error = WarehouseError;

    async fn get(&self, kind: RecordKind) -> Result<Option<String>, WarehouseError> {
        let key = kind.key();
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT value FROM {} WHERE pipeline = $1 AND key = $2",
                    self.table
                ),
                &[&self.pipeline, &key],
            )
            .await
            .map_err(WarehouseError::server(format!("reading the {key}")))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn put(&self, kind: RecordKind, text: &str) -> Result<(), WarehouseError> {
        let key = kind.key();
        self.client
            .execute(
                &format!(
                    "INSERT INTO {} (pipeline, key, value) VALUES ($1, $2, $3)
                     ON CONFLICT (pipeline, key) DO UPDATE SET value = EXCLUDED.value",
                    self.table
                ),
                &[&self.pipeline, &key, &text],
            )
            .await
            .map(|_| ())
            .map_err(WarehouseError::server(format!("writing the {key}")))
    }

    async fn delete(&self, kind: RecordKind) -> Result<(), WarehouseError> {
        let key = kind.key();
        self.client
            .execute(
                &format!(
                    "DELETE FROM {} WHERE pipeline = $1 AND key = $2",
                    self.table
                ),
                &[&self.pipeline, &key],
            )
            .await
            .map(|_| ())
            .map_err(WarehouseError::server(format!("writing the {key}")))
    }

    fn corrupt(&self, kind: RecordKind, problem: String) -> WarehouseError {
        WarehouseError::State {
            location: format!(
                "{}, pipeline {:?}, key {:?}",
                self.table,
                self.pipeline,
                kind.key()
            ),
            detail: problem,
            hint: kind.fix(),
        }
    }
}
