//! The batcher: row changes in, Arrow record batches per table out.
//!
//! ```text
//!  Begin(commit) ─┐
//!  Row ───────────┼─▶ open batch per table (rows + the commit they belong to)
//!  Commit ────────┘          │ full (rows/bytes) or old (delay) or schema change
//!                            ▼
//!            ChangeBatch { table, schema, RecordBatch, last mark }
//! ```
//!
//! Rows are kept as decoded [`Datum`]s until the batch is cut, then built column
//! by column; rows a source already decoded into Arrow ([`RowBlock`]) are kept
//! as arrays and concatenated in order with the rest. A batch never mixes two
//! schema versions of a table: a new schema closes the open batch first. The batcher only answers "is anything full or
//! old"; the coordinator decides when to cut, because a cut must cover every
//! table at once for the acknowledged position to be meaningful.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Decimal256Builder,
    DurationMicrosecondBuilder, FixedSizeBinaryBuilder, Float32Builder, Float64Builder,
    Int16Builder, Int32Builder, Int64Builder, Int8Builder, StringBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder, UInt16Builder, UInt32Builder, UInt64Builder, UInt8Builder,
};
use arrow_array::{Array, ArrayRef, ListArray, RecordBatch};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{ArrowError, DataType, Field, Schema, TimeUnit};

use crate::event::{CommitInfo, Datum, Mark, Op, RowBlock, RowChange, TableId};
use crate::schema::TableSchema;
use crate::types::{arrow_field, metadata_fields};

/// When a batch is cut. Defaults are in the binary's config module.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_delay: Duration,
}

/// A cut batch of one table, ready for a sink.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    pub table: TableId,
    pub schema: Arc<TableSchema>,
    /// Source columns followed by the metadata columns.
    pub batch: RecordBatch,
    /// (`_tw_seq`, `_tw_ord`) of the last row in the batch.
    pub last: Mark,
}

struct PendingRow {
    op: Op,
    ord: u64,
    commit: Arc<CommitInfo>,
    values: Vec<Datum>,
}

/// A run of rows in arrival order: decoded values, or a block of arrays.
enum Segment {
    Rows(Vec<PendingRow>),
    Block {
        commit: Arc<CommitInfo>,
        block: RowBlock,
    },
}

impl Segment {
    fn len(&self) -> usize {
        match self {
            Segment::Rows(rows) => rows.len(),
            Segment::Block { block, .. } => block.len(),
        }
    }
}

struct OpenBatch {
    schema: Arc<TableSchema>,
    segments: Vec<Segment>,
    rows: usize,
    /// Some row holds a `Datum::Unchanged` still to be resolved.
    unresolved: bool,
}

/// Rows with values still to be restored that a batch holds at most: their
/// size is unknown until restored, so few of them keep a cut bounded.
const MAX_UNRESOLVED_ROWS: usize = 256;

/// Collects row changes into per-table batches. Not thread-safe by design: one
/// pipeline task owns it.
pub struct Batcher {
    limits: BatchLimits,
    schemas: BTreeMap<TableId, Arc<TableSchema>>,
    /// The Arrow type of each column of each table's current schema, for
    /// checking blocks without building a field per column per block.
    types: BTreeMap<TableId, Vec<DataType>>,
    open: BTreeMap<TableId, OpenBatch>,
    commit: Option<Arc<CommitInfo>>,
    pending_rows: usize,
    pending_bytes: usize,
    unresolved_rows: usize,
    oldest: Option<Instant>,
}

