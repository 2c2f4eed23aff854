//! A transport wrapper that records what crosses the server/transport boundary, holds
//! arrivals behind a gate (for exact simulated runs), and lets the harness inject raw bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cluster_core::wire::Frame;
use cluster_core::{DropReason, Incarnation, PeerSet, Pid, Transport, TransportEvent};
use tokio::sync::{mpsc, watch};

use crate::history::{Event, History, Reason};

/// Opens and closes the arrival gate of every probe of a cluster.
#[derive(Clone, Debug)]
pub(crate) struct Gate {
    open: watch::Sender<bool>,
}

impl Gate {
    pub(crate) fn new(open: bool) -> Self {
        Self {
            open: watch::Sender::new(open),
        }
    }

    pub(crate) fn set(&self, open: bool) {
        self.open.send_replace(open);
    }

    fn subscribe(&self) -> watch::Receiver<bool> {
        self.open.subscribe()
    }
}

/// Wraps the transport under test, between it and the server. It never changes what passes
/// through: it only records it, and (when the gate is closed) waits before pulling arrivals.
pub(crate) struct Probe {
    pid: Pid,
    incarnation: Incarnation,
    inner: Box<dyn Transport>,
    history: History,
    gate: watch::Receiver<bool>,
    raw: mpsc::UnboundedReceiver<Bytes>,
    /// Raw frames injected and not yet handed up, over the whole cluster.
    raw_pending: Arc<AtomicUsize>,
}

impl Probe {
    pub(crate) fn new(
        pid: Pid,
        incarnation: Incarnation,
        inner: Box<dyn Transport>,
        history: History,
        gate: &Gate,
        raw_pending: Arc<AtomicUsize>,
    ) -> (Self, mpsc::UnboundedSender<Bytes>) {
        let (raw_tx, raw) = mpsc::unbounded_channel();
        let probe = Self {
            pid,
            incarnation,
            inner,
            history,
            gate: gate.subscribe(),
            raw,
            raw_pending,
        };
        (probe, raw_tx)
    }

    fn arrived(&self, event: &TransportEvent) {
        if !self.history.is_enabled() {
            return;
        }
        match event {
            TransportEvent::Frame(bytes) => {
                let header = Frame::decode(bytes.clone()).ok().map(|f| f.header);
                self.history.push(Event::Arrived {
                    at: self.pid,
                    at_incarnation: self.incarnation,
                    from: header.map(|h| h.sender),
                    incarnation: header.map(|h| h.incarnation),
                    msg_id: header.map(|h| h.msg_id),
                });
            }
            TransportEvent::Dropped {
                peer,
                reason,
                count,
            } => {
                self.history.push(Event::TransportDropped {
                    at: self.pid,
                    peer: *peer,
                    reason: Reason(*reason),
                    count: *count,
                });
            }
        }
    }
}

#[async_trait]
impl Transport for Probe {
    fn send(&mut self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        let header = if self.history.is_enabled() {
            Frame::decode(frame.clone()).ok().map(|f| f.header)
        } else {
            None
        };
        let result = self.inner.send(to, frame);
        if let Some(h) = header {
            self.history.push(Event::Routed {
                from: h.sender,
                incarnation: h.incarnation,
                to,
                msg_id: h.msg_id,
                refused: result.err().map(Reason),
            });
        }
        result
    }

    async fn recv(&mut self) -> Option<TransportEvent> {
        loop {
            if !*self.gate.borrow_and_update() {
                // Closed: pull nothing until it opens. If the gate's owner is gone, stay open.
                if self.gate.wait_for(|open| *open).await.is_err() {
                    let event = self.inner.recv().await;
                    if let Some(e) = &event {
                        self.arrived(e);
                    }
                    return event;
                }
                continue;
            }
            // Every branch is cancel-safe: `changed` and `recv` on tokio channels, and the
            // inner transport's `recv` by its contract.
            let event = tokio::select! {
                biased;
                changed = self.gate.changed() => {
                    if changed.is_err() {
                        // The gate's owner is gone: behave as an open gate from now on.
                        let event = self.inner.recv().await;
                        if let Some(e) = &event { self.arrived(e); }
                        return event;
                    }
                    continue;
                }
                Some(bytes) = self.raw.recv() => {
                    self.raw_pending.fetch_sub(1, Ordering::Relaxed);
                    Some(TransportEvent::Frame(bytes))
                }
                event = self.inner.recv() => event,
            };
            if let Some(e) = &event {
                self.arrived(e);
            }
            return event;
        }
    }

    fn try_recv(&mut self) -> Option<TransportEvent> {
        if !*self.gate.borrow() {
            return None;
        }
        let event = match self.raw.try_recv() {
            Ok(bytes) => {
                self.raw_pending.fetch_sub(1, Ordering::Relaxed);
                Some(TransportEvent::Frame(bytes))
            }
            Err(_) => self.inner.try_recv(),
        };
        if let Some(e) = &event {
            self.arrived(e);
        }
        event
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        self.inner.connected()
    }

    async fn shutdown(&mut self, linger: Duration) {
        self.inner.shutdown(linger).await;
    }
}
