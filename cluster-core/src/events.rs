//! Peer events: what a node learns about its peers' lives, as it happens
//! ([`Server::events`](crate::Server::events)).
//!
//! # What each event means
//!
//! * [`Event::Up`] — messages flow both ways between this node and the peer: this node's
//!   transport has a live connection to it, and an authenticated frame from the peer's
//!   current incarnation arrived since that connection came up (each node greets a peer
//!   it connects to with a small control frame, [`Destination::Hello`], and answers a
//!   greeting from a peer that has not heard it yet, so a silent peer is heard too).
//! * [`Event::Down`] — this node's connection to an `Up` peer went down: the transport
//!   closed it, or (on ZeroMQ) heard no heartbeat for `heartbeat_timeout`; in simulation,
//!   a crash or a partition. Messages to the peer are now dropped as `unreachable` (C4).
//!   A cut in the peer's direction only (it cannot reach this node, this node can reach
//!   it) is seen by the peer, as its own `Down`, not here.
//! * [`Event::Restarted`] — a frame from a newer incarnation of the peer was accepted
//!   (once per incarnation; never for the first incarnation this node hears of). A peer
//!   that restarts faster than the failure detection is `Restarted` without a `Down`
//!   before it.
//! * [`Event::Joined`], [`Event::Left`] — membership changes at run time (reserved: this
//!   build's membership is the config's, so they are not sent yet).
//!
//! # Delivery of events
//!
//! Each [`Events`] subscription has its own bounded queue of [`EVENT_QUEUE`] events. The
//! node never waits for a subscriber: one that falls behind by more than that loses the
//! oldest and is told how many ([`Lagged`]) before the next one it gets. Events are
//! stamped with the wall clock ([`PeerEvent::at`]) and with the time since the node
//! started on tokio's clock ([`PeerEvent::uptime`], deterministic in a simulation with a
//! paused clock).
//!
//! [`Destination::Hello`]: crate::wire::Destination::Hello

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::envelope::Pid;
use crate::transport::PeerSet;
use crate::wire::Incarnation;

/// How many events a subscription holds before the oldest are lost (see [`Lagged`]).
pub const EVENT_QUEUE: usize = 1024;

/// Something that happened to a peer (see the [module docs](self) for what each means).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Event {
    /// Messages flow both ways between this node and the peer.
    Up(Pid),
    /// This node's connection to the peer went down.
    Down(Pid),
    /// A newer incarnation of the peer was heard from.
    Restarted {
        /// The peer.
        pid: Pid,
        /// Its new incarnation.
        incarnation: Incarnation,
    },
    /// The peer joined the cluster (reserved: membership changes at run time).
    Joined(Pid),
    /// The peer left the cluster (reserved: membership changes at run time).
    Left(Pid),
}

impl Event {
    /// The peer the event is about.
    pub fn pid(&self) -> Pid {
        match *self {
            Self::Up(pid)
            | Self::Down(pid)
            | Self::Restarted { pid, .. }
            | Self::Joined(pid)
            | Self::Left(pid) => pid,
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Up(pid) => write!(f, "up {pid}"),
            Self::Down(pid) => write!(f, "down {pid}"),
            Self::Restarted { pid, incarnation } => {
                write!(f, "restarted {pid} (incarnation {incarnation})")
            }
            Self::Joined(pid) => write!(f, "joined {pid}"),
            Self::Left(pid) => write!(f, "left {pid}"),
        }
    }
}

/// An [`Event`] and when it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerEvent {
    /// What happened.
    pub event: Event,
    /// When, by the wall clock.
    pub at: SystemTime,
    /// When, as time since the node started, by tokio's clock (deterministic in a
    /// simulation whose clock is paused).
    pub uptime: Duration,
}

/// A subscription fell behind: this many events were lost before the next one it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event subscription fell behind: {0} events lost")]
pub struct Lagged(pub u64);