impl Batcher {
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            schemas: BTreeMap::new(),
            types: BTreeMap::new(),
            open: BTreeMap::new(),
            commit: None,
            pending_rows: 0,
            pending_bytes: 0,
            unresolved_rows: 0,
            oldest: None,
        }
    }

    /// Registers a table schema. If a batch of an older version is open, it is
    /// cut and returned so the caller can hand it to the sink first.
    pub fn set_schema(
        &mut self,
        schema: Arc<TableSchema>,
    ) -> Result<Option<ChangeBatch>, ArrowError> {
        let table = schema.table.clone();
        let cut = match self.open.get(&table) {
            Some(open) if open.schema.version != schema.version => self.cut_table(&table)?,
            _ => None,
        };
        self.types.insert(
            table.clone(),
            schema
                .columns
                .iter()
                .map(|c| crate::arrow_type(&c.ty))
                .collect(),
        );
        self.schemas.insert(table, schema);
        Ok(cut)
    }

    pub fn schema(&self, table: &TableId) -> Option<&Arc<TableSchema>> {
        self.schemas.get(table)
    }

    /// Starts a transaction: rows pushed until the next `begin` belong to it.
    pub fn begin(&mut self, commit: CommitInfo) {
        self.commit = Some(Arc::new(commit));
    }

    /// Adds a row of the current transaction. Fails when no schema is known for
    /// the table or no transaction is open (a source bug).
    pub fn push(&mut self, row: RowChange) -> Result<(), ArrowError> {
        let commit = self
            .commit
            .clone()
            .ok_or_else(|| ArrowError::InvalidArgumentError("row outside a transaction".into()))?;
        let schema = self.schemas.get(&row.table).ok_or_else(|| {
            ArrowError::InvalidArgumentError(format!("row for {} before its schema", row.table))
        })?;
        if row.op != Op::Truncate && row.values.len() != schema.columns.len() {
            return Err(ArrowError::InvalidArgumentError(format!(
                "row for {} has {} values, schema version {} has {} columns",
                row.table,
                row.values.len(),
                schema.version,
                schema.columns.len()
            )));
        }
        self.pending_bytes += 64 + row.values.iter().map(datum_size).sum::<usize>();
        self.pending_rows += 1;
        self.oldest.get_or_insert_with(Instant::now);
        let open = self.open.entry(row.table).or_insert_with(|| OpenBatch {
            schema: schema.clone(),
            segments: Vec::new(),
            rows: 0,
            unresolved: false,
        });
        if row.values.iter().any(|v| matches!(v, Datum::Unchanged)) {
            open.unresolved = true;
            self.unresolved_rows += 1;
        }
        let pending = PendingRow {
            op: row.op,
            ord: row.ord,
            commit,
            values: row.values,
        };
        match open.segments.last_mut() {
            Some(Segment::Rows(rows)) => rows.push(pending),
            _ => open.segments.push(Segment::Rows(vec![pending])),
        }
        open.rows += 1;
        Ok(())
    }

    /// Adds a block of rows of the current transaction. Its arrays must have
    /// the Arrow types of the table's current schema version.
    pub fn push_block(&mut self, block: RowBlock) -> Result<(), ArrowError> {
        let commit = self
            .commit
            .clone()
            .ok_or_else(|| ArrowError::InvalidArgumentError("rows outside a transaction".into()))?;
        let schema = self.schemas.get(&block.table).ok_or_else(|| {
            ArrowError::InvalidArgumentError(format!("rows for {} before its schema", block.table))
        })?;
        if block.columns.len() != schema.columns.len() {
            return Err(ArrowError::InvalidArgumentError(format!(
                "row block for {} has {} columns, schema version {} has {}",
                block.table,
                block.columns.len(),
                schema.version,
                schema.columns.len()
            )));
        }
        let types = self.types.get(&block.table).expect("set with the schema");
        for ((array, column), expected) in block.columns.iter().zip(&schema.columns).zip(types) {
            if array.data_type() != expected || array.len() != block.len() {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "column {} of {}: a block of {} {} values for {} rows, expected {}",
                    column.name,
                    block.table,
                    array.len(),
                    array.data_type(),
                    block.len(),
                    expected
                )));
            }
        }
        if block.is_empty() {
            return Ok(());
        }
        self.pending_bytes += 64 * block.len()
            + block
                .columns
                .iter()
                .map(|c| c.get_array_memory_size())
                .sum::<usize>();
        self.pending_rows += block.len();
        self.oldest.get_or_insert_with(Instant::now);
        let open = self
            .open
            .entry(block.table.clone())
            .or_insert_with(|| OpenBatch {
                schema: schema.clone(),
                segments: Vec::new(),
                rows: 0,
                unresolved: false,
            });
        open.rows += block.len();
        open.segments.push(Segment::Block { commit, block });
        Ok(())
    }

    /// Cuts `table`'s open batch if it holds a block: values to restore
    /// (`Datum::Unchanged`) are looked up in earlier decoded rows and in the
    /// sink, never in blocks, so rows after a block restore from the sink
    /// once the block is committed.
    pub fn cut_if_blocks(&mut self, table: &TableId) -> Result<Option<ChangeBatch>, ArrowError> {
        let has_block = self.open.get(table).is_some_and(|open| {
            open.segments
                .iter()
                .any(|s| matches!(s, Segment::Block { .. }))
        });
        if !has_block {
            return Ok(None);
        }
        self.cut_table(table)
    }

    /// Tables whose held rows still contain `Datum::Unchanged` values.
    pub fn unresolved_tables(&self) -> Vec<TableId> {
        self.open
            .iter()
            .filter(|(_, open)| open.unresolved)
            .map(|(table, _)| table.clone())
            .collect()
    }

    /// The keys (key column values, in schema order) of the held rows of
    /// `table` that contain `Datum::Unchanged`, each once.
    pub fn unresolved_keys(&self, table: &TableId) -> Vec<Vec<Datum>> {
        let Some(open) = self.open.get(table) else {
            return Vec::new();
        };
        let key_columns = key_indexes(&open.schema);
        let mut seen = std::collections::HashSet::new();
        let mut keys = Vec::new();
        for segment in &open.segments {
            let Segment::Rows(rows) = segment else {
                continue;
            };
            for row in rows {
                if row.values.iter().any(|v| matches!(v, Datum::Unchanged)) {
                    let key: Vec<Datum> =
                        key_columns.iter().map(|&i| row.values[i].clone()).collect();
                    if seen.insert(key_string(&key)) {
                        keys.push(key);
                    }
                }
            }
        }
        keys
    }

    /// Replaces every `Datum::Unchanged` of `table`'s held rows with the value
    /// the same row had just before: from an earlier held row with the same
    /// key, else from `previous` (the committed image per [`key_string`]).
    /// Returns the name of a column that could not be resolved.
    pub fn resolve_unchanged(
        &mut self,
        table: &TableId,
        mut previous: HashMap<String, Vec<Datum>>,
    ) -> Result<(), String> {
        let Some(open) = self.open.get_mut(table) else {
            return Ok(());
        };
        let key_columns = key_indexes(&open.schema);
        for segment in open.segments.iter_mut() {
            let Segment::Rows(rows) = segment else {
                continue;
            };
            for row in rows.iter_mut() {
                if row.op == Op::Truncate {
                    previous.clear();
                    continue;
                }
                let key: Vec<Datum> = key_columns
                    .iter()
                    .map(|&i| row.values.get(i).cloned().unwrap_or(Datum::Null))
                    .collect();
                let key = key_string(&key);
                if row.op == Op::Delete {
                    // A delete carries the key (and the old image only under
                    // FULL, which never leaves a value out).
                    for value in row.values.iter_mut() {
                        if matches!(value, Datum::Unchanged) {
                            *value = Datum::Null;
                        }
                    }
                    previous.remove(&key);
                    continue;
                }
                for (i, value) in row.values.iter_mut().enumerate() {
                    if matches!(value, Datum::Unchanged) {
                        match previous.get(&key).and_then(|p| p.get(i)) {
                            Some(Datum::Unchanged) | None => {
                                return Err(open.schema.columns[i].name.clone())
                            }
                            Some(earlier) => *value = earlier.clone(),
                        }
                    }
                }
                self.pending_bytes += row.values.iter().map(datum_size).sum::<usize>();
                previous.insert(key, row.values.clone());
            }
        }
        open.unresolved = false;
        self.unresolved_rows = 0;
        Ok(())
    }

    /// True when the rows or bytes held reach a limit: cut now.
    pub fn is_full(&self) -> bool {
        self.pending_rows >= self.limits.max_rows
            || self.pending_bytes >= self.limits.max_bytes
            || self.unresolved_rows >= MAX_UNRESOLVED_ROWS
    }

    /// When the oldest held row must be cut at the latest, if any row is held.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.limits.max_delay)
    }

    pub fn is_empty(&self) -> bool {
        self.pending_rows == 0
    }

    pub fn pending_rows(&self) -> usize {
        self.pending_rows
    }

    /// Cuts every open batch.
    pub fn cut_all(&mut self) -> Result<Vec<ChangeBatch>, ArrowError> {
        let tables: Vec<TableId> = self.open.keys().cloned().collect();
        let mut out = Vec::with_capacity(tables.len());
        for table in tables {
            out.extend(self.cut_table(&table)?);
        }
        self.pending_rows = 0;
        self.pending_bytes = 0;
        self.unresolved_rows = 0;
        self.oldest = None;
        Ok(out)
    }

    /// Drops every held row of `table` (it stopped: its rows will never be
    /// committed); returns how many.
    pub fn discard(&mut self, table: &TableId) -> usize {
        let Some(open) = self.open.remove(table) else {
            return 0;
        };
        self.pending_rows = self.pending_rows.saturating_sub(open.rows);
        if open.unresolved {
            self.unresolved_rows = 0;
        }
        open.rows
    }

    fn cut_table(&mut self, table: &TableId) -> Result<Option<ChangeBatch>, ArrowError> {
        let Some(open) = self.open.remove(table) else {
            return Ok(None);
        };
        self.pending_rows = self.pending_rows.saturating_sub(open.rows);
        build_batch(open).map(Some)
    }
}

