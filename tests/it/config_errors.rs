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
