//! Deletion vectors of current-state tables (`sink.current_state_deletion_vectors`).
//!
//! A merge with deletion vectors on does not rewrite a current file that holds
//! changed keys: it marks those rows deleted in a deletion vector (DV) and
//! re-adds the file with it. Every DV of one merge goes into one DV file in
//! the table root, in the Delta protocol's format:
//!
//! ```text
//!  deletion_vector_<uuid>.bin = 0x01, then per DV:
//!    u32 BE size │ u32 LE magic 1681511377 │ RoaringTreemap (portable) │ u32 BE CRC-32 of magic+treemap
//!  descriptor: storageType "u", pathOrInlineDv z85(uuid), offset of the size field,
//!              sizeInBytes (magic + treemap), cardinality
//! ```
//!
//! Reading goes through the Delta kernel's own parser (which checks the
//! size, magic and CRC); the bytes are fetched here first, by the object
//! store the table is read with.

use std::collections::HashMap;

use bytes::Bytes;
use delta_kernel::actions::deletion_vector::DeletionVectorDescriptor as KernelDescriptor;
use delta_kernel::actions::deletion_vector_writer::{
    KernelDeletionVector, StreamingDeletionVectorWriter,
};
use deltalake::kernel::{DeletionVectorDescriptor, StorageType};
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::DeltaTableError;
pub use roaring::RoaringTreemap;
use url::Url;

/// The table property that turns deletion vectors on, and the table feature.
pub(crate) const ENABLE_PROPERTY: &str = "delta.enableDeletionVectors";
const FEATURE: &str = "deletionVectors";

/// Reads the deletion vectors of one table's files, each DV file fetched
/// once.
pub struct DeletionVectors {
    store: std::sync::Arc<dyn deltalake::ObjectStore>,
    /// The table root, ending in `/`.
    root: Url,
    fetched: HashMap<Url, Bytes>,
}

impl DeletionVectors {
    /// For the table at `root` read through `store` (rooted at the table).
    pub fn new(store: std::sync::Arc<dyn deltalake::ObjectStore>, root: &Url) -> Self {
        let mut root = root.clone();
        if !root.path().ends_with('/') {
            root.set_path(&format!("{}/", root.path()));
        }
        Self {
            store,
            root,
            fetched: HashMap::new(),
        }
    }

    /// For the table `delta`.
    pub fn of(delta: &deltalake::DeltaTable) -> Self {
        Self::new(delta.log_store().object_store(None), delta.table_url())
    }

    /// The row numbers `dv` deletes from its file.
    pub async fn deleted(
        &mut self,
        dv: &DeletionVectorDescriptor,
    ) -> Result<RoaringTreemap, DeltaTableError> {
        let kernel = KernelDescriptor::try_from(dv.clone())?;
        let Some(url) = kernel.absolute_path(&self.root)? else {
            // Inline: the bytes are in the descriptor.
            return Ok(kernel.read(std::sync::Arc::new(Fetched::default()), &self.root)?);
        };
        if !self.fetched.contains_key(&url) {
            let path = self.object_path(&url)?;
            let bytes = self.store.get(&path).await?.bytes().await?;
            self.fetched.insert(url.clone(), bytes);
        }
        let bytes = self.fetched[&url].clone();
        Ok(kernel.read(
            std::sync::Arc::new(Fetched {
                file: Some((url, bytes)),
            }),
            &self.root,
        )?)
    }

    /// The store path of a DV file below the table root.
    fn object_path(&self, url: &Url) -> Result<deltalake::Path, DeltaTableError> {
        let relative = url
            .as_str()
            .strip_prefix(self.root.as_str())
            .ok_or_else(|| {
                DeltaTableError::Generic(format!(
                    "deletion vector {url} lies outside the table at {}",
                    self.root
                ))
            })?;
        deltalake::Path::from_url_path(relative)
            .map_err(|e| DeltaTableError::Generic(format!("deletion vector path {url}: {e}")))
    }
}

/// Every deletion vector of one merge, written into one DV file.
#[derive(Default)]
pub(crate) struct DvFile {
    vectors: Vec<RoaringTreemap>,
}