fn key_indexes(schema: &TableSchema) -> Vec<usize> {
    schema
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.key)
        .map(|(i, _)| i)
        .collect()
}

/// A row key as one comparable string (the key columns' values in schema
/// order); the same for a value decoded from the source and one read back
/// from a sink.
pub fn key_string(key: &[Datum]) -> String {
    format!("{key:?}")
}

fn datum_size(datum: &Datum) -> usize {
    match datum {
        Datum::Text(s) => 16 + s.len(),
        Datum::Bytes(b) => 16 + b.len(),
        Datum::List(items) => 16 + items.iter().map(datum_size).sum::<usize>(),
        _ => 16,
    }
}

fn build_batch(open: OpenBatch) -> Result<ChangeBatch, ArrowError> {
    let OpenBatch {
        schema,
        segments,
        rows: total,
        ..
    } = open;
    let mut fields: Vec<Field> = schema.columns.iter().map(arrow_field).collect();
    fields.extend(metadata_fields());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len());
    for (index, column) in schema.columns.iter().enumerate() {
        let mut parts: Vec<ArrayRef> = Vec::with_capacity(segments.len());
        for segment in &segments {
            match segment {
                Segment::Rows(rows) => {
                    let values: Vec<&Datum> = rows
                        .iter()
                        .map(|row| row.values.get(index).unwrap_or(&Datum::Null))
                        .collect();
                    parts.push(
                        build_array(fields[index].data_type(), &values).map_err(|err| {
                            ArrowError::InvalidArgumentError(format!(
                                "column {} of {}: {err}",
                                column.name, schema.table
                            ))
                        })?,
                    );
                }
                Segment::Block { block, .. } => parts.push(block.columns[index].clone()),
            }
        }
        columns.push(match parts.len() {
            1 => parts.pop().expect("one part"),
            _ => {
                let refs: Vec<&dyn Array> = parts.iter().map(|p| p.as_ref()).collect();
                arrow_select::concat::concat(&refs)?
            }
        });
    }

    let mut op = StringBuilder::with_capacity(total, total);
    let mut seq = UInt64Builder::with_capacity(total);
    let mut ord = UInt64Builder::with_capacity(total);
    let mut position = StringBuilder::new();
    let mut commit_ts = TimestampMicrosecondBuilder::with_capacity(total);
    let mut txid = StringBuilder::new();
    let mut last = Mark::default();
    for segment in &segments {
        let mut append = |code: &str, row_ord: u64, commit: &CommitInfo| {
            op.append_value(code);
            seq.append_value(commit.seq);
            ord.append_value(row_ord);
            position.append_value(&commit.position);
            commit_ts.append_value(commit.commit_ts_us);
            txid.append_option(commit.txid.as_deref());
            last = Mark::new(commit.seq, row_ord);
        };
        match segment {
            Segment::Rows(rows) => {
                for row in rows {
                    append(row.op.code(), row.ord, &row.commit);
                }
            }
            Segment::Block { commit, block } => {
                for (i, row_op) in block.ops.iter().enumerate() {
                    append(row_op.code(), block.first_ord + i as u64, commit);
                }
            }
        }
    }
    debug_assert_eq!(total, segments.iter().map(Segment::len).sum::<usize>());
    columns.push(Arc::new(op.finish()));
    columns.push(Arc::new(seq.finish()));
    columns.push(Arc::new(ord.finish()));
    columns.push(Arc::new(position.finish()));
    columns.push(Arc::new(commit_ts.finish().with_timezone("UTC")));
    columns.push(Arc::new(txid.finish()));

    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    Ok(ChangeBatch {
        table: schema.table.clone(),
        schema,
        batch,
        last,
    })
}

