//! `[lineage]`: OpenLineage run events of a streaming run (START, RUNNING
//! at checkpoints, COMPLETE on SIGTERM), its initial snapshot (a child run)
//! and reverse-ETL runs (COMPLETE and FAIL), appended to a file. Every event
//! is checked by the official OpenLineage client's models
//! (`tests/support/openlineage_check.py`); the test checks what they say:
//! the jobs, the run ids, the datasets and their schemas, the rows written.

use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, pg, readers_python, tidewater, Pipeline};

fn events(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

fn of_job<'a>(events: &'a [Value], job: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["job"]["name"] == job).collect()
}

fn types(events: &[&Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap().to_string())
        .collect()
}

fn field_names(dataset: &Value) -> Vec<String> {
    dataset["facets"]["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineage_events_describe_runs_snapshots_and_reverse_etl() {
    let client = pg().create_database("lineage_src").await;
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, customer int, total numeric(10,2), secret text);
             INSERT INTO orders SELECT g, g % 5, g * 2.5, 'card' || g FROM generate_series(1, 50) g;
             CREATE TABLE totals (customer int PRIMARY KEY, spent numeric);",
        )
        .await
        .unwrap();
    let url = pg().url("lineage_src");
    let dir = crate::support::temp_dir("tidewater-lineage-events");
    let file = dir.join("lineage.jsonl");
    let port = crate::support::free_port();
    let mut pipeline = Pipeline::with_sink(
        "lineage",
        &format!("[source]\ntype = \"postgres\"\nurl = \"{url}\"\ntables = [\"public.orders\"]\n"),
        |lake| {
            format!(
                "[sink]\ntype = \"lake\"\nuri = \"file://{}\"\nflush_interval_ms = 200\n\n\
                 [masking]\n[[masking.columns]]\ntable = \"public.orders\"\ncolumns = [\"secret\"]\naction = \"exclude\"\n\n\
                 [lineage]\nfile = \"{}\"\nnamespace = \"shop\"\ncheckpoint_interval_ms = 1000\n\n\
                 [[reverse_etl]]\nname = \"spend\"\nquery = \"SELECT customer, sum(total) AS spent FROM public.orders GROUP BY customer\"\n\
                 target_url = \"{url}\"\ntarget_table = \"public.totals\"\nkey = [\"customer\"]\n\n\
                 [[reverse_etl]]\nname = \"broken\"\nquery = \"SELECT id FROM public.missing\"\n\
                 target_url = \"{url}\"\ntarget_table = \"public.nowhere\"\nkey = [\"id\"]\n\n\
                 [metrics]\nlisten = \"127.0.0.1:{port}\"\n",
                lake.display(),
                file.display()
            )
        },
    );
    pipeline.start();
    pipeline.wait_log_rows("orders", 50).await;
    // Changes in two checkpoints more than the interval apart: a RUNNING
    // event names the table with the rows written since the last one.
    client
        .batch_execute("INSERT INTO orders VALUES (51, 1, 9.5, 'card51')")
        .await
        .unwrap();
    pipeline.wait_log_rows("orders", 51).await;
    eventually("a RUNNING event", Duration::from_secs(60), || async {
        client
            .batch_execute("UPDATE orders SET total = total + 1 WHERE id = 1")
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let all = events(&file);
        types(&of_job(&all, "lineage"))
            .contains(&"RUNNING".to_string())
            .then_some(())
            .ok_or(format!("{:?}", types(&of_job(&all, "lineage"))))
    })
    .await;
    // Every event sent so far is counted.
    let (_, metrics) = crate::metrics::get(port, "/metrics");
    let sent: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tidewater_lineage_events_total{outcome=\"sent\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        sent >= 3,
        "START, the snapshot's START and COMPLETE, RUNNING: {metrics}"
    );
    assert_eq!(pipeline.terminate(), 0, "stops cleanly on SIGTERM");

    let mut cmd = tidewater();
    cmd.args(["reverse-etl", "--config"]).arg(&pipeline.config);
    let (code, output) = crate::support::code_and_output_within(cmd, 120);
    assert_ne!(code, 0, "the broken job fails the command: {output}");
    assert!(output.contains("spend:"), "{output}");

    let all = events(&file);
    // The streaming run: START first, COMPLETE last, RUNNING between.
    let run = of_job(&all, "lineage");
    let run_types = types(&run);
    assert_eq!(
        run_types.first().map(String::as_str),
        Some("START"),
        "{run_types:?}"
    );
    assert_eq!(
        run_types.last().map(String::as_str),
        Some("COMPLETE"),
        "{run_types:?}"
    );
    assert!(
        run_types[1..run_types.len() - 1]
            .iter()
            .all(|t| t == "RUNNING"),
        "{run_types:?}"
    );
    let run_id = run[0]["run"]["runId"].as_str().unwrap();
    assert!(
        run.iter().all(|e| e["run"]["runId"] == run_id),
        "one run id"
    );
    assert_eq!(run[0]["job"]["namespace"], "shop");
    assert_eq!(
        run[0]["job"]["facets"]["jobType"]["processingType"],
        "STREAMING"
    );
    let running = run.iter().find(|e| e["eventType"] == "RUNNING").unwrap();
    let output = &running["outputs"][0];
    assert_eq!(output["namespace"], "file");
    assert!(
        output["name"]
            .as_str()
            .unwrap()
            .ends_with("/lineage/public/orders"),
        "{output}"
    );
    assert!(
        output["outputFacets"]["outputStatistics"]["rowCount"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let input = &running["inputs"][0];
    assert_eq!(
        input["namespace"],
        format!("postgres://127.0.0.1:{}", pg().port)
    );
    assert_eq!(input["name"], "lineage_src.public.orders");
    // The schema is the captured one: the excluded column is absent.
    assert_eq!(field_names(input), ["id", "customer", "total"]);
    let sink_fields = field_names(output);
    assert!(sink_fields.starts_with(&["id".into(), "customer".into(), "total".into()]));
    assert!(
        sink_fields.contains(&"_tw_seq".to_string()),
        "{sink_fields:?}"
    );

    // The initial snapshot: a child run of the streaming run.
    let snapshot = of_job(&all, "lineage.snapshot");
    assert_eq!(types(&snapshot), ["START", "COMPLETE"]);
    assert_eq!(snapshot[0]["run"]["runId"], snapshot[1]["run"]["runId"]);
    assert_ne!(snapshot[0]["run"]["runId"], run_id);
    assert_eq!(
        snapshot[1]["run"]["facets"]["parent"]["run"]["runId"],
        run_id
    );
    assert_eq!(
        snapshot[1]["outputs"][0]["name"],
        running["outputs"][0]["name"]
    );

    // Reverse ETL: the lake table in, the target table out.
    let spend = of_job(&all, "lineage.reverse_etl.spend");
    assert_eq!(types(&spend), ["START", "COMPLETE"]);
    assert_eq!(
        spend[1]["inputs"][0]["name"], running["outputs"][0]["name"],
        "reads what the pipeline wrote"
    );
    assert_eq!(spend[1]["outputs"][0]["name"], "lineage_src.public.totals");
    assert_eq!(field_names(&spend[1]["outputs"][0]), ["customer", "spent"]);
    assert_eq!(
        spend[1]["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"],
        5
    );
    let broken = of_job(&all, "lineage.reverse_etl.broken");
    assert_eq!(types(&broken), ["START", "FAIL"]);
    let message = broken[1]["run"]["facets"]["errorMessage"]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("missing"), "{message}");

    // No event holds a row value.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("card1"), "a row value in lineage");

    // Every event fits the OpenLineage models.
    let out = std::process::Command::new(readers_python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/openlineage_check.py"
        ))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ok {}", all.len())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lineage_needs_a_destination() {
    let (code, output) = crate::support::run_with_source(
        "check",
        "[source]\ntype = \"postgres\"\nurl = \"postgres://u@127.0.0.1:1/db\"\n\n[lineage]\nnamespace = \"x\"\n",
        &[],
    );
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains("lineage") && output.contains("lineage.url"),
        "{output}"
    );
}

