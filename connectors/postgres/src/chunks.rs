//! Snapshot copies split into page ranges and read by parallel workers.
//!
//! ```text
//!   plan: table ──▶ chunks of `chunk_pages` heap pages (ctid ranges; a small
//!         or partitioned table is one chunk)
//!
//!   dispatcher ──(chunk k, sender k)──▶ worker 1 ┐ each on its own connection,
//!       │                               worker 2 ┤ BEGIN REPEATABLE READ;
//!       │                               …        ┘ SET TRANSACTION SNAPSHOT S
//!       └─(receiver k, in chunk order)──▶ consumer (the source's next_event)
//!                                         Start · Block… · Done, chunk after chunk
//! ```
//!
//! Every worker imports the same snapshot, so the chunks together are the
//! tables at one point. Workers read ahead while the consumer drains the
//! chunks strictly in plan order: the rows of one chunk never interleave
//! with another's, so a lake commit made between two chunks holds whole
//! chunks only — which is what lets an interrupted snapshot resume after
//! its last committed chunk (see [`chunks_committed`]). Each chunk channel holds a
//! few blocks, so memory stays bounded by workers × blocks whatever the
//! table's size. Row `r` (from 1) of chunk `k` has `_tw_ord = k << 32 | r`.
//!
//! `ctid` range scans (`TID Range Scan`, Postgres 14+) read only the pages
//! asked for; before 14 the plan is one chunk per table.

use std::sync::Arc;

use futures_util::StreamExt;
use tidewater_core::{Mark, RowBlock, TableId, TableSchema};
use tokio::sync::{mpsc, Mutex};
use tracing::debug;

use crate::copy_arrow::{CopyDecoder, CopyFormat};
use crate::error::{query_error, PostgresError};

/// How many whole chunks of a table an interrupted initial snapshot
/// committed, from the table's mark: its rows sit in the transaction just
/// below the consistent point, numbered `chunk << 32 | row`, and commits
/// land between chunks only. None when the mark is not of that snapshot.
pub fn chunks_committed(mark: Mark, consistent_point: u64) -> Option<u32> {
    match mark {
        Mark::ZERO => Some(0),
        mark if mark.seq == consistent_point.saturating_sub(1) => Some((mark.ord >> 32) as u32 + 1),
        _ => None,
    }
}

/// Rows per block handed to the consumer.
const BLOCK_ROWS: usize = 8192;

/// Blocks a worker may read ahead of the consumer, per chunk.
const BLOCKS_AHEAD: usize = 8;

/// Heap pages of one chunk, or the whole table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    All,
    /// Pages `from..to`; `to = None` is open-ended (the table may have grown).
    Range {
        from: u64,
        to: Option<u64>,
    },
}

/// One chunk of one table's copy.
#[derive(Debug, Clone)]
pub struct ChunkJob {
    pub schema: Arc<TableSchema>,
    /// Base type oid of each column.
    pub oids: Arc<[u32]>,
    pub format: CopyFormat,
    /// `FROM` target: `ONLY t` for a plain table, `t` for a partitioned one.
    pub from: String,
    pub select: String,
    pub index: u32,
    pub pages: Pages,
}

impl ChunkJob {
    fn sql(&self) -> String {
        let filter = match self.pages {
            Pages::All => String::new(),
            Pages::Range { from, to } => {
                let mut f = format!(" WHERE ctid >= '({from},0)'::tid");
                if let Some(to) = to {
                    f.push_str(&format!(" AND ctid < '({to},0)'::tid"));
                }
                f
            }
        };
        format!(
            "COPY (SELECT {} FROM {}{filter}) TO STDOUT{}",
            self.select,
            self.from,
            self.format.options()
        )
    }
}

/// The chunks of a table of `pages` heap pages, `chunk_pages` each; the last
/// one is open-ended. The same `(chunk_pages, count)` always gives the same
/// ranges, so a resumed snapshot reads what the interrupted one planned.
pub fn page_ranges(chunk_pages: u64, count: u32) -> Vec<Pages> {
    if count <= 1 {
        return vec![Pages::All];
    }
    (0..count)
        .map(|k| {
            let from = u64::from(k) * chunk_pages;
            Pages::Range {
                from,
                to: (k + 1 < count).then(|| from + chunk_pages),
            }
        })
        .collect()
}

/// How many chunks a table of `pages` pages gets.
pub fn chunk_count(pages: u64, chunk_pages: u64) -> u32 {
    let chunk_pages = chunk_pages.max(1);
    u32::try_from(pages.div_ceil(chunk_pages).max(1)).unwrap_or(u32::MAX)
}

/// What the consumer gets, chunk after chunk in plan order.
#[derive(Debug)]
pub enum CopyItem {
    Start {
        table: TableId,
        index: u32,
    },
    Block(RowBlock),
    Done {
        table: TableId,
        index: u32,
        rows: u64,
    },
}

type ChunkReceiver = mpsc::Receiver<Result<CopyItem, PostgresError>>;
type ChunkSender = mpsc::Sender<Result<CopyItem, PostgresError>>;

/// Chunks being read by the workers, handed out in plan order.
pub struct ParallelCopy {
    order: mpsc::Receiver<ChunkReceiver>,
    current: Option<ChunkReceiver>,
    /// The current chunk sent its `Done`.
    current_done: bool,
    tasks: tokio::task::JoinSet<()>,
}

