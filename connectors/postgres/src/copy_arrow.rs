//! `COPY … TO STDOUT` output → Arrow blocks, for snapshot copies.
//!
//! The binary format is what snapshots read when every column's type has a
//! binary decoder ([`crate::binary::supported`]): the server then runs no
//! output function and we parse no text. Integers, floats, booleans and
//! text-like columns go straight into Arrow builders; every other type goes
//! through [`crate::binary::decode`] into a [`Datum`] first. A table with a
//! column binary mode cannot read is copied in text format, each value
//! parsed by [`crate::value`].
//!
//! ```text
//!  header   "PGCOPY\n\xff\r\n\0" · flags i32 · extension length i32 · extension
//!  tuple    field count i16 · per field: length i32 (-1 = NULL) · bytes
//!  trailer  field count -1
//! ```
//!
//! The server sends about one tuple per CopyData message; a tuple split
//! across messages waits in a small buffer until it is whole. Every length
//! is checked before it is used, so a truncated or foreign stream is an
//! error naming the table, never a panic or a misread value.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder,
    StringBuilder,
};
use arrow_array::ArrayRef;
use tidewater_core::{arrow_type, build_array, ColumnType, Datum, Op, RowBlock, TableSchema};

use crate::copy::{split_line, CopyError};
use crate::error::PostgresError;
use crate::types::{BOOL, BPCHAR, FLOAT4, FLOAT8, INT2, INT4, INT8, NAME, TEXT, VARCHAR};

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The format a copy is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Binary,
    Text,
}

impl CopyFormat {
    /// The `COPY` option list for this format.
    pub fn options(self) -> &'static str {
        match self {
            CopyFormat::Binary => " (FORMAT binary)",
            CopyFormat::Text => "",
        }
    }
}

enum Builder {
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Text(StringBuilder),
    /// Any other type: decoded into values, built at the end of the block.
    Values {
        oid: u32,
        values: Vec<Datum>,
    },
}

impl Builder {
    fn for_column(oid: u32, ty: &ColumnType, format: CopyFormat) -> Self {
        if format == CopyFormat::Text {
            return Builder::Values {
                oid,
                values: Vec::new(),
            };
        }
        match (oid, ty) {
            (BOOL, ColumnType::Bool) => Builder::Bool(BooleanBuilder::new()),
            (INT2, ColumnType::Int16) => Builder::Int16(Int16Builder::new()),
            (INT4, ColumnType::Int32) => Builder::Int32(Int32Builder::new()),
            (INT8, ColumnType::Int64) => Builder::Int64(Int64Builder::new()),
            (FLOAT4, ColumnType::Float32) => Builder::Float32(Float32Builder::new()),
            (FLOAT8, ColumnType::Float64) => Builder::Float64(Float64Builder::new()),
            (TEXT | VARCHAR | BPCHAR | NAME, ColumnType::Text) => {
                Builder::Text(StringBuilder::new())
            }
            _ => Builder::Values {
                oid,
                values: Vec::new(),
            },
        }
    }
}

/// Turns the byte stream of one `COPY` into blocks of `Read` rows.
pub struct CopyDecoder {
    schema: Arc<TableSchema>,
    format: CopyFormat,
    builders: Vec<Builder>,
    /// Bytes of an incomplete tuple (or line) carried to the next message.
    pending: Vec<u8>,
    header_seen: bool,
    trailer_seen: bool,
    /// Rows in the open block.
    rows: usize,
    /// Rows decoded so far by this copy.
    total: u64,
}

impl CopyDecoder {
    /// `oids` are the base type oids of the schema's columns, in order.
    pub fn new(schema: Arc<TableSchema>, oids: &[u32], format: CopyFormat) -> Self {
        let builders = schema
            .columns
            .iter()
            .zip(oids)
            .map(|(column, &oid)| Builder::for_column(oid, &column.ty, format))
            .collect();
        Self {
            schema,
            format,
            builders,
            pending: Vec::new(),
            header_seen: false,
            trailer_seen: false,
            rows: 0,
            total: 0,
        }
    }

    /// Rows in the block being built.
    pub fn block_rows(&self) -> usize {
        self.rows
    }

    /// Rows decoded so far.
    pub fn total_rows(&self) -> u64 {
        self.total
    }

