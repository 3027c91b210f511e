//! Columns left out or masked at capture.
//!
//! Personal data that the lake should never hold is dealt with before any
//! other part of tidewater sees it: the source task passes every event
//! through a [`Masker`] the moment the source yields it, so batches, spill
//! files, sinks, logs and errors only ever meet the masked value.
//!
//! ```text
//!  source.next_event() ──▶ Masker::apply ──▶ channel ──▶ coordinator ──▶ batcher ──▶ sink
//!                          │ Schema: drop / retype the masked columns,
//!                          │         record how in `source_type`
//!                          │ Row, Block: the same per value
//!                          │ Ddl: statement withheld (it may quote values)
//! ```
//!
//! Three actions, per table and column pattern (the first rule that matches
//! a column wins):
//!
//! * `exclude` — the column is left out of the table's schema;
//! * `constant` — every non-NULL value becomes the given text;
//! * `hash` — every non-NULL value becomes the lowercase hex HMAC-SHA-256 of
//!   its canonical text ([`canonical_text`]) under a secret key. The same
//!   value hashes the same in every table and every run, so joins on it still
//!   work; without the key nobody can test guesses against it (a plain hash
//!   of an e-mail address or a phone number is reversed by trying them all).
//!
//! NULL stays NULL and an unchanged TOAST value stays "unchanged" (it is
//! restored from the row's previous image, which was masked the same way).
//! A key column may be hashed — the hash is as unique as the value — but
//! never excluded or made constant: rows would merge.
//!
//! A masked column's `source_type` says what was done (`hmac-sha256 key
//! 1a2b3c4d (was text)`, `constant (was date)`), so the lake's field
//! metadata and the schema history record it; the key id is an HMAC of a
//! fixed label, which tells keys apart without revealing them, and a new
//! key shows as a new schema version.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Decimal256Type, DurationMicrosecondType, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Int8Type, Time64MicrosecondType, TimestampMicrosecondType,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, StringArray};
use arrow_schema::DataType;
use hmac::{KeyInit, Mac};

use crate::event::{ChangeEvent, Datum, RowBlock, RowChange, TableId};
use crate::filter::glob;
use crate::schema::{Column, ColumnType, TableSchema};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The shortest hash key accepted, in bytes.
pub const MIN_HASH_KEY_BYTES: usize = 16;

/// What is done to a matched column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskAction {
    Exclude,
    Constant(String),
    Hash,
}

/// One rule: the columns matching `columns` (patterns, `*` and `?`) of the
/// tables matching `tables` (patterns over `schema.table`).
#[derive(Debug, Clone)]
pub struct MaskRule {
    pub tables: String,
    pub columns: Vec<String>,
    pub action: MaskAction,
}

/// Every rule of a pipeline, with the hash key.
#[derive(Clone, Default)]
pub struct MaskPolicy {
    rules: Vec<MaskRule>,
    key: Option<HashKey>,
}

#[derive(Clone)]
struct HashKey {
    mac: HmacSha256,
    /// Eight hex digits naming the key (never the key).
    id: String,
}

impl std::fmt::Debug for MaskPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskPolicy")
            .field("rules", &self.rules)
            .field("key_id", &self.key.as_ref().map(|k| &k.id))
            .finish()
    }
}

/// A masking problem. Only [`MaskError::KeyColumn`] can come from a valid
/// config; it is a config error.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error(
        "column {column} of {table} is part of the row key, and masking may not {action} it \
         (rows would merge)\nhint: mask it with action = \"hash\" (current-state tables and \
         joins keep working), or leave the table out of source.tables"
    )]
    KeyColumn {
        table: TableId,
        column: String,
        action: &'static str,
    },
    #[error("a masking rule hashes columns but no hash key is set\nhint: set masking.hash_key")]
    NoKey,
    #[error("the masking hash key is shorter than {MIN_HASH_KEY_BYTES} bytes\nhint: use 32 random bytes, e.g. the output of `openssl rand -hex 32`")]
    ShortKey,
    #[error("column {column} of {table} holds Arrow type {data_type} that masking cannot read")]
    Unreadable {
        table: TableId,
        column: String,
        data_type: DataType,
    },
}

impl MaskError {
    pub fn class(&self) -> crate::ErrorClass {
        match self {
            MaskError::Unreadable { .. } => crate::ErrorClass::Internal,
            _ => crate::ErrorClass::Config,
        }
    }
}

