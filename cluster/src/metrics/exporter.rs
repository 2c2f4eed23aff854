//! [`Exporter`]: a server's counters, published through the `metrics` facade.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_catalog::{PeerRecord, seen_between};
use cluster_core::{DropCounts, DropReason, Incarnation, Pid, ServerMonitor, Stats};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use tokio::sync::oneshot;

use super::names::*;
use super::{INCOMING, OUTGOING};

/// How often a spawned exporter publishes, by default (the catalog recorder's interval).
pub const DEFAULT_INTERVAL: Duration = cluster_catalog::DEFAULT_INTERVAL;

/// Publishes a server's counters and gauges (see [the module docs](super)) through the
/// `metrics` facade: once per [`publish`](Exporter::publish), or periodically once
/// [`spawn`](Exporter::spawn)ed.
///
/// With no recorder installed, publishing does nothing (the facade's no-op recorder).
#[derive(Debug)]
pub struct Exporter {
    monitor: ServerMonitor,
    incarnation: Option<Incarnation>,
    history: History,
    described: bool,
}

/// The peers' membership history: what the counters do not hold.
#[derive(Debug, Default)]
struct History {
    /// Every configured pid but this node's.
    peers: BTreeMap<Pid, Seen>,
}

/// What this exporter knows about a peer beyond the counters: the history that the
/// "last seen" rule needs, and the catalog's.
#[derive(Debug, Default, Clone, PartialEq)]
struct Seen {
    address: Option<String>,
    /// `None` before the first observation.
    up: Option<bool>,
    delivered: u64,
    incarnation: Option<Incarnation>,
    last_seen: Option<SystemTime>,
}

impl Exporter {
    /// An exporter of `monitor`'s server; its peers are the pids of the server's config.
    pub fn new(monitor: ServerMonitor) -> Self {
        let own = monitor.pid();
        let history = History::of(monitor.stats().peers.keys().filter(|p| **p != own).copied());
        Self {
            monitor,
            incarnation: None,
            history,
            described: false,
        }
    }

    /// Also publishes this node's incarnation (`cluster_node_incarnation`).
    pub fn with_incarnation(mut self, incarnation: Incarnation) -> Self {
        self.incarnation = Some(incarnation);
        self
    }

    /// Starts from a catalog's history: each configured peer's address, newest incarnation
    /// and last seen, as its records hold them (records of other pids are ignored). What the
    /// server observes later replaces them.
    pub fn with_history<'a>(mut self, records: impl IntoIterator<Item = &'a PeerRecord>) -> Self {
        self.history.load(records);
        self
    }

    /// Publishes a snapshot now.
    pub fn publish(&mut self) {
        if !self.described {
            describe();
            self.described = true;
        }
        let stats = self.monitor.stats();
        let connected: BTreeSet<Pid> = self.monitor.connected_peers().into_iter().collect();
        self.history.observe(&stats, &connected, SystemTime::now());
        self.emit(&stats, &connected);
    }

    /// Publishes every `interval`, and at once whenever a connection comes or goes, in a
    /// task of the current tokio runtime, until the returned task is dropped (which
    /// publishes once more). Outside a runtime it publishes once now and at drop only (and
    /// logs a warning).
    pub fn spawn(mut self, interval: Duration) -> ExporterTask {
        self.publish();
        let changes = self.monitor.connection_changes();
        let pid = self.monitor.pid();
        let shared = Arc::new(Mutex::new(self));
        let (stop_tx, stop_rx) = oneshot::channel();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(run(
                    Arc::clone(&shared),
                    changes,
                    stop_rx,
                    interval.max(Duration::from_millis(1)),
                ));
            }
            Err(_) => tracing::warn!(
                pid,
                "metrics exporter started outside a tokio runtime: it publishes only at start and stop"
            ),
        }
        ExporterTask {
            shared,
            _stop: stop_tx,
        }
    }

    fn emit(&self, stats: &Stats, connected: &BTreeSet<Pid>) {
        let own = self.monitor.pid();
        counter!(SENT).absolute(stats.sent);
        counter!(DELIVERED).absolute(stats.delivered);
        for (direction, drops) in [
            (OUTGOING, &stats.dropped_outgoing),
            (INCOMING, &stats.dropped_incoming),
        ] {
            for reason in DropReason::ALL {
                counter!(DROPPED, "direction" => direction, "reason" => reason.as_str())
                    .absolute(drops.get(reason));
            }
        }
        counter!(LOST_IN_TRANSIT).absolute(stats.lost_in_transit);
        counter!(UNCONFIRMED).absolute(stats.unconfirmed);
        for (pid, p) in &stats.peers {
            let peer = pid.to_string();
            counter!(PEER_SENT, "peer" => peer.clone()).absolute(p.sent);
            counter!(PEER_DELIVERED, "peer" => peer.clone()).absolute(p.delivered);
            emit_peer_drops(&peer, OUTGOING, &p.dropped_to);
            emit_peer_drops(&peer, INCOMING, &p.dropped_from);
            counter!(PEER_LOST_IN_TRANSIT, "peer" => peer.clone()).absolute(p.lost_in_transit);
            counter!(PEER_UNCONFIRMED, "peer" => peer.clone()).absolute(p.unconfirmed);
            gauge!(PEER_UNACKNOWLEDGED, "peer" => peer).set(p.unacknowledged as f64);
        }
        gauge!(CONNECTED_PEERS).set(connected.iter().filter(|p| **p != own).count() as f64);
        let (inbox, backlog) = self.monitor.inbox_depth();
        gauge!(INBOX_MESSAGES).set(inbox as f64);
        gauge!(INBOX_BACKLOG).set(backlog as f64);
        gauge!(UP_PEERS).set(self.monitor.up_peers().len() as f64);
        gauge!(CONFIGURED_PEERS).set(self.history.peers.len() as f64);
        for (pid, seen) in &self.history.peers {
            let peer = pid.to_string();
            gauge!(PEER_UP, "peer" => peer.clone()).set(if seen.up == Some(true) {
                1.0
            } else {
                0.0
            });
            if let Some(i) = seen.incarnation {
                gauge!(PEER_INCARNATION, "peer" => peer.clone()).set(f64::from(i));
            }
            if let Some(t) = seen.last_seen {
                gauge!(PEER_LAST_SEEN, "peer" => peer.clone()).set(unix_seconds(t));
            }
            if let Some(address) = &seen.address {
                gauge!(PEER_INFO, "peer" => peer, "address" => address.clone()).set(1.0);
            }
        }
        gauge!(NODE_INFO, "pid" => own.to_string()).set(1.0);
        if let Some(i) = self.incarnation {
            gauge!(NODE_INCARNATION).set(f64::from(i));
        }
    }
}

