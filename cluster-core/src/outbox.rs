//! The sending half of a node: routing in the sender's own task, straight to the transport.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::envelope::{Envelope, MsgId, Pid};
use crate::group::{Groups, Recipients};
use crate::inbox::Receiving;
use crate::router::{Full, Routed, Router};
use crate::server::Message;
use crate::stats::{DropReason, StatsCells};
use crate::transport::{PeerSet, Transport};

/// What became of a message, as far as the sending node can tell at once. Each drop is
/// also counted in [`Server::stats`](crate::Server::stats), with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendOutcome {
    /// Handed to the transport's queue to its destination (or put into this node's own
    /// inbox). Not yet delivered: see the delivery contract in the crate docs.
    Sent,
    /// Dropped, for this reason: `unknown_peer`, `unreachable` (no live connection),
    /// `backpressure` (full queue, after waiting up to `send_timeout` with
    /// [`Outbox::send`]), `too_large`, `malformed` (the message did not serialize), or a
    /// simulated fault.
    Dropped(DropReason),
    /// A broadcast: how many copies were handed over, and how many dropped (each counted
    /// per peer). A broadcast never waits on a slow peer: that copy is dropped at once.
    Broadcast {
        /// Copies handed to the transport.
        sent: usize,
        /// Copies dropped.
        dropped: usize,
    },
    /// A multicast ([`Outbox::multicast`]): how many of its distinct destinations got a
    /// copy (handed to the transport, or put into this node's own inbox), and how many
    /// copies were dropped (unknown pids included), each counted per destination. A
    /// multicast never waits on a slow peer: that copy is dropped at once.
    Multicast {
        /// Copies handed over.
        sent: usize,
        /// Copies dropped.
        dropped: usize,
    },
}

impl SendOutcome {
    /// Whether every copy was handed over (for a broadcast, also when there are no peers;
    /// for a multicast, also when it had no destination).
    pub fn is_sent(&self) -> bool {
        match self {
            Self::Sent => true,
            Self::Dropped(_) => false,
            Self::Broadcast { dropped, .. } | Self::Multicast { dropped, .. } => *dropped == 0,
        }
    }
}

/// The node has stopped: the envelope was not sent. [`SendError::into_inner`] gives it back.
pub struct SendError<M>(pub Envelope<M>);

impl<M> SendError<M> {
    /// The envelope that was not sent.
    pub fn into_inner(self) -> Envelope<M> {
        self.0
    }
}

impl<M> std::fmt::Debug for SendError<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SendError(the node has stopped; message {} to {} not sent)",
            self.0.msg_id, self.0.pid
        )
    }
}

impl<M> std::fmt::Display for SendError<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the node has stopped: message {} to {} not sent",
            self.0.msg_id, self.0.pid
        )
    }
}

impl<M> std::error::Error for SendError<M> {}

/// A multicast that was not sent: nothing was counted, and the message comes back
/// ([`MulticastError::into_inner`]).
#[non_exhaustive]
pub enum MulticastError<M> {
    /// The node has stopped.
    Stopped {
        /// Where it was to go.
        to: Recipients,
        /// Its id.
        msg_id: MsgId,
        /// The message.
        msg: M,
    },
    /// This node has no group of this name (see
    /// [`Server::set_group`](crate::Server::set_group)).
    UnknownGroup {
        /// The name.
        name: String,
        /// Its id.
        msg_id: MsgId,
        /// The message.
        msg: M,
    },
}

impl<M> MulticastError<M> {
    /// The message id and the message that were not sent.
    pub fn into_inner(self) -> (MsgId, M) {
        match self {
            Self::Stopped { msg_id, msg, .. } | Self::UnknownGroup { msg_id, msg, .. } => {
                (msg_id, msg)
            }
        }
    }
}

impl<M> std::fmt::Display for MulticastError<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stopped { to, msg_id, .. } => write!(
                f,
                "the node has stopped: multicast {msg_id} to {to} not sent"
            ),
            Self::UnknownGroup { name, msg_id, .. } => write!(
                f,
                "no group \"{name}\" on this node: multicast {msg_id} not sent"
            ),
        }
    }
}

impl<M> std::fmt::Debug for MulticastError<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MulticastError({self})")
    }
}