/// Where a node's events go: every subscription, and the set of peers that are up.
#[derive(Debug)]
pub(crate) struct EventHub {
    /// Made at the first subscription (a node nobody listens to keeps no queue); `None`
    /// again once the node has stopped (`closed`): subscriptions end once read.
    tx: Mutex<Option<broadcast::Sender<PeerEvent>>>,
    closed: std::sync::atomic::AtomicBool,
    up: watch::Sender<PeerSet>,
    /// The membership table, as it changes.
    members: watch::Sender<crate::membership::Table>,
    started: Instant,
}

impl EventHub {
    pub(crate) fn new() -> Self {
        Self {
            tx: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
            up: watch::Sender::new(PeerSet::new()),
            members: watch::Sender::new(crate::membership::Table::default()),
            started: Instant::now(),
        }
    }

    fn sender(&self) -> std::sync::MutexGuard<'_, Option<broadcast::Sender<PeerEvent>>> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node stopped: no more events; subscriptions end once read.
    pub(crate) fn close(&self) {
        let mut tx = self.sender();
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        tx.take();
    }

    /// Tells every subscription (none waits: a full one loses its oldest), and keeps the
    /// set of peers that are up.
    pub(crate) fn emit(&self, event: Event) {
        match event {
            Event::Up(pid) => {
                self.up.send_if_modified(|set| set.insert(pid));
            }
            Event::Down(pid) | Event::Left(pid) => {
                self.up.send_if_modified(|set| set.remove(&pid));
            }
            _ => {}
        }
        tracing::debug!(%event, "peer event");
        if let Some(tx) = &*self.sender() {
            // No subscriber is not an error: nobody listens.
            let _ = tx.send(PeerEvent {
                event,
                at: SystemTime::now(),
                uptime: self.started.elapsed(),
            });
        }
    }

    pub(crate) fn subscribe(&self) -> Events {
        let mut tx = self.sender();
        if tx.is_none() && !self.closed.load(std::sync::atomic::Ordering::Acquire) {
            *tx = Some(broadcast::Sender::new(EVENT_QUEUE));
        }
        Events::new(tx.as_ref())
    }

    /// A peer that was up is no longer a member: out of the up set (its `Left` is told).
    pub(crate) fn up_removed(&self, pid: Pid) {
        self.up.send_if_modified(|set| set.remove(&pid));
    }

    /// The membership table now.
    pub(crate) fn set_members(&self, table: crate::membership::Table) {
        self.members.send_replace(table);
    }

    /// The membership table, as it changes.
    pub(crate) fn members(&self) -> watch::Receiver<crate::membership::Table> {
        self.members.subscribe()
    }

    /// The peers that are up, as they change.
    pub(crate) fn up(&self) -> watch::Receiver<PeerSet> {
        self.up.subscribe()
    }
}

/// A subscription to a node's [`PeerEvent`]s, from [`Server::events`](crate::Server::events):
/// every event from the moment it was made, in order. To know the state too, subscribe
/// first, then read [`Server::up_peers`](crate::Server::up_peers): nothing falls between. A [`Stream`](futures_core::Stream)
/// too. Cloning makes a new subscription that starts from the moment of the clone.
/// It ends (`None`) once the node has stopped and every event was read.
pub struct Events {
    /// The receiver, while no receive is under way (`pending` holds it meanwhile).
    rx: Option<broadcast::Receiver<PeerEvent>>,
    pending: Option<Recv>,
    /// To subscribe again (clones), without keeping the channel open.
    origin: Option<broadcast::WeakSender<PeerEvent>>,
}

/// A receive under way, which owns the receiver and gives it back.
type Recv = Pin<
    Box<dyn Future<Output = (Result<PeerEvent, RecvError>, broadcast::Receiver<PeerEvent>)> + Send>,
