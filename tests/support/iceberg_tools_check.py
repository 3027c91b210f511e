"""Self-check of the Iceberg test tools (read_iceberg.py, iceberg_append.py,
iceberg_rest.py) against tables pyiceberg writes itself, so a change of
pyiceberg/DuckDB versions or of the tools shows up here before it shows up as
a puzzling Rust test failure. Run with the readers' Python (scripts/setup):

    ~/.cache/tidewater/readers/bin/python3 tests/support/iceberg_tools_check.py

Everything happens in a temporary directory on a SQLite catalog; the REST
server and a moto S3 server (for a warehouse on S3) are started on free
loopback ports and stopped at the end. Prints one
line per check and `N passed, N failed`; exit 1 if any failed.
"""
import datetime as dt
import decimal
import glob
import json
import math
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else ': ' + str(detail)[:500]}", flush=True)


def run(script, *args):
    p = subprocess.run([PY, os.path.join(HERE, script), *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def canonical(value):
    """Comparable form of a row value across the two readers."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def make_tables(catalog):
    import pyarrow as pa
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import DayTransform
    from pyiceberg import types as t

    catalog.create_namespace("p_public")
    kinds = [
        ("i", t.IntegerType()), ("l", t.LongType()), ("f", t.FloatType()), ("d", t.DoubleType()),
        ("u64", t.DecimalType(20, 0)), ("dec", t.DecimalType(10, 2)), ("s", t.StringType()),
        ("b", t.BinaryType()), ("dt", t.DateType()), ("t", t.TimeType()), ("ts", t.TimestampType()),
        ("tstz", t.TimestamptzType()), ("u", t.UUIDType()),
    ]
    fields = [t.NestedField(1, "id", t.LongType(), required=True, doc="source bigint")]
    for n, (name, typ) in enumerate(kinds, start=2):
        fields.append(t.NestedField(n, name, typ, required=False))
    fields.append(t.NestedField(15, "ls", t.ListType(16, t.StringType(), element_required=False)))
    fields.append(t.NestedField(17, "ll", t.ListType(18, t.LongType(), element_required=False)))
    schema = Schema(*fields, identifier_field_ids=[1])
    utc = dt.timezone.utc
    rows = [
        dict(id=1, i=-2**31, l=-2**63, f=1.5, d=-1e300, u64=decimal.Decimal(2**64 - 1),
             dec=decimal.Decimal("-12345678.90"), s="héllo", b=b"\x00\xff", dt=dt.date(1, 1, 1),
             t=dt.time(0, 0), ts=dt.datetime(1970, 1, 1), tstz=dt.datetime(2026, 12, 1, 23, 59, 59, 999999, tzinfo=utc),
             u=uuid.UUID("12345678-1234-5678-9abc-def012345678").bytes, ls=["a", None, ""], ll=[1, None, -2**63]),
        dict(id=2, i=2**31 - 1, l=2**63 - 1, f=float("nan"), d=float("inf"), u64=decimal.Decimal(0),
             dec=decimal.Decimal("0.01"), s="", b=b"", dt=dt.date(9999, 12, 31), t=dt.time(23, 59, 59, 999999),
             ts=dt.datetime(2026, 6, 1, 12, 0, 0, 1), tstz=dt.datetime(2026, 12, 2, tzinfo=utc),
             u=bytes(16), ls=[], ll=[]),
        dict(id=3),
    ]
    day = PartitionSpec(PartitionField(source_id=13, field_id=1000, transform=DayTransform(), name="_tw_commit_date"))
    for name, spec in (("types", PartitionSpec()), ("types_part", day)):
        table = catalog.create_table(f"p_public.{name}", schema=schema, partition_spec=spec,
                                     properties={"format-version": "2", "tidewater.x": "y"})
        arrow = table.schema().as_arrow()
        table.append(pa.Table.from_pylist(rows[:2], schema=arrow),
                     snapshot_properties={"tidewater.seq": str(2**64 - 1), "tidewater.ord": "2"})
        table = catalog.load_table(f"p_public.{name}")
        table.append(pa.Table.from_pylist(rows[2:], schema=arrow), snapshot_properties={"tidewater.seq": "2"})


def check_readers(dirname, cat_args):
    import pyarrow.parquet as pq

    for table in ("types", "types_part"):
        outs = {}
        for reader in ("pyiceberg", "duckdb"):
            out = os.path.join(dirname, f"{table}-{reader}.parquet")
            rc, stdout, stderr = run("read_iceberg.py", *cat_args, "--table", f"p_public.{table}",
                                     "--reader", reader, "--out", out)
            check(f"read_iceberg {table} --reader {reader} exits 0", rc == 0, stderr)
            if rc != 0:
                continue
            info = json.loads(stdout)
            check(f"{table} {reader}: rows 3", info["rows"] == 3, info["rows"])
            check(f"{table} {reader}: snapshot marks in order",
                  [s["summary"].get("tidewater.seq") for s in info["snapshots"]] == [str(2**64 - 1), "2"]
                  and info["snapshots"][1]["parent_id"] == info["snapshots"][0]["snapshot_id"]
                  and info["snapshots"][0]["operation"] == "append", info["snapshots"])
            types = {f["name"]: f["type"] for f in info["schema"]}
            check(f"{table} {reader}: schema types",
                  types["u64"] == "decimal(20, 0)" and types["u"] == "uuid" and types["ls"] == "list<string>"
                  and types["t"] == "time" and info["schema"][0]["required"] and info["schema"][0]["doc"] == "source bigint",
                  types)
            check(f"{table} {reader}: properties", info["properties"].get("tidewater.x") == "y", info["properties"])
            want_files = 3 if table == "types_part" else 2
            check(f"{table} {reader}: live files {want_files}", info["files"] == want_files, info["files"])
            want_spec = [{"source_id": 13, "field_id": 1000, "name": "_tw_commit_date", "transform": "day"}] \
                if table == "types_part" else []
            check(f"{table} {reader}: partition spec", info["partition_spec"] == want_spec, info["partition_spec"])
            rows = pq.read_table(out)
            outs[reader] = rows
            check(f"{table} {reader}: parquet types",
                  str(rows.schema.field("t").type) == "time64[us]"
                  and str(rows.schema.field("tstz").type) == "timestamp[us, tz=UTC]"
                  and str(rows.schema.field("u64").type) == "decimal128(20, 0)"
                  and str(rows.schema.field("s").type) == "string", rows.schema)
        if len(outs) == 2:
            a, b = ([{k: canonical(v) for k, v in r.items()} for r in sorted(outs[x].to_pylist(), key=lambda r: r["id"])]
                    for x in ("pyiceberg", "duckdb"))
            check(f"{table}: both readers give the same rows", a == b, (a, b))


def check_append(dirname, cat_args):
    rows = json.dumps([{"id": 10, "s": "x", "u64": "18446744073709551615", "dec": "1.25",
                        "u": "12345678-1234-5678-9abc-def012345678", "tstz": "2026-12-03T01:00:00",
                        "dt": "2026-01-02", "t": "12:00:00.5", "ls": ["a", None], "ll": [1, 2]}, {"id": 11}])
    rc, stdout, stderr = run("iceberg_append.py", *cat_args, "--table", "p_public.types_part", "--rows", rows,
                             "--snapshot-property", "foreign=yes")
    check("iceberg_append exits 0 and prints a snapshot id", rc == 0 and stdout.strip().isdigit(), stderr)
    rc2, _, stderr2 = run("iceberg_append.py", *cat_args, "--table", "p_public.types_part", "--rows", '[{"i": 1}]')
    check("iceberg_append refuses a null in a required column", rc2 != 0 and "id" in stderr2, stderr2)
    out = os.path.join(dirname, "appended.parquet")
    rc3, stdout3, stderr3 = run("read_iceberg.py", *cat_args, "--table", "p_public.types_part",
                                "--reader", "duckdb", "--out", out)
    if rc == 0 and rc3 == 0:
        info = json.loads(stdout3)
        last = info["snapshots"][-1]
        check("appended snapshot is current, foreign summary key kept",
              str(last["snapshot_id"]) == stdout.strip() and last["summary"].get("foreign") == "yes"
              and info["rows"] == 5, last)
    else:
        check("read after append", False, stderr3)


def http(base, method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def duckdb_with(extensions):
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for ext in extensions:
        pkg = __import__(f"duckdb_extension_{ext}")
        path = glob.glob(os.path.join(os.path.dirname(pkg.__file__), "extensions", "*", f"{ext}.duckdb_extension"))[0]
        con.execute(f"LOAD '{path}'")
    con.execute("SET TimeZone = 'UTC'")
    return con


def check_rest(dirname):
    import pyarrow as pa
    from pyiceberg.catalog.rest import RestCatalog
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import DayTransform
    from pyiceberg.types import LongType, NestedField, StringType, TimestamptzType

    uri, wh = f"sqlite:///{dirname}/rest.db", f"file://{dirname}/rest-wh"
    log = open(os.path.join(dirname, "rest.log"), "w")
    server = subprocess.Popen([PY, os.path.join(HERE, "iceberg_rest.py"), "--port", "0", "--catalog-uri", uri,
                               "--warehouse", wh, "--catalog-name", "tw"], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        first = server.stdout.readline().split()
        check("iceberg_rest prints `listening on PORT`", first[:2] == ["listening", "on"], first)
        base = f"http://127.0.0.1:{first[-1]}"
        status, config = http(base, "GET", "/v1/config")
        check("GET /v1/config has endpoints", status == 200 and "POST /v1/{prefix}/namespaces/{namespace}/tables/{table}"
              in config.get("endpoints", []), config)
        rc = RestCatalog("r", uri=base)
        rc.create_namespace("p_public")
        rc.create_namespace(("a", "b"))
        check("nested namespaces", rc.list_namespaces("a") == [("a", "b")], rc.list_namespaces("a"))
        schema = Schema(NestedField(1, "id", LongType(), required=True), NestedField(2, "v", StringType()),
                        NestedField(3, "ts", TimestamptzType()))
        spec = PartitionSpec(PartitionField(3, 1000, DayTransform(), "_tw_commit_date"))
        table = rc.create_table("p_public.t", schema, partition_spec=spec, properties={"format-version": "2"})
        arrow = schema.as_arrow()
        utc = dt.timezone.utc
        table.append(pa.Table.from_pylist([{"id": 1, "v": "a", "ts": dt.datetime(2026, 12, 1, tzinfo=utc)}], schema=arrow),
                     snapshot_properties={"tidewater.seq": "7"})
        stale = rc.load_table("p_public.t")
        table.append(pa.Table.from_pylist([{"id": 2, "v": "b", "ts": None}], schema=arrow))
        status, body = http(base, "POST", "/v1/namespaces/p_public/tables/t", {
            "requirements": [{"type": "assert-ref-snapshot-id", "ref": "main",
                              "snapshot-id": stale.metadata.current_snapshot_id}],
            "updates": [{"action": "set-properties", "updates": {"x": "y"}}]})
        check("stale commit: 409 CommitFailedException",
              status == 409 and body["error"]["type"] == "CommitFailedException", (status, body))
        status, body = http(base, "GET", "/v1/namespaces/p_public/tables/nope")
        check("missing table: 404 NoSuchTableException",
              status == 404 and body["error"]["type"] == "NoSuchTableException", (status, body))
        status, body = http(base, "GET", "/v1/namespaces/nope")
        check("missing namespace: 404 NoSuchNamespaceException",
              status == 404 and body["error"]["type"] == "NoSuchNamespaceException", (status, body))
        status, body = http(base, "POST", "/v1/namespaces", {"namespace": ["p_public"]})
        check("existing namespace: 409 AlreadyExistsException",
              status == 409 and body["error"]["type"] == "AlreadyExistsException", (status, body))
        status, body = http(base, "POST", "/v1/namespaces/p_public/tables/t",
                            {"requirements": [], "updates": [{"action": "no-such-update"}]})
        check("unknown update: 400", status == 400, (status, body))
        sql = SqlCatalog("tw", uri=uri, warehouse=wh)
        check("the SQL catalog sees the REST table",
              sql.load_table("p_public.t").metadata_location == rc.load_table("p_public.t").metadata_location)

        def snapshots():
            return len(rc.load_table("p_public.t").snapshots())

        for kind, applied, error in (("reject", False, "ServiceUnavailableError"),
                                     ("fail", True, "CommitStateUnknownException"),
                                     ("drop", True, "ConnectionError")):
            http(base, "POST", "/_test/faults", {f"{kind}_commits": 1})
            before = snapshots()
            try:
                rc.load_table("p_public.t").append(pa.Table.from_pylist([{"id": 9, "v": kind, "ts": None}], schema=arrow))
                got = "no error"
            except Exception as e:  # noqa: BLE001
                got = type(e).__name__
            check(f"--{kind}-commits: {error}, {'applied' if applied else 'not applied'}",
                  got == error and snapshots() == before + (1 if applied else 0), (got, before, snapshots()))
        status, faults = http(base, "GET", "/_test/faults")
        check("fault counters", faults["commits_rejected"] == 1 and faults["commits_failed"] == 1
              and faults["commits_dropped"] == 1, faults)

        con = duckdb_with(("httpfs", "avro", "iceberg"))
        con.execute(f"ATTACH '' AS rc (TYPE iceberg, ENDPOINT '{base}', AUTHORIZATION_TYPE 'none')")
        got = con.execute("SELECT id, v FROM rc.p_public.t ORDER BY id, v").fetchall()
        check("DuckDB ATTACH reads the table", got == [(1, "a"), (2, "b"), (9, "drop"), (9, "fail")], got)
        con.execute("INSERT INTO rc.p_public.t VALUES (100, 'duckdb', TIMESTAMPTZ '2026-12-05 00:00:00+00')")
        con.execute("CREATE TABLE rc.p_public.made_by_duckdb (id BIGINT, u UUID)")
        con.execute("INSERT INTO rc.p_public.made_by_duckdb VALUES (1, '12345678-1234-5678-9abc-def012345678')")
        ids = sorted(r["id"] for r in rc.load_table("p_public.t").scan().to_arrow().to_pylist())
        made = rc.load_table("p_public.made_by_duckdb").scan().to_arrow().to_pylist()
        check("DuckDB INSERT and CREATE TABLE (stage-create) through the server",
              ids == [1, 2, 9, 9, 100] and made == [{"id": 1, "u": uuid.UUID("12345678-1234-5678-9abc-def012345678")}],
              (ids, made))
        rc.rename_table("p_public.made_by_duckdb", "a.b.moved")
        rc.drop_table("a.b.moved")
        rc.drop_namespace(("a", "b"))
        # ("a",) existed only as the parent of ("a", "b") (the SQL catalog keeps no separate row for it).
        check("rename, drop table, drop namespace", rc.list_namespaces() == [("p_public",)], rc.list_namespaces())
    finally:
        server.terminate()
        server.wait()


def check_s3(dirname):
    """The tools on a warehouse in moto's S3 (the server the S3 tests use,
    started with the system python3 as tests/support/s3.rs does)."""
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    moto = subprocess.Popen(["python3", "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(f"{endpoint}/lake", method="PUT"), timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or moto.poll() is not None:
                    check("moto starts (python3 -m moto.server; scripts/setup)", False, "not reachable")
                    return
                # Polling interval of the wait for moto's port (once).
                time.sleep(0.1)
        props = {"s3.endpoint": endpoint, "s3.access-key-id": "tidewater-test",
                 "s3.secret-access-key": "tidewater-test-secret", "s3.region": "us-east-1"}
        prop_args = sum((["--property", f"{k}={v}"] for k, v in props.items()), [])
        uri, wh = f"sqlite:///{dirname}/s3.db", "s3://lake/wh"
        import iceberg_s3_workaround
        import pyarrow as pa
        from pyiceberg.catalog.sql import SqlCatalog
        from pyiceberg.schema import Schema
        from pyiceberg.types import LongType, NestedField, StringType

        iceberg_s3_workaround.install()
        try:
            cat = SqlCatalog("tw", uri=uri, warehouse=wh, **props)
            cat.create_namespace("ns")
            table = cat.create_table("ns.t", Schema(NestedField(1, "id", LongType()), NestedField(2, "v", StringType())))
            table.append(pa.table({"id": [1, 2], "v": ["a", "b"]}, schema=table.schema().as_arrow()))
        except Exception as e:  # noqa: BLE001
            check("S3: pyiceberg writes a table to moto", False, f"{type(e).__name__}: {e}")
            return
        check("S3: pyiceberg writes a table to moto", True)
        cat_args = ["--catalog-uri", uri, "--warehouse", wh, "--catalog-name", "tw"] + prop_args
        rc, _, stderr = run("iceberg_append.py", *cat_args, "--table", "ns.t", "--rows", '[{"id": 3}]')
        check("S3: iceberg_append", rc == 0, stderr)
        for reader in ("pyiceberg", "duckdb"):
            rc, stdout, stderr = run("read_iceberg.py", *cat_args, "--table", "ns.t", "--reader", reader,
                                     "--out", os.path.join(dirname, f"s3-{reader}.parquet"))
            check(f"S3: read_iceberg --reader {reader}", rc == 0 and json.loads(stdout)["rows"] == 3, stderr or stdout)
    finally:
        moto.terminate()
        moto.wait()


def main():
    from pyiceberg.catalog.sql import SqlCatalog

    with tempfile.TemporaryDirectory(prefix="tidewater-iceberg-tools-") as dirname:
        uri, wh = f"sqlite:///{dirname}/cat.db", f"file://{dirname}/wh"
        make_tables(SqlCatalog("tw", uri=uri, warehouse=wh))
        cat_args = ["--catalog-uri", uri, "--warehouse", wh, "--catalog-name", "tw"]
        check_readers(dirname, cat_args)
        check_append(dirname, cat_args)
        check_rest(dirname)
        check_s3(dirname)
    failed = results.count(False)
    print(f"{len(results) - failed} passed, {failed} failed", flush=True)
    sys.stdout.flush()
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    main()