impl MaskPolicy {
    /// A policy of `rules`; `key` is needed when a rule hashes.
    pub fn new(rules: Vec<MaskRule>, key: Option<&[u8]>) -> Result<MaskPolicy, MaskError> {
        let key = match key {
            Some(key) if key.len() < MIN_HASH_KEY_BYTES => return Err(MaskError::ShortKey),
            Some(key) => {
                let mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
                let mut label = mac.clone();
                label.update(b"tidewater hash key id");
                let id = hex(&label.finalize().into_bytes()[..4]);
                Some(HashKey { mac, id })
            }
            None => None,
        };
        if key.is_none() && rules.iter().any(|r| r.action == MaskAction::Hash) {
            return Err(MaskError::NoKey);
        }
        Ok(MaskPolicy { rules, key })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Eight hex digits naming the hash key, when there is one.
    pub fn key_id(&self) -> Option<&str> {
        self.key.as_ref().map(|k| k.id.as_str())
    }

    /// The action for `column` of `table`: the first rule matching both.
    pub fn action(&self, table: &TableId, column: &str) -> Option<&MaskAction> {
        let name = table.to_string();
        self.rules
            .iter()
            .find(|r| glob(&r.tables, &name) && r.columns.iter().any(|c| glob(c, column)))
            .map(|r| &r.action)
    }

    /// True when some rule names `table` (whatever its columns).
    pub fn covers(&self, table: &TableId) -> bool {
        let name = table.to_string();
        self.rules.iter().any(|r| glob(&r.tables, &name))
    }

    /// The masked value of `text` (a value's canonical text) under the hash
    /// key: what a hashed column holds for it.
    pub fn hash_text(&self, text: &[u8]) -> Option<String> {
        let key = self.key.as_ref()?;
        let mut mac = key.mac.clone();
        mac.update(text);
        Some(hex(&mac.finalize().into_bytes()))
    }

    /// The schema sinks see for `schema`, and how each source column gets
    /// there (`None` when no column is masked).
    pub fn plan(&self, schema: &TableSchema) -> Result<Option<MaskPlan>, MaskError> {
        let mut steps = Vec::with_capacity(schema.columns.len());
        let mut columns = Vec::with_capacity(schema.columns.len());
        let mut masked = false;
        for column in &schema.columns {
            let action = self.action(&schema.table, &column.name);
            if column.key {
                if let Some(action @ (MaskAction::Exclude | MaskAction::Constant(_))) = action {
                    return Err(MaskError::KeyColumn {
                        table: schema.table.clone(),
                        column: column.name.clone(),
                        action: match action {
                            MaskAction::Exclude => "exclude",
                            _ => "replace with a constant",
                        },
                    });
                }
            }
            masked |= action.is_some();
            let step = match action {
                None => Step::Keep,
                Some(MaskAction::Exclude) => Step::Drop,
                Some(MaskAction::Constant(value)) => Step::Constant(value.clone()),
                Some(MaskAction::Hash) => Step::Hash(column.ty.clone()),
            };
            let source_type = match (&step, self.key_id()) {
                (Step::Constant(_), _) => Some(format!("constant (was {})", column.source_type)),
                (Step::Hash(_), Some(id)) => {
                    Some(format!("hmac-sha256 key {id} (was {})", column.source_type))
                }
                (Step::Hash(_), None) => return Err(MaskError::NoKey),
                _ => None,
            };
            if step != Step::Drop {
                columns.push(match source_type {
                    Some(source_type) => Column {
                        name: column.name.clone(),
                        ty: ColumnType::Text,
                        source_type,
                        key: column.key,
                    },
                    None => column.clone(),
                });
            }
            steps.push(step);
        }
        if !masked {
            return Ok(None);
        }
        Ok(Some(MaskPlan {
            schema: Arc::new(TableSchema {
                table: schema.table.clone(),
                version: schema.version,
                columns,
            }),
            steps,
        }))
    }
}

/// How one source column reaches the masked schema.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Keep,
    Drop,
    Constant(String),
    /// Hash the value of a column of this type.
    Hash(ColumnType),
}

/// The masked form of one schema version of a table.
#[derive(Debug, Clone)]
pub struct MaskPlan {
    /// The schema sinks see.
    pub schema: Arc<TableSchema>,
    steps: Vec<Step>,
}

/// Applies a [`MaskPolicy`] to a source's events, keeping the plan of each
/// table's current schema.
#[derive(Debug)]
pub struct Masker {
    policy: Arc<MaskPolicy>,
    plans: HashMap<TableId, MaskPlan>,
}

