//! Arrow types to Iceberg types, without loss (DESIGN §4), and the field ids
//! Iceberg names every column by.
//!
//! | Arrow (core mapping)         | Iceberg          | how                               |
//! |------------------------------|------------------|-----------------------------------|
//! | Int8, Int16, UInt8, UInt16   | int              | exact widening                    |
//! | UInt32                       | long             | exact                             |
//! | UInt64 `_tw_seq`, `_tw_ord`  | long             | checked cast (fails > 2^63-1)     |
//! | UInt64 (source column)       | decimal(20,0)    | exact                             |
//! | Time64(µs)                   | long             | microseconds since midnight       |
//! | Duration(µs) (MySQL TIME)    | long             | signed microseconds               |
//! | FixedSizeBinary(16) (uuid)   | uuid             | native                            |
//! | Decimal256(p,s)              | string           | exact decimal text at scale s     |
//! | Timestamp(µs) / (µs, UTC)    | timestamp / timestamptz |                            |
//! | List<T>                      | list<narrow(T)>  | element-wise                      |
//!
//! `time` is not Iceberg's `time`: Postgres keeps `24:00:00`, which Iceberg's
//! `time` (a time of day, below 24 h) cannot hold, so both lake formats store
//! microseconds since midnight. Each narrowed field's Arrow metadata says how
//! (`tidewater.lake_encoding`), and its Iceberg `doc` says it with the source
//! type, so readers of either see what the value was.
//!
//! Ids: a column keeps its id for the life of the table (Iceberg resolves
//! Parquet columns by id, not name); new columns — and list elements — take
//! the next id after the table's `last-column-id`.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::error::ArrowError;
use deltalake::parquet::arrow::PARQUET_FIELD_ID_META_KEY;
use serde_json::{json, Value};
use tidewater_core::SOURCE_TYPE_KEY;

use crate::narrow::{narrow_array, LAKE_ENCODING_KEY};

/// An Iceberg type, as far as tidewater writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IcebergType {
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Decimal(u8, i8),
    Date,
    Timestamp,
    Timestamptz,
    String,
    Uuid,
    Binary,
    List {
        element_id: i32,
        element: Box<IcebergType>,
        element_required: bool,
    },
}

impl IcebergType {
    /// The type's JSON form in table metadata.
    pub fn to_json(&self) -> Value {
        match self {
            IcebergType::List {
                element_id,
                element,
                element_required,
            } => json!({
                "type": "list",
                "element-id": element_id,
                "element": element.to_json(),
                "element-required": element_required,
            }),
            IcebergType::Decimal(p, s) => Value::from(format!("decimal({p}, {s})")),
            primitive => Value::from(match primitive {
                IcebergType::Boolean => "boolean",
                IcebergType::Int => "int",
                IcebergType::Long => "long",
                IcebergType::Float => "float",
                IcebergType::Double => "double",
                IcebergType::Date => "date",
                IcebergType::Timestamp => "timestamp",
                IcebergType::Timestamptz => "timestamptz",
                IcebergType::String => "string",
                IcebergType::Uuid => "uuid",
                IcebergType::Binary => "binary",
                IcebergType::List { .. } | IcebergType::Decimal(..) => unreachable!(),
            }),
        }
    }

