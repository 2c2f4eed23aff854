//! The receiving half of a node: the reader takes frames off the transport, and decodes
//! and checks them, in its own task.
//!
//! Whoever receives — the reader polling its [`Inbox`], or the node's task — takes what the
//! transport has ready under one lock, the *receive lock*, and runs it through the router
//! (authentication, incarnation and sequence checks, counting, acknowledgements) under the
//! router's lock, in batches. What passes goes into the inbox's queue, in order; the reader
//! takes that queue whole into a batch of its own and hands it out without locking.
//!
//! Who waits for the transport: a reader with nothing to read *parks* and waits on the
//! transport itself, so that a frame wakes the reader directly, with no task between.
//! While the reader is busy elsewhere (or not reading at all), the node's task takes
//! frames, up to the inbox's bounds, so that acknowledgements from peers get through.
//!
//! The node's task waits on the transport too, always (a libzmq connection left unread can
//! abort the process: see `Driver`; and a reader may stop polling at any time). Woken while
//! a reader is parked, it yields once to let the reader take what arrived, then takes what
//! is left, and wakes the reader if it took something: on a transport that keeps only one
//! waker (the latest poll's), that is how the reader learns of a frame, one hop later.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::sync::{Notify, mpsc};

use crate::envelope::{Envelope, Pid};
use crate::outbox::Sending;
use crate::router::Arrival;
use crate::server::Message;
use crate::stats::DropReason;
use crate::transport::TransportEvent;

/// Frames taken from the transport at a time.
const BATCH: usize = 256;

/// The receiving state of a node, shared by its [`Inbox`], its outboxes (messages to the
/// node itself) and its task.
pub(crate) struct Receiving<M> {
    state: Mutex<RecvState<M>>,
    /// Wakes a parked reader: another task put envelopes in the queue, or the node stopped.
    pub(crate) arrived: Notify,
    /// Wakes the node's task when it waits for room in the inbox (see
    /// [`Receiving::task_waits_room`]): the reader made room, or closed or dropped the
    /// inbox (what arrives is then taken and dropped).
    pub(crate) room: Notify,
    /// The inbox's bounds: envelopes, and bytes of the frames they came in.
    capacity: usize,
    bytes_max: usize,
    /// `Some((frames, bytes))` on transports with acknowledgements: the backlog's bound.
    backlog_max: Option<(usize, usize)>,
    /// Envelopes (and their bytes) in the reader's batch, not handed out yet: they still
    /// fill the inbox. Counted down as the reader hands them out, without the lock.
    lent: AtomicUsize,
    lent_bytes: AtomicUsize,
    /// The node's task waits for room in the inbox (it was full): the reader that makes
    /// some wakes it.
    task_waits_room: AtomicBool,
}

/// Behind the receive lock.
pub(crate) struct RecvState<M> {
    /// Delivered (counted, and settled for acknowledgements), for the reader, in order,
    /// each with the bytes it is charged against the inbox's bound.
    ready: VecDeque<(Envelope<M>, usize)>,
    ready_bytes: usize,
    /// Accepted envelopes the inbox has had no room for yet, in arrival order.
    backlog: VecDeque<(Envelope<M>, Arrival)>,
    backlog_bytes: usize,
    /// Events taken from the transport in one go (kept for its allocation).
    events: Vec<TransportEvent>,
    /// A reader is waiting on the transport (see the module's docs).
    pub(crate) parked: bool,
    /// The inbox was closed or dropped: what arrives is dropped as `unreachable`.
    closed: bool,
    /// The node has stopped: nothing more will arrive.
    stopped: bool,
    /// The transport said it will never be readable again.
    pub(crate) transport_gone: bool,
}

impl<M> Receiving<M> {
    pub(crate) fn new(
        capacity: usize,
        bytes_max: usize,
        backlog_max: Option<(usize, usize)>,
    ) -> Self {
        Self {
            state: Mutex::new(RecvState {
                ready: VecDeque::new(),
                ready_bytes: 0,
                backlog: VecDeque::new(),
                backlog_bytes: 0,
                events: Vec::new(),
                parked: false,
                closed: false,
                stopped: false,
                transport_gone: false,
            }),
            arrived: Notify::new(),
            room: Notify::new(),
            capacity,
            bytes_max,
            backlog_max,
            lent: AtomicUsize::new(0),
            lent_bytes: AtomicUsize::new(0),
            task_waits_room: AtomicBool::new(false),
        }
    }

