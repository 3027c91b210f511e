//! Binlog event bodies other than rows: positions, transactions, GTIDs.
//!
//! `mysql_async` frames the replication stream and strips each event's 19-byte
//! header and CRC32 checksum; the parsers here take what is left, the *body*
//! (`Event::data()`), and never look at the network. They are pure so they can be
//! fuzzed and checked against binlog files captured from a real server
//! (`tests/fixtures/`).
//!
//! ```text
//!  v4 event on disk / on the wire
//!  +-----------+------+-----------+------+---------+-------+----------------+--------+
//!  | timestamp | type | server_id | size | log_pos | flags |      body      | CRC32  |
//!  |     4     |  1   |     4     |  4   |    4    |   2   | size - 19 - 4  |   4    |
//!  +-----------+------+-----------+------+---------+-------+----------------+--------+
//!                                                          ^ what these parsers take
//! ```
//!
//! Two GTID dialects exist. MySQL names a transaction `source_uuid:gno` and keeps
//! a set of executed intervals per source ([`GtidSet`]). MariaDB names it
//! `domain-server-seq` and a resumable position is the last GTID per replication
//! domain ([`GtidState`]). Both are parsed from and formatted to the text the
//! servers accept (`gtid_executed`, `@slave_connect_state`).
//!
//! MySQL 8 may wrap a whole transaction into one `TRANSACTION_PAYLOAD` event
//! (`binlog_transaction_compression=ON`): [`transaction_payload`] decompresses it
//! and [`split_events`] cuts it into the inner events, which carry v4 headers but
//! no checksums.
//!
//! [`DecodeError`] is the error of every decoder in this crate: it names column
//! names, types and byte offsets, never row values.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;

/// Why a binlog event body could not be decoded. Every variant is *definite* for
/// the table or stream it concerns: retrying the same bytes gives the same error.
/// Messages carry column names, type names and byte offsets, never values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("binlog event truncated: {what} needs {needed} bytes at offset {offset}")]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
    },
    #[error("malformed binlog event: {what} at offset {offset}")]
    Malformed { what: &'static str, offset: usize },
    #[error("unsupported binlog content: {what}")]
    Unsupported { what: String },
    #[error("rows event is for table id {got}, but the table map is for table id {expected}")]
    TableMismatch { expected: u64, got: u64 },
    #[error(
        "row image lacks column `{column}`; tidewater needs full row images \
         (hint: SET GLOBAL binlog_row_image = FULL)"
    )]
    PartialImage { column: String },
    #[error(
        "table map of `{table}` carries no {what}; tidewater needs full table metadata \
         (hint: SET GLOBAL binlog_row_metadata = FULL)"
    )]
    MissingMetadata { table: String, what: &'static str },
    #[error("column `{column}` uses charset {charset:?} (collation {collation}), which tidewater cannot decode")]
    UnknownCharset {
        column: String,
        collation: u32,
        charset: Option<String>,
    },
    #[error("column `{column}` has unsupported binlog type {type_code}: {reason}")]
    UnsupportedColumn {
        column: String,
        type_code: u8,
        reason: &'static str,
    },
    #[error("invalid {column_type} value in column `{column}` at offset {offset}: {reason}")]
    InvalidValue {
        column: String,
        column_type: String,
        offset: usize,
        reason: &'static str,
    },
    #[error("invalid binary JSON at offset {offset}: {reason}")]
    Json { offset: usize, reason: &'static str },
    #[error("cannot decompress {what}")]
    Decompress {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl tidewater_core::Classified for DecodeError {
    fn class(&self) -> tidewater_core::ErrorClass {
        use tidewater_core::ErrorClass;
        match self {
            // Server settings the operator must change.
            DecodeError::PartialImage { .. } | DecodeError::MissingMetadata { .. } => {
                ErrorClass::Config
            }
            // The caller paired a rows event with the wrong table map.
            DecodeError::TableMismatch { .. } => ErrorClass::Internal,
            _ => ErrorClass::Definite,
        }
    }
}

/// A bounds-checked little-endian reader over an event body. Every read either
/// returns the bytes or a [`DecodeError::Truncated`] naming the field.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: n,
            });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    /// An unsigned little-endian integer of `n` ≤ 8 bytes.
    pub(crate) fn uint(&mut self, n: usize, what: &'static str) -> Result<u64, DecodeError> {
        Ok(le_uint(self.take(n, what)?))
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(self.uint(2, what)? as u16)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(self.uint(4, what)? as u32)
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.uint(8, what)
    }

    /// A length-encoded integer (`net_field_length`): one byte below 251, else a
    /// 0xfc/0xfd/0xfe prefix and 2/3/8 bytes. 0xfb (SQL NULL) and 0xff are invalid
    /// here.
    pub(crate) fn lenenc(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let at = self.pos;
        match self.u8(what)? {
            b @ 0..=250 => Ok(u64::from(b)),
            0xfc => self.uint(2, what),
            0xfd => self.uint(3, what),
            0xfe => self.uint(8, what),
            _ => Err(DecodeError::Malformed { what, offset: at }),
        }
    }

    /// A length-encoded integer used as a length or count: it must not exceed
    /// what is left of the body, which caps every allocation by the body size.
    pub(crate) fn lenenc_len(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.lenenc(what)?;
        if n > self.remaining() as u64 {
            return Err(DecodeError::Truncated {
                what,
                offset: at,
                needed: usize::try_from(n).unwrap_or(usize::MAX),
            });
        }
        Ok(n as usize)
    }

    /// A length-encoded byte string.
    pub(crate) fn lenenc_bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.lenenc_len(what)?;
        self.take(n, what)
    }
}

