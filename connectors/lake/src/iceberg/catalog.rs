//! The Iceberg SQL catalog: the two tables pyiceberg's `SqlCatalog` and
//! Java's `JdbcCatalog` share, on SQLite (a file next to a local lake, the
//! embedded default) or Postgres (shared by many writers and readers).
//!
//! ```text
//!  iceberg_tables(catalog_name, table_namespace, table_name,      PK: the first three
//!                 metadata_location, previous_metadata_location, iceberg_type)
//!  iceberg_namespace_properties(catalog_name, namespace, property_key, property_value)
//!
//!  commit = UPDATE iceberg_tables SET metadata_location = $new, previous_… = $old
//!           WHERE <the table> AND metadata_location = $old      (1 row: ours; 0: conflict)
//! ```
//!
//! The compare-and-swap on `metadata_location` is the whole commit: the new
//! metadata file is written first under a name no one else uses, and it
//! becomes the table only if nobody swapped since it was read. A swap whose
//! answer was lost (the connection dropped) is settled by reading the row
//! back: it names our file or it does not.

use std::path::PathBuf;
use std::sync::Arc;

use tidewater_core::ErrorClass;
use tidewater_endpoint::url::SecretUrl;
use tokio::sync::Mutex;
use tracing::warn;

use crate::error::LakeError;

/// Where the SQL catalog lives.
#[derive(Clone, PartialEq, Eq)]
pub enum SqlBackend {
    Sqlite(PathBuf),
    Postgres(SecretUrl),
}

impl std::fmt::Debug for SqlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SqlBackend::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            SqlBackend::Postgres(_) => f.write_str("postgres:<url redacted>"),
        }
    }
}

/// A table's row: its current metadata file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub metadata_location: String,
}

/// The outcome of a compare-and-swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    /// The table now names our metadata.
    Done,
    /// Someone else swapped first (or dropped the table).
    Conflict,
}

const SCHEMA_SQL: &str = "\
CREATE TABLE IF NOT EXISTS iceberg_tables (
    catalog_name VARCHAR(255) NOT NULL,
    table_namespace VARCHAR(255) NOT NULL,
    table_name VARCHAR(255) NOT NULL,
    metadata_location VARCHAR(1000),
    previous_metadata_location VARCHAR(1000),
    iceberg_type VARCHAR(5),
    PRIMARY KEY (catalog_name, table_namespace, table_name)
);
CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
    catalog_name VARCHAR(255) NOT NULL,
    namespace VARCHAR(255) NOT NULL,
    property_key VARCHAR(255) NOT NULL,
    property_value VARCHAR(1000) NOT NULL,
    PRIMARY KEY (catalog_name, namespace, property_key)
);";

/// The catalog's SQL statements, in `$n` form (rewritten to `?n` for
/// SQLite).
const LOAD: &str = "SELECT metadata_location FROM iceberg_tables \
     WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3 \
     AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)";
const CREATE: &str = "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, \
     metadata_location, previous_metadata_location, iceberg_type) \
     VALUES ($1, $2, $3, $4, NULL, 'TABLE') ON CONFLICT DO NOTHING";
const SWAP: &str = "UPDATE iceberg_tables SET metadata_location = $4, \
     previous_metadata_location = $5 \
     WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3 \
     AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = $5";
const NAMESPACE: &str = "INSERT INTO iceberg_namespace_properties \
     (catalog_name, namespace, property_key, property_value) \
     VALUES ($1, $2, 'exists', 'true') ON CONFLICT DO NOTHING";
const LIST: &str = "SELECT table_namespace, table_name FROM iceberg_tables \
     WHERE catalog_name = $1 AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)";
const DROP: &str = "DELETE FROM iceberg_tables \
     WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3";

fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

/// A connection to the SQL catalog named `name` (the `catalog_name`
/// column: several catalogs may share one database).
#[derive(Clone)]
pub struct SqlCatalog {
    backend: SqlBackend,
    name: String,
    /// The Postgres session, kept across commits; dropped after an error.
    session: Arc<Mutex<Option<tokio_postgres::Client>>>,
}

impl std::fmt::Debug for SqlCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqlCatalog({} at {:?})", self.name, self.backend)
    }
}

