"""A small Iceberg REST catalog server for the tests, backed by a real SQL
catalog (pyiceberg's SqlCatalog: it writes the metadata files, validates the
commit requirements and swaps the metadata location atomically).

    python iceberg_rest.py --port P --catalog-uri URI --warehouse WH \\
        [--catalog-name NAME] [--host 127.0.0.1] [--property KEY=VALUE ...] \\
        [--table-config KEY=VALUE ...] [--fail-commits N] [--reject-commits N] \\
        [--drop-commits N]

`--port 0` picks a free port. The first stdout line is `listening on PORT`
(flushed); a request log goes to stderr (method, path, status; no bodies).
URI/WH as for pyiceberg's SqlCatalog (`sqlite:////abs/cat.db`,
`postgresql+psycopg2://user@127.0.0.1:5432/db`; WH e.g. `file:///abs/wh` or
`s3://bucket/wh`); NAME (default `rest`) is the SQL catalog's
`catalog_name`, so tables created here are the SQL catalog's tables too.
`--property` adds catalog properties (`s3.endpoint=...` etc.);
`--table-config` is returned as `config` in every LoadTableResult.

Routes (Iceberg REST catalog OpenAPI, no prefix; a client-side prefix
segment `/v1/{prefix}/...` is accepted and ignored):
  GET  /v1/config                                  defaults, overrides, endpoints
  GET  /v1/namespaces[?parent=a%1Fb]               listNamespaces
  POST /v1/namespaces                              createNamespace
  GET|HEAD|DELETE /v1/namespaces/{ns}              load / exists / drop
  POST /v1/namespaces/{ns}/properties              updateProperties
  GET  /v1/namespaces/{ns}/tables                  listTables
  POST /v1/namespaces/{ns}/tables                  createTable (also stage-create, committed
                                                   by updateTable with assert-create)
  POST /v1/namespaces/{ns}/register                registerTable
  GET|HEAD|POST|DELETE /v1/namespaces/{ns}/tables/{t}
                                                   loadTable / tableExists /
                                                   updateTable (commit) / dropTable
                                                   (?purgeRequested=true purges)
  POST /v1/tables/rename                           renameTable
Namespace levels in a path or in `parent` are joined by 0x1F (`%1F`). Errors
are {"error": {"message", "type", "code"}}: 400 BadRequestException (bad JSON,
unknown requirement/update: the spec requires 400), 404
NoSuchNamespaceException / NoSuchTableException, 406
UnsupportedOperationException (register with overwrite), 409 AlreadyExistsException /
NamespaceNotEmptyException / CommitFailedException (a requirement failed or
another writer swapped first), 500 on anything unexpected.

OAuth2 (`--oauth CLIENT_ID:SECRET`, `--token-seconds N`): `POST
/v1/oauth/tokens` (form-encoded client credentials, RFC 6749 §4.4, as the
spec's OAuthTokenRequest) issues bearer tokens that expire after N seconds;
every other /v1 request then needs a live one (401 NotAuthorizedException
otherwise). `GET /_test/oauth` counts the tokens issued; `POST /_test/oauth`
revokes every token (the next request gets 401).

Fault injection for the tests (commit requests = POST .../tables/{t}):
  --fail-commits N    the next N commits are applied, then answered 500
                      CommitStateUnknownException (a lost answer)
  --reject-commits N  the next N commits are answered 503 (Retry-After: 0)
                      without being applied
  --drop-commits N    the next N commits are applied, then the connection is
                      closed without an answer
The defaults come from ICEBERG_REST_FAIL_COMMITS / _REJECT_COMMITS /
_DROP_COMMITS. Rejections are used up first, then failures, then drops. At run
time `POST /_test/faults` with {"fail_commits": N, "reject_commits": N,
"drop_commits": N} (each optional) sets the counters, and `GET /_test/faults`
returns them with the number of commit requests seen, applied (including the
failed and dropped ones), failed, rejected and dropped. Requests are served one
at a time (the commit swap is the SQL catalog's, so a second writer through
the SQL catalog directly still conflicts as it would against any server).

How it was checked against the spec: routes, status codes, error types and
bodies were written from the Iceberg REST catalog OpenAPI document
(open-api/rest-catalog-open-api.yaml in apache/iceberg, read 2026-12-07:
listNamespaces, createNamespace, loadNamespaceMetadata, namespaceExists,
dropNamespace, updateProperties, listTables, createTable, registerTable,
loadTable, updateTable with its 409/500/503 answers, dropTable, tableExists,
renameTable, the `endpoints` list of getConfig and the error examples);
request bodies are parsed with pyiceberg's own pydantic models of the spec's
CreateTableRequest / CommitTableRequest / RegisterTableRequest, and answers
are pyiceberg's TableMetadata serialised as pyiceberg writes metadata files.
Then two independent clients drove it: pyiceberg 0.12.0's RestCatalog
(namespaces nested and not, create a day-partitioned table, append with
summary properties, load, scan, a stale commit answered 409 — pyiceberg's
append then retries —, rename, drop; the injected faults surfaced as
ServiceUnavailableError / CommitStateUnknownException / ConnectionError) and
DuckDB 1.5.5's iceberg extension (`ATTACH '' AS c (TYPE iceberg, ENDPOINT
'http://127.0.0.1:PORT', AUTHORIZATION_TYPE 'none')`, with the httpfs wheel
loaded: CREATE SCHEMA, CREATE TABLE (a stage-create transaction), INSERT,
SELECT, DROP TABLE, DROP SCHEMA). tidewater's Rust client is the third.
"""
import argparse
import json
import os
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ENDPOINTS = [
    "GET /v1/{prefix}/namespaces",
    "POST /v1/{prefix}/namespaces",
    "GET /v1/{prefix}/namespaces/{namespace}",
    "HEAD /v1/{prefix}/namespaces/{namespace}",
    "DELETE /v1/{prefix}/namespaces/{namespace}",
    "POST /v1/{prefix}/namespaces/{namespace}/properties",
    "GET /v1/{prefix}/namespaces/{namespace}/tables",
    "POST /v1/{prefix}/namespaces/{namespace}/tables",
    "GET /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "HEAD /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "POST /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "DELETE /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "POST /v1/{prefix}/namespaces/{namespace}/register",
    "POST /v1/{prefix}/tables/rename",
]


