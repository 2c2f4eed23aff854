//! A transport wrapper that records what crosses the server/transport boundary, holds
//! arrivals behind a gate (for exact simulated runs), and lets the harness inject raw bytes.

use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cluster_core::wire::{self, Frame};
use cluster_core::{
    DropCounts, DropReason, Incarnation, MsgId, PeerSet, Pid, ServerMonitor, Transport,
    TransportError, TransportEvent,
};
use tokio::sync::{mpsc, watch};

use crate::history::{Event, History};

/// Opens and closes the arrival gate of every probe of a cluster.
///
/// One watch channel per probe, set in the order the probes subscribed, and only when the
/// gate changes: a watch channel wakes its many waiters in an order tokio draws at random
/// (it spreads them over shards), and the order probes wake in is the order nodes take
/// their arrivals in — which must be a function of the seed.
#[derive(Debug)]
pub(crate) struct Gate {
    open: std::sync::Mutex<(bool, Vec<watch::Sender<bool>>)>,
}

impl Gate {
    pub(crate) fn new(open: bool) -> Self {
        Self {
            open: std::sync::Mutex::new((open, Vec::new())),
        }
    }

    pub(crate) fn set(&self, open: bool) {
        let mut gate = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if gate.0 == open {
            return;
        }
        gate.0 = open;
        gate.1.retain(|probe| !probe.is_closed());
        for probe in &gate.1 {
            probe.send_replace(open);
        }
    }

    fn subscribe(&self) -> watch::Receiver<bool> {
        let mut gate = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (probe, rx) = watch::channel(gate.0);
        gate.1.push(probe);
        rx
    }
}

/// Frames accepted by a transport and not yet arrived, by `(from, to, msg_id)`: what a
/// fault on their link discards, in simulation.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    frames: Mutex<Frames>,
}

/// `(from, to, msg_id)` → (sender's incarnation, copies in flight).
type Frames = BTreeMap<(Pid, Pid, MsgId), (Incarnation, u32)>;

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Frames> {
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn accepted(&self, from: Pid, incarnation: Incarnation, to: Pid, msg_id: MsgId) {
        self.lock()
            .entry((from, to, msg_id))
            .or_insert((incarnation, 0))
            .1 += 1;
    }

    fn arrived(&self, from: Pid, to: Pid, msg_id: MsgId) {
        let mut frames = self.lock();
        if let Some(entry) = frames.get_mut(&(from, to, msg_id)) {
            entry.1 -= 1;
            if entry.1 == 0 {
                frames.remove(&(from, to, msg_id));
            }
        }
    }

    /// Removes and returns `(from, incarnation, to, msg_id)` of every frame on a link that
    /// `doomed` selects.
    pub(crate) fn take(
        &self,
        doomed: impl Fn(Pid, Pid) -> bool,
    ) -> Vec<(Pid, Incarnation, Pid, MsgId)> {
        let mut frames = self.lock();
        let mut out = Vec::new();
        frames.retain(|&(from, to, msg_id), &mut (incarnation, count)| {
            if doomed(from, to) {
                for _ in 0..count {
                    out.push((from, incarnation, to, msg_id));
                }
                false
            } else {
                true
            }
        });
        out
    }
}

/// What the probe needs to tell, after the server handled an arrival, whether it was
/// delivered or dropped, and why.
/// Counted per sender where the server can tell the sender (so that the node's own sends
/// to itself, routed meanwhile, are not mistaken for it), and in total for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    /// Delivered from the frame's sender.
    delivered: u64,
    /// Dropped on arrival, from the frame's sender.
    dropped_from: DropCounts,
    /// Dropped on arrival, from anyone (frames whose sender the server could not tell).
    dropped_incoming: DropCounts,
}

/// Wraps the transport under test, between it and the server. It never changes what passes
/// through: it only records it, and (when the gate is closed) waits before pulling arrivals.
pub(crate) struct Probe {
    pid: Pid,
    incarnation: Incarnation,
    inner: Box<dyn Transport>,
    history: History,
    /// Cloned by each `readable`, which needs a receiver of its own to wait on; this one is
    /// only read.
    gate: watch::Receiver<bool>,
    /// Set once the gate's owner is gone: the gate then stays open.
    gate_gone: AtomicBool,
    /// Raw frames, in the order they reach the server.
    receiving: Mutex<Receiving>,
    /// Raw frames injected and not yet handed up, over the whole cluster.
    raw_pending: Arc<AtomicUsize>,
    in_flight: Arc<InFlight>,
    /// The server's counters, once it is built.
    monitor: Arc<OnceLock<ServerMonitor>>,
    /// The last arrival handed up, and the server's counters just before it.
    unresolved: Mutex<Option<(Option<wire::Header>, Counters)>>,
}

