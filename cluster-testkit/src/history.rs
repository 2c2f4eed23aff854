//! The recorded history of a run: every fault, send, routing decision, arrival and delivery,
//! in one total order, exportable as JSON lines.

use std::fmt;
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
        }
    }
}

/// An [`Event`] with its place in the total order and its time since the run began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the history, from 0.
    pub seq: u64,
    /// Microseconds since the run began (wall clock, or tokio's paused clock).
    pub at_us: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
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
        self.log().enabled
    }

    /// Appends `event` and returns its sequence number.
    pub fn push(&self, event: Event) -> u64 {
        let mut log = self.log();
        let seq = log.records.len() as u64;
        if log.enabled {
            let at_us = u64::try_from(log.start.elapsed().as_micros()).unwrap_or(u64::MAX);
            log.records.push(Record { seq, at_us, event });
        }
        seq
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
