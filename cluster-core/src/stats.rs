//! Counters: every message ends as delivered or dropped with a reason (contract C7).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::envelope::Pid;

/// Why a message was dropped.
///
/// Serializes as its [`as_str`](DropReason::as_str) name (`"unknown_peer"`, …).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DropReason {
    /// The destination pid is not in the config.
    UnknownPeer,
    /// The destination had no live connection (down, or a silent cut was detected), or the
    /// receiving server had closed its inbox.
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
    /// The frame is of another format version (a version-1 frame, from an older build).
    UnsupportedVersion,
    /// The frame's sequence number is not above the highest already seen from the same
    /// incarnation of its sender: a duplicate or a replay.
    Replayed,
    /// The frame's tag does not check with this node's cluster key (forged, altered, from
    /// another cluster, unkeyed at a keyed node, or keyed at an unkeyed node).
    Unauthenticated,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 12] = [
        Self::UnknownPeer,
        Self::Unreachable,
        Self::Backpressure,
        Self::Partitioned,
        Self::Injected,
        Self::Malformed,
        Self::UnknownSender,
        Self::StaleIncarnation,
        Self::TooLarge,
        Self::UnsupportedVersion,
        Self::Replayed,
        Self::Unauthenticated,
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
            Self::UnsupportedVersion => "unsupported_version",
            Self::Replayed => "replayed",
            Self::Unauthenticated => "unauthenticated",
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
        // Saturating: counts a hostile peer can inflate must never overflow.
        self.0.iter().fold(0, |sum, n| sum.saturating_add(*n))
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
            *c = c.saturating_add(n);
        }
    }

    fn merge(&mut self, other: &DropCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.saturating_add(*b);
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
    /// Frames from the peer that its transport accepted but that never arrived here: the
    /// gaps in the sequence numbers of each of its incarnations. Not a drop reason and not
    /// in any `dropped` total: where the sender could tell (in simulation, always), it
    /// counted the loss itself, so adding it here would count it twice.
    pub lost_in_transit: u64,
    /// Messages to the peer that the transport accepted but the peer never acknowledged
    /// before it went down (or restarted): real networks only (see the crate docs, "C7 on
    /// real sockets"). Some may have arrived, their acknowledgement lost with the peer.
    pub unconfirmed: u64,
    /// A gauge, not a counter: messages to the peer that the transport accepted and the
    /// peer has not acknowledged yet (real networks only; 0 elsewhere).
    pub unacknowledged: u64,
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
    /// Sum of the peers' [`PeerStats::lost_in_transit`].
    pub lost_in_transit: u64,
    /// Sum of the peers' [`PeerStats::unconfirmed`].
    pub unconfirmed: u64,
}

impl Stats {
    /// Outgoing and incoming drops together.
    pub fn dropped(&self) -> DropCounts {
        let mut all = self.dropped_outgoing;
        all.merge(&self.dropped_incoming);
        all
    }
}

/// A counter with one writer, the server's task, and any number of readers (`stats()`).
///
/// With a single writer, a relaxed load and store is an exact increment; it avoids the
/// locked read-modify-write of `fetch_add`, which is most of the cost of counting on the
/// per-message path. Every write happens on the server's task, so writes are ordered even
/// when the runtime moves the task between threads.
#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    fn add(&self, n: u64) {
        let c = &self.0;
        c.store(
            c.load(Ordering::Relaxed).saturating_add(n),
            Ordering::Relaxed,
        );
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Cells([Counter; DropReason::ALL.len()]);

impl Cells {
    fn add(&self, reason: DropReason, n: u64) {
        if let Some(c) = self.0.get(reason.index()) {
            c.add(n);
        }
    }

    fn snapshot(&self) -> DropCounts {
        let mut out = DropCounts::default();
        for (o, c) in out.0.iter_mut().zip(self.0.iter()) {
            *o = c.get();
        }
        out
    }
}

#[derive(Default)]
struct PeerCells {
    sent: Counter,
    dropped_to: Cells,
    delivered: Counter,
    dropped_from: Cells,
    /// 0: none seen; otherwise incarnation + 1.
    incarnation: AtomicU64,
    lost_in_transit: Counter,
    unconfirmed: Counter,
    unacknowledged: AtomicU64,
}