fn mismatch(expected: &DataType, got: &Datum) -> ArrowError {
    ArrowError::InvalidArgumentError(format!("value {} does not fit {expected}", datum_kind(got)))
}

fn datum_kind(datum: &Datum) -> &'static str {
    match datum {
        Datum::Null => "null",
        Datum::Bool(_) => "bool",
        Datum::Int8(_) => "int8",
        Datum::UInt(_) => "unsigned integer",
        Datum::Duration(_) => "duration",
        Datum::Int16(_) => "int16",
        Datum::Int32(_) => "int32",
        Datum::Int64(_) => "int64",
        Datum::Float32(_) => "float32",
        Datum::Float64(_) => "float64",
        Datum::Decimal128(_) => "decimal128",
        Datum::Decimal256(_) => "decimal256",
        Datum::Text(_) => "text",
        Datum::Bytes(_) => "bytes",
        Datum::Date(_) => "date",
        Datum::Timestamp(_) => "timestamp",
        Datum::Time(_) => "time",
        Datum::Uuid(_) => "uuid",
        Datum::List(_) => "list",
        Datum::Unchanged => "unchanged TOAST marker",
    }
}

macro_rules! build_primitive {
    ($builder:expr, $ty:expr, $values:expr, $variant:ident) => {{
        let mut builder = $builder;
        for value in $values {
            match value {
                Datum::Null => builder.append_null(),
                Datum::$variant(v) => builder.append_value(v.clone()),
                other => return Err(mismatch($ty, other)),
            }
        }
        Arc::new(builder.finish()) as ArrayRef
    }};
}