class HttpError(Exception):
    def __init__(self, code, typ, message):
        super().__init__(message)
        self.code, self.typ, self.message = code, typ, message


class Faults:
    def __init__(self, fail, reject, drop):
        self.fail, self.reject, self.drop = fail, reject, drop
        self.seen = self.applied = self.failed = self.rejected = self.dropped = 0

    def state(self):
        return {
            "fail_commits": self.fail,
            "reject_commits": self.reject,
            "drop_commits": self.drop,
            "commits_seen": self.seen,
            "commits_applied": self.applied,
            "commits_failed": self.failed,
            "commits_rejected": self.rejected,
            "commits_dropped": self.dropped,
        }


def key_values(option, items):
    out = {}
    for kv in items:
        if "=" not in kv:
            raise SystemExit(f"{option} {kv!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        out[k] = v
    return out


def env_int(name):
    value = os.environ.get(name, "0")
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r}: expected a number")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--catalog-uri", required=True)
    p.add_argument("--warehouse", required=True)
    p.add_argument("--catalog-name", default="rest")
    p.add_argument("--property", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--table-config", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--fail-commits", type=int, default=env_int("ICEBERG_REST_FAIL_COMMITS"))
    p.add_argument("--reject-commits", type=int, default=env_int("ICEBERG_REST_REJECT_COMMITS"))
    p.add_argument("--drop-commits", type=int, default=env_int("ICEBERG_REST_DROP_COMMITS"))
    p.add_argument("--oauth", metavar="CLIENT_ID:SECRET",
                   help="require OAuth2 client-credentials tokens from POST /v1/oauth/tokens")
    p.add_argument("--token-seconds", type=int, default=3600, help="lifetime of an issued token")
    return p.parse_args()


