//! Data files of an Iceberg commit: Parquet with a field id on every column,
//! written on a task of their own (encoding overlaps with decoding the next
//! rows, as for Delta), rolled over at the target size, stored under the
//! table's `data/` and described for the manifest from the footer just
//! written — counts, sizes and bounds per field id.

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::parquet::arrow::ArrowWriter;
use deltalake::parquet::file::metadata::ParquetMetaData;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::file::statistics::Statistics;
use tidewater_core::{ErrorClass, TableId};

use super::avro::DataFile;
use crate::error::LakeError;
use crate::store::LakeStore;

/// The open writer of one table's commit.
pub(super) struct FileWriter {
    batches: Option<tokio::sync::mpsc::Sender<RecordBatch>>,
    task: tokio::task::JoinHandle<Result<Vec<DataFile>, LakeError>>,
    pub schema: SchemaRef,
    encoded: Arc<std::sync::atomic::AtomicU64>,
}

/// Where and how one table's files are written.
#[derive(Clone)]
pub(super) struct FileTarget {
    pub store: LakeStore,
    pub table: TableId,
    /// `<table rel>/data`.
    pub data_rel: String,
    pub target_bytes: u64,
    /// The partition each file of this writer belongs to (spec order).
    pub partition: Vec<(String, Option<i32>)>,
}

impl FileWriter {
    pub fn start(target: FileTarget, schema: SchemaRef, properties: WriterProperties) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(1);
        let encoded = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = encoded.clone();
        let file_schema = schema.clone();
        let file_properties = properties;
        let task = tokio::spawn(async move {
            let mut done = Vec::new();
            let mut open: Option<(ArrowWriter<Out>, String)> = None;
            let failed = |what: String| LakeError::Iceberg {
                table: target.table.clone(),
                action: "writing a data file of",
                what,
                class: ErrorClass::Definite,
            };
            while let Some(batch) = rx.recv().await {
                if open.is_none() {
                    let name = format!("{}/{}.parquet", target.data_rel, uuid::Uuid::new_v4());
                    let out = Out::open(&target.store, &name)?;
                    open = Some((
                        ArrowWriter::try_new(
                            out,
                            file_schema.clone(),
                            Some(file_properties.clone()),
                        )
                        .map_err(|e| failed(e.to_string()))?,
                        name,
                    ));
                }
                let (writer, _) = open.as_mut().expect("opened above");
                writer.write(&batch).map_err(|e| failed(e.to_string()))?;
                let size = (writer.bytes_written() + writer.in_progress_size()) as u64;
                counter.store(size, std::sync::atomic::Ordering::Relaxed);
                if size >= target.target_bytes {
                    let (writer, name) = open.take().expect("open");
                    done.push(close(&target, writer, name).await?);
                }
            }
            if let Some((writer, name)) = open.take() {
                done.push(close(&target, writer, name).await?);
            }
            Ok(done)
        });
        Self {
            batches: Some(tx),
            task,
            schema,
            encoded,
        }
    }

    pub async fn write(&mut self, table: &TableId, batch: RecordBatch) -> Result<(), LakeError> {
        let sent = match &self.batches {
            Some(tx) => tx.send(batch).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The task ended early: its error says why.
        self.batches = None;
        match (&mut self.task).await {
            Ok(Err(err)) => Err(err),
            Ok(Ok(_)) => Err(LakeError::Iceberg {
                table: table.clone(),
                action: "writing to",
                what: "the file writer task ended".into(),
                class: ErrorClass::Transient,
            }),
            Err(join) => Err(died(table, join)),
        }
    }

    pub fn encoded(&self) -> u64 {
        self.encoded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Closes the files; what the manifest says of them.
    pub async fn finish(mut self, table: &TableId) -> Result<Vec<DataFile>, LakeError> {
        self.batches = None;
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) => Err(died(table, join)),
        }
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        // Dropped without `finish` (a failed commit): the files are
        // abandoned, never committed.
        self.task.abort();
    }
}

