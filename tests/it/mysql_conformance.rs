//! Debezium's public MySQL test scripts (`../shared/conformance/mysql`),
//! replayed into fresh MariaDB databases while a pipeline streams them; the
//! lake must equal the source table by table, value by value. A second
//! pipeline then takes a snapshot of the same databases, which must be equal
//! too.

use std::path::PathBuf;

use mysql_async::prelude::Queryable;

use crate::support::lake::WHOLE_ROW;
use crate::support::mariadb::maria;
use crate::support::Pipeline;

pub(crate) fn corpus() -> PathBuf {
    crate::support::conformance("mysql")
}

/// Splits a script the way Debezium's runner does: drop `--` comment lines,
/// cut trailing `-- ` comments, join, split on `;`, then `$$` becomes `;`.
pub(crate) fn statements(text: &str) -> Vec<String> {
    let joined: Vec<String> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .map(|l| match l.find("-- ") {
            Some(at) => l[..at].to_string(),
            None => l.to_string(),
        })
        .collect();
    joined
        .join(" ")
        .split(';')
        .map(|s| s.trim().replace("$$", ";"))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Files the replay covers: every `.sql` script. `mysql-test-statements.ddl`
/// is a DDL-parser corpus, never meant to execute (schema evolution's issue).
fn scripts() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus())
        .expect("corpus dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 18, "corpus incomplete: {files:?}");
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_conformance_corpus_lands_equal() {
    let server = maria();
    let source = format!(
        "[source]\ntype = \"mysql\"\nurl = \"{}\"\ntables = [\"cf_*.*\"]\n",
        server.url("")
    );
    // A pattern matching no table stops the start (exit 3), so one small
    // table is there first; once it landed the snapshot is over, and every
    // script goes through the binlog.
    let mut seed = server.create_database("cf_0_seed").await;
    seed.query_drop("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .expect("seed table");
    let mut streaming = Pipeline::with_source("cf_stream", &source, "");
    streaming.start();
    streaming
        .wait_equal_mysql(&mut seed, "cf_0_seed", "t", "id")
        .await;

    let mut databases = Vec::new();
    let mut rejected = Vec::new();
    for file in scripts() {
        let stem = file.file_stem().unwrap().to_string_lossy().to_lowercase();
        let database = format!("cf_{stem}");
        let mut conn = server.create_database(&database).await;
        let text = std::fs::read_to_string(&file).expect("script");
        for statement in statements(&text) {
            if let Err(err) = conn.query_drop(&statement).await {
                rejected.push(format!("{stem}: {err}"));
            }
        }
        databases.push(database);
    }
    assert!(
        rejected.is_empty(),
        "MariaDB rejected statements:\n{}",
        rejected.join("\n")
    );

    let mut conn = server.conn("").await;
    let mut compared = 0;
    let mut second = Pipeline::with_source("cf_snapshot", &source, "");
    for pass in 0..2 {
        let pipeline = if pass == 0 {
            &mut streaming
        } else {
            second.start();
            &mut second
        };
        for database in &databases {
            let tables: Vec<String> = conn
                .exec(
                    "SELECT TABLE_NAME FROM information_schema.TABLES \
                     WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1",
                    (database,),
                )
                .await
                .expect("tables");
            for table in tables {
                let key_columns: Vec<String> = conn
                    .exec(
                        "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY'",
                        (database, &table),
                    )
                    .await
                    .expect("key");
                let key = match key_columns.as_slice() {
                    [one] => one.clone(),
                    _ => WHOLE_ROW.to_string(),
                };
                pipeline
                    .wait_equal_mysql(&mut conn, database, &table, &key)
                    .await;
                compared += 1;
            }
        }
    }
    // 55 tables survive the scripts (multitable_dbz_871 drops its four).
    assert_eq!(compared, 2 * 55, "table comparisons");
    assert_eq!(streaming.terminate(), 0);
    assert_eq!(second.terminate(), 0);
}

#[test]
fn splitting_follows_debeziums_runner() {
    let text = "-- header\nCREATE TABLE t (a INT); -- trailing\nINSERT INTO t VALUES (1);\n\
                CREATE FUNCTION f() RETURNS INT BEGIN RETURN 1$$ END;";
    assert_eq!(
        statements(text),
        vec![
            "CREATE TABLE t (a INT)",
            "INSERT INTO t VALUES (1)",
            "CREATE FUNCTION f() RETURNS INT BEGIN RETURN 1; END",
        ]
    );
}
