//! One process per pipeline: a second `run` (or `snapshot`) of a running
//! pipeline is refused at start with exit 2 naming the first, which goes on
//! undisturbed (`snapshot --table` asks it to copy the table instead); `status` tells whether a process
//! runs; a SIGKILLed holder does not block the next start.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::lake::{assert_each_change_once, read_log};
use crate::support::mariadb::maria;
use crate::support::{eventually, output_within, pg, tidewater, Pipeline};

/// Runs `tidewater <args> --config <the pipeline's>` to its end; its exit
/// code and stderr.
fn second(pipeline: &Pipeline, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = tidewater();
    cmd.envs(pipeline.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args)
        .arg("--config")
        .arg(&pipeline.config);
    let out = output_within(cmd, 90);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// Every way of starting a second process of the running `pipeline` is
/// refused with exit 2 and names the running one; `snapshot --table`
/// instead asks the running process to copy the table (exit 0).
fn assert_refused(pipeline: &Pipeline, tables: &str) {
    let pid = pipeline.child.as_ref().expect("running").id();
    let mut cmd = tidewater();
    cmd.envs(pipeline.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["snapshot", "--table", tables, "--config"])
        .arg(&pipeline.config);
    let out = output_within(cmd, 90);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains(&format!("asked it to copy {tables} again"))
            && stdout.contains(&format!("pid {pid},")),
        "snapshot --table beside the running process: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for args in [vec!["run"], vec!["snapshot"]] {
        let (code, stderr) = second(pipeline, &args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("is already running")
                && stderr.contains(&format!("pid {pid},"))
                && stderr.contains(&format!("host {},", host())),
            "{args:?} names the running process: {stderr}"
        );
    }
}

/// `status --format json` of the pipeline.
fn process_status(pipeline: &Pipeline) -> serde_json::Value {
    let mut cmd = tidewater();
    cmd.envs(pipeline.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["status", "--format", "json", "--config"])
        .arg(&pipeline.config);
    let out = output_within(cmd, 60);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_a_postgres_pipeline_is_refused_and_the_first_goes_on() {
    let client = pg().create_database("lease_pg").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("lease_pg", &pg().url("lease_pg"), "");
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;

    assert_refused(&pipeline, "public.t");
    let report = process_status(&pipeline);
    assert_eq!(report["process"]["running"], true, "{report}");
    assert_eq!(
        report["process"]["pid"],
        pipeline.child.as_ref().unwrap().id(),
        "{report}"
    );
    assert_eq!(report["tables"][0]["state"], "streaming", "{report}");

    // The first goes on: rows written after the refusals land, once.
    client
        .batch_execute(
            "INSERT INTO t SELECT g, 'late' || g FROM generate_series(51, 80) g;
             UPDATE t SET v = 'changed' WHERE id % 3 = 0;
             DELETE FROM t WHERE id % 10 = 0;",
        )
        .await
        .unwrap();
    pipeline.wait_equal(&client, "t").await;
    let log = read_log(&pipeline.table_path("public", "t")).await.unwrap();
    assert_each_change_once(&log);
    assert!(
        !pipeline.log(1).contains("retrying") && !pipeline.log(1).contains("WARN"),
        "the first process was disturbed:\n{}",
        pipeline.log(1)
    );

    // Stopped: status says so.
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    let report = process_status(&pipeline);
    assert_eq!(report["process"]["running"], false, "{report}");
    assert_eq!(report["tables"][0]["state"], "not running", "{report}");

    // A SIGKILLed holder does not block the next start.
    pipeline.start();
    client
        .batch_execute("INSERT INTO t VALUES (100, 'after the restart')")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "t").await;
    pipeline.kill();
    pipeline.start();
    client
        .batch_execute("INSERT INTO t VALUES (101, 'after the kill')")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "t").await;
    assert!(
        !pipeline.log(3).contains("already running"),
        "{}",
        pipeline.log(3)
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_a_mariadb_pipeline_is_refused_and_the_first_goes_on() {
    let server = maria();
    let mut conn = server.create_database("lease_my").await;
    conn.query_drop(
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(40));
         INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    )
    .await
    .unwrap();
    let mut pipeline = Pipeline::with_source("lease_my", &server.source_toml("lease_my"), "");
    pipeline.start();
    pipeline
        .wait_equal_mysql(&mut conn, "lease_my", "t", "id")
        .await;

    assert_refused(&pipeline, "lease_my.t");
    let report = process_status(&pipeline);
    assert_eq!(report["process"]["running"], true, "{report}");

    // Each refused process would have knocked the first off the binlog
    // (same server id) and committed beside it; the first goes on alone.
    for i in 0..20 {
        conn.query_drop(format!(
            "INSERT INTO t VALUES ({}, 'late'); UPDATE t SET v = 'u{i}' WHERE id = 1",
            10 + i
        ))
        .await
        .unwrap();
    }
    conn.query_drop("DELETE FROM t WHERE id = 2").await.unwrap();
    pipeline
        .wait_equal_mysql(&mut conn, "lease_my", "t", "id")
        .await;
    let log = read_log(&pipeline.table_path("lease_my", "t"))
        .await
        .unwrap();
    assert_each_change_once(&log);
    assert!(
        !pipeline.log(1).contains("retrying") && !pipeline.log(1).contains("WARN"),
        "the first process was disturbed:\n{}",
        pipeline.log(1)
    );

    // A SIGKILLed holder does not block the next start.
    pipeline.kill();
    pipeline.start();
    conn.query_drop("INSERT INTO t VALUES (100, 'after the kill')")
        .await
        .unwrap();
    pipeline
        .wait_equal_mysql(&mut conn, "lease_my", "t", "id")
        .await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
    let report = process_status(&pipeline);
    assert_eq!(report["process"]["running"], false, "{report}");
}

