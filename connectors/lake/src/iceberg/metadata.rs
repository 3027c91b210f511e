//! Iceberg table metadata (format v2), kept as the JSON it is: a table other
//! writers also commit to may carry fields this version of tidewater does
//! not know, and every commit must pass them on unchanged. The accessors
//! read what tidewater needs; the builders change only what a commit
//! changes.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::schema::{highest_id, schema_json, IcebergField};

/// Keeps this many earlier metadata files in `metadata-log` when the table
/// does not say (`write.metadata.previous-versions-max`, Iceberg's default).
const PREVIOUS_VERSIONS: usize = 100;

/// A field of a partition spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionField {
    pub name: String,
    pub field_id: i32,
    pub transform: String,
}

/// One table's metadata, and the file it was read from.
#[derive(Debug, Clone)]
pub struct TableMetadata {
    pub json: Value,
    /// Where this metadata is (the catalog's `metadata_location`).
    pub location: String,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The metadata of a new table at `location` with `fields`, partitioned by
/// `day(<field>)` when `day_of` names a field id.
pub fn new_table(
    location: &str,
    fields: &[IcebergField],
    properties: BTreeMap<String, String>,
    day_of: Option<i32>,
) -> Value {
    let partition_fields: Vec<Value> = day_of
        .map(|source| {
            vec![json!({
                "source-id": source,
                "field-id": 1000,
                "name": super::COMMIT_DATE,
                "transform": "day",
            })]
        })
        .unwrap_or_default();
    json!({
        "format-version": 2,
        "table-uuid": uuid::Uuid::new_v4().to_string(),
        "location": location,
        "last-sequence-number": 0,
        "last-updated-ms": now_ms(),
        "last-column-id": highest_id(fields),
        "current-schema-id": 0,
        "schemas": [schema_json(0, fields)],
        "default-spec-id": 0,
        "partition-specs": [{"spec-id": 0, "fields": partition_fields}],
        "last-partition-id": if day_of.is_some() { 1000 } else { 999 },
        "default-sort-order-id": 0,
        "sort-orders": [{"order-id": 0, "fields": []}],
        "properties": properties,
        "refs": {},
        "snapshots": [],
        "snapshot-log": [],
        "metadata-log": [],
    })
}

impl TableMetadata {
    fn int(&self, key: &str) -> Option<i64> {
        self.json.get(key).and_then(Value::as_i64)
    }

    pub fn table_uuid(&self) -> Option<&str> {
        self.json.get("table-uuid").and_then(Value::as_str)
    }

    pub fn format_version(&self) -> i64 {
        self.int("format-version").unwrap_or(1)
    }

    pub fn table_location(&self) -> Option<&str> {
        self.json.get("location").and_then(Value::as_str)
    }

    pub fn last_sequence_number(&self) -> i64 {
        self.int("last-sequence-number").unwrap_or(0)
    }

    pub fn last_column_id(&self) -> i32 {
        self.int("last-column-id").unwrap_or(0) as i32
    }

    pub fn property(&self, key: &str) -> Option<&str> {
        self.json.get("properties")?.get(key)?.as_str()
    }

    /// The snapshot `main` points at (v2: `refs.main`, else the
    /// `current-snapshot-id` older writers set).
    pub fn current_snapshot_id(&self) -> Option<i64> {
        let from_ref = self
            .json
            .get("refs")
            .and_then(|r| r.get("main"))
            .and_then(|m| m.get("snapshot-id"))
            .and_then(Value::as_i64);
        from_ref
            .or_else(|| self.int("current-snapshot-id"))
            .filter(|id| *id >= 0)
    }

    pub fn snapshot(&self, id: i64) -> Option<&Value> {
        self.json
            .get("snapshots")?
            .as_array()?
            .iter()
            .find(|s| s.get("snapshot-id").and_then(Value::as_i64) == Some(id))
    }

    pub fn current_snapshot(&self) -> Option<&Value> {
        self.snapshot(self.current_snapshot_id()?)
    }

    pub fn current_schema_id(&self) -> i64 {
        self.int("current-schema-id").unwrap_or(0)
    }