impl DvFile {
    /// Adds a DV; its index among [`DvFile::write`]'s descriptors.
    pub(crate) fn push(&mut self, rows: RoaringTreemap) -> usize {
        self.vectors.push(rows);
        self.vectors.len() - 1
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Writes the DV file into the table root (through `store`, rooted at
    /// the table); the descriptors in the order the DVs were pushed.
    pub(crate) async fn write(
        self,
        store: &dyn deltalake::ObjectStore,
    ) -> Result<Vec<DeletionVectorDescriptor>, DeltaTableError> {
        let uuid = uuid::Uuid::new_v4();
        let mut bytes = Vec::new();
        let mut written = Vec::with_capacity(self.vectors.len());
        {
            let mut writer = StreamingDeletionVectorWriter::new(&mut bytes);
            for rows in self.vectors {
                let mut dv = KernelDeletionVector::new();
                dv.add_deleted_row_indexes(rows);
                written.push(writer.write_deletion_vector(dv)?);
            }
            writer.finalize()?;
        }
        let path = deltalake::Path::from(format!("deletion_vector_{uuid}.bin"));
        store.put(&path, Bytes::from(bytes).into()).await?;
        let encoded = z85::encode(uuid.as_bytes());
        Ok(written
            .into_iter()
            .map(|w| DeletionVectorDescriptor {
                storage_type: StorageType::UuidRelativePath,
                path_or_inline_dv: encoded.clone(),
                offset: Some(w.offset),
                size_in_bytes: w.size_in_bytes,
                cardinality: w.cardinality,
            })
            .collect())
    }
}

/// Whether `protocol` has the deletion vector feature (readers and writers).
pub(crate) fn protocol_has_dvs(protocol: &deltalake::kernel::Protocol) -> bool {
    let Ok(value) = serde_json::to_value(protocol) else {
        return false;
    };
    let has = |list: &str| {
        value[list]
            .as_array()
            .is_some_and(|l| l.iter().any(|f| f == FEATURE))
    };
    has("readerFeatures") && has("writerFeatures")
}

/// `protocol` with deletion vectors added: reader 3 / writer 7 with the
/// table's features so far plus `deletionVectors`. Legacy versions name no
/// features: the tables tidewater writes use none of those implied by them
/// (`invariants`, which this build could not honour, included).
pub(crate) fn with_dvs(
    protocol: &deltalake::kernel::Protocol,
) -> Result<deltalake::kernel::Protocol, DeltaTableError> {
    let mut value = serde_json::to_value(protocol)
        .map_err(|e| DeltaTableError::Generic(format!("the table's protocol: {e}")))?;
    for list in ["readerFeatures", "writerFeatures"] {
        let mut features: Vec<serde_json::Value> =
            value[list].as_array().cloned().unwrap_or_default();
        if !features.iter().any(|f| f == FEATURE) {
            features.push(FEATURE.into());
        }
        value[list] = serde_json::Value::Array(features);
    }
    value["minReaderVersion"] = 3.into();
    value["minWriterVersion"] = 7.into();
    serde_json::from_value(value)
        .map_err(|e| DeltaTableError::Generic(format!("a protocol with deletion vectors: {e}")))
}

/// `stats` of a file re-added with a DV: the same counts (`numRecords` is
/// the file's, readers subtract the DV's cardinality) and bounds, marked as
/// not tight (deleted rows may hold the minimum or maximum).
pub(crate) fn loose_stats(stats: Option<&str>) -> Option<String> {
    let mut value: serde_json::Value = serde_json::from_str(stats?).ok()?;
    value
        .as_object_mut()?
        .insert("tightBounds".into(), false.into());
    Some(value.to_string())
}

/// One DV file's bytes, fetched beforehand, for the kernel's reader (which
/// reads through a storage handler; nothing else of it is used).
#[derive(Default)]
struct Fetched {
    file: Option<(Url, Bytes)>,
}

impl delta_kernel::StorageHandler for Fetched {
    fn list_from(
        &self,
        path: &Url,
    ) -> delta_kernel::DeltaResult<
        Box<dyn Iterator<Item = delta_kernel::DeltaResult<delta_kernel::FileMeta>>>,
    > {
        Err(unsupported("listing", path))
    }

    fn read_files(
        &self,
        files: Vec<delta_kernel::FileSlice>,
    ) -> delta_kernel::DeltaResult<Box<dyn Iterator<Item = delta_kernel::DeltaResult<Bytes>>>> {
        let read: Vec<delta_kernel::DeltaResult<Bytes>> = files
            .into_iter()
            .map(|(url, range)| match &self.file {
                Some((have, bytes)) if *have == url => Ok(match range {
                    Some(r) => bytes.slice(
                        usize::try_from(r.start)
                            .unwrap_or(usize::MAX)
                            .min(bytes.len())
                            ..usize::try_from(r.end)
                                .unwrap_or(usize::MAX)
                                .min(bytes.len()),
                    ),
                    None => bytes.clone(),
                }),
                _ => Err(unsupported("reading", &url)),
            })
            .collect();
        Ok(Box::new(read.into_iter()))
    }

    fn copy_atomic(&self, src: &Url, _dest: &Url) -> delta_kernel::DeltaResult<()> {
        Err(unsupported("copying", src))
    }

    fn put(&self, path: &Url, _data: Bytes, _overwrite: bool) -> delta_kernel::DeltaResult<()> {
        Err(unsupported("writing", path))
    }

    fn head(&self, path: &Url) -> delta_kernel::DeltaResult<delta_kernel::FileMeta> {
        Err(unsupported("heading", path))
    }

    fn delete(&self, path: &Url) -> delta_kernel::DeltaResult<()> {
        Err(unsupported("deleting", path))
    }
}

fn unsupported(what: &str, path: &Url) -> delta_kernel::Error {
    delta_kernel::Error::generic(format!(
        "tidewater's deletion vector reader does no {what} ({path})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two DVs in one file read back through the kernel's parser, a DV of
    /// rows beyond 2^32 included; an edited byte fails its CRC.
    #[tokio::test]
    async fn dvs_written_read_back() {
        let dir = std::env::temp_dir().join(format!("tw-dv-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let store: std::sync::Arc<dyn deltalake::ObjectStore> = std::sync::Arc::new(
            deltalake::logstore::object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .unwrap(),
        );
        let root = Url::from_directory_path(&dir).unwrap();
        let mut file = DvFile::default();
        let a: RoaringTreemap = [0u64, 5, 7, 1000].into_iter().collect();
        let b: RoaringTreemap = [3u64, (1 << 32) + 9].into_iter().collect();
        assert_eq!(file.push(a.clone()), 0);
        assert_eq!(file.push(b.clone()), 1);
        let written = file.write(store.as_ref()).await.unwrap();
        assert_eq!(written.len(), 2);
        assert_eq!(written[0].offset, Some(1));
        assert_eq!(written[0].cardinality, 4);
        assert_eq!(written[0].path_or_inline_dv.len(), 20);
        let mut dvs = DeletionVectors::new(store.clone(), &root);
        assert_eq!(dvs.deleted(&written[0]).await.unwrap(), a);
        assert_eq!(dvs.deleted(&written[1]).await.unwrap(), b);
        // A flipped bitmap byte: the CRC catches it.
        let name = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("deletion_vector_")
            })
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&name).unwrap();
        bytes[12] ^= 0xff;
        std::fs::write(&name, bytes).unwrap();
        let mut fresh = DeletionVectors::new(store, &root);
        let err = fresh.deleted(&written[0]).await.unwrap_err();
        assert!(err.to_string().contains("CRC"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn protocol_upgrade_names_only_deletion_vectors() {
        let legacy: deltalake::kernel::Protocol = serde_json::from_value(
            serde_json::json!({"minReaderVersion": 1, "minWriterVersion": 2}),
        )
        .unwrap();
        assert!(!protocol_has_dvs(&legacy));
        let upgraded = with_dvs(&legacy).unwrap();
        assert!(protocol_has_dvs(&upgraded));
        assert_eq!(
            serde_json::to_value(&upgraded).unwrap(),
            serde_json::json!({"minReaderVersion": 3, "minWriterVersion": 7,
                "readerFeatures": ["deletionVectors"], "writerFeatures": ["deletionVectors"]})
        );
        let ntz: deltalake::kernel::Protocol = serde_json::from_value(serde_json::json!({
            "minReaderVersion": 3, "minWriterVersion": 7,
            "readerFeatures": ["timestampNtz"], "writerFeatures": ["timestampNtz"]}))
        .unwrap();
        assert_eq!(
            serde_json::to_value(with_dvs(&ntz).unwrap()).unwrap(),
            serde_json::json!({"minReaderVersion": 3, "minWriterVersion": 7,
                "readerFeatures": ["timestampNtz", "deletionVectors"],
                "writerFeatures": ["timestampNtz", "deletionVectors"]})
        );
    }
}
