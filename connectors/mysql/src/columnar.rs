//! Rows events decoded straight into Arrow columns.
//!
//! [`decode_rows`](crate::rows::decode_rows) yields one `Vec<Datum>` per row,
//! with a heap value per string; the batcher then copies every value again into
//! Arrow builders. This path skips both: [`decode_rows_columnar`] walks the same
//! precomputed `ValueOp`s of the [`RowPlan`] and appends each value to its
//! column's buffers, so a row costs no allocation of its own (JSON documents,
//! INET6 text and non-UTF-8 charsets still decode through a temporary).
//!
//! ```text
//!  rows event ──RowsData::parse──▶ packed rows ──per value──▶ ColumnBuffer[i]
//!  (same header checks and          (before images of          values + offsets
//!   uncompression as decode_rows)    updates skipped unless     + null bitmap
//!                                    the key changed)
//!                                                                   │ finish()
//!                                                                   ▼
//!                                                   ArrayRef per column, ops
//! ```
//!
//! Invariants:
//!
//! * Values are those of the Datum path, bit for bit: fixed-size values go
//!   through the same `decode_fixed` (so zero dates are NULL and counted the
//!   same way), variable-size values share `value_bytes` and the helpers for
//!   ENUM, SET, GEOMETRY and INET6. The tests decode every fixture both ways.
//! * Each column's Arrow type is `tidewater_core::arrow_type` of its
//!   [`Column`](tidewater_core::Column) type.
//! * An event is appended whole or not at all: on error every column is
//!   truncated back to the rows it held before the call. The buffers are our
//!   own (`Vec`s and a [`NullBufferBuilder`]) rather than Arrow's builders
//!   because those cannot drop a half-appended row.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use arrow_array::types::{
    Date32Type, Decimal128Type, Decimal256Type, DurationMicrosecondType, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Int8Type, TimestampMicrosecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{
    ArrayRef, ArrowPrimitiveType, BinaryArray, FixedSizeBinaryArray, ListArray, PrimitiveArray,
    StringArray,
};
use arrow_buffer::{i256, Buffer, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field};
use tidewater_core::{arrow_type, Datum, Op};

use crate::charset::Charset;
use crate::event::DecodeError;
use crate::json::decode_binary_json;
use crate::rows::{
    append_wkb, decode_fixed, enum_label, for_each_set_label, value_bytes, write_inet6,
    DecodeStats, RowPlan, RowsData, RowsKind, ValueOp,
};

/// Reason for a value that does not fit the buffers `out` was built with:
/// `out` comes from another table's plan.
const WRONG_PLAN: &str = "rows buffer was built for another table map";
/// Reason when one batch outgrows Arrow's 32-bit offsets.
const OFFSET_OVERFLOW: &str = "column holds over 2 GiB of data: finish batches sooner";
const BAD_TEXT: &str = "bytes are not valid in the column's charset";

/// Rows of one table decoded into Arrow columns; one per rows event, or reused
/// across the events of a table (and across its table maps while the columns
/// keep their types).
#[derive(Debug)]
pub struct ColumnarRows {
    columns: Vec<ColumnBuffer>,
    ops: Vec<Op>,
}

impl ColumnarRows {
    /// Empty columns for `plan.columns()`.
    pub fn new(plan: &RowPlan) -> Self {
        ColumnarRows {
            columns: plan
                .ops
                .iter()
                .zip(&plan.columns)
                .map(|(op, column)| ColumnBuffer::new(op, arrow_type(&column.ty)))
                .collect(),
            ops: Vec::new(),
        }
    }

    /// Rows appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Ops of the rows appended so far: `Insert`, `Update` (the row is the new
    /// image) or `Delete` (the row is the old image; an update that changes
    /// the primary key gives a `Delete` of its old image, then its `Update`).
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// One array per column of the plan, typed `arrow_type(&column.ty)`, and
    /// the op of each row. Leaves `self` empty and ready for more rows.
    pub fn finish(&mut self) -> (Vec<ArrayRef>, Vec<Op>) {
        let rows = self.ops.len();
        let arrays = self.columns.iter_mut().map(|c| c.finish(rows)).collect();
        let ops = std::mem::replace(&mut self.ops, Vec::with_capacity(rows));
        (arrays, ops)
    }

