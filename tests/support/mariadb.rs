//! A private MariaDB 10.11 server for the tests, and the rows of a MySQL
//! table in the canonical form of [`super::lake::canon`].
//!
//! One server per test binary ([`maria`]), started from the installed
//! binaries in a temporary directory on a free port, configured for CDC (row
//! binlog with full images and full metadata) and with a `cdc`/`cdc`
//! replication user. Tests share it, each in its own database. A watchdog
//! process kills it and removes its directory when the test process exits,
//! even after a panic or abort; [`MariaServer::restart`] keeps the port and the
//! datadir, so the watchdog finds the new process through the pid file.
//! Restarting the shared server would break the tests running beside it: a
//! test that restarts the server starts a private one with
//! [`MariaServer::start_new`] (about a second) and drops it at the end.
//!
//! Source rows are read with the binary protocol so floats arrive as the
//! exact IEEE values and temporals as structured values, never through text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Value as MyValue};
use serde_json::Value;

use super::lake::Row;
use super::{free_port, temp_dir};

pub const MARIADBD: &str = "/usr/sbin/mariadbd";
/// The replication user the daemon connects as (password is the same).
/// It has exactly the README's MariaDB grants: these on `*.*`, and SELECT
/// on each test's database ([`MariaServer::create_database`]).
pub const CDC_USER: &str = "cdc";
pub const CDC_GLOBAL_GRANTS: &str = "REPLICATION SLAVE, BINLOG MONITOR";

/// How long a start may take before the test fails (it takes well under a
/// second on an idle machine; a loaded CI box with 2 cores is slower).
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct MariaServer {
    pub dir: PathBuf,
    pub port: u16,
    config: PathBuf,
    child: Mutex<Option<Child>>,
}

/// The server shared by every test of this binary.
pub fn maria() -> &'static MariaServer {
    static SERVER: OnceLock<MariaServer> = OnceLock::new();
    SERVER.get_or_init(MariaServer::start_new)
}

/// A server reporting a MySQL 5.7 version, for Debezium's MySQL connector.
pub fn maria_as_mysql57() -> &'static MariaServer {
    static SERVER: OnceLock<MariaServer> = OnceLock::new();
    SERVER.get_or_init(MariaServer::start_new_as_mysql57)
}

/// The TLS server shared by the TLS tests of this binary.
pub fn maria_tls() -> &'static MariaServer {
    static SERVER: OnceLock<MariaServer> = OnceLock::new();
    SERVER.get_or_init(MariaServer::start_new_tls)
}

impl MariaServer {
    /// Initialises a datadir, starts the server and creates the `cdc` user.
    pub fn start_new() -> MariaServer {
        MariaServer::start_with(false, false)
    }

    /// Like [`Self::start_new`], with TLS (the [`super::tls::certs`] server
    /// certificate) and listening on 127.0.0.1 and 127.0.0.2. Plain
    /// connections are still taken: a user created `REQUIRE SSL` is what
    /// proves a connection encrypted.
    pub fn start_new_tls() -> MariaServer {
        MariaServer::start_with(true, false)
    }

    /// Like [`Self::start_new`], reporting its version as
    /// `5.7.99-<version>-MariaDB`: Debezium's MySQL connector refuses
    /// "10.x" (and tidewater still sees MariaDB in the text).
    pub fn start_new_as_mysql57() -> MariaServer {
        MariaServer::start_with(false, true)
    }

