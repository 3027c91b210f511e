//! Which files, and which pages of a file, can hold a row of a set of keys.
//!
//! Looking rows up by key (the latest image of a row whose TOASTed value
//! did not change, a MySQL snapshot's resume key) used to read the key
//! columns of every file of the table: a cost that grows with the table
//! however few keys are asked. Two layers of statistics cut it to what the
//! keys cost:
//!
//! ```text
//!  wanted keys ─▶ Delta log: per-file min/max/nullCount of the key columns
//!                 (in memory already, no I/O) ─▶ candidate files
//!              ─▶ footer + page index of a candidate: per-page min/max of the
//!                 first key column (key and _tw_* columns are written in
//!                 small pages) ─▶ the rows of candidate pages only
//! ```
//!
//! Why statistics rather than a key index of our own: they are written by
//! the same commit that adds the file (the Delta log is the only source of
//! truth, so there is nothing to rebuild or to distrust after a crash), and
//! every Delta reader prunes with them too. They prune well where keys are
//! clustered: snapshot files of a table loaded in key order, MySQL snapshots
//! (read in key order), and the pages of any file. Rows with a NULL key
//! column — a truncate's marker row, keys of a column added later — are
//! never pruned away, so the last truncate is always seen.
//!
//! Only columns whose statistics compare exactly with the wanted values
//! prune: signed integers and text. Anything else (decimals, timestamps,
//! UUIDs, a column whose type changed) reads as "may hold".

use std::cmp::Ordering;
use std::ops::Range;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::{DataType, Int16Type, Int32Type, Int64Type, Int8Type};
use deltalake::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use deltalake::parquet::basic::{ConvertedType, LogicalType};
use deltalake::parquet::file::metadata::ParquetMetaData;
use deltalake::parquet::file::page_index::column_index::ColumnIndexMetaData;
use serde_json::Value;
use tidewater_core::Datum;

/// Parquet truncates text statistics longer than this (parquet-rs' default
/// for both the footer and the page index): a max that long may be cut.
const STATS_TRUNCATE: usize = 64;

/// A key value as statistics can compare it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Point {
    Int(i128),
    Text(Vec<u8>),
}

impl Point {
    pub(super) fn of(datum: &Datum) -> Option<Point> {
        Some(match datum {
            Datum::Int8(v) => Point::Int(i128::from(*v)),
            Datum::Int16(v) => Point::Int(i128::from(*v)),
            Datum::Int32(v) => Point::Int(i128::from(*v)),
            Datum::Int64(v) => Point::Int(i128::from(*v)),
            Datum::Text(s) => Point::Text(s.as_bytes().to_vec()),
            _ => return None,
        })
    }

    /// The value at `row` of an Arrow column, as [`Point::of`] would see it.
    pub(super) fn from_array(array: &dyn Array, row: usize) -> Option<Point> {
        if array.is_null(row) {
            return None;
        }
        Some(match array.data_type() {
            DataType::Int8 => Point::Int(i128::from(array.as_primitive::<Int8Type>().value(row))),
            DataType::Int16 => Point::Int(i128::from(array.as_primitive::<Int16Type>().value(row))),
            DataType::Int32 => Point::Int(i128::from(array.as_primitive::<Int32Type>().value(row))),
            DataType::Int64 => Point::Int(i128::from(array.as_primitive::<Int64Type>().value(row))),
            DataType::Utf8 => Point::Text(array.as_string::<i32>().value(row).as_bytes().to_vec()),
            DataType::LargeUtf8 => {
                Point::Text(array.as_string::<i64>().value(row).as_bytes().to_vec())
            }
            _ => return None,
        })
    }

    fn same_kind(&self, other: &Point) -> bool {
        matches!(
            (self, other),
            (Point::Int(_), Point::Int(_)) | (Point::Text(_), Point::Text(_))
        )
    }
}

/// A closed range of one column's values; an open end is None.
#[derive(Debug, Clone, PartialEq)]
struct Bounds {
    min: Option<Point>,
    max: Option<Point>,
}

impl Bounds {
    /// Whether `point` may lie inside (values of another kind always may).
    fn may_hold(&self, point: &Point) -> bool {
        let below = |b: &Option<Point>, o: Ordering| match b {
            Some(b) if b.same_kind(point) => point.cmp(b) != o,
            _ => true,
        };
        below(&self.min, Ordering::Less) && below(&self.max, Ordering::Greater)
    }
}

