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
    #[error("erasing keys of lake table {table}: {what}")]
    Erasure { table: TableId, what: String },
    #[error("object storage at {location}")]
    Remote {
        location: String,
        #[source]
        source: Box<deltalake::ObjectStoreError>,
    },
    /// An Iceberg table's own files or metadata (a manifest that does not
    /// read, metadata another writer left in a shape tidewater cannot
    /// continue from, a type the mapping does not cover): `class` says
    /// whether a retry can help.
    #[error("{action} Iceberg table {table}: {what}")]
    Iceberg {
        table: TableId,
        action: &'static str,
        what: String,
        class: ErrorClass,
    },
    /// The Iceberg catalog (the SQL database that registers the tables)
    /// failed or refused; `class` says whether a retry can help.
    #[error("Iceberg catalog {catalog}: {what}")]
    Catalog {
        catalog: String,
        what: String,
        class: ErrorClass,
    },
    /// A state file tidewater keeps next to the tables does not parse: it
    /// was damaged, and no retry mends it. `problem` says where and what,
    /// never the file's content.
    #[error("state file {location} is unreadable: {problem}\nhint: {}", .file.fix())]
    CorruptState {
        location: String,
        file: StateFile,
        problem: String,
    },
    /// The storage refused for good (see [`Refusal`]): one of the errors
    /// above, located and explained.
    #[error("lake path {path} cannot be written: {}\nhint: {}", .refusal.what(), .refusal.fix())]
    Unwritable {
        path: String,
        refusal: Refusal,
        #[source]
        source: Box<LakeError>,
    },
}

/// The state files kept next to a pipeline's tables, each with what a
/// person can do when it is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFile {
    /// A pipeline record (`<pipeline>/_tidewater_*`).
    Record(tidewater_core::state::RecordKind),
    /// `<pipeline>/<schema>/<table>/_tidewater_schema_history.json`.
    SchemaHistory,
}

impl StateFile {
    pub fn fix(self) -> &'static str {
        match self {
            StateFile::Record(kind) => kind.fix(),
            StateFile::SchemaHistory => {
                "restore it from a backup, or remove it: the table's data is unaffected, but the \
                 record of its earlier column sets (`tidewater status --history`) is lost and the \
                 next schema version is numbered 1 again"
            }
        }
    }
}

/// Why the storage under `sink.uri` refuses to be written, when no retry can
/// change that: a person must act (fix permissions, remount, move a file,
/// fix credentials) or point `sink.uri` elsewhere. Found anywhere in an
/// error's causes, whichever library raised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The operating system denied it: file permissions, an immutable
    /// file, a security policy.
    Permission,
    /// The file system is mounted read-only.
    ReadOnly,
    /// A file stands where a directory must be: `sink.uri` names a file, or
    /// something replaced a directory of the lake.
    FileInTheWay,
    /// The object store refused the credentials or their rights.
    Credentials,
}

impl Refusal {
    pub fn what(self) -> &'static str {
        match self {
            Refusal::Permission => "permission denied",
            Refusal::ReadOnly => "the file system is read-only",
            Refusal::FileInTheWay => "a file stands where one of its directories must be",
            Refusal::Credentials => "the object store refused the credentials",
        }
    }

    pub fn fix(self) -> &'static str {
        match self {
            Refusal::Permission => {
                "sink.uri must name a directory the user running tidewater may write: fix the \
                 owner or permissions of the path named above (or point sink.uri elsewhere), \
                 then start again; nothing is lost, the next start resumes from the durable marks"
            }
            Refusal::ReadOnly => {
                "sink.uri must be on a writable file system: mount it read-write (or point \
                 sink.uri elsewhere), then start again; nothing is lost, the next start resumes \
                 from the durable marks"
            }
            Refusal::FileInTheWay => {
                "sink.uri must name a directory, and tidewater keeps directories below it: move \
                 that file away (or point sink.uri at a directory), then start again; nothing is \
                 lost, the next start resumes from the durable marks"
            }
            Refusal::Credentials => {
                "the credentials must be allowed to write sink.uri: fix AWS_ACCESS_KEY_ID / \
                 AWS_SECRET_ACCESS_KEY / AWS_PROFILE or the bucket policy, then start again; \
                 nothing is lost, the next start resumes from the durable marks"
            }
        }
    }
}

