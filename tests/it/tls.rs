//! TLS to both sources (issue 9, point 4), against servers the harness
//! starts with a self-signed CA (`support::tls`), and the least-privilege
//! users of the README (point 5) streaming over it.
//!
//! The TLS Postgres takes TCP connections only over TLS and from roles with
//! a password; the TLS MariaDB users are created `REQUIRE SSL`. So a
//! pipeline that works there used TLS on every connection it opened —
//! control, snapshot workers, replication/binlog stream.

use mysql_async::prelude::Queryable;

use crate::support::mariadb::{maria, maria_tls};
use crate::support::tls::certs;
use crate::support::{pg, pg_tls, run_with_source, Pipeline};

const PG_PASSWORD: &str = "tls-test-password";

fn pg_source(user: &str, host: &str, port: u16, db: &str, query: &str) -> String {
    format!(
        "[source]\ntype = \"postgres\"\nurl = \"postgres://{user}:${{TW_PG_PASSWORD}}@{host}:{port}/{db}?{query}\"\ntables = [\"public.*\"]\n"
    )
}

fn my_source(user: &str, host: &str, port: u16, db: &str, query: &str) -> String {
    format!(
        "[source]\ntype = \"mysql\"\nurl = \"mysql://{user}:{user}@{host}:{port}/{db}?{query}\"\ntables = [\"{db}.*\"]\n"
    )
}

/// The README's Postgres grants for a role that owns nothing: the
/// publication is made by the tables' owner.
fn pg_least_privilege(role: &str, db: &str, publication: &str, tables: &str) -> String {
    format!(
        "CREATE ROLE {role} WITH LOGIN REPLICATION PASSWORD '{PG_PASSWORD}';
         GRANT CONNECT ON DATABASE {db} TO {role};
         GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role};
         CREATE PUBLICATION {publication} FOR TABLE {tables} WITH (publish_via_partition_root = true);"
    )
}