>;

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    /// A subscription to `tx`, or one already ended.
    fn new(tx: Option<&broadcast::Sender<PeerEvent>>) -> Self {
        Self {
            rx: tx.map(broadcast::Sender::subscribe),
            pending: None,
            origin: tx.map(broadcast::Sender::downgrade),
        }
    }

    /// The next event; `Err(Lagged)` if this subscription fell behind and lost some (the
    /// next call gives the oldest one kept); `None` once the node has stopped and every
    /// event was read.
    pub async fn recv(&mut self) -> Option<Result<PeerEvent, Lagged>> {
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *self), cx)).await
    }
}

impl Events {
    /// The next event if one is waiting, without waiting: `None` if none is (or the
    /// subscription has ended).
    pub fn try_recv(&mut self) -> Option<Result<PeerEvent, Lagged>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match futures_core::Stream::poll_next(Pin::new(self), &mut cx) {
            Poll::Ready(item) => item,
            Poll::Pending => None,
        }
    }
}

impl Clone for Events {
    fn clone(&self) -> Self {
        let tx = self
            .origin
            .as_ref()
            .and_then(broadcast::WeakSender::upgrade);
        Self::new(tx.as_ref())
    }
}

impl futures_core::Stream for Events {
    type Item = Result<PeerEvent, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.pending.is_none() {
            let Some(mut rx) = self.rx.take() else {
                return Poll::Ready(None);
            };
            self.pending = Some(Box::pin(async move {
                let got = rx.recv().await;
                (got, rx)
            }));
        }
        let Some(pending) = self.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let Poll::Ready((got, rx)) = pending.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        self.pending = None;
        Poll::Ready(match got {
            Ok(event) => {
                self.rx = Some(rx);
                Some(Ok(event))
            }
            Err(RecvError::Lagged(n)) => {
                self.rx = Some(rx);
                Some(Err(Lagged(n)))
            }
            Err(RecvError::Closed) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscriptions_get_every_event_in_order_and_lag_is_reported_not_waited_for() {
        let hub = EventHub::new();
        let mut early = hub.subscribe();
        hub.emit(Event::Up(2));
        let mut late = hub.subscribe();
        hub.emit(Event::Down(2));
        let first = early.recv().await.unwrap().unwrap();
        assert_eq!(first.event, Event::Up(2));
        assert_eq!(early.recv().await.unwrap().unwrap().event, Event::Down(2));
        assert_eq!(late.recv().await.unwrap().unwrap().event, Event::Down(2));
        // The node never waits: a subscription that does not read loses the oldest.
        for i in 0..EVENT_QUEUE + 10 {
            hub.emit(Event::Up(i as Pid));
        }
        assert_eq!(early.recv().await.unwrap(), Err(Lagged(10)));
        assert_eq!(early.recv().await.unwrap().unwrap().event, Event::Up(10));
        // A clone starts from now.
        let mut clone = late.clone();
        hub.emit(Event::Down(7));
        assert_eq!(clone.recv().await.unwrap().unwrap().event, Event::Down(7));
        hub.close();
        let mut rest = 0;
        while late.recv().await.is_some() {
            rest += 1;
        }
        assert_eq!(
            rest,
            1 + EVENT_QUEUE,
            "a lag report and the events kept, then the end"
        );
        assert!(clone.recv().await.is_none());
        assert!(
            hub.subscribe().recv().await.is_none(),
            "ended for a late subscriber"
        );
    }

    #[tokio::test]
    async fn the_up_set_follows_up_down_and_left() {
        let hub = EventHub::new();
        let up = hub.up();
        hub.emit(Event::Up(2));
        hub.emit(Event::Up(3));
        hub.emit(Event::Down(2));
        hub.emit(Event::Restarted {
            pid: 3,
            incarnation: 4,
        });
        assert_eq!(up.borrow().iter().copied().collect::<Vec<_>>(), [3]);
        hub.emit(Event::Left(3));
        assert!(up.borrow().is_empty());
    }
}