    /// Drops every row past the first `rows`.
    fn truncate(&mut self, rows: usize) {
        self.ops.truncate(rows);
        for column in &mut self.columns {
            column.truncate(rows);
        }
    }
}

/// [`decode_rows`](crate::rows::decode_rows) into Arrow columns: appends to
/// `out` the image of every insert, the new image of every update (preceded by
/// its old image as a delete when it changes the primary key) and the old
/// image of every delete, with the same checks, errors and [`DecodeStats`].
///
/// All or nothing: on error `out` holds exactly the rows it held before the
/// call, so rows of earlier events stay usable.
pub fn decode_rows_columnar(
    event_type: u8,
    body: &[u8],
    plan: &RowPlan,
    out: &mut ColumnarRows,
) -> Result<DecodeStats, DecodeError> {
    let rows_before = out.len();
    let result = append_rows(event_type, body, plan, out);
    if result.is_err() {
        out.truncate(rows_before);
    }
    result
}

fn append_rows(
    event_type: u8,
    body: &[u8],
    plan: &RowPlan,
    out: &mut ColumnarRows,
) -> Result<DecodeStats, DecodeError> {
    let rows = RowsData::parse(event_type, body, plan)?;
    if out.columns.len() != plan.ops.len() {
        return Err(DecodeError::Malformed {
            what: "rows buffer has another column count than the table map",
            offset: 0,
        });
    }
    let mut stats = DecodeStats::default();
    let mut pos = 0;
    let data = &rows.data[..];
    let mut keys = Vec::new();
    while pos < data.len() {
        if rows.kind == RowsKind::Update {
            let old =
                plan.skip_before_image(data, &mut pos, rows.before_present, rows.base, &mut keys)?;
            if let Some(mut at) = old {
                append_image(plan, data, &mut at, rows.base, &mut stats, out)?;
                out.ops.push(Op::Delete);
            }
        }
        append_image(plan, data, &mut pos, rows.base, &mut stats, out)?;
        out.ops.push(rows.op);
    }
    Ok(stats)
}

/// Appends the full image at `pos` as one row of values (its op is the
/// caller's to push). On error the row may be half appended: the caller rolls
/// the event back.
fn append_image(
    plan: &RowPlan,
    data: &[u8],
    pos: &mut usize,
    base: usize,
    stats: &mut DecodeStats,
    out: &mut ColumnarRows,
) -> Result<(), DecodeError> {
    let nulls_len = plan.ops.len().div_ceil(8);
    let Some(nulls) = data.get(*pos..*pos + nulls_len) else {
        return Err(DecodeError::Truncated {
            what: "row null bitmap",
            offset: base + *pos,
            needed: nulls_len,
        });
    };
    *pos += nulls_len;
    for (i, (op, column)) in plan.ops.iter().zip(&mut out.columns).enumerate() {
        if nulls[i / 8] & (1 << (i % 8)) != 0 {
            column.push_null();
            continue;
        }
        let start = *pos;
        if let Err(reason) = append_value(op, data, pos, stats, column) {
            return Err(plan.value_error(i, base + start, reason));
        }
    }
    Ok(())
}

