/// What the daemon does about an error. Every connector error reports one of
/// these; the table that maps a class to an action lives in the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The network, the server or the store hiccuped: reconnect and resume from
    /// the durable marks, with backoff.
    Transient,
    /// One table cannot go on (an unsupported change, a value that cannot be
    /// represented): the operator has to act on that table.
    Definite,
    /// The configuration or the server's settings are wrong: refuse to start.
    Config,
    /// A bug or a broken invariant: halt.
    Internal,
}

/// An error that knows its [`ErrorClass`]. Every connector error type
/// implements it, so the binary's policy table can act on any of them.
pub trait Classified: std::error::Error + Send + Sync + 'static {
    fn class(&self) -> ErrorClass;

    /// The one table the error is about, when it concerns that table only
    /// (a [`ErrorClass::Definite`] error naming a table stops that table,
    /// not the pipeline). Default: none.
    fn table(&self) -> Option<&crate::TableId> {
        None
    }
}

/// An error and its causes on one line (what a stopped table's record and
/// the log say; errors never carry row values).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
