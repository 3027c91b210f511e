//! The walsender side of Postgres logical replication: a connection in
//! `replication=database` mode, the replication commands, and the CopyBoth
//! stream of WAL data and standby status updates.
//!
//! ```text
//!  connect ── StartupMessage(replication=database) ──▶ walsender
//!          ◀─ Authentication{Ok | Cleartext | MD5 | SASL(SCRAM-SHA-256)} ──
//!          ◀─ ParameterStatus… BackendKeyData ReadyForQuery ──
//!  query   ── Query("CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT") ──▶
//!          ◀─ RowDescription DataRow CommandComplete ReadyForQuery ──
//!  start   ── Query("START_REPLICATION SLOT s LOGICAL 0/0 (options)") ──▶
//!          ◀─ CopyBothResponse ──
//!                 reader task ◀─ CopyData('w' XLogData | 'k' keepalive) ──
//!                 writer task ── CopyData('r' standby status: flush = acked) ──▶
//!                                 at once when the acknowledged LSN moves or
//!                                 a keepalive asks, else every status interval
//!  close   ── last status update, Terminate ──▶
//!
//!  LsnAcknowledger::ack(lsn) ── fetch_max + wake ──▶ writer task
//! ```
//!
//! Why our own client: the crate we used before (`pgwire-replication`) fixed
//! `proto_version '1'`, which cannot stream in-progress transactions; framing
//! and SCRAM come from `postgres-protocol`, the crate `tokio-postgres` is built
//! on, so what is written here is only the replication-specific part.
//!
//! The reader runs as its own task so a status update never waits for the
//! consumer, and the consumer never waits for a status update; the bounded
//! channel between reader and consumer is the back-pressure (the server's
//! `wal_sender_timeout` is satisfied by the writer's timer alone: see
//! [`status_interval`]).
//!
//! Acknowledgements need no event: an [`LsnAcknowledger`] (cloned out of the
//! source before it starts) records the durable LSN and wakes the writer,
//! which reports it at once — also while the reader waits for server data on
//! an idle database. The writer owns only the socket's write half, so nothing
//! it does cancels a read halfway through a frame.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::{ErrorFields, Message as Backend};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use tidewater_endpoint::quote::double_quoted as quote_ident;

/// Microseconds between 1970-01-01 and 2000-01-01, the Postgres epoch.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// WAL messages buffered between the reader task and the consumer.
const CHANNEL_DEPTH: usize = 4096;

/// The longest time between two status updates: what the server's own
/// apply worker uses (`wal_receiver_status_interval`). Updates are pushed by
/// acknowledgements and keepalives anyway; the timer only keeps the session
/// alive while the reader is held up by back-pressure (it cannot see a
/// keepalive asking for a reply then).
const MAX_STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// The shortest time between two status updates by the timer.
const MIN_STATUS_INTERVAL: Duration = Duration::from_millis(100);

/// The shortest time between a status update and one pushed by an
/// acknowledgement. While the server's WAL keeps moving (other databases
/// write), each update makes it send a keepalive, whose position is
/// acknowledged when nothing is pending: the spacing keeps that exchange to
/// a few a second instead of a busy loop, and still reports a commit well
/// within a second of its acknowledgement.
const ACK_SPACING: Duration = Duration::from_millis(250);

/// How often the writer reports without being asked, for a server whose
/// `wal_sender_timeout` is `timeout` (zero: off): several times per timeout,
/// so a late one never ends the session, at most [`MAX_STATUS_INTERVAL`].
pub fn status_interval(timeout: Duration) -> Duration {
    if timeout.is_zero() {
        return MAX_STATUS_INTERVAL;
    }
    (timeout / 6).clamp(MIN_STATUS_INTERVAL, MAX_STATUS_INTERVAL)
}