/// A min or max from the Delta log's statistics as a point.
fn json_point(value: Option<&Value>, is_max: bool) -> Option<Point> {
    match value? {
        Value::Number(n) => n
            .as_i64()
            .map(|v| Point::Int(i128::from(v)))
            .or_else(|| n.as_u64().map(|v| Point::Int(i128::from(v)))),
        Value::String(s) if is_max && s.len() >= STATS_TRUNCATE => None,
        Value::String(s) => Some(Point::Text(s.as_bytes().to_vec())),
        _ => None,
    }
}

/// The wanted keys of one lookup, ready to test statistics against.
pub(super) struct Probe {
    /// Lake names of the key columns, in key order.
    columns: Vec<String>,
    /// Each wanted key, one point per key column (None: that value prunes
    /// nothing).
    keys: Vec<Vec<Option<Point>>>,
    /// The distinct first-column points, sorted (for the page index).
    first: Vec<Point>,
    /// Whether every key's first column has a point (else pages cannot be
    /// pruned: a key without one may be on any page).
    first_complete: bool,
}

impl Probe {
    pub(super) fn new(columns: Vec<String>, keys: &[Vec<Datum>]) -> Probe {
        let keys: Vec<Vec<Option<Point>>> = keys
            .iter()
            .map(|key| key.iter().map(Point::of).collect())
            .collect();
        Probe::of_points(columns, keys)
    }

    /// A probe of keys already turned into points.
    pub(super) fn of_points(columns: Vec<String>, keys: Vec<Vec<Option<Point>>>) -> Probe {
        let first_complete = keys.iter().all(|k| k.first().is_some_and(Option::is_some));
        let mut first: Vec<Point> = keys
            .iter()
            .filter_map(|k| k.first().cloned().flatten())
            .collect();
        first.sort();
        first.dedup();
        Probe {
            columns,
            keys,
            first,
            first_complete,
        }
    }

    /// Whether the file whose Delta statistics are `stats` may hold a row
    /// of a wanted key, or a row with a NULL key column (a truncate).
    /// Missing or unreadable statistics may hold anything.
    pub(super) fn file_may_hold(&self, stats: Option<&str>) -> bool {
        let Some(stats) = stats.and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
            return true;
        };
        let mut bounds = Vec::with_capacity(self.columns.len());
        for column in &self.columns {
            let nulls = stats
                .get("nullCount")
                .and_then(|n| n.get(column))
                .and_then(Value::as_i64);
            if nulls != Some(0) {
                return true;
            }
            bounds.push(Bounds {
                min: json_point(stats.get("minValues").and_then(|m| m.get(column)), false),
                max: json_point(stats.get("maxValues").and_then(|m| m.get(column)), true),
            });
        }
        self.keys.iter().any(|key| {
            key.iter()
                .zip(&bounds)
                .all(|(point, bounds)| point.as_ref().is_none_or(|p| bounds.may_hold(p)))
        })
    }

    /// The rows of the file `metadata` describes whose page of the first key
    /// column may hold a wanted key or a NULL; None when the page index
    /// cannot tell (no index, another type): every row.
    pub(super) fn pages(&self, metadata: &ParquetMetaData) -> Option<RowSelection> {
        if !self.first_complete {
            return None;
        }
        let column = self.columns.first()?;
        let leaf = metadata
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.path().parts() == std::slice::from_ref(column))?;
        let descr = metadata.file_metadata().schema_descr().column(leaf);
        let unsigned = matches!(
            descr.logical_type_ref(),
            Some(LogicalType::Integer(int)) if !int.is_signed
        ) || matches!(
            descr.converted_type(),
            ConvertedType::UINT_8
                | ConvertedType::UINT_16
                | ConvertedType::UINT_32
                | ConvertedType::UINT_64
        );
        if unsigned {
            return None;
        }
        let column_index = metadata.column_index()?;
        let offset_index = metadata.offset_index()?;
        let mut ranges: Vec<Range<usize>> = Vec::new();
        let mut group_start = 0usize;
        for (g, group) in metadata.row_groups().iter().enumerate() {
            let rows = usize::try_from(group.num_rows()).ok()?;
            let index = column_index.get(g)?.get(leaf)?;
            let locations = offset_index.get(g)?.get(leaf)?.page_locations();
            for (p, location) in locations.iter().enumerate() {
                let start = usize::try_from(location.first_row_index).ok()?;
                let end = match locations.get(p + 1) {
                    Some(next) => usize::try_from(next.first_row_index).ok()?,
                    None => rows,
                };
                if self.page_may_hold(index, p) {
                    let range = group_start + start..group_start + end;
                    match ranges.last_mut() {
                        Some(last) if last.end == range.start => last.end = range.end,
                        _ => ranges.push(range),
                    }
                }
            }
            group_start += rows;
        }
        Some(selection(&ranges, group_start))
    }

    fn page_may_hold(&self, index: &ColumnIndexMetaData, page: usize) -> bool {
        if index.is_null_page(page) || index.null_count(page) != Some(0) {
            return true;
        }
        let bounds = match index {
            ColumnIndexMetaData::INT32(i) => Bounds {
                min: i.min_value(page).map(|v| Point::Int(i128::from(*v))),
                max: i.max_value(page).map(|v| Point::Int(i128::from(*v))),
            },
            ColumnIndexMetaData::INT64(i) => Bounds {
                min: i.min_value(page).map(|v| Point::Int(i128::from(*v))),
                max: i.max_value(page).map(|v| Point::Int(i128::from(*v))),
            },
            ColumnIndexMetaData::BYTE_ARRAY(i) => Bounds {
                min: i.min_value(page).map(|v| Point::Text(v.to_vec())),
                max: i
                    .max_value(page)
                    .filter(|v| v.len() < STATS_TRUNCATE)
                    .map(|v| Point::Text(v.to_vec())),
            },
            _ => return true,
        };
        // Points of one kind with the page's min: only the first wanted
        // point at or above it can decide.
        match &bounds.min {
            Some(min) if self.first.iter().all(|p| p.same_kind(min)) => {
                let from = self.first.partition_point(|p| p < min);
                self.first.get(from).is_some_and(|p| bounds.may_hold(p))
            }
            _ => self.first.iter().any(|p| bounds.may_hold(p)),
        }
    }
}

