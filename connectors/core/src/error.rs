pub use tidewater_endpoint::ErrorClass;

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
