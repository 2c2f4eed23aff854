//! The contract between the [`Server`](crate::Server) and a transport.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use crate::envelope::Pid;
use crate::stats::DropReason;
use crate::wire::Incarnation;

/// The set of peers a transport currently holds a live connection to.
pub type PeerSet = BTreeSet<Pid>;

/// What a transport hands up to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// A frame arrived. Its bytes are untrusted: the server decodes and checks them.
    Frame(Bytes),
    /// Frames that [`Transport::send`] had accepted for `peer` were discarded later, e.g.
    /// because a silent partition was detected while they were queued. Control frames
    /// ([`crate::wire::is_control`]) carry no message and are not counted.
    Dropped {
        /// The destination of the discarded frames.
        peer: Pid,
        /// Why they were discarded.
        reason: DropReason,
        /// How many.
        count: u64,
    },
}

/// A fatal transport failure (as opposed to a dropped frame, which is expected and counted).
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The local address could not be bound, e.g. because the port is in use.
    #[error("cannot listen on {address}: {reason}")]
    Bind {
        /// The address from the config.
        address: String,
        /// What the OS or library said.
        reason: String,
    },
    /// The pid has no transport to give (unknown, down, or already taken).
    #[error("no transport for pid {pid}: {reason}")]
    Unavailable {
        /// The pid asked for.
        pid: Pid,
        /// Why.
        reason: String,
    },
    /// Any other failure of the underlying library.
    #[error("transport failure: {0}")]
    Other(String),
}

crate::report::debug_as_message!(TransportError);