/// Little-endian unsigned integer of up to 8 bytes.
#[inline]
pub(crate) fn le_uint(bytes: &[u8]) -> u64 {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate().take(8) {
        v |= u64::from(*b) << (8 * i);
    }
    v
}

/// Big-endian unsigned integer of up to 8 bytes.
#[inline]
pub(crate) fn be_uint(bytes: &[u8]) -> u64 {
    let mut v = 0u64;
    for b in bytes.iter().take(8) {
        v = (v << 8) | u64::from(*b);
    }
    v
}

/// Event type codes used by this crate (MySQL `Log_event_type`, MariaDB additions).
pub mod event_type {
    pub const QUERY: u8 = 2;
    pub const ROTATE: u8 = 4;
    pub const FORMAT_DESCRIPTION: u8 = 15;
    pub const XID: u8 = 16;
    pub const TABLE_MAP: u8 = 19;
    pub const HEARTBEAT: u8 = 27;
    pub const MYSQL_GTID: u8 = 33;
    pub const MYSQL_ANONYMOUS_GTID: u8 = 34;
    pub const PARTIAL_UPDATE_ROWS: u8 = 39;
    pub const TRANSACTION_PAYLOAD: u8 = 40;
    pub const HEARTBEAT_V2: u8 = 41;
    pub const MARIADB_ANNOTATE_ROWS: u8 = 160;
    pub const MARIADB_GTID: u8 = 162;
    pub const MARIADB_GTID_LIST: u8 = 163;
    pub const MARIADB_QUERY_COMPRESSED: u8 = 165;
}

/// ROTATE (4): the next binlog file and the position to read it from.
pub fn rotate(body: &[u8]) -> Result<(u64, String), DecodeError> {
    let mut c = Cursor::new(body);
    let position = c.u64("rotate position")?;
    let name = String::from_utf8_lossy(c.rest()).into_owned();
    Ok((position, name))
}

/// A QUERY event (2): DDL, or `BEGIN` in statement-less transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryEvent {
    pub thread_id: u32,
    pub exec_time_s: u32,
    pub error_code: u16,
    /// The default database of the session (may be empty).
    pub schema: String,
    /// The statement text. Statements are not column data; bytes that are not
    /// UTF-8 (a latin1 client's literals) are replaced, never rejected.
    pub sql: String,
}

/// QUERY (2). Layout: thread id 4, exec time 4, schema length 1, error code 2,
/// status-vars length 2, status vars, schema, 0x00, statement.
pub fn query(body: &[u8]) -> Result<QueryEvent, DecodeError> {
    let (event, sql) = query_parts(body, 0)?;
    Ok(QueryEvent {
        sql: String::from_utf8_lossy(sql).into_owned(),
        ..event
    })
}