    /// Envelopes in the inbox: the queue and the reader's batch.
    fn held(&self, st: &RecvState<M>) -> usize {
        st.ready.len() + self.lent.load(Ordering::Acquire)
    }

    /// Envelopes held for the reader, and frames in the backlog behind them.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let st = self.lock();
        (self.held(&st), st.backlog.len())
    }

    /// Records whether the node's task now waits for room in the inbox.
    pub(crate) fn set_task_waits(&self, waits: bool) {
        self.task_waits_room.store(waits, Ordering::Release);
    }

    /// Wakes the node's task if it waits for room.
    fn room_made(&self) {
        if self.task_waits_room.swap(false, Ordering::AcqRel) {
            self.room.notify_one();
        }
    }

    /// The receive lock. Held only for work that never waits.
    pub(crate) fn lock(&self) -> MutexGuard<'_, RecvState<M>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether one more envelope of `len` bytes fits in the inbox now (one always fits in
    /// an empty inbox, so that no frame the transport accepted is stuck).
    fn has_room(&self, st: &RecvState<M>, len: usize) -> bool {
        let held = self.held(st);
        let bytes = st.ready_bytes + self.lent_bytes.load(Ordering::Acquire);
        held == 0 || (held < self.capacity && bytes + len <= self.bytes_max)
    }

    /// Whether the node's task should take frames off the transport now: always on
    /// transports with acknowledgements (they must get through, and what exceeds the
    /// backlog's bound is dropped), always once the inbox is closed (to drop what arrives),
    /// otherwise only while the inbox has room, so that a full inbox leaves frames in the
    /// transport and its senders wait.
    pub(crate) fn may_take(&self, st: &RecvState<M>) -> bool {
        st.closed
            || self.backlog_max.is_some()
            || (st.backlog.is_empty() && self.held(st) < self.capacity)
    }
}

impl<M: Message> Sending<M> {
    /// Takes what the transport has ready (up to a batch, and without acknowledgements up
    /// to the inbox's room), checks it through the router, and moves what has room into
    /// the inbox's queue; acknowledges what reached its end. Returns whether the queue
    /// gained envelopes.
    pub(crate) fn pump(&self, st: &mut RecvState<M>) -> bool {
        if st.stopped {
            return false;
        }
        let recv = &self.recv;
        let room = if st.closed || recv.backlog_max.is_some() {
            BATCH
        } else if st.backlog.is_empty() {
            recv.capacity.saturating_sub(recv.held(st)).min(BATCH)
        } else {
            0
        };
        if room > 0 && !st.transport_gone {
            self.transport.try_recv_many(&mut st.events, room);
        }
        if st.events.is_empty() && st.backlog.is_empty() {
            return false;
        }
        // tokio's clock, so that a simulation with a paused clock stays deterministic.
        let now = tokio::time::Instant::now();
        let before = st.ready.len();
        let credit = {
            let mut state = self.lock();
            let router = state.router();
            let mut events = std::mem::take(&mut st.events);
            for event in events.drain(..) {
                match event {
                    TransportEvent::Frame(bytes) => {
                        let Some((env, arrival)) = router.incoming_arrival::<M>(bytes, now) else {
                            continue;
                        };
                        let reason = if st.closed {
                            // Nobody will read it.
                            Some(DropReason::Unreachable)
                        } else if recv.backlog_max.is_some_and(|(frames, bytes)| {
                            st.backlog.len() >= frames || st.backlog_bytes + arrival.len > bytes
                        }) {
                            // Beyond every honest sender's window: a sender that ignores
                            // acknowledgements.
                            Some(DropReason::Backpressure)
                        } else {
                            None
                        };
                        if let Some(reason) = reason {
                            self.stats.dropped_from(Some(env.pid), reason);
                            router.settled(&arrival);
                            continue;
                        }
                        st.backlog_bytes += arrival.len;
                        st.backlog.push_back((env, arrival));
                    }
                    TransportEvent::Dropped {
                        peer,
                        reason,
                        count,
                    } => router.discarded(peer, reason, count),
                }
            }
            st.events = events;
            if st.closed {
                for (env, arrival) in st.backlog.drain(..) {
                    self.stats
                        .dropped_from(Some(env.pid), DropReason::Unreachable);
                    router.settled(&arrival);
                }
                st.backlog_bytes = 0;
            }
            while let Some((_, arrival)) = st.backlog.front() {
                if !recv.has_room(st, arrival.len) {
                    break;
                }
                let Some((env, arrival)) = st.backlog.pop_front() else {
                    break;
                };
                st.backlog_bytes -= arrival.len;
                st.ready_bytes += arrival.len;
                // Counted before the reader can see it.
                self.stats.delivered(env.pid);
                st.ready.push_back((env, arrival.len));
                router.settled(&arrival);
            }
            let transport = &self.transport;
            router.acknowledge(false, |to, frame| transport.send(to, frame));
            router.greet(false, |to, frame| transport.send(to, frame));
            router.flush_membership(&**transport);
            router.take_credit()
        };
        if credit {
            self.credit.notify_waiters();
        }
        st.ready.len() > before
    }

