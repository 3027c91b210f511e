//! What a job last pushed: key → row hash, so the next run writes only the
//! difference. Kept under `pipeline.state_dir/reverse_etl/`.
//!
//! ```text
//!  <job>.state    header {version 2, fingerprint}
//!                 then  <hash hex> TAB <key json>   one per pushed row, in key order
//!  <job>.journal  header {version 1, fingerprint}
//!                 then  + TAB <hash> TAB <key> | - TAB <key>
//!                 (appended and fsynced after each committed target transaction)
//!  <job>.lock     held by the running run
//!  <job>.spill/   the query's spill files (emptied when a run starts)
//! ```
//!
//! The state is never held in memory: a run reads it as a stream in key
//! order ([`Previous`]), merges it with the result (which comes in the
//! same order), and writes the next state as a stream to a temp file
//! ([`StateWriter`]) that replaces it atomically (fsync, rename) when the
//! run ends; then the journal is dropped. Keys are ordered by
//! [`crate::value::key_order`], and a state file out of that order is
//! refused.
//!
//! After a crash the journal is replayed over the state: the rows already
//! committed count as pushed, and the rest are pushed again (upserts and
//! deletes by key are idempotent, so a transaction committed just before
//! the crash but not journaled is harmless). The journal is sorted in
//! memory when read: it holds what interrupted runs wrote, not the result.
//!
//! The fingerprint covers the query, the result columns, the target and
//! the key: when any changes, the state no longer describes the target and
//! the next run starts over. A state file of version 1 (a hash table
//! written in text order of the key JSON) is converted once, in memory,
//! when a run first reads it.

use std::cmp::Ordering;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Lines, Write};
use std::path::{Path, PathBuf};

use crate::error::ReverseError;
use crate::value::{key_order, Value};

/// One pushed row: its key and the hash of the row pushed for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: Vec<Value>,
    /// The key as JSON, as the files hold it.
    pub key_json: String,
    /// 0 in a journal: deleted.
    pub hash: u128,
}

impl Entry {
    pub fn new(key: Vec<Value>, hash: u128) -> Self {
        let key_json = serde_json::to_string(&key).expect("values serialize");
        Self {
            key,
            key_json,
            hash,
        }
    }
}

/// The files of one job.
pub struct StateFiles {
    state: PathBuf,
    journal: PathBuf,
    fingerprint: String,
}

fn state_header(fingerprint: &str) -> String {
    serde_json::json!({ "version": 2, "fingerprint": fingerprint }).to_string()
}

/// The state format before key order (version 1); journals keep it.
fn v1_header(fingerprint: &str) -> String {
    serde_json::json!({ "version": 1, "fingerprint": fingerprint }).to_string()
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> ReverseError {
    let path = path.to_path_buf();
    move |source| ReverseError::State {
        path: path.clone(),
        source,
    }
}

fn invalid(path: &Path, what: &str) -> ReverseError {
    io_error(path)(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{what}; delete the file to push everything again"),
    ))
}

/// Holds job `job`'s lock file until the returned guard drops: two runs of
/// one job (a schedule and a manual run) would interleave their journals
/// and spill files. Err(None) when another run holds it.
pub fn lock(dir: &Path, job: &str) -> Result<File, Option<ReverseError>> {
    let dir = dir.join("reverse_etl");
    fs::create_dir_all(&dir).map_err(|e| Some(io_error(&dir)(e)))?;
    let path = dir.join(format!("{job}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Some(io_error(&path)(e)))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Some(io_error(&path)(e))),
    }
}

/// Job `job`'s spill directory, emptied: what a killed run left there is
/// of no use. Call with the job's lock held.
pub fn spill_dir(dir: &Path, job: &str) -> Result<PathBuf, ReverseError> {
    let path = dir.join("reverse_etl").join(format!("{job}.spill"));
    match fs::remove_dir_all(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_error(&path)(err)),
    }
    fs::create_dir_all(&path).map_err(io_error(&path))?;
    Ok(path)
}

impl StateFiles {
    pub fn new(dir: &Path, job: &str, fingerprint: String) -> Self {
        let dir = dir.join("reverse_etl");
        Self {
            state: dir.join(format!("{job}.state")),
            journal: dir.join(format!("{job}.journal")),
            fingerprint,
        }
    }

    /// The last pushed state (journal replayed) as a stream in key order;
    /// empty when there is none for this fingerprint.
    pub fn previous(&self) -> Result<Previous, ReverseError> {
        let journal = self.read_journal()?;
        let file = match self.open_state()? {
            Opened::None => None,
            Opened::Current(lines) => Some(StateReader {
                lines,
                path: self.state.clone(),
                last: None,
            }),
            Opened::Version1(lines) => {
                self.upgrade(lines)?;
                match self.open_state()? {
                    Opened::Current(lines) => Some(StateReader {
                        lines,
                        path: self.state.clone(),
                        last: None,
                    }),
                    _ => return Err(invalid(&self.state, "the converted state is unreadable")),
                }
            }
        };
        let mut previous = Previous {
            file,
            journal: journal.into_iter(),
            next_file: None,
            next_journal: None,
        };
        previous.next_file = previous.read_file()?;
        previous.next_journal = previous.journal.next();
        Ok(previous)
    }