/// MariaDB QUERY_COMPRESSED (165): a QUERY whose statement is compressed with
/// MariaDB's binlog compression header (`0x80 | n`, length, zlib).
pub fn query_compressed(body: &[u8]) -> Result<QueryEvent, DecodeError> {
    let (event, compressed) = query_parts(body, 0)?;
    let sql = mariadb_uncompress(compressed, "compressed query")?;
    Ok(QueryEvent {
        sql: String::from_utf8_lossy(&sql).into_owned(),
        ..event
    })
}

/// EXECUTE_LOAD_QUERY (18): how statement-based logging writes `LOAD DATA`
/// (the file's bytes come in the events before it). A QUERY with 13 more
/// post-header bytes: file id 4, start 4, end 4, duplicate handling 1.
pub fn execute_load_query(body: &[u8]) -> Result<QueryEvent, DecodeError> {
    let (event, sql) = query_parts(body, 13)?;
    Ok(QueryEvent {
        sql: String::from_utf8_lossy(sql).into_owned(),
        ..event
    })
}

/// A query-shaped event; `extra` post-header bytes follow the status-vars
/// length.
fn query_parts(body: &[u8], extra: usize) -> Result<(QueryEvent, &[u8]), DecodeError> {
    let mut c = Cursor::new(body);
    let thread_id = c.u32("query thread id")?;
    let exec_time_s = c.u32("query exec time")?;
    let schema_len = usize::from(c.u8("query schema length")?);
    let error_code = c.u16("query error code")?;
    let status_len = usize::from(c.u16("query status vars length")?);
    c.take(extra, "load query post-header")?;
    c.take(status_len, "query status vars")?;
    let schema = String::from_utf8_lossy(c.take(schema_len, "query schema")?).into_owned();
    let at = c.pos();
    if c.u8("query schema terminator")? != 0 {
        return Err(DecodeError::Malformed {
            what: "query schema terminator",
            offset: at,
        });
    }
    let event = QueryEvent {
        thread_id,
        exec_time_s,
        error_code,
        schema,
        sql: String::new(),
    };
    Ok((event, c.rest()))
}

/// MariaDB's binlog compression (`log_bin_compress`): one header byte
/// `0x80 | n`, then the uncompressed length in `n` (1..=4) big-endian bytes, then
/// a zlib stream. The declared length caps the output, so a corrupt header
/// cannot make us allocate more than it claims (and at most 16 MiB more than the
/// input could plausibly expand to is never reserved up front).
pub(crate) fn mariadb_uncompress(data: &[u8], what: &'static str) -> Result<Vec<u8>, DecodeError> {
    let mut c = Cursor::new(data);
    let header = c.u8(what)?;
    let len_bytes = usize::from(header & 0x07);
    if header & 0x80 == 0 || !(1..=4).contains(&len_bytes) {
        return Err(DecodeError::Malformed {
            what: "compression header",
            offset: 0,
        });
    }
    let expected = be_uint(c.take(len_bytes, what)?);
    if expected > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::Malformed {
            what: "compressed length above 1 GiB",
            offset: 1,
        });
    }
    let expected = expected as usize;
    let mut out = Vec::with_capacity(expected.min(data.len().saturating_mul(64)));
    flate2::read::ZlibDecoder::new(c.rest())
        .take(expected as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| DecodeError::Decompress { what, source })?;
    if out.len() != expected {
        return Err(DecodeError::Malformed {
            what: "compressed length differs from the header",
            offset: 1,
        });
    }
    Ok(out)
}

/// XID (16): the commit of a transactional transaction; returns the XA id.
pub fn xid(body: &[u8]) -> Result<u64, DecodeError> {
    Cursor::new(body).u64("xid")
}

/// HEARTBEAT (27): the binlog file name the source is at. (The position is in
/// the event header's `log_pos`.)
pub fn heartbeat(body: &[u8]) -> Result<String, DecodeError> {
    Ok(String::from_utf8_lossy(body).into_owned())
}

