//! Iceberg's Avro files: manifests (which data files a snapshot added or
//! removed, with their column statistics) and manifest lists (a snapshot's
//! manifests). Format v2, field ids as the spec numbers them: readers
//! resolve fields by id, so the ids are the contract, the names only help.
//!
//! ```text
//!  metadata.json ─ snapshot ─▶ snap-<id>-<n>-<uuid>.avro   (manifest list)
//!                                 ├─▶ <uuid>-m0.avro        (manifest: our new files)
//!                                 └─▶ …the parent snapshot's manifests, as they were
//! ```
//!
//! Written with Deflate, as Java and pyiceberg do; read with every codec the
//! crate knows, so manifests other writers added to a table read too. Reading
//! is by field name over the writer's own schema (the file carries it), so a
//! field another writer left out reads as absent, never as a wrong value.

use std::collections::BTreeMap;

use apache_avro::types::Value as Avro;
use apache_avro::{Codec, DeflateSettings, Reader, Schema, Writer};
use serde_json::{json, Value};

/// Field names and ids of the map types in `data_file` (key id, value id).
const MAPS: [(&str, i32, i32, i32, &str); 6] = [
    ("column_sizes", 108, 117, 118, "long"),
    ("value_counts", 109, 119, 120, "long"),
    ("null_value_counts", 110, 121, 122, "long"),
    ("nan_value_counts", 137, 138, 139, "long"),
    ("lower_bounds", 125, 126, 127, "bytes"),
    ("upper_bounds", 128, 129, 130, "bytes"),
];

/// One data file, as a manifest describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataFile {
    /// Absolute URI (`file:///…`, `s3://…`).
    pub path: String,
    pub record_count: i64,
    pub size: i64,
    /// The partition tuple (spec order): each value as Avro writes it.
    pub partition: Vec<(String, Option<i32>)>,
    pub column_sizes: BTreeMap<i32, i64>,
    pub value_counts: BTreeMap<i32, i64>,
    pub null_value_counts: BTreeMap<i32, i64>,
    pub lower_bounds: BTreeMap<i32, Vec<u8>>,
    pub upper_bounds: BTreeMap<i32, Vec<u8>>,
    pub split_offsets: Vec<i64>,
}

/// An entry of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestEntry {
    /// 0 existing, 1 added, 2 deleted.
    pub status: i32,
    pub snapshot_id: Option<i64>,
    pub sequence_number: Option<i64>,
    /// 0 data, 1 position deletes, 2 equality deletes.
    pub content: i32,
    pub file: DataFile,
}

/// One manifest of a manifest list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ManifestFile {
    pub path: String,
    pub length: i64,
    pub spec_id: i32,
    /// 0 data, 1 deletes.
    pub content: i32,
    pub sequence_number: i64,
    pub min_sequence_number: i64,
    pub added_snapshot_id: i64,
    pub added_files: i32,
    pub existing_files: i32,
    pub deleted_files: i32,
    pub added_rows: i64,
    pub existing_rows: i64,
    pub deleted_rows: i64,
    /// Per partition field: (contains_null, contains_nan, lower, upper).
    pub partitions: Option<Vec<PartitionSummary>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PartitionSummary {
    pub contains_null: bool,
    pub contains_nan: Option<bool>,
    pub lower: Option<Vec<u8>>,
    pub upper: Option<Vec<u8>>,
}

/// A problem reading or writing one of these files.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AvroError(pub String);

impl From<apache_avro::Error> for AvroError {
    fn from(err: apache_avro::Error) -> Self {
        AvroError(err.to_string())
    }
}

fn optional(ty: Value, name: &str, id: i32) -> Value {
    json!({"name": name, "type": ["null", ty], "default": null, "field-id": id})
}

fn required(ty: Value, name: &str, id: i32) -> Value {
    json!({"name": name, "type": ty, "field-id": id})
}

/// The partition fields of a spec: (name, field id, result type `int`).
pub type PartitionFields = [(String, i32)];