/// The [`Refusal`] among `err` and its causes, if any.
pub(crate) fn refusal(err: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    use std::io::ErrorKind;
    causes(err).find_map(|cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                ErrorKind::PermissionDenied => Some(Refusal::Permission),
                ErrorKind::ReadOnlyFilesystem => Some(Refusal::ReadOnly),
                ErrorKind::NotADirectory => Some(Refusal::FileInTheWay),
                _ => None,
            };
        }
        // A field of type `Box<E>` is its error's source as the box itself.
        let store = cause
            .downcast_ref::<deltalake::ObjectStoreError>()
            .or_else(|| {
                cause
                    .downcast_ref::<Box<deltalake::ObjectStoreError>>()
                    .map(|b| b.as_ref())
            });
        match store {
            Some(deltalake::ObjectStoreError::PermissionDenied { .. })
            | Some(deltalake::ObjectStoreError::Unauthenticated { .. }) => {
                Some(Refusal::Credentials)
            }
            _ => None,
        }
    })
}

/// True when storage I/O (a file system or an object store) or a writer
/// task that died is among the causes: the operation may succeed again.
fn storage_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    causes(err).any(|cause| {
        cause.is::<std::io::Error>()
            || cause.is::<deltalake::ObjectStoreError>()
            || cause.is::<Box<deltalake::ObjectStoreError>>()
            || cause.is::<tokio::task::JoinError>()
    })
}

fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

impl tidewater_core::Classified for LakeError {
    fn class(&self) -> ErrorClass {
        LakeError::class(self)
    }

