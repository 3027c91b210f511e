//! The pipeline's lease in the lake: one process runs a pipeline at a time.
//!
//! ```text
//!  local:  <dir>/<pipeline>/_tidewater_lease   flock(LOCK_EX) held by the process;
//!                                              the file names the holder
//!  S3:     <prefix>/<pipeline>/_tidewater_lease an object naming the holder, created
//!                                              with If-None-Match, renewed every
//!                                              LEASE_RENEW with If-Match on its ETag
//! ```
//!
//! A local lock ends with its process, whatever kills it, so a restart after
//! a crash takes it at once. An S3 object outlives a killed holder; it is
//! taken over when its holder is provably gone (same host, pid not running
//! tidewater) or when it was not renewed for [`LEASE_TTL`] as seen by the
//! process that wants it (its own clock: no two hosts' clocks are compared).
//! Every replacement is conditional on the ETag that was read, so of two
//! processes taking over the same expired lease one wins. A holder whose
//! renewal finds another ETag has lost the lease and must stop at once.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use deltalake::logstore::object_store::{
    path::Path as ObjectPath, Error as ObjectError, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, UpdateVersion,
};
use tidewater_core::{ErrorClass, Holder};

use crate::error::LakeError;
use crate::store::LakeStore;

/// The lease's file name, in the pipeline's folder of the lake.
pub const LEASE_FILE: &str = "_tidewater_lease";

/// An S3 lease not renewed for this long (as observed by the process that
/// wants it) is taken over. Three renewals fit in it, so one slow request
/// does not lose a lease.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// How often a holder renews its S3 lease.
pub const LEASE_RENEW: Duration = Duration::from_secs(5);

/// How long a local start waits for a lock held only for an instant (by
/// `status`, which reads it with a shared lock).
const LOCAL_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "pipeline {pipeline} is already running: {} holds its lease {location}\n\
         hint: a second process of one pipeline is refused; stop the other one first \
         (or give this one its own pipeline.name or sink.uri)",
        describe(.holder)
    )]
    Held {
        pipeline: String,
        location: String,
        holder: Option<Holder>,
    },
    #[error(
        "lost the lease of pipeline {pipeline} at {location} to {}: it was not renewed in time \
         and another process took it over\n\
         hint: this process stops before writing anything more; the other one goes on",
        describe(.holder)
    )]
    Lost {
        pipeline: String,
        location: String,
        holder: Option<Holder>,
    },
    #[error("taking the pipeline lease at {location} (sink.uri)")]
    Io {
        location: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lake(#[from] LakeError),
}

fn describe(holder: &Option<Holder>) -> String {
    match holder {
        Some(holder) => format!("another process ({holder})"),
        None => "another process".to_string(),
    }
}

impl tidewater_core::Classified for LeaseError {
    fn class(&self) -> ErrorClass {
        match self {
            LeaseError::Held { .. } | LeaseError::Lost { .. } => ErrorClass::Config,
            // A lake path that cannot be a directory or is not ours to
            // write does not fix itself.
            LeaseError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::NotADirectory
                | std::io::ErrorKind::ReadOnlyFilesystem
                | std::io::ErrorKind::AlreadyExists => ErrorClass::Config,
                _ => ErrorClass::Transient,
            },
            LeaseError::Lake(err) => err.class(),
        }
    }
}

/// What a lease looks like from outside (`status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// A process holds the pipeline.
    Held(Option<Holder>),
    /// Nobody holds it; the last holder, if it is known.
    Free(Option<Holder>),
}

/// The content of the lease: its holder and, on S3, when it was renewed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    #[serde(flatten)]
    holder: Holder,
    #[serde(default)]
    renewed_at: String,
}

