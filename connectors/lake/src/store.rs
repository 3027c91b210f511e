//! Where the lake lives — a local directory or an S3 bucket — and the small
//! files tidewater keeps next to its tables there (slot marker, acknowledged
//! source position, stopped tables, schema histories).
//!
//! ```text
//!  local:  <dir>/<pipeline>/_tidewater_slot          written to a staging file,
//!          <dir>/<pipeline>/<schema>/<table>/…       fsynced, renamed, dir fsynced
//!  S3:     s3://bucket/prefix/<pipeline>/…           one PUT (atomic per object)
//! ```
//!
//! The Delta tables themselves go through delta-rs, whose commits are
//! put-if-absent on both (an atomic rename locally, `If-None-Match` on S3), so
//! no lock service is needed. The one S3 stack in the binary is delta-rs's
//! (`object_store` and the AWS credential chain of `aws-config`): environment,
//! profile, web identity, instance metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deltalake::logstore::object_store::{
    path::Path as ObjectPath, ObjectStore, ObjectStoreExt, PutPayload,
};
use deltalake::DeltaTableBuilder;
use futures_util::TryStreamExt;
use url::Url;

use crate::error::LakeError;

/// A lake root, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LakeLocation {
    Local(PathBuf),
    /// `s3://bucket/prefix` with the delta-rs storage options (endpoint,
    /// region, path style, …).
    S3 {
        url: Url,
        options: HashMap<String, String>,
    },
}

/// The lake root, opened.
#[derive(Clone)]
pub struct LakeStore {
    location: LakeLocation,
    /// The object store rooted at the lake root (S3 only).
    remote: Option<Arc<dyn ObjectStore>>,
}

impl std::fmt::Debug for LakeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LakeStore({})", self.describe(""))
    }
}

impl LakeStore {
    /// Opens `location`; for S3 this builds the client (no request is made).
    pub fn open(location: LakeLocation) -> Result<Self, LakeError> {
        let remote = match &location {
            LakeLocation::Local(_) => None,
            LakeLocation::S3 { url, options } => {
                deltalake::aws::register_handlers(None);
                let store = DeltaTableBuilder::from_url(dir_url(url))
                    .and_then(|b| b.with_storage_options(options.clone()).build_storage())
                    .map_err(|source| LakeError::Store {
                        location: url.to_string(),
                        source: Box::new(source),
                    })?
                    .object_store(None);
                Some(store)
            }
        };
        Ok(Self { location, remote })
    }

    /// A local lake at `dir`.
    pub fn local(dir: &Path) -> Self {
        Self {
            location: LakeLocation::Local(dir.to_path_buf()),
            remote: None,
        }
    }

    pub fn location(&self) -> &LakeLocation {
        &self.location
    }

    /// The storage options delta-rs needs for tables of this lake.
    pub fn storage_options(&self) -> HashMap<String, String> {
        match &self.location {
            LakeLocation::Local(_) => HashMap::new(),
            LakeLocation::S3 { options, .. } => options.clone(),
        }
    }

    /// `rel` (a `/`-separated path below the root) as a local path, if local.
    pub fn local_path(&self, rel: &str) -> Option<PathBuf> {
        match &self.location {
            LakeLocation::Local(dir) => Some(join(dir, rel)),
            LakeLocation::S3 { .. } => None,
        }
    }

    /// `rel` for people: a path or a URL.
    pub fn describe(&self, rel: &str) -> String {
        match &self.location {
            LakeLocation::Local(dir) => join(dir, rel).display().to_string(),
            LakeLocation::S3 { url, .. } => format!("{}{rel}", dir_url(url)),
        }
    }

