//! What is wrong with a state file tidewater cannot read, said without its
//! content.
//!
//! State files and rows (the slot marker, the stopped tables, the snapshot
//! plan, schema histories) are written only by tidewater, atomically. One
//! that does not parse was damaged (a disk, a hand edit, a restore of half a
//! backup), and retrying cannot mend it: the caller reports it as a config
//! error naming the file, with what removing that file would imply. The
//! description below is the parser's line, column and kind of problem,
//! never a value out of the file: reasons may quote rows, and a
//! deserializer's "invalid type: string …" would print whatever it found.

/// The problem `err` found, with its line and column; no text of the file.
pub fn json_problem(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match err.classify() {
        Category::Eof => "it ends too early (truncated)".to_string(),
        Category::Syntax => {
            // serde_json's syntax messages are fixed phrases ("expected
            // value", "trailing characters", …) followed by the position.
            let message = err.to_string();
            let phrase = message
                .rsplit_once(" at line ")
                .map_or(message.as_str(), |(phrase, _)| phrase);
            format!("not valid JSON ({phrase})")
        }
        Category::Data => {
            // "missing field `name`" names our own field; other data
            // messages may quote what was found, so they are summarised.
            let message = err.to_string();
            match message.strip_prefix("missing field ") {
                Some(rest) => format!(
                    "valid JSON, but a field tidewater needs is missing ({})",
                    rest.rsplit_once(" at line ")
                        .map_or(rest, |(field, _)| field)
                ),
                None => "valid JSON, but not the structure tidewater writes \
                         (a value of the wrong type, or out of range)"
                    .to_string(),
            }
        }
        Category::Io => "it could not be read".to_string(),
    };
    if err.line() == 0 {
        what
    } else {
        format!("{what} at line {} column {}", err.line(), err.column())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Entry {
        name: String,
        count: u64,
    }

    fn problem(text: &str) -> String {
        json_problem(&serde_json::from_str::<Entry>(text).unwrap_err())
    }

    #[test]
    fn says_where_and_what_without_the_content() {
        assert_eq!(
            problem("{\"name\": \"secret\", \"count\": 1"),
            "it ends too early (truncated) at line 1 column 29"
        );
        assert_eq!(
            problem("{\"name\": \"secret\" \"count\": 1}"),
            "not valid JSON (expected `,` or `}`) at line 1 column 19"
        );
        assert_eq!(
            problem("{\"name\": \"secret\"}"),
            "valid JSON, but a field tidewater needs is missing (`count`) at line 1 column 18"
        );
        let wrong = problem("{\"name\": \"secret\", \"count\": \"secret2\"}");
        assert!(
            wrong.starts_with("valid JSON, but not the structure"),
            "{wrong}"
        );
        assert!(!wrong.contains("secret"), "{wrong}");
    }
}
