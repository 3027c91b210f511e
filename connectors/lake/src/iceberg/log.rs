//! An Iceberg change log as a query engine scans it (reverse ETL): the
//! live data files of the current snapshot, where they are, and the shape
//! the engine reads them as — what [`crate::LakeSink::log_files`] gives for
//! a Delta table, so the engine does not care which format it reads.
//!
//! ```text
//!  catalog ─▶ current metadata ─▶ manifest list ─▶ manifests ─▶ live data files
//!     schema: the current schema's columns, in Arrow (older files hold a
//!             promoted column's narrower type, or lack a later column: the
//!             scan casts and NULL-fills them to this schema)
//!     columns: source name ─▶ lake column as the newest file has them
//!     key:     tidewater.key_columns
//!     stats:   each file's row count, NULL counts and integer/date bounds
//!              from its manifest entry, in the Delta log's JSON form
//! ```
//!
//! Nothing but metadata, manifest lists and manifests is read here; the
//! files themselves are the engine's to read (only the columns and row
//! groups a query needs).

use std::collections::BTreeSet;
use std::sync::Arc;

use deltalake::arrow::datatypes::{Field, Schema};
use serde_json::{json, Map, Value};
use tidewater_core::{ErrorClass, TableId};

use super::avro::ManifestEntry;
use super::schema::{IcebergField, IcebergType};
use super::{IcebergSink, PROPERTY_KEY};
use crate::error::LakeError;
use crate::sink::{LakeFile, LakeFiles};
use crate::store::LakeStore;

impl IcebergSink {
    /// The live data files of `table`'s current snapshot and how to read
    /// them (see [`crate::LakeSink::log_files`]); None when the catalog has
    /// no such table. Paths are below the lake root, in a store rooted
    /// there. A table with delete files (another writer's row deletes) is
    /// refused: its change log would read rows that are gone.
    pub async fn log_files(&mut self, table: &TableId) -> Result<Option<LakeFiles>, LakeError> {
        self.table_state(table).await?;
        if !self.tables.contains_key(table) {
            return Ok(None);
        }
        let entries = self.data_files(table).await?;
        if let Some(deletes) = entries.iter().find(|e| e.content != 0) {
            return Err(Self::failed(
                table,
                "reading",
                format!(
                    "its current snapshot has delete files ({}), which tidewater's change logs \
                     never have: another writer deleted rows; reverse ETL reads only \
                     append-only change logs",
                    deletes.file.path
                ),
                ErrorClass::Config,
            ));
        }
        let open = self.tables.get(table).expect("opened above");
        let fields = open.metadata.fields();
        let schema = Arc::new(Schema::new(
            fields
                .iter()
                .map(|f| Field::new(&f.name, f.ty.arrow(), !f.required))
                .collect::<Vec<_>>(),
        ));
        let columns = log_columns(&fields, newest(&entries, &fields));
        let key_names: Vec<String> = open
            .metadata
            .property(PROPERTY_KEY)
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        let mut key = Vec::with_capacity(key_names.len());
        for name in &key_names {
            match columns.iter().find(|(source, _)| source == name) {
                Some((_, lake)) => key.push(lake.clone()),
                // A key column the table does not have: no current state.
                None => {
                    key.clear();
                    break;
                }
            }
        }
        let mut files = Vec::with_capacity(entries.len());
        for entry in &entries {
            let rel = self.store.rel_of(&entry.file.path).ok_or_else(|| {
                Self::failed(
                    table,
                    "reading",
                    format!(
                        "its data file {} is outside the lake root {}",
                        entry.file.path,
                        self.store.root_uri()
                    ),
                    ErrorClass::Config,
                )
            })?;
            files.push(LakeFile {
                path: LakeStore::object_path(&rel),
                size: entry.file.size.max(0) as u64,
                stats: Some(file_stats(entry, &fields).to_string()),
            });
        }
        Ok(Some(LakeFiles {
            store: self.store.root_store()?,
            files,
            schema,
            columns,
            key,
        }))
    }
}