impl<M> std::error::Error for MulticastError<M> {}

/// The sending half of a node: clone it freely, send from any task.
///
/// A send routes the message in the calling task: it is serialized once, framed (and
/// authenticated) for each destination, and handed straight to the transport, which never
/// waits on a peer. The result says what became of it where the node can know at once.
///
/// * [`Outbox::send`] to a connected peer whose queue (or window of unacknowledged
///   frames) is full waits for room, up to [`Options::send_timeout`](crate::Options),
///   then drops the message as `backpressure`; the peer is then *stalled*, and later sends
///   to it are dropped at once until one is accepted again. A send to a peer that is down,
///   cut off or unknown is dropped at once. A broadcast never waits: a copy to a full
///   peer is dropped and counted.
/// * [`Outbox::try_send`] never waits.
/// * [`Outbox::multicast`] sends one message to a list of pids or a named group, encoded
///   once; like a broadcast it never waits.
///
/// They fail only once the node has stopped (and a multicast, for a group this node does
/// not have).
pub struct Outbox<M> {
    node: Arc<Sending<M>>,
}

impl<M> Clone for Outbox<M> {
    fn clone(&self) -> Self {
        Self {
            node: Arc::clone(&self.node),
        }
    }
}

impl<M> std::fmt::Debug for Outbox<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("pid", &self.node.pid)
            .field("open", &self.node.is_open())
            .finish_non_exhaustive()
    }
}

/// What the outboxes of a node share with its server's task.
pub(crate) struct Sending<M> {
    pub(crate) pid: Pid,
    pub(crate) transport: Box<dyn Transport>,
    pub(crate) connected: watch::Receiver<PeerSet>,
    state: Mutex<SendState>,
    /// Signalled when acknowledgements or write-offs free room in peers' windows.
    pub(crate) credit: Notify,
    /// The receiving side: the inbox's queue (messages this node sends itself go there).
    pub(crate) recv: Receiving<M>,
    pub(crate) stats: Arc<StatsCells>,
    /// This node's multicast groups, shared with its server, which changes them.
    groups: Groups,
    send_timeout: Duration,
    open: AtomicBool,
}

/// The router and what is known of stalled peers, behind one lock.
pub(crate) struct SendState {
    pub(crate) router: Router,
    /// Peers a send waited `send_timeout` for in vain: not waited for again until a send
    /// to them is accepted.
    stalled: BTreeSet<Pid>,
}

/// One routing attempt.
enum Attempt<M> {
    Done(SendOutcome),
    /// Held back, uncounted: the envelope and what to wait for.
    Held(Envelope<M>, Full),
}

impl<M> Sending<M> {
    pub(crate) fn new(
        pid: Pid,
        transport: Box<dyn Transport>,
        router: Router,
        recv: Receiving<M>,
        groups: Groups,
        send_timeout: Duration,
    ) -> Self {
        let connected = transport.connected();
        let stats = Arc::clone(router.stats_arc());
        Self {
            pid,
            transport,
            connected,
            state: Mutex::new(SendState {
                router,
                stalled: BTreeSet::new(),
            }),
            credit: Notify::new(),
            recv,
            stats,
            groups,
            send_timeout,
            open: AtomicBool::new(true),
        }
    }

    /// The router, locked. Held only for work that never waits.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SendState> {
        // Nothing in the state is left half-updated by a panic that matters more than
        // stopping every sender would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Later sends fail with [`SendError`].
    pub(crate) fn close(&self) {
        self.open.store(false, Ordering::Release);
        self.credit.notify_waiters();
    }
}

impl SendState {
    pub(crate) fn router(&mut self) -> &mut Router {
        &mut self.router
    }
}

