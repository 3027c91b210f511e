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
