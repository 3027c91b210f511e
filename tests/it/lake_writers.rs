//! Two tidewater processes pointed at the same lake by mistake: the second
//! is refused at start by the pipeline's lease. With the lease removed by
//! hand, one stops with a clear error at its first commit after the
//! other's (or, on S3, when its lease renewal finds the other's lease),
//! before anything lands twice; the other goes on and the lake equals the
//! source. On local disk (atomic rename) and on S3 (`If-None-Match`
//! conditional puts).

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::lake::{
    assert_each_change_once, compare, current_state, read_log, read_log_at, LogRow,
};
use crate::support::mariadb::maria;
use crate::support::mariadb::source_state_mysql;
use crate::support::s3::{s3, storage_options, ACCESS_KEY, SECRET_KEY};
use crate::support::Pipeline;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_on_the_same_lake_stops_cleanly() {
    two_writers("my_twowriters", None, 1_700_001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_on_the_same_s3_lake_stops_cleanly() {
    s3().create_bucket("tw-writers");
    two_writers("my_twowriters_s3", Some("tw-writers"), 1_700_011).await;
}

/// `bucket`: the lake is `s3://<bucket>/lake` on the test S3 server, else
/// the first pipeline's local lake.
async fn two_writers(db: &str, bucket: Option<&str>, server_id: u32) {
    let server = maria();
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
    let mut first = Pipeline::with_source(db, &source(server_id), "");
    // The same pipeline name and lake, another replica id.
    let mut second = Pipeline::with_source(db, &source(server_id + 1), "");
    let lake_uri = match bucket {
        Some(bucket) => format!("s3://{bucket}/lake"),
        None => format!("file://{}", first.lake.display()),
    };
    for pipeline in [&mut first, &mut second] {
        let own = format!("file://{}", pipeline.lake.display());
        let mut text = std::fs::read_to_string(&pipeline.config).unwrap().replace(
            &format!("uri = \"{own}\""),
            &format!("uri = \"{lake_uri}\""),
        );
        if bucket.is_some() {
            text.push_str(&format!(
                "\n[sink.s3]\nendpoint = \"{}\"\npath_style = true\n",
                s3().endpoint()
            ));
            pipeline.env = vec![
                ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
                ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
                ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ];
        }
        std::fs::write(&pipeline.config, text).unwrap();
    }
    first.start();
    wait_equal(&mut conn, &lake_uri, db).await;
    // The lease refuses the second at start.
    second.start();
    let refused = second.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(refused, 2, "{}", second.log(1));
    assert!(
        second.log(1).contains("is already running"),
        "{}",
        second.log(1)
    );
    first.assert_running();
    // The lease removed by hand: both run, and the commits themselves
    // keep the lake whole.
    let lease = format!("{db}/_tidewater_lease");
    match bucket {
        Some(bucket) => {
            let store = tidewater_lake::LakeStore::open(tidewater_lake::LakeLocation::S3 {
                url: url::Url::parse(&format!("s3://{bucket}/lake")).unwrap(),
                options: storage_options(&s3().endpoint()),
            })
            .unwrap();
            store.delete(&lease).await.unwrap();
        }
        None => std::fs::remove_file(first.lake.join(&lease)).unwrap(),
    }
    second.start();
    let mut exited = None;
    for i in 0..200 {
        conn.query_drop(format!("INSERT INTO t VALUES ({}, {i})", 100 + i))
            .await
            .unwrap();
        // The writes' pace, and the polling interval of the wait for one
        // of the two to stop.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (name, pipeline) in [("first", &mut first), ("second", &mut second)] {
            if let Some(status) = pipeline.child.as_mut().unwrap().try_wait().unwrap() {
                exited = Some((name, status.code(), pipeline.log(pipeline.starts)));
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
        log.contains("two tidewater processes write the same lake")
            || (bucket.is_some() && log.contains("lost the pipeline lease")),
        "{log}"
    );
    let survivor = if name == "first" {
        &mut second
    } else {
        &mut first
    };
    conn.query_drop("UPDATE t SET v = -1 WHERE id = 1")
        .await
        .unwrap();
    wait_equal(&mut conn, &lake_uri, db).await;
    survivor.assert_running();
    assert_each_change_once(&log_of(&lake_uri, db).await.unwrap());
    assert_eq!(survivor.terminate(), 0, "{}", survivor.log(survivor.starts));
}

/// The change log of `<db>.t` in the lake at `lake_uri` (pipeline `db`).
async fn log_of(lake_uri: &str, db: &str) -> Result<Vec<LogRow>, String> {
    match lake_uri.strip_prefix("file://") {
        Some(dir) => read_log(&std::path::Path::new(dir).join(db).join(db).join("t")).await,
        None => {
            read_log_at(
                &format!("{lake_uri}/{db}/{db}/t/"),
                storage_options(&s3().endpoint()),
            )
            .await
        }
    }
}

async fn wait_equal(conn: &mut mysql_async::Conn, lake_uri: &str, db: &str) {
    let qualified = format!("{db}.t");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let result = match log_of(lake_uri, db).await {
            Ok(log) => compare(
                &source_state_mysql(conn, &qualified, "id").await,
                &current_state(&log, "id"),
            ),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("the lake never equalled the source: {e}")
            }
            // The polling interval of this wait.
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
