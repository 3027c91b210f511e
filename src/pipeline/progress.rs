//! Snapshot progress: per table rows done against the server's estimate,
//! reported every [`PROGRESS_EVERY`] — one rewritten line on a terminal,
//! log lines otherwise.

use std::time::{Duration, Instant};

use tidewater_core::TableId;
use tracing::info;

/// Progress of the snapshot copies: per table rows done against the server's
/// estimate, reported every [`PROGRESS_EVERY`] — one rewritten line on a
/// terminal, log lines otherwise.
#[derive(Default)]
pub(super) struct CopyProgress {
    tables: std::collections::BTreeMap<TableId, TableProgress>,
    reported: Option<Instant>,
    rows_since_check: u64,
}

struct TableProgress {
    estimate: u64,
    done: u64,
    started: Instant,
    finished: bool,
}

const PROGRESS_EVERY: Duration = Duration::from_secs(2);

impl CopyProgress {
    pub(super) fn start(&mut self, table: TableId, estimate: u64) {
        // Copies run one table after the other: a new one ends the last.
        if !self.tables.is_empty() {
            self.finish_all();
        }
        self.tables.insert(
            table,
            TableProgress {
                estimate,
                done: 0,
                started: Instant::now(),
                finished: false,
            },
        );
        self.reported.get_or_insert_with(Instant::now);
    }

    pub(super) fn row(&mut self, table: &TableId) {
        self.rows(table, 1);
    }

    pub(super) fn rows(&mut self, table: &TableId, n: u64) {
        if let Some(t) = self.tables.get_mut(table) {
            t.done += n;
            self.rows_since_check += n;
            // The clock is read once per few thousand rows, not per row.
            if self.rows_since_check >= 4096 {
                self.rows_since_check = 0;
                if self
                    .reported
                    .is_some_and(|at| at.elapsed() >= PROGRESS_EVERY)
                {
                    self.report(false);
                }
            }
        }
    }

    pub(super) fn finish(&mut self, table: &TableId) {
        if let Some(t) = self.tables.get_mut(table) {
            t.finished = true;
        }
        self.report(true);
    }

    /// Rows done and estimated over the copies running now.
    pub(super) fn totals(&self) -> (u64, u64) {
        self.tables
            .values()
            .fold((0, 0), |(d, e), t| (d + t.done, e + t.estimate.max(t.done)))
    }

    pub(super) fn finish_all(&mut self) {
        for t in self.tables.values_mut() {
            t.finished = true;
        }
        self.report(true);
    }

    fn report(&mut self, last: bool) {
        use std::io::IsTerminal;
        self.reported = Some(Instant::now());
        let terminal = std::io::stderr().is_terminal();
        for (table, t) in &self.tables {
            let seconds = t.started.elapsed().as_secs_f64().max(1e-3);
            let rate = t.done as f64 / seconds;
            let total = t.estimate.max(t.done);
            let percent = if total > 0 {
                100.0 * t.done as f64 / total as f64
            } else {
                100.0
            };
            let eta = if t.finished || rate <= 0.0 {
                0.0
            } else {
                (total.saturating_sub(t.done)) as f64 / rate
            };
            if t.finished && !last {
                continue;
            }
            if terminal {
                eprint!(
                    "\rsnapshot {table}: {} / ~{} rows ({percent:.0}%), {rate:.0} rows/s, ETA {eta:.0} s   ",
                    t.done, total
                );
                if t.finished {
                    eprintln!();
                }
            } else {
                info!(
                    table = %table,
                    rows = t.done,
                    estimated_rows = total,
                    percent = format!("{percent:.0}"),
                    rows_per_second = format!("{rate:.0}"),
                    eta_seconds = format!("{eta:.0}"),
                    done = t.finished,
                    "snapshot progress"
                );
            }
        }
        self.tables.retain(|_, t| !t.finished);
    }
}