/// Decodes the value at `pos` into `column`.
#[inline]
fn append_value(
    op: &ValueOp,
    data: &[u8],
    pos: &mut usize,
    stats: &mut DecodeStats,
    column: &mut ColumnBuffer,
) -> Result<(), &'static str> {
    let (b, fixed) = value_bytes(op, data, pos)?;
    match op {
        ValueOp::Enum { labels, .. } => column.push_str(enum_label(labels, b)?),
        ValueOp::Set { labels, .. } => column.push_labels(labels, b),
        _ if fixed => column.push_datum(decode_fixed(op, b, stats)?),
        ValueOp::Text { charset, .. } => match charset {
            Charset::Utf8 => column.push_str(std::str::from_utf8(b).map_err(|_| BAD_TEXT)?),
            Charset::Ascii if b.is_ascii() => {
                column.push_str(std::str::from_utf8(b).map_err(|_| BAD_TEXT)?)
            }
            Charset::Encoding(e) if b.is_ascii() && e.is_ascii_compatible() => {
                column.push_str(std::str::from_utf8(b).map_err(|_| BAD_TEXT)?)
            }
            _ => column.push_str(&charset.decode(b).ok_or(BAD_TEXT)?),
        },
        ValueOp::Bytes { pad_to, .. } => {
            let pad = usize::from(*pad_to);
            if pad > 0 && b.len() > pad {
                return Err("binary value longer than its column");
            }
            let bytes = column.bytes()?;
            bytes.extend_from_slice(b);
            if pad > b.len() {
                bytes.resize(bytes.len() + pad - b.len(), 0);
            }
            column.end_value()
        }
        ValueOp::JsonBinary { .. } => {
            let text = decode_binary_json(b).map_err(|e| match e {
                DecodeError::Json { reason, .. } => reason,
                _ => "invalid binary JSON",
            })?;
            column.push_str(&text)
        }
        ValueOp::JsonText { .. } => {
            column.push_str(std::str::from_utf8(b).map_err(|_| "JSON text is not UTF-8")?)
        }
        ValueOp::Geometry { .. } => {
            append_wkb(b, column.bytes()?)?;
            column.end_value()
        }
        ValueOp::Uuid { .. } | ValueOp::Inet6 { .. } => {
            if b.len() > 16 {
                return Err("value longer than 16 bytes");
            }
            let mut v = [0u8; 16];
            v[..b.len()].copy_from_slice(b);
            if matches!(op, ValueOp::Uuid { .. }) {
                column.push_uuid(v)
            } else {
                write_inet6(v, column.text()?);
                column.end_value()
            }
        }
        ValueOp::Inet4 { .. } => {
            if b.len() > 4 {
                return Err("value longer than 4 bytes");
            }
            let mut v = [0u8; 4];
            v[..b.len()].copy_from_slice(b);
            let _ = write!(column.text()?, "{}", Ipv4Addr::from(v));
            column.end_value()
        }
        _ => Err(WRONG_PLAN),
    }
}

/// The values of one column so far. Offsets start at `[0]`; a NULL takes a
/// zero (or an empty value) so every buffer has one slot per row.
#[derive(Debug)]
enum Values {
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    UInt8(Vec<u8>),
    UInt16(Vec<u16>),
    UInt32(Vec<u32>),
    UInt64(Vec<u64>),
    Float32(Vec<f32>),
    Float64(Vec<f64>),
    Decimal128(Vec<i128>),
    Decimal256(Vec<i256>),
    Date32(Vec<i32>),
    Timestamp(Vec<i64>),
    Duration(Vec<i64>),
    Utf8 {
        offsets: Vec<i32>,
        data: String,
    },
    Binary {
        offsets: Vec<i32>,
        data: Vec<u8>,
    },
    /// 16 bytes per row.
    Uuid(Vec<u8>),
    /// SET: a list of labels per row. `offsets` index `items`, whose offsets
    /// index `data`.
    TextList {
        offsets: Vec<i32>,
        items: Vec<i32>,
        data: String,
    },
}

#[derive(Debug)]
struct ColumnBuffer {
    data_type: DataType,
    values: Values,
    nulls: NullBufferBuilder,
}

fn offset(len: usize) -> Result<i32, &'static str> {
    i32::try_from(len).map_err(|_| OFFSET_OVERFLOW)
}