    fn start_with(tls: bool, as_mysql57: bool) -> MariaServer {
        assert!(
            Path::new(MARIADBD).exists(),
            "MariaDB server binary missing at {MARIADBD}: run scripts/setup"
        );
        let dir = temp_dir("tidewater-maria");
        let port = free_port();
        let config = dir.join("my.cnf");
        std::fs::create_dir(dir.join("tmp")).expect("tmp dir");
        let mut text = server_config(&dir, port);
        if as_mysql57 {
            let out = Command::new(MARIADBD)
                .arg("--version")
                .output()
                .expect("mariadbd --version");
            let text_out = String::from_utf8_lossy(&out.stdout).to_string();
            let version = text_out
                .split_whitespace()
                .find_map(|w| w.split_once("-MariaDB").map(|(v, _)| v))
                .unwrap_or("10.11.0")
                .to_string();
            text.push_str(&format!("version=5.7.99-{version}-MariaDB\n"));
        }
        if tls {
            let certs = super::tls::certs();
            text = text.replace(
                "bind-address=127.0.0.1\n",
                "bind-address=127.0.0.1,127.0.0.2\n",
            );
            text.push_str(&format!(
                "ssl-ca={}\nssl-cert={}\nssl-key={}\n",
                certs.ca.display(),
                certs.server_cert.display(),
                certs.server_key.display()
            ));
        }
        std::fs::write(&config, text).expect("write my.cnf");
        let server = MariaServer {
            dir,
            port,
            config,
            child: Mutex::new(None),
        };
        server.spawn_watchdog();
        let out = Command::new("mariadb-install-db")
            .arg(format!("--defaults-file={}", server.config.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .output()
            .expect("mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            server.error_log()
        );
        server.start();
        server.sql(
            "",
            &format!(
                "CREATE USER IF NOT EXISTS {CDC_USER}@'%' IDENTIFIED BY '{CDC_USER}';\n\
                 GRANT {CDC_GLOBAL_GRANTS} ON *.* TO {CDC_USER}@'%';"
            ),
        );
        server
    }

    /// Kills the server and removes its directory once this process is gone.
    fn spawn_watchdog(&self) {
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             [ -f {pidfile} ] && kill -9 $(cat {pidfile}) 2>/dev/null; sleep 0.5; rm -rf {dir}",
            pid = std::process::id(),
            pidfile = self.dir.join("mariadb.pid").display(),
            dir = self.dir.display(),
        );
        super::spawn_watchdog(&stop);
    }

    /// Starts `mariadbd` on the existing datadir and waits until it answers.
    pub fn start(&self) {
        let mut slot = self.child.lock().expect("child lock");
        assert!(slot.is_none(), "MariaDB already running");
        // Not tied to the starting thread (PR_SET_PDEATHSIG would kill the
        // shared server when the first test's thread ends): the watchdog
        // cleans up.
        let mut child = Command::new(MARIADBD)
            .arg(format!("--defaults-file={}", self.config.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mariadbd");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("mariadbd exited with {status}:\n{}", self.error_log());
            }
            if self.ping() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "mariadbd not ready within {START_TIMEOUT:?}:\n{}",
                    self.error_log()
                );
            }
            // The polling interval of this wait.
            std::thread::sleep(Duration::from_millis(50));
        }
        *slot = Some(child);
    }

    /// SIGTERM (a clean shutdown: the binlog is closed and rotated on the
    /// next start) and waits for the process to exit.
    pub fn stop(&self) {
        let mut slot = self.child.lock().expect("child lock");
        let mut child = slot.take().expect("MariaDB running");
        // SAFETY: plain kill(2) on our own child's pid.
        let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to mariadbd failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mariadbd did not stop within {STOP_TIMEOUT:?} of SIGTERM");
            }
            // The polling interval of this wait.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops and starts the server on the same port and datadir.
    pub fn restart(&self) {
        // Called from async tests: a blocking wait, announced to the runtime.
        super::blocking(|| {
            self.stop();
            self.start();
        })
    }

    /// The server's error log (startup failures, crash reports).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    fn ping(&self) -> bool {
        self.admin()
            .arg("--connect-timeout=1")
            .arg("ping")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn admin(&self) -> Command {
        let mut cmd = Command::new("mariadb-admin");
        cmd.args(["--no-defaults", "-h127.0.0.1", "-uroot"])
            .arg(format!("-P{}", self.port));
        cmd
    }

    fn cli(&self, database: &str) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.args([
            "--no-defaults",
            "--default-character-set=utf8mb4",
            "-h127.0.0.1",
            "-uroot",
        ])
        .arg(format!("-P{}", self.port));
        if !database.is_empty() {
            cmd.arg(database);
        }
        cmd
    }

    /// The daemon's URL: the replication user, TCP, the given database
    /// (empty for none).
    pub fn url(&self, database: &str) -> String {
        format!(
            "mysql://{CDC_USER}:{CDC_USER}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// The superuser's URL (no password).
    pub fn root_url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    /// The `[source]` section of a daemon config replicating every table of
    /// `database`.
    pub fn source_toml(&self, database: &str) -> String {
        format!(
            "[source]\ntype = \"mysql\"\nurl = \"{}\"\ntables = [\"{database}.*\"]\n",
            self.url(database)
        )
    }

    /// A root connection, utf8mb4, session time zone UTC.
    pub async fn conn(&self, database: &str) -> Conn {
        let opts = Opts::from_url(&self.root_url(database)).expect("mysql url");
        let mut conn = Conn::new(opts).await.expect("connect to test MariaDB");
        conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
            .await
            .expect("session settings");
        conn
    }

    /// A fresh database for one test, readable by the `cdc` user, and a
    /// root connection to it.
    pub async fn create_database(&self, name: &str) -> Conn {
        let mut admin = self.conn("").await;
        admin
            .query_drop(format!(
                "DROP DATABASE IF EXISTS `{name}`; \
                 CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin; \
                 GRANT SELECT ON `{name}`.* TO {CDC_USER}@'%'"
            ))
            .await
            .expect("create database");
        drop(admin);
        self.conn(name).await
    }

    /// Runs statements through the `mariadb` CLI; returns its tab-separated
    /// output (no column names) or its stderr.
    pub fn try_sql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = self
            .cli(database)
            .args(["--batch", "--skip-column-names", "-e", sql])
            .output()
            .expect("run mariadb");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Like [`Self::try_sql`], failing the test on an error.
    pub fn sql(&self, database: &str, sql: &str) -> String {
        self.try_sql(database, sql)
            .unwrap_or_else(|err| panic!("SQL failed: {err}\n{sql}"))
    }

    /// Replays a `.sql` file through the `mariadb` CLI (so `DELIMITER` and
    /// friends work); the error is the CLI's stderr.
    pub fn run_script(&self, database: &str, path: &Path) -> Result<(), String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let out = self
            .cli(database)
            .stdin(file)
            .output()
            .map_err(|e| format!("run mariadb: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// Only private servers ([`MariaServer::start_new`] in a test) are dropped;
/// the shared one lives until the watchdog removes it.
impl Drop for MariaServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.get_mut().ok().and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn server_config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    // tmpdir: private, since two servers bootstrapping at once with the
    // default /tmp collide on internal temporary table names (and crash).
    // innodb_flush_log_at_trx_commit/sync_binlog: throwaway data, no fsync per
    // commit. Buffer pool and performance_schema: keep the RSS small.
    format!(
        "[mariadbd]\n\
         user=root\n\
         datadir={d}/data\n\
         socket={d}/mariadb.sock\n\
         pid-file={d}/mariadb.pid\n\
         log_error={d}/error.log\n\
         tmpdir={d}/tmp\n\
         port={port}\n\
         bind-address=127.0.0.1\n\
         skip-name-resolve\n\
         server_id=1\n\
         log_bin={d}/binlog\n\
         binlog_format=ROW\n\
         binlog_row_image=FULL\n\
         binlog_row_metadata=FULL\n\
         innodb_flush_log_at_trx_commit=2\n\
         sync_binlog=0\n\
         character-set-server=utf8mb4\n\
         innodb_buffer_pool_size=64M\n\
         innodb_log_file_size=16M\n\
         performance_schema=OFF\n\
         max_connections=200\n"
    )
}

/// How a column's values are turned into the canonical form; decided from
/// information_schema.COLUMNS.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    /// Integers and YEAR: decimal text.
    Integer,
    /// DECIMAL: the server's text, which is the exact value at scale.
    Decimal,
    Float,
    Double,
    /// BIT(n): the big-endian unsigned value as decimal text.
    Bit,
    Date,
    /// DATETIME and TIMESTAMP (the session is UTC): µs since the epoch.
    DateTime,
    /// TIME: signed µs.
    Time,
    /// Character types, ENUM, JSON, UUID, INET6: the text.
    Text,
    /// Binary strings: hex.
    Binary,
    /// SET: a JSON array of labels.
    Set,
    /// Geometry: hex of WKB (SRID 0) or EWKB.
    Geometry,
}

fn form_of(data_type: &str, charset: Option<&str>) -> Form {
    match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "year" => Form::Integer,
        "decimal" => Form::Decimal,
        "float" => Form::Float,
        "double" => Form::Double,
        "bit" => Form::Bit,
        "date" => Form::Date,
        "datetime" | "timestamp" => Form::DateTime,
        "time" => Form::Time,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Form::Binary,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext"
            if charset.is_none() || charset == Some("binary") =>
        {
            Form::Binary
        }
        "set" => Form::Set,
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => Form::Geometry,
        _ => Form::Text,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Days from 1970-01-01 to a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Geometry as MySQL/MariaDB return it (4-byte LE SRID, then WKB) to WKB, or
/// EWKB when the SRID is not 0.
pub fn geometry_canon(bytes: &[u8]) -> String {
    assert!(bytes.len() >= 9, "geometry value too short: {}", hex(bytes));
    let srid = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    let wkb = &bytes[4..];
    if srid == 0 {
        return hex(wkb);
    }
    let little = wkb[0] == 1;
    let word: [u8; 4] = wkb[1..5].try_into().expect("4 bytes");
    let (type_word, srid_bytes) = if little {
        (
            (u32::from_le_bytes(word) | 0x2000_0000).to_le_bytes(),
            srid.to_le_bytes(),
        )
    } else {
        (
            (u32::from_be_bytes(word) | 0x2000_0000).to_be_bytes(),
            srid.to_be_bytes(),
        )
    };
    let mut out = vec![wkb[0]];
    out.extend_from_slice(&type_word);
    out.extend_from_slice(&srid_bytes);
    out.extend_from_slice(&wkb[5..]);
    hex(&out)
}

fn text(bytes: Vec<u8>, column: &str) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("column {column}: not UTF-8: {e}"))
}

fn mismatch(column: &str, form: Form, value: &MyValue) -> ! {
    panic!("column {column}: unexpected {value:?} for {form:?}")
}

/// One binary-protocol value in canonical form.
fn canon_value(column: &str, form: Form, value: MyValue) -> Value {
    if value == MyValue::NULL {
        return Value::Null;
    }
    let s = match (form, value) {
        (Form::Integer, MyValue::Int(v)) => v.to_string(),
        (Form::Integer, MyValue::UInt(v)) => v.to_string(),
        // The text protocol would send these; kept for robustness.
        (Form::Integer | Form::Decimal, MyValue::Bytes(b)) => text(b, column),
        (Form::Float, MyValue::Float(v)) => format!("{:08x}", v.to_bits()),
        (Form::Double, MyValue::Double(v)) => format!("{:016x}", v.to_bits()),
        (Form::Bit, MyValue::Bytes(b)) => {
            assert!(b.len() <= 8, "column {column}: BIT wider than 64 bits");
            b.iter()
                .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte))
                .to_string()
        }
        (Form::Bit, MyValue::UInt(v)) => v.to_string(),
        (Form::Bit, MyValue::Int(v)) => v.to_string(),
        (Form::Date | Form::DateTime, MyValue::Date(y, mo, d, h, mi, s, us)) => {
            // Zero dates and dates with a zero month or day have no instant.
            if mo == 0 || d == 0 {
                return Value::Null;
            }
            let days = days_from_civil(i64::from(y), i64::from(mo), i64::from(d));
            if form == Form::Date {
                days.to_string()
            } else {
                let seconds =
                    days * 86_400 + i64::from(h) * 3_600 + i64::from(mi) * 60 + i64::from(s);
                (seconds * 1_000_000 + i64::from(us)).to_string()
            }
        }
        (Form::Time, MyValue::Time(negative, days, h, mi, s, us)) => {
            let seconds =
                i64::from(days) * 86_400 + i64::from(h) * 3_600 + i64::from(mi) * 60 + i64::from(s);
            let micros = seconds * 1_000_000 + i64::from(us);
            (if negative { -micros } else { micros }).to_string()
        }
        (Form::Text, MyValue::Bytes(b)) => text(b, column),
        (Form::Binary, MyValue::Bytes(b)) => hex(&b),
        (Form::Set, MyValue::Bytes(b)) => {
            let labels = text(b, column);
            // The server lists the members in definition order; labels
            // cannot contain commas.
            return Value::Array(
                labels
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| Value::String(l.to_string()))
                    .collect(),
            );
        }
        (Form::Geometry, MyValue::Bytes(b)) => geometry_canon(&b),
        (form, value) => mismatch(column, form, &value),
    };
    Value::String(s)
}