/// The Avro schema of a v2 manifest of a spec with `partition` fields (all
/// `day`/`int` results, as tidewater partitions).
fn manifest_schema(partition: &PartitionFields) -> Value {
    let mut file_fields = vec![
        required(json!("int"), "content", 134),
        required(json!("string"), "file_path", 100),
        required(json!("string"), "file_format", 101),
        required(
            json!({"type": "record", "name": "r102", "fields": partition.iter().map(|(name, id)| {
                optional(json!({"type": "int", "logicalType": "date"}), name, *id)
            }).collect::<Vec<_>>()}),
            "partition",
            102,
        ),
        required(json!("long"), "record_count", 103),
        required(json!("long"), "file_size_in_bytes", 104),
    ];
    for (name, id, key, value, ty) in MAPS {
        file_fields.push(optional(
            json!({
                "type": "array",
                "logicalType": "map",
                "items": {
                    "type": "record",
                    "name": format!("k{key}_v{value}"),
                    "fields": [required(json!("int"), "key", key), required(json!(ty), "value", value)],
                },
            }),
            name,
            id,
        ));
    }
    file_fields.extend([
        optional(json!("bytes"), "key_metadata", 131),
        optional(
            json!({"type": "array", "items": "long", "element-id": 133}),
            "split_offsets",
            132,
        ),
        optional(
            json!({"type": "array", "items": "int", "element-id": 136}),
            "equality_ids",
            135,
        ),
        optional(json!("int"), "sort_order_id", 140),
    ]);
    json!({
        "type": "record",
        "name": "manifest_entry",
        "fields": [
            required(json!("int"), "status", 0),
            optional(json!("long"), "snapshot_id", 1),
            optional(json!("long"), "sequence_number", 3),
            optional(json!("long"), "file_sequence_number", 4),
            required(json!({"type": "record", "name": "r2", "fields": file_fields}), "data_file", 2),
        ],
    })
}

fn manifest_list_schema() -> Value {
    json!({
        "type": "record",
        "name": "manifest_file",
        "fields": [
            required(json!("string"), "manifest_path", 500),
            required(json!("long"), "manifest_length", 501),
            required(json!("int"), "partition_spec_id", 502),
            required(json!("int"), "content", 517),
            required(json!("long"), "sequence_number", 515),
            required(json!("long"), "min_sequence_number", 516),
            required(json!("long"), "added_snapshot_id", 503),
            required(json!("int"), "added_files_count", 504),
            required(json!("int"), "existing_files_count", 505),
            required(json!("int"), "deleted_files_count", 506),
            required(json!("long"), "added_rows_count", 512),
            required(json!("long"), "existing_rows_count", 513),
            required(json!("long"), "deleted_rows_count", 514),
            optional(
                json!({"type": "array", "element-id": 508, "items": {
                    "type": "record",
                    "name": "r508",
                    "fields": [
                        required(json!("boolean"), "contains_null", 509),
                        optional(json!("boolean"), "contains_nan", 518),
                        optional(json!("bytes"), "lower_bound", 510),
                        optional(json!("bytes"), "upper_bound", 511),
                    ],
                }}),
                "partitions",
                507,
            ),
            optional(json!("bytes"), "key_metadata", 519),
        ],
    })
}

fn some(value: Avro) -> Avro {
    Avro::Union(1, Box::new(value))
}

fn none() -> Avro {
    Avro::Union(0, Box::new(Avro::Null))
}

fn opt<T>(value: Option<T>, f: impl FnOnce(T) -> Avro) -> Avro {
    value.map_or_else(none, |v| some(f(v)))
}

fn record(fields: Vec<(&str, Avro)>) -> Avro {
    Avro::Record(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn int_map<T: Clone>(map: &BTreeMap<i32, T>, value: impl Fn(T) -> Avro) -> Avro {
    if map.is_empty() {
        return none();
    }
    some(Avro::Array(
        map.iter()
            .map(|(k, v)| record(vec![("key", Avro::Int(*k)), ("value", value(v.clone()))]))
            .collect(),
    ))
}

fn write_file(
    schema: &Value,
    metadata: Vec<(&str, String)>,
    rows: Vec<Avro>,
) -> Result<Vec<u8>, AvroError> {
    let schema_text = schema.to_string();
    let schema = Schema::parse(schema)?;
    let mut writer = Writer::with_codec(
        &schema,
        Vec::new(),
        Codec::Deflate(DeflateSettings::default()),
    )?;
    for (key, value) in metadata {
        writer.add_user_metadata(key.to_string(), value)?;
    }
    for row in rows {
        writer.append_value(row)?;
    }
    let bytes = writer.into_inner()?;
    // The crate drops attributes it does not model from the schema it
    // writes into the header (`"logicalType": "map"` on an array, which
    // Iceberg readers need to read int-keyed maps): put ours back. The
    // encoding of the values does not depend on them.
    with_header_schema(&bytes, &schema_text)
}

fn read_long(bytes: &[u8], at: &mut usize) -> Result<i64, AvroError> {
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *bytes
            .get(*at)
            .ok_or_else(|| AvroError("Avro header ends early".into()))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(AvroError("Avro header has a malformed number".into()));
        }
    }
    Ok((value >> 1) as i64 ^ -((value & 1) as i64))
}

