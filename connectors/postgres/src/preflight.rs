//! Preflight: every server setting and privilege the source needs, each problem
//! with the statement that fixes it. Reads only.

use tidewater_core::{Problem, TableId};
use tokio_postgres::Client;

use crate::catalog::{quote_table, HAS_REPLICA_IDENTITY};
use crate::error::{query_error, PostgresError};
use crate::source::PostgresConfig;

/// Oldest server the pipeline supports: tidewater asks pgoutput for protocol 2
/// (streaming of in-progress transactions) and the `messages` and `binary`
/// options, which Postgres 14 introduced.
const MIN_SERVER_VERSION: i32 = 140_000;

pub async fn preflight(
    client: &Client,
    config: &PostgresConfig,
    tables: &[TableId],
) -> Result<Vec<Problem>, PostgresError> {
    let mut problems = Vec::new();
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), \
               current_setting('max_replication_slots')::int, \
               current_setting('max_wal_senders')::int, \
               (SELECT count(*) FROM pg_replication_slots)::int, \
               (SELECT count(*) FROM pg_stat_replication WHERE application_name <> $3)::int, \
               EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1), \
               r.rolreplication OR r.rolsuper OR coalesce((SELECT pg_has_role(r.oid, g.oid, 'MEMBER') \
                 FROM pg_roles g WHERE g.rolname = 'rds_replication'), false), \
               current_user::text, \
               has_database_privilege(current_database(), 'CREATE'), \
               EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $2), \
               r.rolsuper \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[&config.slot, &config.publication, &config.application_name],
        )
        .await
        .map_err(query_error("reading server settings"))?;
    let version: i32 = row.get(0);
    let wal_level: String = row.get(1);
    let max_slots: i32 = row.get(2);
    let max_senders: i32 = row.get(3);
    let used_slots: i32 = row.get(4);
    let used_senders: i32 = row.get(5);
    let slot_exists: bool = row.get(6);
    let can_replicate: bool = row.get(7);
    let user: String = row.get(8);
    let can_create: bool = row.get(9);
    let publication_exists: bool = row.get(10);
    let superuser: bool = row.get(11);

    if version < MIN_SERVER_VERSION {
        problems.push(Problem {
            what: format!("server_version_num is {version}, tidewater needs Postgres 14 or newer"),
            fix: "upgrade the server to Postgres 14 or newer".into(),
        });
    }
    if wal_level != "logical" {
        problems.push(Problem {
            what: format!("wal_level is {wal_level:?}, expected \"logical\""),
            fix: "ALTER SYSTEM SET wal_level = logical; then restart the server".into(),
        });
    }
    if !slot_exists && used_slots >= max_slots {
        problems.push(Problem {
            what: format!(
                "max_replication_slots is {max_slots} and all are in use; the pipeline needs one"
            ),
            fix: format!(
                "ALTER SYSTEM SET max_replication_slots = {}; then restart the server",
                max_slots + 1
            ),
        });
    }
    if used_senders >= max_senders {
        problems.push(Problem {
            what: format!("max_wal_senders is {max_senders} and all are in use"),
            fix: format!(
                "ALTER SYSTEM SET max_wal_senders = {}; then restart the server",
                max_senders + 1
            ),
        });
    }
    if !can_replicate {
        problems.push(Problem {
            what: format!(
                "role {user:?} lacks the REPLICATION attribute (needed for the slot and the stream)"
            ),
            fix: format!(
                "ALTER ROLE {0} WITH REPLICATION; (on Amazon RDS and Aurora: GRANT rds_replication TO {0};)",
                crate::catalog::quote_ident(&user)
            ),
        });
    }
    if tables.is_empty() {
        problems.push(Problem {
            what: format!(
                "source.tables {:?} (exclude {:?}) matches no table",
                config.filter.include, config.filter.exclude
            ),
            fix: "set source.tables to patterns like \"public.*\" that match existing tables"
                .into(),
        });
    }
    let mut schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    schemas.sort_unstable();
    schemas.dedup();
    for schema in schemas {
        let usage: bool = client
            .query_one("SELECT has_schema_privilege($1, 'USAGE')", &[&schema])
            .await
            .map_err(query_error(format!(
                "checking privileges on schema {schema}"
            )))?
            .get(0);
        if !usage {
            problems.push(Problem {
                what: format!(
                    "role {user:?} lacks USAGE on schema {schema} (its tables cannot be read)"
                ),
                fix: format!(
                    "GRANT USAGE ON SCHEMA {} TO {};",
                    crate::catalog::quote_ident(schema),
                    crate::catalog::quote_ident(&user)
                ),
            });
        }
    }
    // Reported once, for the first table the role does not own; every
    // table is still checked for the rest.
    let mut publication_reported = false;
    for table in tables {
        let row = client
            .query_one(
                &format!(
                    "SELECT has_table_privilege(c.oid, 'SELECT'), \
                       pg_has_role(c.relowner, 'USAGE'), {HAS_REPLICA_IDENTITY} \
                     FROM pg_class c WHERE c.relname = $2 AND c.relnamespace = (SELECT n.oid FROM pg_namespace n WHERE n.nspname = $1)"
                ),
                &[&table.schema, &table.table],
            )
            .await
            .map_err(query_error(format!("checking privileges on {table}")))?;
        let can_select: bool = row.get(0);
        let owns: bool = row.get(1);
        let has_identity: bool = row.get(2);
        // Only a publication we are about to create can newly break the
        // application's UPDATE/DELETE; an existing one already includes what
        // it includes.
        if !has_identity && !publication_exists {
            problems.push(Problem {
                what: format!(
                    "{table} has no replica identity (no primary key): once it is in a publication, \
                     Postgres rejects every UPDATE and DELETE on it"
                ),
                fix: format!(
                    "ALTER TABLE {} REPLICA IDENTITY FULL; (or add a primary key, or list it in source.exclude)",
                    quote_table(table)
                ),
            });
        }
        if !can_select {
            problems.push(Problem {
                what: format!("role {user:?} cannot SELECT from {table} (needed for the snapshot)"),
                fix: format!(
                    "GRANT SELECT ON {} TO {};",
                    quote_table(table),
                    crate::catalog::quote_ident(&user)
                ),
            });
        }
        if !publication_exists && !owns && !superuser && !publication_reported {
            publication_reported = true;
            problems.push(Problem {
                what: format!(
                    "publication {:?} does not exist and role {user:?} does not own {table}, so it cannot create it",
                    config.publication
                ),
                fix: format!(
                    "as the table owner: CREATE PUBLICATION {} FOR TABLE {};",
                    crate::catalog::quote_ident(&config.publication),
                    tables.iter().map(quote_table).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    if !publication_exists && !can_create {
        problems.push(Problem {
            what: format!("role {user:?} cannot create publications in this database"),
            fix: format!(
                "GRANT CREATE ON DATABASE <this database> TO {};",
                crate::catalog::quote_ident(&user)
            ),
        });
    }
    Ok(problems)
}

/// Settings that do not stop the pipeline but put the server or the lake's
/// completeness at risk; `check` prints them as warnings.
pub async fn advisories(
    client: &Client,
    config: &PostgresConfig,
    tables: &[TableId],
) -> Result<Vec<Problem>, PostgresError> {
    let mut warnings = Vec::new();
    for table in tables {
        // A keyless table the publication does not hold yet is left out by
        // a running pipeline (publishing it would break its updates).
        let unpublishable = client
            .query_one(
                "SELECT (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
                   (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
                 AND NOT EXISTS (SELECT 1 FROM pg_publication_tables p \
                   WHERE p.pubname = $3 AND p.schemaname = $1 AND p.tablename = $2) \
                 AND EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $3) \
                 FROM pg_class c WHERE c.relname = $2 AND c.relnamespace = (SELECT n.oid FROM pg_namespace n WHERE n.nspname = $1)",
                &[&table.schema, &table.table, &config.publication],
            )
            .await
            .map_err(query_error(format!("reading the replica identity of {table}")))?
            .get::<_, bool>(0);
        if unpublishable {
            warnings.push(Problem {
                what: format!(
                    "{table} matches source.tables but has no replica identity (no primary key): \
                     it is not added to publication {} and not replicated, since Postgres would \
                     then reject every UPDATE and DELETE on it",
                    config.publication
                ),
                fix: format!(
                    "ALTER TABLE {} REPLICA IDENTITY FULL; (a running pipeline then copies it and \
                     streams it; or add a primary key, or list it in source.exclude)",
                    quote_table(table)
                ),
            });
            continue;
        }
        // Identity 'd' with a key or 'i': deletes carry only the key, and an
        // UPDATE leaving a TOASTed value unchanged does not send it.
        let row = client
            .query_one(
                "SELECT c.relreplident::text, EXISTS (SELECT 1 FROM pg_attribute a                    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped                      AND a.attstorage IN ('x', 'e'))                  FROM pg_class c WHERE c.relname = $2 AND c.relnamespace = (SELECT n.oid FROM pg_namespace n WHERE n.nspname = $1)",
                &[&table.schema, &table.table],
            )
            .await
            .map_err(query_error(format!("reading the replica identity of {table}")))?;
        let identity: String = row.get(0);
        let toastable: bool = row.get(1);
        let fix = format!(
            "ALTER TABLE {} REPLICA IDENTITY FULL; (the old image of every row is then logged)",
            quote_table(table)
        );
        match identity.as_str() {
            "n" => warnings.push(Problem {
                what: format!(
                    "{table} has REPLICA IDENTITY NOTHING: while it is published, Postgres \
                     rejects every UPDATE and DELETE on it (only inserts and truncates can be \
                     replicated)"
                ),
                fix,
            }),
            "d" | "i" if toastable => warnings.push(Problem {
                what: format!(
                    "{table} has columns stored out of line (TOAST) and no REPLICA IDENTITY FULL: \
                     an UPDATE that leaves such a value unchanged does not send it, so tidewater \
                     reads the row's previous image back from the lake (a pass over the table \
                     at each commit that needs one); deletes carry only the key"
                ),
                fix,
            }),
            _ => {}
        }
    }
    // An existing publication (made by the tables' owner for a role that
    // owns none, as in the README's least-privilege setup) must hold every
    // table: the first snapshot refuses to start without them, and a table
    // it lacks later is skipped (only an owner can add it).
    let publication = client
        .query_opt(
            "SELECT pg_get_userbyid(pubowner)::text FROM pg_publication WHERE pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(query_error("reading the publication"))?;
    if let Some(row) = publication {
        let owner: String = row.get(0);
        let published: Vec<TableId> = client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                &[&config.publication],
            )
            .await
            .map_err(query_error("reading the publication's tables"))?
            .iter()
            .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        let missing: Vec<String> = tables
            .iter()
            .filter(|t| !published.contains(t))
            .map(quote_table)
            .collect();
        if !missing.is_empty() {
            warnings.push(Problem {
                what: format!(
                    "publication {} (owned by {owner:?}) lacks {}: they are not replicated, and \
                     the first snapshot does not start without them",
                    config.publication,
                    missing.join(", ")
                ),
                fix: format!(
                    "as {owner}: ALTER PUBLICATION {} ADD TABLE {};",
                    crate::catalog::quote_ident(&config.publication),
                    missing.join(", ")
                ),
            });
        }
    }
    if config.heartbeat.is_some() {
        let can_emit: bool = client
            .query_one(
                "SELECT has_function_privilege('pg_logical_emit_message(boolean,text,text)', 'EXECUTE')",
                &[],
            )
            .await
            .map_err(query_error("checking EXECUTE on pg_logical_emit_message"))?
            .get(0);
        if !can_emit {
            warnings.push(Problem {
                what: "the role cannot EXECUTE pg_logical_emit_message: no heartbeats, so an \
                       idle database's slot confirms only what other databases write"
                    .into(),
                fix: "GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO <the role>; \
                      (or set source.heartbeat_interval_ms = 0)"
                    .into(),
            });
        }
    }
    let keep: String = client
        .query_one("SELECT current_setting('max_slot_wal_keep_size')", &[])
        .await
        .map_err(query_error("reading max_slot_wal_keep_size"))?
        .get(0);
    if keep.trim() == "-1" {
        warnings.push(Problem {
            what: "max_slot_wal_keep_size is unlimited (-1): if tidewater stops for long, \
                   its slot keeps every WAL segment since and the disk can fill up"
                .into(),
            fix: "ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf(); \
                  (size it to the outage you want to survive; past it the slot is invalidated \
                  and tidewater asks for a new snapshot)"
                .into(),
        });
    }
    Ok(warnings)
}
