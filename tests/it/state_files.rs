//! A damaged state file is an error a person must act on, never a retry:
//! the stopped tables, the slot marker and a schema history next to the
//! lake, and the stopped tables row of a warehouse, each made unparseable
//! after a pipeline ran. `run` and `status` stop with exit 2 within seconds,
//! naming the file (or row) and what is wrong with it (line and column),
//! without printing its content and without retrying.
//!
//! And a lake whose S3 store cannot be built (a `sink.uri` with an empty
//! path segment, which the object store rejects) is a config error naming
//! `sink.uri` at every command, never a local directory named `s3:`.

use std::path::Path;
use std::time::Duration;

use crate::support::{eventually, pg, temp_dir, tidewater, Pipeline};

/// A value that only the damaged file holds: it must never be printed.
const CONTENT: &str = "row-value-7f3a";

/// `tidewater <args…> --config <config>` (run in `cwd`): exit code and
/// everything printed, failing the test after 60 s (the bug was retrying
/// forever).
fn command_in(cwd: &Path, args: &[&str], config: &Path) -> (i32, String) {
    let mut cmd = tidewater();
    cmd.current_dir(cwd).args(args).arg("--config").arg(config);
    crate::support::code_and_output_within(cmd, 60)
}

fn command(args: &[&str], config: &Path) -> (i32, String) {
    command_in(Path::new("/"), args, config)
}

/// Exit 2, `location` and `problem` named, no content, no retry.
fn assert_refused(what: &str, (code, out): (i32, String), location: &str, problem: &str) {
    assert_eq!(code, 2, "{what}: exit 2 (config class):\n{out}");
    assert!(out.contains(location), "{what} names {location}:\n{out}");
    assert!(out.contains(problem), "{what} says {problem:?}:\n{out}");
    assert!(out.contains("hint:"), "{what} gives a hint:\n{out}");
    assert!(
        !out.contains(CONTENT),
        "{what} printed the file's content:\n{out}"
    );
    assert!(
        !out.contains("retrying") && !out.contains("attempt"),
        "{what} retried:\n{out}"
    );
}

