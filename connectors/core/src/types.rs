//! The one mapping from tidewater column types to Arrow types, and the lake's
//! metadata columns. The golden file `schemas/type-mapping.json` mirrors this
//! module; a unit test keeps the two in step.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, TimeUnit};

use crate::schema::{Column, ColumnType};

/// Field metadata key naming the source type of a lake column.
pub const SOURCE_TYPE_KEY: &str = "tidewater.source_type";

/// Arrow extension name marking a FixedSizeBinary(16) as a UUID.
const UUID_EXTENSION: &str = "arrow.uuid";

/// Names of the metadata columns every change-log table carries, in order.
pub const META_COLUMNS: [&str; 6] = [
    "_tw_op",
    "_tw_seq",
    "_tw_ord",
    "_tw_position",
    "_tw_commit_ts",
    "_tw_txid",
];

/// The Arrow type that holds every value of `ty` without loss.
pub fn arrow_type(ty: &ColumnType) -> DataType {
    match ty {
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Int8 => DataType::Int8,
        ColumnType::Int16 => DataType::Int16,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::UInt8 => DataType::UInt8,
        ColumnType::UInt16 => DataType::UInt16,
        ColumnType::UInt32 => DataType::UInt32,
        ColumnType::UInt64 => DataType::UInt64,
        ColumnType::Float32 => DataType::Float32,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Decimal { precision, scale } if *precision <= 38 => {
            DataType::Decimal128(*precision, *scale)
        }
        ColumnType::Decimal { precision, scale } => DataType::Decimal256(*precision, *scale),
        ColumnType::Text | ColumnType::Json => DataType::Utf8,
        ColumnType::Binary => DataType::Binary,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::Time => DataType::Time64(TimeUnit::Microsecond),
        ColumnType::Duration => DataType::Duration(TimeUnit::Microsecond),
        ColumnType::Uuid => DataType::FixedSizeBinary(16),
        ColumnType::List(inner) => {
            DataType::List(Arc::new(Field::new("element", arrow_type(inner), true)))
        }
    }
}

/// The lake field of a source column: always nullable (a delete may carry only
/// the key, and a dropped column stays in the table), tagged with its source type.
pub fn arrow_field(column: &Column) -> Field {
    let mut metadata = HashMap::from([(SOURCE_TYPE_KEY.to_string(), column.source_type.clone())]);
    if column.ty == ColumnType::Uuid {
        metadata.insert(
            "ARROW:extension:name".to_string(),
            UUID_EXTENSION.to_string(),
        );
    }
    Field::new(&column.name, arrow_type(&column.ty), true).with_metadata(metadata)
}

/// The metadata columns of DESIGN §3, in [`META_COLUMNS`] order.
pub fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new("_tw_op", DataType::Utf8, false),
        Field::new("_tw_seq", DataType::UInt64, false),
        Field::new("_tw_ord", DataType::UInt64, false),
        Field::new("_tw_position", DataType::Utf8, false),
        Field::new(
            "_tw_commit_ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("_tw_txid", DataType::Utf8, true),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_precision_picks_width() {
        let narrow = ColumnType::Decimal {
            precision: 38,
            scale: 2,
        };
        let wide = ColumnType::Decimal {
            precision: 39,
            scale: 2,
        };
        assert_eq!(arrow_type(&narrow), DataType::Decimal128(38, 2));
        assert_eq!(arrow_type(&wide), DataType::Decimal256(39, 2));
    }

    #[test]
    fn every_source_field_is_nullable_and_tagged() {
        let column = Column {
            name: "id".into(),
            ty: ColumnType::Uuid,
            source_type: "uuid".into(),
            key: true,
        };
        let field = arrow_field(&column);
        assert!(field.is_nullable());
        assert_eq!(field.metadata()[SOURCE_TYPE_KEY], "uuid");
        assert_eq!(field.metadata()["ARROW:extension:name"], "arrow.uuid");
    }
}

/// The dates a lake can hold, as days since 1970-01-01: the range of `chrono`,
/// which writers (delta-rs among them) use for Parquet statistics. Postgres
/// `infinity` / `-infinity` land as the upper / lower end; finite dates outside
/// are refused loudly by the sources.
pub fn date_range_days() -> (i32, i32) {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    let days = |d: chrono::NaiveDate| (d - epoch).num_days() as i32;
    (days(chrono::NaiveDate::MIN), days(chrono::NaiveDate::MAX))
}

/// The timestamps a lake can hold, in microseconds since the epoch: from the
/// first to the last microsecond of [`date_range_days`]. Infinities land as the
/// ends, like dates.
pub fn timestamp_range_us() -> (i64, i64) {
    let (min_days, max_days) = date_range_days();
    const DAY_US: i64 = 86_400_000_000;
    (
        min_days as i64 * DAY_US,
        max_days as i64 * DAY_US + DAY_US - 1,
    )
}

#[cfg(test)]
mod range_tests {
    use super::*;

    #[test]
    fn ranges_round_trip_through_chrono() {
        let (lo, hi) = timestamp_range_us();
        assert!(chrono::DateTime::from_timestamp_micros(lo).is_some());
        assert!(chrono::DateTime::from_timestamp_micros(hi).is_some());
        assert!(chrono::DateTime::from_timestamp_micros(hi + 1).is_none());
        let (dlo, dhi) = date_range_days();
        assert!(dlo < -95_000_000 && dhi > 95_000_000, "{dlo} {dhi}");
    }
}
