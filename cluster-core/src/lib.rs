//! Core of the `cluster` messaging library: a fixed group of nodes, each with an integer
//! [`Pid`], exchanging [`Envelope`]s through an outbox and an inbox.
//!
//! This crate knows no network. It holds the types ([`Pid`], [`Envelope`], [`Config`]), the
//! wire codec ([`wire`]), the [`Transport`] contract, and the [`Server`], where all routing,
//! drop accounting and incarnation checks live, once, for every transport.
//!
//! # The delivery contract
//!
//! What every transport keeps, stated here once; the conformance suite of `cluster-testkit`
//! checks it on the in-memory transport and on both ZeroMQ backends, and the README
//! summarises it.
//!
//! * **C1 routing** — `pid = p` (a peer) goes to `p` only; [`BROADCAST`] goes to every peer
//!   but the sender, once each, encoded once; `pid = self` lands in the sender's own inbox;
//!   an unknown pid is dropped and counted (`unknown_peer`), never a panic, never an error
//!   that kills the outbox. A multicast ([`Outbox::multicast`], to a list of pids or to one
//!   of the sender's named groups, [`Recipients`]) goes to each distinct destination once,
//!   encoded once, each destination routed by these same rules (its own pid to its own
//!   inbox, an unknown pid counted `unknown_peer`), and, like a broadcast, never waits: a
//!   copy to a full peer is dropped and counted for that peer. A group is the sender's own
//!   name for a list of pids (from [`Config::groups`], changed with
//!   [`Server::set_group`]): it is expanded by the sender and never propagated; receivers
//!   deliver each copy as a message from the sender.
//! * **C2 no phantoms, no duplicates, no corruption** — at most once, byte-exact.
//! * **C3 FIFO per ordered pair** — A→B arrives in send order; gaps only where C4 dropped.
//! * **C4 drop on unreachable** — a message sent while its destination is down or cut off
//!   is dropped, and is never delivered later: not after the peer restarts, nor after the
//!   partition heals. Frames from an older incarnation of a peer are never delivered once a
//!   newer one has been seen. On real networks a cut that closes no connection is noticed
//!   only after the heartbeat timeout: a cut shorter than that is indistinguishable from
//!   delay, so messages sent within that window may go either way; everything sent after
//!   detection is dropped, and what was queued is discarded, not delivered late.
//! * **C5 delivery when healthy** — a message sent while both ends are up and connected,
//!   with no fault before it is received, is delivered (in memory: exactly; over ZeroMQ:
//!   within a deadline).
//! * **C5' lossless when healthy** — [`Outbox::send`] to a connected peer whose queue
//!   (or window of unacknowledged frames) is full waits for room, up to
//!   [`Options::send_timeout`], then drops the message as `backpressure` and marks the peer
//!   stalled (later sends to it are dropped at once until one is accepted);
//!   [`Outbox::try_send`] never waits; a broadcast never waits on one slow peer (that copy
//!   is dropped and counted). A full inbox stops its node from taking frames off the
//!   transport, and acknowledging them, so that the senders' queues fill and their sends
//!   wait: flow control, not loss. Every send says at once what became of the message
//!   ([`SendOutcome`]).
//! * **C6 isolation** — a dead, slow or partitioned peer never blocks sends to the others.
//!   Memory stays bounded under any load: every queue is bounded, overflow is a counted
//!   drop (`backpressure`), never unbounded growth, never a deadlock (also when two nodes'
//!   inboxes are full and each waits to send to the other: `send_timeout` bounds the
//!   wait).
//! * **C7 nothing silent** — every message ends as exactly one of: delivered, or dropped
//!   with a [`DropReason`] (`unknown_peer`, `unreachable`, `backpressure`, `partitioned` and
//!   `injected` in simulation, `malformed`, `unknown_sender`, `stale_incarnation`,
//!   `too_large`, `unsupported_version`, `replayed`, `unauthenticated`), visible in
//!   [`Server::stats`] as totals and per peer. In simulation, sent = delivered + dropped
//!   exactly.
//! * **C7 on real sockets** — frames a transport accepted but that never arrived are
//!   counted too (for transports that say they can lose them,
//!   [`Transport::may_lose_accepted`]: ZeroMQ). Every frame carries a sequence number per
//!   (sender incarnation → receiver), taken only when the transport accepts the frame (a
//!   refused frame gives its number back). The receiver counts the gaps it sees in
//!   [`PeerStats::lost_in_transit`], and acknowledges what reached its end there —
//!   delivered to the inbox, or dropped and counted; not what merely arrived, so that a
//!   full inbox holds its senders back (a small control frame, authenticated like any
//!   other, every quarter window, and within a tenth of `heartbeat_interval`). The sender
//!   keeps what is not yet acknowledged
//!   ([`PeerStats::unacknowledged`], bounded: see C6) and counts it as
//!   [`PeerStats::unconfirmed`] once the peer has been disconnected for a heartbeat
//!   interval, or once a newer incarnation of the peer acknowledges from a later sequence
//!   number. So, per ordered pair, sent = delivered + dropped + lost in transit +
//!   unconfirmed, with two exceptions, both around a fault: a message can be counted
//!   twice when it arrived but its acknowledgement died with the peer (at most the
//!   unacknowledged window at that moment; never without a kill or a cut), and frames
//!   still unacknowledged when you read the counters are in none of the terms yet. Never
//!   is a message counted nowhere once its peer is known gone.
//! * **C6 on real sockets, in bytes** — the unacknowledged frames to one peer are at most
//!   16 × `peer_queue` frames and `peer_queue_bytes` bytes (beyond, `backpressure`, or
//!   `unreachable` if the peer is disconnected); the inbox holds at most `inbox_capacity`
//!   envelopes and `inbox_bytes` bytes of frames.
//! * **C8 restart** — a node restarted with the same pid rejoins without restarting anyone
//!   else; its incarnation increases (from its peer catalog, or the transport, or the clock:
//!   see [`ServerBuilder::incarnation`]); messages sent to it once it is back are delivered.
//! * **C9 hostile input** — any bytes arriving on a node's port (garbage, truncated,
//!   oversized, forged header) are dropped and counted; the node keeps serving. Config and
//!   catalog errors are clear messages naming the file, the entry and the problem.
//! * **C10 membership you can trust** — with a cluster key ([`Config::cluster_key`]), every
//!   frame carries a keyed-BLAKE3 tag over its header and payload (or a SipHash-2-4 one,
//!   [`Options::mac`]), or, with `"encrypt"`
//!   ([`Options::encrypt`]), its payload is encrypted and header and payload authenticated
//!   (XChaCha20-Poly1305, see [`wire`] and [`seal`]); a frame that is forged, altered,
//!   from another cluster, unkeyed (or keyed at an unkeyed node), or of the other keyed
//!   mode is dropped as `unauthenticated`, and one whose sequence number is not above the highest seen from
//!   that incarnation of its sender as `replayed`. Such a frame changes nothing: the tag and
//!   the replay guard are checked before a frame may move a peer's incarnation, its
//!   sequence state, or its counters (which the catalog reads). Without a key nothing is
//!   authenticated — anyone who can reach a node's port can send it frames in any peer's
//!   name — but no single frame can lock a peer out for good: the newest incarnation heard
//!   from a peer stops counting once nothing was accepted from it for `heartbeat_timeout`,
//!   which also lets a node that lost its catalog (and restarts at a lower incarnation) be
//!   heard again after that time. With or without a key, a node that lost its catalog
//!   restarts newer than before anyway: `cluster-catalog` floors new incarnations by the
//!   clock (seconds since 2025). Connection caps are the transports' part.
//!
//! # Peer events, membership, multicast
//!
//! [`Server::events`] tells when peers come up (messages flow both ways), go down or
//! restart ([`events`]). Membership changes at run time ([`Server::add_peer`],
//! [`Server::remove_peer`], [`Server::join`], [`Server::leave`]): spread to every member
//! by a deterministic last-writer-wins rule that is not consensus ([`membership`]); routing
//! (C1) follows the current membership. [`Outbox::multicast`] sends one message to a list
//! of pids or a named group, encoded once.
//!
//! What the library does with an envelope's `msg_id`: it carries it from sender to
//! receiver and never reads it. [`Server::next_msg_id`] and [`MsgIds`] draw ids unique
//! across the cluster and across restarts, for your protocol's use.
//!
//! # Example
//!
//! ```
//! use cluster_core::{Config, wire};
//!
//! let config = Config::parse(
//!     r#"{"peers":[{"pid":1,"address":"127.0.0.1:7001"},{"pid":2,"address":"127.0.0.1:7002"}]}"#,
//!     "inline",
//! )?;
//! assert_eq!(config.pids().collect::<Vec<_>>(), [1, 2]);
//!
//! // From node 1 (incarnation 3) to node 2, message id 42.
//! let header = wire::Header::new(1, 2, 3, 42);
//! let frame = wire::Frame::decode(wire::encode(&header, "hello")?)?;
//! assert_eq!(frame.header, header);
//! assert_eq!(frame.message::<String>()?, "hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Servers need a transport: see `cluster-mem` (in-memory, with fault injection) and
//! `cluster-zmq` (ZeroMQ), or the `cluster` facade crate.

mod config;
mod envelope;
pub mod events;
mod group;
mod inbox;
mod key;
pub mod membership;
mod outbox;
mod report;
mod router;
pub mod seal;
mod server;
mod stats;
mod transport;
pub mod wire;

pub use config::{
    Config, ConfigError, ConfigProblem, MAX_MESSAGE_SIZE, MAX_PID, MAX_QUEUE, MAX_QUEUE_BYTES,
    MacAlgorithm, Options, PeerConfig,
};
pub use envelope::{BROADCAST, Envelope, MsgId, Pid};
pub use events::{Event, Events, Lagged, PeerEvent};
pub use group::{GroupError, Recipients};
pub use inbox::Inbox;
pub use key::{ClusterKey, KEY_LEN};
pub use membership::Member;
pub use outbox::{MulticastError, Outbox, SendError, SendOutcome};
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub use router::RouterFault;
pub use server::{
    MembershipError, Message, MsgIds, Server, ServerBuilder, ServerError, ServerHandle,
    ServerMonitor, WaitTimeout, clock_incarnation,
};
pub use stats::{DropCounts, DropReason, PeerStats, Stats};
pub use transport::{PeerSet, Transport, TransportError, TransportEvent};
pub use wire::Incarnation;
