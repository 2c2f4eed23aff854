//! The recorded history of a run: every fault, send, routing decision, arrival and delivery,
//! in one total order, exportable as JSON lines.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use cluster_core::{DropCounts, DropReason, Incarnation, MsgId, Pid, Stats};
use serde::{Deserialize, Serialize};

/// Nonzero drop counts by reason, for the JSON export of [`Stats`]: [`DropCounts`] is a
/// fixed array, which would serialize as numbers without their reasons.
pub type ReasonCounts = std::collections::BTreeMap<DropReason, u64>;

pub(crate) fn reason_counts(d: &DropCounts) -> ReasonCounts {
    d.nonzero().collect()
}

/// One thing that happened. `from`/`to`/`at` are pids; `incarnation` is the sender's unless
/// the field says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The run began: the configured pids, the seed, the backend and its timing.
    Begin {
        /// Every configured pid, ascending.
        pids: Vec<Pid>,
        /// The run's seed.
        seed: u64,
        /// The backend's name (`mem`, a mutant, `zmq-libzmq`, …).
        backend: String,
        /// The "may go either way" window around a fault, in µs; `None` for exact simulation.
        window_us: Option<u64>,
    },
    /// A node (re)started as `incarnation`.
    Start {
        /// The node.
        pid: Pid,
        /// Its incarnation.
        incarnation: Incarnation,
    },
    /// A node crashed.
    Crash {
        /// The node.
        pid: Pid,
    },
    /// Every link between `a` and `b` was cut, both ways.
    Partition {
        /// One side.
        a: Vec<Pid>,
        /// The other side.
        b: Vec<Pid>,
    },
    /// The one-way link `from → to` was cut.
    Cut {
        /// Sending side.
        from: Pid,
        /// Receiving side.
        to: Pid,
    },
    /// Every cut, partition and loss setting was removed.
    Heal,
    /// Link `from → to` loses each frame with probability `p`.
    SetLoss {
        /// Sending side.
        from: Pid,
        /// Receiving side.
        to: Pid,
        /// Loss probability.
        p: f64,
    },
    /// The user put an envelope into `from`'s outbox.
    Send {
        /// The sender.
        from: Pid,
        /// The sender's incarnation.
        incarnation: Incarnation,
        /// The destination as written: a pid, the sender itself, `-1` (broadcast), or unknown.
        to: Pid,
        /// The message id.
        msg_id: MsgId,
        /// The message, as JSON.
        payload: serde_json::Value,
    },
    /// The sender's server handed one copy to its transport (`refused`: the transport said no).
    Routed {
        /// The sender.
        from: Pid,
        /// The sender's incarnation (from the frame header).
        incarnation: Incarnation,
        /// The copy's destination.
        to: Pid,
        /// The message id.
        msg_id: MsgId,
        /// `None` if the transport accepted the frame, else the reason it gave.
        refused: Option<DropReason>,
    },
    /// A frame came up from the transport of `at` to its server.
    Arrived {
        /// The receiving node.
        at: Pid,
        /// The receiver's incarnation.
        at_incarnation: Incarnation,
        /// The sender claimed by the frame header; `None` if the bytes are not a frame.
        from: Option<Pid>,
        /// The sender's incarnation claimed by the header.
        incarnation: Option<Incarnation>,
        /// The message id claimed by the header.
        msg_id: Option<MsgId>,
    },
    /// The user took an envelope from the inbox of `at`.
    Delivered {
        /// The receiving node.
        at: Pid,
        /// The receiver's incarnation.
        at_incarnation: Incarnation,
        /// The sender (the envelope's `pid`).
        from: Pid,
        /// The message id.
        msg_id: MsgId,
        /// The message, as JSON.
        payload: serde_json::Value,
    },
    /// The server of `at` dropped a frame that had arrived (stale incarnation, malformed,
    /// inbox full, …). Header fields are `None` when the bytes were not a frame.
    Dropped {
        /// The receiving node.
        at: Pid,
        /// The receiver's incarnation.
        at_incarnation: Incarnation,
        /// The sender claimed by the frame header.
        from: Option<Pid>,
        /// The sender's incarnation claimed by the header.
        incarnation: Option<Incarnation>,
        /// The message id claimed by the header.
        msg_id: Option<MsgId>,
        /// Why the server dropped it.
        reason: DropReason,
    },
    /// The simulated network discarded a frame it had accepted, because a fault hit its link
    /// while it was in flight (crash of either end: `unreachable`; cut: `partitioned`).
    Discarded {
        /// The sender.
        from: Pid,
        /// The sender's incarnation.
        incarnation: Incarnation,
        /// The destination.
        to: Pid,
        /// The message id.
        msg_id: MsgId,
        /// Why.
        reason: DropReason,
    },
    /// The transport of `at` reported frames it had accepted and then discarded.
    TransportDropped {
        /// The reporting node.
        at: Pid,
        /// The destination of the discarded frames.
        peer: Pid,
        /// Why.
        reason: DropReason,
        /// How many.
        count: u64,
    },
    /// Hostile bytes were pushed into the transport of `to`.
    Raw {
        /// The receiving node.
        to: Pid,
        /// How many bytes.
        len: usize,
    },
    /// Hostile bytes were put on the port of `to`, as by a stranger on the network (a
    /// scenario's `Hostile` op; contract C9).
    Injected {
        /// The receiving node.
        to: Pid,
        /// Its incarnation.
        at_incarnation: Incarnation,
        /// What the bytes are.
        bytes: crate::scenario::HostileBytes,
        /// How many bytes.
        len: usize,
        /// `None` if the network took them, else why it refused them (a full queue).
        refused: Option<DropReason>,
    },
    /// Simulation: each node's receive queue holds at most `frames` frames accepted for it
    /// and not yet taken by its server; one more is refused as `backpressure` (contract C6).
    QueueBound {
        /// `peer_queue` for each of the node's peers, as in `cluster_mem::MemNetwork`.
        frames: u64,
    },
    /// The harness waited until the network was quiet.
    Settled {
        /// Frames still in flight (0 in simulation).
        in_flight: u64,
        /// Whether quiet was reached before the deadline; `false` means a stall.
        quiet: bool,
    },
    /// A node incarnation's final counters.
    Stats {
        /// The node.
        pid: Pid,
        /// Its incarnation.
        incarnation: Incarnation,
        /// `Stats::sent`.
        sent: u64,
        /// `Stats::delivered`.
        delivered: u64,
        /// `Stats::dropped_outgoing`, by reason.
        dropped_outgoing: ReasonCounts,
        /// `Stats::dropped_incoming`, by reason.
        dropped_incoming: ReasonCounts,
        /// `Stats::lost_in_transit` (real networks; omitted when 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        lost_in_transit: u64,
        /// `Stats::unconfirmed` (real networks; omitted when 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        unconfirmed: u64,
        /// Messages still awaiting acknowledgement, the sum of `PeerStats::unacknowledged`
        /// (real networks; omitted when 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        unacknowledged: u64,
    },
    /// Frames the network accepted and later discarded, outside any server's counters.
    NetDiscarded {
        /// By reason.
        discarded: ReasonCounts,
    },
    /// A free-form note (e.g. from a user's node logic).
    Note {
        /// The text.
        text: String,
    },
    /// A node's logic reported a violation (`NodeContext::fail`) or panicked: the run fails.
    NodeFailed {
        /// The node.
        pid: Pid,
        /// Its incarnation.
        incarnation: Incarnation,
        /// `true` for a panic, `false` for a reported violation.
        panicked: bool,
        /// What it said.
        message: String,
    },
    /// A node told one of its peer events ([`Server::events`](cluster_core::Server::events)):
    /// recorded as the harness takes it from the node's subscription, which it makes when
    /// the node (re)starts (see [`SimCluster`](crate::SimCluster)).
    PeerEvent {
        /// The node that told it.
        at: Pid,
        /// Its incarnation.
        at_incarnation: Incarnation,
        /// What it told.
        change: PeerChange,
        /// When, as time since the node's server started
        /// ([`PeerEvent::uptime`](cluster_core::PeerEvent::uptime)), in µs: tokio's clock,
        /// simulated when it is paused; never the wall clock, so that a run replays exactly.
        uptime_us: u64,
    },
    /// A node's peer-event subscription fell behind and lost this many events (the oracle
    /// then cannot tell what the node missed: see [`oracle::check_events`](crate::oracle::check_events)).
    PeerEventsLost {
        /// The node.
        at: Pid,
        /// Its incarnation.
        at_incarnation: Incarnation,
        /// How many events were lost.
        lost: u64,
    },
}