    /// [`Sending::pump`] for the node's task: a reader parked meanwhile is woken.
    pub(crate) fn pump_and_wake(&self) {
        let mut st = self.recv.lock();
        let wake = self.pump(&mut st) && st.parked;
        drop(st);
        if wake {
            self.recv.arrived.notify_one();
        }
    }

    /// The node's task's wait for the transport, polled under the receive lock (as a
    /// parked reader's is).
    pub(crate) fn poll_readable<'a>(
        &'a self,
        readable: &mut Option<Pin<Box<dyn Future<Output = bool> + Send + 'a>>>,
        cx: &mut Context<'_>,
    ) -> Poll<bool> {
        let st = self.recv.lock();
        if st.transport_gone {
            *readable = None;
            return Poll::Pending;
        }
        let future = readable.get_or_insert_with(|| self.transport.readable());
        let ready = future.as_mut().poll(cx);
        if ready.is_ready() {
            *readable = None;
        }
        drop(st);
        ready
    }

    /// The node's task, woken by the transport: takes what arrived, unless a parked reader
    /// (woken too, by the same transport or by this task) takes it first.
    pub(crate) async fn pump_after_reader(&self) {
        if self.recv.lock().parked {
            // The reader's turn first: it is woken by the transport as well (or, on a
            // transport that keeps one waker, by this task below).
            tokio::task::yield_now().await;
        }
        self.pump_and_wake();
    }

    /// Puts a message this node sent itself into its inbox, never waiting (a full inbox
    /// is `backpressure`). It weighs nothing against the inbox's byte bound: it was never
    /// serialized. Returns the reason it was dropped, if it was.
    pub(crate) fn deliver_to_self(&self, env: Envelope<M>) -> Result<(), DropReason> {
        let mut st = self.recv.lock();
        let reason = if st.closed || st.stopped {
            DropReason::Unreachable
        } else if self.recv.held(&st) >= self.recv.capacity {
            DropReason::Backpressure
        } else {
            // Counted before the reader can see it.
            self.stats.delivered(self.pid);
            st.ready.push_back((env, 0));
            let wake = st.parked;
            drop(st);
            if wake {
                self.recv.arrived.notify_one();
            }
            return Ok(());
        };
        drop(st);
        self.stats.dropped_from(Some(self.pid), reason);
        Err(reason)
    }

    /// The node stops: what the inbox has no room for is dropped (nobody will read it),
    /// and a parked reader learns that nothing more will come.
    pub(crate) fn stop_receiving(&self) {
        let mut st = self.recv.lock();
        if st.stopped {
            return;
        }
        st.stopped = true;
        {
            // Settled and acknowledged, so that their senders count them once: dropped
            // here, not also unconfirmed there.
            let mut state = self.lock();
            let router = state.router();
            for (env, arrival) in st.backlog.drain(..) {
                self.stats
                    .dropped_from(Some(env.pid), DropReason::Unreachable);
                router.settled(&arrival);
            }
            let transport = &self.transport;
            router.acknowledge(true, |to, frame| transport.send(to, frame));
        }
        st.backlog_bytes = 0;
        drop(st);
        self.recv.arrived.notify_one();
    }

    /// A parked reader's wait: for the transport (unless it is gone), or for another task
    /// to put envelopes in the queue.
    async fn wait_for_frames(&self, transport: bool) -> bool {
        if transport {
            tokio::select! {
                biased;
                () = self.recv.arrived.notified() => true,
                open = self.transport.readable() => open,
            }
        } else {
            self.recv.arrived.notified().await;
            true
        }
    }
}