/// MySQL HEARTBEAT_V2 (41): fields `type, length, value` (lenenc) until an end
/// mark; 1 = file name, 2 = position. Returns (file name, position).
pub fn heartbeat_v2(body: &[u8]) -> Result<(String, u64), DecodeError> {
    let mut c = Cursor::new(body);
    let mut name = String::new();
    let mut position = 0;
    while c.remaining() > 0 {
        let field = c.lenenc("heartbeat field type")?;
        if field == 0 {
            break;
        }
        let value = c.lenenc_bytes("heartbeat field")?;
        match field {
            1 => name = String::from_utf8_lossy(value).into_owned(),
            2 => position = Cursor::new(value).lenenc("heartbeat position")?,
            _ => {}
        }
    }
    Ok((name, position))
}

/// A MariaDB GTID event (162): starts a transaction `domain_id-server_id-seq_no`
/// (the server id is in the event header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MariaGtid {
    pub seq_no: u64,
    pub domain_id: u32,
    pub flags: u8,
    /// `FL_STANDALONE`: the group is a single statement with no COMMIT/XID
    /// event after it (DDL).
    pub standalone: bool,
    /// Group-commit id, when `FL_GROUP_COMMIT_ID` is set.
    pub commit_id: Option<u64>,
}

const MARIA_FL_STANDALONE: u8 = 1;
const MARIA_FL_GROUP_COMMIT_ID: u8 = 2;

/// MariaDB GTID (162): seq_no 8, domain id 4, flags 1, [commit id 8], ...
pub fn gtid(body: &[u8]) -> Result<MariaGtid, DecodeError> {
    let mut c = Cursor::new(body);
    let seq_no = c.u64("gtid seq_no")?;
    let domain_id = c.u32("gtid domain id")?;
    let flags = c.u8("gtid flags")?;
    let commit_id = if flags & MARIA_FL_GROUP_COMMIT_ID != 0 {
        Some(c.u64("gtid commit id")?)
    } else {
        None
    };
    Ok(MariaGtid {
        seq_no,
        domain_id,
        flags,
        standalone: flags & MARIA_FL_STANDALONE != 0,
        commit_id,
    })
}

/// MariaDB GTID_LIST (163): the binlog state at the start of a file, as
/// `(domain_id, server_id, seq_no)` triples.
pub fn gtid_list(body: &[u8]) -> Result<Vec<(u32, u32, u64)>, DecodeError> {
    let mut c = Cursor::new(body);
    // The top 4 bits are flags.
    let count = (c.u32("gtid list count")? & 0x0fff_ffff) as usize;
    if count > c.remaining() / 16 {
        return Err(DecodeError::Truncated {
            what: "gtid list",
            offset: 4,
            needed: count.saturating_mul(16),
        });
    }
    let mut list = Vec::with_capacity(count);
    for _ in 0..count {
        let domain = c.u32("gtid list domain")?;
        let server = c.u32("gtid list server id")?;
        let seq = c.u64("gtid list seq_no")?;
        list.push((domain, server, seq));
    }
    Ok(list)
}

/// A MySQL GTID (33) or ANONYMOUS_GTID (34) event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MysqlGtid {
    pub flags: u8,
    /// Source server UUID (all zero for anonymous transactions).
    pub sid: [u8; 16],
    pub gno: i64,
    /// Logical clock for parallel apply, when present (MySQL ≥ 5.7).
    pub last_committed: Option<i64>,
    pub sequence_number: Option<i64>,
}

impl MysqlGtid {
    /// `uuid:gno`, as MySQL prints it.
    pub fn to_gtid_string(&self) -> String {
        format!("{}:{}", format_uuid(&self.sid), self.gno)
    }
}

