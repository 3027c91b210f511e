//! Bad configs and unready servers fail loudly, naming the key or setting and
//! the fix.

use crate::support::{output_within, pg, temp_dir, tidewater, PgServer};

fn check_with(config: &str) -> (i32, String) {
    let dir = temp_dir("tidewater-config");
    let path = dir.join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = tidewater();
    cmd.args(["check", "--config"])
        .arg(&path)
        .env_remove("TW_TEST_UNSET");
    let out = output_within(cmd, 60);
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn config(url: &str, extra_sink: &str) -> String {
    format!(
        "[pipeline]\nname = \"cfg\"\n[source]\ntype = \"postgres\"\nurl = \"{url}\"\n\
         [sink]\ntype = \"lake\"\nuri = \"/tmp/tidewater-never-written\"\n{extra_sink}"
    )
}

#[test]
fn unknown_key_is_rejected_with_its_name() {
    let (code, out) = check_with(&config(
        "postgres://u@127.0.0.1:1/db",
        "flush_intervl_ms = 5\n",
    ));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("flush_intervl_ms") && out.contains("sink"),
        "{out}"
    );
}

#[test]
fn missing_environment_variable_names_key_and_variable() {
    let (code, out) = check_with(&config("postgres://u:${TW_TEST_UNSET}@127.0.0.1:1/db", ""));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("source.url") && out.contains("TW_TEST_UNSET"),
        "{out}"
    );
}

#[test]
fn wrong_value_type_names_the_key() {
    let (code, out) = check_with(&config(
        "postgres://u@127.0.0.1:1/db",
        "max_batch_rows = \"many\"\n",
    ));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("sink.max_batch_rows"), "{out}");
}

#[test]
fn unknown_source_type_is_rejected() {
    let text = config("postgres://u@127.0.0.1:1/db", "").replace("\"postgres\"", "\"oracle\"");
    let (code, out) = check_with(&text);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("source") && out.contains("oracle"), "{out}");
}

#[test]
fn missing_config_file_is_a_config_error() {
    let mut cmd = tidewater();
    cmd.args(["run", "--config", "/nonexistent/tidewater.toml"]);
    let out = output_within(cmd, 60);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tidewater.toml"));
}

#[test]
fn unreachable_server_is_reported() {
    let port = crate::support::free_port();
    let (code, out) = check_with(&config(&format!("postgres://u@127.0.0.1:{port}/db"), ""));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
}

#[tokio::test]
async fn server_without_logical_wal_is_refused_with_the_fix() {
    let server = PgServer::start("replica");
    let url = server.url("postgres");
    server
        .client("postgres")
        .await
        .batch_execute("CREATE TABLE t (id int primary key)")
        .await
        .unwrap();
    let (code, out) = check_with(&config(&url, ""));
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("wal_level is \"replica\""), "{out}");
    assert!(
        out.contains("ALTER SYSTEM SET wal_level = logical"),
        "{out}"
    );

    let dir = temp_dir("tidewater-walrun");
    let path = dir.join("c.toml");
    std::fs::write(&path, config(&url, "")).unwrap();
    let out = tidewater()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wal_level"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn check_reports_tables_and_missing_replication_privilege() {
    let client = pg().create_database("cfg_priv").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int primary key); CREATE TABLE nopk (v int); \
             CREATE TABLE t2 (id int primary key, body text); \
             CREATE ROLE plain LOGIN; GRANT SELECT ON t, nopk, t2 TO plain;",
        )
        .await
        .ok();
    let url = pg().url("cfg_priv").replace("postgres@", "plain@");
    let (code, out) = check_with(&config(&url, ""));
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("public.t"), "{out}");
    assert!(
        out.contains("ALTER ROLE \"plain\" WITH REPLICATION"),
        "{out}"
    );
    // Lossy identities are warned about, with the fix.
    assert!(
        out.contains("warning: public.t2 has columns stored out of line (TOAST)")
            && out.contains("ALTER TABLE \"public\".\"t2\" REPLICA IDENTITY FULL"),
        "{out}"
    );
    // The test server keeps unlimited WAL for slots: a warning, with its fix.
    assert!(
        out.contains("warning: max_slot_wal_keep_size is unlimited")
            && out.contains("ALTER SYSTEM SET max_slot_wal_keep_size"),
        "{out}"
    );
}