/// Snapshot and streaming over `sslmode=verify-full` as the README's
/// least-privilege role; the walsender connection is seen encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_streams_over_verify_full_as_least_privilege_role() {
    let server = pg_tls();
    let client = server.create_database("tls_pg").await;
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, note text, total numeric(10,2));
             CREATE TABLE customers (id int PRIMARY KEY, name text);
             INSERT INTO orders SELECT g, 'order ' || g, g * 1.25 FROM generate_series(1, 500) g;
             INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    client
        .batch_execute(&pg_least_privilege(
            "tw_tls",
            "tls_pg",
            "tidewater_tls_pg",
            "orders, customers",
        ))
        .await
        .unwrap();
    let query = format!("sslmode=verify-full&sslrootcert={}", certs().ca.display());
    let mut pipeline = Pipeline::with_source(
        "tls_pg",
        &pg_source("tw_tls", "127.0.0.1", server.port, "tls_pg", &query),
        "",
    );
    pipeline
        .env
        .push(("TW_PG_PASSWORD".into(), PG_PASSWORD.into()));
    pipeline.start();
    pipeline.wait_equal(&client, "orders").await;
    pipeline.wait_equal(&client, "customers").await;

    client
        .batch_execute(
            "INSERT INTO orders VALUES (501, 'streamed', 9.99);
             UPDATE orders SET note = 'changed', total = total + 1 WHERE id % 7 = 0;
             DELETE FROM orders WHERE id BETWEEN 10 AND 19;
             UPDATE customers SET name = 'renamed' WHERE id = 3;",
        )
        .await
        .unwrap();
    pipeline.wait_equal(&client, "orders").await;
    pipeline.wait_equal(&client, "customers").await;

    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE a.backend_type = 'walsender'), bool_and(s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'tw_tls'",
            &[],
        )
        .await
        .unwrap();
    let (walsenders, all_ssl): (i64, Option<bool>) = (row.get(0), row.get(1));
    assert_eq!(walsenders, 1, "one walsender streams for the pipeline");
    assert_eq!(all_ssl, Some(true), "every connection of the role is TLS");
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// Each mode checks what libpq's does, on every connection `check` opens
/// (control and replication): the wrong CA, a host the certificate does
/// not name, and libpq's rule that `require` with a CA file checks the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_tls_modes_verify_what_libpq_verifies() {
    let server = pg_tls();
    let client = server.create_database("tls_pg_modes").await;
    client
        .batch_execute(&format!(
            "CREATE ROLE tw_modes WITH LOGIN REPLICATION PASSWORD '{PG_PASSWORD}';
             CREATE TABLE t (id int PRIMARY KEY);
             ALTER TABLE t OWNER TO tw_modes;
             GRANT CREATE ON DATABASE tls_pg_modes TO tw_modes;"
        ))
        .await
        .unwrap();
    let ca = certs().ca.display().to_string();
    let other = certs().other_ca.display().to_string();
    let check = |host: &str, query: String| {
        run_with_source(
            "check",
            &pg_source("tw_modes", host, server.port, "tls_pg_modes", &query),
            &[("TW_PG_PASSWORD", PG_PASSWORD)],
        )
    };
    for (host, query) in [
        ("127.0.0.1", format!("sslmode=verify-full&sslrootcert={ca}")),
        ("127.0.0.2", format!("sslmode=verify-ca&sslrootcert={ca}")),
        ("127.0.0.2", "sslmode=require".to_string()),
        ("127.0.0.1", "sslmode=prefer".to_string()),
    ] {
        let (code, out) = check(host, query.clone());
        assert_eq!(code, 0, "{host} {query}: {out}");
        assert!(out.contains("ok: the source server"), "{out}");
    }
    for (host, query, reason) in [
        (
            "127.0.0.1",
            format!("sslmode=verify-ca&sslrootcert={other}"),
            "not signed by a CA in sslrootcert",
        ),
        (
            "127.0.0.1",
            format!("sslmode=require&sslrootcert={other}"),
            "not signed by a CA in sslrootcert",
        ),
        (
            "127.0.0.2",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            "does not name the url's host",
        ),
    ] {
        let (code, out) = check(host, query.clone());
        assert_ne!(code, 0, "{host} {query}: {out}");
        let mode = query.split('&').next().unwrap_or_default();
        assert!(
            out.contains("TLS handshake with") && out.contains(mode) && out.contains(reason),
            "{host} {query}: {out}"
        );
    }
    // Without TLS the server takes nobody over TCP.
    let (code, out) = check("127.0.0.1", "sslmode=disable".into());
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("no encryption"), "{out}");
}

/// `require` against a server without TLS stops `check` and `run` with the
/// setting named (no retrying); `prefer` goes on in plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_require_is_refused_by_a_plain_server_and_prefer_falls_back() {
    let server = pg();
    let client = server.create_database("tls_pg_plain").await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let source = |mode: &str| {
        format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}?sslmode={mode}\"\n",
            server.url("tls_pg_plain")
        )
    };
    for command in ["check", "run"] {
        let (code, out) = run_with_source(command, &source("require"), &[]);
        assert_eq!(code, 2, "{command}: {out}");
        assert!(
            out.contains("does not accept TLS") && out.contains("sslmode=require"),
            "{command}: {out}"
        );
    }
    let (code, out) = run_with_source("check", &source("prefer"), &[]);
    assert_eq!(code, 0, "{out}");
}