    /// Decodes every complete tuple of `data` (one CopyData message).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), PostgresError> {
        if self.pending.is_empty() {
            let used = self.decode_from(data)?;
            self.pending.extend_from_slice(&data[used..]);
        } else {
            let mut buffer = std::mem::take(&mut self.pending);
            buffer.extend_from_slice(data);
            let used = self.decode_from(&buffer)?;
            buffer.drain(..used);
            self.pending = buffer;
        }
        Ok(())
    }

    /// Checks the stream ended where it should: after the trailer (binary)
    /// or a complete line (text).
    pub fn finish(&self) -> Result<(), PostgresError> {
        let complete = match self.format {
            CopyFormat::Binary => self.trailer_seen && self.pending.is_empty(),
            CopyFormat::Text => self.pending.is_empty(),
        };
        if complete {
            Ok(())
        } else {
            Err(self.error(CopyError::Truncated))
        }
    }

    fn error(&self, source: CopyError) -> PostgresError {
        PostgresError::Copy {
            table: self.schema.table.clone(),
            source,
        }
    }

    /// Decodes complete tuples from the start of `data`; returns the bytes used.
    fn decode_from(&mut self, data: &[u8]) -> Result<usize, PostgresError> {
        match self.format {
            CopyFormat::Text => {
                let mut start = 0;
                while let Some(end) = data[start..].iter().position(|&b| b == b'\n') {
                    self.text_line(&data[start..start + end])?;
                    start += end + 1;
                }
                Ok(start)
            }
            CopyFormat::Binary => {
                let mut at = 0;
                if !self.header_seen {
                    match header_len(data).map_err(|e| self.error(e))? {
                        None => return Ok(0),
                        Some(len) => {
                            self.header_seen = true;
                            at = len;
                        }
                    }
                }
                while at < data.len() {
                    if self.trailer_seen {
                        return Err(self.error(CopyError::AfterTrailer));
                    }
                    let Some(len) = self.tuple_len(&data[at..])? else {
                        break;
                    };
                    if !self.trailer_seen {
                        self.binary_tuple(&data[at..at + len])?;
                    }
                    at += len;
                }
                Ok(at)
            }
        }
    }

    /// The length of the tuple (or trailer) at the start of `data`, `None`
    /// while it is incomplete.
    fn tuple_len(&mut self, data: &[u8]) -> Result<Option<usize>, PostgresError> {
        let Some(count) = data.get(..2) else {
            return Ok(None);
        };
        let count = i16::from_be_bytes([count[0], count[1]]);
        if count == -1 {
            self.trailer_seen = true;
            return Ok(Some(2));
        }
        if count as usize != self.builders.len() || count < 0 {
            return Err(PostgresError::CopyShape {
                table: self.schema.table.clone(),
                got: count.max(0) as usize,
                expected: self.builders.len(),
            });
        }
        let mut at = 2;
        for _ in 0..count {
            let Some(len) = data.get(at..at + 4) else {
                return Ok(None);
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            at += 4;
            if len >= 0 {
                at += len as usize;
            } else if len != -1 {
                return Err(self.error(CopyError::Malformed));
            }
        }
        Ok((at <= data.len()).then_some(at))
    }

    /// Appends one complete binary tuple (its length already checked).
    fn binary_tuple(&mut self, tuple: &[u8]) -> Result<(), PostgresError> {
        let mut at = 2;
        for index in 0..self.builders.len() {
            let len = i32::from_be_bytes(tuple[at..at + 4].try_into().expect("4 bytes"));
            at += 4;
            let value = if len < 0 {
                None
            } else {
                let value = &tuple[at..at + len as usize];
                at += len as usize;
                Some(value)
            };
            self.append_binary(index, value)?;
        }
        self.rows += 1;
        self.total += 1;
        Ok(())
    }

    fn append_binary(&mut self, index: usize, value: Option<&[u8]>) -> Result<(), PostgresError> {
        let column = &self.schema.columns[index];
        let bad = |what: &'static str, length: usize| PostgresError::Value {
            table: self.schema.table.clone(),
            column: column.name.clone(),
            source: crate::value::ValueError {
                what: what.into(),
                length,
            },
        };
        macro_rules! fixed {
            ($builder:expr, $ty:ty, $what:literal) => {
                match value {
                    None => $builder.append_null(),
                    Some(bytes) => $builder.append_value(<$ty>::from_be_bytes(
                        bytes.try_into().map_err(|_| bad($what, bytes.len()))?,
                    )),
                }
            };
        }
        match &mut self.builders[index] {
            Builder::Bool(b) => match value {
                None => b.append_null(),
                Some([0]) => b.append_value(false),
                Some([1]) => b.append_value(true),
                Some(bytes) => return Err(bad("boolean", bytes.len())),
            },
            Builder::Int16(b) => fixed!(b, i16, "int2"),
            Builder::Int32(b) => fixed!(b, i32, "int4"),
            Builder::Int64(b) => fixed!(b, i64, "int8"),
            Builder::Float32(b) => fixed!(b, f32, "float4"),
            Builder::Float64(b) => fixed!(b, f64, "float8"),
            Builder::Text(b) => match value {
                None => b.append_null(),
                Some(bytes) => b.append_value(
                    std::str::from_utf8(bytes).map_err(|_| bad("UTF-8 text", bytes.len()))?,
                ),
            },
            Builder::Values { oid, values } => values.push(match value {
                None => Datum::Null,
                Some(bytes) => {
                    crate::binary::decode(*oid, &column.ty, bytes).map_err(|source| {
                        PostgresError::Value {
                            table: self.schema.table.clone(),
                            column: column.name.clone(),
                            source,
                        }
                    })?
                }
            }),
        }
        Ok(())
    }

    fn text_line(&mut self, line: &[u8]) -> Result<(), PostgresError> {
        let fields = split_line(line).map_err(|e| self.error(e))?;
        if fields.len() != self.builders.len() {
            return Err(PostgresError::CopyShape {
                table: self.schema.table.clone(),
                got: fields.len(),
                expected: self.builders.len(),
            });
        }
        for (index, field) in fields.into_iter().enumerate() {
            let column = &self.schema.columns[index];
            let datum = match field {
                None => Datum::Null,
                Some(text) => crate::value::parse(&column.ty, &text).map_err(|source| {
                    PostgresError::Value {
                        table: self.schema.table.clone(),
                        column: column.name.clone(),
                        source,
                    }
                })?,
            };
            match &mut self.builders[index] {
                Builder::Values { values, .. } => values.push(datum),
                _ => unreachable!("text copies decode into values"),
            }
        }
        self.rows += 1;
        self.total += 1;
        Ok(())
    }

    /// The rows decoded since the last block, numbered from `first_ord`;
    /// `None` when there are none.
    pub fn take_block(&mut self, first_ord: u64) -> Result<Option<RowBlock>, PostgresError> {
        if self.rows == 0 {
            return Ok(None);
        }
        let rows = std::mem::take(&mut self.rows);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.builders.len());
        for (builder, column) in self.builders.iter_mut().zip(&self.schema.columns) {
            // Each builder starts the next block at this block's size, so
            // it does not grow (copy, fault in pages) value by value again.
            let array: ArrayRef = match builder {
                Builder::Bool(b) => {
                    Arc::new(std::mem::replace(b, BooleanBuilder::with_capacity(rows)).finish())
                }
                Builder::Int16(b) => {
                    Arc::new(std::mem::replace(b, Int16Builder::with_capacity(rows)).finish())
                }
                Builder::Int32(b) => {
                    Arc::new(std::mem::replace(b, Int32Builder::with_capacity(rows)).finish())
                }
                Builder::Int64(b) => {
                    Arc::new(std::mem::replace(b, Int64Builder::with_capacity(rows)).finish())
                }
                Builder::Float32(b) => {
                    Arc::new(std::mem::replace(b, Float32Builder::with_capacity(rows)).finish())
                }
                Builder::Float64(b) => {
                    Arc::new(std::mem::replace(b, Float64Builder::with_capacity(rows)).finish())
                }
                Builder::Text(b) => {
                    let bytes = b.values_slice().len();
                    Arc::new(
                        std::mem::replace(b, StringBuilder::with_capacity(rows, bytes)).finish(),
                    )
                }
                Builder::Values { values, .. } => {
                    let refs: Vec<&Datum> = values.iter().collect();
                    let array = build_array(&arrow_type(&column.ty), &refs).map_err(|source| {
                        PostgresError::Arrow {
                            table: self.schema.table.clone(),
                            source,
                        }
                    })?;
                    values.clear();
                    array
                }
            };
            columns.push(array);
        }
        Ok(Some(RowBlock {
            table: self.schema.table.clone(),
            ops: vec![Op::Read; rows],
            first_ord,
            columns,
        }))
    }
}