impl Record {
    fn now(holder: &Holder) -> Record {
        Record {
            holder: holder.clone(),
            renewed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    fn text(&self) -> String {
        format!(
            "{}\n",
            serde_json::to_string(self).expect("a lease record serializes")
        )
    }

    fn parse(text: &str) -> Option<Record> {
        serde_json::from_str(text).ok()
    }
}

/// A held lease. Dropping it releases a local lock; call
/// [`LakeLease::release`] to also remove an S3 lease.
pub struct LakeLease {
    pipeline: String,
    location: String,
    kind: Kind,
}

enum Kind {
    /// The open, locked file; the lock ends when it is closed.
    Local(#[allow(dead_code)] File),
    Remote(Box<Remote>),
}

/// A held S3 lease: the version last written, for the next conditional
/// write.
struct Remote {
    store: LakeStore,
    rel: String,
    version: UpdateVersion,
    holder: Holder,
}

fn rel_of(pipeline: &str) -> String {
    format!("{pipeline}/{LEASE_FILE}")
}

impl LakeLease {
    /// Takes the lease of `pipeline` in `store` for `holder`, or says who
    /// holds it. On S3 this may wait up to [`LEASE_TTL`] to see whether the
    /// holder still renews its lease.
    pub async fn acquire(
        store: &LakeStore,
        pipeline: &str,
        holder: &Holder,
    ) -> Result<LakeLease, LeaseError> {
        let rel = rel_of(pipeline);
        let location = store.describe(&rel);
        match store.local_path(&rel) {
            Some(path) => {
                let file = tokio::task::spawn_blocking({
                    let (path, holder, location, pipeline) = (
                        path.clone(),
                        holder.clone(),
                        location.clone(),
                        pipeline.to_string(),
                    );
                    move || lock_local(&path, &holder, &location, &pipeline)
                })
                .await
                .expect("the lease task does not panic")?;
                Ok(LakeLease {
                    pipeline: pipeline.to_string(),
                    location,
                    kind: Kind::Local(file),
                })
            }
            None => {
                let version = take_remote(store, &rel, &location, pipeline, holder).await?;
                Ok(LakeLease {
                    pipeline: pipeline.to_string(),
                    location,
                    kind: Kind::Remote(Box::new(Remote {
                        store: store.clone(),
                        rel,
                        version,
                        holder: holder.clone(),
                    })),
                })
            }
        }
    }

    /// Where the lease is, for people.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// True when the lease must be renewed every [`LEASE_RENEW`].
    pub fn needs_renewal(&self) -> bool {
        matches!(self.kind, Kind::Remote(_))
    }

    /// Renews an S3 lease (a no-op locally). [`LeaseError::Lost`] when
    /// another process replaced it: stop at once. Other errors are worth a
    /// retry at the next renewal.
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        let Kind::Remote(remote) = &mut self.kind else {
            return Ok(());
        };
        let Remote {
            store,
            rel,
            version,
            holder,
        } = remote.as_mut();
        let record = Record::now(holder);
        match put(store, rel, &record.text(), Some(version.clone())).await? {
            Some(new) => {
                *version = new;
                Ok(())
            }
            None => {
                // A renewal whose response was lost (a network fault after
                // the store took it) is retried by the client with the old
                // version and refused: the object then names this very
                // holder, and its version is the one to renew from.
                let current = read_remote(store, rel).await.ok().flatten();
                let found = current
                    .as_ref()
                    .and_then(|(text, version)| Some((Record::parse(text)?, version.clone())));
                if let Some((record, current_version)) = &found {
                    if record.holder == *holder {
                        *version = current_version.clone();
                        return Ok(());
                    }
                }
                let holder = found.map(|(record, _)| record.holder);
                Err(LeaseError::Lost {
                    pipeline: self.pipeline.clone(),
                    location: self.location.clone(),
                    holder,
                })
            }
        }
    }

    /// Gives the lease up: the local lock ends, the S3 object is removed if
    /// it is still ours.
    pub async fn release(self) -> Result<(), LeaseError> {
        match self.kind {
            Kind::Local(file) => {
                drop(file);
                Ok(())
            }
            Kind::Remote(remote) => {
                let Remote {
                    store,
                    rel,
                    version,
                    ..
                } = *remote;
                let current = read_remote(&store, &rel).await?;
                if current.is_some_and(|(_, v)| v.e_tag == version.e_tag) {
                    store.delete(&rel).await?;
                }
                Ok(())
            }
        }
    }

    /// Whether a process holds `pipeline`'s lease, without taking it.
    pub async fn probe(store: &LakeStore, pipeline: &str) -> Result<LeaseState, LeaseError> {
        let rel = rel_of(pipeline);
        let location = store.describe(&rel);
        match store.local_path(&rel) {
            Some(path) => tokio::task::spawn_blocking(move || probe_local(&path, &location))
                .await
                .expect("the lease task does not panic"),
            None => {
                let Some((text, _)) = read_remote(store, &rel).await? else {
                    return Ok(LeaseState::Free(None));
                };
                let Some(record) = Record::parse(&text) else {
                    return Ok(LeaseState::Free(None));
                };
                // Compared with this host's clock: good enough for a display.
                let renewed = chrono::DateTime::parse_from_rfc3339(&record.renewed_at)
                    .ok()
                    .map(|t| t.with_timezone(&chrono::Utc));
                let fresh = renewed.is_some_and(|t| {
                    chrono::Utc::now() - t < chrono::Duration::from_std(LEASE_TTL).expect("small")
                });
                if fresh && !record.holder.is_gone() {
                    Ok(LeaseState::Held(Some(record.holder)))
                } else {
                    Ok(LeaseState::Free(Some(record.holder)))
                }
            }
        }
    }
}

fn lock_local(
    path: &PathBuf,
    holder: &Holder,
    location: &str,
    pipeline: &str,
) -> Result<File, LeaseError> {
    let io = |source| LeaseError::Io {
        location: location.to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if started.elapsed() < LOCAL_WAIT => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(LeaseError::Held {
                    pipeline: pipeline.to_string(),
                    location: location.to_string(),
                    holder: read_holder(&mut file),
                })
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
    }
    file.set_len(0).map_err(io)?;
    file.write_all(Record::now(holder).text().as_bytes())
        .map_err(io)?;
    file.sync_data().map_err(io)?;
    Ok(file)
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    Record::parse(&text).map(|r| r.holder)
}

fn probe_local(path: &PathBuf, location: &str) -> Result<LeaseState, LeaseError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(LeaseState::Free(None))
        }
        Err(source) => {
            return Err(LeaseError::Io {
                location: location.to_string(),
                source,
            })
        }
    };
    let holder = read_holder(&mut file);
    match file.try_lock_shared() {
        Ok(()) => Ok(LeaseState::Free(holder)),
        Err(TryLockError::WouldBlock) => Ok(LeaseState::Held(holder)),
        Err(TryLockError::Error(source)) => Err(LeaseError::Io {
            location: location.to_string(),
            source,
        }),
    }
}