/// A WAL position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// Parses the server's `X/Y` form.
    pub fn parse(text: &str) -> Result<Lsn, LsnError> {
        let (high, low) = text.trim().split_once('/').ok_or(LsnError)?;
        let high = u32::from_str_radix(high, 16).map_err(|_| LsnError)?;
        let low = u32::from_str_radix(low, 16).map_err(|_| LsnError)?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = LsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Lsn::parse(s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a WAL position (expected X/Y in hex)")]
pub struct LsnError;

/// An error the server sent, by its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(detail) = &self.detail {
            write!(f, "\ndetail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("replication connection to {target}")]
    Io {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the server answered: {0}")]
    Server(ServerError),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("unexpected replication protocol message: {0}")]
    Protocol(String),
    #[error("the replication connection was closed")]
    Closed,
    #[error(transparent)]
    Tls(#[from] Box<crate::tls::TlsError>),
}

impl ReplicationError {
    /// The SQLSTATE when the server refused something.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    pub fn is_auth(&self) -> bool {
        matches!(self, ReplicationError::Auth(_))
            || matches!(self.sqlstate(), Some("28P01" | "28000"))
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub database: String,
    pub application_name: String,
    /// `-c name=value …` session settings.
    pub options: String,
    /// `sslmode` and the verifier it implies (see [`crate::tls`]).
    pub tls: crate::tls::TlsSetup,
}

#[derive(Debug, Clone)]
pub enum Host {
    Tcp(String),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

impl ConnectParams {
    fn target(&self) -> String {
        match &self.host {
            Host::Tcp(h) => format!("{h}:{}", self.port),
            #[cfg(unix)]
            Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), self.port),
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// A connected, authenticated replication session before streaming.
pub struct ReplicationConnection {
    stream: Box<dyn Stream>,
    buf: BytesMut,
    target: String,
}

/// One row of a replication command's result, as text.
pub type TextRow = Vec<Option<String>>;

impl ReplicationConnection {
    pub async fn connect(params: &ConnectParams) -> Result<Self, ReplicationError> {
        let target = params.target();
        let io = |source| ReplicationError::Io {
            target: target.clone(),
            source,
        };
        let stream: Box<dyn Stream> = match &params.host {
            Host::Tcp(host) => {
                let mut tcp = tokio::net::TcpStream::connect((host.as_str(), params.port))
                    .await
                    .map_err(io)?;
                tcp.set_nodelay(true).map_err(io)?;
                if ssl_request(&mut tcp, params, &target).await? {
                    let tls = params.tls.handshake(host, tcp).await.map_err(|err| {
                        match err
                            .get_ref()
                            .and_then(|e| e.downcast_ref::<rustls::Error>())
                        {
                            Some(refused) => {
                                ReplicationError::Tls(Box::new(crate::tls::TlsError::certificate(
                                    &target,
                                    &params.tls,
                                    refused.clone(),
                                )))
                            }
                            None => io(err),
                        }
                    })?;
                    Box::new(tls)
                } else {
                    Box::new(tcp)
                }
            }
            #[cfg(unix)]
            Host::Unix(dir) => Box::new(
                tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{}", params.port)))
                    .await
                    .map_err(io)?,
            ),
        };
        let mut conn = ReplicationConnection {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            target: target.clone(),
        };
        let mut out = BytesMut::new();
        let mut startup = vec![
            ("user", params.user.as_str()),
            ("database", params.database.as_str()),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
            ("application_name", params.application_name.as_str()),
        ];
        if !params.options.is_empty() {
            startup.push(("options", params.options.as_str()));
        }
        frontend::startup_message(startup, &mut out).map_err(io)?;
        conn.send(&out).await?;
        conn.authenticate(params).await?;
        // ParameterStatus and BackendKeyData until the session is ready.
        loop {
            match conn.read().await? {
                Backend::ReadyForQuery(_) => return Ok(conn),
                Backend::ErrorResponse(body) => return Err(server_error(body.fields())),
                _ => {}
            }
        }
    }

    async fn authenticate(&mut self, params: &ConnectParams) -> Result<(), ReplicationError> {
        let password = || {
            params.password.clone().ok_or_else(|| {
                ReplicationError::Auth("the server asks for a password and the url has none".into())
            })
        };
        let mut out = BytesMut::new();
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            out.clear();
            match self.read().await? {
                Backend::AuthenticationOk => return Ok(()),
                Backend::AuthenticationCleartextPassword => {
                    frontend::password_message(&password()?, &mut out).map_err(|e| self.io(e))?;
                }
                Backend::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(params.user.as_bytes(), &password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut out)
                        .map_err(|e| self.io(e))?;
                }
                Backend::AuthenticationSasl(body) => {
                    let mut offered = Vec::new();
                    let mut mechanisms = body.mechanisms();
                    while let Some(m) = mechanisms.next().map_err(|e| self.io(e))? {
                        offered.push(m.to_string());
                    }
                    if !offered.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                        return Err(ReplicationError::Auth(format!(
                            "the server offers only {} (SCRAM-SHA-256 without channel binding is supported)",
                            offered.join(", ")
                        )));
                    }
                    let state =
                        sasl::ScramSha256::new(&password()?, sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, state.message(), &mut out)
                        .map_err(|e| self.io(e))?;
                    scram = Some(state);
                }
                Backend::AuthenticationSaslContinue(body) => {
                    let state = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Protocol("SASL continue before start".into())
                    })?;
                    state
                        .update(body.data())
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                    frontend::sasl_response(state.message(), &mut out).map_err(|e| self.io(e))?;
                }
                Backend::AuthenticationSaslFinal(body) => {
                    let state = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Protocol("SASL final before start".into())
                    })?;
                    state
                        .finish(body.data())
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                    continue;
                }
                Backend::ErrorResponse(body) => return Err(server_error(body.fields())),
                Backend::AuthenticationKerberosV5
                | Backend::AuthenticationScmCredential
                | Backend::AuthenticationGss
                | Backend::AuthenticationSspi
                | Backend::AuthenticationGssContinue(_) => {
                    return Err(ReplicationError::Auth(
                        "the server asks for GSS/SSPI/Kerberos, which tidewater does not speak; \
                         use password, md5 or scram-sha-256 in pg_hba.conf"
                            .into(),
                    ))
                }
                _ => {
                    return Err(ReplicationError::Protocol(
                        "unexpected message during authentication".into(),
                    ))
                }
            }
            self.send(&out).await?;
        }
    }

    /// Runs one replication command (simple query protocol) and returns its
    /// rows as text.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<TextRow>, ReplicationError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| self.io(e))?;
        self.send(&out).await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            match self.read().await? {
                Backend::DataRow(row) => {
                    let buffer = row.buffer();
                    let mut ranges = row.ranges();
                    let mut fields = Vec::new();
                    while let Some(range) = ranges.next().map_err(|e| self.io(e))? {
                        fields
                            .push(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned()));
                    }
                    rows.push(fields);
                }
                Backend::ErrorResponse(body) => failure = Some(server_error(body.fields())),
                Backend::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(rows),
        }
    }

    /// `START_REPLICATION SLOT … LOGICAL start (options)`; the stream runs until
    /// [`ReplicationStream::close`] or an error, reporting what `acked`
    /// holds: at once when it moves, else every `status_interval`.
    pub async fn start(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, String)],
        status_interval: Duration,
        acked: LsnAcknowledger,
    ) -> Result<ReplicationStream, ReplicationError> {
        let options: Vec<String> = options
            .iter()
            .map(|(k, v)| format!("{k} '{}'", v.replace('\'', "''")))
            .collect();
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} ({})",
            quote_ident(slot),
            options.join(", ")
        );
        let mut out = BytesMut::new();
        frontend::query(&sql, &mut out).map_err(|e| self.io(e))?;
        self.send(&out).await?;
        loop {
            match read_message(&mut self.stream, &mut self.buf, &self.target).await? {
                Incoming::CopyBothResponse => break,
                Incoming::Message(Backend::ErrorResponse(body)) => {
                    return Err(server_error(body.fields()))
                }
                Incoming::Message(_) => {}
            }
        }
        Ok(ReplicationStream::spawn(self, status_interval, acked))
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ReplicationError> {
        let result = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        }
        .await;
        result.map_err(|e| self.io(e))
    }

    /// The next message before streaming; CopyBothResponse is out of place.
    async fn read(&mut self) -> Result<Backend, ReplicationError> {
        match read_message(&mut self.stream, &mut self.buf, &self.target).await? {
            Incoming::Message(message) => Ok(message),
            Incoming::CopyBothResponse => Err(ReplicationError::Protocol(
                "CopyBothResponse outside START_REPLICATION".into(),
            )),
        }
    }

    fn io(&self, source: std::io::Error) -> ReplicationError {
        ReplicationError::Io {
            target: self.target.clone(),
            source,
        }
    }
}