/// A peer event as the history writes it: [`cluster_core::Event`], named by the peer it is
/// about (a history [`Event`] is something else).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PeerChange {
    /// Messages flow both ways between the node and `peer`.
    Up {
        /// The peer.
        peer: Pid,
    },
    /// The node's connection to `peer` went down.
    Down {
        /// The peer.
        peer: Pid,
    },
    /// A newer incarnation of `peer` was heard from.
    Restarted {
        /// The peer.
        peer: Pid,
        /// Its new incarnation.
        incarnation: Incarnation,
    },
    /// `peer` joined the cluster.
    Joined {
        /// The peer.
        peer: Pid,
    },
    /// `peer` left the cluster.
    Left {
        /// The peer.
        peer: Pid,
    },
}

impl PeerChange {
    /// The change a core event stands for; `None` for an event this build of the test
    /// kit does not know (the core's enum is non-exhaustive).
    pub fn from_core(event: &cluster_core::Event) -> Option<Self> {
        use cluster_core::Event as Core;
        Some(match *event {
            Core::Up(peer) => PeerChange::Up { peer },
            Core::Down(peer) => PeerChange::Down { peer },
            Core::Restarted { pid, incarnation } => PeerChange::Restarted {
                peer: pid,
                incarnation,
            },
            Core::Joined(peer) => PeerChange::Joined { peer },
            Core::Left(peer) => PeerChange::Left { peer },
            _ => return None,
        })
    }