/// A minimal HTTP endpoint: answers 200 to every POST and keeps (the
/// Authorization header, the body) of each.
async fn endpoint() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let text = String::from_utf8_lossy(&buffer).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let head = text[..end].to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buffer.len() >= end + 4 + length {
                            let auth = text[..end]
                                .lines()
                                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                                .map(|l| l["authorization:".len()..].trim().to_string())
                                .unwrap_or_default();
                            let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length])
                                .to_string();
                            kept.lock().unwrap().push((auth, body));
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineage_events_are_posted_with_the_api_key() {
    let client = pg().create_database("lineage_http").await;
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text);
             INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 20) g;",
        )
        .await
        .unwrap();
    let (port, seen) = endpoint().await;
    let mut pipeline = Pipeline::with_source(
        "lineage_http",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\n",
            pg().url("lineage_http")
        ),
        &format!(
            "\n[lineage]\nurl = \"http://127.0.0.1:{port}/api/v1/lineage\"\napi_key = \"${{TW_LINEAGE_KEY}}\"\n"
        ),
    );
    pipeline
        .env
        .push(("TW_LINEAGE_KEY".into(), "lineage-token-123".into()));
    let mut cmd = tidewater();
    cmd.args(["snapshot", "--config"])
        .arg(&pipeline.config)
        .env("TW_LINEAGE_KEY", "lineage-token-123");
    let (code, output) = crate::support::code_and_output_within(cmd, 120);
    assert_eq!(code, 0, "{output}");
    let posted = seen.lock().unwrap().clone();
    let events: Vec<Value> = posted
        .iter()
        .map(|(_, body)| serde_json::from_str(body).expect("a JSON event"))
        .collect();
    assert!(
        posted
            .iter()
            .all(|(auth, _)| auth == "Bearer lineage-token-123"),
        "{posted:?}"
    );
    // `tidewater snapshot`: one BATCH run, with RUNNING events at its
    // checkpoints.
    let snapshot = of_job(&events, "lineage_http.snapshot");
    let kinds = types(&snapshot);
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("START"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("COMPLETE"),
        "{kinds:?}"
    );
    assert!(
        kinds[1..kinds.len() - 1].iter().all(|t| t == "RUNNING"),
        "{kinds:?}"
    );
    let done = snapshot.last().unwrap();
    assert_eq!(done["job"]["facets"]["jobType"]["processingType"], "BATCH");
    assert_eq!(done["job"]["facets"]["jobType"]["jobType"], "SNAPSHOT");
    assert_eq!(done["inputs"][0]["name"], "lineage_http.public.items");
    let rows: u64 = snapshot
        .iter()
        .filter_map(|e| e["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"].as_u64())
        .sum();
    assert_eq!(
        rows, 20,
        "rows written, over the RUNNING and COMPLETE events"
    );
    assert!(
        !output.contains("lineage-token-123"),
        "the key is never printed"
    );
}
