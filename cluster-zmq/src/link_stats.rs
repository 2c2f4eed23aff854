//! What a transport refused below the frame level, readable after it moved into a server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of what the transport itself refused, below the frame level.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) rejected_connections: AtomicU64,
    pub(crate) stale_frames: AtomicU64,
    pub(crate) refused_over_cap: AtomicU64,
    pub(crate) idle_closed: AtomicU64,
    pub(crate) slow_readers: AtomicU64,
    pub(crate) inbound_closed: AtomicU64,
    pub(crate) from_removed_peers: AtomicU64,
}

/// A read-only handle on a transport's own counters, valid after the transport is moved
/// into a server.
#[derive(Debug, Clone, Default)]
pub struct LinkStats {
    pub(crate) counters: Arc<Counters>,
}

impl LinkStats {
    /// Inbound connections closed during or after the ZeroMQ handshake because the peer
    /// spoke something else than ZMTP (e.g. raw bytes on the port) or sent a frame above the
    /// transport's size limit. Frames that are well-formed ZeroMQ messages are never counted
    /// here: they reach the server, which counts each drop with its reason.
    pub fn rejected_connections(&self) -> u64 {
        self.counters.rejected_connections.load(Ordering::Relaxed)
    }

    /// Frames of messages discarded because they arrived on a connection that had been
    /// silent for longer than the heartbeat timeout (the sender had given it up; `zeromq`
    /// backend only). Control frames (acknowledgements, probes) are not counted.
    pub fn stale_frames(&self) -> u64 {
        self.counters.stale_frames.load(Ordering::Relaxed)
    }

    /// Inbound connections closed because more than `inbound_connection_cap` were open
    /// (the newest that never showed activity go first).
    pub fn refused_over_cap(&self) -> u64 {
        self.counters.refused_over_cap.load(Ordering::Relaxed)
    }

    /// Inbound connections closed because they showed no activity for
    /// `idle_connection_timeout` (`zeromq` backend: no message, heartbeats included; on
    /// libzmq a connection that never completes its handshake is closed by libzmq itself
    /// and counted in [`LinkStats::rejected_connections`]).
    pub fn idle_closed(&self) -> u64 {
        self.counters.idle_closed.load(Ordering::Relaxed)
    }

    /// Inbound connections closed because a write to them (an acknowledgement) could not
    /// be queued at once: a client that does not read (`zeromq` backend).
    pub fn slow_readers(&self) -> u64 {
        self.counters.slow_readers.load(Ordering::Relaxed)
    }

    /// Inbound connections that ended, whatever the cause: the peer left, a protocol error,
    /// a frame above `max_message_size`, closed by the cap or for idleness (libzmq backend
    /// only: libzmq reports a connection closed for a frame above the limit by nothing
    /// else).
    pub fn inbound_closed(&self) -> u64 {
        self.counters.inbound_closed.load(Ordering::Relaxed)
    }

    /// Messages not handed to the server because their sender was removed from this
    /// node's peers at run time ([`Transport::remove_peer`](cluster_core::Transport::remove_peer)),
    /// as its header names it. Control frames are not counted.
    pub fn from_removed_peers(&self) -> u64 {
        self.counters.from_removed_peers.load(Ordering::Relaxed)
    }
}