fn write_long(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
}

fn read_bytes<'a>(bytes: &'a [u8], at: &mut usize) -> Result<&'a [u8], AvroError> {
    let len = read_long(bytes, at)?;
    let end = at
        .checked_add(usize::try_from(len).map_err(|_| AvroError("negative length".into()))?)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| AvroError("Avro header ends early".into()))?;
    let out = &bytes[*at..end];
    *at = end;
    Ok(out)
}

/// The container file `bytes` with its header's `avro.schema` replaced by
/// `schema` (the same schema, spelt with every attribute).
fn with_header_schema(bytes: &[u8], schema: &str) -> Result<Vec<u8>, AvroError> {
    if bytes.get(..4) != Some(b"Obj\x01".as_slice()) {
        return Err(AvroError("not an Avro container file".into()));
    }
    let mut at = 4;
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    loop {
        let mut count = read_long(bytes, &mut at)?;
        if count == 0 {
            break;
        }
        if count < 0 {
            count = -count;
            read_long(bytes, &mut at)?;
        }
        for _ in 0..count {
            let key = read_bytes(bytes, &mut at)?.to_vec();
            let value = read_bytes(bytes, &mut at)?.to_vec();
            entries.push((key, value));
        }
    }
    let mut out = Vec::with_capacity(bytes.len() + schema.len());
    out.extend_from_slice(b"Obj\x01");
    write_long(&mut out, entries.len() as i64);
    for (key, value) in entries {
        let value = if key == b"avro.schema" {
            schema.as_bytes().to_vec()
        } else {
            value
        };
        write_long(&mut out, key.len() as i64);
        out.extend_from_slice(&key);
        write_long(&mut out, value.len() as i64);
        out.extend_from_slice(&value);
    }
    write_long(&mut out, 0);
    out.extend_from_slice(&bytes[at..]);
    Ok(out)
}

/// The manifest of `entries`, written for table schema `table_schema`
/// (its JSON) and partition spec `spec_id` with `partition` fields.
pub fn write_manifest(
    entries: &[ManifestEntry],
    table_schema: &Value,
    schema_id: i64,
    spec_id: i32,
    spec_fields: &Value,
    partition: &PartitionFields,
) -> Result<Vec<u8>, AvroError> {
    let schema = manifest_schema(partition);
    let rows = entries
        .iter()
        .map(|entry| {
            let f = &entry.file;
            let partition = record(
                f.partition
                    .iter()
                    .map(|(name, day)| (name.as_str(), opt(*day, Avro::Date)))
                    .collect(),
            );
            let data_file = record(vec![
                ("content", Avro::Int(entry.content)),
                ("file_path", Avro::String(f.path.clone())),
                ("file_format", Avro::String("PARQUET".into())),
                ("partition", partition),
                ("record_count", Avro::Long(f.record_count)),
                ("file_size_in_bytes", Avro::Long(f.size)),
                ("column_sizes", int_map(&f.column_sizes, Avro::Long)),
                ("value_counts", int_map(&f.value_counts, Avro::Long)),
                (
                    "null_value_counts",
                    int_map(&f.null_value_counts, Avro::Long),
                ),
                ("nan_value_counts", none()),
                ("lower_bounds", int_map(&f.lower_bounds, Avro::Bytes)),
                ("upper_bounds", int_map(&f.upper_bounds, Avro::Bytes)),
                ("key_metadata", none()),
                (
                    "split_offsets",
                    if f.split_offsets.is_empty() {
                        none()
                    } else {
                        some(Avro::Array(
                            f.split_offsets.iter().map(|o| Avro::Long(*o)).collect(),
                        ))
                    },
                ),
                ("equality_ids", none()),
                ("sort_order_id", none()),
            ]);
            record(vec![
                ("status", Avro::Int(entry.status)),
                ("snapshot_id", opt(entry.snapshot_id, Avro::Long)),
                ("sequence_number", opt(entry.sequence_number, Avro::Long)),
                (
                    "file_sequence_number",
                    opt(entry.sequence_number, Avro::Long),
                ),
                ("data_file", data_file),
            ])
        })
        .collect();
    write_file(
        &schema,
        vec![
            ("schema", table_schema.to_string()),
            ("schema-id", schema_id.to_string()),
            ("partition-spec", spec_fields.to_string()),
            ("partition-spec-id", spec_id.to_string()),
            ("format-version", "2".into()),
            ("content", "data".into()),
        ],
        rows,
    )
}

