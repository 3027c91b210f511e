//! The demo's own databases pass `tidewater check` without a warning:
//! `scripts/demo` and `scripts/demo mysql` create them from these files.

use std::path::Path;
use std::process::Command;

use crate::support::mariadb::maria;
use crate::support::{run_with_source, PgServer, PG_BIN};

fn demo_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Issue 18 (8): `check` on the Postgres demo database printed warnings
/// (TOAST columns without REPLICA IDENTITY FULL, unbounded slot WAL).
/// A private server: the demo's file sets a server setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_the_postgres_demo_database_prints_no_warning() {
    let server = PgServer::start("logical");
    server.create_database("shop").await;
    let out = Command::new(format!("{PG_BIN}/psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U"])
        .args(["postgres", "-d", "shop", "-p"])
        .arg(server.port.to_string())
        .arg("-f")
        .arg(demo_file("demo-shop.sql"))
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let source = format!(
        "[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.*\"]\n",
        server.url("shop")
    );
    let (code, out) = run_with_source("check", &source, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("4 table(s) selected") && !out.contains("warning"),
        "{out}"
    );
}

/// The same for `scripts/demo mysql` (its database needs no change today;
/// this keeps it so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_the_mysql_demo_database_prints_no_warning() {
    let server = maria();
    drop(server.create_database("demo_shop").await);
    server
        .run_script("demo_shop", &demo_file("demo-shop-mysql.sql"))
        .expect("demo schema");
    let source = format!(
        "[source]\ntype = \"mysql\"\nurl = \"{}\"\ntables = [\"demo_shop.*\"]\n",
        server.url("demo_shop")
    );
    let (code, out) = run_with_source("check", &source, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("4 table(s) selected") && !out.contains("warning"),
        "{out}"
    );
}
