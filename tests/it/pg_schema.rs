//! Postgres schema changes while streaming: each change kind, then rows
//! written under it; the lake's current state must equal the source after
//! every step (columns compared by their source names; a column whose type
//! the lake cannot widen in place is read from its versioned column).
//! Renames and defaults, which change rows no log entry touches, make the
//! table be copied again (last test).

use crate::support::lake::read_log;
use crate::support::{output_within, pg, tidewater, Pipeline};

/// The schema changes of both tests, each followed by rows written under it.
const STEPS: [&str; 8] = [
    // Added columns (without a default: existing rows are NULL there too).
    "ALTER TABLE t ADD COLUMN c1 int;
     INSERT INTO t (id, a, d, s, n, c1) VALUES (3, 30, 3.75, 'three', 'z', 33);
     UPDATE t SET c1 = 11 WHERE id = 1;",
    "ALTER TABLE t DROP COLUMN gone;
     INSERT INTO t (id, a, d, s, n) VALUES (4, 40, 4.5, 'four', 'w');",
    // Widened: int → bigint and numeric(5,2) → numeric(12,4) go to
    // versioned columns; varchar(10) → varchar(200) keeps its column.
    "ALTER TABLE t ALTER COLUMN a TYPE bigint;
     INSERT INTO t (id, a, d, s, n) VALUES (5, 9000000000, 5.5, 'five', 'v');
     UPDATE t SET a = a * 1000000 WHERE id = 2;",
    "ALTER TABLE t ALTER COLUMN d TYPE numeric(12,4);
     INSERT INTO t (id, a, d, s, n) VALUES (6, 6, 12345678.1234, 'six', 'u');",
    "ALTER TABLE t ALTER COLUMN s TYPE varchar(200);
     INSERT INTO t (id, a, d, s, n) VALUES (7, 7, 7, repeat('long', 40), 't');",
    "ALTER TABLE t ALTER COLUMN n DROP NOT NULL;
     INSERT INTO t (id, a, d, s, n) VALUES (8, 8, 8, 'eight', NULL);",
    // A change between row changes of one transaction.
    "BEGIN;
     INSERT INTO t (id, a, d, s, n) VALUES (9, 9, 9, 'nine', 'before');
     ALTER TABLE t ADD COLUMN c3 boolean;
     INSERT INTO t (id, a, d, s, n, c3) VALUES (10, 10, 10, 'ten', 'after', true);
     UPDATE t SET c3 = false WHERE id = 9;
     COMMIT;",
    // Narrowing back: bigint → int reuses the original column. (A
    // rewrite that changes values, `USING`, is invisible to logical
    // decoding: the rows that would not fit are deleted first.)
    "DELETE FROM t WHERE a > 2147483647;
     ALTER TABLE t ALTER COLUMN a TYPE int;
     INSERT INTO t (id, a, d, s, n) VALUES (11, 11, 11, 'eleven', 's');
     DELETE FROM t WHERE id = 4;",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_changes_while_streaming_land_in_the_lake() {
    let client = pg().create_database("evolve").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, a int, d numeric(5,2), s varchar(10),
                             n text NOT NULL, gone text);
             INSERT INTO t VALUES (1, 10, 1.25, 'one', 'x', 'g1'), (2, 20, 2.5, 'two', 'y', 'g2');",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("evolve", &pg().url("evolve"), "");
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;

    let steps = STEPS;
    for step in steps {
        client
            .batch_execute(step)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        pipeline.wait_equal(&client, "t").await;
    }
    // The versioned columns exist, and the daemon said why.
    let log = read_log(&pipeline.table_path("public", "t")).await.unwrap();
    assert!(log.len() > 11);
    let text = pipeline.log(1);
    assert!(
        text.contains("lake_column=a__v2") && text.contains("lake_column=d__v2"),
        "{text}"
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    let history = check_history(&pipeline, "public.t", 8);
    // pgoutput carries no DDL text.
    assert!(history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["ddl"].is_null()));
}