/// The raw frames' side of the receiving half.
struct Receiving {
    raw: mpsc::UnboundedReceiver<Bytes>,
    /// Raw frames `readable` took from `raw` (a channel cannot be peeked at) and
    /// `try_recv_many` has not handed up yet: handed up before anything else.
    taken: VecDeque<Bytes>,
}

/// The wiring a probe shares with its cluster.
#[derive(Clone, Default)]
pub(crate) struct ProbeShared {
    pub(crate) raw_pending: Arc<AtomicUsize>,
    pub(crate) in_flight: Arc<InFlight>,
}

impl Probe {
    pub(crate) fn new(
        pid: Pid,
        incarnation: Incarnation,
        inner: Box<dyn Transport>,
        history: History,
        gate: &Gate,
        shared: &ProbeShared,
        monitor: Arc<OnceLock<ServerMonitor>>,
    ) -> (Self, mpsc::UnboundedSender<Bytes>) {
        let (raw_tx, raw) = mpsc::unbounded_channel();
        let probe = Self {
            pid,
            incarnation,
            inner,
            history,
            gate: gate.subscribe(),
            gate_gone: AtomicBool::new(false),
            receiving: Mutex::new(Receiving {
                raw,
                taken: VecDeque::new(),
            }),
            raw_pending: Arc::clone(&shared.raw_pending),
            in_flight: Arc::clone(&shared.in_flight),
            monitor,
            unresolved: Mutex::new(None),
        };
        (probe, raw_tx)
    }

    fn counters(&self, sender: Option<Pid>) -> Option<Counters> {
        let stats = self.monitor.get()?.stats();
        let peer = sender
            .filter(|s| *s != self.pid)
            .and_then(|s| stats.peers.get(&s).copied())
            .unwrap_or_default();
        Some(Counters {
            delivered: peer.delivered,
            dropped_from: peer.dropped_from,
            dropped_incoming: stats.dropped_incoming,
        })
    }

    fn receiving(&self) -> MutexGuard<'_, Receiving> {
        self.receiving.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unresolved(&self) -> MutexGuard<'_, Option<(Option<wire::Header>, Counters)>> {
        self.unresolved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether arrivals may be taken: the gate is open, or its owner is gone.
    fn gate_open(&self) -> bool {
        self.gate_gone.load(Ordering::Relaxed) || *self.gate.borrow()
    }

