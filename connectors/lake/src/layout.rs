//! Where a source table lives in the lake: `<root>/<pipeline>/<schema>/<table>`,
//! one directory level per name. Source names may hold any character — a
//! Postgres table can be called `a/b` or `..` — so each name becomes exactly
//! one safe directory name: kept as it is when it can be, else with the
//! offending characters written as `~` and the hex of their UTF-8 bytes.
//!
//! ```text
//!   orders        → orders            Mixed Case ü → Mixed Case ü
//!   a/b           → a~2Fb             ..           → ~2E.
//!   100%          → 100~25            .hidden      → ~2Ehidden
//! ```
//!
//! Not `%`: table paths travel through URLs in the Delta library, which would
//! decode `%2F` back into a `/`. Besides `/`, `\` and control characters, the
//! characters URLs treat specially (`%`, `#`, `?`) and `~` itself are encoded.
//! Encoded names never start with `.`, so they cannot clash with tidewater's
//! own hidden entries (`.tidewater-removed-*` tombstones, staging files).

/// The directory name of a source schema or table name.
pub fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.chars().enumerate() {
        let unsafe_char = matches!(c, '~' | '%' | '#' | '?' | '/' | '\\')
            || c.is_control()
            || (i == 0 && c == '.');
        if unsafe_char {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("~{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The source name of a directory name written by [`path_segment`]; None for
/// names it cannot have written.
pub fn segment_name(segment: &str) -> Option<String> {
    if segment.starts_with('.') {
        return None;
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'~' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_one_safe_directory_and_come_back() {
        for (name, segment) in [
            ("orders", "orders"),
            ("Mixed Case ü", "Mixed Case ü"),
            ("a/b", "a~2Fb"),
            ("..", "~2E."),
            (".hidden", "~2Ehidden"),
            ("100%", "100~25"),
            ("a~b#c?", "a~7Eb~23c~3F"),
            ("tab\there", "tab~09here"),
            ("back\\slash", "back~5Cslash"),
        ] {
            assert_eq!(path_segment(name), segment);
            assert_eq!(segment_name(segment).as_deref(), Some(name));
            assert!(!segment.contains('/') && !segment.starts_with('.'));
        }
        assert_eq!(segment_name(".tidewater-removed-x"), None);
        assert_eq!(segment_name("bad~zz"), None);
        assert_eq!(segment_name("cut~4"), None);
    }
}