    /// A type from table metadata (any writer's); None for types tidewater
    /// never writes (structs, maps, fixed, time, v3 types).
    pub fn from_json(value: &Value) -> Option<IcebergType> {
        if let Some(text) = value.as_str() {
            return Some(match text {
                "boolean" => IcebergType::Boolean,
                "int" => IcebergType::Int,
                "long" => IcebergType::Long,
                "float" => IcebergType::Float,
                "double" => IcebergType::Double,
                "date" => IcebergType::Date,
                "timestamp" => IcebergType::Timestamp,
                "timestamptz" => IcebergType::Timestamptz,
                "string" => IcebergType::String,
                "uuid" => IcebergType::Uuid,
                "binary" => IcebergType::Binary,
                other => {
                    let inner = other.strip_prefix("decimal(")?.strip_suffix(')')?;
                    let (p, s) = inner.split_once(',')?;
                    IcebergType::Decimal(p.trim().parse().ok()?, s.trim().parse().ok()?)
                }
            });
        }
        if value.get("type")?.as_str()? != "list" {
            return None;
        }
        Some(IcebergType::List {
            element_id: value.get("element-id")?.as_i64()? as i32,
            element: Box::new(IcebergType::from_json(value.get("element")?)?),
            element_required: value
                .get("element-required")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// The Arrow type tidewater writes for it.
    pub fn arrow(&self) -> DataType {
        match self {
            IcebergType::Boolean => DataType::Boolean,
            IcebergType::Int => DataType::Int32,
            IcebergType::Long => DataType::Int64,
            IcebergType::Float => DataType::Float32,
            IcebergType::Double => DataType::Float64,
            IcebergType::Decimal(p, s) => DataType::Decimal128(*p, *s),
            IcebergType::Date => DataType::Date32,
            IcebergType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            IcebergType::Timestamptz => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            IcebergType::String => DataType::Utf8,
            IcebergType::Uuid => DataType::FixedSizeBinary(16),
            IcebergType::Binary => DataType::Binary,
            IcebergType::List {
                element_id,
                element,
                element_required,
            } => DataType::List(Arc::new(with_id(
                Field::new("element", element.arrow(), !element_required),
                *element_id,
            ))),
        }
    }

    /// Whether a column of this type may hold `newer` values in place: the
    /// promotions format v2 allows (int → long, float → double, a decimal's
    /// precision up at the same scale), or no change at all.
    pub fn holds(&self, newer: &IcebergType) -> bool {
        match (self, newer) {
            (a, b) if a == b => true,
            (IcebergType::Int, IcebergType::Long) => true,
            (IcebergType::Float, IcebergType::Double) => true,
            (IcebergType::Decimal(p, s), IcebergType::Decimal(p2, s2)) => s == s2 && p2 >= p,
            _ => false,
        }
    }

    /// Whether `self` → `newer` is a promotion (a change [`Self::holds`]
    /// allows that is not equality).
    pub fn promotes_to(&self, newer: &IcebergType) -> bool {
        self != newer && self.holds(newer)
    }
}

/// The Arrow type a core Arrow type is stored as in Iceberg, and how its
/// value is encoded when that is not plain.
fn narrow_type(field: &Field) -> (DataType, Option<&'static str>) {
    match field.data_type() {
        DataType::UInt64 if field.name().starts_with("_tw_") => (DataType::Int64, None),
        DataType::UInt64 => (
            DataType::Decimal128(20, 0),
            Some("decimal(20,0) of an unsigned 64-bit integer"),
        ),
        DataType::UInt32 => (DataType::Int64, Some("long of an unsigned 32-bit integer")),
        DataType::UInt16 => (DataType::Int32, Some("int of an unsigned 16-bit integer")),
        DataType::UInt8 => (DataType::Int32, Some("int of an unsigned 8-bit integer")),
        DataType::Int8 | DataType::Int16 => (DataType::Int32, None),
        DataType::Time64(TimeUnit::Microsecond) => {
            (DataType::Int64, Some("microseconds since midnight"))
        }
        DataType::Duration(TimeUnit::Microsecond) => (DataType::Int64, Some("signed microseconds")),
        DataType::Decimal256(_, _) => (DataType::Utf8, Some("exact decimal text")),
        DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(_, _) => {
            (DataType::Utf8, None)
        }
        DataType::LargeBinary | DataType::BinaryView => (DataType::Binary, None),
        DataType::List(element) => {
            let (inner, how) = narrow_type(element);
            let element = Field::new(element.name(), inner, element.is_nullable());
            (DataType::List(Arc::new(element)), how)
        }
        other => (other.clone(), None),
    }
}

/// The Iceberg type of an Arrow type as [`narrow_type`] leaves it; None for
/// a type the mapping never produces. `next_id` hands out element ids.
fn iceberg_type(data_type: &DataType, next_id: &mut dyn FnMut() -> i32) -> Option<IcebergType> {
    Some(match data_type {
        DataType::Boolean => IcebergType::Boolean,
        DataType::Int32 => IcebergType::Int,
        DataType::Int64 => IcebergType::Long,
        DataType::Float32 => IcebergType::Float,
        DataType::Float64 => IcebergType::Double,
        DataType::Decimal128(p, s) => IcebergType::Decimal(*p, *s),
        DataType::Date32 => IcebergType::Date,
        DataType::Timestamp(TimeUnit::Microsecond, None) => IcebergType::Timestamp,
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => IcebergType::Timestamptz,
        DataType::Utf8 => IcebergType::String,
        DataType::FixedSizeBinary(16) => IcebergType::Uuid,
        DataType::Binary => IcebergType::Binary,
        DataType::List(element) => {
            let element_id = next_id();
            IcebergType::List {
                element_id,
                element: Box::new(iceberg_type(element.data_type(), next_id)?),
                element_required: !element.is_nullable(),
            }
        }
        _ => return None,
    })
}

impl std::fmt::Display for IcebergType {
    /// The type as Iceberg's documentation spells it (`list<long>`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IcebergType::List { element, .. } => write!(f, "list<{element}>"),
            IcebergType::Decimal(p, s) => write!(f, "decimal({p}, {s})"),
            other => match other.to_json() {
                Value::String(name) => f.write_str(&name),
                json => write!(f, "{json}"),
            },
        }
    }
}

/// The Iceberg type a core field is stored as and how its value is
/// encoded when that is not plain (for the type-mapping golden file).
pub fn iceberg_column(field: &Field) -> Option<(IcebergType, Option<&'static str>)> {
    let (narrowed, how) = narrow_type(field);
    let mut id = 0;
    let ty = iceberg_type(&narrowed, &mut || {
        id += 1;
        id
    })?;
    Some((ty, how))
}

/// One top-level column of an Iceberg schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcebergField {
    pub id: i32,
    pub name: String,
    pub ty: IcebergType,
    pub required: bool,
    pub doc: Option<String>,
}

