//! Identifiers in SQL text, one function per quoting style. Every statement
//! tidewater builds names its tables and columns through these, so a name
//! holding the quote character (or a keyword, or upper case) means the same
//! object in every connector.
//!
//! ```text
//!   double_quoted("my \"odd\" table")  →  "my ""odd"" table"     Postgres, DataFusion (SQL standard)
//!   backticked("my `odd` table")       →  `my ``odd`` table`     MySQL, MariaDB
//! ```
//!
//! Both styles escape their quote by doubling it; no other character is
//! special inside a quoted identifier.

/// An identifier in double quotes (SQL standard: Postgres, the warehouse,
/// DataFusion over the lake).
pub fn double_quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An identifier in backticks (MySQL, MariaDB).
pub fn backticked(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_the_quote_character_only() {
        assert_eq!(double_quoted("orders"), "\"orders\"");
        assert_eq!(double_quoted("a\"b`c"), "\"a\"\"b`c\"");
        assert_eq!(double_quoted(""), "\"\"");
        assert_eq!(backticked("orders"), "`orders`");
        assert_eq!(backticked("a`b\"c"), "`a``b\"c`");
        assert_eq!(backticked("Ümlaut table"), "`Ümlaut table`");
    }
}
