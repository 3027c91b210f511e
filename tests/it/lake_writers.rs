//! Two tidewater processes pointed at the same lake by mistake: one stops
//! with a clear error at its first commit after the other's, before anything
//! lands twice; the other goes on and the lake equals the source.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::lake::{assert_each_change_once, read_log};
use crate::support::mariadb::maria;
use crate::support::Pipeline;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_on_the_same_lake_stops_cleanly() {
    let server = maria();
    let db = "my_twowriters";
    let mut conn = server.create_database(db).await;
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 1)")
        .await
        .unwrap();
    let source = |server_id: u32| {
        format!(
            "[source]\ntype = \"mysql\"\nurl = \"{}\"\ntables = [\"{db}.*\"]\nserver_id = {server_id}\n",
            server.url(db)
        )
    };
    let mut first = Pipeline::with_source(db, &source(1_700_001), "");
    first.start();
    first.wait_equal_mysql(&mut conn, db, "t", "id").await;
    // The same pipeline name and lake, another replica id.
    let mut second = Pipeline::with_source(db, &source(1_700_002), "");
    let text = std::fs::read_to_string(&second.config).unwrap().replace(
        &second.lake.display().to_string(),
        &first.lake.display().to_string(),
    );
    std::fs::write(&second.config, text).unwrap();
    second.start();
    let mut exited = None;
    for i in 0..200 {
        conn.query_drop(format!("INSERT INTO t VALUES ({}, {i})", 100 + i))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (name, pipeline) in [("first", &mut first), ("second", &mut second)] {
            if let Some(status) = pipeline.child.as_mut().unwrap().try_wait().unwrap() {
                exited = Some((name, status.code(), pipeline.log(1)));
                pipeline.child = None;
            }
        }
        if exited.is_some() {
            break;
        }
    }
    let (name, code, log) = exited.expect("one of the two writers stops");
    eprintln!("{name} stopped with {code:?}");
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("two tidewater processes write the same lake"),
        "{log}"
    );
    let path = first.table_path(db, "t");
    let survivor = if name == "first" {
        &mut second
    } else {
        &mut first
    };
    conn.query_drop("UPDATE t SET v = -1 WHERE id = 1")
        .await
        .unwrap();
    survivor.wait_equal_mysql(&mut conn, db, "t", "id").await;
    assert_each_change_once(&read_log(&path).await.unwrap());
    assert_eq!(survivor.terminate(), 0, "{}", survivor.log(1));
}