/// The text and version of the remote object `rel`, if it exists.
async fn read_remote(
    store: &LakeStore,
    rel: &str,
) -> Result<Option<(String, UpdateVersion)>, LeaseError> {
    let remote = store.remote().expect("a remote lake");
    match remote.get(&ObjectPath::from(rel)).await {
        Ok(got) => {
            let version = UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            let bytes = got.bytes().await.map_err(|e| store.remote_error(rel, e))?;
            Ok(Some((
                String::from_utf8_lossy(&bytes).into_owned(),
                version,
            )))
        }
        Err(ObjectError::NotFound { .. }) => Ok(None),
        Err(err) => Err(store.remote_error(rel, err).into()),
    }
}

/// Writes `rel` if it is absent (`expected` None) or still at `expected`;
/// None when another write came first.
async fn put(
    store: &LakeStore,
    rel: &str,
    text: &str,
    expected: Option<UpdateVersion>,
) -> Result<Option<UpdateVersion>, LeaseError> {
    let remote = store.remote().expect("a remote lake");
    let mode = match expected {
        Some(version) => PutMode::Update(version),
        None => PutMode::Create,
    };
    let options = PutOptions {
        mode,
        ..PutOptions::default()
    };
    match remote
        .put_opts(
            &ObjectPath::from(rel),
            PutPayload::from(text.as_bytes().to_vec()),
            options,
        )
        .await
    {
        Ok(done) => Ok(Some(UpdateVersion::from(done))),
        Err(
            ObjectError::Precondition { .. }
            | ObjectError::AlreadyExists { .. }
            | ObjectError::NotFound { .. },
        ) => Ok(None),
        Err(err) => Err(store.remote_error(rel, err).into()),
    }
}

/// Takes the S3 lease: creates it, or replaces one whose holder is provably
/// gone or that was not renewed for [`LEASE_TTL`] while we watched.
async fn take_remote(
    store: &LakeStore,
    rel: &str,
    location: &str,
    pipeline: &str,
    holder: &Holder,
) -> Result<UpdateVersion, LeaseError> {
    let text = Record::now(holder).text();
    // The version first seen, and since when it has not changed.
    let mut watched: Option<(Option<String>, Instant)> = None;
    let mut told = false;
    loop {
        let found = read_remote(store, rel).await?;
        let expected = match found {
            None => None,
            Some((current, version)) => {
                let record = Record::parse(&current);
                let gone = record.as_ref().is_none_or(|r| r.holder.is_gone());
                let expired = match &watched {
                    Some((tag, since)) if *tag == version.e_tag => since.elapsed() >= LEASE_TTL,
                    Some(_) => {
                        // Renewed while we watched: its holder lives.
                        return Err(LeaseError::Held {
                            pipeline: pipeline.to_string(),
                            location: location.to_string(),
                            holder: record.map(|r| r.holder),
                        });
                    }
                    None => {
                        watched = Some((version.e_tag.clone(), Instant::now()));
                        false
                    }
                };
                if !gone && !expired {
                    if let Some(record) = &record {
                        if record.holder.host == holder.host {
                            // Alive on this very host: no need to watch.
                            return Err(LeaseError::Held {
                                pipeline: pipeline.to_string(),
                                location: location.to_string(),
                                holder: Some(record.holder.clone()),
                            });
                        }
                    }
                    if !told {
                        told = true;
                        tracing::info!(
                            lease = %location,
                            "the pipeline's lease is held by a process on another host; \
                             waiting to see whether it is renewed"
                        );
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                if expired {
                    tracing::warn!(lease = %location, "taking over a lease that was not renewed (its holder is gone)");
                }
                Some(version)
            }
        };
        if let Some(version) = put(store, rel, &text, expected).await? {
            return Ok(version);
        }
        // Another process wrote it first: look again.
        watched = None;
    }
}