    fn open_state(&self) -> Result<Opened, ReverseError> {
        let file = match File::open(&self.state) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Opened::None),
            Err(err) => return Err(io_error(&self.state)(err)),
        };
        let mut lines = BufReader::new(file).lines();
        let Some(first) = lines.next().transpose().map_err(io_error(&self.state))? else {
            return Ok(Opened::None);
        };
        Ok(if first == state_header(&self.fingerprint) {
            Opened::Current(lines)
        } else if first == v1_header(&self.fingerprint) {
            Opened::Version1(lines)
        } else {
            Opened::None
        })
    }

    /// Rewrites a version-1 state (any order) in key order.
    fn upgrade(&self, lines: Lines<BufReader<File>>) -> Result<(), ReverseError> {
        let mut entries = Vec::new();
        for line in lines {
            let line = line.map_err(io_error(&self.state))?;
            let Some((hash, key_json)) = line.split_once('\t') else {
                return Err(invalid(&self.state, "a line is not <hash> TAB <key>"));
            };
            let hash = u128::from_str_radix(hash, 16)
                .map_err(|_| invalid(&self.state, "a row hash is not hexadecimal"))?;
            let key: Vec<Value> = serde_json::from_str(key_json)
                .map_err(|_| invalid(&self.state, "a key is not a JSON list of values"))?;
            entries.push(Entry {
                key,
                key_json: key_json.to_string(),
                hash,
            });
        }
        entries.sort_by(|a, b| key_order(&a.key, &b.key));
        let mut writer = self.writer()?;
        for entry in &entries {
            writer.push(&entry.key_json, entry.hash)?;
        }
        writer.finish(false)
    }

    /// The journal's entries in key order, the last of each key; a delete
    /// has hash 0.
    fn read_journal(&self) -> Result<Vec<Entry>, ReverseError> {
        let path = &self.journal;
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io_error(path)(err)),
        };
        let mut lines = BufReader::new(file).lines();
        let Some(first) = lines.next().transpose().map_err(io_error(path))? else {
            return Ok(Vec::new());
        };
        if first != v1_header(&self.fingerprint) {
            return Ok(Vec::new());
        }
        let mut entries = Vec::new();
        for line in lines {
            let line = line.map_err(io_error(path))?;
            let mut parts = line.splitn(3, '\t');
            let (hash, key_json) = match (parts.next(), parts.next(), parts.next()) {
                (Some("+"), Some(hash), Some(key)) => match u128::from_str_radix(hash, 16) {
                    Ok(hash) => (hash, key),
                    Err(_) => continue,
                },
                (Some("-"), Some(key), None) => (0, key),
                // A torn last line of a crash: its transaction is simply
                // pushed again.
                _ => continue,
            };
            let Ok(key) = serde_json::from_str::<Vec<Value>>(key_json) else {
                continue;
            };
            entries.push(Entry {
                key,
                key_json: key_json.to_string(),
                hash,
            });
        }
        // Stable: of equal keys, the last written stays last.
        entries.sort_by(|a, b| key_order(&a.key, &b.key));
        let mut last: Vec<Entry> = Vec::with_capacity(entries.len());
        for entry in entries {
            match last.last_mut() {
                Some(prev) if key_order(&prev.key, &entry.key) == Ordering::Equal => *prev = entry,
                _ => last.push(entry),
            }
        }
        Ok(last)
    }

    /// Starts the journal of a run (after a previous one's: both are
    /// replayed over the state).
    pub fn journal(&self) -> Result<Journal, ReverseError> {
        let dir = self.state.parent().expect("has a parent");
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let fresh = match File::open(&self.journal) {
            Ok(file) => {
                let mut first = String::new();
                BufReader::new(file)
                    .read_line(&mut first)
                    .map_err(io_error(&self.journal))?;
                first.trim_end() != v1_header(&self.fingerprint)
            }
            Err(_) => true,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(!fresh)
            .write(true)
            .truncate(fresh)
            .open(&self.journal)
            .map_err(io_error(&self.journal))?;
        if fresh {
            writeln!(file, "{}", v1_header(&self.fingerprint)).map_err(io_error(&self.journal))?;
            file.sync_all().map_err(io_error(&self.journal))?;
        }
        Ok(Journal {
            file: BufWriter::new(file),
            path: self.journal.clone(),
        })
    }

    /// Whether a run's journal is there (one is running, or one died).
    pub fn has_journal(&self) -> bool {
        self.journal.exists()
    }

    /// A writer of the next state, in key order.
    pub fn writer(&self) -> Result<StateWriter, ReverseError> {
        let dir = self.state.parent().expect("has a parent");
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let tmp = self.state.with_extension("state.tmp");
        let file = File::create(&tmp).map_err(io_error(&tmp))?;
        let mut out = BufWriter::new(file);
        writeln!(out, "{}", state_header(&self.fingerprint)).map_err(io_error(&tmp))?;
        Ok(StateWriter {
            out,
            tmp,
            state: self.state.clone(),
            journal: self.journal.clone(),
        })
    }

    /// Forgets everything pushed (the target was created or replaced).
    pub fn clear(&self) -> Result<(), ReverseError> {
        for path in [&self.state, &self.journal] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_error(path)(err)),
            }
        }
        Ok(())
    }
}