impl<M: Message> Sending<M> {
    /// Routes `env` once. With `wait`, a message to one connected, unstalled peer whose
    /// queue or window is full is held back rather than dropped.
    fn attempt(&self, env: Envelope<M>, wait: bool) -> Result<Attempt<M>, SendError<M>> {
        if !self.is_open() {
            return Err(SendError(env));
        }
        let to = env.pid;
        let routed = {
            let mut state = self.lock();
            let hold = wait && !state.stalled.contains(&to);
            let transport = &self.transport;
            let connected = &self.connected;
            let routed = state.router.outgoing_checked(
                env,
                |peer, frame| transport.send(peer, frame),
                |peer| connected.borrow().contains(&peer),
                hold,
            );
            if !state.stalled.is_empty() && matches!(routed, Routed::Done(SendOutcome::Sent, None))
            {
                state.stalled.remove(&to);
            }
            routed
        };
        match routed {
            Routed::Done(outcome, None) => Ok(Attempt::Done(outcome)),
            Routed::Done(outcome, Some(local)) => {
                Ok(Attempt::Done(self.deliver_local(outcome, local)))
            }
            Routed::Held(env, full) => Ok(Attempt::Held(env, full)),
        }
    }

    /// Puts a message this node sent itself into its inbox (see
    /// [`Sending::deliver_to_self`]).
    fn deliver_local(&self, outcome: SendOutcome, local: Envelope<M>) -> SendOutcome {
        match self.deliver_to_self(local) {
            Ok(()) => outcome,
            Err(reason) => SendOutcome::Dropped(reason),
        }
    }

    /// Marks `to` stalled: a send waited `send_timeout` for it in vain.
    fn stall(&self, to: Pid) {
        self.lock().stalled.insert(to);
    }
}

impl<M: Message> Outbox<M> {
    pub(crate) fn new(node: Arc<Sending<M>>) -> Self {
        Self { node }
    }

    /// Sends `env` to `env.pid` (a peer, this node, or [`BROADCAST`](crate::BROADCAST)),
    /// waiting for room, up to `send_timeout`, when the only destination is a connected
    /// peer whose queue is full (see the type's docs). A message to this node itself never
    /// waits: a full inbox is `backpressure`. Dropping the future while it waits for room
    /// sends nothing and counts nothing.
    pub async fn send(&self, env: Envelope<M>) -> Result<SendOutcome, SendError<M>> {
        let node = &*self.node;
        let mut deadline: Option<Instant> = None;
        let mut env = env;
        loop {
            // Once the deadline has passed, the peer is stalled (below): this attempt no
            // longer waits, and the message is sent or dropped.
            let (held, full) = match node.attempt(env, true)? {
                Attempt::Done(outcome) => return Ok(outcome),
                Attempt::Held(held, full) => (held, full),
            };
            let to = held.pid;
            let until = *deadline.get_or_insert_with(|| Instant::now() + node.send_timeout);
            env = held;
            let waited = match full {
                Full::Queue => tokio::time::timeout_at(until, node.transport.writable(to))
                    .await
                    .is_ok(),
                Full::Window => {
                    // Registered before the second look, so that an acknowledgement that
                    // lands between the two is not missed.
                    let credit = node.credit.notified();
                    tokio::pin!(credit);
                    credit.as_mut().enable();
                    match node.attempt(env, true)? {
                        Attempt::Held(held, _) => env = held,
                        Attempt::Done(outcome) => return Ok(outcome),
                    }
                    tokio::time::timeout_at(until, credit).await.is_ok()
                }
            };
            if !waited {
                node.stall(to);
            }
        }
    }

    /// Sends `env` without ever waiting: a full queue to its destination is a counted
    /// `backpressure` drop, reported in the outcome. Fails only once the node has stopped.
    pub fn try_send(&self, env: Envelope<M>) -> Result<SendOutcome, SendError<M>> {
        match self.node.attempt(env, false)? {
            Attempt::Done(outcome) => Ok(outcome),
            // Never produced without waiting.
            Attempt::Held(_, _) => Ok(SendOutcome::Dropped(DropReason::Backpressure)),
        }
    }