/// A row selection of `ranges` (sorted, disjoint) out of `total` rows.
pub(super) fn selection(ranges: &[Range<usize>], total: usize) -> RowSelection {
    let mut selectors = Vec::with_capacity(ranges.len() * 2 + 1);
    let mut at = 0;
    for range in ranges {
        if range.start > at {
            selectors.push(RowSelector::skip(range.start - at));
        }
        if range.end > range.start {
            selectors.push(RowSelector::select(range.end - range.start));
        }
        at = range.end;
    }
    if total > at {
        selectors.push(RowSelector::skip(total - at));
    }
    RowSelection::from(selectors)
}

/// The file row numbers a selection yields, in order: the n-th row a
/// selected read returns is the n-th of these.
pub(super) fn selected_rows(selection: &RowSelection) -> impl Iterator<Item = usize> + '_ {
    let mut at = 0usize;
    selection.iter().flat_map(move |s| {
        let start = at;
        at += s.row_count;
        if s.skip {
            0..0
        } else {
            start..start + s.row_count
        }
    })
}

/// Whether the file whose Delta statistics are `stats` may hold a row
/// after the mark (`seq`, `ord`): a change log file that may hold rows a
/// merge has not seen. Its `_tw_seq` max must pass `seq`, or reach it with
/// an `_tw_ord` max past `ord` (a transaction cut over several commits).
pub(super) fn file_may_pass(stats: Option<&str>, seq: i64, ord: i64) -> bool {
    let Some(stats) = stats.and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
        return true;
    };
    let max = |column: &str| {
        stats
            .get("maxValues")
            .and_then(|m| m.get(column))
            .and_then(Value::as_i64)
    };
    match (max("_tw_seq"), max("_tw_ord")) {
        (Some(s), _) if s > seq => true,
        (Some(s), Some(o)) if s == seq => o > ord,
        (Some(s), None) => s >= seq,
        (Some(_), Some(_)) => false,
        (None, _) => true,
    }
}