impl IcebergField {
    pub fn to_json(&self) -> Value {
        let mut field = json!({
            "id": self.id,
            "name": self.name,
            "required": self.required,
            "type": self.ty.to_json(),
        });
        if let Some(doc) = &self.doc {
            field["doc"] = Value::from(doc.clone());
        }
        field
    }

    /// A field of table metadata; None when its type is one tidewater
    /// does not write (a column some other writer added).
    pub fn from_json(value: &Value) -> Option<IcebergField> {
        Some(IcebergField {
            id: value.get("id")?.as_i64()? as i32,
            name: value.get("name")?.as_str()?.to_string(),
            ty: IcebergType::from_json(value.get("type")?)?,
            required: value
                .get("required")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            doc: value.get("doc").and_then(Value::as_str).map(str::to_string),
        })
    }
}

/// The field `id` as Parquet (and Iceberg) know it.
fn with_id(field: Field, id: i32) -> Field {
    let mut metadata = field.metadata().clone();
    metadata.insert(PARQUET_FIELD_ID_META_KEY.to_string(), id.to_string());
    field.with_metadata(metadata)
}

/// The `doc` of a column: its source type and, when narrowed, how its
/// value is encoded.
fn doc_of(field: &Field, how: Option<&str>) -> Option<String> {
    let source = field.metadata().get(SOURCE_TYPE_KEY);
    match (source, how) {
        (Some(source), Some(how)) => Some(format!("source type {source}; stored as {how}")),
        (Some(source), None) => Some(format!("source type {source}")),
        (None, Some(how)) => Some(format!("stored as {how}")),
        (None, None) => None,
    }
}

/// The Iceberg columns of a core Arrow schema, with the ids of `known`
/// columns (by name) kept and new ones numbered after `last_id` (which
/// grows). Errors name a type the mapping does not cover.
pub fn iceberg_fields(
    schema: &Schema,
    known: &HashMap<String, IcebergField>,
    last_id: &mut i32,
) -> Result<Vec<IcebergField>, ArrowError> {
    let mut out = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let (narrowed, how) = narrow_type(field);
        let mut next = || {
            *last_id += 1;
            *last_id
        };
        let id = match known.get(field.name()) {
            Some(existing) => existing.id,
            None => next(),
        };
        let mut ty = iceberg_type(&narrowed, &mut next).ok_or_else(|| {
            ArrowError::SchemaError(format!(
                "column {} has type {} that tidewater cannot store in Iceberg",
                field.name(),
                field.data_type()
            ))
        })?;
        // A list keeps its element's id.
        if let (
            Some(IcebergField {
                ty: IcebergType::List { element_id, .. },
                ..
            }),
            IcebergType::List {
                element_id: new_id, ..
            },
        ) = (known.get(field.name()), &mut ty)
        {
            *new_id = *element_id;
        }
        out.push(IcebergField {
            id,
            name: field.name().clone(),
            ty,
            required: !field.is_nullable(),
            doc: doc_of(field, how),
        });
    }
    Ok(out)
}

/// The Arrow schema files are written with: each field as `fields` types
/// it, carrying its id (and its list element's) and the core field's
/// metadata.
pub fn file_schema(core: &Schema, fields: &[IcebergField]) -> SchemaRef {
    let by_name: HashMap<&str, &IcebergField> =
        fields.iter().map(|f| (f.name.as_str(), f)).collect();
    let out: Vec<Field> = core
        .fields()
        .iter()
        .map(|field| {
            let iceberg = by_name[field.name().as_str()];
            let (_, how) = narrow_type(field);
            let mut metadata = field.metadata().clone();
            metadata.remove("ARROW:extension:name");
            if let Some(how) = how {
                metadata.insert(LAKE_ENCODING_KEY.into(), how.into());
            }
            with_id(
                Field::new(field.name(), iceberg.ty.arrow(), !iceberg.required)
                    .with_metadata(metadata),
                iceberg.id,
            )
        })
        .collect();
    Arc::new(Schema::new(out))
}