/// The version number of lake column `name` of source column `base`:
/// `base` itself is 1, `base__vN` is N.
fn version_of(name: &str, base: &str) -> Option<u32> {
    if name == base {
        return Some(1);
    }
    name.strip_prefix(base)?
        .strip_prefix("__v")?
        .parse()
        .ok()
        .filter(|n| *n >= 2)
}

/// The field ids the file holding the last change has (its metrics name
/// every top-level primitive column it holds); None when the table has no
/// files, or that file no metrics to tell.
fn newest(entries: &[ManifestEntry], fields: &[IcebergField]) -> Option<BTreeSet<i32>> {
    let id = |name: &str| fields.iter().find(|f| f.name == name).map(|f| f.id);
    let (seq_id, ord_id) = (id("_tw_seq"), id("_tw_ord"));
    // The highest `_tw_seq` bound, then `_tw_ord`'s, then the latest
    // commit. Its columns are the source's latest row shape: tidewater
    // writes each batch's columns only.
    let newest = entries.iter().max_by_key(|e| {
        let upper = |id: Option<i32>| {
            e.file
                .upper_bounds
                .get(&id?)
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map(i64::from_le_bytes)
        };
        (upper(seq_id), upper(ord_id), e.sequence_number)
    })?;
    let ids: BTreeSet<i32> = newest.file.column_sizes.keys().copied().collect();
    (!ids.is_empty()).then_some(ids)
}

/// (source column, lake column) of the table's latest row shape: a source
/// column whose type changed in a way Iceberg cannot promote has versions
/// (`amount`, `amount__v2`, …); the one the newest file holds is current
/// (a change back reuses an older version), else the highest. A column the
/// newest file lacks was dropped at the source (it stays in the table,
/// NULL from then on) and is left out, as the Delta lake's schema history
/// leaves it out.
fn log_columns(fields: &[IcebergField], present: Option<BTreeSet<i32>>) -> Vec<(String, String)> {
    let names: BTreeSet<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    let is_version = |name: &str| {
        name.rsplit_once("__v")
            .is_some_and(|(base, n)| names.contains(base) && n.parse::<u32>().is_ok_and(|n| n >= 2))
    };
    let mut out = Vec::new();
    for base in fields {
        if base.name.starts_with("_tw_") || is_version(&base.name) {
            continue;
        }
        let mut versions: Vec<(u32, &IcebergField)> = fields
            .iter()
            .filter_map(|f| Some((version_of(&f.name, &base.name)?, f)))
            .collect();
        versions.sort_by_key(|(n, _)| *n);
        // Whether the newest file holds it: unknown for lists (metrics
        // cover top-level primitives only) and without metrics.
        let held = |f: &IcebergField| match (&present, &f.ty) {
            (None, _) | (_, IcebergType::List { .. }) => None,
            (Some(ids), _) => Some(ids.contains(&f.id)),
        };
        let current = versions
            .iter()
            .rev()
            .find(|(_, f)| held(f) == Some(true))
            .or_else(|| versions.iter().rev().find(|(_, f)| held(f).is_none()));
        if let Some((_, lake)) = current {
            out.push((base.name.clone(), lake.name.clone()));
        }
    }
    out
}