    /// The peer it is about.
    pub fn peer(&self) -> Pid {
        match *self {
            PeerChange::Up { peer }
            | PeerChange::Down { peer }
            | PeerChange::Restarted { peer, .. }
            | PeerChange::Joined { peer }
            | PeerChange::Left { peer } => peer,
        }
    }
}

impl fmt::Display for PeerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerChange::Up { peer } => write!(f, "up {peer}"),
            PeerChange::Down { peer } => write!(f, "down {peer}"),
            PeerChange::Restarted { peer, incarnation } => {
                write!(f, "restarted {peer} (incarnation {incarnation})")
            }
            PeerChange::Joined { peer } => write!(f, "joined {peer}"),
            PeerChange::Left { peer } => write!(f, "left {peer}"),
        }
    }
}

impl Event {
    pub(crate) fn stats(pid: Pid, incarnation: Incarnation, s: &Stats) -> Self {
        Event::Stats {
            pid,
            incarnation,
            sent: s.sent,
            delivered: s.delivered,
            dropped_outgoing: reason_counts(&s.dropped_outgoing),
            dropped_incoming: reason_counts(&s.dropped_incoming),
            lost_in_transit: s.lost_in_transit,
            unconfirmed: s.unconfirmed,
            unacknowledged: s.peers.values().map(|p| p.unacknowledged).sum(),
        }
    }
}

/// For serde: leaves zero counts out of the history.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The name of one message: who sent it, as which incarnation, and its place among the
/// messages that incarnation handed to the network (from 1; the copies of a broadcast share
/// it). Written `pid.incarnation#seq`, e.g. `2.1#7`.
///
/// Message ids are the user's to choose (they may repeat, e.g. always 0); names do not, so
/// a record can always be traced to the message it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgRef {
    /// The sender.
    pub from: Pid,
    /// The sender's incarnation.
    pub incarnation: Incarnation,
    /// The message's place among those this incarnation sent, from 1.
    pub seq: u64,
}

impl fmt::Display for MsgRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}#{}", self.from, self.incarnation, self.seq)
    }
}

impl FromStr for MsgRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("message name {s:?} is not pid.incarnation#seq");
        let (who, seq) = s.split_once('#').ok_or_else(bad)?;
        let (from, incarnation) = who.split_once('.').ok_or_else(bad)?;
        Ok(MsgRef {
            from: from.parse().map_err(|_| bad())?,
            incarnation: incarnation.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

// As its `pid.incarnation#seq` text: the JSON lines stay readable.
impl Serialize for MsgRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MsgRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An [`Event`] with its place in the total order and its time since the run began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the history, from 0.
    pub seq: u64,
    /// Microseconds since the run began, on tokio's clock: simulated time when the clock is
    /// paused (as simulated runs have it), else real time.
    pub at_us: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
    /// The message the record is about, when the harness could tell (simulated runs name
    /// every frame a node sends and receives; see [`MsgRef`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<MsgRef>,
    /// A one-line summary of the message's payload, if a summary function was given
    /// (`SimBuilder::summary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

impl Record {
    /// A record about no message in particular.
    pub fn new(seq: u64, at_us: u64, event: Event) -> Self {
        Self {
            seq,
            at_us,
            event,
            msg: None,
            summary: None,
        }
    }
}

/// What the harness knows of the message in a frame that is about to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MsgTag {
    pub(crate) msg: Option<MsgRef>,
    pub(crate) summary: Option<String>,
}

/// Which record a [`MsgTag`] waits for: the frame header it must match, so that a tag can
/// never name the wrong record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TagFor {
    /// The `Routed` record of a copy `from → to`.
    Routed { from: Pid, to: Pid, msg_id: MsgId },
    /// The `Arrived` record of a frame at `at`.
    Arrived {
        at: Pid,
        from: Pid,
        incarnation: Incarnation,
        msg_id: MsgId,
    },
}

