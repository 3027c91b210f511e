//! Copies on demand while streaming ("re-backfill"): an operator asks for a
//! table to be copied again, and the running pipeline copies it beside the
//! stream, the way a table that joins is copied — the other tables go on.
//!
//! ```text
//!  tidewater snapshot --table s.t   (while `run` holds the lease) ─┐
//!  INSERT INTO <source.signal_table> (tables) VALUES ('s.t')  ──────┤
//!                                                                    ▼
//!            CopyRequests record in the state store (lake file / warehouse row)
//!                                                                    │ read at start, then every
//!                                                                    ▼ REQUEST_POLL
//!  coordinator ──▶ the source's request queue ──▶ copied at its next transaction
//!                                                  boundary (a `t` row, then the rows)
//!  TableSnapshotDone(s.t) ──▶ s.t leaves the record
//! ```
//!
//! The record is the request's only durable home: it is written before a
//! signal row's transaction can commit (so a crash redelivers the row, or
//! finds the record), and a table leaves it only when its copy is done (so
//! a crash during the copy asks again at the next start). A request is
//! idempotent: at worst a table is copied twice.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use arrow_array::Array;
use tidewater_core::state::{CopyRequests, StateStore};
use tidewater_core::{CopyRequestQueue, Datum, Op, RowBlock, RowChange, TableFilter, TableId};
use tracing::{info, warn};

/// How often the record is read for requests from the command line.
const REQUEST_POLL: Duration = Duration::from_secs(2);

/// The column of the signal table that names the tables to copy.
pub const SIGNAL_COLUMN: &str = "tables";

pub(super) struct Requests {
    /// The source's queue; None when the source cannot copy on demand.
    queue: Option<CopyRequestQueue>,
    /// Inserts into this table ask for copies.
    signal: Option<TableId>,
    /// The pipeline's tables: a request for any other is refused.
    filter: Option<TableFilter>,
    /// Handed to the source, copy not done yet.
    in_flight: BTreeSet<TableId>,
    polled: Option<Instant>,
}

impl Requests {
    pub(super) fn new(
        queue: Option<CopyRequestQueue>,
        signal: Option<TableId>,
        filter: Option<TableFilter>,
    ) -> Requests {
        Requests {
            queue,
            signal,
            filter,
            in_flight: BTreeSet::new(),
            polled: None,
        }
    }

    /// None: requests are not read (the coordinator's tests, a source that
    /// cannot copy on demand says so when asked).
    pub(super) fn none() -> Requests {
        Requests::new(None, None, None)
    }

    /// Hands the recorded requests not yet handed over to the source (at
    /// most every [`REQUEST_POLL`]); the tables handed over. A record that
    /// does not read is reported, never a reason to stop the stream.
    pub(super) async fn poll<S: StateStore>(&mut self, state: &S) -> Vec<TableId> {
        if self.polled.is_some_and(|at| at.elapsed() < REQUEST_POLL) {
            return Vec::new();
        }
        self.polled = Some(Instant::now());
        let recorded = match state.read::<CopyRequests>().await {
            Ok(Some(recorded)) => recorded,
            Ok(None) => return Vec::new(),
            Err(err) => {
                warn!(error = %tidewater_core::error_chain(&err), "the copy requests record does not read; copies asked for wait");
                return Vec::new();
            }
        };
        // Tables the pipeline does not replicate leave the record.
        let (wanted, foreign): (Vec<TableId>, Vec<TableId>) =
            recorded.0.into_iter().partition(|t| self.replicates(t));
        if !foreign.is_empty() {
            let kept = CopyRequests(wanted.clone());
            let written = if kept.0.is_empty() {
                state.remove::<CopyRequests>().await
            } else {
                state.write(&kept).await
            };
            if let Err(err) = written {
                warn!(error = %tidewater_core::error_chain(&err), "the copy requests record could not be rewritten");
            }
        }
        self.hand_over(wanted)
    }

    /// Whether the pipeline replicates `table` (else a request is refused,
    /// with a warning).
    fn replicates(&self, table: &TableId) -> bool {
        let yes = self.filter.as_ref().is_none_or(|f| f.matches(table));
        if !yes {
            warn!(table = %table, "a copy was asked for a table this pipeline does not replicate (source.tables); ignored");
        }
        yes
    }