macro_rules! build_unsigned {
    ($builder:expr, $ty:expr, $values:expr, $width:ty) => {{
        let mut builder = $builder;
        for value in $values {
            match value {
                Datum::Null => builder.append_null(),
                Datum::UInt(v) => builder.append_value(<$width>::try_from(*v).map_err(|_| {
                    ArrowError::InvalidArgumentError(format!(
                        "unsigned value out of range for {}",
                        $ty
                    ))
                })?),
                other => return Err(mismatch($ty, other)),
            }
        }
        Arc::new(builder.finish()) as ArrayRef
    }};
}

/// Builds one Arrow array of type `ty` from decoded values.
pub fn build_array(ty: &DataType, values: &[&Datum]) -> Result<ArrayRef, ArrowError> {
    let n = values.len();
    let array: ArrayRef = match ty {
        DataType::Boolean => build_primitive!(BooleanBuilder::with_capacity(n), ty, values, Bool),
        DataType::Int8 => build_primitive!(Int8Builder::with_capacity(n), ty, values, Int8),
        DataType::Int16 => build_primitive!(Int16Builder::with_capacity(n), ty, values, Int16),
        DataType::UInt8 => build_unsigned!(UInt8Builder::with_capacity(n), ty, values, u8),
        DataType::UInt16 => build_unsigned!(UInt16Builder::with_capacity(n), ty, values, u16),
        DataType::UInt32 => build_unsigned!(UInt32Builder::with_capacity(n), ty, values, u32),
        DataType::UInt64 => build_unsigned!(UInt64Builder::with_capacity(n), ty, values, u64),
        DataType::Duration(TimeUnit::Microsecond) => build_primitive!(
            DurationMicrosecondBuilder::with_capacity(n),
            ty,
            values,
            Duration
        ),
        DataType::Int32 => build_primitive!(Int32Builder::with_capacity(n), ty, values, Int32),
        DataType::Int64 => build_primitive!(Int64Builder::with_capacity(n), ty, values, Int64),
        DataType::Float32 => {
            build_primitive!(Float32Builder::with_capacity(n), ty, values, Float32)
        }
        DataType::Float64 => {
            build_primitive!(Float64Builder::with_capacity(n), ty, values, Float64)
        }
        DataType::Date32 => build_primitive!(Date32Builder::with_capacity(n), ty, values, Date),
        DataType::Time64(TimeUnit::Microsecond) => {
            build_primitive!(Time64MicrosecondBuilder::with_capacity(n), ty, values, Time)
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let mut builder = TimestampMicrosecondBuilder::with_capacity(n);
            for value in values {
                match value {
                    Datum::Null => builder.append_null(),
                    Datum::Timestamp(v) => builder.append_value(*v),
                    other => return Err(mismatch(ty, other)),
                }
            }
            Arc::new(builder.finish().with_timezone_opt(tz.clone()))
        }
        DataType::Decimal128(precision, scale) => {
            let builder =
                build_primitive!(Decimal128Builder::with_capacity(n), ty, values, Decimal128);
            let array = builder
                .as_any()
                .downcast_ref::<arrow_array::Decimal128Array>()
                .expect("built as decimal128")
                .clone()
                .with_precision_and_scale(*precision, *scale)?;
            Arc::new(array)
        }
        DataType::Decimal256(precision, scale) => {
            let builder =
                build_primitive!(Decimal256Builder::with_capacity(n), ty, values, Decimal256);
            let array = builder
                .as_any()
                .downcast_ref::<arrow_array::Decimal256Array>()
                .expect("built as decimal256")
                .clone()
                .with_precision_and_scale(*precision, *scale)?;
            Arc::new(array)
        }
        DataType::Utf8 => {
            let mut builder = StringBuilder::with_capacity(n, n * 16);
            for value in values {
                match value {
                    Datum::Null => builder.append_null(),
                    Datum::Text(v) => builder.append_value(v),
                    other => return Err(mismatch(ty, other)),
                }
            }
            Arc::new(builder.finish())
        }
        DataType::Binary => {
            let mut builder = BinaryBuilder::with_capacity(n, n * 16);
            for value in values {
                match value {
                    Datum::Null => builder.append_null(),
                    Datum::Bytes(v) => builder.append_value(v),
                    other => return Err(mismatch(ty, other)),
                }
            }
            Arc::new(builder.finish())
        }
        DataType::FixedSizeBinary(16) => {
            let mut builder = FixedSizeBinaryBuilder::with_capacity(n, 16);
            for value in values {
                match value {
                    Datum::Null => builder.append_null(),
                    Datum::Uuid(v) => builder.append_value(v)?,
                    other => return Err(mismatch(ty, other)),
                }
            }
            Arc::new(builder.finish())
        }
        DataType::List(element) => {
            let mut offsets = Vec::with_capacity(n + 1);
            let mut valid = Vec::with_capacity(n);
            let mut children: Vec<&Datum> = Vec::new();
            offsets.push(0i32);
            for value in values {
                match value {
                    Datum::Null => valid.push(false),
                    Datum::List(items) => {
                        valid.push(true);
                        children.extend(items.iter());
                    }
                    other => return Err(mismatch(ty, other)),
                }
                let end = i32::try_from(children.len()).map_err(|_| {
                    ArrowError::InvalidArgumentError("list batch over 2^31 elements".into())
                })?;
                offsets.push(end);
            }
            let child = build_array(element.data_type(), &children)?;
            let nulls = NullBuffer::from(valid);
            Arc::new(ListArray::try_new(
                element.clone(),
                OffsetBuffer::new(offsets.into()),
                child,
                Some(nulls).filter(|n| n.null_count() > 0),
            )?)
        }
        other => {
            return Err(ArrowError::NotYetImplemented(format!(
                "no builder for arrow type {other}"
            )))
        }
    };
    Ok(array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Column, ColumnType};
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, UInt64Type};

    fn schema(version: u64) -> Arc<TableSchema> {
        Arc::new(TableSchema {
            table: TableId::new("public", "t"),
            version,
            columns: vec![
                Column {
                    name: "id".into(),
                    ty: ColumnType::Int32,
                    source_type: "integer".into(),
                    key: true,
                },
                Column {
                    name: "tags".into(),
                    ty: ColumnType::List(Box::new(ColumnType::Text)),
                    source_type: "text[]".into(),
                    key: false,
                },
            ],
        })
    }

    fn commit(seq: u64) -> CommitInfo {
        CommitInfo {
            seq,
            position: format!("0/{seq:X}"),
            ack: seq + 1,
            commit_ts_us: 0,
            txid: None,
        }
    }

    fn limits() -> BatchLimits {
        BatchLimits {
            max_rows: 3,
            max_bytes: usize::MAX,
            max_delay: Duration::from_secs(60),
        }
    }

    fn row(id: i32, ord: u64) -> RowChange {
        RowChange {
            table: TableId::new("public", "t"),
            op: Op::Insert,
            ord,
            values: vec![
                Datum::Int32(id),
                Datum::List(vec![Datum::Text("a".into()), Datum::Null]),
            ],
        }
    }

    #[test]
    fn cuts_when_full_and_keeps_marks() {
        let mut batcher = Batcher::new(limits());
        assert!(batcher.set_schema(schema(1)).unwrap().is_none());
        batcher.begin(commit(10));
        batcher.push(row(1, 1)).unwrap();
        batcher.push(row(2, 2)).unwrap();
        assert!(!batcher.is_full());
        batcher.begin(commit(20));
        batcher.push(row(3, 1)).unwrap();
        assert!(batcher.is_full());
        let batches = batcher.cut_all().unwrap();
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        assert_eq!(batch.last, Mark::new(20, 1));
        let ids = batch.batch.column(0).as_primitive::<Int32Type>();
        assert_eq!(ids.values().to_vec(), vec![1, 2, 3]);
        let seqs = batch.batch.column_by_name("_tw_seq").unwrap();
        assert_eq!(
            seqs.as_primitive::<UInt64Type>().values().to_vec(),
            vec![10, 10, 20]
        );
        let tags = batch.batch.column(1).as_list::<i32>();
        assert_eq!(tags.value(2).len(), 2);
        assert!(tags.value(2).is_null(1));
        assert!(batcher.is_empty());
    }

    #[test]
    fn schema_change_closes_the_open_batch() {
        let mut batcher = Batcher::new(limits());
        batcher.set_schema(schema(1)).unwrap();
        batcher.begin(commit(10));
        batcher.push(row(1, 1)).unwrap();
        let cut = batcher
            .set_schema(schema(2))
            .unwrap()
            .expect("old batch cut");
        assert_eq!(cut.schema.version, 1);
        assert_eq!(cut.batch.num_rows(), 1);
        assert!(batcher.is_empty());
    }

    #[test]
    fn blocks_and_rows_interleave_in_order() {
        use arrow_array::{Int32Array, ListArray};
        let mut batcher = Batcher::new(BatchLimits {
            max_rows: 100,
            ..limits()
        });
        batcher.set_schema(schema(1)).unwrap();
        batcher.begin(commit(10));
        batcher.push(row(1, 1)).unwrap();
        let tags = ListArray::from_iter_primitive::<arrow_array::types::Int32Type, _, _>(Vec::<
            Option<Vec<Option<i32>>>,
        >::new(
        ));
        // A wrongly typed block is refused before it is held.
        let bad = RowBlock {
            table: TableId::new("public", "t"),
            ops: vec![Op::Insert],
            first_ord: 2,
            columns: vec![
                Arc::new(Int32Array::from(vec![2])) as ArrayRef,
                Arc::new(tags) as ArrayRef,
            ],
        };
        assert!(batcher.push_block(bad).is_err());
        let mut list = arrow_array::builder::ListBuilder::new(StringBuilder::new())
            .with_field(Arc::new(Field::new("element", DataType::Utf8, true)));
        list.values().append_value("x");
        list.append(true);
        list.append_null();
        let block = RowBlock {
            table: TableId::new("public", "t"),
            ops: vec![Op::Insert, Op::Delete],
            first_ord: 2,
            columns: vec![
                Arc::new(Int32Array::from(vec![2, 3])) as ArrayRef,
                Arc::new(list.finish()) as ArrayRef,
            ],
        };
        batcher.push_block(block.skip(0)).unwrap();
        batcher.begin(commit(20));
        batcher.push(row(4, 1)).unwrap();
        assert_eq!(batcher.pending_rows(), 4);
        let batches = batcher.cut_all().unwrap();
        let batch = &batches[0];
        assert_eq!(batch.last, Mark::new(20, 1));
        let ids = batch.batch.column(0).as_primitive::<Int32Type>();
        assert_eq!(ids.values().to_vec(), vec![1, 2, 3, 4]);
        let ords = batch.batch.column_by_name("_tw_ord").unwrap();
        assert_eq!(
            ords.as_primitive::<UInt64Type>().values().to_vec(),
            vec![1, 2, 3, 1]
        );
        let ops = batch
            .batch
            .column_by_name("_tw_op")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(ops.value(2), "d");
        let tags = batch.batch.column(1).as_list::<i32>();
        assert!(tags.is_null(2));
        assert_eq!(tags.value(1).as_string::<i32>().value(0), "x");
        // Skipping a block's head keeps ords aligned.
        let skipped = block.skip(1);
        assert_eq!(skipped.first_ord, 3);
        assert_eq!(skipped.columns[0].len(), 1);
    }

    #[test]
    fn unchanged_values_resolve_from_earlier_rows_then_the_committed_image() {
        let mut batcher = Batcher::new(BatchLimits {
            max_rows: 100,
            ..limits()
        });
        let mut keyed = (*schema(1)).clone();
        keyed.columns[1].ty = ColumnType::Text;
        let keyed = Arc::new(keyed);
        batcher.set_schema(keyed).unwrap();
        batcher.begin(commit(10));
        let change = |op: Op, id: i32, body: Datum| RowChange {
            table: TableId::new("public", "t"),
            op,
            ord: 1,
            values: vec![Datum::Int32(id), body],
        };
        batcher
            .push(change(Op::Update, 1, Datum::Unchanged))
            .unwrap();
        batcher
            .push(change(Op::Update, 2, Datum::Text("new".into())))
            .unwrap();
        batcher
            .push(change(Op::Update, 2, Datum::Unchanged))
            .unwrap();
        let table = TableId::new("public", "t");
        assert_eq!(batcher.unresolved_tables(), vec![table.clone()]);
        assert_eq!(
            batcher.unresolved_keys(&table),
            vec![vec![Datum::Int32(1)], vec![Datum::Int32(2)]]
        );
        let previous = HashMap::from([
            (
                key_string(&[Datum::Int32(1)]),
                vec![Datum::Int32(1), Datum::Text("old".into())],
            ),
            (
                key_string(&[Datum::Int32(2)]),
                vec![Datum::Int32(2), Datum::Text("stale".into())],
            ),
        ]);
        batcher.resolve_unchanged(&table, previous).unwrap();
        let batch = batcher.cut_all().unwrap().remove(0);
        let bodies = batch.batch.column(1).as_string::<i32>();
        assert_eq!(
            (0..3).map(|i| bodies.value(i)).collect::<Vec<_>>(),
            vec!["old", "new", "new"]
        );
        // After a delete the value is unknown: an error naming the column.
        batcher.begin(commit(20));
        batcher.push(change(Op::Delete, 3, Datum::Null)).unwrap();
        batcher
            .push(change(Op::Update, 3, Datum::Unchanged))
            .unwrap();
        let previous = HashMap::from([(
            key_string(&[Datum::Int32(3)]),
            vec![Datum::Int32(3), Datum::Text("gone".into())],
        )]);
        assert_eq!(
            batcher.resolve_unchanged(&table, previous),
            Err("tags".to_string())
        );
    }

    #[test]
    fn wrong_value_kind_is_an_error_not_a_panic() {
        let mut batcher = Batcher::new(limits());
        batcher.set_schema(schema(1)).unwrap();
        batcher.begin(commit(10));
        let mut bad = row(1, 1);
        bad.values[0] = Datum::Text("x".into());
        batcher.push(bad).unwrap();
        let err = batcher.cut_all().unwrap_err();
        assert!(err.to_string().contains("column id"), "{err}");
    }
}