    /// Sends one message to several destinations at once, without ever waiting: to the
    /// pids of a list, or to the members of one of this node's groups (`"replicas"`, see
    /// [`Server::set_group`](crate::Server::set_group)), as they are at this moment.
    ///
    /// The routing rules of a send hold per destination: each pid gets one copy however
    /// often it is listed; this node's own pid (if listed, or a member) lands in its own
    /// inbox; an unknown pid is dropped and counted as `unknown_peer`. The message is
    /// serialized once; each copy to a peer is framed for it (with its own sequence
    /// number, so FIFO per pair holds across sends, broadcasts and multicasts) and, with a
    /// key, authenticated like any frame. Like a broadcast it never waits: a copy to a
    /// full peer is dropped as `backpressure`, to a peer that is down as `unreachable`,
    /// each counted for that peer. The outcome is [`SendOutcome::Multicast`].
    ///
    /// Receivers see an ordinary message from this node (`pid` = the sender): they need
    /// no group definitions, and groups are never propagated.
    ///
    /// Fails, sending and counting nothing, once the node has stopped or when it has no
    /// group of that name; the message comes back in the error.
    pub fn multicast(
        &self,
        to: impl Into<Recipients>,
        msg_id: MsgId,
        msg: M,
    ) -> Result<SendOutcome, MulticastError<M>> {
        let node = &*self.node;
        let to = to.into();
        if !node.is_open() {
            return Err(MulticastError::Stopped { to, msg_id, msg });
        }
        let group;
        let pids: &[Pid] = match &to {
            Recipients::Pids(pids) => pids,
            Recipients::Group(name) => match node.groups.get(name) {
                Some(members) => {
                    group = members;
                    &group
                }
                None => {
                    let name = name.clone();
                    return Err(MulticastError::UnknownGroup { name, msg_id, msg });
                }
            },
        };
        let (outcome, local) = {
            let mut state = node.lock();
            let transport = &node.transport;
            let connected = &node.connected;
            state.router.outgoing_multicast(
                pids,
                msg_id,
                msg,
                |peer, frame| transport.send(peer, frame),
                |peer| connected.borrow().contains(&peer),
            )
        };
        let Some(local) = local else {
            return Ok(outcome);
        };
        Ok(match (node.deliver_to_self(local), outcome) {
            // The copy to this node was counted sent; its drop is counted now.
            (Err(_), SendOutcome::Multicast { sent, dropped }) => SendOutcome::Multicast {
                sent: sent.saturating_sub(1),
                dropped: dropped + 1,
            },
            _ => outcome,
        })
    }

    /// Whether the node has stopped (sends now fail).
    pub fn is_closed(&self) -> bool {
        !self.node.is_open()
    }

    /// The pid of the node this outbox sends from.
    pub fn pid(&self) -> Pid {
        self.node.pid
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::transport::TransportEvent;
    use crate::{BROADCAST, Config, GroupError, Options, Server};

    /// A transport whose queue to each peer holds `CAPACITY` frames until the test takes
    /// them, connected to peers 2 and 3 (not 4).
    struct Pipes {
        queues: Arc<Mutex<BTreeMap<Pid, VecDeque<Bytes>>>>,
        room: Arc<Notify>,
        connected: watch::Receiver<PeerSet>,
        _keep: watch::Sender<PeerSet>,
    }

    const CAPACITY: usize = 2;

    /// The test's end of [`Pipes`]: takes what was sent to a peer, making room.
    #[derive(Clone)]
    struct Taps {
        queues: Arc<Mutex<BTreeMap<Pid, VecDeque<Bytes>>>>,
        room: Arc<Notify>,
    }

    impl Taps {
        fn take(&self, peer: Pid) -> usize {
            let n = self
                .queues
                .lock()
                .unwrap()
                .get_mut(&peer)
                .map_or(0, |q| q.drain(..).count());
            self.room.notify_waiters();
            n
        }
    }

    fn pipes() -> (Pipes, Taps) {
        let (tx, rx) = watch::channel(PeerSet::from([2, 3]));
        let queues = Arc::new(Mutex::new(BTreeMap::new()));
        let room = Arc::new(Notify::new());
        let taps = Taps {
            queues: Arc::clone(&queues),
            room: Arc::clone(&room),
        };
        let pipes = Pipes {
            queues,
            room,
            connected: rx,
            _keep: tx,
        };
        (pipes, taps)
    }

    #[async_trait]
    impl Transport for Pipes {
        fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
            if !self.connected.borrow().contains(&to) {
                return Err(DropReason::Unreachable);
            }
            let mut queues = self.queues.lock().unwrap();
            let queue = queues.entry(to).or_default();
            if queue.len() >= CAPACITY {
                return Err(DropReason::Backpressure);
            }
            queue.push_back(frame);
            Ok(())
        }
        async fn writable(&self, to: Pid) {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self
                .queues
                .lock()
                .unwrap()
                .get(&to)
                .is_none_or(|q| q.len() < CAPACITY)
            {
                return;
            }
            room.await;
        }
        async fn readable(&self) -> bool {
            std::future::pending().await
        }
        fn try_recv_many(&self, _events: &mut Vec<TransportEvent>, _max: usize) -> usize {
            0
        }
        fn connected(&self) -> watch::Receiver<PeerSet> {
            self.connected.clone()
        }
        async fn shutdown(&self, _linger: Duration) {}
        fn incarnation(&self) -> Option<crate::Incarnation> {
            Some(1)
        }
    }

