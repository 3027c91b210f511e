//! The type mapping golden file: Postgres type → tidewater column type → Arrow
//! type → Delta column, and the Iceberg column of the same Arrow type. Regenerate with `TIDEWATER_BLESS=1 cargo test golden`.

use deltalake::arrow::datatypes::Field;
use tidewater_core::{arrow_type, Column};
use tidewater_lake::narrow::{narrow_field, LAKE_ENCODING_KEY};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/type-mapping.json");

/// (name, oid, typmod[, declared array dimensions]) of every Postgres type
/// the first set covers, plus examples of the text fallback.
const TYPES: &[(&str, u32, i32)] = &[
    ("smallint", 21, -1),
    ("integer", 23, -1),
    ("bigint", 20, -1),
    ("numeric(12,2)", 1700, (12 << 16 | 2) + 4),
    ("numeric(38,0)", 1700, (38 << 16) + 4),
    ("numeric(50,5)", 1700, (50 << 16 | 5) + 4),
    ("numeric", 1700, -1),
    ("real", 700, -1),
    ("double precision", 701, -1),
    ("boolean", 16, -1),
    ("text", 25, -1),
    ("character varying(20)", 1043, 24),
    ("character(5)", 1042, 9),
    ("bytea", 17, -1),
    ("date", 1082, -1),
    ("timestamp without time zone", 1114, -1),
    ("timestamp with time zone", 1184, -1),
    ("time without time zone", 1083, -1),
    ("uuid", 2950, -1),
    ("json", 114, -1),
    ("jsonb", 3802, -1),
    ("integer[]", 1007, -1),
    ("text[]", 1009, -1),
    ("numeric(8,3)[]", 1231, (8 << 16 | 3) + 4),
    ("timestamp with time zone[]", 1185, -1),
    ("uuid[]", 2951, -1),
    ("interval (text fallback)", 1186, -1),
    ("inet (text fallback)", 869, -1),
    ("money (text fallback)", 790, -1),
    ("time with time zone (text fallback)", 1266, -1),
    ("macaddr (text fallback)", 829, -1),
    ("bit(3) (text fallback)", 1560, 3),
    ("xml (text fallback)", 142, -1),
    ("tsvector (text fallback)", 3614, -1),
    ("int4range (text fallback)", 3904, -1),
    ("point (text fallback)", 600, -1),
    ("inet[] (text fallback)", 1041, -1),
];

/// Array columns declared with more than one dimension.
const MULTI_DIM: &[(&str, u32, i32, i32)] =
    &[("integer[][]", 1007, -1, 2), ("text[][][]", 1009, -1, 3)];

fn mapping() -> String {
    let mut out = String::from("[\n");
    let all: Vec<(&str, u32, i32, i32)> = TYPES
        .iter()
        .map(|&(name, oid, typmod)| (name, oid, typmod, 1))
        .chain(MULTI_DIM.iter().copied())
        .collect();
    for (i, (name, oid, typmod, dims)) in all.iter().enumerate() {
        let ty = tidewater_postgres::column_type_dims(*oid, *typmod, *dims);
        let column = Column {
            name: "c".into(),
            ty: ty.clone(),
            source_type: name.to_string(),
            key: false,
        };
        let core = tidewater_core::arrow_field(&column);
        let lake: Field = narrow_field(&core);
        let kernel: deltalake::kernel::StructType = {
            use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
            (&deltalake::arrow::datatypes::Schema::new(vec![lake.clone()]))
                .try_into_kernel()
                .expect("delta type")
        };
        let delta = kernel
            .fields()
            .next()
            .expect("one field")
            .data_type()
            .to_string();
        let (iceberg, iceberg_encoding) =
            tidewater_lake::iceberg::schema::iceberg_column(&core).expect("an Iceberg type");
        out.push_str(&format!(
            "  {{\"postgres\": {:?}, \"arrow\": {:?}, \"delta\": {:?}, \"lake_encoding\": {}, \"iceberg\": {:?}, \"iceberg_encoding\": {}, \"binary\": {}}}{}\n",
            name,
            arrow_type(&ty).to_string(),
            delta,
            lake.metadata()
                .get(LAKE_ENCODING_KEY)
                .map_or("null".to_string(), |e| format!("{e:?}")),
            iceberg.to_string(),
            iceberg_encoding.map_or("null".to_string(), |e| format!("{e:?}")),
            tidewater_postgres::binary::supported(*oid),
            if i + 1 < all.len() { "," } else { "" }
        ));
    }
    out.push_str("]\n");
    out
}

#[test]
fn type_mapping_matches_the_golden_file() {
    let current = mapping();
    if std::env::var_os("TIDEWATER_BLESS").is_some() {
        std::fs::write(GOLDEN, &current).unwrap();
    }
    let golden = std::fs::read_to_string(GOLDEN).unwrap_or_default();
    assert_eq!(
        golden, current,
        "schemas/type-mapping.json differs from the code: review, then TIDEWATER_BLESS=1 cargo test golden"
    );
}
