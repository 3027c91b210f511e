//! What a binlog Query event's SQL text does to rows.
//!
//! With `binlog_format = ROW` every row a statement changes reaches the
//! binlog as a rows event, and Query events carry only transaction control
//! and DDL. A session (or the whole server) that logs by `STATEMENT` or
//! `MIXED` writes the data-changing SQL itself instead: its rows are in no
//! event the source can decode, and dropping the event would lose them
//! without a trace. So every Query event is classified here, and a
//! data-changing one stops the captured tables it may have touched
//! (see `MysqlSource::on_statement_data`).
//!
//! ```text
//!   Query event text ──▶ classify ──┬─ Control   BEGIN / COMMIT / XA …  (the source's transaction logic)
//!                                   ├─ Schema    DDL, grants, admin     (schema history, copies again)
//!                                   └─ Data      INSERT, UPDATE, …      (the tables it may touch stop)
//!                                        reach: Tables(names) | Any
//! ```
//!
//! Reading SQL text is a heuristic, so it errs towards stopping: a
//! statement whose effect the text does not bound (a stored function in a
//! `SELECT` or `DO`, `CALL`, anything unknown) reaches `Any` table, and a
//! multi-table `UPDATE`/`DELETE` reaches every name it mentions. A false
//! alarm costs a copy of a table; a miss loses rows. Row values are never
//! kept: only the statement's kind and table names leave this module.

use tidewater_core::TableId;

/// What a Query event's statement is.
#[derive(Debug, PartialEq, Eq)]
pub enum Statement {
    /// Transaction control: `BEGIN`, `COMMIT`, `ROLLBACK`, `SAVEPOINT`, `XA`.
    Control,
    /// DDL, grants, maintenance: changes no row of a table (a `TRUNCATE`
    /// is here too; the source follows it itself).
    Schema,
    /// Changed rows that are not in the binlog as rows events.
    Data {
        /// The statement's kind, for messages (`INSERT`, `UPDATE`, …).
        kind: String,
        reach: Reach,
    },
}

/// The tables a data-changing statement may have written.
#[derive(Debug, PartialEq, Eq)]
pub enum Reach {
    /// One of these (names resolved against the event's default database;
    /// some may not exist or be only read).
    Tables(Vec<TableId>),
    /// Any table: the text does not bound what it wrote.
    Any,
}

/// Classifies `sql`, logged with `default_db` as the session's database.
pub fn classify(sql: &str, default_db: &str) -> Statement {
    let tokens = lex(sql);
    classify_tokens(&tokens, default_db)
}