    fn node(send_timeout: Duration) -> (Server<u32>, Taps) {
        let options = Options {
            send_timeout,
            ..Options::default()
        };
        node_with(
            Config::local(4, 7300)
                .unwrap()
                .with_options(options)
                .unwrap(),
        )
    }

    fn node_with(config: Config) -> (Server<u32>, Taps) {
        let (pipes, taps) = pipes();
        (Server::with_transport(1, config, pipes).unwrap(), taps)
    }

    fn to(pid: Pid, id: i64) -> Envelope<u32> {
        Envelope::new(pid, id, 7)
    }

    #[tokio::test]
    async fn a_send_says_what_became_of_the_message() {
        let (mut s, taps) = node(Duration::from_secs(60));
        let outbox = s.outbox();
        assert_eq!(outbox.send(to(2, 1)).await.unwrap(), SendOutcome::Sent);
        assert_eq!(outbox.try_send(to(3, 2)).unwrap(), SendOutcome::Sent);
        let dropped = |r| SendOutcome::Dropped(r);
        assert_eq!(
            outbox.send(to(9, 3)).await.unwrap(),
            dropped(DropReason::UnknownPeer)
        );
        assert_eq!(
            outbox.send(to(4, 4)).await.unwrap(),
            dropped(DropReason::Unreachable)
        );
        assert_eq!(outbox.send(to(1, 5)).await.unwrap(), SendOutcome::Sent);
        assert_eq!(s.inbox().recv().await.map(|e| e.msg_id), Some(5));
        // Peer 2 full: a broadcast does not wait for it.
        assert_eq!(outbox.send(to(2, 6)).await.unwrap(), SendOutcome::Sent);
        let outcome = outbox.send(to(BROADCAST, 7)).await.unwrap();
        assert_eq!(
            outcome,
            SendOutcome::Broadcast {
                sent: 1,
                dropped: 2
            }
        );
        assert!(!outcome.is_sent());
        assert!(SendOutcome::Sent.is_sent());
        assert!(
            SendOutcome::Broadcast {
                sent: 2,
                dropped: 0
            }
            .is_sent()
        );
        assert!(!SendOutcome::Dropped(DropReason::Unreachable).is_sent());
        let shown = format!("{outbox:?}");
        assert!(
            shown.contains("pid: 1") && shown.contains("open: true"),
            "{shown}"
        );
        let stats = s.stats();
        assert_eq!(stats.peers[&2].dropped_to.get(DropReason::Backpressure), 1);
        assert_eq!(stats.peers[&4].dropped_to.get(DropReason::Unreachable), 2);
        assert_eq!(stats.dropped_outgoing.get(DropReason::UnknownPeer), 1);
        assert_eq!((taps.take(2), taps.take(3)), (2, 2));
    }