/// A parked reader's wait (see [`Sending::wait_for_frames`]).
type Wait = Pin<Box<dyn Future<Output = bool> + Send>>;

/// The receiving half of a node: envelopes from peers (and from the node to itself), `pid`
/// = the sender. `recv` is cancel-safe.
///
/// Receiving decodes in the reader's own task: a frame goes from the transport through the
/// node's checks (authentication, incarnation, sequence, counting) to the reader, with no
/// task in between, in batches.
///
/// Bounded twice: at most `inbox_capacity` envelopes, and at most `inbox_bytes` bytes of the
/// frames they arrived in (sends to the node itself are not serialized and weigh nothing).
/// A full inbox stops the node from taking frames off the transport, so that the senders'
/// queues fill and their sends wait (up to their `send_timeout`): flow control, not loss.
/// A message this node sends itself that finds the inbox full is dropped as `backpressure`.
pub struct Inbox<M> {
    node: Arc<Sending<M>>,
    /// Behind a mutex only so that the inbox is `Sync` whatever `M` is: reached through
    /// `&mut self` (`get_mut`) to receive, locked only by `&self` methods (`len`, `bytes`).
    local: Mutex<Local<M>>,
    runtime: tokio::runtime::Handle,
}

/// The reader's own part of the inbox.
struct Local<M> {
    /// The batch taken from the node's queue, handed out without locking.
    batch: VecDeque<(Envelope<M>, usize)>,
    /// Bytes of the frames in `batch`.
    bytes: usize,
    /// A parked reader's wait.
    wait: Option<Wait>,
}

impl<M> Local<M> {
    /// Hands out the batch's next envelope, freeing its room in the inbox.
    fn pop(&mut self, recv: &Receiving<M>) -> Option<Envelope<M>> {
        let (env, size) = self.batch.pop_front()?;
        self.bytes -= size;
        recv.lent.fetch_sub(1, Ordering::AcqRel);
        if size > 0 {
            recv.lent_bytes.fetch_sub(size, Ordering::AcqRel);
        }
        if self.batch.is_empty() {
            recv.room_made();
        }
        Some(env)
    }
}

