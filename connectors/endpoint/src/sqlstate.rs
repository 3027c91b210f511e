//! One SQLSTATE → [`ErrorClass`] table for every Postgres connection
//! tidewater opens: the source (queries and the replication stream), the
//! warehouse sink and the reverse-ETL Postgres target. It lives beside the
//! connection code so that none of them needs another's crate for it.
//!
//! The policy is "indefinite unless proven": an answer that may go away by
//! itself (a lost connection, a busy or restarting server, a lock, a
//! serialization conflict) is retried; an answer only a person can change
//! (credentials, a missing database or object, a privilege) is a config
//! error; an answer about the data of one statement (a bad value, a broken
//! constraint) is definite. A call site that needs more (the source's slot
//! in use, a read-only caller that cannot stop a table) says so itself.
//!
//! Rows are matched in order: a full five-character code first, then its
//! two-character class. A code no row matches is [`ErrorClass::Definite`]:
//! the server refused this statement for a reason of its own (a trigger's
//! `RAISE`, an unsupported feature) and will refuse it again.

use crate::ErrorClass;

/// A row of the table: a SQLSTATE (`"40P01"`) or a SQLSTATE class (`"40"`),
/// its class, and why.
struct Row {
    code: &'static str,
    class: ErrorClass,
    #[allow(dead_code)] // documentation, read by people and by the tests
    reason: &'static str,
}

const fn row(code: &'static str, class: ErrorClass, reason: &'static str) -> Row {
    Row {
        code,
        class,
        reason,
    }
}

use ErrorClass::{Config, Definite, Transient};

const TABLE: &[Row] = &[
    // Exact codes, before the class they belong to.
    row(
        "42501",
        Config,
        "insufficient privilege: a GRANT is missing",
    ),
    row(
        "55P03",
        Transient,
        "lock not available (lock_timeout): another session holds the lock and will release it",
    ),
    row(
        "55006",
        Transient,
        "object in use (a replication slot held by a walsender that is going away, a table \
         another session uses): the other user goes away",
    ),
    row(
        "55000",
        Config,
        "object not in prerequisite state (wal_level is not logical, an invalidated slot): \
         a person must change the server or drop the object",
    ),
    row(
        "25006",
        Config,
        "read-only transaction: the url names a standby or a read-only server; point it at \
         the primary",
    ),
    row(
        "25P03",
        Transient,
        "idle-in-transaction session timeout: the server closed the session; a new one works",
    ),
    row(
        "40002",
        Definite,
        "transaction integrity constraint violation: the rows break a constraint at commit",
    ),
    row(
        "3D000",
        Config,
        "invalid catalog name: the database in the url does not exist",
    ),
    row(
        "3F000",
        Config,
        "invalid schema name: the schema named in the configuration does not exist",
    ),
    // Whole classes.
    row(
        "08",
        Transient,
        "connection exception: the connection failed or was lost; a new one may succeed",
    ),
    row(
        "53",
        Transient,
        "insufficient resources (too many connections, disk full, out of memory): may clear",
    ),
    row(
        "57",
        Transient,
        "operator intervention (query canceled or statement_timeout, admin/crash shutdown, \
         cannot connect now, database dropped): the server comes back or the statement may \
         finish in time; a dropped database shows as 3D000 on the next connect",
    ),
    row(
        "40",
        Transient,
        "transaction rollback (serialization failure, deadlock, completion unknown): running \
         the transaction again is the documented remedy",
    ),
    row(
        "58",
        Transient,
        "system error (I/O error, a file the server cannot find): the server's own trouble, \
         not the statement's",
    ),
    row(
        "28",
        Config,
        "invalid authorization (wrong password, no pg_hba.conf entry): fix the credentials",
    ),
    row(
        "42",
        Config,
        "syntax error or access rule violation (a missing table, column, object or function, \
         a type the target table does not have): a person must create, alter or grant; the same \
         statement is refused again",
    ),
    row(
        "22",
        Definite,
        "data exception: a value the column or cast refuses",
    ),
    row(
        "23",
        Definite,
        "integrity constraint violation: the rows break a key, check or foreign key",
    ),
    row(
        "XX",
        Definite,
        "internal error or corruption: the server fails this statement the same way again",
    ),
];

fn lookup(code: &str) -> Option<&'static Row> {
    TABLE
        .iter()
        .find(|row| row.code == code)
        .or_else(|| TABLE.iter().find(|row| code.get(..2) == Some(row.code)))
}

/// The class of a server's answer by its five-character SQLSTATE.
pub fn class_of_code(code: &str) -> ErrorClass {
    lookup(code).map_or(Definite, |row| row.class)
}

/// The class of an error of a `tokio_postgres` connection. An error without
/// a SQLSTATE did not come from the server's refusal of a statement: I/O,
/// a closed connection, a timeout while connecting — transient.
#[cfg(feature = "postgres")]
pub fn class(error: &tokio_postgres::Error) -> ErrorClass {
    match error.code() {
        Some(code) => class_of_code(code.code()),
        None => Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One code for every row; removing or changing a row fails here.
    const EXPECTED: &[(&str, &str, ErrorClass)] = &[
        ("42501", "42501", Config),
        ("55P03", "55P03", Transient),
        ("55006", "55006", Transient),
        ("55000", "55000", Config),
        ("25006", "25006", Config),
        ("25P03", "25P03", Transient),
        ("40002", "40002", Definite),
        ("3D000", "3D000", Config),
        ("3F000", "3F000", Config),
        ("08006", "08", Transient),
        ("08001", "08", Transient),
        ("53300", "53", Transient),
        ("53100", "53", Transient),
        ("57014", "57", Transient),
        ("57P01", "57", Transient),
        ("57P03", "57", Transient),
        ("40001", "40", Transient),
        ("40P01", "40", Transient),
        ("58030", "58", Transient),
        ("28P01", "28", Config),
        ("28000", "28", Config),
        ("42P01", "42", Config),
        ("42704", "42", Config),
        ("42601", "42", Config),
        ("22P02", "22", Definite),
        ("23505", "23", Definite),
        ("XX000", "XX", Definite),
    ];

    #[test]
    fn every_row_has_its_class() {
        for (code, row_code, class) in EXPECTED {
            let row = lookup(code).unwrap_or_else(|| panic!("no row for {code}"));
            assert_eq!(row.code, *row_code, "{code}");
            assert_eq!(row.class, *class, "{code}");
            assert!(!row.reason.is_empty(), "{code}");
            assert_eq!(class_of_code(code), *class, "{code}");
        }
        for row in TABLE {
            assert!(
                EXPECTED.iter().any(|(_, r, _)| *r == row.code),
                "row {} has no test",
                row.code
            );
        }
    }

    #[test]
    fn unknown_codes_are_definite() {
        // raise_exception from a trigger, feature not supported
        assert_eq!(class_of_code("P0001"), Definite);
        assert_eq!(class_of_code("0A000"), Definite);
        assert_eq!(class_of_code(""), Definite);
    }
}
