//! The inbound bridge from the socket-owning task to the server's task.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;

use cluster_core::TransportEvent;
use tokio::sync::mpsc;

/// Frames handed from a socket owner to the server's task per channel message.
pub(crate) const BATCH: usize = 256;

/// Batches in flight between the receiving socket owner and the server's task.
const INBOUND_BATCHES: usize = 16;

/// The server's end of the inbound bridge: batches of events from the socket owner,
/// handed out as the server takes them. Shared (`&self`) like the transport that holds
/// it; the lock is only held for non-blocking steps, never across an await.
pub(crate) struct Inbound {
    state: Mutex<State>,
}

struct State {
    rx: mpsc::Receiver<Vec<TransportEvent>>,
    /// Events of batches taken from the channel and not handed out yet: `readable` moves
    /// a batch here without handing anything out, which keeps it cancel-safe.
    pending: VecDeque<TransportEvent>,
}

impl Inbound {
    pub(crate) fn channel() -> (mpsc::Sender<Vec<TransportEvent>>, Self) {
        let (tx, rx) = mpsc::channel(INBOUND_BATCHES);
        (
            tx,
            Self {
                state: Mutex::new(State {
                    rx,
                    pending: VecDeque::new(),
                }),
            },
        )
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent: every
        // critical section is one non-blocking step on the channel or the queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves `true` once an event is ready for [`Inbound::try_recv_many`], `false` once
    /// the channel is closed and drained. Takes nothing from the server's point of view: a
    /// batch received from the channel is kept in `pending`.
    pub(crate) async fn readable(&self) -> bool {
        std::future::poll_fn(|cx| {
            let mut state = self.state();
            loop {
                if !state.pending.is_empty() {
                    return Poll::Ready(true);
                }
                // Pending leaves the waker registered with the channel; the lock is
                // released until the next poll.
                match state.rx.poll_recv(cx) {
                    // The socket owners never send an empty batch; if one did, look again.
                    Poll::Ready(Some(batch)) => state.pending.extend(batch),
                    Poll::Ready(None) => return Poll::Ready(false),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }

    /// Appends up to `max` events that are ready now, in arrival order; returns how many.
    pub(crate) fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
        let mut state = self.state();
        let mut n = 0;
        while n < max {
            if let Some(event) = state.pending.pop_front() {
                events.push(event);
                n += 1;
                continue;
            }
            match state.rx.try_recv() {
                Ok(batch) => state.pending.extend(batch),
                Err(_) => break,
            }
        }
        n
    }

    /// Stops accepting batches: a socket owner blocked on a full channel is released.
    pub(crate) fn close(&self) {
        let mut state = self.state();
        state.rx.close();
        state.pending.clear();
    }
}
