"""Reads one tidewater lake table with the Python deltalake package and
queries it with DuckDB; prints a JSON summary for the Rust tests."""
import json
import sys

import duckdb
from deltalake import DeltaTable

path = sys.argv[1]
lake = DeltaTable(path).to_pyarrow_table()
ops = dict(duckdb.sql("SELECT _tw_op, count(*) FROM lake GROUP BY 1").fetchall())
source_types = {
    field.name: (field.metadata or {}).get(b"tidewater.source_type", b"").decode()
    for field in lake.schema
}
print(json.dumps({"rows": lake.num_rows, "ops": ops, "source_types": source_types}))
