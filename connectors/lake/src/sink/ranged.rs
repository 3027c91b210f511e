//! Reading parts of a data file by ranged requests: the footer, then only
//! the column chunks a projection names (and, with a row selection and the
//! page index, only the pages that hold the selected rows).
//!
//! Key lookups (unchanged TOAST values, a MySQL snapshot's resume key) need
//! the key and metadata columns of a file, then a few whole rows. Fetching
//! whole files made every lookup read every byte of the table, its large
//! values included; this reads what the lookup uses.
//!
//! ```text
//!  footer (one or two ranged GETs) ─▶ pass 1: key + _tw_* column chunks
//!                                  ─▶ pass 2: pages holding the hit rows, all columns
//! ```

use std::ops::Range;

use bytes::Bytes;
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection};
use deltalake::parquet::arrow::async_reader::{
    AsyncFileReader, ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder,
};
use deltalake::parquet::errors::ParquetError;
use deltalake::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use futures_util::future::{BoxFuture, FutureExt};

use super::prune::Probe;
use super::*;

/// One data file on the table's store, read by byte ranges.
pub(super) struct RangeReader {
    store: Arc<dyn deltalake::ObjectStore>,
    path: deltalake::Path,
    size: u64,
    /// Read the column and offset indexes with the footer (a row selection
    /// uses them to skip pages).
    page_index: bool,
    /// Bytes fetched, added up across the readers of one lookup.
    fetched: Arc<std::sync::atomic::AtomicU64>,
}

impl RangeReader {
    fn count(&self, bytes: u64) {
        self.fetched
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

fn store_error(err: deltalake::ObjectStoreError) -> ParquetError {
    ParquetError::External(Box::new(err))
}

impl AsyncFileReader for RangeReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, ParquetError>> {
        async move {
            let bytes = self
                .store
                .get_range(&self.path, range)
                .await
                .map_err(store_error)?;
            self.count(bytes.len() as u64);
            Ok(bytes)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, Result<Vec<Bytes>, ParquetError>> {
        async move {
            let parts = self
                .store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(store_error)?;
            self.count(parts.iter().map(|b| b.len() as u64).sum());
            Ok(parts)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>, ParquetError>> {
        async move {
            let policy = if self.page_index {
                PageIndexPolicy::Optional
            } else {
                PageIndexPolicy::Skip
            };
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_page_index_policy(policy)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// A data file of a table, as the Delta log lists it.
pub(super) struct DataFile {
    pub path: deltalake::Path,
    /// Bytes, when the log says (else one HEAD request finds out).
    pub size: Option<u64>,
    /// The Delta log's statistics of the file (JSON), if it has them.
    pub stats: Option<String>,
}

/// The table's data files, with their sizes.
pub(super) fn data_files_sized(
    delta: &DeltaTable,
    table: &TableId,
) -> Result<Vec<DataFile>, LakeError> {
    Ok(delta
        .snapshot()
        .map_err(|source| LakeError::delta(table, "listing the files of", source))?
        .log_data()
        .iter()
        .map(|f| DataFile {
            path: f.object_store_path(),
            size: u64::try_from(f.size()).ok(),
            stats: f.stats(),
        })
        .collect())
}

/// Which rows of a file a read returns.
pub(super) enum Rows<'a> {
    All,
    /// These row numbers (sorted): only the pages holding them are fetched.
    These(&'a [usize]),
    /// The rows of the pages whose key statistics may hold a wanted key.
    Pages(&'a Probe),
}

/// A reader of `file` that fetches only what it reads: the columns named in
/// `names` (all when None), the rows `rows` picks; with the selection it
/// applied (the n-th row read is the n-th row it selects), None for all.
pub(super) async fn read_parts(
    store: Arc<dyn deltalake::ObjectStore>,
    file: &DataFile,
    table: &TableId,
    names: Option<&[&str]>,
    rows: Rows<'_>,
    fetched: &Arc<std::sync::atomic::AtomicU64>,
) -> Result<(ParquetRecordBatchStream<RangeReader>, Option<RowSelection>), LakeError> {
    let size = file_size(store.as_ref(), file, table).await?;
    let reader = RangeReader {
        store,
        path: file.path.clone(),
        size,
        page_index: !matches!(rows, Rows::All),
        fetched: fetched.clone(),
    };
    let mut builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|err| parquet_error(table, &file.path, err))?;
    if let Some(names) = names {
        let roots: Vec<usize> = builder
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| names.contains(&f.name().as_str()))
            .map(|(i, _)| i)
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        builder = builder.with_projection(mask);
    }
    let total = usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    let selection = match rows {
        Rows::All => None,
        Rows::These(rows) => Some(RowSelection::from_consecutive_ranges(
            rows.iter().map(|&r| r..r + 1),
            total,
        )),
        Rows::Pages(probe) => probe.pages(builder.metadata()),
    };
    if let Some(selection) = &selection {
        builder = builder.with_row_selection(selection.clone());
    }
    let stream = builder
        .build()
        .map_err(|err| parquet_error(table, &file.path, err))?;
    Ok((stream, selection))
}

/// The bytes of `file`: from the log, else from one HEAD request.
async fn file_size(
    store: &dyn deltalake::ObjectStore,
    file: &DataFile,
    table: &TableId,
) -> Result<u64, LakeError> {
    match file.size {
        Some(size) => Ok(size),
        None => Ok(store
            .head(&file.path)
            .await
            .map_err(|source| LakeError::Remote {
                location: format!("{table}: {}", file.path),
                source: Box::new(source),
            })?
            .size),
    }
}

/// The Parquet metadata of `file`, from its footer alone.
pub(super) async fn footer(
    store: Arc<dyn deltalake::ObjectStore>,
    file: &DataFile,
    table: &TableId,
) -> Result<Arc<ParquetMetaData>, LakeError> {
    let size = file_size(store.as_ref(), file, table).await?;
    let reader = RangeReader {
        store,
        path: file.path.clone(),
        size,
        page_index: false,
        fetched: Arc::default(),
    };
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|err| parquet_error(table, &file.path, err))?;
    Ok(builder.metadata().clone())
}

/// The next batch of `stream`.
pub(super) async fn next_batch(
    stream: &mut ParquetRecordBatchStream<RangeReader>,
    table: &TableId,
    path: &deltalake::Path,
) -> Result<Option<RecordBatch>, LakeError> {
    stream
        .try_next()
        .await
        .map_err(|err| parquet_error(table, path, err))
}

/// A failed read: the store's error (kept, so its class decides whether it
/// is retried) or the file's.
fn parquet_error(table: &TableId, path: &deltalake::Path, err: ParquetError) -> LakeError {
    if let ParquetError::External(source) = err {
        return match source.downcast::<deltalake::ObjectStoreError>() {
            Ok(store) => LakeError::Remote {
                location: format!("{table}: {path}"),
                source: store,
            },
            Err(other) => LakeError::Arrow {
                table: table.clone(),
                source: ArrowError::ExternalError(other),
            },
        };
    }
    LakeError::Arrow {
        table: table.clone(),
        source: ArrowError::ExternalError(Box::new(err)),
    }
}