/// `status --table T --history` (the daemon stopped): one version per column
/// set that landed, with the versioned columns and why.
pub fn check_history(pipeline: &Pipeline, table: &str, versions: usize) -> serde_json::Value {
    let out = output_within(
        {
            let mut cmd = tidewater();
            cmd.args([
                "status",
                "--format",
                "json",
                "--history",
                "--table",
                table,
                "--config",
            ])
            .arg(&pipeline.config);
            cmd
        },
        60,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let all = history["versions"].as_array().unwrap();
    assert_eq!(all.len(), versions, "{history:#}");
    let column = |v: &serde_json::Value, name: &str| {
        v["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
    };
    // The first version has `gone`, a later one drops it; `a` went to a__v2
    // as a 64-bit integer and came back to `a` when narrowed again.
    assert!(column(&all[0], "gone").is_some(), "{history:#}");
    assert!(column(all.last().unwrap(), "gone").is_none(), "{history:#}");
    assert!(
        all.iter().any(|v| column(v, "a")
            .is_some_and(|c| c["lake_column"] == "a__v2" && c["lake_type"] == "Int64")),
        "{history:#}"
    );
    assert_eq!(
        column(all.last().unwrap(), "a").unwrap()["lake_column"],
        "a"
    );
    assert!(all
        .iter()
        .any(|v| v["notes"].as_array().is_some_and(|n| !n.is_empty())));
    for (i, v) in all.iter().enumerate() {
        assert_eq!(v["version"], i + 1);
        assert!(!v["position"].as_str().unwrap().is_empty(), "{history:#}");
    }
    let text = output_within(
        {
            let mut cmd = tidewater();
            cmd.args(["status", "--history", "--table", table, "--config"])
                .arg(&pipeline.config);
            cmd
        },
        60,
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("version {versions}")), "{text}");
    history
}

/// The same changes written back to back while the daemon is killed
/// (SIGKILL) at random moments in between: every restart resumes with the
/// right schema for every row, and the lake ends equal to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_schema_changes_resumes_with_the_right_schema() {
    use rand::Rng;
    let mut rng = crate::support::crash_rng("schema crash test");
    let client = pg().create_database("evolvekill").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, a int, d numeric(5,2), s varchar(10),
                             n text NOT NULL, gone text);
             INSERT INTO t VALUES (1, 10, 1.25, 'one', 'x', 'g1'), (2, 20, 2.5, 'two', 'y', 'g2');",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(
        "evolvekill",
        &pg().url("evolvekill"),
        "max_batch_rows = 2\n",
    );
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    for (i, step) in STEPS.iter().enumerate() {
        client
            .batch_execute(step)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        if i % 2 == 1 {
            // A random kill point (replayable from the seed): the thing
            // under test, not a wait.
            tokio::time::sleep(std::time::Duration::from_millis(rng.gen_range(0..1500))).await;
            pipeline.kill();
            pipeline.start();
        }
    }
    pipeline.wait_equal(&client, "t").await;
    let log = read_log(&pipeline.table_path("public", "t")).await.unwrap();
    crate::support::lake::assert_each_change_once(&log);
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));
}

/// A renamed column and a column added with a default give the rows
/// already in the table other values than the log holds: the table is
/// copied again, so the current state equals the source for every row, not
/// just the ones changed since. A column added without a default needs no
/// copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_and_defaults_keep_every_row_equal() {
    let client = pg().create_database("evolverename").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, a int, b text);
             INSERT INTO t SELECT g, g, 'b' || g FROM generate_series(1, 200) g;
             CREATE TABLE other (id int PRIMARY KEY, v text);",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("evolverename", &pg().url("evolverename"), "");
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    for step in [
        "ALTER TABLE t RENAME COLUMN b TO title;
         UPDATE t SET a = a + 1000 WHERE id <= 5;
         INSERT INTO other VALUES (1, 'during');",
        // A rename after a change of the same transaction: the stream's
        // first relation still names the old column while the catalog
        // already has the new one.
        "UPDATE t SET a = a + 1 WHERE id = 6;
         ALTER TABLE t RENAME COLUMN a TO amount;
         UPDATE t SET amount = amount + 1 WHERE id = 7;",
        "ALTER TABLE t ADD COLUMN flag boolean NOT NULL DEFAULT true;
         INSERT INTO t (id, amount, title, flag) VALUES (1000, 1, 'new', false);",
        "ALTER TABLE t ADD COLUMN later int;
         UPDATE t SET later = 7 WHERE id = 1;",
    ] {
        client
            .batch_execute(step)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        pipeline.wait_equal(&client, "t").await;
        pipeline.wait_equal(&client, "other").await;
    }
    // A captured table dropped while streaming: its lake table keeps the
    // log, the rest goes on.
    client
        .batch_execute(
            "DROP TABLE other; INSERT INTO t (id, amount, title) VALUES (2000, 2, 'after the drop');",
        )
        .await
        .unwrap();
    pipeline.wait_equal(&client, "t").await;
    assert_eq!(
        read_log(&pipeline.table_path("public", "other"))
            .await
            .unwrap()
            .len(),
        1
    );
    let log = pipeline.log(1);
    assert!(
        log.contains("column b renamed to title")
            && log.contains("column a renamed to amount")
            && log.contains("column flag added with a default"),
        "{log}"
    );
    let rows = read_log(&pipeline.table_path("public", "t")).await.unwrap();
    let truncates = rows.iter().filter(|r| r.op == "t").count();
    assert_eq!(truncates, 3, "one copy per change that needs it");
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}
