//! The schema history of a lake table: every version of the source table's
//! columns the lake received, with where it took effect, in
//! `<table>/_tidewater_schema_history.json` — plain JSON, readable without
//! tidewater (format: `schemas/schema-history.md`). Names starting with `_`
//! are outside the Delta table for readers and vacuum.
//!
//! ```text
//!  write(batch) ── columns as landed ≠ last version? ── append version n+1
//!                                                       (seq, position of its
//!                                                        first row; lake names)
//!  commit ── history file replaced (fsync, rename) ── Delta commit
//! ```
//!
//! Written before the Delta commit that holds the version's first rows: a
//! crash in between leaves a version whose rows the restarted pipeline writes
//! again under the same columns (compared by value, so nothing is repeated).

use serde::{Deserialize, Serialize};

pub const HISTORY_FILE: &str = "_tidewater_schema_history.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SchemaHistory {
    /// `schema.table` on the source.
    pub table: String,
    pub versions: Vec<SchemaVersion>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaVersion {
    /// 1, 2, …: this table's versions in the lake, never reused.
    pub version: u64,
    /// `_tw_seq` of the first row written under this version.
    pub seq: String,
    /// `_tw_position` of that row: where on the source it took effect.
    pub position: String,
    /// When tidewater recorded it (UTC, RFC 3339).
    pub recorded_at: String,
    /// DDL text, when the source gave one.
    #[serde(default)]
    pub ddl: Option<String>,
    /// Why the lake's columns differ from the source's, when they do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub columns: Vec<HistoryColumn>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryColumn {
    /// The source column's name.
    pub name: String,
    /// The lake column holding it (differs after a type change the lake
    /// could not widen in place: `amount__v2`).
    pub lake_column: String,
    /// The lake column's Arrow type as written.
    pub lake_type: String,
    /// The source's declared type.
    pub source_type: String,
    pub key: bool,
}

impl SchemaHistory {
    pub fn latest(&self) -> Option<&SchemaVersion> {
        self.versions.last()
    }

    /// Appends a version when `columns` differ from the latest one; returns
    /// whether it did.
    pub fn record(
        &mut self,
        columns: Vec<HistoryColumn>,
        seq: String,
        position: String,
        notes: Vec<String>,
        ddl: Option<String>,
    ) -> bool {
        if self.latest().is_some_and(|v| v.columns == columns) {
            return false;
        }
        let version = self.latest().map_or(1, |v| v.version + 1);
        self.versions.push(SchemaVersion {
            version,
            seq,
            position,
            recorded_at: chrono_now(),
            ddl,
            notes,
            columns,
        });
        true
    }
}

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A history file's content.
pub fn parse(text: &str) -> Result<SchemaHistory, serde_json::Error> {
    serde_json::from_str(text)
}

pub fn to_json(history: &SchemaHistory) -> String {
    let mut text = serde_json::to_string_pretty(history).expect("history serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, ty: &str) -> HistoryColumn {
        HistoryColumn {
            name: name.into(),
            lake_column: name.into(),
            lake_type: ty.into(),
            source_type: ty.into(),
            key: false,
        }
    }

    #[test]
    fn records_only_changes_and_round_trips() {
        let mut h = SchemaHistory {
            table: "public.t".into(),
            versions: vec![],
        };
        assert!(h.record(
            vec![column("a", "Int32")],
            "1".into(),
            "0/1".into(),
            vec![],
            None
        ));
        assert!(!h.record(
            vec![column("a", "Int32")],
            "2".into(),
            "0/2".into(),
            vec![],
            None
        ));
        assert!(h.record(
            vec![column("a", "Int32"), column("b", "Utf8")],
            "3".into(),
            "0/3".into(),
            vec![],
            Some("ALTER TABLE t ADD COLUMN b text".into())
        ));
        assert_eq!(h.versions.len(), 2);
        assert_eq!(h.latest().unwrap().version, 2);
        let back: SchemaHistory = serde_json::from_str(&to_json(&h)).unwrap();
        assert_eq!(back, h);
        assert_eq!(h.versions[0].recorded_at.len(), 20);
    }
}
