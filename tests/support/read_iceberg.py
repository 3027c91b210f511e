"""Reads one Iceberg table with a reader that is not ours and writes its rows
to a Parquet file, for the Rust tests to compare with the source.

    python read_iceberg.py --catalog-uri URI --warehouse WH --catalog-name NAME \\
        --table NS.TABLE --reader pyiceberg|duckdb --out FILE.parquet \\
        [--property KEY=VALUE ...]

URI is an SQLAlchemy URI as pyiceberg's SqlCatalog takes it
(`sqlite:////abs/cat.db`, `postgresql+psycopg2://user@127.0.0.1:5432/db`);
NAME is the catalog name the table was registered under (the SQL catalog's
`catalog_name` column). `--property` adds catalog properties (e.g.
`s3.endpoint=http://127.0.0.1:9000`, `s3.access-key-id=...`,
`s3.secret-access-key=...`, `s3.region=...`) for tables on S3; with
`--reader duckdb` the `s3.*` ones also make DuckDB's S3 secret.

The table is always loaded with pyiceberg's SqlCatalog. Then:
- `--reader pyiceberg`: `table.scan().to_arrow()`.
- `--reader duckdb`: DuckDB 1.5.5 with the iceberg + avro extensions loaded
  from their wheels (never downloaded), TimeZone UTC, reading
  `iceberg_scan('<the table's current metadata_location>')` into Arrow.
The rows go to FILE.parquet with pyarrow, types as the reader returned them
(see the reader notes below). stdout gets one JSON object:

    {"rows": N, "metadata_location": "...", "location": "...",
     "format_version": 2, "table_uuid": "...", "current_snapshot_id": ID|null,
     "snapshots": [{"snapshot_id", "parent_id", "sequence_number",
                    "timestamp_ms", "schema_id", "operation",
                    "summary": {every key of the summary, "operation" too}}],
     "schema_id": ID,
     "schema": [{"id", "name", "type", "required", "doc"}],
     "identifier_field_ids": [...],
     "properties": {...},
     "partition_spec": [{"source_id", "field_id", "name", "transform"}],
     "files": live data files, "delete_files": live delete files}

`snapshots` are in commit order (sequence number, then time); `schema` lists
the current schema's top-level fields (`type` as pyiceberg prints it, e.g.
`decimal(20, 0)`, `list<string>`, `timestamptz`; a list field also has
`element_id` and `element_required`). Errors: exit 1, the message on stderr.

Reader notes (pyiceberg 0.12.0, DuckDB 1.5.5; checked on tables pyiceberg
wrote with int, long, float, double, decimal(20,0), decimal(10,2), string,
binary, date, time, timestamp, timestamptz, uuid, list<string>, list<long>,
day-partitioned or not, promoted int->long/float->double/decimal(10,2)->(20,2),
copy-on-write and position deletes), for canonicalising the Parquet:
- uuid: pyiceberg gives the `arrow.uuid` extension (fixed_size_binary(16)),
  DuckDB gives strings (`xxxxxxxx-xxxx-...`, lower case).
- time: both give time64[us]; date date32; decimals decimal128(p, s) as
  declared (promoted columns in the promoted type); NaN/inf kept.
- required columns: pyiceberg's are non-nullable Arrow fields and carry the
  Iceberg doc as field metadata `doc`; DuckDB's are all nullable, no metadata.
- equality deletes: pyiceberg refuses the table ("does not yet support
  equality deletes", exit 1); DuckDB applies them.
- an empty table (no snapshot): both give 0 rows with the schema.
- string/binary/list: pyiceberg gives large_string/large_binary/large_list,
  DuckDB string/binary/list; this script casts the large ones to the plain
  ones, so the files differ only where the readers do.
- timestamptz: both timestamp[us, tz=UTC] (DuckDB with TimeZone UTC).
"""
import argparse
import glob
import json
import os
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog-uri", required=True)
    p.add_argument("--warehouse", required=True)
    p.add_argument("--catalog-name", required=True)
    p.add_argument("--table", required=True, help="NS.TABLE")
    p.add_argument("--reader", required=True, choices=["pyiceberg", "duckdb"])
    p.add_argument("--out", required=True, help="Parquet file to write")
    p.add_argument("--property", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args()


def catalog_properties(args):
    props = {}
    for kv in args.property:
        if "=" not in kv:
            raise ValueError(f"--property {kv!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        props[k] = v
    return props


def load_catalog(args):
    import iceberg_s3_workaround
    from pyiceberg.catalog.sql import SqlCatalog

    iceberg_s3_workaround.install()

    return SqlCatalog(
        args.catalog_name,
        uri=args.catalog_uri,
        warehouse=args.warehouse,
        **catalog_properties(args),
    )


def extension_path(name):
    """The .duckdb_extension file inside the duckdb-extension-NAME wheel."""
    import importlib

    package = importlib.import_module(f"duckdb_extension_{name}")
    found = glob.glob(
        os.path.join(
            os.path.dirname(package.__file__),
            "extensions",
            "*",
            f"{name}.duckdb_extension",
        )
    )
    if not found:
        raise RuntimeError(
            f"duckdb-extension-{name}: no {name}.duckdb_extension in its wheel "
            "(run scripts/setup)"
        )
    return found[0]


def duckdb_connect(extensions, s3=None):
    """A DuckDB connection with the given extensions loaded from their wheels
    (no autoinstall: DuckDB cannot download here) and TimeZone UTC."""
    import duckdb

    con = duckdb.connect(
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
    )
    for name in extensions:
        con.execute(f"LOAD '{extension_path(name)}'")
    con.execute("SET TimeZone = 'UTC'")
    if s3:
        # DuckDB takes no parameters in CREATE SECRET: the values are quoted.
        def quote(v):
            return "'" + v.replace("'", "''") + "'"

        parts = ["TYPE s3"]
        for key, opt in (
            ("s3.access-key-id", "KEY_ID"),
            ("s3.secret-access-key", "SECRET"),
            ("s3.session-token", "SESSION_TOKEN"),
            ("s3.region", "REGION"),
        ):
            if key in s3:
                parts.append(f"{opt} {quote(s3[key])}")
        endpoint = s3.get("s3.endpoint", "")
        if endpoint:
            host = endpoint.split("://", 1)[-1].rstrip("/")
            use_ssl = "false" if endpoint.startswith("http://") else "true"
            parts += [f"ENDPOINT {quote(host)}", "URL_STYLE 'path'", f"USE_SSL {use_ssl}"]
        try:
            con.execute("CREATE SECRET tw_s3 (" + ", ".join(parts) + ")")
        except Exception as e:
            # DuckDB's message may quote the statement, and with it the secret.
            raise RuntimeError(
                f"DuckDB refused the S3 secret made from the s3.* properties ({type(e).__name__})"
            ) from None
    return con


def read_rows(args, table):
    if args.reader == "pyiceberg":
        return table.scan().to_arrow()
    s3 = {k: v for k, v in catalog_properties(args).items() if k.startswith("s3.")}
    needs_httpfs = table.metadata_location.startswith(("s3://", "s3a://", "http"))
    con = duckdb_connect(
        (["httpfs"] if needs_httpfs else []) + ["avro", "iceberg"], s3=s3 or None
    )
    location = table.metadata_location
    if location.startswith("file://"):
        location = location[len("file://") :]
    result = con.execute("SELECT * FROM iceberg_scan(?)", [location])
    return result.to_arrow_table()


def plain_type(t):
    """The type with large_string/large_binary/large_list made plain (same
    values), so both readers' files have the same Arrow types where they
    agree; extension types (arrow.uuid) are kept."""
    import pyarrow as pa

    if isinstance(t, pa.ExtensionType):
        return t
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(plain_field(t.value_field))
    if pa.types.is_struct(t):
        return pa.struct([plain_field(f) for f in t])
    if pa.types.is_map(t):
        return pa.map_(plain_field(t.key_field), plain_field(t.item_field))
    return t


def plain_field(f):
    return f.with_type(plain_type(f.type))


def plain(rows):
    import pyarrow as pa

    schema = pa.schema([plain_field(f) for f in rows.schema], metadata=rows.schema.metadata)
    return rows if schema.equals(rows.schema) else rows.cast(schema)


def describe(table):
    from pyiceberg.manifest import DataFileContent
    from pyiceberg.types import ListType

    meta = table.metadata
    snapshots = []
    for s in sorted(meta.snapshots, key=lambda s: (s.sequence_number or 0, s.timestamp_ms)):
        summary = {}
        if s.summary is not None:
            summary["operation"] = s.summary.operation.value
            summary.update(s.summary.additional_properties)
        snapshots.append(
            {
                "snapshot_id": s.snapshot_id,
                "parent_id": s.parent_snapshot_id,
                "sequence_number": s.sequence_number,
                "timestamp_ms": s.timestamp_ms,
                "schema_id": s.schema_id,
                "operation": summary.get("operation"),
                "summary": summary,
            }
        )
    schema = table.schema()
    fields = []
    for f in schema.fields:
        entry = {
            "id": f.field_id,
            "name": f.name,
            "type": str(f.field_type),
            "required": f.required,
            "doc": f.doc,
        }
        if isinstance(f.field_type, ListType):
            entry["element_id"] = f.field_type.element_id
            entry["element_required"] = f.field_type.element_required
        fields.append(entry)
    spec = table.spec()
    partition_spec = [
        {
            "source_id": pf.source_id,
            "field_id": pf.field_id,
            "name": pf.name,
            "transform": str(pf.transform),
        }
        for pf in spec.fields
    ]
    data_files = delete_files = 0
    current = table.current_snapshot()
    if current is not None:
        for manifest in current.manifests(table.io):
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                if entry.data_file.content == DataFileContent.DATA:
                    data_files += 1
                else:
                    delete_files += 1
    return {
        "metadata_location": table.metadata_location,
        "location": meta.location,
        "format_version": meta.format_version,
        "table_uuid": str(meta.table_uuid),
        "current_snapshot_id": meta.current_snapshot_id,
        "snapshots": snapshots,
        "schema_id": schema.schema_id,
        "schema": fields,
        "identifier_field_ids": list(schema.identifier_field_ids),
        "properties": dict(meta.properties),
        "partition_spec": partition_spec,
        "files": data_files,
        "delete_files": delete_files,
    }


def main():
    args = parse_args()
    import pyarrow.parquet as pq

    catalog = load_catalog(args)
    table = catalog.load_table(args.table)
    rows = plain(read_rows(args, table))
    pq.write_table(rows, args.out)
    out = {"rows": rows.num_rows}
    out.update(describe(table))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - every failure is the test's to report
        print(f"read_iceberg: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    # DuckDB's and pyarrow's threads can abort a normal interpreter exit.
    sys.stdout.flush()
    os._exit(0)