impl ColumnBuffer {
    /// The buffers `op` decodes into; `data_type` is the column's Arrow type.
    fn new(op: &ValueOp, data_type: DataType) -> Self {
        use ValueOp::*;
        let values = match op {
            I8 => Values::Int8(Vec::new()),
            U8 => Values::UInt8(Vec::new()),
            I16 | Year => Values::Int16(Vec::new()),
            U16 => Values::UInt16(Vec::new()),
            I24 | I32 => Values::Int32(Vec::new()),
            U24 | U32 => Values::UInt32(Vec::new()),
            I64 => Values::Int64(Vec::new()),
            U64 | Bit { .. } => Values::UInt64(Vec::new()),
            F32 => Values::Float32(Vec::new()),
            F64 => Values::Float64(Vec::new()),
            Decimal(layout) if layout.precision <= 38 => Values::Decimal128(Vec::new()),
            Decimal(_) => Values::Decimal256(Vec::new()),
            Date => Values::Date32(Vec::new()),
            Datetime2 { .. }
            | Timestamp2 { .. }
            | DatetimeOld
            | TimestampOld
            | DatetimeHires { .. }
            | TimestampHires { .. } => Values::Timestamp(Vec::new()),
            Time2 { .. } | TimeOld | TimeHires { .. } => Values::Duration(Vec::new()),
            Text { .. }
            | Enum { .. }
            | JsonBinary { .. }
            | JsonText { .. }
            | Inet6 { .. }
            | Inet4 { .. } => Values::Utf8 {
                offsets: vec![0],
                data: String::new(),
            },
            Bytes { .. } | Geometry { .. } => Values::Binary {
                offsets: vec![0],
                data: Vec::new(),
            },
            Uuid { .. } => Values::Uuid(Vec::new()),
            Set { .. } => Values::TextList {
                offsets: vec![0],
                items: vec![0],
                data: String::new(),
            },
        };
        ColumnBuffer {
            data_type,
            values,
            nulls: NullBufferBuilder::new(0),
        }
    }

    fn push_null(&mut self) {
        match &mut self.values {
            Values::Int8(v) => v.push(0),
            Values::Int16(v) => v.push(0),
            Values::Int32(v) | Values::Date32(v) => v.push(0),
            Values::Int64(v) | Values::Timestamp(v) | Values::Duration(v) => v.push(0),
            Values::UInt8(v) => v.push(0),
            Values::UInt16(v) => v.push(0),
            Values::UInt32(v) => v.push(0),
            Values::UInt64(v) => v.push(0),
            Values::Float32(v) => v.push(0.0),
            Values::Float64(v) => v.push(0.0),
            Values::Decimal128(v) => v.push(0),
            Values::Decimal256(v) => v.push(i256::ZERO),
            Values::Uuid(v) => v.extend_from_slice(&[0; 16]),
            // The last offset repeats: an empty slot. It cannot overflow, the
            // previous value's offset was checked.
            Values::Utf8 { offsets, .. }
            | Values::Binary { offsets, .. }
            | Values::TextList { offsets, .. } => {
                let last = offsets.last().copied().unwrap_or(0);
                offsets.push(last);
            }
        }
        self.nulls.append_null();
    }