class Catalog:
    """The REST routes over one SqlCatalog."""

    def __init__(self, args):
        import iceberg_s3_workaround
        from pyiceberg.catalog.sql import SqlCatalog

        iceberg_s3_workaround.install()

        self.sql = SqlCatalog(
            args.catalog_name,
            uri=args.catalog_uri,
            warehouse=args.warehouse,
            **key_values("--property", args.property),
        )
        self.table_config = key_values("--table-config", args.table_config)
        self.faults = Faults(args.fail_commits, args.reject_commits, args.drop_commits)
        self.lock = threading.Lock()
        # OAuth2 (client credentials): the client allowed, the tokens issued.
        self.oauth = tuple(args.oauth.split(":", 1)) if args.oauth else None
        self.token_seconds = args.token_seconds
        self.tokens = {}
        self.issued = 0

    def issue_token(self, raw):
        """POST /v1/oauth/tokens (form-encoded, RFC 6749 client credentials)."""
        import time
        import uuid as _uuid
        form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type", "error_description": "client_credentials only"}
        if self.oauth is None or (form.get("client_id"), form.get("client_secret")) != self.oauth:
            return 401, {"error": "invalid_client", "error_description": "unknown client or wrong secret"}
        token = _uuid.uuid4().hex
        self.tokens[token] = time.time() + self.token_seconds
        self.issued += 1
        return 200, {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.token_seconds,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        }

    def authorized(self, header):
        import time
        if self.oauth is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        expires = self.tokens.get(header[len("Bearer "):])
        return expires is not None and expires > time.time()

    # --- helpers
    @staticmethod
    def namespace(segment):
        parts = tuple(urllib.parse.unquote(segment).split("\x1f"))
        Catalog.check_namespace(parts)
        return parts

    @staticmethod
    def check_namespace(parts):
        if not parts or any(not p for p in parts):
            raise HttpError(400, "BadRequestException", f"invalid namespace {list(parts)}")
        if any("." in p for p in parts):
            # The SQL catalog behind this server joins levels with ".".
            raise HttpError(
                400,
                "BadRequestException",
                f"namespace {list(parts)}: a level containing '.' is not supported by this server",
            )

    def table_result(self, table):
        return {
            "metadata-location": table.metadata_location,
            "metadata": self.metadata_json(table.metadata),
            "config": dict(self.table_config),
        }

    @staticmethod
    def metadata_json(metadata):
        # As pyiceberg writes metadata files (no nulls: current-snapshot-id absent, not -1).
        return json.loads(metadata.model_dump_json(exclude_none=True))

    def load(self, ident):
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return self.sql.load_table(ident)
        except NoSuchTableError as e:
            raise HttpError(404, "NoSuchTableException", str(e))

    @staticmethod
    def model(cls, body, what):
        from pydantic import ValidationError

        if not isinstance(body, dict):
            raise HttpError(400, "BadRequestException", f"{what}: expected a JSON object")
        try:
            return cls.model_validate(body)
        except ValidationError as e:
            raise HttpError(400, "BadRequestException", f"{what}: {e}")

    # --- routing
    def route(self, method, path, query, body):
        """Returns (status, json body or None, after) where after is None,
        "drop" (close the connection without an answer)."""
        parts = [p for p in path.split("/") if p != ""]
        if parts[:1] != ["v1"]:
            if parts == ["_test", "faults"]:
                return self.test_faults(method, body)
            raise HttpError(404, "NoSuchEndpointException", f"{method} {path}")
        rest = parts[1:]
        if rest == ["config"] and method == "GET":
            return 200, {"defaults": {}, "overrides": {}, "endpoints": ENDPOINTS}, None
        # An optional prefix segment (we advertise none).
        if rest and rest[0] not in ("namespaces", "tables", "config"):
            rest = rest[1:]
        from pyiceberg.exceptions import (
            NamespaceAlreadyExistsError,
            NamespaceNotEmptyError,
            NoSuchNamespaceError,
            NoSuchTableError,
            TableAlreadyExistsError,
        )

        try:
            return self.route_catalog(method, rest, query, body)
        except NoSuchNamespaceError as e:
            raise HttpError(404, "NoSuchNamespaceException", str(e))
        except NoSuchTableError as e:
            raise HttpError(404, "NoSuchTableException", str(e))
        except NamespaceAlreadyExistsError as e:
            raise HttpError(409, "AlreadyExistsException", str(e))
        except TableAlreadyExistsError as e:
            raise HttpError(409, "AlreadyExistsException", str(e))
        except NamespaceNotEmptyError as e:
            raise HttpError(409, "NamespaceNotEmptyException", str(e))

    def route_catalog(self, method, rest, query, body):
        n = len(rest)
        if rest == ["namespaces"]:
            if method == "GET":
                parent = query.get("parent", [""])[0]
                parent_ns = self.namespace(parent) if parent else ()
                if parent_ns and not self.sql.namespace_exists(parent_ns):
                    raise HttpError(404, "NoSuchNamespaceException", f"namespace {list(parent_ns)} does not exist")
                return 200, {"namespaces": [list(ns) for ns in self.sql.list_namespaces(parent_ns)]}, None
            if method == "POST":
                if not isinstance(body, dict) or not isinstance(body.get("namespace"), list):
                    raise HttpError(400, "BadRequestException", "createNamespace: expected {\"namespace\": [...]}")
                ns = tuple(body["namespace"])
                self.check_namespace(ns)
                props = body.get("properties") or {}
                if not isinstance(props, dict):
                    raise HttpError(400, "BadRequestException", "createNamespace: properties must be an object")
                props = {str(k): str(v) for k, v in props.items()}
                self.sql.create_namespace(ns, props)
                return 200, {"namespace": list(ns), "properties": props}, None
        elif n == 2 and rest[0] == "tables" and rest[1] == "rename" and method == "POST":
            return self.rename(body)
        elif n >= 2 and rest[0] == "namespaces":
            ns = self.namespace(rest[1])
            if n == 2:
                if method in ("GET", "HEAD"):
                    props = self.sql.load_namespace_properties(ns)
                    if method == "HEAD":
                        return 204, None, None
                    return 200, {"namespace": list(ns), "properties": props}, None
                if method == "DELETE":
                    self.sql.drop_namespace(ns)
                    return 204, None, None
            elif n == 3 and rest[2] == "properties" and method == "POST":
                return self.update_namespace_properties(ns, body)
            elif n == 3 and rest[2] == "tables":
                if method == "GET":
                    tables = self.sql.list_tables(ns)
                    return 200, {
                        "identifiers": [{"namespace": list(t[:-1]), "name": t[-1]} for t in tables]
                    }, None
                if method == "POST":
                    return self.create_table(ns, body)
            elif n == 3 and rest[2] == "register" and method == "POST":
                return self.register_table(ns, body)
            elif n == 4 and rest[2] == "tables":
                ident = ns + (urllib.parse.unquote(rest[3]),)
                if method == "GET":
                    return 200, self.table_result(self.load(ident)), None
                if method == "HEAD":
                    self.load(ident)
                    return 204, None, None
                if method == "POST":
                    return self.commit(ident, body)
                if method == "DELETE":
                    self.load(ident)
                    purge = query.get("purgeRequested", ["false"])[0].lower() == "true"
                    if purge:
                        self.sql.purge_table(ident)
                    else:
                        self.sql.drop_table(ident)
                    return 204, None, None
        raise HttpError(404, "NoSuchEndpointException", f"{method} /v1/{'/'.join(rest)}")

    def update_namespace_properties(self, ns, body):
        if not isinstance(body, dict):
            raise HttpError(400, "BadRequestException", "updateProperties: expected a JSON object")
        removals = body.get("removals") or []
        updates = {str(k): str(v) for k, v in (body.get("updates") or {}).items()}
        both = sorted(set(removals) & set(updates))
        if both:
            raise HttpError(422, "UnprocessableEntityException", f"keys both removed and updated: {both}")
        summary = self.sql.update_namespace_properties(ns, set(removals), updates)
        return 200, {
            "updated": list(summary.updated),
            "removed": list(summary.removed),
            "missing": list(summary.missing or []),
        }, None

    def create_table(self, ns, body):
        from pyiceberg.catalog.rest import CreateTableRequest
        from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC
        from pyiceberg.table.sorting import UNSORTED_SORT_ORDER

        if isinstance(body, dict):
            for key in ("location", "partition-spec", "write-order"):
                body.setdefault(key, None)
        req = self.model(CreateTableRequest, body, "createTable")
        if not self.sql.namespace_exists(ns):
            raise HttpError(404, "NoSuchNamespaceException", f"namespace {list(ns)} does not exist")
        args = (
            ns + (req.name,),
            req.table_schema,
            req.location,
            req.partition_spec or UNPARTITIONED_PARTITION_SPEC,
            req.write_order or UNSORTED_SORT_ORDER,
            req.properties,
        )
        if req.stage_create:
            # A create transaction (DuckDB's CREATE TABLE uses one): the
            # metadata is returned, nothing is registered; the client commits
            # it with `assert-create` + the table's initial updates.
            if self.sql.table_exists(ns + (req.name,)):
                raise HttpError(409, "AlreadyExistsException", f"table {'.'.join(ns + (req.name,))} already exists")
            staged = self.sql._create_staged_table(*args)
            return 200, {"metadata": self.metadata_json(staged.metadata), "config": dict(self.table_config)}, None
        table = self.sql.create_table(*args)
        return 200, self.table_result(table), None

    def register_table(self, ns, body):
        from pyiceberg.catalog.rest import RegisterTableRequest

        if isinstance(body, dict):
            body.setdefault("overwrite", False)
        req = self.model(RegisterTableRequest, body, "registerTable")
        if req.overwrite:
            raise HttpError(406, "UnsupportedOperationException", "register with overwrite is not supported")
        if not self.sql.namespace_exists(ns):
            raise HttpError(404, "NoSuchNamespaceException", f"namespace {list(ns)} does not exist")
        table = self.sql.register_table(ns + (req.name,), req.metadata_location)
        return 200, self.table_result(table), None

    def rename(self, body):
        try:
            src = tuple(body["source"]["namespace"]) + (body["source"]["name"],)
            dst = tuple(body["destination"]["namespace"]) + (body["destination"]["name"],)
        except (TypeError, KeyError) as e:
            raise HttpError(400, "BadRequestException", f"renameTable: missing {e}")
        self.check_namespace(src[:-1])
        self.check_namespace(dst[:-1])
        self.load(src)
        if not self.sql.namespace_exists(dst[:-1]):
            raise HttpError(404, "NoSuchNamespaceException", f"namespace {list(dst[:-1])} does not exist")
        self.sql.rename_table(src, dst)
        return 204, None, None

    def commit(self, ident, body):
        from pyiceberg.exceptions import CommitFailedException
        from pyiceberg.table import CommitTableRequest

        faults = self.faults
        faults.seen += 1
        if isinstance(body, dict) and body.get("identifier") is None:
            # Optional in the spec's CommitTableRequest (required only inside
            # a transaction commit); pyiceberg's model wants it: the path names it.
            body["identifier"] = {"namespace": list(ident[:-1]), "name": ident[-1]}
        req = self.model(CommitTableRequest, body, "updateTable")
        if faults.reject > 0:
            faults.reject -= 1
            faults.rejected += 1
            raise HttpError(503, "ServiceUnavailableException", "injected fault: commit rejected, not applied")
        try:
            table = self.load(ident)
        except HttpError:
            # Committing a create transaction (stage-create): the table must
            # not exist yet, which `assert-create` asserts.
            if not any(r.type == "assert-create" for r in req.requirements):
                raise
            if not self.sql.namespace_exists(ident[:-1]):
                raise HttpError(404, "NoSuchNamespaceException", f"namespace {list(ident[:-1])} does not exist")
            table = _NewTable(ident)
        try:
            result = self.sql.commit_table(table, req.requirements, req.updates)
        except CommitFailedException as e:
            raise HttpError(409, "CommitFailedException", str(e))
        except ValueError as e:
            # pyiceberg raises ValueError for updates that do not apply (unknown schema id, ...).
            raise HttpError(400, "BadRequestException", f"updateTable: {e}")
        faults.applied += 1
        if faults.fail > 0:
            faults.fail -= 1
            faults.failed += 1
            raise HttpError(500, "CommitStateUnknownException", "injected fault: commit applied, answer lost")
        if faults.drop > 0:
            faults.drop -= 1
            faults.dropped += 1
            return 0, None, "drop"
        return 200, {
            "metadata-location": result.metadata_location,
            "metadata": self.metadata_json(result.metadata),
        }, None

    def test_faults(self, method, body):
        if method == "POST":
            if not isinstance(body, dict):
                raise HttpError(400, "BadRequestException", "expected a JSON object")
            for key in ("fail_commits", "reject_commits", "drop_commits"):
                if key in body:
                    value = body[key]
                    if not isinstance(value, int) or value < 0:
                        raise HttpError(400, "BadRequestException", f"{key}: expected a count")
                    setattr(self.faults, key.split("_")[0], value)
        elif method != "GET":
            raise HttpError(404, "NoSuchEndpointException", f"{method} /_test/faults")
        return 200, self.faults.state(), None