/// A manifest list of `manifests` for snapshot `snapshot_id`.
pub fn write_manifest_list(
    manifests: &[ManifestFile],
    snapshot_id: i64,
    parent: Option<i64>,
    sequence_number: i64,
) -> Result<Vec<u8>, AvroError> {
    let rows = manifests
        .iter()
        .map(|m| {
            record(vec![
                ("manifest_path", Avro::String(m.path.clone())),
                ("manifest_length", Avro::Long(m.length)),
                ("partition_spec_id", Avro::Int(m.spec_id)),
                ("content", Avro::Int(m.content)),
                ("sequence_number", Avro::Long(m.sequence_number)),
                ("min_sequence_number", Avro::Long(m.min_sequence_number)),
                ("added_snapshot_id", Avro::Long(m.added_snapshot_id)),
                ("added_files_count", Avro::Int(m.added_files)),
                ("existing_files_count", Avro::Int(m.existing_files)),
                ("deleted_files_count", Avro::Int(m.deleted_files)),
                ("added_rows_count", Avro::Long(m.added_rows)),
                ("existing_rows_count", Avro::Long(m.existing_rows)),
                ("deleted_rows_count", Avro::Long(m.deleted_rows)),
                (
                    "partitions",
                    opt(m.partitions.as_ref(), |parts| {
                        Avro::Array(
                            parts
                                .iter()
                                .map(|p| {
                                    record(vec![
                                        ("contains_null", Avro::Boolean(p.contains_null)),
                                        ("contains_nan", opt(p.contains_nan, Avro::Boolean)),
                                        ("lower_bound", opt(p.lower.clone(), Avro::Bytes)),
                                        ("upper_bound", opt(p.upper.clone(), Avro::Bytes)),
                                    ])
                                })
                                .collect(),
                        )
                    }),
                ),
                ("key_metadata", none()),
            ])
        })
        .collect();
    let mut metadata = vec![
        ("snapshot-id", snapshot_id.to_string()),
        ("sequence-number", sequence_number.to_string()),
        ("format-version", "2".into()),
    ];
    metadata.push((
        "parent-snapshot-id",
        parent.map_or_else(|| "null".to_string(), |p| p.to_string()),
    ));
    write_file(&manifest_list_schema(), metadata, rows)
}

/// The plain value inside a union, if any.
fn plain(value: &Avro) -> &Avro {
    match value {
        Avro::Union(_, inner) => plain(inner),
        other => other,
    }
}

fn fields(value: &Avro) -> BTreeMap<&str, &Avro> {
    match plain(value) {
        Avro::Record(fields) => fields.iter().map(|(k, v)| (k.as_str(), plain(v))).collect(),
        _ => BTreeMap::new(),
    }
}

fn long(fields: &BTreeMap<&str, &Avro>, name: &str) -> Option<i64> {
    match fields.get(name)? {
        Avro::Long(v) => Some(*v),
        Avro::Int(v) => Some(i64::from(*v)),
        _ => None,
    }
}

fn bytes_of(value: &Avro) -> Option<Vec<u8>> {
    match plain(value) {
        Avro::Bytes(b) | Avro::Fixed(_, b) => Some(b.clone()),
        _ => None,
    }
}

fn read_rows(bytes: &[u8]) -> Result<Vec<Avro>, AvroError> {
    let reader = Reader::new(bytes)?;
    reader
        .map(|row| row.map_err(AvroError::from))
        .collect::<Result<Vec<_>, _>>()
}