impl History {
    fn of(peers: impl IntoIterator<Item = Pid>) -> Self {
        Self {
            peers: peers.into_iter().map(|p| (p, Seen::default())).collect(),
        }
    }

    fn load<'a>(&mut self, records: impl IntoIterator<Item = &'a PeerRecord>) {
        for r in records {
            if let Some(seen) = self.peers.get_mut(&r.pid) {
                seen.address = Some(r.address.clone());
                seen.incarnation = r.incarnation;
                seen.last_seen = r.last_seen;
            }
        }
    }

    /// Brings the peers' history up to `stats` and `connected`, observed at `now`: a peer
    /// was last seen now if it was seen since the last observation by the catalog's rule
    /// ([`seen_between`]: its connection came up, or messages from it were delivered).
    fn observe(&mut self, stats: &Stats, connected: &BTreeSet<Pid>, now: SystemTime) {
        for (pid, seen) in &mut self.peers {
            let up = connected.contains(pid);
            let peer = stats.peers.get(pid).copied().unwrap_or_default();
            if seen_between(seen.up == Some(true), seen.delivered, up, peer.delivered) {
                seen.last_seen = Some(now);
            }
            seen.up = Some(up);
            seen.delivered = peer.delivered;
            if peer.incarnation.is_some() {
                seen.incarnation = peer.incarnation;
            }
        }
    }
}

fn emit_peer_drops(peer: &str, direction: &'static str, drops: &DropCounts) {
    // Only the reasons that happened: every reason for every peer would be 24 series a peer.
    for (reason, n) in drops.nonzero() {
        counter!(
            PEER_DROPPED,
            "peer" => peer.to_owned(),
            "direction" => direction,
            "reason" => reason.as_str()
        )
        .absolute(n);
    }
}

/// Seconds since the Unix epoch, with the catalog's millisecond precision.
fn unix_seconds(t: SystemTime) -> f64 {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    ms as f64 / 1000.0
}

/// Describes every metric to the installed recorder (units and help texts).
fn describe() {
    describe_counter!(
        SENT,
        "Message copies taken from the outbox, one per destination."
    );
    describe_counter!(DELIVERED, "Messages put into this node's inbox.");
    describe_counter!(
        DROPPED,
        "Messages dropped here, by direction (outgoing: on the way to a peer; incoming: on arrival) and reason."
    );
    describe_counter!(
        LOST_IN_TRANSIT,
        "Frames from peers lost after their transport accepted them (sequence gaps)."
    );
    describe_counter!(
        UNCONFIRMED,
        "Frames to peers that the peer never acknowledged before it went down."
    );
    describe_counter!(PEER_SENT, "Message copies sent to the peer.");
    describe_counter!(PEER_DELIVERED, "Messages from the peer delivered here.");
    describe_counter!(
        PEER_DROPPED,
        "Messages to (outgoing) or from (incoming) the peer dropped here, by reason."
    );
    describe_counter!(
        PEER_LOST_IN_TRANSIT,
        "Frames from the peer lost after its transport accepted them."
    );
    describe_counter!(
        PEER_UNCONFIRMED,
        "Frames to the peer never acknowledged before it went down."
    );
    describe_gauge!(
        PEER_UNACKNOWLEDGED,
        "Frames the transport accepted for the peer that it has not acknowledged yet."
    );
    describe_gauge!(CONNECTED_PEERS, "Peers with a live connection.");
    describe_gauge!(
        INBOX_MESSAGES,
        "Envelopes in this node's inbox, waiting to be read."
    );
    describe_gauge!(
        INBOX_BACKLOG,
        "Frames taken off the transport that wait for room in the inbox."
    );
    describe_gauge!(UP_PEERS, "Peers up: messages flow both ways (peer events).");
    describe_gauge!(CONFIGURED_PEERS, "Peers in the config, this node excluded.");
    describe_gauge!(PEER_UP, "1 while the peer is connected, else 0.");
    describe_gauge!(PEER_INCARNATION, "The peer's newest incarnation known.");
    describe_gauge!(
        PEER_LAST_SEEN,
        metrics::Unit::Seconds,
        "When the peer was last known alive, in seconds since the Unix epoch."
    );
    describe_gauge!(PEER_INFO, "1, labelled with the peer's address.");
    describe_gauge!(NODE_INFO, "1, labelled with this node's pid.");
    describe_gauge!(NODE_INCARNATION, "This node's incarnation.");
}