/// The rows of a source table (`db.table`, or `table` in the connection's
/// database) in canonical form, keyed like [`super::lake::current_state`]
/// (`key` = [`super::lake::WHOLE_ROW`] for tables without a usable key).
pub async fn source_state_mysql(conn: &mut Conn, table: &str, key: &str) -> BTreeMap<String, Row> {
    conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
        .await
        .expect("session settings");
    let (database, table) = match table.split_once('.') {
        Some((d, t)) => (d.to_string(), t.to_string()),
        None => {
            let current: Option<String> = conn
                .query_first("SELECT DATABASE()")
                .await
                .expect("current database")
                .flatten();
            (current.expect("no database selected"), table.to_string())
        }
    };
    let columns: Vec<(String, String, Option<String>)> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&database, &table),
        )
        .await
        .expect("source columns");
    assert!(!columns.is_empty(), "no columns for {database}.{table}");
    let forms: Vec<Form> = columns
        .iter()
        .map(|(_, data_type, charset)| form_of(&data_type.to_lowercase(), charset.as_deref()))
        .collect();
    let select = columns
        .iter()
        .map(|(name, _, _)| format!("`{}`", name.replace('`', "``")))
        .collect::<Vec<_>>()
        .join(", ");
    // A prepared statement: the binary protocol.
    let rows: Vec<mysql_async::Row> = conn
        .exec(format!("SELECT {select} FROM `{database}`.`{table}`"), ())
        .await
        .expect("source rows");
    let mut state = BTreeMap::new();
    for row in rows {
        let mut values = Row::new();
        for (((name, _, _), form), value) in columns.iter().zip(&forms).zip(row.unwrap()) {
            values.insert(name.clone(), canon_value(name, *form, value));
        }
        if key == super::lake::WHOLE_ROW {
            super::lake::insert_whole_row(&mut state, values);
        } else {
            let k = values.get(key).cloned().unwrap_or(Value::Null).to_string();
            state.insert(k, values);
        }
    }
    state
}

/// MySQL/MariaDB DECIMAL columns that land as Delta decimals (precision up
/// to 38), compared by value: see [`super::lake::decimal_columns`].
pub async fn decimal_columns_mysql(conn: &mut Conn, table: &str) -> Vec<String> {
    let (database, table) = table.split_once('.').expect("database.table");
    conn.exec(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND DATA_TYPE = 'decimal' \
           AND NUMERIC_PRECISION <= 38",
        (database, table),
    )
    .await
    .expect("decimal columns")
}
