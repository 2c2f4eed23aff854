//! The inbound bridge from the socket-owning task to the server's task.

use std::collections::VecDeque;

use cluster_core::TransportEvent;
use tokio::sync::mpsc;

use crate::fairness::Fairness;

/// Frames handed from a socket owner to the server's task per channel message.
pub(crate) const BATCH: usize = 256;

/// Batches in flight between the receiving socket owner and the server's task.
const INBOUND_BATCHES: usize = 16;

/// The server's end of the inbound bridge: batches of events from the socket owner,
/// handed out one at a time. Cancel-safe: a batch taken from the channel is kept in
/// `pending` until every event of it was returned.
pub(crate) struct Inbound {
    rx: mpsc::Receiver<Vec<TransportEvent>>,
    pending: VecDeque<TransportEvent>,
    fairness: Fairness,
}

impl Inbound {
    pub(crate) fn channel() -> (mpsc::Sender<Vec<TransportEvent>>, Self) {
        let (tx, rx) = mpsc::channel(INBOUND_BATCHES);
        (
            tx,
            Self {
                rx,
                pending: VecDeque::new(),
                fairness: Fairness::default(),
            },
        )
    }

    pub(crate) async fn recv(&mut self) -> Option<TransportEvent> {
        self.fairness.pause_if_due().await;
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.fairness.took();
                return Some(event);
            }
            let batch = self.rx.recv().await?;
            self.pending.extend(batch);
        }
    }

    /// The next event if one is ready now.
    pub(crate) fn try_recv(&mut self) -> Option<TransportEvent> {
        if !self.fairness.may_take() {
            return None;
        }
        if self.pending.is_empty() {
            let batch = self.rx.try_recv().ok()?;
            self.pending.extend(batch);
        }
        let event = self.pending.pop_front()?;
        self.fairness.took();
        Some(event)
    }

    /// Stops accepting batches: a socket owner blocked on a full channel is released.
    pub(crate) fn close(&mut self) {
        self.rx.close();
        self.pending.clear();
    }
}