/// On S3 the lease is an object: a second process on this host is refused
/// at once, a SIGKILLed holder's lease (its pid gone on this host) is taken
/// over at once, and one of another host is taken over once it was not
/// renewed for its expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_an_s3_lake_is_refused_and_a_killed_one_is_replaced_at_once() {
    use crate::lake_s3::{s3_pipeline, wait_equal_s3};
    let server = crate::support::s3::s3();
    server.create_bucket("tw-lease");
    let client = pg().create_database("lease_s3").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g;",
        )
        .await
        .unwrap();
    let mut pipeline = s3_pipeline("lease_s3", "tw-lease", &server.endpoint());
    let url = "s3://tw-lease/lake/lease_s3/public/t/";
    pipeline.start();
    wait_equal_s3(&mut pipeline, &client, url).await;

    assert_refused(&pipeline, "public.t");
    let report = process_status(&pipeline);
    assert_eq!(report["process"]["running"], true, "{report}");
    client
        .batch_execute("INSERT INTO t VALUES (100, 'after the refusals')")
        .await
        .unwrap();
    wait_equal_s3(&mut pipeline, &client, url).await;
    // The holder renews its lease (a conditional PUT on the ETag it read).
    let store = tidewater_lake::LakeStore::open(tidewater_lake::LakeLocation::S3 {
        url: url::Url::parse("s3://tw-lease/lake").unwrap(),
        options: crate::support::s3::storage_options(&server.endpoint()),
    })
    .unwrap();
    let read_lease = || {
        let store = store.clone();
        async move {
            store
                .read("lease_s3/_tidewater_lease")
                .await
                .map_err(|e| e.to_string())
                .map(Option::unwrap_or_default)
        }
    };
    let first = read_lease().await.unwrap();
    assert!(
        first.contains(&format!(
            "\"pid\":{}",
            pipeline.child.as_ref().unwrap().id()
        )),
        "{first}"
    );
    eventually("the lease is renewed", Duration::from_secs(30), || {
        let first = first.clone();
        let read = read_lease();
        async move {
            let now = read.await?;
            if now != first && now.contains("renewed_at") {
                Ok(())
            } else {
                Err(format!("still {now}"))
            }
        }
    })
    .await;
    pipeline.assert_running();
    assert!(
        !pipeline.log(1).contains("retrying") && !pipeline.log(1).contains("could not renew"),
        "the first process was disturbed:\n{}",
        pipeline.log(1)
    );

    // Killed: its lease object stays, naming a pid that is gone.
    pipeline.kill();
    pipeline.start();
    client
        .batch_execute("INSERT INTO t VALUES (101, 'after the kill')")
        .await
        .unwrap();
    wait_equal_s3(&mut pipeline, &client, url).await;
    let log = pipeline.log(2);
    assert!(
        !log.contains("already running") && !log.contains("taking over"),
        "{log}"
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
    // A clean stop removes the lease.
    let report = process_status(&pipeline);
    assert_eq!(report["process"]["running"], false, "{report}");
    assert_eq!(read_lease().await.unwrap(), "");

    // A lease left by a holder on another host, which nobody renews: the
    // next start watches it for the expiry (15 s), then takes it over.
    store
        .write(
            "lease_s3/_tidewater_lease",
            "{\"host\":\"elsewhere.invalid\",\"pid\":1,\"since\":\"2026-01-01T00:00:00Z\",\"renewed_at\":\"2026-01-01T00:00:00.000Z\"}\n",
        )
        .await
        .unwrap();
    pipeline.start();
    client
        .batch_execute("INSERT INTO t VALUES (102, 'after the expiry')")
        .await
        .unwrap();
    wait_equal_s3(&mut pipeline, &client, url).await;
    let log = pipeline.log(3);
    assert!(
        log.contains("waiting to see whether it is renewed") && log.contains("taking over"),
        "{log}"
    );
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(3));

    // A lease of another host that is renewed: its holder lives, and the
    // start is refused once it saw a renewal.
    let foreign = |at: u32| {
        format!(
            "{{\"host\":\"other-host.invalid\",\"pid\":7,\"since\":\"2026-01-01T00:00:00Z\",\"renewed_at\":\"2026-01-01T00:00:{at:02}.000Z\"}}\n"
        )
    };
    store
        .write("lease_s3/_tidewater_lease", &foreign(0))
        .await
        .unwrap();
    let renewer = tokio::spawn({
        let store = store.clone();
        async move {
            for at in 1..60 {
                // The other holder's renewal period: the behaviour under
                // test (a lease that is being renewed), not a wait.
                tokio::time::sleep(Duration::from_millis(500)).await;
                store
                    .write("lease_s3/_tidewater_lease", &foreign(at))
                    .await
                    .unwrap();
            }
        }
    });
    let (code, stderr) = second(&pipeline, &["run"]);
    renewer.abort();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("is already running") && stderr.contains("host other-host.invalid, pid 7,"),
        "{stderr}"
    );
}