    /// A send to a full, connected peer waits until the peer takes frames, and then is
    /// sent: nothing is dropped. `try_send` in the same state drops at once.
    #[tokio::test]
    async fn a_send_to_a_full_peer_waits_for_room_and_try_send_does_not() {
        let (s, taps) = node(Duration::from_secs(600));
        let outbox = s.outbox();
        for id in 0..CAPACITY as i64 {
            assert_eq!(outbox.try_send(to(2, id)).unwrap(), SendOutcome::Sent);
        }
        assert_eq!(
            outbox.try_send(to(2, 10)).unwrap(),
            SendOutcome::Dropped(DropReason::Backpressure)
        );
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(to(2, 11)).await.unwrap() }
        });
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(
            !waiting.is_finished(),
            "the send waits while the peer is full"
        );
        // Meanwhile, other peers are not held up.
        assert_eq!(outbox.try_send(to(3, 12)).unwrap(), SendOutcome::Sent);
        assert_eq!(taps.take(2), CAPACITY);
        let outcome = tokio::time::timeout(Duration::from_secs(60), waiting)
            .await
            .expect("room wakes the waiting send")
            .unwrap();
        assert_eq!(outcome, SendOutcome::Sent);
        assert_eq!(taps.take(2), 1);
        let stats = s.stats();
        assert_eq!(stats.peers[&2].sent, 4);
        assert_eq!(stats.peers[&2].dropped_to.total(), 1, "only the try_send");
    }

    /// A peer that stays full for `send_timeout` costs one wait: that message is dropped as
    /// `backpressure`, and later sends to it are dropped at once until one is accepted.
    #[tokio::test(start_paused = true)]
    async fn a_send_waits_at_most_send_timeout_then_the_peer_is_stalled() {
        let timeout = Duration::from_secs(1);
        let (s, taps) = node(timeout);
        let outbox = s.outbox();
        for id in 0..CAPACITY as i64 {
            outbox.try_send(to(2, id)).unwrap();
        }
        let backpressure = SendOutcome::Dropped(DropReason::Backpressure);
        let start = Instant::now();
        assert_eq!(outbox.send(to(2, 10)).await.unwrap(), backpressure);
        assert_eq!(start.elapsed(), timeout, "waited exactly send_timeout");
        let start = Instant::now();
        assert_eq!(outbox.send(to(2, 11)).await.unwrap(), backpressure);
        assert_eq!(start.elapsed(), Duration::ZERO, "stalled: no second wait");
        // Once the peer takes frames, a send is accepted and the peer is waited for again.
        taps.take(2);
        assert_eq!(outbox.send(to(2, 12)).await.unwrap(), SendOutcome::Sent);
        outbox.send(to(2, 13)).await.unwrap();
        let start = Instant::now();
        assert_eq!(outbox.send(to(2, 14)).await.unwrap(), backpressure);
        assert_eq!(start.elapsed(), timeout);
        assert_eq!(
            s.stats().peers[&2].dropped_to.get(DropReason::Backpressure),
            3
        );
    }

    /// A multicast routes each destination like a send and says what became of the
    /// copies: its own inbox, a full peer (`backpressure` at once: it never waits, however
    /// long `send_timeout`), a peer with no connection, an unknown pid; each drop counted
    /// for its peer.
    #[tokio::test]
    async fn a_multicast_says_what_became_of_each_copy_and_never_waits() {
        let config = Config::local(4, 7300)
            .unwrap()
            .with_options(Options {
                send_timeout: Duration::from_secs(3600),
                ..Options::default()
            })
            .unwrap()
            .with_group("everyone", [1, 2, 3, 4])
            .unwrap();
        let (mut s, taps) = node_with(config);
        let outbox = s.outbox();
        for id in 0..CAPACITY as i64 {
            outbox.try_send(to(2, id)).unwrap();
        }
        let outcome = outbox.multicast("everyone", 10, 7).unwrap();
        assert_eq!(
            outcome,
            SendOutcome::Multicast {
                sent: 2,
                dropped: 2
            }
        );
        assert!(!outcome.is_sent());
        assert_eq!(s.inbox().recv().await, Some(Envelope::new(1, 10, 7)));
        assert_eq!((taps.take(2), taps.take(3)), (CAPACITY, 1));
        let outcome = outbox.multicast(vec![3, 2, 3, 9], 11, 8).unwrap();
        assert_eq!(
            outcome,
            SendOutcome::Multicast {
                sent: 2,
                dropped: 1
            }
        );
        assert_eq!(
            (taps.take(2), taps.take(3)),
            (1, 1),
            "3 listed twice, sent once"
        );
        let stats = s.stats();
        assert_eq!(stats.peers[&2].dropped_to.get(DropReason::Backpressure), 1);
        assert_eq!(stats.peers[&4].dropped_to.get(DropReason::Unreachable), 1);
        assert_eq!(stats.dropped_outgoing.get(DropReason::UnknownPeer), 1);
        assert_eq!(stats.peers[&1].delivered, 1);
        assert_eq!(stats.sent, CAPACITY as u64 + 4 + 3);
    }

    /// Groups come from the config and change at run time; a multicast to a group the
    /// node does not have fails, sending and counting nothing, and gives the message back.
    #[tokio::test]
    async fn groups_change_at_run_time_and_an_unknown_group_sends_nothing() {
        let config = Config::local(4, 7300)
            .unwrap()
            .with_group("pair", [2, 3])
            .unwrap();
        let (s, taps) = node_with(config);
        let outbox = s.outbox();
        assert_eq!(s.groups()["pair"], [2, 3]);
        outbox.multicast("pair", 1, 1).unwrap();
        assert_eq!((taps.take(2), taps.take(3)), (1, 1));
        s.set_group("pair", [3, 3]).unwrap();
        s.set_group("solo", [2]).unwrap();
        outbox.multicast("pair", 2, 2).unwrap();
        outbox.multicast(String::from("solo"), 3, 3).unwrap();
        assert_eq!((taps.take(2), taps.take(3)), (1, 1));
        assert_eq!(
            s.set_group("bad", [2, 5]),
            Err(GroupError::UnknownPid {
                group: "bad".into(),
                pid: 5
            })
        );
        assert_eq!(s.set_group("", [2]), Err(GroupError::EmptyName));
        assert_eq!(s.remove_group("pair"), Some(vec![3]));
        assert_eq!(s.remove_group("pair"), None);
        let before = s.stats();
        let e = outbox.multicast("pair", 4, 44).unwrap_err();
        assert!(matches!(e, MulticastError::UnknownGroup { ref name, .. } if name == "pair"));
        assert_eq!(
            e.to_string(),
            "no group \"pair\" on this node: multicast 4 not sent"
        );
        assert_eq!(e.into_inner(), (4, 44));
        assert_eq!(s.stats(), before, "nothing counted");
        assert_eq!(s.groups().keys().collect::<Vec<_>>(), ["solo"]);
        s.shutdown().await;
        let e = outbox.multicast([2], 5, 55).unwrap_err();
        assert!(format!("{e:?}").contains("stopped"), "{e:?}");
        assert_eq!(e.into_inner(), (5, 55));
    }

    /// The copy to this node itself is dropped (and counted) when its inbox is full, and
    /// the outcome says so.
    #[tokio::test]
    async fn a_multicast_copy_to_a_full_own_inbox_is_a_counted_drop() {
        let config = Config::local(4, 7300)
            .unwrap()
            .with_options(Options {
                inbox_capacity: 1,
                ..Options::default()
            })
            .unwrap();
        let (s, taps) = node_with(config);
        let outbox = s.outbox();
        let outcome = outbox.multicast([1, 3], 1, 1).unwrap();
        assert_eq!(
            outcome,
            SendOutcome::Multicast {
                sent: 2,
                dropped: 0
            }
        );
        let outcome = outbox.multicast([1, 3], 2, 2).unwrap();
        assert_eq!(
            outcome,
            SendOutcome::Multicast {
                sent: 1,
                dropped: 1
            }
        );
        assert_eq!(taps.take(3), 2);
        let stats = s.stats();
        assert_eq!(
            stats.peers[&1].dropped_from.get(DropReason::Backpressure),
            1
        );
        assert_eq!(stats.sent, 4);
        assert_eq!(
            stats.delivered + stats.dropped().total(),
            2,
            "both copies to self"
        );
    }

    #[tokio::test]
    async fn sends_fail_once_the_node_has_stopped_and_give_the_envelope_back() {
        let (s, _taps) = node(Duration::from_secs(1));
        let outbox = s.outbox();
        assert!(!outbox.is_closed());
        assert_eq!(outbox.pid(), 1);
        s.shutdown().await;
        assert!(outbox.is_closed());
        let e = outbox.send(to(2, 42)).await.unwrap_err();
        assert!(e.to_string().contains("stopped"), "{e}");
        let debug = format!("{e:?}");
        assert!(debug.contains("stopped") && debug.contains("42"), "{debug}");
        assert_eq!(e.into_inner().msg_id, 42);
        assert!(outbox.try_send(to(1, 43)).is_err());
    }
}