    fn hand_over(&mut self, tables: Vec<TableId>) -> Vec<TableId> {
        let mut handed = Vec::new();
        for table in tables {
            if self.in_flight.contains(&table) {
                continue;
            }
            let Some(queue) = &self.queue else {
                warn!(table = %table, "this source cannot copy a table while streaming on demand; stop the pipeline and run `tidewater snapshot --table` instead");
                continue;
            };
            match queue.lock() {
                Ok(mut queue) => queue.push(table.clone()),
                Err(poisoned) => poisoned.into_inner().push(table.clone()),
            }
            info!(table = %table, "copy asked for: the table is copied again beside the stream");
            self.in_flight.insert(table.clone());
            handed.push(table);
        }
        handed
    }

    /// The tables an insert into the signal table asks for (none for rows
    /// of other tables). `names` is the signal table's column names.
    pub(super) fn signalled_by_row(&self, row: &RowChange, names: &[String]) -> Vec<TableId> {
        if self.signal.as_ref() != Some(&row.table) || row.op != Op::Insert {
            return Vec::new();
        }
        let Some(i) = names.iter().position(|n| n == SIGNAL_COLUMN) else {
            return Vec::new();
        };
        match row.values.get(i) {
            Some(Datum::Text(text)) => parse_tables(text),
            _ => Vec::new(),
        }
    }

    /// [`Requests::signalled_by_row`] for a block of rows.
    pub(super) fn signalled_by_block(&self, block: &RowBlock, names: &[String]) -> Vec<TableId> {
        if self.signal.as_ref() != Some(&block.table) {
            return Vec::new();
        }
        let Some(column) = names
            .iter()
            .position(|n| n == SIGNAL_COLUMN)
            .and_then(|i| block.columns.get(i))
        else {
            return Vec::new();
        };
        let Some(texts) = column.as_any().downcast_ref::<arrow_array::StringArray>() else {
            return Vec::new();
        };
        let mut tables = Vec::new();
        for (row, op) in block.ops.iter().enumerate() {
            if *op == Op::Insert && !texts.is_null(row) {
                tables.extend(parse_tables(texts.value(row)));
            }
        }
        tables
    }

    /// Records `tables` as asked for (before the signal row that asked can
    /// commit), then hands them to the source.
    pub(super) async fn ask<S: StateStore>(
        &mut self,
        state: &S,
        tables: Vec<TableId>,
    ) -> Result<(), S::Error> {
        let tables: Vec<TableId> = tables.into_iter().filter(|t| self.replicates(t)).collect();
        if tables.is_empty() {
            return Ok(());
        }
        let mut recorded = state.read::<CopyRequests>().await?.unwrap_or_default();
        for table in tables {
            if !recorded.0.contains(&table) {
                recorded.0.push(table);
            }
        }
        state.write(&recorded).await?;
        self.polled = None;
        self.poll(state).await;
        Ok(())
    }

    /// `table`'s copy is done: it leaves the record.
    pub(super) async fn done<S: StateStore>(
        &mut self,
        state: &S,
        table: &TableId,
    ) -> Result<(), S::Error> {
        if !self.in_flight.remove(table) {
            return Ok(());
        }
        let Some(mut recorded) = state.read::<CopyRequests>().await? else {
            return Ok(());
        };
        recorded.0.retain(|t| t != table);
        if recorded.0.is_empty() {
            state.remove::<CopyRequests>().await
        } else {
            state.write(&recorded).await
        }
    }
}

/// `schema.table` names separated by commas or white space; others are
/// reported and left out.
pub fn parse_tables(text: &str) -> Vec<TableId> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .filter_map(|name| match name.split_once('.') {
            Some((schema, table)) if !schema.is_empty() && !table.is_empty() => {
                Some(TableId::new(schema, table))
            }
            _ => {
                warn!(name = %name, "a copy request names no schema.table; left out");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_parse_and_bad_names_are_left_out() {
        assert_eq!(
            parse_tables(" public.a,shop.b  x.y\n bad, .c"),
            vec![
                TableId::new("public", "a"),
                TableId::new("shop", "b"),
                TableId::new("x", "y")
            ]
        );
    }
}
