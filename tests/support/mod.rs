//! Test harness: private Postgres servers from the installed binaries, the
//! tidewater daemon as a real child process, and a reader for the lake.
//!
//! One Postgres server is started per test binary (lazily, shared by all tests,
//! each test in its own database). A watchdog process stops it and removes its
//! directory when the test process exits, even after a panic or abort.

#![allow(dead_code)]

pub mod kafka;
pub mod lake;
pub mod mariadb;
pub mod s3;
pub mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PgServer {
    pub dir: PathBuf,
    pub port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a Postgres binary as the `postgres` user when we are root (initdb
/// refuses root), else as ourselves.
fn pg_command(binary: &str) -> Command {
    let path = format!("{PG_BIN}/{binary}");
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--", &path]);
        cmd
    } else {
        Command::new(path)
    }
}

/// Runs `script` (sh) detached, in a session of its own: it must outlive
/// this process to stop a server and remove its files once the tests end.
pub fn spawn_watchdog(script: &str) {
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("watchdog");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn temp_dir(prefix: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

impl PgServer {
    /// Starts a private server; `wal_level` is `logical` unless overridden.
    pub fn start(wal_level: &str) -> PgServer {
        PgServer::start_with(wal_level, false)
    }

    /// A server that takes TCP connections only over TLS (the
    /// [`tls::certs`] server certificate), from roles with a password
    /// (scram-sha-256), on 127.0.0.1 and 127.0.0.2; the harness itself
    /// connects over the Unix socket.
    pub fn start_tls() -> PgServer {
        PgServer::start_with("logical", true)
    }

    fn start_with(wal_level: &str, tls: bool) -> PgServer {
        assert!(
            Path::new(PG_BIN).join("initdb").exists(),
            "Postgres 15 server binaries missing in {PG_BIN}: run scripts/setup"
        );
        let dir = temp_dir("tidewater-pg");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let data = dir.join("data");
        let out = pg_command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        // Every pipeline test leaves its slot behind on the shared server:
        // room for all of them, with margin for the tests to come.
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             wal_level = {wal_level}\nmax_wal_senders = 60\nmax_replication_slots = 120\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 200\n",
            dir.display()
        );
        if tls {
            let certs = tls::certs();
            for (from, to) in [
                (&certs.server_cert, "server.pem"),
                (&certs.server_key, "server.key"),
            ] {
                std::fs::copy(from, data.join(to)).expect("copy server certificate");
            }
            if is_root() {
                let status = Command::new("chown")
                    .args(["postgres", "server.pem", "server.key"])
                    .current_dir(&data)
                    .status()
                    .expect("chown");
                assert!(status.success());
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("chmod server.key");
            conf.push_str(
                "listen_addresses = '127.0.0.1,127.0.0.2'\nssl = on\n\
                 ssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n",
            );
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.0/8 scram-sha-256\n",
            )
            .expect("write pg_hba.conf");
        }
        let mut text = std::fs::read_to_string(data.join("postgresql.conf")).expect("conf");
        text.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), text).expect("write conf");
        let out = pg_command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        // Watchdog: stop the server and remove its files once we are gone.
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {runas}{PG_BIN}/pg_ctl -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            runas = if is_root() {
                "runuser -u postgres -- "
            } else {
                ""
            },
            data = data.display(),
            dir = dir.display(),
        );
        spawn_watchdog(&stop);
        PgServer { dir, port }
    }

    /// Restarts the server: `immediate` is a crash (no shutdown checkpoint,
    /// every connection cut), `fast` a clean stop.
    pub fn restart(&self, mode: &str) {
        let out = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "-m", mode, "restart"])
            .output()
            .expect("pg_ctl restart");
        assert!(
            out.status.success(),
            "pg_ctl restart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A superuser connection over the Unix socket (TCP may ask for TLS
    /// and a password: see [`PgServer::start_tls`]).
    pub async fn client(&self, database: &str) -> Client {
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname(database)
            .connect(NoTls)
            .await
            .expect("connect to test server");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// A fresh database for one test.
    pub async fn create_database(&self, name: &str) -> Client {
        let admin = self.client("postgres").await;
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin.batch_execute(&sql).await.expect("create database");
        }
        self.client(name).await
    }
}

/// The server shared by every test of this binary.
pub fn pg() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(|| PgServer::start("logical"))
}