impl Masker {
    pub fn new(policy: Arc<MaskPolicy>) -> Masker {
        Masker {
            policy,
            plans: HashMap::new(),
        }
    }

    /// `event` as sinks may see it.
    pub fn apply(&mut self, event: ChangeEvent) -> Result<ChangeEvent, MaskError> {
        if self.policy.is_empty() {
            return Ok(event);
        }
        Ok(match event {
            ChangeEvent::Schema(schema) => match self.policy.plan(&schema)? {
                Some(plan) => {
                    let masked = plan.schema.clone();
                    self.plans.insert(schema.table.clone(), plan);
                    ChangeEvent::Schema(masked)
                }
                None => {
                    self.plans.remove(&schema.table);
                    ChangeEvent::Schema(schema)
                }
            },
            ChangeEvent::Row(row) => match self.plans.get(&row.table) {
                Some(plan) => ChangeEvent::Row(self.mask_row(plan, row)),
                None => ChangeEvent::Row(row),
            },
            ChangeEvent::Block(block) => match self.plans.get(&block.table) {
                Some(plan) => ChangeEvent::Block(self.mask_block(plan, block)?),
                None => ChangeEvent::Block(block),
            },
            ChangeEvent::Ddl { table, seq, .. } if self.policy.covers(&table) => ChangeEvent::Ddl {
                table,
                seq,
                statement: "(withheld: the table has masked columns, and a statement may quote \
                            values)"
                    .into(),
            },
            other => other,
        })
    }

    fn mask_row(&self, plan: &MaskPlan, row: RowChange) -> RowChange {
        if row.values.is_empty() {
            return row; // a truncate
        }
        let mut values = Vec::with_capacity(plan.schema.columns.len());
        let mut text = Vec::new();
        for (step, value) in plan.steps.iter().zip(row.values) {
            match (step, value) {
                (Step::Drop, _) => {}
                (Step::Keep, value) | (_, value @ (Datum::Null | Datum::Unchanged)) => {
                    values.push(value)
                }
                (Step::Constant(c), _) => values.push(Datum::Text(c.clone())),
                (Step::Hash(ty), value) => {
                    text.clear();
                    canonical_text(&value, ty, &mut text);
                    values.push(Datum::Text(self.hash(&text)));
                }
            }
        }
        RowChange { values, ..row }
    }

    fn mask_block(&self, plan: &MaskPlan, block: RowBlock) -> Result<RowBlock, MaskError> {
        let mut columns = Vec::with_capacity(plan.schema.columns.len());
        for (index, (step, array)) in plan.steps.iter().zip(&block.columns).enumerate() {
            let masked: ArrayRef = match step {
                Step::Keep => array.clone(),
                Step::Drop => continue,
                Step::Constant(c) => Arc::new(
                    (0..array.len())
                        .map(|i| array.is_valid(i).then_some(c.as_str()))
                        .collect::<StringArray>(),
                ),
                Step::Hash(ty) => {
                    let mut text = Vec::new();
                    let mut out = Vec::with_capacity(array.len());
                    for i in 0..array.len() {
                        if array.is_null(i) {
                            out.push(None);
                            continue;
                        }
                        let datum =
                            datum_at(array.as_ref(), i).ok_or_else(|| MaskError::Unreadable {
                                table: block.table.clone(),
                                column: plan_column_name(plan, index),
                                data_type: array.data_type().clone(),
                            })?;
                        text.clear();
                        canonical_text(&datum, ty, &mut text);
                        out.push(Some(self.hash(&text)));
                    }
                    Arc::new(StringArray::from(out))
                }
            };
            columns.push(masked);
        }
        Ok(RowBlock { columns, ..block })
    }

    fn hash(&self, text: &[u8]) -> String {
        self.policy
            .hash_text(text)
            .expect("a plan that hashes exists only with a key")
    }
}

/// The name of source column `index` of a plan (for an error).
fn plan_column_name(plan: &MaskPlan, index: usize) -> String {
    // Masked schema columns are the kept source columns, in order.
    let kept_before = plan.steps[..index]
        .iter()
        .filter(|s| **s != Step::Drop)
        .count();
    plan.schema
        .columns
        .get(kept_before)
        .map_or_else(|| format!("#{index}"), |c| c.name.clone())
}

