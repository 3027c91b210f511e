//! Binlog positions: where a change sits, how it orders, how to resume there.
//!
//! A position is a binlog file and a byte offset in it, plus — on MariaDB — the
//! GTID state at that point (`domain-server-seq` per replication domain). Its
//! text form is what `_tw_position` and the lake's commit metadata hold:
//!
//! ```text
//!   binlog.000003:4711                  file:offset
//!   binlog.000003:4711 gtid=0-1-57      … and the MariaDB GTID state there
//! ```
//!
//! `_tw_seq` packs the file's numeric suffix and the offset:
//! `index << 32 | offset`. Binlog files never exceed 4 GiB (max_binlog_size is
//! at most 1 GiB) and their suffix grows with every rotation, so the packed value
//! grows strictly with the binlog.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogPosition {
    pub file: String,
    pub offset: u64,
    /// MariaDB GTID state at this position, when known.
    pub gtid: Option<String>,
}

impl BinlogPosition {
    pub fn new(file: impl Into<String>, offset: u64) -> Self {
        Self {
            file: file.into(),
            offset,
            gtid: None,
        }
    }

    /// The numeric suffix of the file name (`binlog.000003` → 3).
    pub fn file_index(file: &str) -> Option<u64> {
        let (_, suffix) = file.rsplit_once('.')?;
        if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        suffix.parse().ok()
    }

    /// The packed ordering value (`_tw_seq`) of `offset` in `file`.
    pub fn seq_of(file: &str, offset: u64) -> u64 {
        let index = Self::file_index(file).unwrap_or(0);
        (index << 32) | (offset & 0xffff_ffff)
    }

    pub fn seq(&self) -> u64 {
        Self::seq_of(&self.file, self.offset)
    }

    /// Parses the text form written by `Display`.
    pub fn parse(text: &str) -> Option<BinlogPosition> {
        let (main, gtid) = match text.split_once(" gtid=") {
            Some((main, gtid)) => (main, Some(gtid.to_string())),
            None => (text, None),
        };
        let (file, offset) = main.rsplit_once(':')?;
        if file.is_empty() {
            return None;
        }
        Some(BinlogPosition {
            file: file.to_string(),
            offset: offset.parse().ok()?,
            gtid: gtid.filter(|g| !g.is_empty()),
        })
    }
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.offset)?;
        if let Some(gtid) = &self.gtid {
            write!(f, " gtid={gtid}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let mut p = BinlogPosition::new("binlog.000003", 4711);
        assert_eq!(p.to_string(), "binlog.000003:4711");
        assert_eq!(BinlogPosition::parse("binlog.000003:4711"), Some(p.clone()));
        p.gtid = Some("0-1-57,1-2-5".into());
        assert_eq!(p.to_string(), "binlog.000003:4711 gtid=0-1-57,1-2-5");
        assert_eq!(BinlogPosition::parse(&p.to_string()), Some(p));
        assert_eq!(BinlogPosition::parse("nonsense"), None);
        assert_eq!(BinlogPosition::parse(":4"), None);
    }

    #[test]
    fn seq_orders_across_files() {
        let a = BinlogPosition::seq_of("binlog.000001", 900_000_000);
        let b = BinlogPosition::seq_of("binlog.000002", 4);
        assert!(a < b);
        assert_eq!(b, (2 << 32) | 4);
    }
}
