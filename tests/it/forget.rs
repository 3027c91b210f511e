//! `tidewater forget`: keys erased from a Delta lake's change log and
//! current-state table while the pipeline streams, with no file, version
//! or log entry left that holds their values (a byte scan of the whole
//! lake, shown to work by a control value that stays), the rest of the
//! table untouched and still streaming, and an audit entry without values.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::lake;
use crate::support::{code_and_output_within, pg, readers_python, tidewater, Pipeline};

/// Every file under `dir` as searchable text (Parquet decoded: values and
/// statistics), by path.
fn files_under(dir: &std::path::Path) -> Vec<(String, String)> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/dump_files.py");
    let out = std::process::Command::new(readers_python())
        .arg(script)
        .arg(dir)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["path"].as_str().unwrap().to_string(),
                v["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn contains(text: &str, token: &str) -> bool {
    text.contains(token)
}

fn forget(pipeline: &Pipeline, args: &[&str]) -> (i32, String) {
    let mut cmd = tidewater();
    cmd.arg("forget")
        .arg("--config")
        .arg(&pipeline.config)
        .args(["--wait", "120"])
        .args(args);
    code_and_output_within(cmd, 300)
}

/// Tokens of person `id`: their e-mail, then its two changes. Random-
/// looking, so no compression of a file can hide one that is there.
fn tokens(id: i32) -> Vec<String> {
    (0..3)
        .map(|v| {
            let mut x = (id as u64) * 31 + v as u64 + 0x9E37_79B9_7F4A_7C15;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            format!("E{:016x}{:016x}", x ^ (x >> 31), x.rotate_left(17))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_erased_from_every_file_and_log_version_while_streaming() {
    let name = "forget_pg";
    let source = pg().create_database(name).await;
    source
        .batch_execute(
            "CREATE TABLE people (id int PRIMARY KEY, email text, note text);
             ALTER TABLE people REPLICA IDENTITY FULL;
             CREATE TABLE other (id int PRIMARY KEY, v int);",
        )
        .await
        .unwrap();
    let rows: Vec<String> = (1..=40)
        .map(|id| format!("({id}, '{}@example.com', 'KEEP{id}NOTE')", tokens(id)[0]))
        .collect();
    source
        .batch_execute(&format!("INSERT INTO people VALUES {}", rows.join(", ")))
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(
        name,
        &pg().url(name),
        "current_state = true\ncurrent_state_interval_ms = 300\nsoft_deletes = true\n",
    );
    pipeline.start();
    pipeline.wait_equal(&source, "people").await;
    // Their history: two more e-mails each, in separate commits, then
    // deleted at the source (the usual order: delete, then erase).
    for v in 1..3 {
        for id in [7, 8, 11] {
            source
                .batch_execute(&format!(
                    "UPDATE people SET email = '{}@example.com' WHERE id = {id}",
                    tokens(id)[v]
                ))
                .await
                .unwrap();
        }
        pipeline.wait_equal(&source, "people").await;
    }
    source
        .batch_execute("DELETE FROM people WHERE id IN (7, 8)")
        .await
        .unwrap();
    pipeline.wait_equal(&source, "people").await;
    let lake_dir = pipeline.lake.clone();
    let before: usize = files_under(&lake_dir)
        .iter()
        .filter(|(_, b)| tokens(7).iter().any(|t| contains(b, t)))
        .count();
    assert!(before > 0, "the lake holds person 7's values before");

    // Erased while writes keep streaming.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let client = pg().client(name).await;
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                client
                    .batch_execute(&format!(
                        "INSERT INTO other VALUES ({n}, {n}); UPDATE people SET note = 'KEEP' || id || 'NOTE{n}' WHERE id = 1 + {n} % 5"
                    ))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            n
        })
    };
    let (code, out) = forget(
        &pipeline,
        &[
            "--table",
            "public.people",
            "--key",
            r#"{"id": 7}"#,
            "--key",
            "8",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("public.people: erased 2 keys: 8 change-log rows, 2 current-state rows"),
        "{out}"
    );
    stop.store(true, Ordering::Relaxed);
    assert!(writer.await.unwrap() > 3);

    // No file of the lake, live or old, data or log, holds their values;
    // the control (a person kept) is still found.
    let files = files_under(&lake_dir);
    for (path, bytes) in &files {
        for id in [7, 8] {
            for token in tokens(id) {
                assert!(!contains(bytes, &token), "{path} still holds {token}");
            }
        }
    }
    for token in tokens(11) {
        assert!(
            files.iter().any(|(_, b)| contains(b, &token)),
            "the control {token} is found: the search works"
        );
    }
    // Versions before the erasure are gone: the log starts at a checkpoint.
    let log_dir = pipeline.table_path("public", "people").join("_delta_log");
    let names: Vec<String> = std::fs::read_dir(&log_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with(".checkpoint.parquet")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n == "00000000000000000000.json"),
        "{names:?}"
    );

    // The rest is intact and streams on.
    source
        .batch_execute("UPDATE people SET email = 'after' WHERE id = 3; INSERT INTO people VALUES (99, 'new', 'n')")
        .await
        .unwrap();
    pipeline.wait_equal(&source, "people").await;
    pipeline.wait_equal(&source, "other").await;
    let log = lake::read_log(&pipeline.table_path("public", "people"))
        .await
        .unwrap();
    assert!(
        log.iter().all(|r| !matches!(r.values.get("id"), Some(serde_json::Value::Number(n)) if n.as_i64() == Some(7) || n.as_i64() == Some(8))),
        "no change-log row of the erased keys"
    );
    // The audit names the erasure by key hash, never a value.
    let audit =
        std::fs::read_to_string(pipeline.lake.join(name).join("_tidewater_erasures.json")).unwrap();
    let entry: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let erasure = &entry["erasures"][0];
    assert_eq!(erasure["outcome"], "erased");
    assert_eq!(erasure["table"], "people");
    assert_eq!(erasure["key_hashes"].as_array().unwrap().len(), 2);
    assert_eq!(erasure["changelog_rows"], 8);
    for token in tokens(7).iter().chain(&tokens(8)) {
        assert!(!audit.contains(token.as_str()), "{audit}");
    }
    pipeline.assert_running();

    // Asked while the pipeline is down: done when it starts.
    assert_eq!(pipeline.terminate(), 0);
    let (code, out) = forget(&pipeline, &["--table", "public.people", "--key", "11"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("recorded"), "{out}");
    pipeline.start();
    crate::support::eventually("the erasure at start", Duration::from_secs(60), || async {
        let files = files_under(&lake_dir);
        let left = files
            .iter()
            .filter(|(_, b)| tokens(11).iter().any(|t| contains(b, t)))
            .count();
        (left == 0)
            .then_some(())
            .ok_or_else(|| format!("{left} files hold person 11"))
    })
    .await;
    pipeline.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_erased_from_a_warehouse_and_its_change_log_while_streaming() {
    let name = "forget_wh";
    let source = pg().create_database(&format!("{name}_src")).await;
    let warehouse = pg().create_database(&format!("{name}_dst")).await;
    source
        .batch_execute(
            "CREATE TABLE people (id int PRIMARY KEY, email text);
             ALTER TABLE people REPLICA IDENTITY FULL;",
        )
        .await
        .unwrap();
    let rows: Vec<String> = (1..=30)
        .map(|id| format!("({id}, '{}')", tokens(id)[0]))
        .collect();
    source
        .batch_execute(&format!("INSERT INTO people VALUES {}", rows.join(", ")))
        .await
        .unwrap();
    let mut pipeline = Pipeline::pg_warehouse(
        name,
        &format!("{name}_src"),
        &format!("{name}_dst"),
        "changelog = true\nsoft_deletes = true\n",
    );
    pipeline.start();
    let count = |sql: &'static str| {
        let warehouse = &warehouse;
        async move {
            warehouse
                .query_one(sql, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(-1)
        }
    };
    crate::support::eventually("the snapshot", Duration::from_secs(60), || async {
        let n = count("SELECT count(*) FROM public.people__changes").await;
        (n == 30)
            .then_some(())
            .ok_or_else(|| format!("{n} change-log rows"))
    })
    .await;
    for id in [7, 8, 11] {
        source
            .batch_execute(&format!(
                "UPDATE people SET email = '{}' WHERE id = {id}",
                tokens(id)[1]
            ))
            .await
            .unwrap();
    }
    source
        .batch_execute("DELETE FROM people WHERE id = 7")
        .await
        .unwrap();
    crate::support::eventually("the changes", Duration::from_secs(60), || async {
        let n = count("SELECT count(*) FROM public.people__changes").await;
        (n == 34)
            .then_some(())
            .ok_or_else(|| format!("{n} change-log rows"))
    })
    .await;

    let (code, out) = forget(
        &pipeline,
        &[
            "--table",
            "public.people",
            "--key",
            "7",
            "--key",
            r#"{"id": 8}"#,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("public.people: erased 2 keys: 5 change-log rows, 2 current-state rows"),
        "{out}"
    );
    assert_eq!(
        count("SELECT count(*) FROM public.people WHERE id IN (7, 8)").await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM public.people__changes WHERE id IN (7, 8)").await,
        0
    );
    // Every page of the warehouse database, on disk.
    warehouse.batch_execute("CHECKPOINT").await.unwrap();
    let row = warehouse
        .query_one(
            "SELECT current_setting('data_directory'), oid::text FROM pg_database \
             WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    let (data_dir, oid): (String, String) = (row.get(0), row.get(1));
    // Heap pages are not compressed: their raw bytes are searched.
    let files =
        crate::masking::files_under(&std::path::Path::new(&data_dir).join("base").join(oid));
    for (path, bytes) in &files {
        for id in [7, 8] {
            for token in &tokens(id)[..2] {
                assert!(
                    !crate::masking::contains(bytes, token),
                    "{} holds {token}",
                    path.display()
                );
            }
        }
    }
    assert!(
        files
            .iter()
            .any(|(_, b)| crate::masking::contains(b, &tokens(11)[1])),
        "the control is found: the search works"
    );
    // Streaming goes on; the audit names key hashes, not values.
    source
        .batch_execute("UPDATE people SET email = 'later' WHERE id = 3")
        .await
        .unwrap();
    crate::support::eventually("a later change", Duration::from_secs(60), || async {
        let n = count("SELECT count(*) FROM public.people WHERE email = 'later'").await;
        (n == 1).then_some(()).ok_or_else(|| format!("{n}"))
    })
    .await;
    let audit: String = warehouse
        .query_one(
            "SELECT value FROM tidewater.pipeline_state WHERE key = 'erasures'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(audit.contains("\"outcome\":\"erased\""), "{audit}");
    assert!(!audit.contains(&tokens(7)[0]), "{audit}");
    pipeline.assert_running();
}

/// Masking hashes the key: `verify` compares hashed with hashed, and
/// `forget` takes the clear key and finds the rows by its hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_key_is_verified_and_forgotten_by_its_clear_value() {
    let name = "forget_masked";
    let source = pg().create_database(name).await;
    source
        .batch_execute(
            "CREATE TABLE people (id int PRIMARY KEY, email text, ssn text, born date, nick text);
             INSERT INTO people SELECT g, 'p' || g || '@example.com', 'ssn' || g,
               date '1990-01-01' + g, 'nick' || g FROM generate_series(1, 20) g;
             UPDATE people SET nick = 'renamed' WHERE id = 5;",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(name, &pg().url(name), crate::masking::MASKING);
    crate::masking::masked_pipeline(&mut pipeline);
    pipeline.start();
    let verify = |args: &[&str]| {
        let mut cmd = tidewater();
        cmd.envs(pipeline.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("verify")
            .arg("--config")
            .arg(&pipeline.config)
            .args(["--wait", "60"])
            .args(args);
        code_and_output_within(cmd, 300)
    };
    crate::support::eventually("the snapshot", Duration::from_secs(90), || async {
        let (code, out) = verify(&[]);
        (code == 0 && out.contains("public.people: equal (20 rows"))
            .then_some(())
            .ok_or(out)
    })
    .await;

    let mut cmd = tidewater();
    cmd.envs(pipeline.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .arg("forget")
        .arg("--config")
        .arg(&pipeline.config)
        .args(["--table", "public.people", "--key", r#"{"id": 5}"#]);
    let (code, out) = code_and_output_within(cmd, 300);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("public.people: erased 1 keys: 1 change-log rows"),
        "{out}"
    );
    // The source still has it: verify now finds it missing, by its hash.
    let (code, out) = verify(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("public.people: 1 keys missing from the lake"),
        "{out}"
    );
    assert!(
        !out.contains(r#"{"id":5}"#),
        "the key is shown hashed: {out}"
    );
    pipeline.assert_running();
}