    /// The URL of the table directory `rel`.
    pub fn table_url(&self, rel: &str) -> Result<Url, LakeError> {
        match &self.location {
            LakeLocation::Local(dir) => {
                let path = join(dir, rel);
                // delta-rs would create the directory too, but keep only the
                // text of its error: ours keeps the kind (a refusal or not).
                create_dirs(&path).map_err(|source| LakeError::io(path.clone(), source))?;
                deltalake::ensure_table_uri(path.to_string_lossy()).map_err(|source| {
                    LakeError::Store {
                        location: path.display().to_string(),
                        source: Box::new(source),
                    }
                })
            }
            LakeLocation::S3 { url, .. } => {
                dir_url(url)
                    .join(&format!("{rel}/"))
                    .map_err(|_| LakeError::Io {
                        path: PathBuf::from(rel),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            "not a path below the lake",
                        ),
                    })
            }
        }
    }

    /// The text of the small file `rel`; None when it does not exist.
    pub async fn read(&self, rel: &str) -> Result<Option<String>, LakeError> {
        match (&self.location, &self.remote) {
            (LakeLocation::Local(dir), _) => {
                let path = join(dir, rel);
                match std::fs::read_to_string(&path) {
                    Ok(text) => Ok(Some(text)),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(LakeError::io(path, source)),
                }
            }
            (_, Some(store)) => match store.get(&ObjectPath::from(rel)).await {
                Ok(got) => {
                    let bytes = got.bytes().await.map_err(|e| self.remote_error(rel, e))?;
                    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
                }
                Err(deltalake::logstore::object_store::Error::NotFound { .. }) => Ok(None),
                Err(err) => Err(self.remote_error(rel, err)),
            },
            _ => unreachable!("an S3 location always has its store"),
        }
    }

    /// Replaces the small file `rel` atomically and durably.
    pub async fn write(&self, rel: &str, text: &str) -> Result<(), LakeError> {
        match (&self.location, &self.remote) {
            (LakeLocation::Local(dir), _) => {
                let path = join(dir, rel);
                replace_file(&path, text).map_err(|source| LakeError::io(path, source))
            }
            (_, Some(store)) => store
                .put(
                    &ObjectPath::from(rel),
                    PutPayload::from(text.as_bytes().to_vec()),
                )
                .await
                .map(|_| ())
                .map_err(|err| self.remote_error(rel, err)),
            _ => unreachable!("an S3 location always has its store"),
        }
    }

    /// Removes the small file `rel` (absent is fine).
    pub async fn delete(&self, rel: &str) -> Result<(), LakeError> {
        match (&self.location, &self.remote) {
            (LakeLocation::Local(dir), _) => {
                let path = join(dir, rel);
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(source) => Err(LakeError::io(path, source)),
                }
            }
            (_, Some(store)) => match store.delete(&ObjectPath::from(rel)).await {
                Ok(()) | Err(deltalake::logstore::object_store::Error::NotFound { .. }) => Ok(()),
                Err(err) => Err(self.remote_error(rel, err)),
            },
            _ => unreachable!("an S3 location always has its store"),
        }
    }

    /// The lake root as a URI, ending in `/` (`file:///…/`, `s3://bucket/prefix/`):
    /// Iceberg metadata names files by absolute URI. Not percent-encoded:
    /// Iceberg readers take a location's path as it is spelt.
    pub fn root_uri(&self) -> String {
        match &self.location {
            LakeLocation::Local(dir) => {
                let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
                let text = dir.display().to_string();
                format!("file://{}/", text.trim_end_matches('/'))
            }
            LakeLocation::S3 { url, .. } => dir_url(url).to_string(),
        }
    }

    /// `uri` (as [`Self::root_uri`] spells files below the root) as a path
    /// below the root; None for a file elsewhere.
    pub fn rel_of(&self, uri: &str) -> Option<String> {
        uri.strip_prefix(&self.root_uri()).map(str::to_string)
    }

    /// `rel` as a URI below [`Self::root_uri`].
    pub fn uri_of(&self, rel: &str) -> String {
        format!("{}{rel}", self.root_uri())
    }

    /// Writes the file `rel` (a new name, never replaced: data files,
    /// manifests). Locally through the page cache, as delta-rs writes a
    /// Delta table's data files: a process crash loses nothing written, and
    /// the commit that names the file (metadata file, catalog row) is made
    /// durable on its own. A file written only in part (a crash in the
    /// middle) is never named by a commit.
    pub async fn write_new(&self, rel: &str, bytes: bytes::Bytes) -> Result<(), LakeError> {
        match (&self.location, &self.remote) {
            (LakeLocation::Local(dir), _) => {
                let path = join(dir, rel);
                let written = path.clone();
                tokio::task::spawn_blocking(move || {
                    create_dirs(written.parent().expect("file has a parent"))?;
                    std::fs::write(&written, &bytes)
                })
                .await
                .map_err(|join| {
                    LakeError::io(path.clone(), std::io::Error::other(join.to_string()))
                })?
                .map_err(|source| LakeError::io(path, source))
            }
            (_, Some(store)) => store
                .put(&ObjectPath::from(rel), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|err| self.remote_error(rel, err)),
            _ => unreachable!("an S3 location always has its store"),
        }
    }

    /// The bytes of the file `rel`; None when it does not exist.
    pub async fn read_bytes(&self, rel: &str) -> Result<Option<bytes::Bytes>, LakeError> {
        match (&self.location, &self.remote) {
            (LakeLocation::Local(dir), _) => {
                let path = join(dir, rel);
                match tokio::fs::read(&path).await {
                    Ok(bytes) => Ok(Some(bytes.into())),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(LakeError::io(path, source)),
                }
            }
            (_, Some(store)) => match store.get(&ObjectPath::from(rel)).await {
                Ok(got) => Ok(Some(
                    got.bytes().await.map_err(|e| self.remote_error(rel, e))?,
                )),
                Err(deltalake::logstore::object_store::Error::NotFound { .. }) => Ok(None),
                Err(err) => Err(self.remote_error(rel, err)),
            },
            _ => unreachable!("an S3 location always has its store"),
        }
    }

    /// True when the directory `rel` holds a Delta log.
    pub async fn is_table(&self, rel: &str) -> Result<bool, LakeError> {
        match (&self.location, &self.remote) {
            (LakeLocation::Local(dir), _) => Ok(join(dir, rel).join("_delta_log").is_dir()),
            (_, Some(store)) => {
                let prefix = ObjectPath::from(format!("{rel}/_delta_log"));
                let first = store
                    .list(Some(&prefix))
                    .try_next()
                    .await
                    .map_err(|err| self.remote_error(rel, err))?;
                Ok(first.is_some())
            }
            _ => unreachable!("an S3 location always has its store"),
        }
    }

    /// The names of the directories right below `rel`.
    pub async fn list_dirs(&self, rel: &str) -> Result<Vec<String>, LakeError> {
        match (&self.location, &self.remote) {
            (LakeLocation::Local(dir), _) => {
                // Absent is empty; unreadable is an error, never "no tables"
                // (that would start a lake over).
                let path = join(dir, rel);
                let entries = match std::fs::read_dir(&path) {
                    Ok(entries) => entries,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(source) => return Err(LakeError::io(path, source)),
                };
                Ok(entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect())
            }
            (_, Some(store)) => {
                let prefix = ObjectPath::from(rel);
                let listed = store
                    .list_with_delimiter(Some(&prefix))
                    .await
                    .map_err(|err| self.remote_error(rel, err))?;
                Ok(listed
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(str::to_string))
                    .collect())
            }
            _ => unreachable!("an S3 location always has its store"),
        }
    }

    /// Removes the table directory `rel` and everything in it. Locally by an
    /// atomic rename to a hidden tombstone first; on S3 the log goes first,
    /// newest entry first, so the table is a valid older version (or none)
    /// at every moment of a crash, then the data files.
    /// Every file below `rel` (at any depth), as paths relative to the lake
    /// root, with when each was last modified. Absent is empty; a file
    /// that vanishes while listing is left out.
    pub async fn list_files(
        &self,
        rel: &str,
    ) -> Result<Vec<(String, std::time::SystemTime)>, LakeError> {
        match (&self.location, &self.remote) {
            (LakeLocation::Local(dir), _) => {
                let start = join(dir, rel);
                let rel = rel.trim_end_matches('/').to_string();
                tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    let mut pending = vec![(start, rel)];
                    while let Some((path, rel)) = pending.pop() {
                        let entries = match std::fs::read_dir(&path) {
                            Ok(entries) => entries,
                            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                            Err(source) => return Err(LakeError::io(path, source)),
                        };
                        for entry in entries.flatten() {
                            let name = entry.file_name().to_string_lossy().into_owned();
                            let child = format!("{rel}/{name}");
                            let Ok(meta) = entry.metadata() else {
                                continue;
                            };
                            if meta.is_dir() {
                                pending.push((entry.path(), child));
                            } else if let Ok(modified) = meta.modified() {
                                out.push((child, modified));
                            }
                        }
                    }
                    Ok(out)
                })
                .await
                .map_err(|join| {
                    LakeError::io(
                        PathBuf::from(self.describe("")),
                        std::io::Error::other(join.to_string()),
                    )
                })?
            }
            (_, Some(store)) => {
                let prefix = ObjectPath::from(format!("{}/", rel.trim_end_matches('/')));
                store
                    .list(Some(&prefix))
                    .map_ok(|meta| {
                        (
                            meta.location.as_ref().to_string(),
                            std::time::SystemTime::from(meta.last_modified),
                        )
                    })
                    .try_collect()
                    .await
                    .map_err(|err| self.remote_error(rel, err))
            }
            _ => unreachable!("an S3 location always has its store"),
        }
    }

    pub async fn remove_tree(&self, rel: &str, tombstone: &str) -> Result<(), LakeError> {
        match (&self.location, &self.remote) {
            (LakeLocation::Local(dir), _) => {
                let path = join(dir, rel);
                let grave = join(dir, tombstone);
                remove_dir(&grave)?;
                match std::fs::rename(&path, &grave) {
                    Ok(()) => remove_dir(&grave),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(source) => Err(LakeError::io(path, source)),
                }
            }
            (_, Some(store)) => {
                let prefix = ObjectPath::from(format!("{rel}/"));
                let mut objects: Vec<ObjectPath> = store
                    .list(Some(&prefix))
                    .map_ok(|meta| meta.location)
                    .try_collect()
                    .await
                    .map_err(|err| self.remote_error(rel, err))?;
                let log = format!("{rel}/_delta_log/");
                objects.sort_by(|a, b| {
                    let (a_log, b_log) =
                        (a.as_ref().starts_with(&log), b.as_ref().starts_with(&log));
                    b_log.cmp(&a_log).then_with(|| b.as_ref().cmp(a.as_ref()))
                });
                for object in objects {
                    match store.delete(&object).await {
                        Ok(()) | Err(deltalake::logstore::object_store::Error::NotFound { .. }) => {
                        }
                        Err(err) => return Err(self.remote_error(object.as_ref(), err)),
                    }
                }
                Ok(())
            }
            _ => unreachable!("an S3 location always has its store"),
        }
    }

    /// An object store rooted at the lake root, for a reader that fetches
    /// byte ranges itself (reverse ETL's scan of Iceberg files): the S3
    /// client, or the local directory (which must exist).
    pub fn root_store(&self) -> Result<Arc<dyn ObjectStore>, LakeError> {
        match (&self.location, &self.remote) {
            (LakeLocation::Local(dir), _) => {
                deltalake::logstore::object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map(|store| Arc::new(store) as Arc<dyn ObjectStore>)
                    .map_err(|err| self.remote_error("", err))
            }
            (_, Some(store)) => Ok(store.clone()),
            _ => unreachable!("an S3 location always has its store"),
        }
    }

    /// `rel` as a path in [`Self::root_store`].
    pub fn object_path(rel: &str) -> ObjectPath {
        ObjectPath::from(rel)
    }

    /// The object store of a remote lake (conditional writes of the lease).
    pub(crate) fn remote(&self) -> Option<&Arc<dyn ObjectStore>> {
        self.remote.as_ref()
    }

    pub(crate) fn remote_error(
        &self,
        rel: &str,
        source: deltalake::logstore::object_store::Error,
    ) -> LakeError {
        let location = self.describe(rel);
        LakeError::Remote {
            location: location.clone(),
            source: Box::new(source),
        }
        .at(|| location)
    }
}

/// The URL with a trailing `/`, so joins stay below it.
fn dir_url(url: &Url) -> Url {
    let mut url = url.clone();
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

fn join(dir: &Path, rel: &str) -> PathBuf {
    let mut path = dir.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
    }
    path
}

/// Replaces a small file atomically and durably: write a staging file,
/// fsync it, rename it over the target, fsync the directory. Readers see the
/// old or the new content, never a torn or (after a power loss) empty one.
pub(crate) fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("file has a parent");
    create_dirs(dir)?;
    let name = path.file_name().expect("file name").to_string_lossy();
    let staging = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&staging)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&staging, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// `create_dir_all`, saying "not a directory" (not "file exists") when a
/// file stands where a directory of the path must be.
pub(crate) fn create_dirs(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir_all(dir) {
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && !dir.is_dir() => {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is a file, not a directory", dir.display()),
            ))
        }
        other => other,
    }
}

fn remove_dir(path: &Path) -> Result<(), LakeError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LakeError::io(path.to_path_buf(), source)),
    }
}
