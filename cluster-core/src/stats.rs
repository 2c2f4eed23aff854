//! Counters: every message ends as delivered or dropped with a reason (contract C7).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::envelope::Pid;

/// Why a message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// The destination pid is not in the config.
    UnknownPeer,
    /// The destination had no live connection (down, or a silent cut was detected).
    Unreachable,
    /// A bounded queue was full: the peer's send queue, or the receiver's inbox.
    Backpressure,
    /// Simulation: the link is cut or partitioned.
    Partitioned,
    /// Simulation: lost by injected link loss.
    Injected,
    /// The bytes were not a valid frame, or the payload did not decode (or encode).
    Malformed,
    /// The frame claims a sender that is not in the config.
    UnknownSender,
    /// The frame comes from an older incarnation than one already seen from that sender.
    StaleIncarnation,
    /// The frame exceeds `max_message_size`.
    TooLarge,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 9] = [
        Self::UnknownPeer,
        Self::Unreachable,
        Self::Backpressure,
        Self::Partitioned,
        Self::Injected,
        Self::Malformed,
        Self::UnknownSender,
        Self::StaleIncarnation,
        Self::TooLarge,
    ];

    /// The snake_case name used in stats output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownPeer => "unknown_peer",
            Self::Unreachable => "unreachable",
            Self::Backpressure => "backpressure",
            Self::Partitioned => "partitioned",
            Self::Injected => "injected",
            Self::Malformed => "malformed",
            Self::UnknownSender => "unknown_sender",
            Self::StaleIncarnation => "stale_incarnation",
            Self::TooLarge => "too_large",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Drop counts by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    /// The count for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0.get(reason.index()).copied().unwrap_or(0)
    }

    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` for every non-zero count.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .into_iter()
            .map(|r| (r, self.get(r)))
            .filter(|(_, n)| *n > 0)
    }

    /// Adds `n` to `reason`.
    pub fn add(&mut self, reason: DropReason, n: u64) {
        if let Some(c) = self.0.get_mut(reason.index()) {
            *c += n;
        }
    }

    fn merge(&mut self, other: &DropCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
}

impl fmt::Display for DropCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (r, n) in self.nonzero() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{r}={n}")?;
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// Counters for one peer, as seen from this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Messages this node sent to the peer (one per copy of a broadcast), handed to the transport.
    pub sent: u64,
    /// Messages this node addressed to the peer that were dropped, by reason.
    pub dropped_to: DropCounts,
    /// Messages from the peer delivered to this node's inbox.
    pub delivered: u64,
    /// Messages from the peer that this node dropped on arrival, by reason.
    pub dropped_from: DropCounts,
    /// The newest incarnation of the peer seen in a frame, if any.
    pub incarnation: Option<crate::wire::Incarnation>,
}

/// A snapshot of a server's counters.
///
/// Every message copy this node sends is counted once in `sent`, and ends in the peer's
/// `delivered` or in a `dropped` count of one side. Every frame that arrives ends in
/// `delivered` or `dropped_incoming`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Message copies taken from the outbox, one per destination (self and unknown pids included).
    pub sent: u64,
    /// Messages put into this node's inbox (sends to self included).
    pub delivered: u64,
    /// Outgoing copies dropped here, by reason.
    pub dropped_outgoing: DropCounts,
    /// Incoming messages dropped here, by reason.
    pub dropped_incoming: DropCounts,
    /// Per configured pid (this node's own pid included, for sends to self).
    pub peers: BTreeMap<Pid, PeerStats>,
}

impl Stats {
    /// Outgoing and incoming drops together.
    pub fn dropped(&self) -> DropCounts {
        let mut all = self.dropped_outgoing;
        all.merge(&self.dropped_incoming);
        all
    }
}

#[derive(Default)]
struct Cells([AtomicU64; DropReason::ALL.len()]);

impl Cells {
    fn add(&self, reason: DropReason, n: u64) {
        if let Some(c) = self.0.get(reason.index()) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> DropCounts {
        let mut out = DropCounts::default();
        for (o, c) in out.0.iter_mut().zip(self.0.iter()) {
            *o = c.load(Ordering::Relaxed);
        }
        out
    }
}

#[derive(Default)]
struct PeerCells {
    sent: AtomicU64,
    dropped_to: Cells,
    delivered: AtomicU64,
    dropped_from: Cells,
    /// 0: none seen; otherwise incarnation + 1.
    incarnation: AtomicU64,
}

/// Live counters, written by the server's task and read by `stats()`.
pub(crate) struct StatsCells {
    pids: Vec<Pid>,
    peers: Vec<PeerCells>,
    sent: AtomicU64,
    delivered: AtomicU64,
    dropped_outgoing: Cells,
    dropped_incoming: Cells,
}

impl StatsCells {
    /// Counters for the configured `pids` (sorted ascending).
    pub(crate) fn new(pids: Vec<Pid>) -> Self {
        let peers = pids.iter().map(|_| PeerCells::default()).collect();
        Self {
            pids,
            peers,
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped_outgoing: Cells::default(),
            dropped_incoming: Cells::default(),
        }
    }

    fn peer(&self, pid: Pid) -> Option<&PeerCells> {
        self.pids
            .binary_search(&pid)
            .ok()
            .and_then(|i| self.peers.get(i))
    }

    pub(crate) fn sent(&self, to: Pid) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = self.peer(to) {
            p.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn dropped_to(&self, to: Pid, reason: DropReason, n: u64) {
        self.dropped_outgoing.add(reason, n);
        if let Some(p) = self.peer(to) {
            p.dropped_to.add(reason, n);
        }
    }

    pub(crate) fn delivered(&self, from: Pid) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = self.peer(from) {
            p.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `from` is `None` when the sender is unknown or the frame did not decode.
    pub(crate) fn dropped_from(&self, from: Option<Pid>, reason: DropReason) {
        self.dropped_incoming.add(reason, 1);
        if let Some(p) = from.and_then(|f| self.peer(f)) {
            p.dropped_from.add(reason, 1);
        }
    }

    pub(crate) fn seen_incarnation(&self, from: Pid, incarnation: crate::wire::Incarnation) {
        if let Some(p) = self.peer(from) {
            p.incarnation
                .store(u64::from(incarnation) + 1, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let peers = self
            .pids
            .iter()
            .zip(self.peers.iter())
            .map(|(pid, p)| {
                (
                    *pid,
                    PeerStats {
                        sent: p.sent.load(Ordering::Relaxed),
                        dropped_to: p.dropped_to.snapshot(),
                        delivered: p.delivered.load(Ordering::Relaxed),
                        dropped_from: p.dropped_from.snapshot(),
                        incarnation: p
                            .incarnation
                            .load(Ordering::Relaxed)
                            .checked_sub(1)
                            .and_then(|i| u32::try_from(i).ok()),
                    },
                )
            })
            .collect();
        Stats {
            sent: self.sent.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped_outgoing: self.dropped_outgoing.snapshot(),
            dropped_incoming: self.dropped_incoming.snapshot(),
            peers,
        }
    }
}
