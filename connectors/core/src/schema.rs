//! Versioned table schemas, in source-neutral terms.

use crate::event::TableId;

/// A column type in tidewater's own vocabulary. Each maps to exactly one Arrow
/// type ([`crate::arrow_type`]); sources map their native types onto these.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float32,
    Float64,
    /// Exact decimal; precision up to 38 is Decimal128, above that Decimal256.
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// UTF-8 text. Also carries the exact text form of values whose type has no
    /// lossless Arrow equivalent yet (unconstrained numeric, unknown types).
    Text,
    Binary,
    Date,
    /// Wall-clock timestamp without time zone, microseconds.
    Timestamp,
    /// Instant, microseconds since the epoch, UTC.
    TimestampTz,
    /// Time of day, microseconds since midnight.
    Time,
    /// Signed elapsed time in microseconds (MySQL `TIME`, range ±838 hours).
    Duration,
    Uuid,
    /// Canonical JSON text.
    Json,
    List(Box<ColumnType>),
}

/// One source column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// The source's own type name (`numeric(12,2)`, `timestamp with time zone`),
    /// kept as field metadata so readers can restore it.
    pub source_type: String,
    /// Part of the key the source identifies rows by (primary key or replica
    /// identity).
    pub key: bool,
}

/// The schema of a table at one version. A source bumps `version` whenever the
/// columns change; the batcher never mixes two versions in one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub table: TableId,
    pub version: u64,
    pub columns: Vec<Column>,
}

impl TableSchema {
    /// True when `other` describes the same columns (names, types, keys), so a
    /// new version number need not be issued.
    pub fn same_columns(&self, other: &TableSchema) -> bool {
        self.columns == other.columns
    }

    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.key)
    }
}