    /// The table named, except the placeholder `<pipeline>.*` of errors
    /// about a whole commit.
    fn table(&self) -> Option<&TableId> {
        LakeError::table(self).filter(|t| t.table != "*")
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

    /// An I/O error at `path`, explained when it is a [`Refusal`].
    pub(crate) fn io(path: PathBuf, source: std::io::Error) -> Self {
        let shown = path.display().to_string();
        LakeError::Io { path, source }.at(|| shown)
    }

    /// This error, as [`LakeError::Unwritable`] at `path` when the storage
    /// refused for good; else unchanged.
    pub(crate) fn at(self, path: impl FnOnce() -> String) -> Self {
        if matches!(self, LakeError::Unwritable { .. }) {
            return self;
        }
        match refusal(&self) {
            Some(refusal) => LakeError::Unwritable {
                path: path(),
                refusal,
                source: Box::new(self),
            },
            None => self,
        }
    }

    /// The table the error is about, when it names one.
    pub(crate) fn table(&self) -> Option<&TableId> {
        match self {
            LakeError::Delta { table, .. }
            | LakeError::Arrow { table, .. }
            | LakeError::ConcurrentWriter { table, .. }
            | LakeError::Panicked { table, .. }
            | LakeError::Iceberg { table, .. } => Some(table),
            _ => None,
        }
    }

    pub fn class(&self) -> ErrorClass {
        // A refusal of the storage (permissions, a read-only mount, a file
        // where a directory must be, credentials) is the same at start-up
        // and mid-stream, whichever library met it: a person must act.
        if matches!(self, LakeError::Unwritable { .. }) || refusal(self).is_some() {
            return ErrorClass::Config;
        }
        match self {
            LakeError::Delta { source, .. } => match source.as_ref() {
                DeltaTableError::ObjectStore { .. }
                | DeltaTableError::Io { .. }
                | DeltaTableError::VersionAlreadyExists(_) => ErrorClass::Transient,
                // The kernel's object store and I/O errors do not show their
                // cause as a source: a failed LIST of the log is the storage
                // failing (seen against S3 answering 500), not the table.
                DeltaTableError::KernelError(kernel) => match kernel {
                    delta_kernel::Error::ObjectStore(store) => match store {
                        deltalake::ObjectStoreError::PermissionDenied { .. }
                        | deltalake::ObjectStoreError::Unauthenticated { .. } => ErrorClass::Config,
                        _ => ErrorClass::Transient,
                    },
                    delta_kernel::Error::IOError(_) => ErrorClass::Transient,
                    other if storage_failure(other) => ErrorClass::Transient,
                    _ => ErrorClass::Definite,
                },
                // A data file that could not be written or read (the
                // Parquet writer wraps the storage's error) is the storage
                // failing, not the table's data.
                other if storage_failure(other) => ErrorClass::Transient,
                _ => ErrorClass::Definite,
            },
            LakeError::Arrow { .. } | LakeError::Erasure { .. } => ErrorClass::Definite,
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
            LakeError::Unwritable { .. } | LakeError::CorruptState { .. } => ErrorClass::Config,
            LakeError::Iceberg { class, .. } | LakeError::Catalog { class, .. } => *class,
        }
    }
}

/// Installs a panic hook that keeps one known, already-handled panic of the
/// storage libraries off stderr: object_store's `BufWriter` panics with
/// "Already shut down" when a writer whose upload failed is aborted, and
/// delta-rs catches that panic on its clean-up path and returns the upload's
/// own error (which tidewater reports and classes). The default hook would
/// still print it with a backtrace, as if the process had crashed. Every
/// other panic goes to the previous hook unchanged; this one is logged at
/// debug level. Call once, from `main`.
pub fn quiet_caught_storage_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str));
        let in_object_store = info.location().is_some_and(|l| {
            l.file().contains("object_store") && l.file().ends_with("buffered.rs")
        });
        if in_object_store && message == Some("Already shut down") {
            tracing::debug!(
                location = %info.location().map(|l| l.to_string()).unwrap_or_default(),
                "the storage library panicked aborting a failed upload (caught; the upload's own error is reported)"
            );
            return;
        }
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::parquet::errors::ParquetError;
    use std::io::{Error as IoError, ErrorKind};

    /// A data-file write failing as delta-rs reports it: the Parquet
    /// writer's error around the object store's around the OS's.
    fn failed_file_write(kind: ErrorKind) -> LakeError {
        let store = deltalake::ObjectStoreError::Generic {
            store: "LocalFileSystem",
            source: Box::new(IoError::new(kind, "part-0001.parquet")),
        };
        let parquet = ParquetError::External(Box::new(store));
        LakeError::delta(&TableId::new("public", "t"), "writing to", parquet.into())
    }

    #[test]
    fn kernel_object_store_failures_are_transient_and_refusals_config() {
        let table = TableId::new("app", "t");
        let kernel = |store: deltalake::ObjectStoreError| {
            LakeError::delta(
                &table,
                "committing to",
                DeltaTableError::KernelError(delta_kernel::Error::ObjectStore(store)),
            )
        };
        let body = kernel(deltalake::ObjectStoreError::Generic {
            store: "S3",
            source: "Error getting list response body: HTTP error".into(),
        });
        assert_eq!(body.class(), ErrorClass::Transient);
        let denied = kernel(deltalake::ObjectStoreError::PermissionDenied {
            path: "lake".into(),
            source: "denied".into(),
        });
        assert_eq!(denied.class(), ErrorClass::Config);
        let schema = LakeError::delta(
            &table,
            "committing to",
            DeltaTableError::KernelError(delta_kernel::Error::Generic("bad schema".into())),
        );
        assert_eq!(schema.class(), ErrorClass::Definite);
    }

    #[test]
    fn storage_refusals_are_config_other_storage_failures_transient() {
        for kind in [
            ErrorKind::PermissionDenied,
            ErrorKind::ReadOnlyFilesystem,
            ErrorKind::NotADirectory,
        ] {
            let err = failed_file_write(kind);
            assert_eq!(err.class(), ErrorClass::Config, "{kind:?}");
            let located = err.at(|| "/lake/p/public/t".into());
            assert!(matches!(located, LakeError::Unwritable { .. }), "{kind:?}");
            assert!(located.to_string().contains("sink.uri"));
            assert!(located.to_string().contains("/lake/p/public/t"));
        }
        // A full disk or an I/O error may pass: retried, never a table's fault.
        for kind in [ErrorKind::StorageFull, ErrorKind::Other] {
            let err = failed_file_write(kind);
            assert_eq!(err.class(), ErrorClass::Transient, "{kind:?}");
            assert!(matches!(err.at(String::new), LakeError::Delta { .. }));
        }
        // What the Parquet writer says about the data itself stays definite.
        let data = LakeError::delta(
            &TableId::new("public", "t"),
            "writing to",
            ParquetError::General("unsupported type".into()).into(),
        );
        assert_eq!(data.class(), ErrorClass::Definite);
        // It names its table, so it stops that table only; an error about a
        // whole commit names none.
        use tidewater_core::Classified;
        assert_eq!(Classified::table(&data), Some(&TableId::new("public", "t")));
        let commit = LakeError::Panicked {
            table: TableId::new("p", "*"),
            action: "committing to",
            what: "boom".into(),
        };
        assert_eq!(Classified::table(&commit), None);
        // Refused credentials on S3, boxed as LakeStore reports them.
        let remote = LakeError::Remote {
            location: "s3://b/lake".into(),
            source: Box::new(deltalake::ObjectStoreError::PermissionDenied {
                path: "lake/p".into(),
                source: "403".into(),
            }),
        };
        assert_eq!(remote.class(), ErrorClass::Config);
        assert!(matches!(
            remote.at(|| "s3://b/lake".into()),
            LakeError::Unwritable {
                refusal: Refusal::Credentials,
                ..
            }
        ));
    }
}