impl ParallelCopy {
    /// Opens `workers` connections to `url`, each in the exported snapshot
    /// `snapshot`, and starts reading `jobs`.
    pub async fn start(
        config: &tokio_postgres::Config,
        tls: &crate::tls::TlsSetup,
        session_sql: &str,
        snapshot: &str,
        workers: usize,
        jobs: Vec<ChunkJob>,
    ) -> Result<Self, PostgresError> {
        let workers = workers.clamp(1, jobs.len().max(1));
        let mut tasks = tokio::task::JoinSet::new();
        let mut clients = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (client, connection) =
                crate::source::open_client(config, tls, "the snapshot worker's connection").await?;
            tasks.spawn(async move {
                if let Err(err) = connection.await {
                    debug!(error = %err, "snapshot worker connection closed");
                }
            });
            client
                .batch_execute(&format!(
                    "{session_sql} BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
                     SET TRANSACTION SNAPSHOT '{}'",
                    snapshot.replace('\'', "''")
                ))
                .await
                .map_err(query_error("importing the snapshot in a copy worker"))?;
            clients.push(client);
        }
        let (order_tx, order) = mpsc::channel::<ChunkReceiver>(workers);
        let (job_tx, job_rx) = mpsc::channel::<(ChunkJob, ChunkSender)>(1);
        let job_rx = Arc::new(Mutex::new(job_rx));
        tasks.spawn(async move {
            for job in jobs {
                let (tx, rx) = mpsc::channel(BLOCKS_AHEAD);
                // The receiver is queued before any worker can take the job,
                // so the consumer sees chunks in plan order.
                if order_tx.send(rx).await.is_err() || job_tx.send((job, tx)).await.is_err() {
                    return;
                }
            }
        });
        for client in clients {
            let job_rx = job_rx.clone();
            tasks.spawn(async move {
                loop {
                    let next = job_rx.lock().await.recv().await;
                    let Some((job, tx)) = next else { break };
                    if let Err(err) = read_chunk(&client, &job, &tx).await {
                        let _ = tx.send(Err(err)).await;
                        break;
                    }
                }
                let _ = client.batch_execute("COMMIT").await;
            });
        }
        Ok(Self {
            order,
            current: None,
            current_done: true,
            tasks,
        })
    }

    /// The next item in plan order; `None` once every chunk is done.
    pub async fn next(&mut self) -> Option<Result<CopyItem, PostgresError>> {
        loop {
            if self.current.is_none() {
                self.current = Some(self.order.recv().await?);
                self.current_done = false;
            }
            let current = self.current.as_mut().expect("set above");
            match current.recv().await {
                Some(item) => {
                    if matches!(item, Ok(CopyItem::Done { .. })) {
                        self.current_done = true;
                    }
                    return Some(item);
                }
                None if self.current_done => self.current = None,
                None => {
                    return Some(Err(PostgresError::Misuse {
                        what: "a snapshot copy worker ended inside a chunk",
                    }))
                }
            }
        }
    }
}

impl Drop for ParallelCopy {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn read_chunk(
    client: &tokio_postgres::Client,
    job: &ChunkJob,
    tx: &ChunkSender,
) -> Result<(), PostgresError> {
    let table = job.schema.table.clone();
    let send = |item| async { tx.send(Ok(item)).await.is_ok() };
    if !send(CopyItem::Start {
        table: table.clone(),
        index: job.index,
    })
    .await
    {
        return Ok(());
    }
    let stream = client
        .copy_out(&job.sql())
        .await
        .map_err(query_error(format!("copying {table}")))?;
    let mut stream = std::pin::pin!(stream);
    let mut decoder = CopyDecoder::new(job.schema.clone(), &job.oids, job.format);
    let base = u64::from(job.index) << 32;
    let mut first = 1u64;
    while let Some(data) = stream.next().await {
        let data = data.map_err(query_error(format!("copying {table}")))?;
        decoder.feed(&data)?;
        if decoder.block_rows() >= BLOCK_ROWS {
            let rows = decoder.block_rows() as u64;
            if first + rows > 1 << 32 {
                return Err(too_many_rows());
            }
            if let Some(block) = decoder.take_block(base + first)? {
                first += rows;
                if !send(CopyItem::Block(block)).await {
                    return Ok(());
                }
            }
        }
    }
    decoder.finish()?;
    let rows = decoder.block_rows() as u64;
    if first + rows > 1 << 32 {
        return Err(too_many_rows());
    }
    if let Some(block) = decoder.take_block(base + first)? {
        if !send(CopyItem::Block(block)).await {
            return Ok(());
        }
    }
    send(CopyItem::Done {
        table,
        index: job.index,
        rows: decoder.total_rows(),
    })
    .await;
    Ok(())
}

fn too_many_rows() -> PostgresError {
    PostgresError::Misuse {
        what: "a snapshot chunk of more than 2^32 rows (lower snapshot_chunk_bytes)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_page_once() {
        assert_eq!(page_ranges(10, 1), vec![Pages::All]);
        assert_eq!(chunk_count(0, 10), 1);
        assert_eq!(chunk_count(25, 10), 3);
        let ranges = page_ranges(10, chunk_count(25, 10));
        assert_eq!(
            ranges,
            vec![
                Pages::Range {
                    from: 0,
                    to: Some(10)
                },
                Pages::Range {
                    from: 10,
                    to: Some(20)
                },
                Pages::Range { from: 20, to: None },
            ]
        );
    }
}
