"""Appends rows to an Iceberg table with pyiceberg, as a foreign writer would
(the tests check that tidewater continues on commits it did not make).

    python iceberg_append.py --catalog-uri URI --warehouse WH --catalog-name NAME \\
        --table NS.TABLE --rows '[{"id": 1, "v": "a"}, ...]' \\
        [--snapshot-property KEY=VALUE ...] [--property KEY=VALUE ...]

URI/WH/NAME as for read_iceberg.py (`--property`: extra catalog properties,
e.g. `s3.endpoint=...`). `--rows` is a JSON list of objects column -> value;
columns not given are null (a required column must be given). The Arrow table
is built from the table's current Iceberg schema (pyiceberg's
`schema_to_pyarrow`), so values take the column's type: JSON numbers go to
int/long/float/double/decimal/time(µs)/timestamp(µs) columns as they are,
strings to string columns as they are and, for other columns, are parsed:
decimal ("12.34"), uuid ("1234...-..."), date/time/timestamp/timestamptz (ISO
8601; a timestamptz without an offset is UTC), binary (the string's UTF-8
bytes). `table.append` makes one `append` snapshot (with the given summary
properties); stdout gets its snapshot id. Errors: exit 1, message on stderr.
"""
import argparse
import datetime
import decimal
import json
import os
import sys
import uuid


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog-uri", required=True)
    p.add_argument("--warehouse", required=True)
    p.add_argument("--catalog-name", required=True)
    p.add_argument("--table", required=True, help="NS.TABLE")
    p.add_argument("--rows", required=True, help="JSON list of {column: value}")
    p.add_argument("--snapshot-property", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--property", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args()


def key_values(option, items):
    out = {}
    for kv in items:
        if "=" not in kv:
            raise ValueError(f"{option} {kv!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        out[k] = v
    return out


def convert(column, iceberg_type, value):
    """A JSON value as the Python value pyarrow takes for the column's type."""
    from pyiceberg import types as t

    if value is None or not isinstance(value, str):
        if isinstance(value, (dict, list)) and not isinstance(iceberg_type, t.ListType):
            raise ValueError(f"column {column}: a {type(value).__name__} for {iceberg_type}")
        if isinstance(iceberg_type, t.ListType) and isinstance(value, list):
            return [convert(column, iceberg_type.element_type, v) for v in value]
        return value
    if isinstance(iceberg_type, t.StringType):
        return value
    if isinstance(iceberg_type, t.DecimalType):
        return decimal.Decimal(value)
    if isinstance(iceberg_type, t.UUIDType):
        return uuid.UUID(value).bytes
    if isinstance(iceberg_type, t.DateType):
        return datetime.date.fromisoformat(value)
    if isinstance(iceberg_type, t.TimeType):
        return datetime.time.fromisoformat(value)
    if isinstance(iceberg_type, t.TimestamptzType):
        ts = datetime.datetime.fromisoformat(value)
        return ts if ts.tzinfo else ts.replace(tzinfo=datetime.timezone.utc)
    if isinstance(iceberg_type, t.TimestampType):
        return datetime.datetime.fromisoformat(value)
    if isinstance(iceberg_type, (t.BinaryType, t.FixedType)):
        return value.encode()
    raise ValueError(f"column {column}: a string for {iceberg_type}")


def main():
    args = parse_args()
    import iceberg_s3_workaround
    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    iceberg_s3_workaround.install()

    rows = json.loads(args.rows)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("--rows: expected a JSON list of objects")
    catalog = SqlCatalog(
        args.catalog_name,
        uri=args.catalog_uri,
        warehouse=args.warehouse,
        **key_values("--property", args.property),
    )
    table = catalog.load_table(args.table)
    schema = table.schema()
    types = {f.name: f.field_type for f in schema.fields}
    converted = []
    for row in rows:
        unknown = sorted(set(row) - set(types))
        if unknown:
            raise ValueError(f"--rows: {args.table} has no column {', '.join(unknown)}")
        converted.append(
            {name: convert(name, types[name], row.get(name)) for name in types}
        )
    arrow_schema = schema_to_pyarrow(schema, include_field_ids=False)
    data = pa.Table.from_pylist(converted, schema=arrow_schema)
    table.append(
        data, snapshot_properties=key_values("--snapshot-property", args.snapshot_property)
    )
    print(table.current_snapshot().snapshot_id, flush=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - every failure is the test's to report
        print(f"iceberg_append: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)