impl<M> std::fmt::Debug for Inbox<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("len", &self.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl<M> Inbox<M> {
    pub(crate) fn new(node: Arc<Sending<M>>, runtime: tokio::runtime::Handle) -> Self {
        Self {
            node,
            local: Mutex::new(Local {
                batch: VecDeque::new(),
                bytes: 0,
                wait: None,
            }),
            runtime,
        }
    }

    fn local(&mut self) -> &mut Local<M> {
        self.local.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    fn local_ref(&self) -> MutexGuard<'_, Local<M>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Envelopes waiting.
    pub fn len(&self) -> usize {
        self.local_ref().batch.len() + self.node.recv.lock().ready.len()
    }

    /// Whether no envelope is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the frames waiting (see the type's docs).
    pub fn bytes(&self) -> usize {
        self.local_ref().bytes + self.node.recv.lock().ready_bytes
    }

    /// Stops taking envelopes: later arrivals are dropped (`unreachable`); what is
    /// waiting can still be received, then receiving ends.
    pub fn close(&mut self) {
        self.local().wait = None;
        let mut st = self.node.recv.lock();
        st.closed = true;
        st.parked = false;
        drop(st);
        self.node.recv.room.notify_one();
    }
}

/// What one visit to the node's queue found.
enum Took {
    /// The batch holds envelopes.
    Some,
    /// Nothing now.
    Nothing,
    /// Nothing, ever again: the node stopped or the inbox was closed, and all was read.
    End,
}

impl<M: Message> Inbox<M> {
    /// Takes the node's queue into the (empty) batch, after taking what the transport has
    /// ready. The receive lock stays held when nothing was there, for parking.
    fn take<'a>(
        node: &'a Sending<M>,
        local: &mut Local<M>,
    ) -> (Took, MutexGuard<'a, RecvState<M>>) {
        let mut st = node.recv.lock();
        node.recv.room_made();
        node.pump(&mut st);
        if st.ready.is_empty() {
            let took = if st.stopped || st.closed {
                Took::End
            } else {
                Took::Nothing
            };
            return (took, st);
        }
        std::mem::swap(&mut local.batch, &mut st.ready);
        local.bytes = std::mem::take(&mut st.ready_bytes);
        // The batch was empty: nothing was lent before.
        node.recv.lent.store(local.batch.len(), Ordering::Release);
        node.recv.lent_bytes.store(local.bytes, Ordering::Release);
        st.parked = false;
        (Took::Some, st)
    }

    /// Fills the (empty) batch: `Ready(true)` once it holds envelopes, `Ready(false)` at
    /// the end, `Pending` parked (see the module's docs).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let node = &self.node;
        let local = self.local.get_mut().unwrap_or_else(|e| e.into_inner());
        loop {
            let (took, mut st) = Self::take(node, local);
            match took {
                Took::Some => {
                    drop(st);
                    local.wait = None;
                    return Poll::Ready(true);
                }
                Took::End => {
                    drop(st);
                    local.wait = None;
                    return Poll::Ready(false);
                }
                Took::Nothing => {}
            }
            st.parked = true;
            let transport = !st.transport_gone;
            let future = local.wait.get_or_insert_with(|| {
                let node = Arc::clone(node);
                Box::pin(async move { node.wait_for_frames(transport).await })
            });
            // Under the receive lock: the node's task polls the transport only under it,
            // and not while this reader is parked, so this reader's waker is the one kept.
            match future.as_mut().poll(cx) {
                Poll::Ready(open) => {
                    if !open {
                        st.transport_gone = true;
                    }
                    drop(st);
                    local.wait = None;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The next envelope; `None` once the node has stopped (or the inbox was closed) and
    /// everything waiting was received. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Envelope<M>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next envelope: `Ready(None)` at the end (see [`Inbox::recv`]). The
    /// poll form of [`Inbox::recv`], behind the inbox's [`Stream`](futures_core::Stream)
    /// implementation.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Envelope<M>>> {
        loop {
            let local = self.local.get_mut().unwrap_or_else(|e| e.into_inner());
            if let Some(env) = local.pop(&self.node.recv) {
                return Poll::Ready(Some(env));
            }
            match self.poll_fill(cx) {
                Poll::Ready(true) => {}
                Poll::Ready(false) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The next envelope if one is there now (taking what the transport has ready).
    pub fn try_recv(&mut self) -> Result<Envelope<M>, mpsc::error::TryRecvError> {
        let node = &self.node;
        let local = self.local.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(env) = local.pop(&node.recv) {
            return Ok(env);
        }
        let (took, st) = Self::take(node, local);
        drop(st);
        match took {
            Took::Some => local
                .pop(&node.recv)
                .ok_or(mpsc::error::TryRecvError::Empty),
            Took::Nothing => Err(mpsc::error::TryRecvError::Empty),
            Took::End => Err(mpsc::error::TryRecvError::Disconnected),
        }
    }

    /// Waits for the next envelope, blocking the thread: for code outside the runtime.
    /// Panics if called inside an asynchronous context (as tokio's `blocking_recv`).
    pub fn blocking_recv(&mut self) -> Option<Envelope<M>> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.recv())
    }

    /// Appends up to `limit` envelopes to `buffer`, waiting for at least one; returns how
    /// many (0 at the end, or if `limit` is 0). Cancel-safe.
    pub async fn recv_many(&mut self, buffer: &mut Vec<Envelope<M>>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        std::future::poll_fn(|cx| {
            if self.local().batch.is_empty() {
                match self.poll_fill(cx) {
                    Poll::Ready(true) => {}
                    Poll::Ready(false) => return Poll::Ready(0),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let local = self.local.get_mut().unwrap_or_else(|e| e.into_inner());
            let n = limit.min(local.batch.len());
            buffer.reserve(n);
            for _ in 0..n {
                if let Some(env) = local.pop(&self.node.recv) {
                    buffer.push(env);
                }
            }
            Poll::Ready(n)
        })
        .await
    }

    /// The pid of the node this inbox receives for.
    pub fn pid(&self) -> Pid {
        self.node.pid
    }
}

impl<M> Drop for Inbox<M> {
    fn drop(&mut self) {
        let mut st = self.node.recv.lock();
        st.closed = true;
        st.parked = false;
        // Delivered already; nobody will read them.
        st.ready.clear();
        st.ready_bytes = 0;
        self.node.recv.lent.store(0, Ordering::Release);
        self.node.recv.lent_bytes.store(0, Ordering::Release);
        drop(st);
        // The node's task takes what arrives from now on, and drops it.
        self.node.recv.room.notify_one();
    }
}

// Nothing in an inbox is ever pinned in place (no field is projected), whatever `M` is.
impl<M> Unpin for Inbox<M> {}

/// The inbox as a stream of envelopes, ending at the end of [`Inbox::recv`]: `while let
/// Some(env) = inbox.next().await` (with `futures::StreamExt`), or any stream combinator.
/// Each poll is [`Inbox::poll_recv`]; dropping a `next()` future loses nothing.
impl<M: Message> futures_core::Stream for Inbox<M> {
    type Item = Envelope<M>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Envelope<M>>> {
        self.get_mut().poll_recv(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.local_ref().batch.len(), None)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::sync::watch;

    use super::*;
    use crate::transport::{PeerSet, Transport};
    use crate::wire::{Destination, Header};
    use crate::{Config, Server};

    /// A transport fed by the test: frames pushed into it are readable at node 1, and it
    /// notes which task took each batch (`None`: the test's own, outside any spawned task).
    struct Feed {
        frames: std::sync::Mutex<VecDeque<Bytes>>,
        notify: Notify,
        confirming: bool,
        takers: std::sync::Mutex<Vec<Option<tokio::task::Id>>>,
        connected: watch::Receiver<PeerSet>,
        _keep: watch::Sender<PeerSet>,
    }

    #[derive(Clone)]
    struct FeedHandle(Arc<Feed>);

    impl FeedHandle {
        fn new(confirming: bool) -> Self {
            let (tx, rx) = watch::channel([2].into());
            Self(Arc::new(Feed {
                frames: std::sync::Mutex::new(VecDeque::new()),
                notify: Notify::new(),
                confirming,
                takers: std::sync::Mutex::new(Vec::new()),
                connected: rx,
                _keep: tx,
            }))
        }

        /// Node 2's message `seq` (incarnation 1) arrives.
        fn push(&self, seq: u64) {
            let header = Header {
                sender: 2,
                to: 1,
                destination: Destination::Peer,
                incarnation: 1,
                seq,
                msg_id: seq as i64,
                ..Header::default()
            };
            let frame = crate::wire::encode(&header, &(seq as u32)).unwrap();
            self.0.frames.lock().unwrap().push_back(frame);
            self.0.notify.notify_waiters();
        }

        fn takers(&self) -> Vec<Option<tokio::task::Id>> {
            self.0.takers.lock().unwrap().clone()
        }
    }

    #[async_trait::async_trait]
    impl Transport for FeedHandle {
        fn send(&self, _to: Pid, _frame: Bytes) -> Result<(), DropReason> {
            Ok(())
        }
        async fn readable(&self) -> bool {
            loop {
                let notified = self.0.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if !self.0.frames.lock().unwrap().is_empty() {
                    return true;
                }
                notified.await;
            }
        }
        fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
            let mut frames = self.0.frames.lock().unwrap();
            let n = frames.len().min(max);
            if n > 0 {
                self.0.takers.lock().unwrap().push(tokio::task::try_id());
            }
            events.extend(frames.drain(..n).map(TransportEvent::Frame));
            n
        }
        fn connected(&self) -> watch::Receiver<PeerSet> {
            self.0.connected.clone()
        }
        async fn shutdown(&self, _linger: Duration) {}
        fn may_lose_accepted(&self) -> bool {
            self.0.confirming
        }
        fn incarnation(&self) -> Option<crate::wire::Incarnation> {
            Some(1)
        }
    }

    fn node(feed: &FeedHandle) -> Server<u32> {
        let config = Config::local(2, 7100).unwrap();
        Server::with_transport(1, config, feed.clone()).unwrap()
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "waited for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// No hop on receive: a frame that arrives while the reader waits is taken off the
    /// transport by the reader's own task, not by the node's.
    #[tokio::test]
    async fn a_waiting_reader_takes_frames_off_the_transport_itself() {
        for confirming in [false, true] {
            let feed = FeedHandle::new(confirming);
            let mut s = node(&feed);
            for seq in 1..=3 {
                let pusher = feed.clone();
                let push = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    pusher.push(seq);
                });
                let env = tokio::time::timeout(Duration::from_secs(20), s.inbox().recv())
                    .await
                    .expect("delivered")
                    .unwrap();
                assert_eq!((env.pid, env.msg), (2, seq as u32));
                push.await.unwrap();
            }
            assert_eq!(
                feed.takers(),
                [None, None, None],
                "confirming: {confirming}: the frames were taken by the test's task (None)"
            );
            assert_eq!(s.stats().delivered, 3);
            s.shutdown().await;
        }
    }

    /// With acknowledgements, a reader that stopped waiting (its `recv` future dropped
    /// while parked) does not keep the node's task off the transport: within a tick, the
    /// node takes what arrives (acknowledging it, and reading its sockets), and the reader
    /// finds it later.
    #[tokio::test]
    async fn a_reader_that_went_away_leaves_the_transport_to_the_node() {
        let feed = FeedHandle::new(true);
        let mut s = node(&feed);
        let waited = tokio::time::timeout(Duration::from_millis(10), s.inbox().recv()).await;
        assert!(waited.is_err(), "nothing to receive yet");
        for seq in 1..=5 {
            feed.push(seq);
        }
        until("the node's task to take the frames", || {
            s.stats().delivered == 5
        })
        .await;
        assert!(
            feed.takers().iter().all(Option::is_some),
            "{:?}",
            feed.takers()
        );
        let mut got = Vec::new();
        while got.len() < 5 {
            s.inbox().recv_many(&mut got, 10).await;
        }
        assert_eq!(
            got.iter().map(|e| e.msg).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        s.shutdown().await;
    }

    /// Closing an inbox whose reader had parked: what arrives next is taken and dropped as
    /// `unreachable`, with or without acknowledgements; what was waiting is still read.
    #[tokio::test]
    async fn a_closed_inbox_drops_what_arrives_even_after_its_reader_parked() {
        for confirming in [false, true] {
            let feed = FeedHandle::new(confirming);
            let mut s = node(&feed);
            s.outbox()
                .send(crate::Envelope::new(1, 9, 9))
                .await
                .unwrap();
            assert_eq!(s.inbox().recv().await.map(|e| e.msg), Some(9));
            let waited = tokio::time::timeout(Duration::from_millis(10), s.inbox().recv()).await;
            assert!(waited.is_err());
            s.outbox()
                .send(crate::Envelope::new(1, 10, 10))
                .await
                .unwrap();
            s.inbox().close();
            for seq in 1..=4 {
                feed.push(seq);
            }
            until("the frames to be dropped", || {
                s.stats().dropped_incoming.get(DropReason::Unreachable) == 4
            })
            .await;
            assert_eq!(s.inbox().recv().await.map(|e| e.msg), Some(10));
            assert!(s.inbox().recv().await.is_none(), "closed and read");
            s.shutdown().await;
        }
    }

    /// `blocking_recv`, from a thread outside the runtime, receives what arrives from the
    /// transport and ends once the node stops.
    #[test]
    fn blocking_recv_works_outside_the_runtime() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let feed = FeedHandle::new(true);
        let s = rt.block_on(async { node(&feed) });
        let (_outbox, mut inbox, handle) = s.into_split();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Some(env) = inbox.blocking_recv() {
                got.push(env.msg);
            }
            got
        });
        for seq in 1..=3 {
            feed.push(seq);
        }
        rt.block_on(async {
            until("the reader to take the frames", || {
                handle.stats().delivered == 3
            })
            .await;
            handle.shutdown().await;
        });
        assert_eq!(reader.join().unwrap(), [1, 2, 3]);
    }

    /// Without acknowledgements too, the node's task takes frames while the reader is busy
    /// elsewhere, after the reader parked once, or after a `recv` cancelled while parked
    /// (found by review: the task kept off the transport for good).
    #[tokio::test]
    async fn the_node_takes_frames_while_the_reader_is_busy_or_gone() {
        for cancelled in [false, true] {
            let feed = FeedHandle::new(false);
            let mut s = node(&feed);
            if cancelled {
                let waited =
                    tokio::time::timeout(Duration::from_millis(10), s.inbox().recv()).await;
                assert!(waited.is_err());
            } else {
                let pusher = feed.clone();
                let push = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    pusher.push(1);
                });
                assert_eq!(s.inbox().recv().await.map(|e| e.msg), Some(1));
                push.await.unwrap();
            }
            let first = if cancelled { 1 } else { 2 };
            for seq in first..=6 {
                feed.push(seq);
            }
            until("the node's task to take the frames", || {
                s.stats().delivered == 6
            })
            .await;
            s.shutdown().await;
        }
    }

    /// The inbox ends (`None`) when the node's task is gone without its clean-up (the
    /// runtime shut down under a running node), as the channel it replaced did.
    #[test]
    fn the_inbox_ends_when_the_runtime_is_gone() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let feed = FeedHandle::new(false);
        let s = rt.block_on(async { node(&feed) });
        let (outbox, mut inbox, handle) = s.into_split();
        drop(rt);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let got = inbox.blocking_recv().map(|e| e.msg);
            let _ = tx.send(got);
            drop(handle);
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(None));
        assert!(outbox.is_closed());
    }

    /// Room is given back as the reader hands envelopes out, not when it next comes back:
    /// a message to itself right after the inbox was read empty is delivered.
    #[tokio::test]
    async fn room_comes_back_as_envelopes_are_received() {
        let feed = FeedHandle::new(false);
        let options = crate::Options {
            inbox_capacity: 4,
            ..crate::Options::default()
        };
        let config = Config::local(2, 7100)
            .unwrap()
            .with_options(options)
            .unwrap();
        let mut s = Server::<u32>::with_transport(1, config, feed.clone()).unwrap();
        let out = s.outbox();
        for i in 0..4 {
            assert!(
                out.send(crate::Envelope::new(1, i, i as u32))
                    .await
                    .unwrap()
                    .is_sent()
            );
        }
        let full = out.send(crate::Envelope::new(1, 8, 8)).await.unwrap();
        assert_eq!(full, crate::SendOutcome::Dropped(DropReason::Backpressure));
        for _ in 0..4 {
            s.inbox().recv().await.unwrap();
        }
        assert_eq!(s.inbox().len(), 0);
        let outcome = out.send(crate::Envelope::new(1, 9, 9)).await.unwrap();
        assert!(outcome.is_sent(), "{outcome:?}");
        s.shutdown().await;
    }

    /// The inbox is `Send` and `Sync` whatever the message type is (as the channel it
    /// replaced): a message type that is not `Sync` does not make the server unshareable.
    #[test]
    fn the_inbox_is_send_and_sync_for_any_message() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Inbox<std::cell::Cell<u8>>>();
        shareable::<Server<std::cell::Cell<u8>>>();
    }
}