/// Live counters, written by the server's task only and read by `stats()`.
///
/// `sent` and `delivered` are counted once per message, per peer; their totals are summed
/// when a snapshot is taken, so a snapshot's totals always equal the sum of its peers.
pub(crate) struct StatsCells {
    pids: Vec<Pid>,
    peers: Vec<PeerCells>,
    /// Peers that joined at run time (membership), each once, kept after they leave.
    joined: std::sync::RwLock<Vec<(Pid, Arc<PeerCells>)>>,
    /// Copies sent to pids outside the config (they have no per-peer counters).
    sent_unknown: Counter,
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
            joined: std::sync::RwLock::new(Vec::new()),
            sent_unknown: Counter::default(),
            dropped_outgoing: Cells::default(),
            dropped_incoming: Cells::default(),
        }
    }

    /// Counters for `pid`, which joined at run time (no-op if it has them already).
    pub(crate) fn add_peer(&self, pid: Pid) {
        if self.configured(pid).is_some() {
            return;
        }
        let mut joined = self.joined.write().unwrap_or_else(|e| e.into_inner());
        if !joined.iter().any(|(p, _)| *p == pid) {
            joined.push((pid, Arc::new(PeerCells::default())));
        }
    }

    fn configured(&self, pid: Pid) -> Option<&PeerCells> {
        // Pids are usually consecutive, which makes a pid's index its distance to the first.
        let guess = self
            .pids
            .first()
            .and_then(|first| usize::try_from(pid.wrapping_sub(*first)).ok());
        let index = match guess {
            Some(i) if self.pids.get(i) == Some(&pid) => i,
            _ => self.pids.binary_search(&pid).ok()?,
        };
        self.peers.get(index)
    }

    /// Runs `f` on `pid`'s counters, if it has any: the config's peers without a lock,
    /// peers that joined at run time under a read lock.
    fn with_peer<R>(&self, pid: Pid, f: impl FnOnce(&PeerCells) -> R) -> Option<R> {
        if let Some(p) = self.configured(pid) {
            return Some(f(p));
        }
        let joined = self.joined.read().unwrap_or_else(|e| e.into_inner());
        let p = joined.iter().find(|(p, _)| *p == pid)?;
        Some(f(&p.1))
    }

    pub(crate) fn sent(&self, to: Pid) {
        if self.with_peer(to, |p| p.sent.add(1)).is_none() {
            self.sent_unknown.add(1);
        }
    }

    pub(crate) fn dropped_to(&self, to: Pid, reason: DropReason, n: u64) {
        self.dropped_outgoing.add(reason, n);
        self.with_peer(to, |p| p.dropped_to.add(reason, n));
    }

    /// `from` must be a configured pid: messages from elsewhere are never delivered.
    pub(crate) fn delivered(&self, from: Pid) {
        self.with_peer(from, |p| p.delivered.add(1));
    }

    /// `from` is `None` when the sender is unknown or the frame did not decode.
    pub(crate) fn dropped_from(&self, from: Option<Pid>, reason: DropReason) {
        self.dropped_incoming.add(reason, 1);
        if let Some(from) = from {
            self.with_peer(from, |p| p.dropped_from.add(reason, 1));
        }
    }

    /// `n` frames from `from` were lost after its transport accepted them (a sequence gap).
    pub(crate) fn lost_in_transit(&self, from: Pid, n: u64) {
        self.with_peer(from, |p| p.lost_in_transit.add(n));
    }

    /// `n` frames to `to` that its transport accepted were never acknowledged.
    pub(crate) fn unconfirmed(&self, to: Pid, n: u64) {
        self.with_peer(to, |p| p.unconfirmed.add(n));
    }

    /// Sets the gauge of frames to `to` awaiting acknowledgement.
    pub(crate) fn unacknowledged(&self, to: Pid, n: usize) {
        self.with_peer(to, |p| p.unacknowledged.store(n as u64, Ordering::Relaxed));
    }

    pub(crate) fn seen_incarnation(&self, from: Pid, incarnation: crate::wire::Incarnation) {
        self.with_peer(from, |p| {
            p.incarnation
                .store(u64::from(incarnation) + 1, Ordering::Relaxed);
        });
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let mut sent = self.sent_unknown.get();
        let mut delivered = 0;
        let mut lost_in_transit = 0;
        let mut unconfirmed = 0;
        let joined = self.joined.read().unwrap_or_else(|e| e.into_inner());
        let peers = self
            .pids
            .iter()
            .zip(self.peers.iter())
            .chain(joined.iter().map(|(pid, p)| (pid, &**p)))
            .map(|(pid, p)| {
                let peer = PeerStats {
                    sent: p.sent.get(),
                    dropped_to: p.dropped_to.snapshot(),
                    delivered: p.delivered.get(),
                    dropped_from: p.dropped_from.snapshot(),
                    incarnation: p
                        .incarnation
                        .load(Ordering::Relaxed)
                        .checked_sub(1)
                        .and_then(|i| u32::try_from(i).ok()),
                    lost_in_transit: p.lost_in_transit.get(),
                    unconfirmed: p.unconfirmed.get(),
                    unacknowledged: p.unacknowledged.load(Ordering::Relaxed),
                };
                // Saturating: a forged gap can make `lost_in_transit` huge.
                sent = u64::saturating_add(sent, peer.sent);
                lost_in_transit = u64::saturating_add(lost_in_transit, peer.lost_in_transit);
                unconfirmed = u64::saturating_add(unconfirmed, peer.unconfirmed);
                delivered = u64::saturating_add(delivered, peer.delivered);
                (*pid, peer)
            })
            .collect();
        Stats {
            sent,
            delivered,
            dropped_outgoing: self.dropped_outgoing.snapshot(),
            dropped_incoming: self.dropped_incoming.snapshot(),
            peers,
            lost_in_transit,
            unconfirmed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_the_sum_of_peers_plus_unknown_pids() {
        let cells = StatsCells::new(vec![1, 2, 3]);
        cells.sent(2);
        cells.sent(2);
        cells.sent(3);
        cells.sent(9);
        cells.dropped_to(9, DropReason::UnknownPeer, 1);
        cells.delivered(1);
        cells.delivered(3);
        cells.dropped_from(None, DropReason::Malformed);
        cells.dropped_from(Some(3), DropReason::StaleIncarnation);
        let s = cells.snapshot();
        assert_eq!(s.sent, 4);
        assert_eq!(s.delivered, 2);
        assert_eq!(s.peers[&2].sent, 2);
        assert_eq!(s.peers[&3].delivered, 1);
        assert_eq!(s.dropped_outgoing.get(DropReason::UnknownPeer), 1);
        assert_eq!(s.dropped_incoming.total(), 2);
        assert_eq!(
            s.peers[&3].dropped_from.get(DropReason::StaleIncarnation),
            1
        );
    }
}
