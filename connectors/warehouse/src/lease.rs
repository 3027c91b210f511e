//! The pipeline's lease in the warehouse: a session-level advisory lock on
//! a connection of its own, held for the life of the process.
//!
//! ```text
//!  lease connection ── pg_try_advisory_lock('tw', hashtext('tidewater-lease:<pipeline>'))
//!                      application_name = 'tidewater lease <pid>@<host>'
//! ```
//!
//! The server ends the lock with the session: a killed holder's socket
//! closes and the next start takes it (after the server noticed, which a
//! start waits for when the holder is provably gone). A second process
//! finds the lock held and reads who holds it from `pg_locks` and
//! `pg_stat_activity`. The lock is not the sink's own (taken per attempt
//! by [`crate::WarehouseSink::connect`]): the lease is taken once, before
//! the source is touched, and outlives the sink's retries.

use std::time::{Duration, Instant};

use tidewater_core::Holder;
use tokio_postgres::Client;

use crate::error::WarehouseError;
use crate::sink::WarehouseSettings;
use crate::types::literal;

/// The first key of tidewater's advisory locks ("tw").
const LOCK_CLASS: i32 = 0x7477;

/// How long a start waits for a lock whose holder is provably gone (its
/// session ends once the server notices the closed socket).
const GONE_WAIT: Duration = Duration::from_secs(30);

/// How long a start retries a lock held by a live process before it is
/// refused (one `status` may hold nothing, but a restart may race its own
/// predecessor's last moments).
const HELD_WAIT: Duration = Duration::from_secs(1);

/// What acquiring found.
pub enum Acquired {
    Taken(WarehouseLease),
    /// Held by another process, named when it can be.
    Held(Option<Holder>),
}

/// A held warehouse lease: the connection whose session holds the lock.
pub struct WarehouseLease {
    client: Client,
}

fn key(settings: &WarehouseSettings) -> String {
    format!("tidewater-lease:{}", settings.pipeline)
}

async fn connect(settings: &WarehouseSettings, name: &str) -> Result<Client, WarehouseError> {
    crate::sink::session(
        settings,
        "warehouse lease connection ended",
        &format!("SET application_name = {}", literal(name)),
    )
    .await
}

/// The `application_name` of the lease session: who holds it.
fn session_name(holder: &Holder) -> String {
    // Postgres keeps 63 bytes of it; the host goes last.
    let mut name = format!("tidewater lease {}@{}", holder.pid, holder.host);
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// The holder named by a lease session (`since` is its session's start).
fn holder_of(name: &str, since: String) -> Option<Holder> {
    let rest = name.strip_prefix("tidewater lease ")?;
    let (pid, host) = rest.split_once('@')?;
    Some(Holder {
        host: host.to_string(),
        pid: pid.parse().ok()?,
        since,
    })
}

impl WarehouseLease {
    /// Takes the pipeline's lease for `holder`, or names who holds it.
    pub async fn acquire(
        settings: &WarehouseSettings,
        holder: &Holder,
    ) -> Result<Acquired, WarehouseError> {
        let client = connect(settings, &session_name(holder)).await?;
        let started = Instant::now();
        loop {
            let taken: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, hashtext($2))",
                    &[&LOCK_CLASS, &key(settings)],
                )
                .await
                .map_err(WarehouseError::server("taking the pipeline lease"))?
                .get(0);
            if taken {
                return Ok(Acquired::Taken(WarehouseLease { client }));
            }
            let other = current_holder(&client, settings).await?;
            let wait = match &other {
                Some(other) if other.is_gone() => GONE_WAIT,
                _ => HELD_WAIT,
            };
            if started.elapsed() >= wait {
                return Ok(Acquired::Held(other));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether the session holding the lease is still there: when it is
    /// not (the warehouse restarted), the lock is gone with it and must be
    /// taken again.
    pub fn is_lost(&self) -> bool {
        self.client.is_closed()
    }

    /// Whether a process holds the pipeline's lease (`status`), and who.
    pub async fn probe(settings: &WarehouseSettings) -> Result<Option<Holder>, WarehouseError> {
        let client = connect(settings, "tidewater status").await?;
        let held: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                   AND classid = $1::int4::oid AND objid = hashtext($2)::oid \
                   AND objsubid = 2 AND granted)",
                &[&LOCK_CLASS, &key(settings)],
            )
            .await
            .map_err(WarehouseError::server("reading the pipeline lease"))?
            .get(0);
        if !held {
            return Ok(None);
        }
        Ok(Some(current_holder(&client, settings).await?.unwrap_or(
            Holder {
                host: "?".into(),
                pid: 0,
                since: "?".into(),
            },
        )))
    }
}

async fn current_holder(
    client: &Client,
    settings: &WarehouseSettings,
) -> Result<Option<Holder>, WarehouseError> {
    let row = client
        .query_opt(
            "SELECT a.application_name, \
               to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.classid = $1::int4::oid \
               AND l.objid = hashtext($2)::oid AND l.objsubid = 2 AND l.granted",
            &[&LOCK_CLASS, &key(settings)],
        )
        .await
        .map_err(WarehouseError::server(
            "reading who holds the pipeline lease",
        ))?;
    Ok(row.and_then(|row| {
        let name: Option<String> = row.get(0);
        let since: Option<String> = row.get(1);
        holder_of(&name?, since.unwrap_or_default())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_name_names_the_holder() {
        let holder = Holder {
            host: "db-1.example".into(),
            pid: 4242,
            since: "2026-12-07T03:00:00Z".into(),
        };
        let name = session_name(&holder);
        assert_eq!(name, "tidewater lease 4242@db-1.example");
        assert_eq!(holder_of(&name, holder.since.clone()), Some(holder));
        let long = Holder {
            host: "h".repeat(100),
            pid: 1,
            since: String::new(),
        };
        assert_eq!(session_name(&long).len(), 63);
    }
}
