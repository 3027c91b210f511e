//! The lake on S3 (a moto server on loopback): snapshot and streaming land
//! in `s3://bucket/prefix`, through a proxy that drops connections, answers
//! 503 and 500, delays, and loses answers of requests the server carried
//! out; once the faults stop the lake equals the source, each change once,
//! read back through delta-rs and through Python's `deltalake`.

use std::time::Duration;

use crate::support::lake::{
    assert_each_change_once, compare, current_state, read_log_at, source_state,
};
use crate::support::s3::{s3, storage_options, Fault, FaultProxy, ACCESS_KEY, SECRET_KEY};
use crate::support::{eventually, pg, Pipeline};

pub(crate) fn s3_pipeline(name: &str, bucket: &str, endpoint: &str) -> Pipeline {
    let mut pipeline = Pipeline::new(name, &pg().url(name), "");
    let text = std::fs::read_to_string(&pipeline.config).unwrap();
    let local = format!("file://{}", pipeline.lake.display());
    let text = text.replace(
        &format!("uri = \"{local}\""),
        &format!("uri = \"s3://{bucket}/lake\""),
    ) + &format!(
        "\n[sink.s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\npath_style = true\n"
    );
    std::fs::write(&pipeline.config, text).unwrap();
    pipeline.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ];
    pipeline
}