/// The TLS-only server shared by the TLS tests of this binary.
pub fn pg_tls() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start_tls)
}

/// The tidewater binary under test. It dies with the test thread that
/// started it (PR_SET_PDEATHSIG), so an aborted test leaves no daemon behind.
pub fn tidewater() -> Command {
    use std::os::unix::process::CommandExt;
    // TIDEWATER_BIN picks another build of the binary (e.g. a copy taken
    // right after the build, when several checkouts share one target dir
    // and so one `target/debug/tidewater`).
    let bin =
        std::env::var_os("TIDEWATER_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tidewater").into());
    let mut cmd = Command::new(bin);
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// Runs `wait`, a blocking wait for a child process, without stalling the
/// async test that calls it: on a multi-threaded runtime the worker hands its
/// other tasks (connections, proxies, spawned writers) to another thread.
fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// Runs a command to completion, failing the test after `seconds` instead of
/// hanging on a daemon stuck retrying.
pub fn output_within(cmd: Command, seconds: u64) -> std::process::Output {
    blocking(|| output_within_blocking(cmd, seconds))
}

/// [`output_within`], as its exit code (-1 when killed by a signal) and
/// everything it printed (stdout, then stderr).
pub fn code_and_output_within(cmd: Command, seconds: u64) -> (i32, String) {
    let out = output_within(cmd, seconds);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn output_within_blocking(mut cmd: Command, seconds: u64) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "command did not finish within {seconds} s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The polling interval of this wait.
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Runs `tidewater <command>` (`check`, `run`, …) on a config with this
/// `[source]` section and a scratch lake, with `env` set; returns the exit
/// code and everything it printed.
pub fn run_with_source(command: &str, source_toml: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = temp_dir("tidewater-source");
    let path = dir.join("tidewater.toml");
    std::fs::write(
        &path,
        format!(
            "[pipeline]\nname = \"probe\"\nstate_dir = \"{}\"\n\n{}\n\n[sink]\ntype = \"lake\"\nuri = \"file://{}\"\n",
            dir.join("state").display(),
            source_toml.trim_end(),
            dir.join("lake").display(),
        ),
    )
    .expect("write config");
    let mut cmd = tidewater();
    cmd.arg(command)
        .arg("--config")
        .arg(&path)
        .envs(env.iter().copied());
    let out = output_within(cmd, 120);
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A test pipeline: config file, lake directory and the daemon process.
pub struct Pipeline {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub lake: PathBuf,
    pub child: Option<Child>,
    pub starts: u32,
    /// Environment of the daemon (credentials, …).
    pub env: Vec<(String, String)>,
}

impl Pipeline {
    /// A Postgres pipeline replicating `public.*` of the database at `database_url`.
    pub fn new(name: &str, database_url: &str, extra_sink: &str) -> Pipeline {
        Pipeline::with_source(
            name,
            &format!(
                "[source]\ntype = \"postgres\"\nurl = \"{database_url}\"\ntables = [\"public.*\"]\n"
            ),
            extra_sink,
        )
    }

    /// A pipeline with any source: `source_toml` is the whole `[source]`
    /// section; `extra_sink` is appended to the `[sink]` section.
    pub fn with_source(name: &str, source_toml: &str, extra_sink: &str) -> Pipeline {
        Pipeline::with_sink(name, source_toml, |lake| {
            format!(
                "[sink]\ntype = \"lake\"\nuri = \"file://{}\"\nflush_interval_ms = 200\n{extra_sink}\n",
                lake.display()
            )
        })
    }

    /// A pipeline into an Iceberg lake (`sink.format = "iceberg"`, the
    /// default SQLite catalog next to the lake); `extra_sink` is appended
    /// to the `[sink]` section.
    pub fn iceberg(name: &str, source_toml: &str, extra_sink: &str) -> Pipeline {
        Pipeline::with_source(
            name,
            source_toml,
            &format!("format = \"iceberg\"\n{extra_sink}"),
        )
    }

    /// A pipeline into a warehouse database (`[sink] type = "warehouse"`);
    /// `extra_sink` is appended to the `[sink]` section.
    pub fn warehouse(name: &str, source_toml: &str, url: &str, extra_sink: &str) -> Pipeline {
        Pipeline::with_sink(name, source_toml, |_| {
            format!(
                "[sink]\ntype = \"warehouse\"\nurl = \"{url}\"\nflush_interval_ms = 200\n{extra_sink}\n"
            )
        })
    }

    /// [`Pipeline::warehouse`] from database `source` of the shared
    /// Postgres server (all of `public`) into its database `warehouse`.
    pub fn pg_warehouse(name: &str, source: &str, warehouse: &str, extra_sink: &str) -> Pipeline {
        Pipeline::warehouse(
            name,
            &format!(
                "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
                pg().url(source)
            ),
            &pg().url(warehouse),
            extra_sink,
        )
    }

    /// A pipeline whose `[sink]` section `sink_toml` writes (given the lake
    /// directory).
    pub fn with_sink(
        name: &str,
        source_toml: &str,
        sink_toml: impl FnOnce(&std::path::Path) -> String,
    ) -> Pipeline {
        let dir = temp_dir(&format!("tidewater-{name}"));
        let lake = dir.join("lake");
        let config = dir.join("tidewater.toml");
        std::fs::write(
            &config,
            format!(
                "[pipeline]\nname = \"{name}\"\nstate_dir = \"{}\"\n\n{source}\n\n{}",
                dir.join("state").display(),
                sink_toml(&lake),
                source = source_toml.trim_end(),
            ),
        )
        .expect("write config");
        Pipeline {
            name: name.to_string(),
            dir,
            config,
            lake,
            child: None,
            starts: 0,
            env: Vec::new(),
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("daemon-{}.log", self.starts)))
            .expect("log file");
        let child = tidewater()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tidewater");
        self.child = Some(child);
    }

    pub fn log(&self, start: u32) -> String {
        std::fs::read_to_string(self.dir.join(format!("daemon-{start}.log"))).unwrap_or_default()
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> i32 {
        let mut child = self.child.take().expect("daemon running");
        // SAFETY: plain kill(2) on our own child's pid.
        let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        blocking(|| loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not stop within 60 s of SIGTERM"
            );
            // The polling interval of this wait.
            std::thread::sleep(Duration::from_millis(50));
        })
    }

    /// Fails the test if the daemon exited on its own.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("daemon exited with {status}:\n{}", self.log(self.starts));
            }
        }
    }

    /// Waits (without blocking the runtime) until the daemon exits on its
    /// own; returns its exit code (-1 for a signal). Fails the test if it
    /// still runs after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("daemon running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "the daemon kept running for {timeout:?}:\n{}",
                self.log(self.starts)
            );
            // The polling interval of this wait.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `tidewater snapshot --table T …` for `tables`: copies them again.
    pub fn snapshot_tables(&self, tables: &[&str]) -> std::process::Output {
        let mut cmd = tidewater();
        cmd.arg("snapshot");
        for table in tables {
            cmd.args(["--table", table]);
        }
        cmd.arg("--config").arg(&self.config);
        output_within(cmd, 120)
    }

    /// `tidewater status --format json`.
    pub fn status_json(&self) -> serde_json::Value {
        let mut cmd = tidewater();
        cmd.args(["status", "--format", "json", "--config"])
            .arg(&self.config);
        let out = output_within(cmd, 60);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
            panic!(
                "status json: {err}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    pub fn table_path(&self, schema: &str, table: &str) -> PathBuf {
        use tidewater_lake::layout::path_segment;
        self.lake
            .join(&self.name)
            .join(path_segment(schema))
            .join(path_segment(table))
    }

    /// Waits until the current state of lake table `public.<table>` equals the
    /// source value by value (failing early if the daemon died).
    pub async fn wait_equal(&mut self, client: &tokio_postgres::Client, table: &str) {
        self.wait_equal_within(client, table, Duration::from_secs(90))
            .await
    }

    pub async fn wait_equal_within(
        &mut self,
        client: &tokio_postgres::Client,
        table: &str,
        timeout: Duration,
    ) {
        let path = self.table_path("public", table);
        let qualified = format!("public.{table}");
        let mut attempts = 0;
        eventually(&format!("lake {table} equals the source"), timeout, || {
            attempts += 1;
            if attempts % 8 == 0 {
                self.assert_running();
            }
            let path = path.clone();
            let qualified = qualified.clone();
            async move {
                let log = lake::read_log(&path).await?;
                let mut lake = lake::current_state(&log, "id");
                let mut source = lake::source_state(client, &qualified, "id").await;
                let decimals = lake::decimal_columns(client, &qualified).await;
                lake::trim_decimals(&mut lake, &decimals);
                lake::trim_decimals(&mut source, &decimals);
                lake::compare(&source, &lake)
            }
        })
        .await;
        // Equal is not enough if the daemon died on the way there.
        self.assert_running();
    }

    /// Waits until the current state of lake table `<database>/<table>`
    /// equals MySQL table `database.table` value by value, rows matched on
    /// `key` (failing early if the daemon died).
    pub async fn wait_equal_mysql(
        &mut self,
        conn: &mut mysql_async::Conn,
        database: &str,
        table: &str,
        key: &str,
    ) {
        self.wait_equal_mysql_within(conn, database, table, key, Duration::from_secs(90))
            .await
    }

    pub async fn wait_equal_mysql_within(
        &mut self,
        conn: &mut mysql_async::Conn,
        database: &str,
        table: &str,
        key: &str,
        timeout: Duration,
    ) {
        // A loop rather than `eventually`: each attempt borrows `conn` mutably.
        let path = self.table_path(database, table);
        let qualified = format!("{database}.{table}");
        let deadline = Instant::now() + timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            if attempts % 8 == 0 {
                self.assert_running();
            }
            let result = match lake::read_log(&path).await {
                Ok(log) => {
                    let mut lake = lake::current_state(&log, key);
                    let mut source = mariadb::source_state_mysql(conn, &qualified, key).await;
                    let decimals = mariadb::decimal_columns_mysql(conn, &qualified).await;
                    lake::trim_decimals(&mut lake, &decimals);
                    lake::trim_decimals(&mut source, &decimals);
                    lake::compare(&source, &lake)
                }
                Err(err) => Err(err),
            };
            match result {
                Ok(()) => {
                    self.assert_running();
                    return;
                }
                Err(err) if Instant::now() > deadline => panic!(
                    "lake {qualified} equals the source: not reached within {timeout:?}:\n{err}"
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Waits until lake table `public.<table>` holds exactly `rows` log rows.
    pub async fn wait_log_rows(&self, table: &str, rows: usize) {
        let path = self.table_path("public", table);
        eventually(
            &format!("{rows} rows in lake {table}"),
            Duration::from_secs(90),
            || {
                let path = path.clone();
                async move {
                    let log = lake::read_log(&path).await?;
                    (log.len() == rows)
                        .then_some(())
                        .ok_or(format!("{} rows", log.len()))
                }
            },
        )
        .await;
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The Python of the test readers scripts/setup installs (DuckDB with its
/// delta and iceberg extensions, Polars, deltalake, pyiceberg):
/// `TIDEWATER_READERS_PYTHON`, else `~/.cache/tidewater/readers`.
pub fn readers_python() -> PathBuf {
    let python = std::env::var_os("TIDEWATER_READERS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/tidewater/readers/bin/python3")
        });
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup (it installs the test readers there)",
        python.display()
    );
    python
}

/// A random source for a crash test, seeded from `TIDEWATER_CRASH_SEED` when
/// set (to replay a failure), else at random; the seed is printed.
pub fn crash_rng(what: &str) -> rand::rngs::StdRng {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("TIDEWATER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("{what} seed {seed} (set TIDEWATER_CRASH_SEED to replay)");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Polls `check` until it returns Ok, or panics with its last error.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return,
            Err(err) if Instant::now() > deadline => {
                panic!("{what}: not reached within {timeout:?}:\n{err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The `state` of `table` in a `status --format json` report.
pub fn table_state(report: &serde_json::Value, table: &str) -> Option<serde_json::Value> {
    report["tables"]
        .as_array()?
        .iter()
        .find(|t| t["table"] == table)
        .map(|t| t["state"].clone())
}

/// A folder of the public conformance corpus: `$TIDEWATER_CONFORMANCE/<kind>`,
/// else `shared/conformance/<kind>` next to the repository, else on this
/// machine's shared folder.
pub fn conformance(kind: &str) -> PathBuf {
    let candidates = [
        std::env::var_os("TIDEWATER_CONFORMANCE").map(PathBuf::from),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/conformance"
        ))),
        Some(PathBuf::from("/work/shared/conformance")),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|p| p.join(kind))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "the conformance corpus (set TIDEWATER_CONFORMANCE to the folder holding {kind}/)"
            )
        })
}