fn classify_tokens(tokens: &[Token], default_db: &str) -> Statement {
    let Some(first) = tokens.first().and_then(Token::word) else {
        // Empty, or only comments (MariaDB's "# Dummy event …").
        return Statement::Schema;
    };
    let data = |kind: &str, reach: Reach| Statement::Data {
        kind: kind.to_string(),
        reach,
    };
    match first.as_str() {
        "BEGIN" | "COMMIT" | "ROLLBACK" | "SAVEPOINT" | "RELEASE" | "XA" | "START" => {
            Statement::Control
        }
        // MariaDB: SET STATEMENT var = value [, …] FOR <statement>.
        "SET" if tokens.get(1).and_then(Token::word).as_deref() == Some("STATEMENT") => {
            match tokens.iter().position(|t| t.is_word("FOR")) {
                Some(at) => classify_tokens(&tokens[at + 1..], default_db),
                None => Statement::Schema,
            }
        }
        "INSERT" | "REPLACE" => {
            let rest = skip_words(
                &tokens[1..],
                &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"],
            );
            data(&first, reach_of(table_at(rest, default_db)))
        }
        "UPDATE" => {
            let rest = skip_words(&tokens[1..], &["LOW_PRIORITY", "IGNORE"]);
            let until_set = rest
                .iter()
                .position(|t| t.is_word("SET"))
                .unwrap_or(rest.len());
            if is_multi_table(&rest[..until_set]) {
                data("UPDATE", Reach::Tables(names(tokens, default_db)))
            } else {
                data("UPDATE", reach_of(table_at(rest, default_db)))
            }
        }
        "DELETE" => {
            let rest = skip_words(&tokens[1..], &["LOW_PRIORITY", "QUICK", "IGNORE"]);
            match rest.first() {
                Some(t) if t.is_word("FROM") => {
                    let until_where = rest
                        .iter()
                        .position(|t| t.is_word("WHERE"))
                        .unwrap_or(rest.len());
                    let head = &rest[1..until_where];
                    if is_multi_table(head) || head.iter().any(|t| t.is_word("USING")) {
                        data("DELETE", Reach::Tables(names(tokens, default_db)))
                    } else {
                        data("DELETE", reach_of(table_at(&rest[1..], default_db)))
                    }
                }
                // DELETE t1, t2 FROM …: the multi-table form.
                _ => data("DELETE", Reach::Tables(names(tokens, default_db))),
            }
        }
        "LOAD" => {
            // LOAD DATA|XML … INTO TABLE name …
            let target = tokens
                .windows(2)
                .position(|w| w[0].is_word("INTO") && w[1].is_word("TABLE"))
                .and_then(|at| table_at(&tokens[at + 2..], default_db));
            data("LOAD DATA", reach_of(target))
        }
        "CREATE" => {
            let rest = skip_words(&tokens[1..], &["OR", "REPLACE"]);
            if rest.first().is_some_and(|t| t.is_word("TEMPORARY")) {
                // A temporary table is never captured; a SELECT in it only reads.
                return Statement::Schema;
            }
            let creates_table = rest.first().is_some_and(|t| t.is_word("TABLE"));
            // CREATE TABLE … SELECT fills the table from the statement
            // itself (under ROW logging its rows follow as rows events and
            // the logged text has no SELECT).
            if creates_table && tokens.iter().any(|t| t.is_word("SELECT")) {
                let rest = skip_words(&rest[1..], &["IF", "NOT", "EXISTS"]);
                return data(
                    "CREATE TABLE … SELECT",
                    reach_of(table_at(rest, default_db)),
                );
            }
            Statement::Schema
        }
        "ALTER" | "DROP" | "RENAME" | "TRUNCATE" | "GRANT" | "REVOKE" | "FLUSH" | "ANALYZE"
        | "OPTIMIZE" | "REPAIR" | "INSTALL" | "UNINSTALL" | "RESET" | "PURGE" | "SET"
        | "CHECKSUM" | "CHECK" => Statement::Schema,
        // SELECT f(), DO f(), CALL p(), WITH … UPDATE, EXECUTE, and anything
        // not known to leave rows alone.
        other => data(other, Reach::Any),
    }
}

fn reach_of(table: Option<TableId>) -> Reach {
    match table {
        Some(table) => Reach::Tables(vec![table]),
        None => Reach::Any,
    }
}

/// Whether a table list (the part of an UPDATE before SET, of a DELETE
/// between FROM and WHERE) names more than one table.
fn is_multi_table(head: &[Token]) -> bool {
    head.iter().any(|t| {
        matches!(t, Token::Punct(','))
            || t.is_word("JOIN")
            || t.is_word("STRAIGHT_JOIN")
            || t.is_word("SELECT")
    })
}

/// `tokens` after any leading words of `skip`.
fn skip_words<'a>(tokens: &'a [Token], skip: &[&str]) -> &'a [Token] {
    let n = tokens
        .iter()
        .take_while(|t| t.word().is_some_and(|w| skip.contains(&w.as_str())))
        .count();
    &tokens[n..]
}

/// A table name (`db.table`, or `table` in `default_db`) at the start of
/// `tokens`.
fn table_at(tokens: &[Token], default_db: &str) -> Option<TableId> {
    let first = tokens.first()?.name()?;
    match (tokens.get(1), tokens.get(2).and_then(Token::name)) {
        (Some(Token::Punct('.')), Some(second)) => Some(TableId::new(first, second)),
        _ => Some(TableId::new(default_db, first)),
    }
}

/// Every name in the statement that could be a table: `db.table` pairs,
/// and every other identifier or word taken as a table of `default_db`.
/// Generous on purpose: the caller keeps only the captured ones.
fn names(tokens: &[Token], default_db: &str) -> Vec<TableId> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let Some(name) = tokens[i].name() else {
            i += 1;
            continue;
        };
        let qualified = matches!(tokens.get(i + 1), Some(Token::Punct('.')))
            && tokens.get(i + 2).and_then(Token::name).is_some();
        let table = if qualified {
            let second = tokens[i + 2].name().unwrap_or_default();
            i += 3;
            TableId::new(name, second)
        } else {
            i += 1;
            TableId::new(default_db, name)
        };
        if !found.contains(&table) {
            found.push(table);
        }
    }
    found
}