class _NewTable:
    """What SqlCatalog.commit_table needs of a table that does not exist yet."""

    def __init__(self, ident):
        self.ident = ident

    def name(self):
        return self.ident


def make_handler(catalog):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "tidewater-iceberg-rest-test"

        def read_body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    data += self.rfile.read(size)
                    self.rfile.readline()
                return data
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def handle_one(self, method):
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            after = None
            try:
                raw = self.read_body()
                if url.path == "/v1/oauth/tokens" and method == "POST":
                    with catalog.lock:
                        code, out = catalog.issue_token(raw)
                    raise _Answer(code, out)
                if url.path == "/_test/oauth":
                    with catalog.lock:
                        if method == "POST":
                            catalog.tokens.clear()
                        raise _Answer(200, {"issued": catalog.issued, "live": len(catalog.tokens)})
                if not url.path.startswith("/_test/") and not catalog.authorized(self.headers.get("Authorization")):
                    raise HttpError(401, "NotAuthorizedException", "a valid bearer token is required")
                try:
                    body = json.loads(raw) if raw.strip() else None
                except ValueError as e:
                    raise HttpError(400, "BadRequestException", f"malformed JSON: {e}")
                with catalog.lock:
                    code, out, after = catalog.route(method, url.path, query, body)
            except _Answer as a:
                code, out = a.code, a.out
            except HttpError as e:
                code, out = e.code, {"error": {"message": e.message, "type": e.typ, "code": e.code}}
            except Exception as e:  # noqa: BLE001 - a server bug is a 500, not a dead server
                code = 500
                out = {"error": {"message": f"{type(e).__name__}: {e}", "type": "InternalServerError", "code": 500}}
            print(f"{method} {self.path} {'dropped' if after == 'drop' else code}", file=sys.stderr, flush=True)
            if after == "drop":
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return
            data = b"" if out is None else json.dumps(out).encode()
            self.send_response(code)
            if code == 503:
                self.send_header("Retry-After", "0")
            if out is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)) if method != "HEAD" else "0")
            self.end_headers()
            if method != "HEAD" and data:
                self.wfile.write(data)

        def do_GET(self):
            self.handle_one("GET")

        def do_HEAD(self):
            self.handle_one("HEAD")

        def do_POST(self):
            self.handle_one("POST")

        def do_DELETE(self):
            self.handle_one("DELETE")

        def log_message(self, *args):
            pass

    return Handler


class _Answer(Exception):
    """An answer given before routing (the OAuth2 token endpoint, test hooks)."""

    def __init__(self, code, out):
        super().__init__(code)
        self.code, self.out = code, out


def main():
    args = parse_args()
    catalog = Catalog(args)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(catalog))
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
