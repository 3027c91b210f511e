//! Decoder for the pgoutput logical replication messages (protocol versions
//! 1 and 2).
//!
//! ```text
//!  walsender ──CopyData('w' XLogData)──▶ replication.rs ──▶ this decoder
//!     B Begin … C Commit              one transaction, sent at its commit
//!     S Stream Start(xid) … E Stop    a chunk of an in-progress transaction
//!                                     (v2, `streaming 'on'`); inside it every
//!                                     R/Y/I/U/D/T/M message carries the xid
//!                                     of its (sub)transaction after the tag
//!     c Stream Commit(xid, lsn)       the streamed transaction committed
//!     A Stream Abort(xid, subxid)     it, or one subtransaction, rolled back
//!     R Relation  Y Type  I/U/D rows  T Truncate  O Origin  M logical message
//! ```
//!
//! A Relation message describes a table's columns (name, type oid, typmod, key
//! flag) and always precedes the first row change of that relation in a session
//! and every change of its shape. Row messages carry tuples of cells that are
//! NULL, an unchanged TOASTed value (`u`: the server did not send it), text or
//! binary. Every length read from the wire is checked: a malformed message is an
//! error, never a panic.

use bytes::Bytes;

/// A message of the pgoutput stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        /// Microseconds since 2000-01-01.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    /// `pg_logical_emit_message` output.
    Logical {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Bytes,
    },
    StreamStart {
        xid: u32,
        first: bool,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Vec<Cell>,
    },
    Update {
        relation: u32,
        old: Option<OldTuple>,
        new: Vec<Cell>,
    },
    Delete {
        relation: u32,
        old: OldTuple,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    Origin {
        name: String,
    },
}

/// The old image sent with an update or delete.
#[derive(Debug, Clone, PartialEq)]
pub enum OldTuple {
    /// Only the replica identity columns (others are NULL cells).
    Key(Vec<Cell>),
    /// The whole old row (REPLICA IDENTITY FULL).
    Full(Vec<Cell>),
}

