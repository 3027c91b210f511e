//! Least privilege (issue 9, point 5): `tidewater check` names every grant
//! of the README's least-privilege users that is missing, with the
//! statement that adds it, and passes once exactly those grants are given.
//! (Pipelines running as such users: `tls.rs`, and every MariaDB test, whose
//! harness user has exactly the README's grants.)

use mysql_async::prelude::Queryable;

use crate::support::mariadb::maria;
use crate::support::{pg, run_with_source};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_check_names_each_missing_privilege_until_the_readme_grants() {
    let server = pg();
    let client = server.create_database("lp_pg").await;
    client
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TABLE public.readable (id int PRIMARY KEY);
             CREATE TABLE public.secret (id int PRIMARY KEY);
             CREATE TABLE app.hidden (id int PRIMARY KEY);
             CREATE ROLE tw_missing LOGIN;
             GRANT SELECT ON public.readable, app.hidden TO tw_missing;",
        )
        .await
        .unwrap();
    let source = format!(
        "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\", \"app.*\"]\n",
        server.url("lp_pg").replace("postgres@", "tw_missing@")
    );
    let (code, out) = run_with_source("check", &source, &[]);
    assert_eq!(code, 3, "{out}");
    for expected in [
        "role \"tw_missing\" lacks the REPLICATION attribute",
        "ALTER ROLE \"tw_missing\" WITH REPLICATION;",
        "lacks USAGE on schema app",
        "GRANT USAGE ON SCHEMA \"app\" TO \"tw_missing\";",
        "cannot SELECT from public.secret",
        "GRANT SELECT ON \"public\".\"secret\" TO \"tw_missing\";",
        "publication \"tidewater_probe\" does not exist and role \"tw_missing\" does not own",
        "as the table owner: CREATE PUBLICATION \"tidewater_probe\" FOR TABLE",
        "role \"tw_missing\" cannot create publications in this database",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("cannot SELECT from public.readable"), "{out}");
    assert!(!out.contains("cannot SELECT from app.hidden"), "{out}");

    // The README's statements (the publication made by the tables' owner,
    // first lacking a table) and nothing more.
    client
        .batch_execute(
            "ALTER ROLE tw_missing WITH REPLICATION;
             GRANT CONNECT ON DATABASE lp_pg TO tw_missing;
             GRANT USAGE ON SCHEMA public, app TO tw_missing;
             GRANT SELECT ON ALL TABLES IN SCHEMA public, app TO tw_missing;
             ALTER DEFAULT PRIVILEGES IN SCHEMA public, app GRANT SELECT ON TABLES TO tw_missing;
             CREATE PUBLICATION tidewater_probe FOR TABLE public.readable, app.hidden
               WITH (publish_via_partition_root = true);",
        )
        .await
        .unwrap();
    let (code, out) = run_with_source("check", &source, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "publication tidewater_probe (owned by \"postgres\") lacks \"public\".\"secret\""
        ) && out.contains(
            "as postgres: ALTER PUBLICATION \"tidewater_probe\" ADD TABLE \"public\".\"secret\";"
        ),
        "{out}"
    );
    client
        .batch_execute("ALTER PUBLICATION tidewater_probe ADD TABLE public.secret")
        .await
        .unwrap();
    let (code, out) = run_with_source("check", &source, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: the source server and the lake are ready")
            && out.contains("3 table(s) selected")
            && !out.contains("publication tidewater_probe")
            && !out.contains("pg_logical_emit_message"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maria_check_names_each_missing_privilege_until_the_readme_grants() {
    let server = maria();
    let mut conn = server.create_database("lp_my").await;
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    server.sql("", "CREATE USER tw_missing@'%' IDENTIFIED BY 'tw_missing';");
    let source = format!(
        "[source]\ntype = \"mysql\"\nurl = \"mysql://tw_missing:tw_missing@127.0.0.1:{}/\"\ntables = [\"lp_my.*\"]\n",
        server.port
    );
    let (code, out) = run_with_source("check", &source, &[]);
    assert_eq!(code, 3, "{out}");
    for expected in [
        "the user lacks REPLICATION SLAVE",
        "GRANT REPLICATION SLAVE ON *.* TO 'tw_missing'@'%';",
        "the user lacks BINLOG MONITOR",
        "GRANT BINLOG MONITOR ON *.* TO 'tw_missing'@'%';",
        "matches no table the user can see",
        "GRANT SELECT ON <database>.* TO <the user>;",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // MariaDB's snapshot takes no lock: RELOAD is not asked for.
    assert!(!out.contains("RELOAD"), "{out}");

    server.sql(
        "",
        "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO tw_missing@'%';
         GRANT SELECT ON lp_my.* TO tw_missing@'%';",
    );
    let (code, out) = run_with_source("check", &source, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: the source server and the lake are ready")
            && out.contains("lp_my.t")
            && !out.contains("warning"),
        "{out}"
    );
}