    /// The current schema's JSON.
    pub fn current_schema(&self) -> Option<&Value> {
        let id = self.current_schema_id();
        self.json
            .get("schemas")?
            .as_array()?
            .iter()
            .find(|s| s.get("schema-id").and_then(Value::as_i64).unwrap_or(0) == id)
    }

    /// The current schema's columns tidewater can write (a column of a
    /// type it never writes, added by someone else, is left out here and
    /// kept in the metadata).
    pub fn fields(&self) -> Vec<IcebergField> {
        self.current_schema()
            .and_then(|s| s.get("fields"))
            .and_then(Value::as_array)
            .map(|fields| fields.iter().filter_map(IcebergField::from_json).collect())
            .unwrap_or_default()
    }

    /// The default partition spec: its id, its fields' JSON, and its
    /// fields.
    pub fn default_spec(&self) -> (i32, Value, Vec<PartitionField>) {
        let id = self.int("default-spec-id").unwrap_or(0);
        let spec = self
            .json
            .get("partition-specs")
            .and_then(Value::as_array)
            .and_then(|specs| {
                specs
                    .iter()
                    .find(|s| s.get("spec-id").and_then(Value::as_i64) == Some(id))
            });
        let fields = spec
            .and_then(|s| s.get("fields"))
            .cloned()
            .unwrap_or_else(|| json!([]));
        let parsed = fields
            .as_array()
            .map(|fs| {
                fs.iter()
                    .filter_map(|f| {
                        Some(PartitionField {
                            name: f.get("name")?.as_str()?.to_string(),
                            field_id: f.get("field-id")?.as_i64()? as i32,
                            transform: f.get("transform")?.as_str()?.to_string(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        (id as i32, fields, parsed)
    }

    /// The metadata with a new current schema of `fields` (kept columns
    /// first, as the current schema has them, with their types replaced by
    /// `fields`' promotions; then the new columns).
    pub fn with_schema(&self, fields: &[IcebergField]) -> Value {
        let mut json = self.json.clone();
        let mut columns: Vec<Value> = self
            .current_schema()
            .and_then(|s| s.get("fields"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for field in fields {
            match columns
                .iter_mut()
                .find(|c| c.get("id").and_then(Value::as_i64) == Some(i64::from(field.id)))
            {
                Some(column) => {
                    column["type"] = field.ty.to_json();
                    if let Some(doc) = &field.doc {
                        column["doc"] = Value::from(doc.clone());
                    }
                }
                None => columns.push(field.to_json()),
            }
        }
        let schema_id = json
            .get("schemas")
            .and_then(Value::as_array)
            .map(|s| {
                s.iter()
                    .filter_map(|x| x.get("schema-id").and_then(Value::as_i64))
                    .max()
                    .unwrap_or(0)
                    + 1
            })
            .unwrap_or(0);
        let mut schema = schema_json(schema_id, &[]);
        schema["fields"] = Value::Array(columns);
        if let Some(ids) = self
            .current_schema()
            .and_then(|s| s.get("identifier-field-ids"))
        {
            schema["identifier-field-ids"] = ids.clone();
        }
        if let Some(Value::Array(schemas)) = json.get_mut("schemas") {
            schemas.push(schema);
        }
        json["current-schema-id"] = Value::from(schema_id);
        json["last-column-id"] =
            Value::from(i64::from(self.last_column_id().max(highest_id(fields))));
        json
    }

    /// The metadata after committing `snapshot` (its JSON) on top of this
    /// one, with `properties` set, as read from `self.location`.
    pub fn with_snapshot(
        &self,
        base: Value,
        snapshot: Value,
        properties: &[(String, String)],
    ) -> Value {
        let mut json = base;
        let id = snapshot["snapshot-id"].as_i64().unwrap_or_default();
        let sequence = snapshot["sequence-number"].as_i64().unwrap_or_default();
        let at = snapshot["timestamp-ms"].as_i64().unwrap_or_else(now_ms);
        let previous_updated = self.int("last-updated-ms").unwrap_or(at);
        json["last-sequence-number"] = Value::from(sequence);
        json["last-updated-ms"] = Value::from(at);
        json["current-snapshot-id"] = Value::from(id);
        if !json.get("refs").is_some_and(Value::is_object) {
            json["refs"] = json!({});
        }
        json["refs"]["main"] = json!({"snapshot-id": id, "type": "branch"});
        push(&mut json, "snapshots", snapshot);
        push(
            &mut json,
            "snapshot-log",
            json!({"timestamp-ms": at, "snapshot-id": id}),
        );
        self.log_previous(&mut json, previous_updated);
        if !json.get("properties").is_some_and(Value::is_object) {
            json["properties"] = Value::Object(Map::new());
        }
        for (key, value) in properties {
            json["properties"][key] = Value::from(value.clone());
        }
        json
    }

    /// The metadata `base` (this one, maybe with a new schema) with
    /// `properties` set and no new snapshot, as read from `self.location`.
    pub fn with_properties(&self, base: Value, properties: &[(String, String)]) -> Value {
        let mut json = base;
        let at = now_ms();
        let previous_updated = self.int("last-updated-ms").unwrap_or(at);
        json["last-updated-ms"] = Value::from(at);
        self.log_previous(&mut json, previous_updated);
        if !json.get("properties").is_some_and(Value::is_object) {
            json["properties"] = Value::Object(Map::new());
        }
        for (key, value) in properties {
            json["properties"][key] = Value::from(value.clone());
        }
        json
    }

    /// Records this metadata file in `json`'s `metadata-log`, which keeps
    /// the last `write.metadata.previous-versions-max` (100) files.
    fn log_previous(&self, json: &mut Value, updated_ms: i64) {
        push(
            json,
            "metadata-log",
            json!({"timestamp-ms": updated_ms, "metadata-file": self.location}),
        );
        let keep = self.previous_versions();
        if let Some(Value::Array(log)) = json.get_mut("metadata-log") {
            if log.len() > keep {
                let cut = log.len() - keep;
                log.drain(..cut);
            }
        }
    }

    /// How many earlier metadata files `metadata-log` keeps.
    pub fn previous_versions(&self) -> usize {
        self.property("write.metadata.previous-versions-max")
            .and_then(|v| v.parse().ok())
            .unwrap_or(PREVIOUS_VERSIONS)
    }

    /// Every snapshot's JSON.
    pub fn snapshots(&self) -> Vec<&Value> {
        self.json
            .get("snapshots")
            .and_then(Value::as_array)
            .map(|s| s.iter().collect())
            .unwrap_or_default()
    }

    /// The metadata files `metadata-log` names (older versions a reader
    /// may still open).
    pub fn logged_metadata(&self) -> Vec<String> {
        self.json
            .get("metadata-log")
            .and_then(Value::as_array)
            .map(|log| {
                log.iter()
                    .filter_map(|e| e.get("metadata-file").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The metadata after `remove-snapshots` of `ids` on top of this one:
    /// the snapshots and their `snapshot-log` (and statistics) entries
    /// gone, refs, schema, properties and everything else as they are.
    pub fn without_snapshots(&self, ids: &std::collections::HashSet<i64>) -> Value {
        let mut json = self.json.clone();
        let expired = |v: &Value| {
            v.get("snapshot-id")
                .and_then(Value::as_i64)
                .is_some_and(|id| ids.contains(&id))
        };
        for key in [
            "snapshots",
            "snapshot-log",
            "statistics",
            "partition-statistics",
        ] {
            if let Some(Value::Array(items)) = json.get_mut(key) {
                items.retain(|item| !expired(item));
            }
        }
        let at = now_ms();
        let previous_updated = self.int("last-updated-ms").unwrap_or(at);
        json["last-updated-ms"] = Value::from(at.max(previous_updated));
        self.log_previous(&mut json, previous_updated);
        json
    }

    /// The number in this metadata file's name (`00042-<uuid>.metadata.json`),
    /// for the next one's name.
    pub fn version(&self) -> u64 {
        let name = self.location.rsplit('/').next().unwrap_or_default();
        name.split('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

fn push(json: &mut Value, key: &str, value: Value) {
    match json.get_mut(key) {
        Some(Value::Array(items)) => items.push(value),
        _ => json[key] = Value::Array(vec![value]),
    }
}

/// The name of metadata file number `version`.
pub fn metadata_file_name(version: u64) -> String {
    format!("{version:05}-{}.metadata.json", uuid::Uuid::new_v4())
}
