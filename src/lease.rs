//! One process per pipeline: `run` and `snapshot` take the pipeline's lease
//! in its state store before they touch the source, hold it while they run
//! and give it up when they exit; a second process is refused (exit 2,
//! naming the holder) and the first is left alone. `status` and `check` are
//! read-only and take none; `status` asks the lease whether a process runs.
//!
//! ```text
//!  lake on disk   flock on <lake>/<pipeline>/_tidewater_lease      ends with the process
//!  lake on S3     object <pipeline>/_tidewater_lease, renewed 5 s  taken over after 15 s
//!                                                                  (at once if its pid is
//!                                                                   gone on this host)
//!  warehouse      session advisory lock on a connection of its own ends with the session
//! ```
//!
//! A holder that loses its lease (S3: another process took it over after
//! its renewals failed for the whole expiry; warehouse: the session ended
//! and another process took the lock) exits at once with code 2: nothing is
//! acknowledged that is not durable, so that is safe.

use std::time::Duration;

use tidewater_core::{Classified, Holder};
use tidewater_lake::lease::{LakeLease, LeaseError, LeaseState, LEASE_RENEW};
use tidewater_warehouse::lease::{Acquired, WarehouseLease};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::pipeline::Settings;
use crate::policy::{backoff, exit_code};

/// How often a held warehouse lease checks that its session is there.
const WAREHOUSE_CHECK: Duration = Duration::from_secs(5);

enum Held {
    Lake(LakeLease),
    Warehouse(WarehouseLease),
}

/// A held lease and the task that keeps it.
pub struct Lease {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Option<Held>>,
}

/// Why a start is refused: the message names the holder.
fn refused(pipeline: &str, location: &str, holder: Option<&Holder>) -> String {
    format!(
        "pipeline {pipeline} is already running: {} holds its lease {location}\n\
         hint: a second process of one pipeline is refused; stop the other one first \
         (or give this one its own pipeline.name or sink)",
        match holder {
            Some(holder) => format!("another process ({holder})"),
            None => "another process".to_string(),
        }
    )
}

/// Takes the pipeline's lease, retrying what is transient (an unreachable
/// S3 or warehouse) with the usual backoff. Err is the exit code, after the
/// reason was printed.
pub async fn take(settings: &Settings) -> Result<Lease, i32> {
    let me = Holder::me();
    let mut attempt = 0;
    let held = loop {
        let (result, class) = match &settings.warehouse {
            Some(warehouse) => match WarehouseLease::acquire(warehouse, &me).await {
                Ok(Acquired::Taken(lease)) => break Held::Warehouse(lease),
                Ok(Acquired::Held(holder)) => {
                    let location =
                        format!("in the warehouse (state of pipeline {})", settings.pipeline);
                    eprintln!(
                        "error: {}",
                        refused(&settings.pipeline, &location, holder.as_ref())
                    );
                    return Err(exit_code::CONFIG);
                }
                Err(err) => (crate::chain(&err), err.class()),
            },
            None => match LakeLease::acquire(&settings.lake, &settings.pipeline, &me).await {
                Ok(lease) => break Held::Lake(lease),
                Err(err) => (crate::chain(&err), err.class()),
            },
        };
        let action = crate::policy::action(class);
        if !action.retry {
            eprintln!("error: {result}");
            return Err(action.exit_code);
        }
        let wait = backoff(attempt);
        warn!(error = %result, attempt, wait_ms = wait.as_millis() as u64, "cannot take the pipeline lease yet; retrying");
        attempt += 1;
        tokio::time::sleep(wait).await;
    };
    let (stop, stopped) = watch::channel(false);
    let pipeline = settings.pipeline.clone();
    let warehouse = settings.warehouse.clone();
    let task = tokio::spawn(keep(held, stopped, pipeline, warehouse, me));
    Ok(Lease { stop, task })
}

impl Lease {
    /// Gives the lease up (the next start takes it at once).
    pub async fn release(self) {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(Some(Held::Lake(lease))) => {
                if let Err(err) = lease.release().await {
                    warn!(error = %crate::chain(&err), "could not remove the pipeline lease; the next start takes it over once it expires");
                }
            }
            Ok(Some(Held::Warehouse(lease))) => drop(lease),
            _ => {}
        }
    }
}

/// Renews the lease until `stop`; exits the process if it is lost.
async fn keep(
    mut held: Held,
    mut stop: watch::Receiver<bool>,
    pipeline: String,
    warehouse: Option<tidewater_warehouse::WarehouseSettings>,
    me: Holder,
) -> Option<Held> {
    let every = match &held {
        Held::Lake(lease) if lease.needs_renewal() => LEASE_RENEW,
        Held::Lake(_) => {
            // A lock held by the open file: nothing to renew.
            let _ = stop.wait_for(|s| *s).await;
            return Some(held);
        }
        Held::Warehouse(_) => WAREHOUSE_CHECK,
    };
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Some(held),
            _ = tokio::time::sleep(every) => {}
        }
        match &mut held {
            Held::Lake(lease) => match lease.renew().await {
                Ok(()) => {}
                Err(err @ LeaseError::Lost { .. }) => lost(&crate::chain(&err)),
                Err(err) => {
                    warn!(error = %crate::chain(&err), lease = %lease.location(), "could not renew the pipeline lease; trying again")
                }
            },
            Held::Warehouse(lease) if lease.is_lost() => {
                let settings = warehouse
                    .as_ref()
                    .expect("a warehouse lease has its settings");
                match WarehouseLease::acquire(settings, &me).await {
                    Ok(Acquired::Taken(new)) => {
                        info!("took the pipeline lease in the warehouse again after its session ended");
                        *lease = new;
                    }
                    Ok(Acquired::Held(holder)) => {
                        lost(&refused(&pipeline, "in the warehouse", holder.as_ref()))
                    }
                    Err(err) => {
                        warn!(error = %crate::chain(&err), "the warehouse session holding the pipeline lease ended; taking it again")
                    }
                }
            }
            Held::Warehouse(_) => {}
        }
    }
}

fn lost(reason: &str) -> ! {
    error!("lost the pipeline lease: exiting at once; the next start resumes exactly once");
    eprintln!("error: lost the pipeline lease: {reason}");
    std::process::exit(exit_code::CONFIG);
}

/// Whether a process holds the pipeline (for `status`): Ok(Some(holder))
/// when one does, Ok(None) when none does.
pub async fn probe(settings: &Settings) -> Result<Option<Holder>, String> {
    match &settings.warehouse {
        Some(warehouse) => WarehouseLease::probe(warehouse)
            .await
            .map_err(|e| crate::chain(&e)),
        None => match LakeLease::probe(&settings.lake, &settings.pipeline).await {
            Ok(LeaseState::Held(holder)) => Ok(Some(holder.unwrap_or(Holder {
                host: "?".into(),
                pid: 0,
                since: "?".into(),
            }))),
            Ok(LeaseState::Free(_)) => Ok(None),
            Err(err) => Err(crate::chain(&err)),
        },
    }
}