fn died(table: &TableId, join: tokio::task::JoinError) -> LakeError {
    LakeError::Panicked {
        table: table.clone(),
        action: "writing to",
        what: join.to_string(),
    }
}

/// Where a data file's bytes go as they are encoded: straight into its file
/// in a local lake (through the page cache, as delta-rs writes Delta data
/// files), into memory for an object store (one PUT when it closes).
enum Out {
    File(std::io::BufWriter<std::fs::File>),
    Memory(Vec<u8>),
}

impl Out {
    fn open(store: &LakeStore, rel: &str) -> Result<Out, LakeError> {
        match store.local_path(rel) {
            Some(path) => {
                let dir = path.parent().expect("a file has a parent");
                crate::store::create_dirs(dir)
                    .map_err(|source| LakeError::io(dir.to_path_buf(), source))?;
                let file = std::fs::File::create(&path)
                    .map_err(|source| LakeError::io(path.clone(), source))?;
                Ok(Out::File(std::io::BufWriter::with_capacity(1 << 20, file)))
            }
            None => Ok(Out::Memory(Vec::new())),
        }
    }
}

impl std::io::Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::File(file) => file.write(buf),
            Out::Memory(bytes) => bytes.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::File(file) => file.flush(),
            Out::Memory(_) => Ok(()),
        }
    }
}

/// Closes one file, stores it, and describes it.
async fn close(
    target: &FileTarget,
    writer: ArrowWriter<Out>,
    name: String,
) -> Result<DataFile, LakeError> {
    let mut writer = writer;
    let footer = writer.finish().map_err(|e| LakeError::Iceberg {
        table: target.table.clone(),
        action: "writing a data file of",
        what: e.to_string(),
        class: ErrorClass::Definite,
    })?;
    let size = writer.bytes_written() as i64;
    match writer.inner_mut() {
        Out::File(file) => {
            use std::io::Write;
            file.flush().map_err(|source| {
                LakeError::io(target.store.local_path(&name).unwrap_or_default(), source)
            })?;
        }
        Out::Memory(bytes) => {
            let bytes = std::mem::take(bytes);
            target.store.write_new(&name, bytes.into()).await?;
        }
    }
    let mut file = describe(&footer);
    file.path = target.store.uri_of(&name);
    file.size = size;
    file.partition = target.partition.clone();
    Ok(file)
}

/// The range of one column over a file's row groups.
#[derive(Debug, Clone)]
enum Range {
    Bool(bool, bool),
    Int(i32, i32),
    Long(i64, i64),
    Float(f32, f32),
    Double(f64, f64),
    /// A string column's exact least and greatest values, as UTF-8 bytes
    /// (Parquet orders them bytewise unsigned, as Iceberg does).
    Text(Vec<u8>, Vec<u8>),
}

impl Range {
    fn of(stats: &Statistics) -> Option<Range> {
        Some(match stats {
            Statistics::Boolean(s) => Range::Bool(*s.min_opt()?, *s.max_opt()?),
            Statistics::Int32(s) => Range::Int(*s.min_opt()?, *s.max_opt()?),
            Statistics::Int64(s) => Range::Long(*s.min_opt()?, *s.max_opt()?),
            Statistics::Float(s) => Range::Float(*s.min_opt()?, *s.max_opt()?),
            Statistics::Double(s) => Range::Double(*s.min_opt()?, *s.max_opt()?),
            // Only untruncated values: a truncated one is no bound here.
            Statistics::ByteArray(s) if s.min_is_exact() && s.max_is_exact() => {
                Range::Text(s.min_opt()?.data().to_vec(), s.max_opt()?.data().to_vec())
            }
            _ => return None,
        })
    }