/// Appends the canonical text of `value` (of column type `ty`) to `out`:
/// what a hashed column's HMAC is taken over, so that a user can compute the
/// hash of a known value with any HMAC tool. Integers in decimal; decimals
/// with exactly their scale's digits (`12.50`); floats in the shortest form
/// that reads back (`0.1`, `NaN`, `inf`); text and JSON as they are; bytes as
/// they are; booleans `true`/`false`; dates `2024-01-31`; timestamps
/// `2024-01-31T12:00:00.000000` (with `Z` when zoned); times
/// `12:00:00.000000`; durations in microseconds; UUIDs in lowercase
/// hyphenated form; lists as a JSON array of their elements' texts.
pub fn canonical_text(value: &Datum, ty: &ColumnType, out: &mut Vec<u8>) {
    let mut push = |s: &str| out.extend_from_slice(s.as_bytes());
    match value {
        Datum::Null | Datum::Unchanged => {}
        Datum::Bool(b) => push(if *b { "true" } else { "false" }),
        Datum::Int8(v) => push(&v.to_string()),
        Datum::Int16(v) => push(&v.to_string()),
        Datum::Int32(v) => push(&v.to_string()),
        Datum::Int64(v) => push(&v.to_string()),
        Datum::UInt(v) => push(&v.to_string()),
        Datum::Float32(v) => push(&v.to_string()),
        Datum::Float64(v) => push(&v.to_string()),
        Datum::Decimal128(v) => push(&scaled(&v.to_string(), decimal_scale(ty))),
        Datum::Decimal256(v) => push(&scaled(&v.to_string(), decimal_scale(ty))),
        Datum::Text(s) => push(s),
        Datum::Bytes(b) => out.extend_from_slice(b),
        Datum::Date(days) => push(&date_text(*days)),
        Datum::Timestamp(us) => {
            let text = timestamp_text(*us);
            push(&text);
            if *ty == ColumnType::TimestampTz {
                push("Z");
            }
        }
        Datum::Time(us) => push(&time_text(*us)),
        Datum::Duration(us) => push(&us.to_string()),
        Datum::Uuid(bytes) => push(&uuid_text(bytes)),
        Datum::List(items) => {
            let inner = match ty {
                ColumnType::List(inner) => inner.as_ref(),
                other => other,
            };
            let texts: Vec<serde_json::Value> = items
                .iter()
                .map(|item| match item {
                    Datum::Null | Datum::Unchanged => serde_json::Value::Null,
                    item => {
                        let mut bytes = Vec::new();
                        canonical_text(item, inner, &mut bytes);
                        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
                    }
                })
                .collect();
            push(&serde_json::Value::Array(texts).to_string());
        }
    }
}

fn decimal_scale(ty: &ColumnType) -> i8 {
    match ty {
        ColumnType::Decimal { scale, .. } => *scale,
        _ => 0,
    }
}