/// A data file's manifest metrics as the Delta log writes file statistics
/// (`numRecords`, `nullCount`, `minValues`, `maxValues` by column name):
/// the engine prunes files by them before opening any. Bounds of integer
/// and date columns only (exact in both formats); an older file's bounds
/// of a promoted column are ints, read as such.
fn file_stats(entry: &ManifestEntry, fields: &[IcebergField]) -> Value {
    let file = &entry.file;
    let mut nulls = Map::new();
    let mut mins = Map::new();
    let mut maxs = Map::new();
    for field in fields {
        if let Some(n) = file.null_value_counts.get(&field.id) {
            nulls.insert(field.name.clone(), json!(n));
        }
        let decode = |bytes: &Vec<u8>| -> Option<i64> {
            match bytes.len() {
                4 => Some(i64::from(i32::from_le_bytes(bytes[..4].try_into().ok()?))),
                8 => Some(i64::from_le_bytes(bytes[..8].try_into().ok()?)),
                _ => None,
            }
        };
        let (Some(low), Some(high)) = (
            file.lower_bounds.get(&field.id).and_then(decode),
            file.upper_bounds.get(&field.id).and_then(decode),
        ) else {
            continue;
        };
        let as_json = |v: i64| -> Option<Value> {
            match field.ty {
                IcebergType::Int | IcebergType::Long => Some(json!(v)),
                IcebergType::Date => {
                    let day = chrono::DateTime::from_timestamp(v.checked_mul(86_400)?, 0)?;
                    Some(json!(day.date_naive().format("%Y-%m-%d").to_string()))
                }
                _ => None,
            }
        };
        if let (Some(low), Some(high)) = (as_json(low), as_json(high)) {
            mins.insert(field.name.clone(), low);
            maxs.insert(field.name.clone(), high);
        }
    }
    json!({
        "numRecords": file.record_count,
        "nullCount": nulls,
        "minValues": mins,
        "maxValues": maxs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iceberg::avro::DataFile;

    fn field(id: i32, name: &str, ty: IcebergType) -> IcebergField {
        IcebergField {
            id,
            name: name.into(),
            ty,
            required: false,
            doc: None,
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn the_newest_files_columns_are_the_current_ones() {
        let list = IcebergType::List {
            element_id: 9,
            element: Box::new(IcebergType::Long),
            element_required: false,
        };
        let fields = vec![
            field(1, "id", IcebergType::Long),
            field(2, "v", IcebergType::String),
            field(3, "v__v2", IcebergType::Int),
            field(4, "w", IcebergType::String),
            field(5, "l", list),
            // A source column of that name, no versions of anything.
            field(6, "x__v2", IcebergType::Int),
            field(7, "_tw_seq", IcebergType::Long),
        ];
        let held = |ids: &[i32]| Some(ids.iter().copied().collect::<BTreeSet<i32>>());
        // v changed to int and back to text; w dropped; a list column is
        // not in the metrics, so kept.
        assert_eq!(
            log_columns(&fields, held(&[1, 2, 6, 7])),
            pairs(&[("id", "id"), ("v", "v"), ("l", "l"), ("x__v2", "x__v2")])
        );
        assert_eq!(
            log_columns(&fields, held(&[1, 3, 4, 6, 7])),
            pairs(&[
                ("id", "id"),
                ("v", "v__v2"),
                ("w", "w"),
                ("l", "l"),
                ("x__v2", "x__v2")
            ])
        );
        // No metrics: every column, the highest version.
        assert_eq!(
            log_columns(&fields, None),
            pairs(&[
                ("id", "id"),
                ("v", "v__v2"),
                ("w", "w"),
                ("l", "l"),
                ("x__v2", "x__v2")
            ])
        );
    }

    #[test]
    fn manifest_metrics_read_as_delta_statistics() {
        let mut file = DataFile {
            record_count: 7,
            ..Default::default()
        };
        // A promoted column's older file: int bounds.
        file.lower_bounds.insert(1, 5i32.to_le_bytes().to_vec());
        file.upper_bounds.insert(1, 9i32.to_le_bytes().to_vec());
        file.null_value_counts.insert(1, 0);
        file.lower_bounds
            .insert(2, 19_000i32.to_le_bytes().to_vec());
        file.upper_bounds
            .insert(2, 19_001i32.to_le_bytes().to_vec());
        // A double's bounds are not exact: left out.
        file.lower_bounds.insert(3, 1.5f64.to_le_bytes().to_vec());
        file.upper_bounds.insert(3, 2.5f64.to_le_bytes().to_vec());
        file.null_value_counts.insert(3, 2);
        let entry = ManifestEntry {
            status: 1,
            snapshot_id: None,
            sequence_number: None,
            content: 0,
            file,
        };
        let fields = [
            field(1, "n", IcebergType::Long),
            field(2, "day", IcebergType::Date),
            field(3, "f", IcebergType::Double),
        ];
        assert_eq!(
            file_stats(&entry, &fields),
            json!({
                "numRecords": 7,
                "nullCount": {"n": 0, "f": 2},
                "minValues": {"n": 5, "day": "2022-01-08"},
                "maxValues": {"n": 9, "day": "2022-01-09"},
            })
        );
    }
}