/// The manifests of a manifest list (any writer's, v1 or v2).
pub fn read_manifest_list(bytes: &[u8]) -> Result<Vec<ManifestFile>, AvroError> {
    let rows = read_rows(bytes)?;
    rows.iter()
        .map(|row| {
            let f = fields(row);
            let req = |name: &str| {
                long(&f, name).ok_or_else(|| AvroError(format!("manifest list entry lacks {name}")))
            };
            let path = match f.get("manifest_path") {
                Some(Avro::String(p)) => p.clone(),
                _ => return Err(AvroError("manifest list entry lacks manifest_path".into())),
            };
            let partitions = match f.get("partitions") {
                Some(Avro::Array(parts)) => Some(
                    parts
                        .iter()
                        .map(|p| {
                            let pf = fields(p);
                            PartitionSummary {
                                contains_null: matches!(
                                    pf.get("contains_null"),
                                    Some(Avro::Boolean(true))
                                ),
                                contains_nan: match pf.get("contains_nan") {
                                    Some(Avro::Boolean(b)) => Some(*b),
                                    _ => None,
                                },
                                lower: pf.get("lower_bound").and_then(|v| bytes_of(v)),
                                upper: pf.get("upper_bound").and_then(|v| bytes_of(v)),
                            }
                        })
                        .collect(),
                ),
                _ => None,
            };
            // v1 lists have no sequence numbers: their manifests are
            // sequence 0, and count fields may be missing (unknown).
            Ok(ManifestFile {
                path,
                length: req("manifest_length")?,
                spec_id: req("partition_spec_id")? as i32,
                content: long(&f, "content").unwrap_or(0) as i32,
                sequence_number: long(&f, "sequence_number").unwrap_or(0),
                min_sequence_number: long(&f, "min_sequence_number").unwrap_or(0),
                added_snapshot_id: req("added_snapshot_id")?,
                added_files: long(&f, "added_files_count")
                    .or_else(|| long(&f, "added_data_files_count"))
                    .unwrap_or(0) as i32,
                existing_files: long(&f, "existing_files_count")
                    .or_else(|| long(&f, "existing_data_files_count"))
                    .unwrap_or(0) as i32,
                deleted_files: long(&f, "deleted_files_count")
                    .or_else(|| long(&f, "deleted_data_files_count"))
                    .unwrap_or(0) as i32,
                added_rows: long(&f, "added_rows_count").unwrap_or(0),
                existing_rows: long(&f, "existing_rows_count").unwrap_or(0),
                deleted_rows: long(&f, "deleted_rows_count").unwrap_or(0),
                partitions,
            })
        })
        .collect()
}

fn read_int_map<T>(value: Option<&&Avro>, f: impl Fn(&Avro) -> Option<T>) -> BTreeMap<i32, T> {
    let mut out = BTreeMap::new();
    let entries: Vec<&Avro> = match value.map(|v| plain(v)) {
        Some(Avro::Array(items)) => items.iter().collect(),
        Some(Avro::Map(map)) => map.values().collect(),
        _ => return out,
    };
    for entry in entries {
        let kv = fields(entry);
        if let (Some(Avro::Int(k)), Some(v)) = (kv.get("key"), kv.get("value")) {
            if let Some(v) = f(v) {
                out.insert(*k, v);
            }
        }
    }
    out
}