/// A lake pipeline `name` on a new database `db` whose table `t` was
/// snapshotted and streamed one change, then stopped cleanly.
async fn ran_pipeline(name: &str, db: &str) -> Pipeline {
    let client = pg().create_database(db).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(name, &pg().url(db), "");
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    client
        .batch_execute("INSERT INTO t VALUES (2, 'b')")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "t").await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));
    pipeline
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_stopped_tables_file_stops_with_exit_2() {
    let pipeline = ran_pipeline("corruptstopped", "corrupt_stopped").await;
    let file = pipeline
        .lake
        .join(&pipeline.name)
        .join("_tidewater_stopped_tables.json");
    // Torn mid-entry, as a half-restored backup would be.
    std::fs::write(
        &file,
        format!(
            "{{\"tables\": [{{\"schema\": \"public\", \"name\": \"t\", \"reason\": \"{CONTENT}\""
        ),
    )
    .unwrap();
    let shown = file.display().to_string();
    let problem = "it ends too early (truncated) at line 1 column";
    assert_refused("run", command(&["run"], &pipeline.config), &shown, problem);
    assert_refused(
        "status",
        command(&["status"], &pipeline.config),
        &shown,
        problem,
    );
    // Valid JSON of the wrong shape: named as such, still without content.
    std::fs::write(
        &file,
        format!(
            "{{\"tables\": [{{\"schema\": \"public\", \"name\": 7, \"reason\": \"{CONTENT}\"}}]}}"
        ),
    )
    .unwrap();
    assert_refused(
        "run",
        command(&["run"], &pipeline.config),
        &shown,
        "not the structure tidewater writes",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_slot_marker_and_schema_history_stop_with_exit_2() {
    let pipeline = ran_pipeline("corruptmarker", "corrupt_marker").await;
    let marker = pipeline.lake.join(&pipeline.name).join("_tidewater_slot");
    let kept = std::fs::read_to_string(&marker).unwrap();
    assert!(
        kept.contains("\"phase\":\"stream\""),
        "marker after streaming: {kept:?}"
    );
    // Read as "no marker", this lake streamed on as if nothing happened.
    std::fs::write(&marker, format!("{CONTENT}\n")).unwrap();
    assert_refused(
        "run",
        command(&["run"], &pipeline.config),
        &marker.display().to_string(),
        "it is not a phase record tidewater writes",
    );
    std::fs::write(&marker, &kept).unwrap();

    let history = pipeline
        .table_path("public", "t")
        .join("_tidewater_schema_history.json");
    assert!(history.exists(), "a schema history after streaming");
    std::fs::write(
        &history,
        format!("{{\"table\": \"{CONTENT}\" \"versions\": []}}"),
    )
    .unwrap();
    let shown = history.display().to_string();
    let problem = "not valid JSON (expected `,` or `}`) at line 1 column";
    assert_refused("run", command(&["run"], &pipeline.config), &shown, problem);
    assert_refused(
        "status",
        command(&["status"], &pipeline.config),
        &shown,
        problem,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_warehouse_stopped_tables_row_stops_with_exit_2() {
    let source = pg().create_database("corrupt_wh_src").await;
    let warehouse = pg().create_database("corrupt_wh_dst").await;
    source
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    let mut pipeline = Pipeline::warehouse(
        "corruptwh",
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
            pg().url("corrupt_wh_src")
        ),
        &pg().url("corrupt_wh_dst"),
        "",
    );
    pipeline.start();
    eventually(
        "the snapshot in the warehouse",
        Duration::from_secs(60),
        || async {
            match warehouse
                .query_opt("SELECT v FROM public.t WHERE id = 1", &[])
                .await
            {
                Ok(Some(row)) if row.get::<_, String>(0) == "a" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(pipeline.terminate(), 0, "{}", pipeline.log(pipeline.starts));
    warehouse
        .execute(
            "INSERT INTO tidewater.pipeline_state (pipeline, key, value) VALUES ($1, 'stopped_tables', $2)
             ON CONFLICT (pipeline, key) DO UPDATE SET value = EXCLUDED.value",
            &[
                &"corruptwh",
                &format!("[{{\"schema\": \"public\", \"table\": \"t\", \"reason\": \"{CONTENT}\""),
            ],
        )
        .await
        .unwrap();
    let location = "\"tidewater\".pipeline_state, pipeline \"corruptwh\", key \"stopped_tables\"";
    let problem = "it ends too early (truncated) at line 1 column";
    assert_refused(
        "run",
        command(&["run"], &pipeline.config),
        location,
        problem,
    );
    assert_refused(
        "status",
        command(&["status"], &pipeline.config),
        location,
        problem,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_that_cannot_be_built_is_a_config_error() {
    let dir = temp_dir("tidewater-s3-unbuildable");
    let client = pg().create_database("s3_unbuildable").await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // An empty path segment: the object store refuses the prefix when it
    // is built, before any request.
    let uri = "s3://tidewater-test/lake//p";
    let config = dir.join("tidewater.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"s3unbuildable\"\nstate_dir = \"{}\"\n\n\
             [source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n\n\
             [sink]\ntype = \"lake\"\nuri = \"{uri}\"\n\n\
             [sink.s3]\nendpoint = \"http://127.0.0.1:9\"\nregion = \"us-east-1\"\npath_style = true\n",
            dir.join("state").display(),
            pg().url("s3_unbuildable"),
        ),
    )
    .unwrap();
    let cwd = dir.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    for args in [&["run"][..], &["snapshot"], &["status"], &["check"]] {
        let (code, out) = command_in(&cwd, args, &config);
        assert_eq!(code, 2, "{args:?}: exit 2 (config class):\n{out}");
        assert!(
            out.contains("sink.uri") && out.contains(uri) && out.contains("empty path segment"),
            "{args:?} names sink.uri, the uri and why:\n{out}"
        );
        let made: Vec<_> = std::fs::read_dir(&cwd)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            made.is_empty(),
            "{args:?} created {made:?} in its working directory"
        );
    }
}
