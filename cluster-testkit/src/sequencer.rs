//! One order of work for a simulated node's server, so that a run is a function of its seed.
//!
//! The server's task waits on its outbox and on its transport in one `tokio::select!`,
//! which picks among ready branches at random; tokio seeds that choice per runtime, from
//! the OS, and only a `tokio_unstable` build can fix the seed. When both are ready — node
//! logic sent something while a frame arrived — routing and delivery would come in a
//! different order from one run of a seed to the next (and so would everything that
//! follows). [`OutboxFirst`] sits between the server and its transport and reports no
//! arrival while the outbox holds something: the outbox is then the only ready branch, and
//! the choice is no longer random. Used on current-thread runtimes only, where it is the
//! whole story: one thread, tasks in the order they were woken, a paused clock.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cluster_core::{DropReason, Incarnation, PeerSet, Pid, Transport, TransportEvent};
use tokio::sync::watch;

/// Whether a server's outbox holds something (or is closed, which its task also handles
/// before anything else). Set once the server exists.
pub(crate) type OutboxBusy = Arc<OnceLock<Box<dyn Fn() -> bool + Send + Sync>>>;

/// How many times in a row an arrival waits for the outbox. A sender that reserved room in
/// the outbox and has not used it yet looks the same as a message waiting there; it must
/// not keep arrivals out for ever (nor spin while the paused clock waits for idleness).
const MAX_DEFERRALS: u32 = 64;

/// A transport that reports arrivals ready only when its server's outbox is empty.
pub(crate) struct OutboxFirst {
    inner: Box<dyn Transport>,
    outbox_busy: OutboxBusy,
    /// Deferrals in a row. Only the receiving task touches it (one at a time, by the
    /// contract), so an atomic is enough to share the transport.
    deferrals: AtomicU32,
}

impl OutboxFirst {
    pub(crate) fn new(inner: Box<dyn Transport>, outbox_busy: OutboxBusy) -> Self {
        Self {
            inner,
            outbox_busy,
            deferrals: AtomicU32::new(0),
        }
    }
}

#[async_trait]
impl Transport for OutboxFirst {
    fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        self.inner.send(to, frame)
    }

    fn send_many(&self, frames: &mut Vec<(Pid, Bytes)>, refused: &mut dyn FnMut(Pid, DropReason)) {
        self.inner.send_many(frames, refused);
    }

    async fn writable(&self, to: Pid) {
        self.inner.writable(to).await;
    }

    /// The deferral sits here, where the server waits: once this resolves, the server
    /// takes what arrived with `try_recv_many` at once, in the same turn of its task, so
    /// nothing the outbox could receive comes in between.
    async fn readable(&self) -> bool {
        let mut next = self.inner.readable();
        poll_fn(|cx| {
            let busy = self.outbox_busy.get().is_some_and(|busy| busy());
            if busy && self.deferrals.load(Ordering::Relaxed) < MAX_DEFERRALS {
                // The outbox branch is ready in this same `select!` and wins; if it is not
                // (a reservation, or tokio's budget ran out), the task is polled again.
                self.deferrals.fetch_add(1, Ordering::Relaxed);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.deferrals.store(0, Ordering::Relaxed);
            next.as_mut().poll(cx)
        })
        .await
    }

    fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
        self.inner.try_recv_many(events, max)
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        self.inner.connected()
    }

    fn may_lose_accepted(&self) -> bool {
        self.inner.may_lose_accepted()
    }

    async fn shutdown(&self, linger: Duration) {
        self.inner.shutdown(linger).await;
    }

    fn incarnation(&self) -> Option<Incarnation> {
        self.inner.incarnation()
    }
}