/// A token of SQL text outside string literals and comments.
#[derive(Debug, PartialEq, Eq)]
enum Token {
    /// A bare word as written (keyword or identifier).
    Word(String),
    /// A backtick-quoted identifier (or a double-quoted one: ANSI_QUOTES).
    Quoted(String),
    /// A string or number literal: its value is never kept.
    Literal,
    Punct(char),
}

impl Token {
    /// The bare word, upper-cased.
    fn word(&self) -> Option<String> {
        match self {
            Token::Word(w) => Some(w.to_ascii_uppercase()),
            _ => None,
        }
    }

    fn is_word(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    /// The token as an identifier, as the server would name the object.
    fn name(&self) -> Option<String> {
        match self {
            Token::Word(w) => Some(w.clone()),
            Token::Quoted(q) => Some(q.clone()),
            _ => None,
        }
    }
}

/// Splits SQL text into tokens, skipping comments (`/* … */` — but not
/// the `/*! … */` version comments, whose text the server runs — `-- `,
/// `#`) and reducing literals to a placeholder.
fn lex(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('*') {
            if matches!(chars.get(i + 2), Some('!') | Some('M')) {
                // Executable comment: its content counts; skip the marker
                // and the version digits.
                i += 3;
                while chars.get(i).is_some_and(|c| c.is_ascii_digit()) {
                    i += 1;
                }
            } else {
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    i += 1;
                }
                i += 2;
            }
        } else if c == '*' && next == Some('/') {
            // The end of an executable comment.
            i += 2;
        } else if c == '#' || (c == '-' && next == Some('-')) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '\'' || c == '"' || c == '`' {
            let (text, after) = quoted(&chars, i);
            // A double-quoted text is a string without ANSI_QUOTES and an
            // identifier with it: taken as a name, it can only add a table
            // to stop, never hide one.
            tokens.push(if c == '\'' {
                Token::Literal
            } else {
                Token::Quoted(text)
            });
            i = after;
        } else if c.is_alphanumeric() || c == '_' || c == '$' || c == '@' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '$' | '@'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.chars().next().is_some_and(|c| c.is_ascii_digit())
                && word.chars().all(|c| c.is_ascii_alphanumeric())
            {
                tokens.push(Token::Literal);
            } else {
                tokens.push(Token::Word(word));
            }
        } else {
            tokens.push(Token::Punct(c));
            i += 1;
        }
    }
    tokens
}