pub(crate) async fn wait_equal_s3(
    pipeline: &mut Pipeline,
    client: &tokio_postgres::Client,
    url: &str,
) {
    let options = storage_options(&s3().endpoint());
    let mut attempts = 0;
    eventually(
        "the S3 lake equals the source",
        Duration::from_secs(120),
        || {
            attempts += 1;
            if attempts % 8 == 0 {
                pipeline.assert_running();
            }
            let options = options.clone();
            async move {
                let log = read_log_at(url, options).await?;
                compare(
                    &source_state(client, "public.t", "id").await,
                    &current_state(&log, "id"),
                )
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lake_on_s3_survives_network_faults() {
    let server = s3();
    server.create_bucket("tw-faults");
    let proxy = FaultProxy::start(server.port).await;
    let client = pg().create_database("s3faults").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric(10,2));
             INSERT INTO t SELECT g, 'v' || g, g / 4.0 FROM generate_series(1, 2000) g;",
        )
        .await
        .unwrap();
    let mut pipeline = s3_pipeline("s3faults", "tw-faults", &proxy.endpoint());
    pipeline.start();
    let url = "s3://tw-faults/lake/s3faults/public/t/";
    wait_equal_s3(&mut pipeline, &client, url).await;

    let faults = [
        Fault::Drop,
        Fault::Unavailable,
        Fault::ServerError,
        Fault::Delay,
        Fault::LoseAnswer,
    ];
    let mut nudges = 0;
    for (round, fault) in faults.iter().enumerate() {
        proxy.set(*fault);
        for i in 0..10 {
            let id = 10_000 + round * 100 + i;
            client
                .batch_execute(&format!(
                    "INSERT INTO t VALUES ({id}, 'during {fault:?}', {i});
                     UPDATE t SET v = 'changed in round {round}' WHERE id = {};
                     DELETE FROM t WHERE id = {};",
                    round * 10 + i + 1,
                    1000 + round * 10 + i
                ))
                .await
                .unwrap();
            // Spreads the changes over several flushes (every 200 ms), so
            // the fault meets many requests: the load, not a wait.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        // Hold the fault until at least one request met it (the client may
        // be backing off from the previous one).
        let held = std::time::Instant::now();
        while proxy.hits(*fault) == 0 && held.elapsed() < Duration::from_secs(30) {
            client
                .batch_execute(&format!(
                    "INSERT INTO t VALUES ({}, 'nudge', 0)",
                    50_000 + nudges
                ))
                .await
                .unwrap();
            nudges += 1;
            // The polling interval of this wait.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        proxy.set(Fault::None);
        // A moment without faults between two: the load's shape, not a wait
        // for anything (the lake is compared once the faults are over).
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    client
        .batch_execute("INSERT INTO t VALUES (99999, 'after the faults', 1)")
        .await
        .unwrap();
    wait_equal_s3(&mut pipeline, &client, url).await;
    let log = read_log_at(url, storage_options(&server.endpoint()))
        .await
        .unwrap();
    assert_each_change_once(&log);
    for fault in faults {
        assert!(proxy.hits(fault) > 0, "no request met {fault:?}");
        eprintln!("{fault:?}: {} connections", proxy.hits(fault));
    }
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
    let warnings = pipeline
        .log(1)
        .lines()
        .filter(|l| l.contains("WARN"))
        .count();
    eprintln!(
        "{} log rows on S3, {warnings} warnings in the daemon's log",
        log.len()
    );

    // Reverse ETL reads the same S3 lake: its current state pushed into a
    // Postgres table equals the source row by row.
    let target = pg().create_database("s3faults_rev").await;
    let mut config = std::fs::read_to_string(&pipeline.config).unwrap();
    config.push_str(&format!(
        "\n[[reverse_etl]]\nname = \"copy\"\nquery = \"SELECT id, v, n FROM public.t\"\n\
         target_url = \"{}\"\ntarget_table = \"public.t_copy\"\nkey = [\"id\"]\n",
        pg().url("s3faults_rev")
    ));
    std::fs::write(&pipeline.config, config).unwrap();
    let mut cmd = crate::support::tidewater();
    cmd.args(["reverse-etl", "--config"]).arg(&pipeline.config);
    cmd.envs(pipeline.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let out = crate::support::output_within(cmd, 120);
    assert!(
        out.status.success(),
        "reverse-etl from the S3 lake failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = text_rows(&client, "t").await;
    assert!(expected.len() > 2000, "the source has its rows");
    assert_eq!(text_rows(&target, "public.t_copy").await, expected);
}

/// Issue 20 on S3: compaction's rewrite and vacuum's listing and deletes
/// run beside the stream through the object store (no local paths); the
/// files compaction replaced go (retention 0), the table equals the
/// source with each change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_vacuum_run_beside_the_stream_on_s3() {
    use deltalake::logstore::object_store::ObjectStore;
    let server = s3();
    server.create_bucket("tw-maint");
    let client = pg().create_database("s3maint").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric(10,2));
             INSERT INTO t SELECT g, 'v' || g, g / 4.0 FROM generate_series(1, 500) g;",
        )
        .await
        .unwrap();
    let mut pipeline = s3_pipeline("s3maint", "tw-maint", &server.endpoint());
    let text = std::fs::read_to_string(&pipeline.config).unwrap();
    std::fs::write(
        &pipeline.config,
        text.replace(
            "flush_interval_ms = 200\n",
            "flush_interval_ms = 200\ncompaction_interval_ms = 300\ncompaction_min_files = 3\n\
             target_file_size_bytes = 1048576\nvacuum_interval_ms = 1000\nvacuum_retention_hours = 0\n",
        ),
    )
    .unwrap();
    pipeline.start();
    let url = "s3://tw-maint/lake/s3maint/public/t/";
    wait_equal_s3(&mut pipeline, &client, url).await;
    for round in 0..20 {
        client
            .batch_execute(&format!(
                "UPDATE t SET v = 'round {round}' WHERE id = {};
                 INSERT INTO t VALUES ({}, 'new', {round});",
                round + 1,
                1000 + round
            ))
            .await
            .unwrap();
        // Paces the rounds over many flushes (every 200 ms): the workload
        // that makes small files, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    wait_equal_s3(&mut pipeline, &client, url).await;
    // Parquet objects under the table on S3, and live files.
    let counts = || async {
        deltalake::aws::register_handlers(None);
        let table = deltalake::open_table_with_storage_options(
            url::Url::parse(url).unwrap(),
            storage_options(&server.endpoint()),
        )
        .await
        .map_err(|e| e.to_string())?;
        let live = table
            .snapshot()
            .map_err(|e| e.to_string())?
            .log_data()
            .iter()
            .count();
        let store = table.log_store().object_store(None);
        // Not partitioned: the data files are at the table's root.
        let listing = store
            .list_with_delimiter(None)
            .await
            .map_err(|e| e.to_string())?;
        let parquet = listing
            .objects
            .iter()
            .filter(|o| o.location.as_ref().ends_with(".parquet"))
            .count();
        Ok::<_, String>((live, parquet))
    };
    eventually(
        "the table compacted and vacuumed on S3",
        Duration::from_secs(60),
        || {
            let log = pipeline.log(1);
            async move {
                let (live, parquet) = counts().await?;
                (log.contains("compacted small files")
                    && log.contains("deleted files no version needs any more")
                    && live <= 6
                    && parquet <= live + 3)
                    .then_some(())
                    .ok_or(format!("{live} live files, {parquet} parquet objects"))
            }
        },
    )
    .await;
    wait_equal_s3(&mut pipeline, &client, url).await;
    let log = read_log_at(url, storage_options(&server.endpoint()))
        .await
        .unwrap();
    assert_each_change_once(&log);
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(1));
}

/// (id, v, n) of every row as text, by id.
async fn text_rows(
    client: &tokio_postgres::Client,
    table: &str,
) -> Vec<(String, Option<String>, Option<String>)> {
    let sql = format!("SELECT id::text, v, n::text FROM {table} x ORDER BY x.id");
    client
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}