    /// A fixed-size value from `decode_fixed` (NULL for zero dates).
    #[inline]
    fn push_datum(&mut self, datum: Datum) -> Result<(), &'static str> {
        const RANGE: &str = "unsigned value out of range for its column";
        match (&mut self.values, datum) {
            (_, Datum::Null) => {
                self.push_null();
                return Ok(());
            }
            (Values::Int8(v), Datum::Int8(x)) => v.push(x),
            (Values::Int16(v), Datum::Int16(x)) => v.push(x),
            (Values::Int32(v), Datum::Int32(x)) => v.push(x),
            (Values::Int64(v), Datum::Int64(x)) => v.push(x),
            (Values::UInt8(v), Datum::UInt(x)) => v.push(u8::try_from(x).map_err(|_| RANGE)?),
            (Values::UInt16(v), Datum::UInt(x)) => v.push(u16::try_from(x).map_err(|_| RANGE)?),
            (Values::UInt32(v), Datum::UInt(x)) => v.push(u32::try_from(x).map_err(|_| RANGE)?),
            (Values::UInt64(v), Datum::UInt(x)) => v.push(x),
            (Values::Float32(v), Datum::Float32(x)) => v.push(x),
            (Values::Float64(v), Datum::Float64(x)) => v.push(x),
            (Values::Decimal128(v), Datum::Decimal128(x)) => v.push(x),
            (Values::Decimal256(v), Datum::Decimal256(x)) => v.push(x),
            (Values::Date32(v), Datum::Date(x)) => v.push(x),
            (Values::Timestamp(v), Datum::Timestamp(x)) => v.push(x),
            (Values::Duration(v), Datum::Duration(x)) => v.push(x),
            _ => return Err(WRONG_PLAN),
        }
        self.nulls.append_non_null();
        Ok(())
    }

    #[inline]
    fn push_str(&mut self, s: &str) -> Result<(), &'static str> {
        self.text()?.push_str(s);
        self.end_value()
    }

    #[inline]
    fn push_uuid(&mut self, v: [u8; 16]) -> Result<(), &'static str> {
        let Values::Uuid(data) = &mut self.values else {
            return Err(WRONG_PLAN);
        };
        data.extend_from_slice(&v);
        self.nulls.append_non_null();
        Ok(())
    }

    fn push_labels(&mut self, labels: &[String], b: &[u8]) -> Result<(), &'static str> {
        let Values::TextList {
            offsets,
            items,
            data,
        } = &mut self.values
        else {
            return Err(WRONG_PLAN);
        };
        let mut overflow = false;
        for_each_set_label(labels, b, |label| {
            data.push_str(label);
            match offset(data.len()) {
                Ok(end) => items.push(end),
                Err(_) => overflow = true,
            }
        })?;
        if overflow {
            return Err(OFFSET_OVERFLOW);
        }
        offsets.push(offset(items.len() - 1)?);
        self.nulls.append_non_null();
        Ok(())
    }

    /// The text buffer to append one value to; [`end_value`](Self::end_value)
    /// closes it.
    #[inline]
    fn text(&mut self) -> Result<&mut String, &'static str> {
        match &mut self.values {
            Values::Utf8 { data, .. } => Ok(data),
            _ => Err(WRONG_PLAN),
        }
    }

    /// The byte buffer to append one value to; [`end_value`](Self::end_value)
    /// closes it.
    #[inline]
    fn bytes(&mut self) -> Result<&mut Vec<u8>, &'static str> {
        match &mut self.values {
            Values::Binary { data, .. } => Ok(data),
            _ => Err(WRONG_PLAN),
        }
    }

    /// Closes the value appended through [`text`](Self::text) or
    /// [`bytes`](Self::bytes).
    #[inline]
    fn end_value(&mut self) -> Result<(), &'static str> {
        match &mut self.values {
            Values::Utf8 { offsets, data } => offsets.push(offset(data.len())?),
            Values::Binary { offsets, data } => offsets.push(offset(data.len())?),
            _ => return Err(WRONG_PLAN),
        }
        self.nulls.append_non_null();
        Ok(())
    }

    /// Drops every row past the first `rows`, and bytes written for a value
    /// that was not closed.
    fn truncate(&mut self, rows: usize) {
        self.nulls.truncate(rows);
        // Offsets start at 0 and never decrease, so they fit a usize.
        let last = |offsets: &[i32]| offsets.last().map_or(0, |&o| o as usize);
        match &mut self.values {
            Values::Int8(v) => v.truncate(rows),
            Values::Int16(v) => v.truncate(rows),
            Values::Int32(v) | Values::Date32(v) => v.truncate(rows),
            Values::Int64(v) | Values::Timestamp(v) | Values::Duration(v) => v.truncate(rows),
            Values::UInt8(v) => v.truncate(rows),
            Values::UInt16(v) => v.truncate(rows),
            Values::UInt32(v) => v.truncate(rows),
            Values::UInt64(v) => v.truncate(rows),
            Values::Float32(v) => v.truncate(rows),
            Values::Float64(v) => v.truncate(rows),
            Values::Decimal128(v) => v.truncate(rows),
            Values::Decimal256(v) => v.truncate(rows),
            Values::Uuid(v) => v.truncate(rows * 16),
            Values::Utf8 { offsets, data } => {
                offsets.truncate(rows + 1);
                data.truncate(last(offsets));
            }
            Values::Binary { offsets, data } => {
                offsets.truncate(rows + 1);
                data.truncate(last(offsets));
            }
            Values::TextList {
                offsets,
                items,
                data,
            } => {
                offsets.truncate(rows + 1);
                items.truncate(last(offsets) + 1);
                data.truncate(last(items));
            }
        }
    }

    /// The column's array; the buffers start over, sized for as many rows.
    fn finish(&mut self, rows: usize) -> ArrayRef {
        let nulls = self.nulls.finish();
        let data_type = self.data_type.clone();
        fn primitive<T: ArrowPrimitiveType>(
            values: &mut Vec<T::Native>,
            nulls: Option<arrow_buffer::NullBuffer>,
            data_type: DataType,
        ) -> ArrayRef {
            let rows = values.len();
            let values = std::mem::replace(values, Vec::with_capacity(rows));
            Arc::new(
                PrimitiveArray::<T>::new(ScalarBuffer::from(values), nulls)
                    .with_data_type(data_type),
            )
        }
        fn take_offsets(offsets: &mut Vec<i32>, rows: usize) -> OffsetBuffer<i32> {
            let mut fresh = Vec::with_capacity(rows + 1);
            fresh.push(0);
            OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, fresh)))
        }
        match &mut self.values {
            Values::Int8(v) => primitive::<Int8Type>(v, nulls, data_type),
            Values::Int16(v) => primitive::<Int16Type>(v, nulls, data_type),
            Values::Int32(v) => primitive::<Int32Type>(v, nulls, data_type),
            Values::Int64(v) => primitive::<Int64Type>(v, nulls, data_type),
            Values::UInt8(v) => primitive::<UInt8Type>(v, nulls, data_type),
            Values::UInt16(v) => primitive::<UInt16Type>(v, nulls, data_type),
            Values::UInt32(v) => primitive::<UInt32Type>(v, nulls, data_type),
            Values::UInt64(v) => primitive::<UInt64Type>(v, nulls, data_type),
            Values::Float32(v) => primitive::<Float32Type>(v, nulls, data_type),
            Values::Float64(v) => primitive::<Float64Type>(v, nulls, data_type),
            Values::Decimal128(v) => primitive::<Decimal128Type>(v, nulls, data_type),
            Values::Decimal256(v) => primitive::<Decimal256Type>(v, nulls, data_type),
            Values::Date32(v) => primitive::<Date32Type>(v, nulls, data_type),
            Values::Timestamp(v) => primitive::<TimestampMicrosecondType>(v, nulls, data_type),
            Values::Duration(v) => primitive::<DurationMicrosecondType>(v, nulls, data_type),
            Values::Uuid(v) => {
                let data = std::mem::replace(v, Vec::with_capacity(rows * 16));
                Arc::new(FixedSizeBinaryArray::new(16, Buffer::from_vec(data), nulls))
            }
            Values::Utf8 { offsets, data } => {
                let offsets = take_offsets(offsets, rows);
                let data = std::mem::replace(data, String::with_capacity(data.len()));
                Arc::new(StringArray::new(
                    offsets,
                    Buffer::from_vec(data.into_bytes()),
                    nulls,
                ))
            }
            Values::Binary { offsets, data } => {
                let offsets = take_offsets(offsets, rows);
                let data = std::mem::replace(data, Vec::with_capacity(data.len()));
                Arc::new(BinaryArray::new(offsets, Buffer::from_vec(data), nulls))
            }
            Values::TextList {
                offsets,
                items,
                data,
            } => {
                let offsets = take_offsets(offsets, rows);
                let item_count = items.len();
                let items = take_offsets(items, item_count);
                let data = std::mem::replace(data, String::with_capacity(data.len()));
                let labels = StringArray::new(items, Buffer::from_vec(data.into_bytes()), None);
                let element = match &self.data_type {
                    DataType::List(field) => field.clone(),
                    _ => Arc::new(Field::new("element", DataType::Utf8, true)),
                };
                Arc::new(ListArray::new(element, offsets, Arc::new(labels), nulls))
            }
        }
    }
}