/// The text of the quoted token starting at `chars[start]` (a doubled
/// quote, or a backslash in a string, escapes) and the index after it.
fn quoted(chars: &[char], start: usize) -> (String, usize) {
    let quote = chars[start];
    let mut text = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && quote != '`' {
            if quote == '"' {
                if let Some(n) = chars.get(i + 1) {
                    text.push(*n);
                }
            }
            i += 2;
        } else if c == quote {
            if chars.get(i + 1) == Some(&quote) {
                if quote != '\'' {
                    text.push(quote);
                }
                i += 2;
            } else {
                return (text, i + 1);
            }
        } else {
            if quote != '\'' {
                text.push(c);
            }
            i += 1;
        }
    }
    (text, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(names: &[(&str, &str)]) -> Reach {
        Reach::Tables(names.iter().map(|(s, t)| TableId::new(*s, *t)).collect())
    }

    fn data(sql: &str) -> (String, Reach) {
        match classify(sql, "shop") {
            Statement::Data { kind, reach } => (kind, reach),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn single_table_statements_name_their_target() {
        for (sql, kind, table) in [
            ("INSERT INTO t VALUES (1, 'a')", "INSERT", ("shop", "t")),
            (
                "insert low_priority ignore into `other`.`T x` (a) select * from u",
                "INSERT",
                ("other", "T x"),
            ),
            ("REPLACE t SET a = 1", "REPLACE", ("shop", "t")),
            (
                "UPDATE IGNORE shop.orders SET total = total + 1 WHERE id = 3",
                "UPDATE",
                ("shop", "orders"),
            ),
            (
                "DELETE FROM t WHERE id IN (SELECT id FROM u)",
                "DELETE",
                ("shop", "t"),
            ),
            (
                "delete quick from `a``b` where x = 'y, z'",
                "DELETE",
                ("shop", "a`b"),
            ),
            (
                "LOAD DATA INFILE '/tmp/x' INTO TABLE db2.t FIELDS TERMINATED BY ','",
                "LOAD DATA",
                ("db2", "t"),
            ),
            (
                "/* app */ SET STATEMENT max_statement_time = 1 FOR UPDATE t SET a = 2",
                "UPDATE",
                ("shop", "t"),
            ),
            (
                "CREATE TABLE n AS SELECT * FROM t",
                "CREATE TABLE … SELECT",
                ("shop", "n"),
            ),
            (
                "/*!40000 INSERT INTO t VALUES (1) */",
                "INSERT",
                ("shop", "t"),
            ),
        ] {
            assert_eq!(data(sql), (kind.to_string(), tables(&[table])), "{sql}");
        }
    }

    #[test]
    fn multi_table_statements_reach_every_name() {
        let (kind, reach) = data("UPDATE a JOIN other.b ON a.id = b.id SET b.v = 'x'");
        assert_eq!(kind, "UPDATE");
        let Reach::Tables(found) = reach else {
            panic!("bounded")
        };
        assert!(found.contains(&TableId::new("shop", "a")), "{found:?}");
        assert!(found.contains(&TableId::new("other", "b")), "{found:?}");
        let (_, reach) = data("DELETE a, c FROM a INNER JOIN c WHERE a.id = c.id");
        let Reach::Tables(found) = reach else {
            panic!("bounded")
        };
        assert!(found.contains(&TableId::new("shop", "c")), "{found:?}");
        let (_, reach) = data("DELETE FROM a USING a, c WHERE a.id = c.id");
        let Reach::Tables(found) = reach else {
            panic!("bounded")
        };
        assert!(found.contains(&TableId::new("shop", "c")), "{found:?}");
    }

    #[test]
    fn statements_the_text_does_not_bound_reach_any_table() {
        for sql in [
            "SELECT f(1)",
            "DO f()",
            "CALL p()",
            "WITH x AS (SELECT 1) UPDATE t SET a = 1",
        ] {
            assert_eq!(data(sql).1, Reach::Any, "{sql}");
        }
    }

    #[test]
    fn ddl_and_control_change_no_rows() {
        for sql in [
            "ALTER TABLE t ADD COLUMN c INT DEFAULT 1",
            "CREATE TABLE t (id INT PRIMARY KEY, s VARCHAR(10) DEFAULT 'select')",
            "CREATE TEMPORARY TABLE x SELECT * FROM t",
            "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW INSERT INTO u VALUES (1)",
            "CREATE DEFINER=`root`@`localhost` PROCEDURE p() UPDATE t SET a = 1",
            "DROP TEMPORARY TABLE IF EXISTS `x`",
            "TRUNCATE TABLE t",
            "GRANT SELECT ON shop.* TO 'u'@'%'",
            "SET PASSWORD FOR 'u'@'%' = PASSWORD('secret')",
            "# Dummy event replacing event type 160",
            "",
        ] {
            assert_eq!(classify(sql, "shop"), Statement::Schema, "{sql}");
        }
        for sql in ["BEGIN", "COMMIT", "XA START 'x'", "SAVEPOINT s", "ROLLBACK"] {
            assert_eq!(classify(sql, "shop"), Statement::Control, "{sql}");
        }
    }

    #[test]
    fn literals_never_become_names() {
        let (_, reach) = data("UPDATE a, b SET a.v = 'secret value', b.n = 42");
        let Reach::Tables(found) = reach else {
            panic!("bounded")
        };
        assert!(
            found
                .iter()
                .all(|t| !t.table.contains("secret") && t.table != "42"),
            "{found:?}"
        );
    }

    #[test]
    fn unterminated_text_does_not_panic() {
        for sql in [
            "INSERT INTO `t",
            "UPDATE t SET a = 'x",
            "/* open",
            "DELETE FROM",
            "`",
        ] {
            let _ = classify(sql, "shop");
        }
    }
}