/// Moves frames between this node and its peers. Transports move bytes only; routing,
/// encoding, incarnation checks and accounting live in the [`Server`](crate::Server).
///
/// A transport is shared, like tokio's `UdpSocket` behind an `Arc`: every task that holds
/// the node's outbox sends through it (`&self`), while the node's receiving side (the task
/// reading the inbox, or the node's own) waits on [`Transport::readable`] and takes what
/// arrived with [`Transport::try_recv_many`].
///
/// # Contract
///
/// * **`send` enqueues, it does not deliver.** It never blocks and never waits on a peer,
///   and may be called from many tasks at once. `Ok(())` means the frame was handed to a
///   live connection's bounded queue. A frame for a peer with no live connection *at the
///   time of the call* is refused with [`DropReason::Unreachable`] and must never be
///   delivered later, not even once the peer comes back. A full queue to one peer refuses
///   with [`DropReason::Backpressure`] and affects no other peer. Simulated faults refuse
///   with `Partitioned` or `Injected`. Frames sent by one task to one peer keep their order.
/// * **`writable(to)`** resolves once a frame to `to` may find room again (or `to` is no
///   longer connected, which the next `send` reports): the server waits on it before it
///   retries a send that met a full queue. Spurious wake-ups are allowed; cancel-safe.
/// * **Accepted frames** reach the peer in send order, at most once, byte-exact, or are lost
///   only through a fault. If the transport later discards frames it had accepted (e.g. a
///   silent partition is detected while they were queued), it reports them with
///   [`TransportEvent::Dropped`] and never delivers them afterwards.
/// * **Receiving**: [`Transport::readable`] resolves once an event is ready for
///   [`Transport::try_recv_many`], which takes them, in arrival order, without waiting.
///   `readable` takes nothing, so it is cancel-safe (it may be used in `tokio::select!`);
///   it returns `false` once the transport is closed for good (e.g. its node was crashed in
///   a simulation) and nothing is left to take. The server calls `try_recv_many` from one
///   task at a time (under its receive lock), from the reader's task or the node's; it
///   may wait on `readable` from both. A transport should wake every waiter; one that
///   keeps only the latest waker still works (the node's task then wakes the reader,
///   one hop later).
/// * **Connection state** is published through [`Transport::connected`]: the set of peers
///   with a live connection, updated as connections come and go.
/// * **`shutdown`** flushes queued frames to live peers for at most `linger`, then frees every
///   resource (ports included) before returning.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Enqueues `frame` for `to`, or says why it was dropped. Never blocks.
    fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason>;

    /// Sends `frames` in order, as [`Transport::send`] would one by one, and reports each
    /// refused frame to `refused` with its destination and the reason. Leaves `frames`
    /// empty. Transports override it to take their locks once per batch rather than once
    /// per frame; the default calls `send` for each frame.
    fn send_many(&self, frames: &mut Vec<(Pid, Bytes)>, refused: &mut dyn FnMut(Pid, DropReason)) {
        for (to, frame) in frames.drain(..) {
            if let Err(reason) = self.send(to, frame) {
                refused(to, reason);
            }
        }
    }

    /// Resolves once a frame to `to` may find room in its queue again, or `to` is no longer
    /// connected. Cancel-safe; may wake spuriously. The default waits a millisecond, for
    /// transports that cannot tell.
    async fn writable(&self, to: Pid) {
        let _ = to;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    /// Resolves `true` once an event is ready for [`Transport::try_recv_many`] (a
    /// concurrent taker may take it first), `false` once the transport is closed for good
    /// and has nothing left. Takes nothing: cancel-safe.
    async fn readable(&self) -> bool;

    /// Appends to `events` up to `max` events that are ready now, in arrival order, without
    /// waiting, and returns how many.
    fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize;

    /// The live connection set, kept current by the transport.
    fn connected(&self) -> watch::Receiver<PeerSet>;

    /// Flushes for at most `linger`, then releases everything. Sends after it are refused.
    async fn shutdown(&self, linger: Duration);

    /// Whether frames this transport accepted can be lost without a
    /// [`TransportEvent::Dropped`] report — as on a real network, where a peer that dies
    /// takes what was in flight to it along. The default, `false`, promises exact
    /// accounting (the in-memory transport). When `true`, the server has every receiver
    /// acknowledge what it got (small control frames: one per quarter window, and within a
    /// tenth of the heartbeat interval), bounds what is unacknowledged per peer (16 ×
    /// `peer_queue` frames, `peer_queue_bytes` bytes: beyond, `backpressure`), and counts
    /// what a peer never acknowledged before it went down as `unconfirmed`.
    fn may_lose_accepted(&self) -> bool {
        false
    }

    /// The incarnation of this transport's node, when the transport itself knows it and it
    /// grows across restarts (the in-memory network counts them). `None`, the default, for
    /// transports that do not (ZeroMQ): the server then takes one from the builder (the
    /// peer catalog), else from the clock. See [`ServerBuilder::incarnation`](crate::ServerBuilder::incarnation).
    fn incarnation(&self) -> Option<Incarnation> {
        None
    }

    /// Membership at run time ([`Server::add_peer`](crate::Server::add_peer)): from now on,
    /// connect to `pid` at `address` (as in the config: `host:port`), accept its
    /// connections, and report it in [`Transport::connected`] like any configured peer. Adding
    /// a peer the transport already has at the same address changes nothing; at another
    /// address, the peer moves there. The default refuses: the server then refuses the
    /// change.
    fn add_peer(&self, pid: Pid, address: &str) -> Result<(), TransportError> {
        let _ = address;
        Err(TransportError::Unavailable {
            pid,
            reason: "this transport cannot add peers at run time".into(),
        })
    }

    /// Membership at run time ([`Server::remove_peer`](crate::Server::remove_peer)): stop
    /// connecting to `pid` and close what connects this node to it; messages still queued
    /// for it are discarded (reported as [`TransportEvent::Dropped`] with
    /// [`DropReason::UnknownPeer`] by transports that can count them: libzmq cannot),
    /// while control frames queued before the call (the notice of its removal) still go
    /// out, within the linger; from now on frames to it are refused with
    /// [`DropReason::UnknownPeer`] and frames from it are not handed up. Removing a peer the
    /// transport does not have is not an error. The default refuses.
    fn remove_peer(&self, pid: Pid) -> Result<(), TransportError> {
        Err(TransportError::Unavailable {
            pid,
            reason: "this transport cannot remove peers at run time".into(),
        })
    }
}

#[async_trait]
impl<T: Transport + ?Sized> Transport for Box<T> {
    fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        (**self).send(to, frame)
    }

    fn send_many(&self, frames: &mut Vec<(Pid, Bytes)>, refused: &mut dyn FnMut(Pid, DropReason)) {
        (**self).send_many(frames, refused);
    }

    async fn writable(&self, to: Pid) {
        (**self).writable(to).await;
    }

    async fn readable(&self) -> bool {
        (**self).readable().await
    }

    fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
        (**self).try_recv_many(events, max)
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        (**self).connected()
    }

    async fn shutdown(&self, linger: Duration) {
        (**self).shutdown(linger).await;
    }

    fn incarnation(&self) -> Option<Incarnation> {
        (**self).incarnation()
    }

    fn may_lose_accepted(&self) -> bool {
        (**self).may_lose_accepted()
    }

    fn add_peer(&self, pid: Pid, address: &str) -> Result<(), TransportError> {
        (**self).add_peer(pid, address)
    }

    fn remove_peer(&self, pid: Pid) -> Result<(), TransportError> {
        (**self).remove_peer(pid)
    }
}