enum Incoming {
    Message(Backend),
    /// `W`: not known to `postgres-protocol`, so recognised here.
    CopyBothResponse,
}

/// Reads one backend message.
async fn read_message<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    buf: &mut BytesMut,
    target: &str,
) -> Result<Incoming, ReplicationError> {
    let io = |source| ReplicationError::Io {
        target: target.to_string(),
        source,
    };
    loop {
        if buf.len() >= 5 && buf[0] == b'W' {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() > len {
                buf.advance(len + 1);
                return Ok(Incoming::CopyBothResponse);
            }
        } else if let Some(message) = Backend::parse(buf).map_err(io)? {
            return Ok(Incoming::Message(message));
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        if stream.read_buf(buf).await.map_err(io)? == 0 {
            return Err(ReplicationError::Closed);
        }
    }
}

/// Asks for TLS when the mode wants it: true when the server agreed and the
/// handshake is next. Exactly one byte of answer is read, so nothing the
/// server sends before the handshake can be taken for protected data.
async fn ssl_request(
    tcp: &mut tokio::net::TcpStream,
    params: &ConnectParams,
    target: &str,
) -> Result<bool, ReplicationError> {
    let io = |source| ReplicationError::Io {
        target: target.to_string(),
        source,
    };
    let mode = params.tls.mode;
    if mode == crate::tls::SslMode::Disable {
        return Ok(false);
    }
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    tcp.write_all(&out).await.map_err(io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io)?;
    match answer[0] {
        b'S' => Ok(true),
        b'N' if mode.requires_tls() => Err(ReplicationError::Tls(Box::new(
            crate::tls::TlsError::Refused {
                target: target.to_string(),
                mode,
            },
        ))),
        b'N' => Ok(false),
        other => Err(ReplicationError::Protocol(format!(
            "answer {other:#04x} to the SSL request"
        ))),
    }
}

fn server_error(mut fields: ErrorFields<'_>) -> ReplicationError {
    let mut error = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'V' => error.severity = value,
            b'S' if error.severity.is_empty() => error.severity = value,
            b'C' => error.code = value,
            b'M' => error.message = value,
            b'D' => error.detail = Some(value),
            b'H' => error.hint = Some(value),
            _ => {}
        }
    }
    ReplicationError::Server(error)
}