/// Whether the Delta statistics `stats` say the file holds snapshot rows
/// only (`_tw_op` is `r` throughout).
pub(super) fn only_snapshot_rows(stats: Option<&str>) -> bool {
    let Some(stats) = stats.and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
        return false;
    };
    let get = |part: &str| stats.get(part).and_then(|m| m.get("_tw_op")).cloned();
    get("minValues") == Some(Value::from("r"))
        && get("maxValues") == Some(Value::from("r"))
        && get("nullCount") == Some(Value::from(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(min: i64, max: i64, nulls: i64) -> String {
        format!(
            r#"{{"numRecords":10,"minValues":{{"id":{min},"name":"a"}},"maxValues":{{"id":{max},"name":"m"}},"nullCount":{{"id":{nulls},"name":0}}}}"#
        )
    }

    #[test]
    fn files_are_candidates_only_when_a_key_or_a_null_may_be_inside() {
        let probe = Probe::new(vec!["id".into()], &[vec![Datum::Int64(15)]]);
        assert!(probe.file_may_hold(Some(&stats(10, 20, 0))));
        assert!(probe.file_may_hold(Some(&stats(15, 15, 0))));
        assert!(!probe.file_may_hold(Some(&stats(16, 20, 0))));
        assert!(!probe.file_may_hold(Some(&stats(1, 14, 0))));
        // A truncate's marker row has NULL keys: always read.
        assert!(probe.file_may_hold(Some(&stats(16, 20, 1))));
        // No or unreadable statistics: anything may be inside.
        assert!(probe.file_may_hold(None));
        assert!(probe.file_may_hold(Some("{")));
        assert!(probe.file_may_hold(Some(r#"{"numRecords":1}"#)));
        // A key the statistics cannot compare prunes nothing.
        let uuid = Probe::new(vec!["id".into()], &[vec![Datum::Uuid([0; 16])]]);
        assert!(uuid.file_may_hold(Some(&stats(16, 20, 0))));
        // Text: a kind mismatch is no proof of absence.
        let text = Probe::new(vec!["id".into()], &[vec![Datum::Text("15".into())]]);
        assert!(text.file_may_hold(Some(&stats(16, 20, 0))));
    }

    #[test]
    fn composite_keys_need_one_key_inside_on_every_column() {
        let two = |a: &str, b: i64| vec![Datum::Text(a.into()), Datum::Int32(b as i32)];
        let stats = r#"{"minValues":{"t":"b","n":5},"maxValues":{"t":"d","n":9},"nullCount":{"t":0,"n":0}}"#;
        let cols = || vec!["t".to_string(), "n".to_string()];
        assert!(Probe::new(cols(), &[two("c", 7)]).file_may_hold(Some(stats)));
        // Each column alone is inside for some key, but no key is inside on both.
        assert!(!Probe::new(cols(), &[two("c", 1), two("a", 7)]).file_may_hold(Some(stats)));
        // A max long enough to have been truncated bounds nothing.
        let long = format!(
            r#"{{"minValues":{{"t":"b"}},"maxValues":{{"t":"{}"}},"nullCount":{{"t":0}}}}"#,
            "c".repeat(STATS_TRUNCATE)
        );
        let probe = Probe::new(vec!["t".into()], &[vec![Datum::Text("zzz".into())]]);
        assert!(probe.file_may_hold(Some(&long)));
    }

    #[test]
    fn selections_map_back_to_file_rows() {
        let s = selection(&[2..4, 7..8], 10);
        assert_eq!(s.row_count(), 3);
        assert_eq!(selected_rows(&s).collect::<Vec<_>>(), vec![2, 3, 7]);
        assert_eq!(selected_rows(&selection(&[], 5)).count(), 0);
        let max =
            |seq: i64, ord: i64| format!(r#"{{"maxValues":{{"_tw_seq":{seq},"_tw_ord":{ord}}}}}"#);
        assert!(file_may_pass(Some(&max(10, 1)), 9, 5));
        assert!(file_may_pass(Some(&max(9, 6)), 9, 5));
        assert!(!file_may_pass(Some(&max(9, 5)), 9, 5));
        assert!(!file_may_pass(Some(&max(8, 50)), 9, 5));
        assert!(file_may_pass(Some(r#"{"maxValues":{"_tw_seq":9}}"#), 9, 5));
        assert!(file_may_pass(None, 9, 5));
    }
}