/// Issue 18 (8): type errors speak the config's language ("a whole
/// number", "a list of strings"), not Rust's ("usize", "a sequence").
#[test]
fn type_errors_name_the_kind_of_value_not_the_rust_type() {
    let (code, out) = check_with(&config(
        "postgres://u@127.0.0.1:1/db",
        "max_batch_rows = \"many\"\n",
    ));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("sink.max_batch_rows") && out.contains("a whole number"),
        "{out}"
    );
    assert!(!out.contains("usize"), "{out}");
    let text = config("postgres://u@127.0.0.1:1/db", "").replace(
        "[sink]",
        "tables = \"public.*\"\nheartbeat_interval_ms = 5\n[sink]",
    );
    let (code, out) = check_with(&text);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("source.tables") && out.contains("a list of strings"),
        "{out}"
    );
    assert!(!out.contains("sequence"), "{out}");
    let text = config("postgres://u@127.0.0.1:1/db", "")
        .replace("[sink]", "heartbeat_interval_ms = -5\n[sink]");
    let (code, out) = check_with(&text);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("source.heartbeat_interval_ms") && out.contains("a whole number"),
        "{out}"
    );
    assert!(!out.contains("u64"), "{out}");
}

/// Issue 18 (8): a Postgres url without a database used to connect to the
/// database named after the user; it is a config error naming the key.
#[test]
fn postgres_url_without_database_is_refused() {
    for url in [
        "postgres://u@127.0.0.1:5432",
        "postgres://u@127.0.0.1:5432/",
    ] {
        let (code, out) = check_with(&config(url, ""));
        assert_eq!(code, 2, "{out}");
        assert!(
            out.contains("source.url")
                && out.contains("names no database")
                && out.contains("postgres://user:password@host:5432/database"),
            "{out}"
        );
    }
    // The warehouse's url too.
    let text = config("postgres://u@127.0.0.1:5432/db", "").replace(
        "type = \"lake\"\nuri = \"/tmp/tidewater-never-written\"",
        "type = \"warehouse\"\nurl = \"postgres://u@127.0.0.1:5432\"",
    );
    let (code, out) = check_with(&text);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("sink.url") && out.contains("names no database"),
        "{out}"
    );
}

/// Issue 18 (8): `type = "mariadb"` and `mariadb://` are the MySQL source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_type_and_scheme_are_the_mysql_source() {
    use crate::support::mariadb::maria;
    use mysql_async::prelude::Queryable;
    let server = maria();
    let mut conn = server.create_database("cfg_alias").await;
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let url = server.url("cfg_alias").replace("mysql://", "mariadb://");
    let text = config(&url, "").replace("\"postgres\"", "\"mariadb\"");
    let (code, out) = check_with(&text);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("source: MariaDB") && out.contains("cfg_alias.t"),
        "{out}"
    );
}

/// Issue 18 (8): `status --table T` shows only T, and a table the lake
/// does not hold is refused (exit 2) with the ones it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_table_shows_one_table_and_refuses_an_unknown_one() {
    use crate::support::Pipeline;
    let client = pg().create_database("cfg_status").await;
    client
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
             INSERT INTO a VALUES (1); INSERT INTO b VALUES (1);",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("cfg_status", &pg().url("cfg_status"), "");
    pipeline.start();
    pipeline.wait_equal(&client, "a").await;
    pipeline.wait_equal(&client, "b").await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    let status = |args: &[&str]| {
        let mut cmd = tidewater();
        cmd.args(["status", "--config"])
            .arg(&pipeline.config)
            .args(args);
        let out = output_within(cmd, 60);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = status(&["--table", "public.a", "--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("status json");
    let tables: Vec<&str> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(tables, ["public.a"], "{stdout}");
    let (code, stdout, _) = status(&["--table", "public.a"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("public.a") && !stdout.contains("public.b"),
        "{stdout}"
    );
    for args in [
        &["--table", "public.nope"][..],
        &["--table", "public.nope", "--history"][..],
    ] {
        let (code, stdout, stderr) = status(args);
        assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("public.nope")
                && stderr.contains("no such table")
                && stderr.contains("public.a, public.b"),
            "{args:?}: {stderr}"
        );
    }
}

/// Issue 18 (8): a table pattern that matches nothing is one behaviour on
/// both sources: `check` and `run` stop with exit 3 (preflight), naming
/// `source.tables` (MySQL used to warn and run capturing nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_matching_nothing_is_exit_3_on_both_sources() {
    use crate::support::mariadb::maria;
    use crate::support::run_with_source;
    let _ = pg().create_database("cfg_nomatch").await;
    let maria = maria();
    let _ = maria.create_database("cfg_nomatch").await;
    let sources = [
        format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.nothing_*\"]\n",
            pg().url("cfg_nomatch")
        ),
        format!(
            "[source]\ntype = \"mysql\"\nurl = \"{}\"\ntables = [\"cfg_nomatch.nothing_*\"]\n",
            maria.url("cfg_nomatch")
        ),
    ];
    for source in &sources {
        for command in ["check", "run"] {
            let (code, out) = run_with_source(command, source, &[]);
            assert_eq!(code, 3, "{command} {source}: {out}");
            assert!(
                out.contains("source.tables") && out.contains("matches no table"),
                "{command} {source}: {out}"
            );
        }
    }
}