/// MySQL GTID (33/34): flags 1, sid 16, gno 8, [lt type 1 (=2), last_committed 8,
/// sequence_number 8], then commit timestamps and more, which we ignore.
pub fn mysql_gtid(body: &[u8]) -> Result<MysqlGtid, DecodeError> {
    let mut c = Cursor::new(body);
    let flags = c.u8("gtid flags")?;
    let sid: [u8; 16] = c.take(16, "gtid sid")?.try_into().expect("16 bytes");
    let gno = c.u64("gtid gno")? as i64;
    let (mut last_committed, mut sequence_number) = (None, None);
    if c.remaining() >= 17 && c.u8("gtid logical clock type")? == 2 {
        last_committed = Some(c.u64("gtid last_committed")? as i64);
        sequence_number = Some(c.u64("gtid sequence_number")? as i64);
    }
    Ok(MysqlGtid {
        flags,
        sid,
        gno,
        last_committed,
        sequence_number,
    })
}

/// Lowercase 8-4-4-4-12 text of 16 bytes in RFC order.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(char::from_digit(u32::from(b >> 4), 16).expect("nibble"));
        s.push(char::from_digit(u32::from(b & 15), 16).expect("nibble"));
    }
    s
}

/// UUID text (32 hex digits, dashes anywhere) to its bytes in RFC order.
pub use tidewater_core::uuid_text::parse_uuid;

/// A MySQL GTID set: per source UUID, sorted disjoint half-open intervals of
/// transaction numbers. Text form as in `gtid_executed`:
/// `uuid:1-5:7,uuid2:1-3`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidSet {
    /// uuid → sorted, disjoint, non-adjacent `[start, end)` intervals.
    intervals: BTreeMap<[u8; 16], Vec<(i64, i64)>>,
}

/// Why a GTID set or state text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid gtid text {text:?}: {reason}")]
pub struct GtidParseError {
    pub text: String,
    pub reason: &'static str,
}

impl GtidSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn parse(text: &str) -> Result<Self, GtidParseError> {
        let err = |reason| GtidParseError {
            text: text.to_owned(),
            reason,
        };
        let mut set = GtidSet::new();
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let mut pieces = part.split(':');
            let uuid = parse_uuid(pieces.next().unwrap_or_default().trim())
                .ok_or_else(|| err("bad source uuid"))?;
            let mut any = false;
            for range in pieces {
                any = true;
                let (start, end) = match range.split_once('-') {
                    Some((a, b)) => (a.trim().parse::<i64>(), b.trim().parse::<i64>()),
                    None => (range.trim().parse::<i64>(), range.trim().parse::<i64>()),
                };
                let (start, end) = (
                    start.map_err(|_| err("bad interval"))?,
                    end.map_err(|_| err("bad interval"))?,
                );
                if start < 1 || end < start || end == i64::MAX {
                    return Err(err("interval out of range"));
                }
                set.add_interval(uuid, start, end + 1);
            }
            if !any {
                return Err(err("source uuid without intervals"));
            }
        }
        Ok(set)
    }

    /// Adds one transaction.
    pub fn add(&mut self, sid: [u8; 16], gno: i64) {
        if (1..i64::MAX).contains(&gno) {
            self.add_interval(sid, gno, gno + 1);
        }
    }

    pub fn contains(&self, sid: &[u8; 16], gno: i64) -> bool {
        self.intervals
            .get(sid)
            .is_some_and(|ivs| ivs.iter().any(|&(s, e)| s <= gno && gno < e))
    }

    /// Adds every transaction of `other`.
    pub fn merge(&mut self, other: &GtidSet) {
        for (sid, ivs) in &other.intervals {
            for &(s, e) in ivs {
                self.add_interval(*sid, s, e);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }

    fn add_interval(&mut self, sid: [u8; 16], start: i64, end: i64) {
        let ivs = self.intervals.entry(sid).or_default();
        // Fast path: appending the next transaction of a source.
        if let Some(last) = ivs.last_mut() {
            if last.1 == start {
                last.1 = end;
                return;
            }
            if last.1 < start {
                ivs.push((start, end));
                return;
            }
        }
        ivs.push((start, end));
        ivs.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(ivs.len());
        for &(s, e) in ivs.iter() {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *ivs = merged;
    }
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (sid, ivs)) in self.intervals.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&format_uuid(sid))?;
            for &(s, e) in ivs {
                if e - 1 == s {
                    write!(f, ":{s}")?;
                } else {
                    write!(f, ":{s}-{}", e - 1)?;
                }
            }
        }
        Ok(())
    }
}