    fn union(self, other: Range) -> Option<Range> {
        Some(match (self, other) {
            (Range::Bool(a, b), Range::Bool(c, d)) => Range::Bool(a & c, b | d),
            (Range::Int(a, b), Range::Int(c, d)) => Range::Int(a.min(c), b.max(d)),
            (Range::Long(a, b), Range::Long(c, d)) => Range::Long(a.min(c), b.max(d)),
            (Range::Float(a, b), Range::Float(c, d)) => Range::Float(a.min(c), b.max(d)),
            (Range::Double(a, b), Range::Double(c, d)) => Range::Double(a.min(c), b.max(d)),
            (Range::Text(a, b), Range::Text(c, d)) => Range::Text(a.min(c), b.max(d)),
            _ => return None,
        })
    }

    /// Iceberg's single-value serialization of both ends (little-endian,
    /// as Parquet's plain encoding of these types).
    fn bounds(self) -> Option<(Vec<u8>, Vec<u8>)> {
        Some(match self {
            Range::Bool(a, b) => (vec![a as u8], vec![b as u8]),
            Range::Int(a, b) => (a.to_le_bytes().to_vec(), b.to_le_bytes().to_vec()),
            Range::Long(a, b) => (a.to_le_bytes().to_vec(), b.to_le_bytes().to_vec()),
            Range::Float(a, b) if !a.is_nan() && !b.is_nan() => {
                (a.to_le_bytes().to_vec(), b.to_le_bytes().to_vec())
            }
            Range::Double(a, b) if !a.is_nan() && !b.is_nan() => {
                (a.to_le_bytes().to_vec(), b.to_le_bytes().to_vec())
            }
            Range::Text(a, b) => (a, b),
            _ => return None,
        })
    }
}

/// Counts, sizes and bounds of a file's top-level columns, by field id.
/// Bounds only where Parquet's statistics are plain numbers whose
/// little-endian form is Iceberg's own single-value form (booleans, ints,
/// longs, floats, doubles, dates, timestamps), or strings whose statistics
/// are exact (UTF-8 bytes, Iceberg's form of a string); other columns (and any
/// column written without statistics, see `stats`) go without, which
/// readers take as "may hold anything".
fn describe(footer: &ParquetMetaData) -> DataFile {
    let mut file = DataFile {
        record_count: footer.file_metadata().num_rows(),
        ..Default::default()
    };
    // None: a row group had no usable statistics for the column.
    let mut ranges: BTreeMap<i32, Option<Range>> = BTreeMap::new();
    for group in footer.row_groups() {
        if let Some(offset) = group.file_offset() {
            file.split_offsets.push(offset);
        }
        for column in group.columns() {
            let descr = column.column_descr();
            // Top-level primitives only: a list's leaf is its element.
            if descr.path().parts().len() != 1 {
                continue;
            }
            let info = descr.self_type().get_basic_info();
            if !info.has_id() {
                continue;
            }
            let id = info.id();
            *file.column_sizes.entry(id).or_default() += column.compressed_size();
            *file.value_counts.entry(id).or_default() += column.num_values();
            let stats = column.statistics();
            if let Some(nulls) = stats.and_then(Statistics::null_count_opt) {
                *file.null_value_counts.entry(id).or_default() += nulls as i64;
            }
            // A decimal's bound is big-endian in Iceberg, whatever its
            // Parquet type: left out.
            let decimal =
                descr.converted_type() == deltalake::parquet::basic::ConvertedType::DECIMAL;
            // Byte arrays: strings only (a binary's bound would be the same
            // bytes, but nothing reads it back yet).
            let text = descr.converted_type() == deltalake::parquet::basic::ConvertedType::UTF8;
            let range = stats
                .and_then(Range::of)
                .filter(|r| !decimal && (text || !matches!(r, Range::Text(..))));
            let merged = match (ranges.get(&id), range) {
                (None, range) => range,
                (Some(Some(known)), Some(range)) => known.clone().union(range),
                _ => None,
            };
            ranges.insert(id, merged);
        }
    }
    for (id, range) in ranges {
        // A column that held only nulls has no range: no bounds.
        if let Some((low, high)) = range.and_then(Range::bounds) {
            file.lower_bounds.insert(id, low);
            file.upper_bounds.insert(id, high);
        }
    }
    file
}
