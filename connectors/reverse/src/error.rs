//! What can go wrong in a reverse-ETL job. Messages name the job's part
//! (query, result column, target table, state file) and never carry a row
//! value: server messages that quote a value have it cut out.

use std::path::PathBuf;

use datafusion::error::DataFusionError;
use tidewater_core::{Classified, ErrorClass};
use tidewater_lake::LakeError;

#[derive(Debug, thiserror::Error)]
pub enum ReverseError {
    #[error("reading the lake")]
    Lake(#[from] LakeError),
    #[error("the query failed")]
    Query {
        #[source]
        source: DataFusionError,
    },
    #[error("preparing lake table {table} for the query")]
    Engine {
        table: String,
        #[source]
        source: DataFusionError,
    },
    #[error("the query names {name}, which is not a lake table of this pipeline\nhint: {hint}")]
    UnknownTable { name: String, hint: String },
    #[error("the query's result does not fit the job: {problem}\nhint: {hint}")]
    Result { problem: String, hint: String },
    #[error("target table {table} does not fit the query's result:\n  {}\nhint: alter the table, cast in the query, or point target_table at a new table (tidewater creates it)", problems.join("\n  "))]
    TargetMismatch {
        table: String,
        problems: Vec<String>,
    },
    #[error("{action} on the target: {message}")]
    Target {
        action: String,
        message: String,
        /// The server said: lock timeout, deadlock, serialization failure,
        /// statement timeout, lost connection — worth another try.
        retryable: bool,
    },
    #[error("the query's result did not come in the order of the job's key, which the difference from the last push needs\nhint: this is a bug in tidewater: report it with the query and the key's column types")]
    Order,
    #[error("another run of job {job} is in progress\nhint: wait for it (a schedule under `tidewater run` or another `tidewater reverse-etl`)")]
    Busy { job: String },
    #[error("reverse-ETL state file {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Classified for ReverseError {
    fn class(&self) -> ErrorClass {
        match self {
            ReverseError::Lake(err) => err.class(),
            ReverseError::Target {
                retryable: true, ..
            } => ErrorClass::Transient,
            ReverseError::State { .. } => ErrorClass::Transient,
            ReverseError::Engine { .. } | ReverseError::Order => ErrorClass::Internal,
            _ => ErrorClass::Definite,
        }
    }
}

/// A server message without the values it quotes: `invalid input syntax
/// for type integer: "x1"` → `… integer: <value>`; MySQL's `Incorrect
/// decimal value: '1x' for column …` likewise.
pub fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(": ") {
        let (head, tail) = rest.split_at(at + 2);
        out.push_str(head);
        let quote = match tail.chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => {
                rest = tail;
                continue;
            }
        };
        match tail[1..].find(quote) {
            Some(end) => {
                out.push_str("<value>");
                rest = &tail[end + 2..];
            }
            None => {
                out.push_str("<value>");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn quoted_values_are_cut_out() {
        assert_eq!(
            redact("invalid input syntax for type integer: \"x1\""),
            "invalid input syntax for type integer: <value>"
        );
        assert_eq!(
            redact("Incorrect decimal value: '1x' for column `t`.`c` at row 1"),
            "Incorrect decimal value: <value> for column `t`.`c` at row 1"
        );
        assert_eq!(
            redact("relation \"public.x\" does not exist"),
            "relation \"public.x\" does not exist"
        );
        assert_eq!(redact("value: 'open"), "value: <value>");
    }
}