impl OldTuple {
    pub fn cells(&self) -> &[Cell] {
        match self {
            OldTuple::Key(cells) | OldTuple::Full(cells) => cells,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumn {
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    /// Unchanged TOASTed value: the server did not send it.
    Unchanged,
    Text(Bytes),
    Binary(Bytes),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("pgoutput message truncated: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("unknown pgoutput message tag {tag:#04x}")]
    UnknownTag { tag: u8 },
    #[error("unexpected byte {byte:#04x} at offset {offset}, expected {expected}")]
    Unexpected {
        offset: usize,
        byte: u8,
        expected: &'static str,
    },
    #[error("negative count {count} at offset {offset}")]
    NegativeCount { offset: usize, count: i64 },
    #[error("string at offset {offset} is not NUL-terminated UTF-8")]
    BadString { offset: usize },
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        let left = self.buf.len() - self.pos;
        if left < n {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - left,
            });
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        let v = self.buf[self.pos];
        self.pos += 1;
        Ok(v)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        let v = u16::from_be_bytes([self.buf[self.pos], self.buf[self.pos + 1]]);
        self.pos += 2;
        Ok(v)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        let b = &self.buf[self.pos..self.pos + 4];
        let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        self.pos += 4;
        Ok(v)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let hi = self.u32()? as u64;
        let lo = self.u32()? as u64;
        Ok(hi << 32 | lo)
    }

    fn count16(&mut self) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let v = self.u16()? as i16;
        usize::try_from(v).map_err(|_| DecodeError::NegativeCount {
            offset,
            count: v as i64,
        })
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let end = self.buf[start..]
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::BadString { offset: start })?;
        let s = std::str::from_utf8(&self.buf[start..start + end])
            .map_err(|_| DecodeError::BadString { offset: start })?
            .to_string();
        self.pos = start + end + 1;
        Ok(s)
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    fn tuple(&mut self) -> Result<Vec<Cell>, DecodeError> {
        let n = self.count16()?;
        let mut cells = Vec::with_capacity(n);
        for _ in 0..n {
            let offset = self.pos;
            let cell = match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::Unchanged,
                kind @ (b't' | b'b') => {
                    let len = self.u32()? as usize;
                    let data = self.bytes(len)?;
                    if kind == b't' {
                        Cell::Text(data)
                    } else {
                        Cell::Binary(data)
                    }
                }
                byte => {
                    return Err(DecodeError::Unexpected {
                        offset,
                        byte,
                        expected: "tuple cell kind n/u/t/b",
                    })
                }
            };
            cells.push(cell);
        }
        Ok(cells)
    }

    fn expect(&mut self, wanted: u8, expected: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        let byte = self.u8()?;
        if byte != wanted {
            return Err(DecodeError::Unexpected {
                offset,
                byte,
                expected,
            });
        }
        Ok(())
    }
}

/// Decodes one pgoutput message outside a stream block, tag byte included.
pub fn decode(data: Bytes) -> Result<Message, DecodeError> {
    decode_in(data, false).map(|(message, _)| message)
}

/// Decodes one pgoutput message; inside a stream block (`streaming`), data
/// messages carry the xid of their (sub)transaction, returned with it.
pub fn decode_in(data: Bytes, streaming: bool) -> Result<(Message, Option<u32>), DecodeError> {
    let mut r = Reader { buf: data, pos: 0 };
    let tag = r.u8()?;
    let xid = if streaming && matches!(tag, b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M') {
        Some(r.u32()?)
    } else {
        None
    };
    let message = match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_time: r.u64()? as i64,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_time: r.u64()? as i64,
            }
        }
        b'M' => {
            let transactional = r.u8()? & 1 == 1;
            let lsn = r.u64()?;
            let prefix = r.string()?;
            let offset = r.pos;
            let n = r.u32()?;
            let n = usize::try_from(n as i32).map_err(|_| DecodeError::NegativeCount {
                offset,
                count: n as i32 as i64,
            })?;
            Message::Logical {
                transactional,
                lsn,
                prefix,
                content: r.bytes(n)?,
            }
        }
        b'S' => Message::StreamStart {
            xid: r.u32()?,
            first: r.u8()? == 1,
        },
        b'E' => Message::StreamStop,
        b'c' => {
            let xid = r.u32()?;
            let _flags = r.u8()?;
            Message::StreamCommit {
                xid,
                lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_time: r.u64()? as i64,
            }
        }
        b'A' => Message::StreamAbort {
            xid: r.u32()?,
            subxid: r.u32()?,
        },
        b'R' => {
            let oid = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let n = r.count16()?;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.string()?;
                let type_oid = r.u32()?;
                let type_modifier = r.u32()? as i32;
                columns.push(RelationColumn {
                    key: flags & 1 == 1,
                    name,
                    type_oid,
                    type_modifier,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        },
        b'I' => {
            let relation = r.u32()?;
            r.expect(b'N', "N (new tuple)")?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let offset = r.pos;
            let old = match r.u8()? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                byte => {
                    return Err(DecodeError::Unexpected {
                        offset,
                        byte,
                        expected: "K, O or N",
                    })
                }
            };
            if old.is_some() {
                r.expect(b'N', "N (new tuple)")?;
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let offset = r.pos;
            let old = match r.u8()? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                byte => {
                    return Err(DecodeError::Unexpected {
                        offset,
                        byte,
                        expected: "K or O",
                    })
                }
            };
            Message::Delete { relation, old }
        }
        b'T' => {
            let offset = r.pos;
            let n = r.u32()?;
            let n = usize::try_from(n as i32).map_err(|_| DecodeError::NegativeCount {
                offset,
                count: n as i32 as i64,
            })?;
            let options = r.u8()?;
            r.need(n.saturating_mul(4))?;
            let relations = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate {
                relations,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            }
        }
        b'O' => {
            let _lsn = r.u64()?;
            Message::Origin { name: r.string()? }
        }
        tag => return Err(DecodeError::UnknownTag { tag }),
    };
    Ok((message, xid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_bytes() -> Vec<u8> {
        let mut b = vec![b'R'];
        b.extend(16384u32.to_be_bytes());
        b.extend(b"public\0orders\0d");
        b.extend(2u16.to_be_bytes());
        b.push(1);
        b.extend(b"id\0");
        b.extend(23u32.to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        b.push(0);
        b.extend(b"total\0");
        b.extend(1700u32.to_be_bytes());
        b.extend(((12 << 16 | 2) + 4i32).to_be_bytes());
        b
    }

    #[test]
    fn decodes_relation() {
        let Message::Relation(rel) = decode(Bytes::from(relation_bytes())).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(rel.name, "orders");
        assert_eq!(rel.columns.len(), 2);
        assert!(rel.columns[0].key);
        assert_eq!(rel.columns[1].type_oid, 1700);
        assert_eq!(rel.columns[1].type_modifier, (12 << 16 | 2) + 4);
    }

    #[test]
    fn decodes_update_with_key_and_unchanged_toast() {
        let mut b = vec![b'U'];
        b.extend(7u32.to_be_bytes());
        b.push(b'K');
        b.extend(1u16.to_be_bytes());
        b.push(b't');
        b.extend(1u32.to_be_bytes());
        b.push(b'5');
        b.push(b'N');
        b.extend(3u16.to_be_bytes());
        b.push(b't');
        b.extend(1u32.to_be_bytes());
        b.push(b'6');
        b.push(b'u');
        b.push(b'n');
        let msg = decode(Bytes::from(b)).unwrap();
        assert_eq!(
            msg,
            Message::Update {
                relation: 7,
                old: Some(OldTuple::Key(vec![Cell::Text(Bytes::from_static(b"5"))])),
                new: vec![
                    Cell::Text(Bytes::from_static(b"6")),
                    Cell::Unchanged,
                    Cell::Null
                ],
            }
        );
    }

    #[test]
    fn decodes_streamed_messages_with_their_xid() {
        let mut insert = vec![b'I'];
        insert.extend(901u32.to_be_bytes());
        insert.extend(7u32.to_be_bytes());
        insert.extend(b"N\x00\x01t\x00\x00\x00\x0242");
        let (message, xid) = decode_in(Bytes::from(insert.clone()), true).unwrap();
        assert_eq!(xid, Some(901));
        assert_eq!(
            message,
            Message::Insert {
                relation: 7,
                new: vec![Cell::Text(Bytes::from_static(b"42"))]
            }
        );
        // The same bytes outside a stream block read the xid as the relation.
        assert!(decode_in(Bytes::from(insert), false).is_err());

        let mut commit = vec![b'c'];
        commit.extend(900u32.to_be_bytes());
        commit.push(0);
        commit.extend(0x10u64.to_be_bytes());
        commit.extend(0x20u64.to_be_bytes());
        commit.extend(5i64.to_be_bytes());
        assert_eq!(
            decode(Bytes::from(commit)).unwrap(),
            Message::StreamCommit {
                xid: 900,
                lsn: 0x10,
                end_lsn: 0x20,
                commit_time: 5
            }
        );
        let mut abort = vec![b'A'];
        abort.extend(900u32.to_be_bytes());
        abort.extend(901u32.to_be_bytes());
        assert_eq!(
            decode(Bytes::from(abort)).unwrap(),
            Message::StreamAbort {
                xid: 900,
                subxid: 901
            }
        );
        let mut start = vec![b'S'];
        start.extend(900u32.to_be_bytes());
        start.push(1);
        assert_eq!(
            decode(Bytes::from(start)).unwrap(),
            Message::StreamStart {
                xid: 900,
                first: true
            }
        );
    }

    #[test]
    fn every_truncation_of_a_message_is_an_error() {
        let full = relation_bytes();
        for len in 0..full.len() {
            assert!(
                decode(Bytes::copy_from_slice(&full[..len])).is_err(),
                "len {len}"
            );
        }
    }

    #[test]
    fn huge_truncate_count_does_not_allocate_or_panic() {
        let mut b = vec![b'T'];
        b.extend(0x7fff_ffffu32.to_be_bytes());
        b.push(0);
        assert!(matches!(
            decode(Bytes::from(b)),
            Err(DecodeError::Truncated { .. })
        ));
    }

    /// A cheap in-tree fuzz: random bytes and random mutations of valid
    /// messages must decode or fail, never panic.
    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds: Vec<Vec<u8>> = vec![relation_bytes(), {
            let mut b = vec![b'U'];
            b.extend(7u32.to_be_bytes());
            b.extend(b"O\x00\x01t\x00\x00\x00\x015N\x00\x02u\x00");
            b
        }];
        for round in 0..200_000 {
            let mut data = if round % 2 == 0 {
                seeds[round % seeds.len()].clone()
            } else {
                let len = (next() % 64) as usize;
                let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if let Some(first) = b.first_mut() {
                    *first = b"RYIUDTOBCMSEcA"[(next() % 14) as usize];
                }
                b
            };
            for _ in 0..(next() % 4) {
                if !data.is_empty() {
                    let at = (next() as usize) % data.len();
                    data[at] = next() as u8;
                }
            }
            let streaming = round % 3 == 0;
            let _ = decode_in(Bytes::from(data), streaming);
        }
    }
}
