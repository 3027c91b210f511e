//! What a job last pushed: key → row hash, so the next run writes only the
//! difference. Kept under `pipeline.state_dir/reverse_etl/`.
//!
//! ```text
//!  <job>.state    header {fingerprint}   then  <hash hex> TAB <key json>   (one per pushed row)
//!  <job>.journal  header {fingerprint}   then  + TAB <hash> TAB <key> | - TAB <key>
//!                 (appended and fsynced after each committed target transaction)
//! ```
//!
//! A run loads the state and replays the journal over it: after a crash the
//! rows already committed count as pushed, and the rest are pushed again
//! (upserts and deletes by key are idempotent, so a transaction committed
//! just before the crash but not journaled is harmless). A finished run
//! writes the whole state atomically (temp file, fsync, rename) and drops
//! the journal. The fingerprint covers the query, the result columns, the
//! target and the key: when any changes, the state no longer describes the
//! target and the next run starts over.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::ReverseError;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct State {
    /// key (JSON of its values) → hash of the row pushed for it.
    pub rows: HashMap<String, u128>,
}

/// The files of one job.
pub struct StateFiles {
    state: PathBuf,
    journal: PathBuf,
    fingerprint: String,
}

fn header(fingerprint: &str) -> String {
    serde_json::json!({ "version": 1, "fingerprint": fingerprint }).to_string()
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

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> ReverseError {
        let path = path.to_path_buf();
        move |source| ReverseError::State {
            path: path.clone(),
            source,
        }
    }

    /// Holds the job's lock file until the returned guard drops: two runs
    /// of one job (a schedule and a manual run) would interleave their
    /// journals. Err(None) when another run holds it.
    pub fn lock(&self) -> Result<File, Option<ReverseError>> {
        let dir = self.state.parent().expect("has a parent");
        fs::create_dir_all(dir).map_err(|e| Some(self.io(dir)(e)))?;
        let path = self.state.with_extension("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Some(self.io(&path)(e)))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Some(self.io(&path)(e))),
        }
    }

    /// The last pushed state (journal replayed), or None when there is none
    /// for this fingerprint.
    pub fn load(&self) -> Result<Option<State>, ReverseError> {
        let Some(mut state) = self.read(&self.state, false)? else {
            // A journal without a state: a first run that died. Its rows
            // were pushed; start from them.
            return Ok(self.read(&self.journal, true)?.map(|mut journal| {
                journal.rows.retain(|_, hash| *hash != 0);
                journal
            }));
        };
        if let Some(journal) = self.read(&self.journal, true)? {
            for (key, hash) in journal.rows {
                if hash == 0 {
                    state.rows.remove(&key);
                } else {
                    state.rows.insert(key, hash);
                }
            }
        }
        Ok(Some(state))
    }

    /// Reads a state or journal file; a delete in a journal comes back as
    /// hash 0 (the state drops it; no row hashes to exactly 0 in practice,
    /// and if one did it would only be pushed again).
    fn read(&self, path: &Path, journal: bool) -> Result<Option<State>, ReverseError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(self.io(path)(err)),
        };
        let bad = |what: &str| {
            self.io(path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{what}; delete the file to push everything again"),
            ))
        };
        let mut lines = BufReader::new(file).lines();
        let Some(first) = lines.next().transpose().map_err(self.io(path))? else {
            return Ok(None);
        };
        if first != header(&self.fingerprint) {
            return Ok(None);
        }
        let mut rows = HashMap::new();
        for line in lines {
            let line = line.map_err(self.io(path))?;
            let mut parts = line.splitn(3, '\t');
            let (hash, key) = if journal {
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("+"), Some(hash), Some(key)) => (hash, key),
                    (Some("-"), Some(key), None) => ("0", key),
                    // A torn last line of a crash: its transaction is
                    // simply pushed again.
                    _ => continue,
                }
            } else {
                match (parts.next(), parts.next()) {
                    (Some(hash), Some(key)) => (hash, key),
                    _ => return Err(bad("a line is not <hash> TAB <key>")),
                }
            };
            let Ok(hash) = u128::from_str_radix(hash, 16) else {
                if journal {
                    continue;
                }
                return Err(bad("a row hash is not hexadecimal"));
            };
            rows.insert(key.to_string(), hash);
        }
        Ok(Some(State { rows }))
    }

    /// Starts the journal of a run (after a previous one's: both are
    /// replayed over the state).
    pub fn journal(&self) -> Result<Journal, ReverseError> {
        let dir = self.state.parent().expect("has a parent");
        fs::create_dir_all(dir).map_err(self.io(dir))?;
        let fresh = match fs::read_to_string(&self.journal) {
            Ok(text) => text.lines().next() != Some(header(&self.fingerprint).as_str()),
            Err(_) => true,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(!fresh)
            .write(true)
            .truncate(fresh)
            .open(&self.journal)
            .map_err(self.io(&self.journal))?;
        if fresh {
            writeln!(file, "{}", header(&self.fingerprint)).map_err(self.io(&self.journal))?;
            file.sync_all().map_err(self.io(&self.journal))?;
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

    /// Replaces the state with `state` and drops the journal.
    pub fn save(&self, state: &State) -> Result<(), ReverseError> {
        let dir = self.state.parent().expect("has a parent");
        fs::create_dir_all(dir).map_err(self.io(dir))?;
        let tmp = self.state.with_extension("state.tmp");
        {
            let file = File::create(&tmp).map_err(self.io(&tmp))?;
            let mut out = BufWriter::new(file);
            writeln!(out, "{}", header(&self.fingerprint)).map_err(self.io(&tmp))?;
            let mut keys: Vec<(&String, &u128)> = state.rows.iter().collect();
            keys.sort();
            for (key, hash) in keys {
                writeln!(out, "{hash:032x}\t{key}").map_err(self.io(&tmp))?;
            }
            let file = out
                .into_inner()
                .map_err(|e| self.io(&tmp)(e.into_error()))?;
            file.sync_all().map_err(self.io(&tmp))?;
        }
        fs::rename(&tmp, &self.state).map_err(self.io(&self.state))?;
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
        match fs::remove_file(&self.journal) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(self.io(&self.journal)(err)),
        }
    }

    /// Forgets everything pushed (the target was created or replaced).
    pub fn clear(&self) -> Result<(), ReverseError> {
        for path in [&self.state, &self.journal] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(self.io(path)(err)),
            }
        }
        Ok(())
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
mod tests {
    use super::*;

    #[test]
    fn a_journal_replays_over_the_state_and_a_new_fingerprint_starts_over() {
        let dir = std::env::temp_dir().join(format!("tw-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let files = StateFiles::new(&dir, "job", "f1".into());
        assert_eq!(files.load().unwrap(), None);
        let mut state = State::default();
        state.rows.insert("[1]".into(), 11);
        state.rows.insert("[2]".into(), 22);
        files.save(&state).unwrap();
        assert_eq!(files.load().unwrap(), Some(state.clone()));

        let mut journal = files.journal().unwrap();
        journal
            .record([("[3]", 33u128)].into_iter(), ["[1]"].into_iter())
            .unwrap();
        drop(journal);
        // A torn line at the end, as a crash leaves it.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("reverse_etl/job.journal"))
            .unwrap();
        write!(f, "+\t00ab").unwrap();
        let loaded = files.load().unwrap().unwrap();
        assert_eq!(loaded.rows.len(), 2);
        assert_eq!(loaded.rows["[2]"], 22);
        assert_eq!(loaded.rows["[3]"], 33);

        let other = StateFiles::new(&dir, "job", "f2".into());
        assert_eq!(other.load().unwrap(), None);
        files.clear().unwrap();
        assert_eq!(files.load().unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