/// A MariaDB GTID position: the last GTID per replication domain, as
/// `domain → (server_id, seq_no)`. Text form as `@slave_connect_state` takes it:
/// `0-1-100,1-2-5`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidState {
    pub domains: BTreeMap<u32, (u32, u64)>,
}

impl GtidState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn parse(text: &str) -> Result<Self, GtidParseError> {
        let err = |reason| GtidParseError {
            text: text.to_owned(),
            reason,
        };
        let mut state = GtidState::new();
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let mut pieces = part.split('-');
            let mut next = || pieces.next().map(str::trim);
            let domain = next().and_then(|s| s.parse::<u32>().ok());
            let server = next().and_then(|s| s.parse::<u32>().ok());
            let seq = next().and_then(|s| s.parse::<u64>().ok());
            let extra = next();
            match (domain, server, seq, extra) {
                (Some(d), Some(s), Some(n), None) => {
                    if state.domains.insert(d, (s, n)).is_some() {
                        return Err(err("domain listed twice"));
                    }
                }
                _ => return Err(err("expected domain-server-seq")),
            }
        }
        Ok(state)
    }

    /// Records a transaction as the latest of its domain.
    pub fn update(&mut self, domain_id: u32, server_id: u32, seq_no: u64) {
        self.domains.insert(domain_id, (server_id, seq_no));
    }
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (d, (s, n))) in self.domains.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}-{s}-{n}")?;
        }
        Ok(())
    }
}

/// The largest inner payload we agree to inflate (MySQL caps events at 1 GiB).
const MAX_PAYLOAD_BYTES: u64 = 1 << 30;

/// MySQL TRANSACTION_PAYLOAD (40): a header of `type, length, value` fields
/// (lenenc; 1 payload size, 2 compression type, 3 uncompressed size, 0 end) and
/// the payload. Returns the inner events' bytes, decompressed (ZSTD = 0,
/// NONE = 255); cut them with [`split_events`].
pub fn transaction_payload(body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut c = Cursor::new(body);
    let (mut payload_size, mut compression, mut uncompressed_size) = (None, None, None);
    loop {
        let field = c.lenenc("payload header field")?;
        if field == 0 {
            break;
        }
        let value = c.lenenc_bytes("payload header value")?;
        let mut v = Cursor::new(value);
        match field {
            1 => payload_size = Some(v.lenenc("payload size")?),
            2 => compression = Some(v.lenenc("payload compression type")?),
            3 => uncompressed_size = Some(v.lenenc("payload uncompressed size")?),
            _ => {}
        }
    }
    let at = c.pos();
    let size = payload_size.ok_or(DecodeError::Malformed {
        what: "payload header without payload size",
        offset: at,
    })?;
    let payload = c.take(
        usize::try_from(size).unwrap_or(usize::MAX),
        "transaction payload",
    )?;
    match compression {
        Some(255) => Ok(payload.to_vec()),
        Some(0) => {
            let limit = uncompressed_size
                .unwrap_or(MAX_PAYLOAD_BYTES)
                .min(MAX_PAYLOAD_BYTES);
            let mut out = Vec::with_capacity(limit.min(payload.len() as u64 * 32) as usize);
            zstd::stream::read::Decoder::new(payload)
                .map_err(|source| DecodeError::Decompress {
                    what: "transaction payload",
                    source,
                })?
                .take(limit + 1)
                .read_to_end(&mut out)
                .map_err(|source| DecodeError::Decompress {
                    what: "transaction payload",
                    source,
                })?;
            if uncompressed_size.is_some_and(|n| n != out.len() as u64) || out.len() as u64 > limit
            {
                return Err(DecodeError::Malformed {
                    what: "uncompressed payload size differs from the header",
                    offset: at,
                });
            }
            Ok(out)
        }
        other => Err(DecodeError::Unsupported {
            what: format!("transaction payload compression type {other:?}"),
        }),
    }
}

/// The v4 header of an event inside a transaction payload (or a binlog file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventHeader {
    pub timestamp: u32,
    pub event_type: u8,
    pub server_id: u32,
    pub event_size: u32,
    pub log_pos: u32,
    pub flags: u16,
}