/// The entries of a manifest (any writer's). Entries whose sequence
/// number is null inherit `inherited` (the manifest's, from its list), as
/// the spec says; likewise a null snapshot id inherits `snapshot`.
pub fn read_manifest(
    bytes: &[u8],
    inherited: i64,
    snapshot: i64,
) -> Result<Vec<ManifestEntry>, AvroError> {
    let rows = read_rows(bytes)?;
    rows.iter()
        .map(|row| {
            let e = fields(row);
            let f = e
                .get("data_file")
                .map(|v| fields(v))
                .ok_or_else(|| AvroError("manifest entry lacks data_file".into()))?;
            let path = match f.get("file_path") {
                Some(Avro::String(p)) => p.clone(),
                _ => return Err(AvroError("manifest entry lacks file_path".into())),
            };
            let partition = match f.get("partition") {
                Some(Avro::Record(parts)) => parts
                    .iter()
                    .map(|(name, v)| {
                        let day = match plain(v) {
                            Avro::Int(d) | Avro::Date(d) => Some(*d),
                            _ => None,
                        };
                        (name.clone(), day)
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let status = long(&e, "status").unwrap_or(1) as i32;
            let sequence_number = long(&e, "sequence_number");
            Ok(ManifestEntry {
                status,
                snapshot_id: Some(long(&e, "snapshot_id").unwrap_or(snapshot)),
                // Only added entries inherit; the others carry their own.
                sequence_number: Some(sequence_number.unwrap_or(inherited)),
                content: long(&f, "content").unwrap_or(0) as i32,
                file: DataFile {
                    path,
                    record_count: long(&f, "record_count").unwrap_or(0),
                    size: long(&f, "file_size_in_bytes").unwrap_or(0),
                    partition,
                    column_sizes: read_int_map(f.get("column_sizes"), |v| match v {
                        Avro::Long(x) => Some(*x),
                        _ => None,
                    }),
                    value_counts: read_int_map(f.get("value_counts"), |v| match v {
                        Avro::Long(x) => Some(*x),
                        _ => None,
                    }),
                    null_value_counts: read_int_map(f.get("null_value_counts"), |v| match v {
                        Avro::Long(x) => Some(*x),
                        _ => None,
                    }),
                    lower_bounds: read_int_map(f.get("lower_bounds"), bytes_of),
                    upper_bounds: read_int_map(f.get("upper_bounds"), bytes_of),
                    split_offsets: match f.get("split_offsets") {
                        Some(Avro::Array(offsets)) => offsets
                            .iter()
                            .filter_map(|o| match plain(o) {
                                Avro::Long(x) => Some(*x),
                                _ => None,
                            })
                            .collect(),
                        _ => Vec::new(),
                    },
                },
            })
        })
        .collect()
}

/// The Avro schema a manifest file was written with (for tests).
#[cfg(test)]
fn header_schema(bytes: &[u8]) -> Value {
    let reader = Reader::new(bytes).expect("an Avro file");
    serde_json::to_value(reader.writer_schema()).expect("schema json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_and_keep_field_ids() {
        let file = DataFile {
            path: "file:///lake/t/data/a.parquet".into(),
            record_count: 3,
            size: 1234,
            partition: vec![("_tw_commit_date".into(), Some(20_000))],
            column_sizes: BTreeMap::from([(1, 10), (2, 20)]),
            value_counts: BTreeMap::from([(1, 3)]),
            null_value_counts: BTreeMap::from([(1, 0)]),
            lower_bounds: BTreeMap::from([(1, 5i64.to_le_bytes().to_vec())]),
            upper_bounds: BTreeMap::from([(1, 9i64.to_le_bytes().to_vec())]),
            split_offsets: vec![4],
        };
        let entry = ManifestEntry {
            status: 1,
            snapshot_id: Some(77),
            sequence_number: None,
            content: 0,
            file,
        };
        let bytes = write_manifest(
            std::slice::from_ref(&entry),
            &json!({"type": "struct", "fields": []}),
            0,
            0,
            &json!([]),
            &[("_tw_commit_date".to_string(), 1000)],
        )
        .unwrap();
        let schema = header_schema(&bytes);
        assert_eq!(schema["fields"][4]["field-id"], 2, "{schema}");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains(r#""logicalType":"map""#),
            "the header keeps the map type"
        );
        let read = read_manifest(&bytes, 5, 77).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].sequence_number, Some(5), "inherited");
        assert_eq!(read[0].file, entry.file);

        let list = vec![ManifestFile {
            path: "file:///lake/t/metadata/m0.avro".into(),
            length: bytes.len() as i64,
            sequence_number: 5,
            min_sequence_number: 5,
            added_snapshot_id: 77,
            added_files: 1,
            added_rows: 3,
            partitions: Some(vec![PartitionSummary {
                contains_null: false,
                contains_nan: None,
                lower: Some(20_000i32.to_le_bytes().to_vec()),
                upper: Some(20_000i32.to_le_bytes().to_vec()),
            }]),
            ..Default::default()
        }];
        let bytes = write_manifest_list(&list, 77, None, 5).unwrap();
        assert_eq!(header_schema(&bytes)["fields"][0]["field-id"], 500);
        assert_eq!(read_manifest_list(&bytes).unwrap(), list);
    }
}