/// The length of the binary header at the start of `data`, `None` while it
/// is incomplete.
fn header_len(data: &[u8]) -> Result<Option<usize>, CopyError> {
    if data.len() < 19 {
        return Ok(None);
    }
    if &data[..11] != SIGNATURE {
        return Err(CopyError::BadHeader);
    }
    let extension = i32::from_be_bytes(data[15..19].try_into().expect("4 bytes"));
    if extension < 0 {
        return Err(CopyError::BadHeader);
    }
    let len = 19 + extension as usize;
    Ok((data.len() >= len).then_some(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type};
    use arrow_array::Array;
    use tidewater_core::{Column, TableId};

    fn schema() -> Arc<TableSchema> {
        let column = |name: &str, ty| Column {
            name: name.into(),
            ty,
            source_type: String::new(),
            key: false,
        };
        Arc::new(TableSchema {
            table: TableId::new("s", "t"),
            version: 1,
            columns: vec![
                column("id", ColumnType::Int32),
                column("name", ColumnType::Text),
                column("big", ColumnType::Int64),
            ],
        })
    }

    fn tuple(id: Option<i32>, name: Option<&str>, big: i64) -> Vec<u8> {
        let mut out = 3i16.to_be_bytes().to_vec();
        match id {
            Some(v) => {
                out.extend(4i32.to_be_bytes());
                out.extend(v.to_be_bytes());
            }
            None => out.extend((-1i32).to_be_bytes()),
        }
        match name {
            Some(v) => {
                out.extend((v.len() as i32).to_be_bytes());
                out.extend(v.as_bytes());
            }
            None => out.extend((-1i32).to_be_bytes()),
        }
        out.extend(8i32.to_be_bytes());
        out.extend(big.to_be_bytes());
        out
    }

    fn stream() -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend(0i32.to_be_bytes());
        out.extend(0i32.to_be_bytes());
        out.extend(tuple(Some(1), Some("a"), 10));
        out.extend(tuple(None, None, -1));
        out.extend(tuple(Some(3), Some("ünï"), i64::MAX));
        out.extend((-1i16).to_be_bytes());
        out
    }

    #[test]
    fn decodes_binary_split_at_every_byte() {
        let bytes = stream();
        for split in 0..bytes.len() {
            let mut decoder = CopyDecoder::new(schema(), &[INT4, TEXT, INT8], CopyFormat::Binary);
            decoder.feed(&bytes[..split]).unwrap();
            decoder.feed(&bytes[split..]).unwrap();
            decoder.finish().unwrap();
            let block = decoder.take_block(7).unwrap().unwrap();
            assert_eq!(block.first_ord, 7);
            assert_eq!(block.len(), 3);
            let ids = block.columns[0].as_primitive::<Int32Type>();
            assert_eq!(ids.value(0), 1);
            assert!(ids.is_null(1));
            let names = block.columns[1].as_string::<i32>();
            assert_eq!(names.value(2), "ünï");
            assert!(names.is_null(1));
            assert_eq!(
                block.columns[2].as_primitive::<Int64Type>().value(2),
                i64::MAX
            );
        }
    }

    #[test]
    fn refuses_truncated_and_foreign_streams() {
        let bytes = stream();
        let mut decoder = CopyDecoder::new(schema(), &[INT4, TEXT, INT8], CopyFormat::Binary);
        decoder.feed(&bytes[..bytes.len() - 5]).unwrap();
        assert!(decoder.finish().is_err());
        let mut decoder = CopyDecoder::new(schema(), &[INT4, TEXT, INT8], CopyFormat::Binary);
        assert!(decoder.feed(b"PGCOPY\nXXXXXXXXXXXXXXXXXXXX").is_err());
        // A field count other than the table's.
        let mut bad = bytes[..19].to_vec();
        bad.extend(2i16.to_be_bytes());
        let mut decoder = CopyDecoder::new(schema(), &[INT4, TEXT, INT8], CopyFormat::Binary);
        assert!(decoder.feed(&bad).is_err());
        // A wrong width for an int4.
        let mut bad = bytes[..19].to_vec();
        bad.extend(3i16.to_be_bytes());
        bad.extend(2i32.to_be_bytes());
        bad.extend([0, 1]);
        bad.extend((-1i32).to_be_bytes());
        bad.extend((-1i32).to_be_bytes());
        let mut decoder = CopyDecoder::new(schema(), &[INT4, TEXT, INT8], CopyFormat::Binary);
        assert!(decoder.feed(&bad).is_err());
    }

    #[test]
    fn decodes_text_lines() {
        let mut decoder = CopyDecoder::new(schema(), &[INT4, TEXT, INT8], CopyFormat::Text);
        decoder.feed(b"1\ta\\tb\t5\n\\N\t\\N\t").unwrap();
        decoder.feed(b"6\n").unwrap();
        decoder.finish().unwrap();
        let block = decoder.take_block(1).unwrap().unwrap();
        assert_eq!(block.len(), 2);
        assert_eq!(block.columns[1].as_string::<i32>().value(0), "a\tb");
        assert!(block.columns[0].is_null(1));
    }
}
