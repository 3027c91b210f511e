//! A lake that refuses writes — `sink.uri` naming a file, a directory the
//! daemon may not write, a table or log directory that turns unwritable
//! while changes stream — is one behaviour: the daemon stops with exit 2
//! (config: a person must act) naming the path and `sink.uri`, never
//! panics, never calls it a table's error, and once the lake is writable
//! again the next start resumes with every change exactly once.
//!
//! "Unwritable" must hold for root too (tests may run as root, which file
//! permissions do not stop): as root a directory is made immutable
//! (`chattr +i`: no entry can be created in it), otherwise read-only
//! (`chmod 0555`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::lake::{assert_each_change_once, read_log};
use crate::support::{pg, temp_dir, tidewater, Pipeline};

/// A directory nobody (root included) may create entries in, until dropped.
struct Unwritable {
    dir: PathBuf,
    immutable: bool,
}

impl Unwritable {
    /// None when this file system cannot deny root (no `chattr` support).
    fn deny(dir: &Path) -> Option<Unwritable> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let denied = if root {
            Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success())
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).is_ok()
        };
        let guard = Unwritable {
            dir: dir.to_path_buf(),
            immutable: root,
        };
        // Prove it: the daemon must meet a refusal, not a slow disk.
        let probe = dir.join("probe-by-the-test");
        if !denied || std::fs::write(&probe, "x").is_ok() {
            let _ = std::fs::remove_file(&probe);
            eprintln!(
                "cannot make {} unwritable on this file system; skipping",
                dir.display()
            );
            return None;
        }
        Some(guard)
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        if self.immutable {
            let _ = Command::new("chattr").arg("-i").arg(&self.dir).status();
        } else {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755));
        }
    }
}

/// `tidewater <command>` on `config`: exit code and everything printed,
/// failing the test after 60 s (the bug was retrying forever).
fn run_command(command: &str, config: &Path) -> (i32, String) {
    let mut cmd = tidewater();
    cmd.arg(command).arg("--config").arg(config);
    crate::support::code_and_output_within(cmd, 60)
}

/// A Postgres pipeline config whose lake is `uri`.
fn config_with_lake(dir: &Path, name: &str, db: &str, uri: &str) -> PathBuf {
    let path = dir.join("tidewater.toml");
    std::fs::write(
        &path,
        format!(
            "[pipeline]\nname = \"{name}\"\nstate_dir = \"{}\"\n\n\
             [source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n\n\
             [sink]\ntype = \"lake\"\nuri = \"{uri}\"\nflush_interval_ms = 200\n",
            dir.join("state").display(),
            pg().url(db),
        ),
    )
    .unwrap();
    path
}

/// `run` and `check` both stop with exit 2, naming `sink.uri` and `path`,
/// and `run` created no replication slot (it stopped before any work).
async fn refused_at_start(name: &str, db: &str, uri: &str, path: &Path) {
    let dir = temp_dir(&format!("tidewater-{name}"));
    let client = pg().create_database(db).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    let config = config_with_lake(&dir, name, db, uri);
    let shown = path.display().to_string();
    let (code, out) = run_command("run", &config);
    assert_eq!(code, 2, "run: exit 2 (the lake refuses writes):\n{out}");
    assert!(
        out.contains("sink.uri") && out.contains(&shown),
        "run names sink.uri and {shown}:\n{out}"
    );
    assert!(!out.contains("panicked"), "run panicked:\n{out}");
    let slots = client
        .query(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&format!("tidewater_{name}")],
        )
        .await
        .unwrap();
    assert!(slots.is_empty(), "run created a slot before refusing");

    let (code, out) = run_command("check", &config);
    assert_eq!(code, 2, "check: exit 2, as run:\n{out}");
    assert!(
        out.contains("sink.uri") && out.contains(&shown),
        "check names sink.uri and {shown}:\n{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_uri_naming_a_file_is_refused_at_start() {
    let dir = temp_dir("tidewater-lakefile");
    let file = dir.join("not-a-directory");
    std::fs::write(&file, "a file, not a lake").unwrap();
    refused_at_start(
        "lakefile",
        "lakefile",
        &format!("file://{}", file.display()),
        &file,
    )
    .await;
    // A path below a file is refused the same way.
    refused_at_start(
        "lakeunder",
        "lakeunder",
        &format!("file://{}/lake", file.display()),
        &file,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_lake_directory_is_refused_at_start() {
    let dir = temp_dir("tidewater-lakero");
    let lake = dir.join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    let Some(_denied) = Unwritable::deny(&lake) else {
        return;
    };
    refused_at_start(
        "lakero",
        "lakero",
        &format!("file://{}", lake.display()),
        &lake,
    )
    .await;
    drop(_denied);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_directory_unwritable_mid_stream_stops_then_resumes_exactly_once() {
    unwritable_mid_stream("lakemidt", |table| table.to_path_buf()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_log_unwritable_mid_stream_stops_then_resumes_exactly_once() {
    unwritable_mid_stream("lakemidl", |table| table.join("_delta_log")).await;
}

/// Streams into a lake, makes the directory `deny(table dir)` unwritable,
/// writes more: the daemon stops with exit 2 naming sink.uri and the path,
/// without a panic; writable again, a restart lands every change once.
async fn unwritable_mid_stream(name: &str, deny: impl Fn(&Path) -> PathBuf) {
    let client = pg().create_database(name).await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'before ' || g FROM generate_series(1, 50) g",
        )
        .await
        .unwrap();
    let mut pipeline = Pipeline::new(name, &pg().url(name), "");
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    let table = pipeline.table_path("public", "t");
    let denied_dir = deny(&table);
    let Some(denied) = Unwritable::deny(&denied_dir) else {
        return;
    };
    client
        .batch_execute(
            "INSERT INTO t SELECT g, 'during ' || g FROM generate_series(51, 100) g;
             UPDATE t SET v = 'updated' WHERE id <= 10;
             DELETE FROM t WHERE id BETWEEN 91 AND 95",
        )
        .await
        .unwrap();
    // The daemon must stop on its own (it kept running on an unwritable
    // lake if this times out).
    let code = pipeline.wait_exit(Duration::from_secs(90)).await;
    let log = pipeline.log(1);
    assert_eq!(code, 2, "exit 2 (the lake refuses writes):\n{log}");
    assert!(
        log.contains("sink.uri") && log.contains(&table.display().to_string()),
        "the error names sink.uri and {}:\n{log}",
        table.display()
    );
    assert!(!log.contains("panicked"), "a panic reached the log:\n{log}");
    assert!(
        !log.contains("a table cannot be replicated"),
        "called a table's error:\n{log}"
    );

    // Writable again: the next start resumes from the durable marks.
    drop(denied);
    pipeline.start();
    pipeline.wait_equal(&client, "t").await;
    let rows = read_log(&table).await.unwrap();
    assert_each_change_once(&rows);
    // 50 snapshot rows, 50 inserts, 10 updates, 5 deletes.
    assert_eq!(rows.len(), 115, "every change once");
    assert_eq!(pipeline.terminate(), 0);
}