/// `unscaled` (decimal digits, maybe signed) with `scale` digits after the point.
fn scaled(unscaled: &str, scale: i8) -> String {
    let (sign, digits) = match unscaled.strip_prefix('-') {
        Some(digits) => ("-", digits),
        None => ("", unscaled),
    };
    if scale <= 0 {
        let zeros = "0".repeat(scale.unsigned_abs() as usize);
        return if digits == "0" {
            "0".into()
        } else {
            format!("{sign}{digits}{zeros}")
        };
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

fn date_text(days: i32) -> String {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    match epoch.checked_add_signed(chrono::TimeDelta::days(days as i64)) {
        Some(date) => date.format("%Y-%m-%d").to_string(),
        None => format!("day {days}"),
    }
}

fn timestamp_text(us: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(t) => t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        None => format!("{us}us"),
    }
}

fn time_text(us: i64) -> String {
    let (secs, micros) = (us.div_euclid(1_000_000), us.rem_euclid(1_000_000));
    format!(
        "{:02}:{:02}:{:02}.{micros:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn uuid_text(b: &[u8; 16]) -> String {
    let h = hex(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The value at `row` of an array of one of [`crate::arrow_type`]'s types, as
/// a [`Datum`]; `None` for another type.
fn datum_at(array: &dyn Array, row: usize) -> Option<Datum> {
    if array.is_null(row) {
        return Some(Datum::Null);
    }
    Some(match array.data_type() {
        DataType::Boolean => Datum::Bool(array.as_boolean().value(row)),
        DataType::Int8 => Datum::Int8(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => Datum::Int16(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => Datum::Int32(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Datum::Int64(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => Datum::UInt(array.as_primitive::<UInt8Type>().value(row) as u64),
        DataType::UInt16 => Datum::UInt(array.as_primitive::<UInt16Type>().value(row) as u64),
        DataType::UInt32 => Datum::UInt(array.as_primitive::<UInt32Type>().value(row) as u64),
        DataType::UInt64 => Datum::UInt(array.as_primitive::<UInt64Type>().value(row)),
        DataType::Float32 => Datum::Float32(array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => Datum::Float64(array.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(..) => {
            Datum::Decimal128(array.as_primitive::<Decimal128Type>().value(row))
        }
        DataType::Decimal256(..) => {
            Datum::Decimal256(array.as_primitive::<Decimal256Type>().value(row))
        }
        DataType::Utf8 => Datum::Text(array.as_string::<i32>().value(row).to_string()),
        DataType::Binary => Datum::Bytes(array.as_binary::<i32>().value(row).to_vec()),
        DataType::Date32 => Datum::Date(array.as_primitive::<Date32Type>().value(row)),
        DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, _) => {
            Datum::Timestamp(array.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        DataType::Time64(arrow_schema::TimeUnit::Microsecond) => {
            Datum::Time(array.as_primitive::<Time64MicrosecondType>().value(row))
        }
        DataType::Duration(arrow_schema::TimeUnit::Microsecond) => {
            Datum::Duration(array.as_primitive::<DurationMicrosecondType>().value(row))
        }
        DataType::FixedSizeBinary(16) => {
            let bytes = array.as_fixed_size_binary().value(row);
            Datum::Uuid(bytes.try_into().ok()?)
        }
        DataType::List(_) => {
            let items = array.as_list::<i32>().value(row);
            let mut values = Vec::with_capacity(items.len());
            for i in 0..items.len() {
                values.push(datum_at(items.as_ref(), i)?);
            }
            Datum::List(values)
        }
        DataType::Dictionary(..) => {
            let dict = array.as_any_dictionary();
            let key = dict.normalized_keys()[row];
            datum_at(dict.values().as_ref(), key)?
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build_array;
    use crate::event::Op;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn column(name: &str, ty: ColumnType, key: bool) -> Column {
        Column {
            name: name.into(),
            ty,
            source_type: "t".into(),
            key,
        }
    }

    fn schema() -> Arc<TableSchema> {
        Arc::new(TableSchema {
            table: TableId::new("public", "people"),
            version: 3,
            columns: vec![
                column("id", ColumnType::Int32, true),
                column("email", ColumnType::Text, false),
                column("ssn", ColumnType::Text, false),
                column("born", ColumnType::Date, false),
                column("note", ColumnType::Text, false),
            ],
        })
    }

    fn policy() -> Arc<MaskPolicy> {
        let rule = |columns: &[&str], action| MaskRule {
            tables: "public.peo*".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            action,
        };
        Arc::new(
            MaskPolicy::new(
                vec![
                    rule(&["id", "email"], MaskAction::Hash),
                    rule(&["ssn", "email"], MaskAction::Exclude),
                    rule(&["born"], MaskAction::Constant("hidden".into())),
                ],
                Some(KEY),
            )
            .unwrap(),
        )
    }

    fn hmac_hex(text: &str) -> String {
        let mut mac = HmacSha256::new_from_slice(KEY).unwrap();
        mac.update(text.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    #[test]
    fn rows_and_blocks_mask_alike() {
        let mut masker = Masker::new(policy());
        let ChangeEvent::Schema(masked) = masker.apply(ChangeEvent::Schema(schema())).unwrap()
        else {
            panic!("a schema");
        };
        let names: Vec<&str> = masked.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "email", "born", "note"]);
        assert_eq!(masked.version, 3);
        assert!(masked.columns[0].key);
        assert_eq!(masked.columns[0].ty, ColumnType::Text);
        let id = policy().key_id().unwrap().to_string();
        assert_eq!(
            masked.columns[0].source_type,
            format!("hmac-sha256 key {id} (was t)")
        );
        assert_eq!(masked.columns[2].source_type, "constant (was t)");

        let values = vec![
            Datum::Int32(42),
            Datum::Text("a@b.c".into()),
            Datum::Text("123-45-6789".into()),
            Datum::Date(19000),
            Datum::Unchanged,
        ];
        let row = RowChange {
            table: schema().table.clone(),
            op: Op::Insert,
            ord: 1,
            values: values.clone(),
        };
        let ChangeEvent::Row(row) = masker.apply(ChangeEvent::Row(row)).unwrap() else {
            panic!("a row");
        };
        assert_eq!(
            row.values,
            vec![
                Datum::Text(hmac_hex("42")),
                Datum::Text(hmac_hex("a@b.c")),
                Datum::Text("hidden".into()),
                Datum::Unchanged,
            ]
        );

        let arrays: Vec<ArrayRef> = schema()
            .columns
            .iter()
            .zip(&values)
            .map(|(c, v)| {
                let v = if *v == Datum::Unchanged {
                    Datum::Null
                } else {
                    v.clone()
                };
                build_array(&crate::arrow_type(&c.ty), &[&v, &Datum::Null]).unwrap()
            })
            .collect();
        let block = RowBlock {
            table: schema().table.clone(),
            ops: vec![Op::Insert, Op::Insert],
            first_ord: 1,
            columns: arrays,
        };
        let ChangeEvent::Block(block) = masker.apply(ChangeEvent::Block(block)).unwrap() else {
            panic!("a block");
        };
        assert_eq!(block.columns.len(), 4);
        let texts = |i: usize| block.columns[i].as_string::<i32>().clone();
        assert_eq!(texts(0).value(0), hmac_hex("42"));
        assert_eq!(texts(1).value(0), hmac_hex("a@b.c"));
        assert_eq!(texts(2).value(0), "hidden");
        assert!(texts(0).is_null(1) && texts(2).is_null(1));
    }

    #[test]
    fn key_columns_are_hashed_never_dropped() {
        let rule = MaskRule {
            tables: "*".into(),
            columns: vec!["id".into()],
            action: MaskAction::Exclude,
        };
        let policy = MaskPolicy::new(vec![rule], None).unwrap();
        let err = policy.plan(&schema()).unwrap_err();
        assert!(matches!(err, MaskError::KeyColumn { .. }), "{err}");
        assert!(err.to_string().contains("column id of public.people"));
    }

    #[test]
    fn hashing_needs_a_long_key() {
        let rule = MaskRule {
            tables: "*".into(),
            columns: vec!["x".into()],
            action: MaskAction::Hash,
        };
        assert!(matches!(
            MaskPolicy::new(vec![rule.clone()], None),
            Err(MaskError::NoKey)
        ));
        assert!(matches!(
            MaskPolicy::new(vec![rule], Some(b"short")),
            Err(MaskError::ShortKey)
        ));
    }

    #[test]
    fn tables_without_rules_pass_unchanged() {
        let mut masker = Masker::new(policy());
        let other = Arc::new(TableSchema {
            table: TableId::new("public", "orders"),
            ..(*schema()).clone()
        });
        let ChangeEvent::Schema(out) = masker.apply(ChangeEvent::Schema(other.clone())).unwrap()
        else {
            panic!("a schema");
        };
        assert!(Arc::ptr_eq(&out, &other));
        let ddl = ChangeEvent::Ddl {
            table: TableId::new("public", "people"),
            seq: 1,
            statement: "ALTER TABLE people ADD ssn text DEFAULT '123'".into(),
        };
        let ChangeEvent::Ddl { statement, .. } = masker.apply(ddl).unwrap() else {
            panic!("a ddl");
        };
        assert!(!statement.contains("123"));
    }

    #[test]
    fn canonical_texts() {
        let text = |d: Datum, ty: ColumnType| {
            let mut out = Vec::new();
            canonical_text(&d, &ty, &mut out);
            String::from_utf8(out).unwrap()
        };
        let dec = |precision, scale| ColumnType::Decimal { precision, scale };
        assert_eq!(text(Datum::Decimal128(1250), dec(10, 2)), "12.50");
        assert_eq!(text(Datum::Decimal128(-5), dec(10, 3)), "-0.005");
        assert_eq!(text(Datum::Decimal128(7), dec(10, 0)), "7");
        assert_eq!(text(Datum::Date(0), ColumnType::Date), "1970-01-01");
        assert_eq!(
            text(Datum::Timestamp(1_500_000), ColumnType::TimestampTz),
            "1970-01-01T00:00:01.500000Z"
        );
        assert_eq!(
            text(Datum::Time(3_723_000_004), ColumnType::Time),
            "01:02:03.000004"
        );
        assert_eq!(text(Datum::Float64(0.1), ColumnType::Float64), "0.1");
        let mut uuid = [0u8; 16];
        uuid[15] = 0xab;
        assert_eq!(
            text(Datum::Uuid(uuid), ColumnType::Uuid),
            "00000000-0000-0000-0000-0000000000ab"
        );
        assert_eq!(
            text(
                Datum::List(vec![Datum::Int32(1), Datum::Null]),
                ColumnType::List(Box::new(ColumnType::Int32))
            ),
            r#"["1",null]"#
        );
    }
}