enum Opened {
    None,
    Current(Lines<BufReader<File>>),
    Version1(Lines<BufReader<File>>),
}

/// A state file read line by line, its order checked.
struct StateReader {
    lines: Lines<BufReader<File>>,
    path: PathBuf,
    last: Option<Vec<Value>>,
}

impl StateReader {
    fn next(&mut self) -> Result<Option<Entry>, ReverseError> {
        let Some(line) = self.lines.next() else {
            return Ok(None);
        };
        let line = line.map_err(io_error(&self.path))?;
        let Some((hash, key_json)) = line.split_once('\t') else {
            return Err(invalid(&self.path, "a line is not <hash> TAB <key>"));
        };
        let hash = u128::from_str_radix(hash, 16)
            .map_err(|_| invalid(&self.path, "a row hash is not hexadecimal"))?;
        let key: Vec<Value> = serde_json::from_str(key_json)
            .map_err(|_| invalid(&self.path, "a key is not a JSON list of values"))?;
        if let Some(last) = &self.last {
            if key_order(last, &key) != Ordering::Less {
                return Err(invalid(&self.path, "the keys are not in order"));
            }
        }
        self.last = Some(key.clone());
        Ok(Some(Entry {
            key,
            key_json: key_json.to_string(),
            hash,
        }))
    }
}

/// What was pushed, as a stream in key order: the state file with the
/// journal replayed over it.
pub struct Previous {
    file: Option<StateReader>,
    journal: std::vec::IntoIter<Entry>,
    next_file: Option<Entry>,
    next_journal: Option<Entry>,
}

impl Previous {
    /// Nothing pushed.
    pub fn empty() -> Self {
        Self {
            file: None,
            journal: Vec::new().into_iter(),
            next_file: None,
            next_journal: None,
        }
    }

    fn read_file(&mut self) -> Result<Option<Entry>, ReverseError> {
        match &mut self.file {
            Some(file) => file.next(),
            None => Ok(None),
        }
    }

    /// The next pushed row in key order.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Entry>, ReverseError> {
        loop {
            let order = match (&self.next_file, &self.next_journal) {
                (None, None) => return Ok(None),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(f), Some(j)) => key_order(&f.key, &j.key),
            };
            let entry = match order {
                Ordering::Less => {
                    let entry = self.next_file.take();
                    self.next_file = self.read_file()?;
                    entry
                }
                Ordering::Greater => {
                    let entry = self.next_journal.take();
                    self.next_journal = self.journal.next();
                    entry
                }
                Ordering::Equal => {
                    self.next_file = self.read_file()?;
                    let entry = self.next_journal.take();
                    self.next_journal = self.journal.next();
                    entry
                }
            };
            match entry {
                Some(entry) if entry.hash != 0 => return Ok(Some(entry)),
                // A journaled delete.
                _ => continue,
            }
        }
    }
}

/// The next state, written as a run goes, in key order.
pub struct StateWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    state: PathBuf,
    journal: PathBuf,
}

impl StateWriter {
    pub fn push(&mut self, key_json: &str, hash: u128) -> Result<(), ReverseError> {
        writeln!(self.out, "{hash:032x}\t{key_json}").map_err(io_error(&self.tmp))
    }

    /// Replaces the state with what was pushed (fsync, rename) and, with
    /// `drop_journal`, drops the journal it makes redundant.
    pub fn finish(self, drop_journal: bool) -> Result<(), ReverseError> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| io_error(&self.tmp)(e.into_error()))?;
        file.sync_all().map_err(io_error(&self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.state).map_err(io_error(&self.state))?;
        if let Some(dir) = self.state.parent() {
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        if drop_journal {
            match fs::remove_file(&self.journal) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_error(&self.journal)(err)),
            }
        }
        Ok(())
    }

    /// Leaves the state as it is.
    pub fn discard(self) {
        drop(self.out);
        let _ = fs::remove_file(&self.tmp);
    }
}

