//! What both backends share: endpoints, the connection set, the inbound bridge, counters.

#[cfg(feature = "zeromq")]
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use cluster_core::{Config, DropReason, PeerSet, Pid, TransportError, TransportEvent};
#[cfg(feature = "zeromq")]
use tokio::sync::mpsc;
use tokio::sync::watch;

/// Frames handed from a socket owner to the server's task per channel message.
#[cfg(feature = "zeromq")]
pub(crate) const BATCH: usize = 256;

/// Batches in flight between the receiving socket owner and the server's task.
#[cfg(feature = "zeromq")]
pub(crate) const INBOUND_BATCHES: usize = 16;

/// Frames a transport hands over before it lets other tasks of its thread run: the server's
/// task would otherwise never yield while frames keep arriving (reading a ready socket
/// touches no tokio resource, so tokio's cooperative budget never runs out), and the task
/// reading the inbox, on the same thread, would starve until the inbox overflows. Below
/// tokio's budget of 128, which bounds what the inbox reader takes per turn.
const YIELD_EVERY: u32 = 64;

/// Counts frames handed over since the last yield (see [`YIELD_EVERY`]).
#[derive(Debug, Default)]
pub(crate) struct Fairness {
    since_yield: u32,
}

impl Fairness {
    /// Whether `try_recv` may hand over another frame before a yield.
    pub(crate) fn may_take(&self) -> bool {
        self.since_yield < YIELD_EVERY
    }

    pub(crate) fn took(&mut self) {
        self.since_yield = self.since_yield.saturating_add(1);
    }

    /// Yields to the runtime if due. Cancel-safe: nothing is taken before it.
    pub(crate) async fn pause_if_due(&mut self) {
        if !self.may_take() {
            self.since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// The ZeroMQ endpoint of a configured peer.
pub(crate) fn endpoint(config: &Config, pid: Pid) -> Result<String, TransportError> {
    let peer = config
        .peer(pid)
        .ok_or_else(|| TransportError::Unavailable {
            pid,
            reason: format!("pid {pid} is not in {}", config.origin()),
        })?;
    Ok(format!("tcp://{}", peer.address))
}

/// Every configured pid but `pid`, ascending.
pub(crate) fn peers_of(config: &Config, pid: Pid) -> Vec<Pid> {
    config.pids().filter(|p| *p != pid).collect()
}

/// Milliseconds as the `i32` libzmq wants, saturating.
#[cfg_attr(not(feature = "libzmq"), allow(dead_code))]
pub(crate) fn millis_i32(d: std::time::Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// Which peers have a live connection: one flag per peer (read by `send` without locking)
/// and the published set (read by the server through `Transport::connected`).
pub(crate) struct Liveness {
    pids: Vec<Pid>,
    flags: Vec<AtomicBool>,
    published: watch::Sender<PeerSet>,
}

impl Liveness {
    pub(crate) fn new(pids: Vec<Pid>) -> Arc<Self> {
        let flags = pids.iter().map(|_| AtomicBool::new(false)).collect();
        Arc::new(Self {
            pids,
            flags,
            published: watch::Sender::new(PeerSet::new()),
        })
    }

    pub(crate) fn index(&self, pid: Pid) -> Option<usize> {
        self.pids.binary_search(&pid).ok()
    }

    /// The index of `to` if it may be sent to now: `unknown_peer` for a pid not in the
    /// config, `unreachable` for a peer without a live connection.
    pub(crate) fn check(&self, to: Pid) -> Result<usize, DropReason> {
        let index = self.index(to).ok_or(DropReason::UnknownPeer)?;
        if self.is_up(index) {
            Ok(index)
        } else {
            Err(DropReason::Unreachable)
        }
    }

    pub(crate) fn is_up(&self, index: usize) -> bool {
        self.flags
            .get(index)
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Marks peer `index` up or down and republishes the set if it changed.
    pub(crate) fn set(&self, index: usize, up: bool) {
        let Some(flag) = self.flags.get(index) else {
            return;
        };
        flag.store(up, Ordering::SeqCst);
        let Some(&pid) = self.pids.get(index) else {
            return;
        };
        self.published.send_if_modified(|set| {
            if up {
                set.insert(pid)
            } else {
                set.remove(&pid)
            }
        });
    }

    pub(crate) fn all_down(&self) {
        for i in 0..self.flags.len() {
            self.set(i, false);
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<PeerSet> {
        self.published.subscribe()
    }
}

/// The server's end of the inbound bridge: batches of events from the socket owner,
/// handed out one at a time. Cancel-safe: a batch taken from the channel is kept in
/// `pending` until every event of it was returned.
#[cfg(feature = "zeromq")]
pub(crate) struct Inbound {
    rx: mpsc::Receiver<Vec<TransportEvent>>,
    pending: VecDeque<TransportEvent>,
    fairness: Fairness,
}

#[cfg(feature = "zeromq")]
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

/// Bytes of a control frame (heartbeat, acknowledgement) of the `zeromq` backend.
#[cfg_attr(not(feature = "zeromq"), allow(dead_code))]
pub(crate) mod control {
    use bytes::{BufMut, Bytes, BytesMut};

    /// First byte of control frames; cluster frames start with `wire::MAGIC` (0xC1).
    pub(crate) const MAGIC: u8 = 0xC2;
    /// Control frame length: magic, kind, u64 little-endian.
    pub(crate) const LEN: usize = 10;

    /// What a control frame says.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Control {
        /// Sender → receiver: "are you there?"
        Ping,
        /// Receiver → sender: "yes; I have received this many frames on this connection".
        Ack(u64),
    }

    pub(crate) fn encode(c: Control) -> Bytes {
        let mut b = BytesMut::with_capacity(LEN);
        b.put_u8(MAGIC);
        let (kind, n) = match c {
            Control::Ping => (1u8, 0u64),
            Control::Ack(n) => (2u8, n),
        };
        b.put_u8(kind);
        b.put_u64_le(n);
        b.freeze()
    }

    /// A control frame, or `None` for anything else (which is then a candidate cluster
    /// frame, checked by the server).
    pub(crate) fn decode(b: &[u8]) -> Option<Control> {
        if b.len() != LEN || b.first() != Some(&MAGIC) {
            return None;
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(b.get(2..LEN)?);
        let n = u64::from_le_bytes(n);
        match b.get(1) {
            Some(1) => Some(Control::Ping),
            Some(2) => Some(Control::Ack(n)),
            _ => None,
        }
    }
}

/// Copies a received message body into the frame type the server takes.
#[cfg_attr(not(feature = "libzmq"), allow(dead_code))]
pub(crate) fn frame_event(bytes: &[u8]) -> TransportEvent {
    TransportEvent::Frame(Bytes::copy_from_slice(bytes))
}

#[cfg(test)]
mod tests {
    use super::control::{Control, decode, encode};

    #[test]
    fn control_frames_round_trip_and_never_look_like_cluster_frames() {
        for c in [Control::Ping, Control::Ack(0), Control::Ack(u64::MAX)] {
            let b = encode(c);
            assert_eq!(decode(&b), Some(c));
            assert_ne!(b[0], cluster_core::wire::MAGIC);
        }
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[0xC2, 9, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode(&[0xC1, 1, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode(&[0xC2, 1, 0]), None);
    }
}
