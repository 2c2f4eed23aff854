//! Core of the `cluster` messaging library: a fixed group of nodes, each with an integer
//! [`Pid`], exchanging [`Envelope`]s through an outbox and an inbox.
//!
//! This crate knows no network. It holds the types ([`Pid`], [`Envelope`], [`Config`]), the
//! wire codec ([`wire`]), the [`Transport`] contract, and the [`Server`], where all routing,
//! drop accounting and incarnation checks live, once, for every transport.
//!
//! # The delivery contract
//!
//! * **C1 routing** — `pid = p` goes to `p` only; [`BROADCAST`] to every peer but the sender,
//!   encoded once; `pid = self` lands in the sender's own inbox; an unknown pid is counted
//!   (`unknown_peer`) and dropped, never a panic.
//! * **C2** at most once, byte-exact. **C3** FIFO per ordered pair.
//! * **C4 drop on unreachable** — a message sent while its destination is down or cut off is
//!   dropped, and never delivered later; frames from an older incarnation of a peer are never
//!   delivered once a newer one has been seen.
//! * **C5** delivered when both ends are healthy. **C6** a dead or slow peer never blocks the
//!   others; every queue is bounded and overflow is a counted `backpressure` drop.
//! * **C7 nothing silent** — every message is delivered or dropped with a [`DropReason`],
//!   visible in [`Server::stats`].
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
//! let header = wire::Header { sender: 1, incarnation: 3, msg_id: 42 };
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
mod router;
mod server;
mod stats;
mod transport;
pub mod wire;

pub use config::{
    Config, ConfigError, ConfigProblem, MAX_MESSAGE_SIZE, MAX_PID, MAX_QUEUE, Options, PeerConfig,
};
pub use envelope::{BROADCAST, Envelope, MsgId, Pid};
pub use server::{Message, Server, ServerBuilder, ServerError, ServerMonitor, WaitTimeout};
pub use stats::{DropCounts, DropReason, PeerStats, Stats};
pub use transport::{PeerSet, Transport, TransportError, TransportEvent};
pub use wire::Incarnation;