    /// Ready once a raw frame is waiting (taken from the channel and kept in order for
    /// `try_recv_many`); never ready once the channel is closed and empty.
    fn poll_raw(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut receiving = self.receiving();
        if !receiving.taken.is_empty() {
            return Poll::Ready(());
        }
        match receiving.raw.poll_recv(cx) {
            Poll::Ready(Some(bytes)) => {
                receiving.taken.push_back(bytes);
                Poll::Ready(())
            }
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    /// The next raw frame, if one is waiting.
    fn take_raw(&self, receiving: &mut Receiving) -> Option<Bytes> {
        let bytes = match receiving.taken.pop_front() {
            Some(bytes) => bytes,
            None => receiving.raw.try_recv().ok()?,
        };
        self.raw_pending.fetch_sub(1, Ordering::Relaxed);
        Some(bytes)
    }

    /// Called at the start of `readable`, `try_recv_many` and `shutdown`, by which time
    /// the server has handled the last arrival (it handles what it took before it asks
    /// again): see what became of it, and record it if it was dropped.
    fn resolve(&self) {
        // Taken out before the server's counters are read: no lock of the probe's is held
        // while the server's are taken.
        let Some((header, before)) = self.unresolved().take() else {
            return;
        };
        let Some(now) = self.counters(header.map(|h| h.sender)) else {
            return;
        };
        if now.delivered > before.delivered {
            return;
        }
        let grew = |after: &DropCounts, before: &DropCounts| {
            DropReason::ALL
                .into_iter()
                .find(|r| after.get(*r) > before.get(*r))
        };
        if let Some(reason) = grew(&now.dropped_from, &before.dropped_from)
            .or_else(|| grew(&now.dropped_incoming, &before.dropped_incoming))
        {
            self.history.push(Event::Dropped {
                at: self.pid,
                at_incarnation: self.incarnation,
                from: header.map(|h| h.sender),
                incarnation: header.map(|h| h.incarnation),
                msg_id: header.map(|h| h.msg_id),
                reason,
            });
        }
    }

    fn arrived(&self, event: &TransportEvent) {
        if !self.history.is_enabled() {
            return;
        }
        match event {
            TransportEvent::Frame(bytes) if crate::names::is_control(bytes) => {}
            TransportEvent::Frame(bytes) => {
                let header = Frame::decode(bytes.clone()).ok().map(|f| f.header);
                if let Some(h) = header {
                    self.in_flight.arrived(h.sender, self.pid, h.msg_id);
                }
                self.history.push(Event::Arrived {
                    at: self.pid,
                    at_incarnation: self.incarnation,
                    from: header.map(|h| h.sender),
                    incarnation: header.map(|h| h.incarnation),
                    msg_id: header.map(|h| h.msg_id),
                });
                let counters = self.counters(header.map(|h| h.sender));
                *self.unresolved() = counters.map(|c| (header, c));
            }
            TransportEvent::Dropped {
                peer,
                reason,
                count,
            } => {
                self.history.push(Event::TransportDropped {
                    at: self.pid,
                    peer: *peer,
                    reason: *reason,
                    count: *count,
                });
            }
        }
    }
}

#[async_trait]
impl Transport for Probe {
    fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        if crate::names::is_control(&frame) {
            return self.inner.send(to, frame);
        }
        let header = if self.history.is_enabled() {
            Frame::decode(frame.clone()).ok().map(|f| f.header)
        } else {
            None
        };
        let result = self.inner.send(to, frame);
        if let Some(h) = header {
            if result.is_ok() {
                self.in_flight
                    .accepted(h.sender, h.incarnation, to, h.msg_id);
            }
            self.history.push(Event::Routed {
                from: h.sender,
                incarnation: h.incarnation,
                to,
                msg_id: h.msg_id,
                refused: result.err(),
            });
        }
        result
    }

    fn send_many(&self, frames: &mut Vec<(Pid, Bytes)>, refused: &mut dyn FnMut(Pid, DropReason)) {
        if self.history.is_enabled() {
            // Frame by frame, to record each.
            for (to, frame) in frames.drain(..) {
                if let Err(reason) = self.send(to, frame) {
                    refused(to, reason);
                }
            }
        } else {
            self.inner.send_many(frames, refused);
        }
    }

    async fn writable(&self, to: Pid) {
        self.inner.writable(to).await;
    }

    async fn readable(&self) -> bool {
        self.resolve();
        // A receiver of this call's own, to wait on changes; what it has seen starts from
        // what it reads now.
        let mut gate = self.gate.clone();
        loop {
            let gone = self.gate_gone.load(Ordering::Relaxed);
            if !gone && !*gate.borrow_and_update() {
                // Closed: report nothing until it opens. If the gate's owner is gone, stay
                // open.
                if gate.wait_for(|open| *open).await.is_err() {
                    self.gate_gone.store(true, Ordering::Relaxed);
                }
                continue;
            }
            // Every branch is cancel-safe and takes nothing the server would not get:
            // `changed` on a watch channel, a raw frame kept for `try_recv_many`, and the
            // inner transport's `readable` by its contract. Biased, in the order the probe
            // hands arrivals up: raw frames first.
            tokio::select! {
                biased;
                changed = gate.changed(), if !gone => {
                    if changed.is_err() {
                        // The gate's owner is gone: behave as an open gate from now on.
                        self.gate_gone.store(true, Ordering::Relaxed);
                    }
                }
                () = poll_fn(|cx| self.poll_raw(cx)) => return true,
                ready = self.inner.readable() => return ready,
            }
        }
    }

    fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
        if max == 0 {
            return 0;
        }
        self.resolve();
        if !self.gate_open() {
            return 0;
        }
        if self.history.is_enabled() {
            // While recording, hand up arrivals up to the first whose fate the probe must
            // tell: the server has handled it by the time it asks again, which is when the
            // probe can see what became of it. No lock of the probe's is held while the
            // event is recorded (which reads the server's counters).
            let mut n = 0;
            while n < max && self.unresolved().is_none() {
                let raw = self.take_raw(&mut self.receiving());
                match raw {
                    Some(bytes) => events.push(TransportEvent::Frame(bytes)),
                    None => {
                        if self.inner.try_recv_many(events, 1) == 0 {
                            break;
                        }
                    }
                }
                if let Some(event) = events.last() {
                    self.arrived(event);
                }
                n += 1;
            }
            return n;
        }
        let mut receiving = self.receiving();
        let mut n = 0;
        while n < max {
            let Some(bytes) = self.take_raw(&mut receiving) else {
                break;
            };
            events.push(TransportEvent::Frame(bytes));
            n += 1;
        }
        drop(receiving);
        n + self.inner.try_recv_many(events, max - n)
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        self.inner.connected()
    }

    fn may_lose_accepted(&self) -> bool {
        self.inner.may_lose_accepted()
    }

    async fn shutdown(&self, linger: Duration) {
        self.resolve();
        self.inner.shutdown(linger).await;
    }

    // Membership at run time: the inner transport's to grant (the defaults would refuse).
    fn add_peer(&self, pid: Pid, address: &str) -> Result<(), TransportError> {
        self.inner.add_peer(pid, address)
    }

    fn remove_peer(&self, pid: Pid) -> Result<(), TransportError> {
        self.inner.remove_peer(pid)
    }
}