/// What the walsender sends while streaming.
#[derive(Debug)]
pub enum WalMessage {
    /// A pgoutput message starting at `start`; `end` is the server's WAL end.
    XLogData { start: Lsn, end: Lsn, data: Bytes },
    /// The server's current WAL end: everything before it that we were sent
    /// is all there is.
    KeepAlive { wal_end: Lsn },
}

/// The position acknowledged downstream, shared by every clone (the
/// coordinator's handle, the source, the writer task of its stream). It only
/// grows; each move wakes the writer, which reports it to the server at once.
/// It outlives a stream: a stream started later reports it from the start.
#[derive(Clone, Default)]
pub struct LsnAcknowledger(Arc<AckedLsn>);

#[derive(Default)]
struct AckedLsn {
    lsn: AtomicU64,
    moved: Notify,
}

impl LsnAcknowledger {
    /// Records that everything before `lsn` is durable downstream (a
    /// commit's end LSN or a keepalive's WAL end); a smaller value than one
    /// recorded changes nothing.
    pub fn ack_lsn(&self, lsn: Lsn) {
        if self.0.lsn.fetch_max(lsn.0, Ordering::AcqRel) < lsn.0 {
            self.0.moved.notify_one();
        }
    }

    /// The largest LSN acknowledged.
    pub fn acked(&self) -> Lsn {
        Lsn(self.0.lsn.load(Ordering::Acquire))
    }
}