impl SqlCatalog {
    pub fn new(backend: SqlBackend, name: &str) -> Self {
        Self {
            backend,
            name: name.to_string(),
            session: Arc::new(Mutex::new(None)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The catalog for messages: its name and where it is (never a
    /// password).
    pub fn describe(&self) -> String {
        match &self.backend {
            SqlBackend::Sqlite(path) => format!("{} (SQLite {})", self.name, path.display()),
            SqlBackend::Postgres(_) => format!("{} (Postgres)", self.name),
        }
    }

    fn error(&self, what: impl std::fmt::Display, class: ErrorClass) -> LakeError {
        LakeError::Catalog {
            catalog: self.describe(),
            what: what.to_string(),
            class,
        }
    }

    fn sqlite_error(&self, doing: &str, err: rusqlite::Error) -> LakeError {
        // Busy and locked databases clear; anything else about the file
        // (permissions, not a database, a full disk) needs a person.
        let class = match err.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                ErrorClass::Transient
            }
            Some(rusqlite::ErrorCode::SystemIoFailure) => ErrorClass::Transient,
            _ => ErrorClass::Config,
        };
        self.error(format!("{doing}: {err}"), class)
    }

    fn postgres_error(&self, doing: &str, err: tokio_postgres::Error) -> LakeError {
        let class = tidewater_endpoint::sqlstate::class(&err);
        self.error(
            format!(
                "{doing}: {}",
                tidewater_core::error_chain(&err as &dyn std::error::Error)
            ),
            class,
        )
    }

    /// Runs `f` on a SQLite connection, off the async threads.
    async fn sqlite<T: Send + 'static>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LakeError> {
        let SqlBackend::Sqlite(path) = self.backend.clone() else {
            unreachable!("a SQLite catalog")
        };
        let run = tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let conn = rusqlite::Connection::open(&path)?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            f(&conn)
        });
        match run.await {
            Ok(result) => result.map_err(|err| self.sqlite_error(doing, err)),
            Err(join) => Err(self.error(format!("{doing}: {join}"), ErrorClass::Transient)),
        }
    }

    /// The Postgres session, opened when there is none.
    async fn postgres(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<tokio_postgres::Client>>, LakeError> {
        let SqlBackend::Postgres(url) = &self.backend else {
            unreachable!("a Postgres catalog")
        };
        let mut session = self.session.lock().await;
        if session.as_ref().is_some_and(|c| c.is_closed()) {
            *session = None;
        }
        if session.is_none() {
            let (config, options) = tidewater_endpoint::postgres::parse_url(url.expose())
                .map_err(|err| self.error(err, ErrorClass::Config))?;
            let tls = tidewater_endpoint::postgres::TlsSetup::new(&options)
                .map_err(|err| self.error(err, ErrorClass::Config))?;
            let (client, connection) = config
                .connect(tls.connector())
                .await
                .map_err(|err| self.postgres_error("connecting", err))?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    warn!(error = %error, "Iceberg catalog connection ended");
                }
            });
            *session = Some(client);
        }
        Ok(session)
    }

    /// Runs `sql` with `params` on Postgres; the rows, or the affected
    /// count as one row of one column.
    async fn pg_query(
        &self,
        doing: &'static str,
        sql: &str,
        params: &[&str],
    ) -> Result<Vec<tokio_postgres::Row>, LakeError> {
        let mut session = self.postgres().await?;
        let client = session.as_ref().expect("opened above");
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        match client.query(sql, &params).await {
            Ok(rows) => Ok(rows),
            Err(err) => {
                *session = None;
                Err(self.postgres_error(doing, err))
            }
        }
    }

    async fn pg_execute(
        &self,
        doing: &'static str,
        sql: &str,
        params: &[&str],
    ) -> Result<u64, LakeError> {
        let mut session = self.postgres().await?;
        let client = session.as_ref().expect("opened above");
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        match client.execute(sql, &params).await {
            Ok(n) => Ok(n),
            Err(err) => {
                *session = None;
                Err(self.postgres_error(doing, err))
            }
        }
    }

    /// Creates the catalog's tables when missing (as pyiceberg does).
    pub async fn ensure_schema(&self) -> Result<(), LakeError> {
        match &self.backend {
            SqlBackend::Sqlite(_) => {
                self.sqlite("creating the catalog tables", |conn| {
                    conn.execute_batch(SCHEMA_SQL)
                })
                .await
            }
            SqlBackend::Postgres(_) => {
                let mut session = self.postgres().await?;
                let client = session.as_ref().expect("opened above");
                if let Err(err) = client.batch_execute(SCHEMA_SQL).await {
                    // Two processes creating them at once: one wins.
                    if err.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                        return Ok(());
                    }
                    *session = None;
                    return Err(self.postgres_error("creating the catalog tables", err));
                }
                Ok(())
            }
        }
    }

    /// Registers `namespace` (no-op when it exists).
    pub async fn ensure_namespace(&self, namespace: &str) -> Result<(), LakeError> {
        let params = [self.name.clone(), namespace.to_string()];
        match &self.backend {
            SqlBackend::Sqlite(_) => {
                self.sqlite("creating a namespace", move |conn| {
                    conn.execute(&sqlite_sql(NAMESPACE), rusqlite::params_from_iter(params))
                        .map(|_| ())
                })
                .await
            }
            SqlBackend::Postgres(_) => {
                let refs: Vec<&str> = params.iter().map(String::as_str).collect();
                self.pg_execute("creating a namespace", NAMESPACE, &refs)
                    .await
                    .map(|_| ())
            }
        }
    }

    /// The table's current metadata file, if the catalog has the table.
    pub async fn load(
        &self,
        namespace: &str,
        table: &str,
    ) -> Result<Option<Registered>, LakeError> {
        let params = [self.name.clone(), namespace.to_string(), table.to_string()];
        let location: Option<Option<String>> = match &self.backend {
            SqlBackend::Sqlite(_) => {
                self.sqlite("loading a table", move |conn| {
                    let mut statement = conn.prepare(&sqlite_sql(LOAD))?;
                    let mut rows = statement.query(rusqlite::params_from_iter(params))?;
                    match rows.next()? {
                        Some(row) => Ok(Some(row.get::<_, Option<String>>(0)?)),
                        None => Ok(None),
                    }
                })
                .await?
            }
            SqlBackend::Postgres(_) => {
                let refs: Vec<&str> = params.iter().map(String::as_str).collect();
                let rows = self.pg_query("loading a table", LOAD, &refs).await?;
                rows.first().map(|row| row.get::<_, Option<String>>(0))
            }
        };
        match location {
            None => Ok(None),
            Some(Some(metadata_location)) => Ok(Some(Registered { metadata_location })),
            Some(None) => Err(self.error(
                format!("table {namespace}.{table} is registered without a metadata location"),
                ErrorClass::Config,
            )),
        }
    }

    /// Registers a new table at `metadata_location`; false when a table of
    /// that name exists already (someone else created it first).
    pub async fn create(
        &self,
        namespace: &str,
        table: &str,
        metadata_location: &str,
    ) -> Result<bool, LakeError> {
        let params = [
            self.name.clone(),
            namespace.to_string(),
            table.to_string(),
            metadata_location.to_string(),
        ];
        let inserted = match &self.backend {
            SqlBackend::Sqlite(_) => {
                self.sqlite("registering a table", move |conn| {
                    conn.execute(&sqlite_sql(CREATE), rusqlite::params_from_iter(params))
                })
                .await? as u64
            }
            SqlBackend::Postgres(_) => {
                let refs: Vec<&str> = params.iter().map(String::as_str).collect();
                self.pg_execute("registering a table", CREATE, &refs)
                    .await?
            }
        };
        Ok(inserted == 1)
    }

    /// Swaps the table's metadata from `old` to `new` if it still is `old`.
    /// A swap whose answer was lost is settled by reading the row back.
    pub async fn swap(
        &self,
        namespace: &str,
        table: &str,
        old: &str,
        new: &str,
    ) -> Result<Swap, LakeError> {
        let params = [
            self.name.clone(),
            namespace.to_string(),
            table.to_string(),
            new.to_string(),
            old.to_string(),
        ];
        let swapped = match &self.backend {
            SqlBackend::Sqlite(_) => self
                .sqlite("committing", move |conn| {
                    conn.execute(&sqlite_sql(SWAP), rusqlite::params_from_iter(params))
                })
                .await
                .map(|n| n as u64),
            SqlBackend::Postgres(_) => {
                let refs: Vec<&str> = params.iter().map(String::as_str).collect();
                self.pg_execute("committing", SWAP, &refs).await
            }
        };
        match swapped {
            Ok(1) => Ok(Swap::Done),
            Ok(_) => Ok(Swap::Conflict),
            Err(err) => {
                // The UPDATE may have happened: the row says.
                match self.load(namespace, table).await {
                    Ok(Some(now)) if now.metadata_location == new => Ok(Swap::Done),
                    Ok(_) => Err(err),
                    Err(_) => Err(err),
                }
            }
        }
    }

    /// Every table of this catalog: (namespace, table).
    pub async fn tables(&self) -> Result<Vec<(String, String)>, LakeError> {
        let params = [self.name.clone()];
        match &self.backend {
            SqlBackend::Sqlite(_) => {
                self.sqlite("listing tables", move |conn| {
                    let mut statement = conn.prepare(&sqlite_sql(LIST))?;
                    let rows = statement.query_map(rusqlite::params_from_iter(params), |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                    })?;
                    rows.collect()
                })
                .await
            }
            SqlBackend::Postgres(_) => {
                let refs: Vec<&str> = params.iter().map(String::as_str).collect();
                let rows = self.pg_query("listing tables", LIST, &refs).await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            }
        }
    }

    /// Removes a table's registration (its files stay for the caller).
    pub async fn drop_table(&self, namespace: &str, table: &str) -> Result<(), LakeError> {
        let params = [self.name.clone(), namespace.to_string(), table.to_string()];
        match &self.backend {
            SqlBackend::Sqlite(_) => {
                self.sqlite("dropping a table", move |conn| {
                    conn.execute(&sqlite_sql(DROP), rusqlite::params_from_iter(params))
                        .map(|_| ())
                })
                .await
            }
            SqlBackend::Postgres(_) => {
                let refs: Vec<&str> = params.iter().map(String::as_str).collect();
                self.pg_execute("dropping a table", DROP, &refs)
                    .await
                    .map(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_swap_is_compare_and_set() {
        let dir = std::env::temp_dir().join(format!("tw-cat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let catalog = SqlCatalog::new(SqlBackend::Sqlite(dir.join("c.db")), "tw");
        catalog.ensure_schema().await.unwrap();
        catalog.ensure_schema().await.unwrap();
        catalog.ensure_namespace("p_public").await.unwrap();
        assert!(catalog.create("p_public", "t", "m1").await.unwrap());
        assert!(!catalog.create("p_public", "t", "other").await.unwrap());
        assert_eq!(
            catalog.swap("p_public", "t", "m1", "m2").await.unwrap(),
            Swap::Done
        );
        assert_eq!(
            catalog.swap("p_public", "t", "m1", "m3").await.unwrap(),
            Swap::Conflict
        );
        assert_eq!(
            catalog
                .load("p_public", "t")
                .await
                .unwrap()
                .unwrap()
                .metadata_location,
            "m2"
        );
        assert_eq!(
            catalog.tables().await.unwrap(),
            vec![("p_public".to_string(), "t".to_string())]
        );
        catalog.drop_table("p_public", "t").await.unwrap();
        assert_eq!(catalog.load("p_public", "t").await.unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The catalog an Iceberg lake registers its tables in.
#[derive(Clone, Debug)]
pub enum Catalog {
    Sql(SqlCatalog),
    Rest(super::rest::RestCatalog),
}

impl Catalog {
    /// The catalog for messages (never a password).
    pub fn describe(&self) -> String {
        match self {
            Catalog::Sql(c) => c.describe(),
            Catalog::Rest(c) => c.describe(),
        }
    }
}

impl From<SqlCatalog> for Catalog {
    fn from(catalog: SqlCatalog) -> Self {
        Catalog::Sql(catalog)
    }
}
