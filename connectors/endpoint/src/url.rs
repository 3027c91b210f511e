//! Connection urls (`postgres://`, `mysql://`): held as a secret
//! ([`SecretUrl`]), their user information checked before any driver reads
//! them ([`check_userinfo`]), their components percent-decoded
//! ([`percent_decode`]) — one rule for every url tidewater reads.
//!
//! ```text
//!   postgres://user:password@host:port/database?query
//!              └── userinfo ┘
//! ```
//!
//! A password written as is may hold the characters that end the userinfo
//! early: `/`, `?` and `#` end the host part for every url parser, and `@`
//! ends the userinfo at its first occurrence for tokio-postgres (at its last
//! for the `url` crate that mysql_async uses). A driver then reads part of
//! the password as the host, the port or the path, and its errors and our
//! `cannot connect to … at <host>` would print that part. So the one rule
//! for every url tidewater reads: in the user name and the password these
//! characters are percent-encoded (`@` → `%40`, `/` → `%2F`, `?` → `%3F`,
//! `#` → `%23`, `%` → `%25`), and [`check_userinfo`] refuses a url that
//! breaks it — with a message that never holds any part of the url.
//!
//! Which `@` ends the userinfo cannot be known when the password holds one
//! as is, so the check takes the last `@` of the url: whatever precedes it
//! after `scheme://` must be free of `@ / ? #`. A query value holding an `@`
//! is therefore refused too (write it `%40`; the values tidewater reads are
//! percent-decoded).

/// Why the userinfo of a connection url cannot be read. The message names
/// no part of the url (it may be a password).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UserinfoError {
    #[error(
        "the user name or password holds an '@', '/', '?' or '#' that is not percent-encoded \
         (or a query value holds an '@'), so where the password ends cannot be told\n\
         hint: percent-encode these characters in the url: @ as %40, / as %2F, ? as %3F, \
         # as %23, % as %25 (the password p@ss/1 is written p%40ss%2F1)"
    )]
    Reserved,
    #[error(
        "the user name or password holds a '%' that is not followed by two hex digits\n\
         hint: write a % of the password as %25 (and @ as %40, / as %2F, ? as %3F, # as %23)"
    )]
    BadEscape,
}

/// Checks that the userinfo of `url` (`scheme://userinfo@host…`) is
/// percent-encoded (see the module doc). A url without `://` (a Postgres
/// `key=value` string) or without `@` has nothing to check.
pub fn check_userinfo(url: &str) -> Result<(), UserinfoError> {
    let Some((_, rest)) = url.split_once("://") else {
        return Ok(());
    };
    let Some(at) = rest.rfind('@') else {
        return Ok(());
    };
    let userinfo = &rest[..at];
    if userinfo.contains(['@', '/', '?', '#']) {
        return Err(UserinfoError::Reserved);
    }
    let bytes = userinfo.as_bytes();
    for (i, _) in userinfo.match_indices('%') {
        let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
        if !hex(i + 1) || !hex(i + 2) {
            return Err(UserinfoError::BadEscape);
        }
    }
    Ok(())
}

/// `%XX` escapes of a url component decoded (a path or a query value may be
/// written escaped); bytes that are not UTF-8 become U+FFFD.
pub fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// A connection url held by a connector's settings: its userinfo may hold a
/// password, so it never prints (`Debug` says only that it is there, and
/// there is no `Display`); [`SecretUrl::expose`] hands the text to a driver.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }

    /// The url's text, for a driver or a parser; never for a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<url redacted>\"")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_secret_url_never_prints_its_password() {
        let url = super::SecretUrl::new("postgres://cdc:hunter2@db:5432/shop");
        assert_eq!(url.expose(), "postgres://cdc:hunter2@db:5432/shop");
        let shown = format!("{url:?} {:?}", Some(url.clone()));
        assert!(
            !shown.contains("hunter2") && !shown.contains("db:5432"),
            "{shown}"
        );
    }

    use super::*;

    #[test]
    fn encoded_userinfo_passes_and_raw_reserved_characters_are_refused() {
        for good in [
            "postgres://u:p%40ss%2Fw%23rd%3F@127.0.0.1:5432/shop",
            "mysql://u:plain@h/db?ssl-mode=DISABLED",
            "mysql://u@h/db",
            "postgres://h/db",
            "host=h user=u password=p@ss/#? dbname=d",
            "postgres://u:p:w%25@h/db",
        ] {
            assert_eq!(check_userinfo(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("postgres://u:p@ss@h/db", UserinfoError::Reserved),
            ("mysql://u:a/b@h:3306/db", UserinfoError::Reserved),
            ("mysql://u:/ab@h:3306/db", UserinfoError::Reserved),
            ("mysql://u:a#b@h/db", UserinfoError::Reserved),
            ("mysql://u:a?b@h/db", UserinfoError::Reserved),
            (
                "postgres://u:pw@h/db?application_name=a@b",
                UserinfoError::Reserved,
            ),
            ("postgres://u:50%off@h/db", UserinfoError::BadEscape),
            ("postgres://u:5%4@h/db", UserinfoError::BadEscape),
        ] {
            assert_eq!(check_userinfo(bad), Err(why), "{bad}");
        }
    }

    #[test]
    fn percent_decodes_a_component() {
        assert_eq!(percent_decode("%2Fetc%2Fca.pem"), "/etc/ca.pem");
        assert_eq!(percent_decode("verify-full"), "verify-full");
        assert_eq!(percent_decode("a%20b%25"), "a b%");
        // an escape that is not one stays as written
        assert_eq!(percent_decode("50%off"), "50%off");
        assert_eq!(percent_decode("%FF"), "\u{FFFD}");
    }
}
