//! What a transport refused below the frame level, readable after it moved into a server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of what the transport itself refused, below the frame level.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) rejected_connections: AtomicU64,
    pub(crate) stale_frames: AtomicU64,
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

    /// Frames discarded because they arrived on a connection that had been silent for longer
    /// than the heartbeat timeout (the sender had given it up; `zeromq` backend only).
    pub fn stale_frames(&self) -> u64 {
        self.counters.stale_frames.load(Ordering::Relaxed)
    }
}