/// A spawned [`Exporter`]: publishes until dropped, and once more when dropped (so that
/// what a stopped server last counted is published).
pub struct ExporterTask {
    shared: Arc<Mutex<Exporter>>,
    /// Dropping it stops the task at its next wake-up.
    _stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for ExporterTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExporterTask").finish_non_exhaustive()
    }
}

impl ExporterTask {
    /// Publishes a snapshot now, between the periodic ones.
    pub fn publish(&self) {
        lock(&self.shared).publish();
    }
}

impl Drop for ExporterTask {
    fn drop(&mut self) {
        lock(&self.shared).publish();
    }
}

fn lock(shared: &Mutex<Exporter>) -> MutexGuard<'_, Exporter> {
    // Publishing leaves nothing half-done that a panic could expose; keep going.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run(
    shared: Arc<Mutex<Exporter>>,
    mut changes: tokio::sync::watch::Receiver<cluster_core::PeerSet>,
    mut stop: oneshot::Receiver<()>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changes_open = true;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {}
            changed = changes.changed(), if changes_open => {
                changes_open = changed.is_ok();
            }
        }
        lock(&shared).publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(delivered: &[(Pid, u64)], incarnation: &[(Pid, Incarnation)]) -> Stats {
        let mut s = Stats::default();
        for (pid, n) in delivered {
            s.peers.entry(*pid).or_default().delivered = *n;
        }
        for (pid, i) in incarnation {
            s.peers.entry(*pid).or_default().incarnation = Some(*i);
        }
        s
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn last_seen_follows_the_catalogs_rule() {
        let mut h = History::of([2, 3]);
        let mut two = PeerRecord::new(2, "127.0.0.1:7002");
        two.incarnation = Some(4);
        two.last_seen = Some(at(10));
        let stranger = PeerRecord::new(9, "127.0.0.1:7009");
        h.load([&two, &stranger]);
        assert_eq!(h.peers.keys().copied().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(h.peers[&2].incarnation, Some(4));
        assert_eq!(h.peers[&2].address.as_deref(), Some("127.0.0.1:7002"));

        // Down and silent: the history stays.
        h.observe(&stats(&[], &[]), &BTreeSet::new(), at(20));
        assert_eq!(h.peers[&2].last_seen, Some(at(10)));
        assert_eq!(h.peers[&3].last_seen, None);
        assert_eq!(h.peers[&2].up, Some(false));
        // Comes up: seen then; staying up without a word: not seen again.
        h.observe(&stats(&[], &[]), &BTreeSet::from([2]), at(30));
        assert_eq!(h.peers[&2].last_seen, Some(at(30)));
        h.observe(&stats(&[], &[]), &BTreeSet::from([2]), at(40));
        assert_eq!(h.peers[&2].last_seen, Some(at(30)));
        // A delivery counts, and a frame's incarnation replaces the history's.
        h.observe(&stats(&[(2, 5)], &[(2, 6)]), &BTreeSet::from([2]), at(50));
        assert_eq!(h.peers[&2].last_seen, Some(at(50)));
        assert_eq!(h.peers[&2].incarnation, Some(6));
        // Goes down: when it was last seen stays.
        h.observe(&stats(&[(2, 5)], &[(2, 6)]), &BTreeSet::new(), at(60));
        assert_eq!(h.peers[&2].last_seen, Some(at(50)));
        assert_eq!(h.peers[&2].up, Some(false));
        // Deliveries without a connection (in memory there is none to see) count too.
        h.observe(&stats(&[(3, 1)], &[]), &BTreeSet::new(), at(70));
        assert_eq!(h.peers[&3].last_seen, Some(at(70)));
    }

    #[test]
    fn seconds_keep_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_144_062_123);
        assert_eq!(unix_seconds(t), 1_764_144_062.123);
    }
}