impl tidewater_core::Acknowledger for LsnAcknowledger {
    fn ack(&self, value: u64) {
        self.ack_lsn(Lsn(value));
    }
}

/// The streaming phase: a reader task decoding CopyData frames and a writer
/// task reporting the acknowledged position.
pub struct ReplicationStream {
    rx: mpsc::Receiver<Result<WalMessage, ReplicationError>>,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

struct Shared {
    /// The position acknowledged downstream (flush = apply).
    acked: LsnAcknowledger,
    /// The position last reported to the server.
    reported: AtomicU64,
    /// Wakes the writer: a keepalive asked for a reply, or shutdown.
    wake: Notify,
    closing: std::sync::atomic::AtomicBool,
}

impl ReplicationStream {
    fn spawn(conn: ReplicationConnection, interval: Duration, acked: LsnAcknowledger) -> Self {
        let ReplicationConnection {
            stream,
            buf,
            target,
        } = conn;
        let (read_half, write_half) = tokio::io::split(stream);
        let shared = Arc::new(Shared {
            acked,
            reported: AtomicU64::new(0),
            wake: Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let reader = tokio::spawn(read_loop(
            read_half,
            buf,
            target.clone(),
            tx,
            shared.clone(),
        ));
        let writer = tokio::spawn(write_loop(write_half, target, interval, shared.clone()));
        ReplicationStream {
            rx,
            shared,
            reader,
            writer,
        }
    }

    /// The next message; an error ends the stream.
    pub async fn recv(&mut self) -> Result<WalMessage, ReplicationError> {
        match self.rx.recv().await {
            Some(message) => message,
            None => Err(ReplicationError::Closed),
        }
    }

    /// The position the server was last told.
    pub fn reported(&self) -> Lsn {
        Lsn(self.shared.reported.load(Ordering::Acquire))
    }

    /// Reports the last acknowledgement, then ends the session (the writer
    /// sends a final status update and Terminate), waiting at most `wait`.
    pub async fn close(mut self, wait: Duration) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        let _ = tokio::time::timeout(wait, &mut self.writer).await;
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

async fn read_loop(
    mut half: ReadHalf<Box<dyn Stream>>,
    mut buf: BytesMut,
    target: String,
    tx: mpsc::Sender<Result<WalMessage, ReplicationError>>,
    shared: Arc<Shared>,
) {
    loop {
        let message = match read_message(&mut half, &mut buf, &target).await {
            Ok(Incoming::Message(Backend::CopyData(body))) => {
                parse_copy_data(body.into_bytes(), &shared)
            }
            Ok(Incoming::Message(Backend::ErrorResponse(body))) => Err(server_error(body.fields())),
            Ok(Incoming::Message(Backend::CopyDone | Backend::CommandComplete(_))) => {
                Err(ReplicationError::Closed)
            }
            Ok(Incoming::Message(Backend::NoticeResponse(_) | Backend::ParameterStatus(_))) => {
                continue
            }
            Ok(_) => Err(ReplicationError::Protocol(
                "unexpected message while streaming".into(),
            )),
            Err(error) => Err(error),
        };
        let failed = message.is_err();
        if tx.send(message).await.is_err() || failed {
            return;
        }
    }
}

fn parse_copy_data(mut data: Bytes, shared: &Shared) -> Result<WalMessage, ReplicationError> {
    let short = || ReplicationError::Protocol("short CopyData frame".into());
    if data.is_empty() {
        return Err(short());
    }
    match data.get_u8() {
        b'w' => {
            if data.len() < 24 {
                return Err(short());
            }
            let start = Lsn(data.get_u64());
            let end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(WalMessage::XLogData { start, end, data })
        }
        b'k' => {
            if data.len() < 17 {
                return Err(short());
            }
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            if data.get_u8() == 1 {
                shared.wake.notify_one();
            }
            Ok(WalMessage::KeepAlive { wal_end })
        }
        tag => Err(ReplicationError::Protocol(format!(
            "unknown CopyData kind {tag:#04x}"
        ))),
    }
}

async fn write_loop(
    mut half: WriteHalf<Box<dyn Stream>>,
    target: String,
    interval: Duration,
    shared: Arc<Shared>,
) {
    loop {
        let closing = shared.closing.load(Ordering::Acquire);
        let acked = shared.acked.acked().0;
        let mut out = BytesMut::new();
        standby_status(acked, &mut out);
        if closing {
            frontend::terminate(&mut out);
        }
        let sent = async {
            half.write_all(&out).await?;
            half.flush().await
        }
        .await;
        if let Err(error) = sent {
            tracing::debug!(target = %target, error = %error, "replication status update not sent");
            return;
        }
        shared.reported.fetch_max(acked, Ordering::AcqRel);
        if closing {
            let _ = half.shutdown().await;
            return;
        }
        // The next update: when a keepalive asks or the stream closes; when
        // the acknowledged LSN moved past what was just sent (at least
        // ACK_SPACING after it); or when the interval is up. A move between
        // the load above and here left a permit in `moved`: none is missed.
        let sent_at = Instant::now();
        let due = sent_at + interval;
        loop {
            if shared.acked.acked().0 > acked {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep_until(sent_at + ACK_SPACING) => {}
                }
                break;
            }
            tokio::select! {
                _ = shared.acked.0.moved.notified() => {}
                _ = shared.wake.notified() => break,
                _ = tokio::time::sleep_until(due) => break,
            }
        }
    }
}

/// A standby status update: written = flushed = applied = `lsn`.
fn standby_status(lsn: u64, out: &mut BytesMut) {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
        - PG_EPOCH_OFFSET_US;
    let mut body = BytesMut::with_capacity(34);
    body.put_u8(b'r');
    body.put_u64(lsn);
    body.put_u64(lsn);
    body.put_u64(lsn);
    body.put_i64(now_us);
    body.put_u8(0);
    if let Ok(copy) = frontend::CopyData::new(body.freeze()) {
        copy.write(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips() {
        let lsn = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!(Lsn::parse("16B374D848").is_err());
        assert!(Lsn::parse("x/1").is_err());
        assert_eq!(Lsn::parse("0/0").unwrap(), Lsn::ZERO);
    }

    #[test]
    fn status_updates_come_several_times_per_sender_timeout() {
        let secs = Duration::from_secs;
        assert_eq!(status_interval(secs(60)), secs(10));
        assert_eq!(status_interval(secs(600)), secs(10));
        assert_eq!(status_interval(secs(30)), secs(5));
        assert_eq!(status_interval(secs(6)), secs(1));
        assert_eq!(
            status_interval(Duration::from_millis(10)),
            MIN_STATUS_INTERVAL
        );
        assert_eq!(status_interval(Duration::ZERO), MAX_STATUS_INTERVAL);
    }

    #[test]
    fn an_acknowledger_only_moves_forward_and_every_clone_sees_it() {
        let ack = LsnAcknowledger::default();
        let clone = ack.clone();
        tidewater_core::Acknowledger::ack(&clone, 40);
        ack.ack_lsn(Lsn(30));
        assert_eq!(ack.acked(), Lsn(40));
        assert_eq!(clone.acked(), Lsn(40));
    }

    #[test]
    fn copy_data_frames_decode_and_reject_short_input() {
        let shared = Shared {
            acked: LsnAcknowledger::default(),
            reported: AtomicU64::new(0),
            wake: Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
        };
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(10);
        w.put_u64(20);
        w.put_i64(0);
        w.put_slice(b"Bxyz");
        match parse_copy_data(w.freeze(), &shared).unwrap() {
            WalMessage::XLogData { start, end, data } => {
                assert_eq!((start.0, end.0, &data[..]), (10, 20, &b"Bxyz"[..]));
            }
            other => panic!("{other:?}"),
        }
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(99);
        k.put_i64(0);
        k.put_u8(1);
        assert!(matches!(
            parse_copy_data(k.freeze(), &shared).unwrap(),
            WalMessage::KeepAlive { wal_end: Lsn(99) }
        ));
        for bad in [&b""[..], b"w1234", b"k123", b"z"] {
            assert!(parse_copy_data(Bytes::copy_from_slice(bad), &shared).is_err());
        }
    }
}