/// A shared, append-only history. Cheap to clone; clones append to the same log.
#[derive(Clone)]
pub struct History {
    inner: Arc<Mutex<Log>>,
}

struct Log {
    start: tokio::time::Instant,
    records: Vec<Record>,
    enabled: bool,
    /// Set once the run is over: later events (a stopping node's last arrivals, whose order
    /// the harness does not control) are not recorded, so that a history replays exactly.
    closed: bool,
    /// Per node, the tag for the next `Routed` or `Arrived` record of that node.
    pending: BTreeMap<Pid, (TagFor, MsgTag)>,
    /// Per node, the header and tag of its last arrival: a `Dropped` record that follows
    /// is about the same frame.
    last_arrival: BTreeMap<Pid, ((Pid, Incarnation, MsgId), MsgTag)>,
    /// `(at, from, msg_id)` → the tag of the latest arrival with that header, for the
    /// `Delivered` record the harness writes when it takes the message from the inbox.
    arrived: BTreeMap<(Pid, Pid, MsgId), MsgTag>,
}

impl Log {
    /// The tag an event carries, from what the harness told about its frame.
    fn tag_of(&mut self, event: &Event) -> Option<MsgTag> {
        match *event {
            Event::Routed {
                from, to, msg_id, ..
            } => {
                let (wanted, tag) = self.pending.remove(&from)?;
                (wanted == TagFor::Routed { from, to, msg_id }).then_some(tag)
            }
            Event::Arrived {
                at,
                from: Some(from),
                incarnation: Some(incarnation),
                msg_id: Some(msg_id),
                ..
            } => {
                let (wanted, tag) = self.pending.remove(&at)?;
                let header = (from, incarnation, msg_id);
                if wanted
                    != (TagFor::Arrived {
                        at,
                        from,
                        incarnation,
                        msg_id,
                    })
                {
                    self.last_arrival.remove(&at);
                    return None;
                }
                self.last_arrival.insert(at, (header, tag.clone()));
                self.arrived.insert((at, from, msg_id), tag.clone());
                Some(tag)
            }
            Event::Arrived { at, .. } => {
                // Bytes that are not a frame: nothing to name, and no older tag may stick.
                self.pending.remove(&at);
                self.last_arrival.remove(&at);
                None
            }
            Event::Dropped {
                at,
                from: Some(from),
                incarnation: Some(incarnation),
                msg_id: Some(msg_id),
                ..
            } => {
                let (header, tag) = self.last_arrival.get(&at)?;
                (*header == (from, incarnation, msg_id)).then(|| tag.clone())
            }
            Event::Delivered {
                at, from, msg_id, ..
            } => self.arrived.get(&(at, from, msg_id)).cloned(),
            _ => None,
        }
    }
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History")
            .field("records", &self.log().records.len())
            .finish()
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history that records.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Log {
                start: tokio::time::Instant::now(),
                records: Vec::new(),
                enabled: true,
                closed: false,
                pending: BTreeMap::new(),
                last_arrival: BTreeMap::new(),
                arrived: BTreeMap::new(),
            })),
        }
    }

    /// A history that records nothing (for benchmarks).
    pub fn disabled() -> Self {
        let h = Self::new();
        h.log().enabled = false;
        h
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this history records.
    pub fn is_enabled(&self) -> bool {
        let log = self.log();
        log.enabled && !log.closed
    }

    /// Stops recording for good: what happens after the run is over is not part of it.
    pub(crate) fn close(&self) {
        self.log().closed = true;
    }

    /// Appends `event` and returns its sequence number.
    pub fn push(&self, event: Event) -> u64 {
        self.push_tagged(event, None)
    }

    /// Appends `event`, naming the message it is about with `tag` if given, else with what
    /// the harness told of its frame ([`History::tag_next`]).
    pub(crate) fn push_tagged(&self, event: Event, tag: Option<MsgTag>) -> u64 {
        let mut log = self.log();
        let seq = log.records.len() as u64;
        if log.enabled && !log.closed {
            let at_us = u64::try_from(log.start.elapsed().as_micros()).unwrap_or(u64::MAX);
            let tag = tag.or_else(|| log.tag_of(&event));
            let mut record = Record::new(seq, at_us, event);
            if let Some(tag) = tag {
                record.msg = tag.msg;
                record.summary = tag.summary;
            }
            log.records.push(record);
        }
        seq
    }

    /// Names the frame whose record `node`'s probe is about to write (the copy it routes,
    /// or the frame that arrived at it): the tag is attached to that record if its header
    /// matches `wanted`, and dropped otherwise.
    pub(crate) fn tag_next(&self, node: Pid, wanted: TagFor, tag: MsgTag) {
        let mut log = self.log();
        if log.enabled && !log.closed {
            log.pending.insert(node, (wanted, tag));
        }
    }

    /// A copy of every record so far.
    pub fn records(&self) -> Vec<Record> {
        self.log().records.clone()
    }

    /// How many records so far.
    pub fn len(&self) -> usize {
        self.log().records.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The history as JSON lines: one record per line, in order.
    pub fn to_json_lines(&self) -> String {
        to_json_lines(&self.log().records)
    }

    /// Writes the history as JSON lines to `path`.
    pub fn write_json_lines(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        std::fs::write(path, self.to_json_lines())
    }
}

/// Renders records as JSON lines.
pub fn to_json_lines(records: &[Record]) -> String {
    let mut out = String::new();
    for r in records {
        // Serializing these plain types cannot fail; skip rather than panic if it ever did.
        if let Ok(line) = serde_json::to_string(r) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Parses JSON lines written by [`History::to_json_lines`].
pub fn from_json_lines(text: &str) -> Result<Vec<Record>, serde_json::Error> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_read_back_and_stay_off_records_without_one() {
        let name = MsgRef {
            from: 2,
            incarnation: 1,
            seq: 7,
        };
        assert_eq!(name.to_string(), "2.1#7");
        assert_eq!("2.1#7".parse::<MsgRef>(), Ok(name));
        assert!("2.1".parse::<MsgRef>().is_err());
        let h = History::new();
        h.push(Event::Heal);
        h.tag_next(
            2,
            TagFor::Routed {
                from: 2,
                to: 3,
                msg_id: 0,
            },
            MsgTag {
                msg: Some(name),
                summary: Some("Vote { term: 3 }".into()),
            },
        );
        h.push(Event::Routed {
            from: 2,
            incarnation: 1,
            to: 3,
            msg_id: 0,
            refused: None,
        });
        let text = h.to_json_lines();
        let lines: Vec<&str> = text.lines().collect();
        assert!(!lines[0].contains("msg"), "{text}");
        assert!(
            lines[1].ends_with(r#""msg":"2.1#7","summary":"Vote { term: 3 }"}"#),
            "{text}"
        );
        assert_eq!(from_json_lines(&text).unwrap(), h.records());
    }

    /// A tag names only the record it was meant for.
    #[test]
    fn a_tag_for_another_copy_is_not_attached() {
        let h = History::new();
        let tag = MsgTag {
            msg: Some(MsgRef {
                from: 1,
                incarnation: 1,
                seq: 1,
            }),
            summary: None,
        };
        h.tag_next(
            1,
            TagFor::Routed {
                from: 1,
                to: 2,
                msg_id: 5,
            },
            tag,
        );
        h.push(Event::Routed {
            from: 1,
            incarnation: 1,
            to: 3,
            msg_id: 5,
            refused: None,
        });
        assert_eq!(h.records()[0].msg, None);
    }

    #[test]
    fn json_lines_round_trip() {
        let h = History::new();
        h.push(Event::Start {
            pid: 1,
            incarnation: 0,
        });
        h.push(Event::Routed {
            from: 1,
            incarnation: 0,
            to: 2,
            msg_id: 7,
            refused: Some(DropReason::Partitioned),
        });
        let mut drops = DropCounts::default();
        drops.add(DropReason::UnknownPeer, 2);
        h.push(Event::Stats {
            pid: 1,
            incarnation: 0,
            sent: 3,
            delivered: 1,
            dropped_outgoing: reason_counts(&drops),
            dropped_incoming: ReasonCounts::new(),
            lost_in_transit: 0,
            unconfirmed: 0,
            unacknowledged: 0,
        });
        let text = h.to_json_lines();
        assert!(text.contains(r#""refused":"partitioned""#), "{text}");
        assert!(
            text.contains(r#""dropped_outgoing":{"unknown_peer":2}"#),
            "{text}"
        );
        assert_eq!(from_json_lines(&text).unwrap(), h.records());
    }

    /// The history names reasons as the stats output does, so the two can be read together.
    #[test]
    fn drop_reasons_are_written_by_their_stats_name() {
        for reason in DropReason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
            assert_eq!(serde_json::from_str::<DropReason>(&json).unwrap(), reason);
        }
        assert!(serde_json::from_str::<DropReason>(r#""lost""#).is_err());
    }
}
