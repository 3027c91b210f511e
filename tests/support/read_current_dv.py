"""Reads a current-state table (which may hold deletion vectors) with two
readers that are not ours: DuckDB's delta extension (`delta_scan`) and
Polars (`read_delta`). Prints {"duckdb": [[id, v], ...], "polars": [...]},
rows sorted by id, for the Rust tests.

Needs the readers' Python (scripts/setup: duckdb 1.5.5 with the
duckdb-extension-delta wheel, polars); the extension is loaded from its
wheel, never downloaded."""
import glob
import json
import os
import sys

import duckdb
import duckdb_extension_delta
import polars as pl

path = sys.argv[1]
extension = glob.glob(
    os.path.join(
        os.path.dirname(duckdb_extension_delta.__file__),
        "extensions",
        "*",
        "delta.duckdb_extension",
    )
)[0]
con = duckdb.connect(
    config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
)
con.execute(f"LOAD '{extension}'")
with_duckdb = con.execute(
    f"SELECT id, v FROM delta_scan('{path}') ORDER BY id"
).fetchall()
with_polars = pl.read_delta(path).select("id", "v").sort("id").rows()
print(
    json.dumps(
        {
            "duckdb": [list(r) for r in with_duckdb],
            "polars": [list(r) for r in with_polars],
        }
    ),
    flush=True,
)
# The packages' threads can abort a normal interpreter exit.
os._exit(0)