/// Size of a v4 event header.
pub const EVENT_HEADER_LEN: usize = 19;

/// Parses a 19-byte v4 event header.
pub fn event_header(bytes: &[u8]) -> Result<EventHeader, DecodeError> {
    let mut c = Cursor::new(bytes);
    Ok(EventHeader {
        timestamp: c.u32("event timestamp")?,
        event_type: c.u8("event type")?,
        server_id: c.u32("event server id")?,
        event_size: c.u32("event size")?,
        log_pos: c.u32("event log_pos")?,
        flags: c.u16("event flags")?,
    })
}

/// Cuts the inner events of a decompressed TRANSACTION_PAYLOAD: v4 headers
/// followed by bodies, no checksums.
pub fn split_events(buf: &[u8]) -> Result<Vec<(EventHeader, &[u8])>, DecodeError> {
    let mut events = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let header = event_header(&buf[pos..])?;
        let size = header.event_size as usize;
        if size < EVENT_HEADER_LEN || size > buf.len() - pos {
            return Err(DecodeError::Malformed {
                what: "inner event size",
                offset: pos + 9,
            });
        }
        events.push((header, &buf[pos + EVENT_HEADER_LEN..pos + size]));
        pos += size;
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_and_xid() {
        let mut body = 4u64.to_le_bytes().to_vec();
        body.extend_from_slice(b"binlog.000007");
        assert_eq!(rotate(&body).unwrap(), (4, "binlog.000007".to_owned()));
        assert_eq!(xid(&77u64.to_le_bytes()).unwrap(), 77);
        assert!(xid(&[1, 2]).is_err());
    }

    #[test]
    fn query_event_layout() {
        let mut body = Vec::new();
        body.extend_from_slice(&9u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.push(2);
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&3u16.to_le_bytes());
        body.extend_from_slice(&[0, 1, 2]);
        body.extend_from_slice(b"tw\0CREATE TABLE t (a int)");
        let q = query(&body).unwrap();
        assert_eq!(q.thread_id, 9);
        assert_eq!(q.schema, "tw");
        assert_eq!(q.sql, "CREATE TABLE t (a int)");
        body[12] = 0xff; // status-vars length past the end
        assert!(query(&body).is_err());
    }

    #[test]
    fn mariadb_gtid_and_list() {
        let mut body = 100u64.to_le_bytes().to_vec();
        body.extend_from_slice(&3u32.to_le_bytes());
        body.push(MARIA_FL_STANDALONE | MARIA_FL_GROUP_COMMIT_ID);
        body.extend_from_slice(&55u64.to_le_bytes());
        let g = gtid(&body).unwrap();
        assert_eq!((g.seq_no, g.domain_id, g.standalone), (100, 3, true));
        assert_eq!(g.commit_id, Some(55));

        let mut list = 2u32.to_le_bytes().to_vec();
        for (d, s, n) in [(0u32, 1u32, 10u64), (1, 2, 5)] {
            list.extend_from_slice(&d.to_le_bytes());
            list.extend_from_slice(&s.to_le_bytes());
            list.extend_from_slice(&n.to_le_bytes());
        }
        assert_eq!(gtid_list(&list).unwrap(), vec![(0, 1, 10), (1, 2, 5)]);
        // A count far beyond the body must not allocate.
        assert!(gtid_list(&0x0fff_ffffu32.to_le_bytes()).is_err());
    }

    #[test]
    fn mysql_gtid_event() {
        let sid = parse_uuid("3E11FA47-71CA-11E1-9E33-C80AA9429562").unwrap();
        let mut body = vec![1];
        body.extend_from_slice(&sid);
        body.extend_from_slice(&23i64.to_le_bytes());
        body.push(2);
        body.extend_from_slice(&5i64.to_le_bytes());
        body.extend_from_slice(&6i64.to_le_bytes());
        let g = mysql_gtid(&body).unwrap();
        assert_eq!(
            g.to_gtid_string(),
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:23"
        );
        assert_eq!((g.last_committed, g.sequence_number), (Some(5), Some(6)));
    }

    #[test]
    fn gtid_set_parse_format_merge() {
        let a = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let b = "4e11fa47-71ca-11e1-9e33-c80aa9429562";
        let mut set = GtidSet::parse(&format!("{b}:1-3,\n{a}:1-5:7")).unwrap();
        assert_eq!(set.to_string(), format!("{a}:1-5:7,{b}:1-3"));
        let sid_a = parse_uuid(a).unwrap();
        assert!(set.contains(&sid_a, 5) && !set.contains(&sid_a, 6) && set.contains(&sid_a, 7));
        set.add(sid_a, 6);
        assert_eq!(set.to_string(), format!("{a}:1-7,{b}:1-3"));
        set.add(sid_a, 9);
        let other = GtidSet::parse(&format!("{a}:8,{b}:2-10")).unwrap();
        set.merge(&other);
        assert_eq!(set.to_string(), format!("{a}:1-9,{b}:1-10"));
        assert_eq!(GtidSet::parse("").unwrap(), GtidSet::new());
        assert!(GtidSet::parse(&format!("{a}:5-3")).is_err());
        assert!(GtidSet::parse(&format!("{a}:0")).is_err());
        assert!(GtidSet::parse("zz:1").is_err());
        assert!(GtidSet::parse(a).is_err());
    }

    #[test]
    fn gtid_state_parse_format() {
        let mut s = GtidState::parse("1-2-5, 0-1-100").unwrap();
        assert_eq!(s.to_string(), "0-1-100,1-2-5");
        s.update(0, 3, 101);
        assert_eq!(s.to_string(), "0-3-101,1-2-5");
        assert!(GtidState::parse("0-1").is_err());
        assert!(GtidState::parse("0-1-2-3").is_err());
        assert!(GtidState::parse("0-1-2,0-1-3").is_err());
    }

    fn inner_event(event_type: u8, body: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        e.push(event_type);
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&((EVENT_HEADER_LEN + body.len()) as u32).to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        e.extend_from_slice(body);
        e
    }

    fn payload_event(compression: u8, payload: &[u8], uncompressed: usize) -> Vec<u8> {
        fn lenenc(v: u64, out: &mut Vec<u8>) {
            if v < 251 {
                out.push(v as u8);
            } else {
                out.push(0xfe);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        let mut body = Vec::new();
        for (field, value) in [
            (2u64, u64::from(compression)),
            (3, uncompressed as u64),
            (1, payload.len() as u64),
        ] {
            let mut v = Vec::new();
            lenenc(value, &mut v);
            lenenc(field, &mut body);
            lenenc(v.len() as u64, &mut body);
            body.extend_from_slice(&v);
        }
        body.push(0);
        body.extend_from_slice(payload);
        body
    }

    #[test]
    fn transaction_payload_zstd_split() {
        let mut inner = inner_event(event_type::XID, &42u64.to_le_bytes());
        inner.extend(inner_event(
            event_type::ROTATE,
            b"\x04\0\0\0\0\0\0\0f.000002",
        ));
        let compressed = zstd::encode_all(&inner[..], 3).unwrap();
        let body = payload_event(0, &compressed, inner.len());
        let out = transaction_payload(&body).unwrap();
        assert_eq!(out, inner);
        let events = split_events(&out).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].0.event_type, event_type::XID);
        assert_eq!(xid(events[0].1).unwrap(), 42);
        assert_eq!(rotate(events[1].1).unwrap().1, "f.000002");

        let plain = payload_event(255, &inner, inner.len());
        assert_eq!(transaction_payload(&plain).unwrap(), inner);
        // A lying uncompressed size is an error, not a truncated success.
        let lying = payload_event(0, &compressed, inner.len() - 1);
        assert!(transaction_payload(&lying).is_err());
        let mut cut = out.clone();
        cut.truncate(out.len() - 1);
        assert!(split_events(&cut).is_err());
    }

    #[test]
    fn heartbeat_v2_fields() {
        let mut body = vec![1, 8];
        body.extend_from_slice(b"bl.00001");
        body.extend_from_slice(&[2, 1, 120, 0]);
        assert_eq!(heartbeat_v2(&body).unwrap(), ("bl.00001".to_owned(), 120));
    }
}