/// The journal of a running push.
pub struct Journal {
    file: BufWriter<File>,
    path: PathBuf,
}

impl Journal {
    /// Records one committed transaction: rows upserted (key, hash) and keys
    /// deleted; durable when this returns.
    pub fn record<'a>(
        &mut self,
        upserted: impl Iterator<Item = (&'a str, u128)>,
        deleted: impl Iterator<Item = &'a str>,
    ) -> Result<(), ReverseError> {
        let io = |source| ReverseError::State {
            path: self.path.clone(),
            source,
        };
        for (key, hash) in upserted {
            writeln!(self.file, "+\t{hash:032x}\t{key}").map_err(io)?;
        }
        for key in deleted {
            writeln!(self.file, "-\t{key}").map_err(io)?;
        }
        self.file.flush().map_err(io)?;
        self.file.get_ref().sync_data().map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
use std::collections::HashMap;

/// Every entry of `previous` as key JSON → hash (tests).
#[cfg(test)]
fn drain(mut previous: Previous) -> HashMap<String, u128> {
    let mut out = HashMap::new();
    let mut last: Option<Vec<Value>> = None;
    while let Some(entry) = previous.next().unwrap() {
        if let Some(last) = &last {
            assert!(key_order(last, &entry.key).is_lt(), "out of order");
        }
        last = Some(entry.key.clone());
        out.insert(entry.key_json, entry.hash);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: i64) -> Vec<Value> {
        vec![Value::Int(n)]
    }

    fn save(files: &StateFiles, rows: &[(i64, u128)]) {
        let mut writer = files.writer().unwrap();
        for &(k, hash) in rows {
            writer.push(&Entry::new(key(k), 0).key_json, hash).unwrap();
        }
        writer.finish(true).unwrap();
    }

    fn map(rows: &[(i64, u128)]) -> HashMap<String, u128> {
        rows.iter()
            .map(|&(k, h)| (Entry::new(key(k), 0).key_json, h))
            .collect()
    }

    #[test]
    fn a_journal_replays_over_the_state_and_a_new_fingerprint_starts_over() {
        let dir = std::env::temp_dir().join(format!("tw-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let files = StateFiles::new(&dir, "job", "f1".into());
        assert!(drain(files.previous().unwrap()).is_empty());
        save(&files, &[(1, 11), (2, 22), (10, 100)]);
        assert_eq!(
            drain(files.previous().unwrap()),
            map(&[(1, 11), (2, 22), (10, 100)])
        );

        // Two runs' journals, the second overriding the first; keys 3
        // and 11 new, 1 deleted, 2 deleted and pushed again.
        let mut journal = files.journal().unwrap();
        let j = |n| Entry::new(key(n), 0).key_json;
        journal
            .record(
                [(j(11).as_str(), 111u128)].into_iter(),
                [j(2).as_str()].into_iter(),
            )
            .unwrap();
        drop(journal);
        let mut journal = files.journal().unwrap();
        journal
            .record(
                [(j(3).as_str(), 33u128), (j(2).as_str(), 23)].into_iter(),
                [j(1).as_str()].into_iter(),
            )
            .unwrap();
        drop(journal);
        // A torn line at the end, as a crash leaves it.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("reverse_etl/job.journal"))
            .unwrap();
        write!(f, "+\t00ab").unwrap();
        assert_eq!(
            drain(files.previous().unwrap()),
            map(&[(2, 23), (3, 33), (10, 100), (11, 111)])
        );

        let other = StateFiles::new(&dir, "job", "f2".into());
        assert!(drain(other.previous().unwrap()).is_empty());
        files.clear().unwrap();
        assert!(drain(files.previous().unwrap()).is_empty());

        // A state out of order is refused.
        save(&files, &[(5, 1), (4, 1)]);
        let read = files.previous().and_then(|mut previous| {
            while previous.next()?.is_some() {}
            Ok(())
        });
        assert!(read.is_err(), "{read:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_version_1_state_is_converted_to_key_order() {
        let dir = std::env::temp_dir().join(format!("tw-state-v1-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("reverse_etl")).unwrap();
        // Version 1 sorted the key JSON as text: [10] before [9].
        fs::write(
            dir.join("reverse_etl/job.state"),
            format!(
                "{}\n{:032x}\t[{{\"Int\":10}}]\n{:032x}\t[{{\"Int\":9}}]\n",
                v1_header("f"),
                10,
                9
            ),
        )
        .unwrap();
        let files = StateFiles::new(&dir, "job", "f".into());
        assert_eq!(drain(files.previous().unwrap()), map(&[(9, 9), (10, 10)]));
        let text = fs::read_to_string(dir.join("reverse_etl/job.state")).unwrap();
        assert!(text.starts_with(&state_header("f")), "{text}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