/// Into a warehouse the lease is a session advisory lock of its own: a
/// second process is refused naming the first, which goes on; once the
/// first is SIGKILLed the next start takes the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_into_a_warehouse_is_refused_and_the_first_goes_on() {
    let source = pg().create_database("lease_wh_src").await;
    let warehouse = pg().create_database("lease_wh_dst").await;
    source
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::warehouse(
        "lease_wh",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
            pg().url("lease_wh_src")
        ),
        &pg().url("lease_wh_dst"),
        "",
    );
    let rows = |n: i64| {
        let warehouse = &warehouse;
        async move {
            let got: i64 = warehouse
                .query_one("SELECT count(*) FROM public.t", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if got == n {
                Ok(())
            } else {
                Err(format!("{got} rows, not {n}"))
            }
        }
    };
    pipeline.start();
    eventually(
        "the snapshot in the warehouse",
        Duration::from_secs(90),
        || rows(20),
    )
    .await;

    assert_refused(&pipeline, "public.t");
    let report = process_status(&pipeline);
    assert_eq!(report["process"]["running"], true, "{report}");
    assert_eq!(
        report["process"]["pid"],
        pipeline.child.as_ref().unwrap().id(),
        "{report}"
    );
    source
        .batch_execute("INSERT INTO t VALUES (21, 'after the refusals')")
        .await
        .unwrap();
    eventually(
        "the insert in the warehouse",
        Duration::from_secs(60),
        || rows(21),
    )
    .await;
    pipeline.assert_running();
    assert!(
        !pipeline.log(1).contains("retrying"),
        "the first process was disturbed:\n{}",
        pipeline.log(1)
    );

    pipeline.kill();
    pipeline.start();
    source
        .batch_execute("INSERT INTO t VALUES (22, 'after the kill')")
        .await
        .unwrap();
    eventually("the insert after the kill", Duration::from_secs(60), || {
        rows(22)
    })
    .await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(2));
    let report = process_status(&pipeline);
    assert_eq!(report["process"]["running"], false, "{report}");
    assert_eq!(report["tables"][0]["state"], "not running", "{report}");
}
