//! The source task: the only owner of the connected source. It reads events,
//! masks them (`[masking]`: nothing after this task sees a masked column's
//! value) and hands them to the coordinator over a bounded channel
//! (backpressure), with Arrow blocks also bounded by bytes.
//!
//! ```text
//!  source.next_event() ──▶ Masker ──▶ [channel: EVENT_CHANNEL_CAPACITY events,
//!                                       QUEUED_BLOCK_KIB of blocks, QUEUED_COPY_KIB
//!                                       of copied rows] ──▶ coordinator
//! ```

use std::sync::Arc;

use tidewater_core::mask::{MaskPolicy, Masker};
use tidewater_core::{ChangeEvent, Source};
use tokio::sync::{mpsc, watch};

use super::PipelineError;

/// Events buffered between the source task and the coordinator.
pub(super) const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// Arrow bytes of row blocks that may wait between the source task and the
/// coordinator, in KiB: blocks are large (thousands of rows), so the event
/// count alone would not bound memory.
const QUEUED_BLOCK_KIB: usize = 32 * 1024;

/// Of those, KiB of copied rows (`Read` blocks): while a table is copied
/// beside the stream, the stream's next transaction waits behind them, so
/// they are kept to a few blocks — enough to keep the sink busy.
const QUEUED_COPY_KIB: usize = 8 * 1024;

/// An event in flight, with the share of the block budget it holds.
pub(super) type Queued = (
    Result<ChangeEvent, PipelineError>,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// Reads events from the source. It is the only owner of the source, and
/// never cancels `next_event` except at shutdown, so no event is lost halfway
/// through decoding. Acknowledgements do not pass here: the coordinator
/// holds the source's acknowledger.
pub(super) async fn source_loop<S>(
    mut source: S,
    masking: Arc<MaskPolicy>,
    events: mpsc::Sender<Queued>,
    mut stop: watch::Receiver<bool>,
) where
    S: Source,
    PipelineError: From<S::Error>,
{
    let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(QUEUED_BLOCK_KIB));
    let copy_budget = std::sync::Arc::new(tokio::sync::Semaphore::new(QUEUED_COPY_KIB));
    let mut masker = Masker::new(masking);
    loop {
        // Events the source has already decoded need no select: only a wait
        // for the server must be interruptible by `stop`.
        let event = match source.ready_event() {
            Some(event) if !*stop.borrow() => Ok(event),
            Some(_) => break,
            None => tokio::select! {
                biased;
                _ = stop.changed() => break,
                event = source.next_event() => event.map_err(PipelineError::from),
            },
        };
        let event = event.and_then(|e| masker.apply(e).map_err(PipelineError::Masking));
        let failed = event.is_err();
        let permit = match &event {
            Ok(ChangeEvent::Block(block)) => {
                let bytes: usize = block
                    .columns
                    .iter()
                    .map(|c| c.get_array_memory_size())
                    .sum();
                let (budget, limit) = if block.ops.first() == Some(&tidewater_core::Op::Read) {
                    (&copy_budget, QUEUED_COPY_KIB)
                } else {
                    (&budget, QUEUED_BLOCK_KIB)
                };
                let kib = (bytes / 1024).clamp(1, limit) as u32;
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    permit = budget.clone().acquire_many_owned(kib) => permit.ok(),
                }
            }
            _ => None,
        };
        let event = (event, permit);
        match events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => tokio::select! {
                biased;
                _ = stop.changed() => break,
                sent = events.send(event) => if sent.is_err() { break },
            },
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
        if failed {
            break;
        }
    }
    source.close().await;
}