/// Snapshot (parallel key ranges) and binlog streaming over
/// `ssl-mode=VERIFY_IDENTITY` as a user with exactly the README's MariaDB
/// grants, created `REQUIRE SSL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maria_streams_over_verify_identity_as_least_privilege_user() {
    let server = maria_tls();
    let mut conn = server.create_database("tls_my").await;
    server.sql(
        "",
        "CREATE USER tw_tls@'%' IDENTIFIED BY 'tw_tls' REQUIRE SSL;
         GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO tw_tls@'%';
         GRANT SELECT ON tls_my.* TO tw_tls@'%';",
    );
    conn.query_drop(
        "CREATE TABLE orders (id INT PRIMARY KEY, note VARCHAR(40), total DECIMAL(10,2));
         INSERT INTO orders SELECT seq, CONCAT('order ', seq), seq * 1.25 FROM seq_1_to_600;
         ANALYZE TABLE orders;",
    )
    .await
    .unwrap();
    let query = format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", certs().ca.display());
    let source = format!(
        "{}snapshot_chunk_rows = 100\n",
        my_source("tw_tls", "127.0.0.1", server.port, "tls_my", &query)
    );
    let mut pipeline = Pipeline::with_source("tls_my", &source, "");
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "tls_my", "orders", "id")
        .await;
    assert!(
        pipeline.log(1).contains("reading key ranges in parallel"),
        "the snapshot's workers (connections of their own) read the table:\n{}",
        pipeline.log(1)
    );
    conn.query_drop(
        "INSERT INTO orders VALUES (601, 'streamed', 9.99);
         UPDATE orders SET note = 'changed', total = total + 1 WHERE id % 7 = 0;
         DELETE FROM orders WHERE id BETWEEN 10 AND 19;",
    )
    .await
    .unwrap();
    pipeline
        .wait_equal_mysql(&mut conn, "tls_my", "orders", "id")
        .await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// ssl-mode checks what the mysql client's does: the wrong CA, a host the
/// certificate does not name; VERIFY_CA takes any certificate of the CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maria_tls_modes_verify_what_the_mysql_client_verifies() {
    let server = maria_tls();
    let mut conn = server.create_database("tls_my_modes").await;
    server.sql(
        "",
        "CREATE USER tw_modes@'%' IDENTIFIED BY 'tw_modes' REQUIRE SSL;
         GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO tw_modes@'%';
         GRANT SELECT ON tls_my_modes.* TO tw_modes@'%';",
    );
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let ca = certs().ca.display().to_string();
    let other = certs().other_ca.display().to_string();
    let check = |host: &str, query: &str| {
        run_with_source(
            "check",
            &my_source("tw_modes", host, server.port, "tls_my_modes", query),
            &[],
        )
    };
    for (host, query) in [
        ("127.0.0.1", format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}")),
        ("127.0.0.2", format!("ssl-mode=VERIFY_CA&ssl-ca={ca}")),
        ("127.0.0.2", "ssl-mode=REQUIRED".to_string()),
        ("127.0.0.1", "ssl-mode=PREFERRED".to_string()),
    ] {
        let (code, out) = check(host, &query);
        assert_eq!(code, 0, "{host} {query}: {out}");
        assert!(out.contains("ok: the source server"), "{out}");
    }
    for (host, query, reason) in [
        (
            "127.0.0.1",
            format!("ssl-mode=VERIFY_CA&ssl-ca={other}"),
            "not signed by a CA in ssl-ca",
        ),
        (
            "127.0.0.2",
            format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
            "does not name the url's host",
        ),
    ] {
        let (code, out) = check(host, &query);
        assert_ne!(code, 0, "{host} {query}: {out}");
        let mode = query.split('&').next().unwrap_or_default();
        assert!(
            out.contains("TLS handshake with") && out.contains(mode) && out.contains(reason),
            "{host} {query}: {out}"
        );
    }
    // The user is REQUIRE SSL: the successes above were encrypted.
    let (code, out) = check("127.0.0.1", "ssl-mode=DISABLED");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Access denied"), "{out}");
}

/// REQUIRED against a server without TLS stops `check` with the setting
/// named; PREFERRED goes on in plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maria_required_is_refused_by_a_plain_server_and_preferred_falls_back() {
    let server = maria();
    let mut conn = server.create_database("tls_my_plain").await;
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let source = |mode: &str| {
        server.source_toml("tls_my_plain").replace(
            "/tls_my_plain\"",
            &format!("/tls_my_plain?ssl-mode={mode}\""),
        )
    };
    let (code, out) = run_with_source("check", &source("REQUIRED"), &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("does not accept TLS") && out.contains("ssl-mode=REQUIRED"),
        "{out}"
    );
    let (code, out) = run_with_source("check", &source("PREFERRED"), &[]);
    assert_eq!(code, 0, "{out}");
}