/// A core batch in the file schema's types.
pub fn narrow_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(array, field)| narrow_array(array, field.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// The schema JSON of table metadata.
pub fn schema_json(schema_id: i64, fields: &[IcebergField]) -> Value {
    json!({
        "type": "struct",
        "schema-id": schema_id,
        "identifier-field-ids": [],
        "fields": fields.iter().map(IcebergField::to_json).collect::<Vec<_>>(),
    })
}

/// The highest id in `fields`, elements included.
pub fn highest_id(fields: &[IcebergField]) -> i32 {
    fn of(ty: &IcebergType) -> i32 {
        match ty {
            IcebergType::List {
                element_id,
                element,
                ..
            } => (*element_id).max(of(element)),
            _ => 0,
        }
    }
    fields
        .iter()
        .map(|f| f.id.max(of(&f.ty)))
        .max()
        .unwrap_or(0)
}

/// Arrow field helper for tests and readers: the field's id, if any.
pub fn field_id(field: &FieldRef) -> Option<i32> {
    field
        .metadata()
        .get(PARQUET_FIELD_ID_META_KEY)
        .and_then(|id| id.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(name: &str, ty: DataType, source: &str) -> Field {
        Field::new(name, ty, true).with_metadata(HashMap::from([(
            SOURCE_TYPE_KEY.to_string(),
            source.to_string(),
        )]))
    }

    #[test]
    fn maps_every_kind_and_numbers_lists() {
        let schema = Schema::new(vec![
            tagged("a", DataType::Int16, "smallint"),
            tagged("b", DataType::UInt64, "bigint unsigned"),
            tagged("c", DataType::Time64(TimeUnit::Microsecond), "time"),
            tagged("d", DataType::FixedSizeBinary(16), "uuid"),
            tagged(
                "e",
                DataType::List(Arc::new(Field::new("element", DataType::Int64, true))),
                "bigint[]",
            ),
            Field::new("_tw_seq", DataType::UInt64, false),
        ]);
        let mut last = 0;
        let fields = iceberg_fields(&schema, &HashMap::new(), &mut last).unwrap();
        let types: Vec<Value> = fields.iter().map(|f| f.ty.to_json()).collect();
        assert_eq!(types[0], "int");
        assert_eq!(types[1], "decimal(20, 0)");
        assert_eq!(types[2], "long");
        assert_eq!(types[3], "uuid");
        assert_eq!(types[4]["element-id"], 6);
        assert_eq!(types[5], "long");
        assert_eq!(fields[5].id, 7);
        assert!(fields[5].required);
        assert_eq!(last, 7);
        assert_eq!(highest_id(&fields), 7);
        assert_eq!(
            fields[1].doc.as_deref(),
            Some("source type bigint unsigned; stored as decimal(20,0) of an unsigned 64-bit integer")
        );
        // Round trip through metadata JSON.
        for f in &fields {
            assert_eq!(IcebergField::from_json(&f.to_json()).as_ref(), Some(f));
        }
        // Known columns keep their ids, lists their element's.
        let known: HashMap<String, IcebergField> =
            fields.iter().map(|f| (f.name.clone(), f.clone())).collect();
        let mut grown = schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect::<Vec<_>>();
        grown.insert(0, tagged("z", DataType::Utf8, "text"));
        let again = iceberg_fields(&Schema::new(grown), &known, &mut last).unwrap();
        assert_eq!(again[0].id, 8);
        assert_eq!(&again[1..], &fields[..]);
        let file = file_schema(&schema, &fields);
        let DataType::List(element) = file.field(4).data_type() else {
            panic!("a list")
        };
        assert_eq!(field_id(element), Some(6));
    }

    #[test]
    fn promotions_are_the_ones_v2_allows() {
        use IcebergType::*;
        assert!(Int.holds(&Long));
        assert!(Float.holds(&Double));
        assert!(Decimal(10, 2).holds(&Decimal(12, 2)));
        assert!(!Decimal(10, 2).holds(&Decimal(12, 4)));
        assert!(!Long.holds(&Int));
        assert!(!Int.holds(&String));
        assert!(Int.promotes_to(&Long) && !Int.promotes_to(&Int));
    }
}
