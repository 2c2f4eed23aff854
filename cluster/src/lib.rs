//! `cluster`: messaging among a fixed group of nodes, each with an integer pid listed in a
//! config file, through an outbox and an inbox per node.
//!
//! This is the crate users depend on. Cargo features pick the transports:
//!
//! * `libzmq` (default) — ZeroMQ through the `zmq` crate (bundled libzmq);
//! * `zeromq` — ZeroMQ through the pure-Rust `zeromq` crate;
//! * `mem` (default) — the in-memory transport and [`mem::MemNetwork`], for simulated clusters;
//! * `metrics` — the `metrics` module: a node's counters and gauges through the `metrics`
//!   facade (for Prometheus, say), and `new_with_metrics`.
//!
//! ```
//! # #[cfg(feature = "mem")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cluster::{BROADCAST, Config, Envelope, Server, mem::MemNetwork};
//!
//! let config = Config::local(3, 7000)?;
//! let net = MemNetwork::new(&config, 42);
//! let mut nodes = Vec::new();
//! for pid in config.pids() {
//!     nodes.push(Server::<String>::with_transport(pid, config.clone(), net.transport(pid)?)?);
//! }
//! nodes[0].outbox().send(Envelope::new(BROADCAST, 1, "hello".into())).await?;
//! let got = nodes[1].inbox().recv().await;
//! assert_eq!(got, Some(Envelope::new(1, 1, "hello".to_string())));
//! # Ok(()) }
//! # #[cfg(feature = "mem")]
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

#[cfg(feature = "metrics")]
pub mod metrics;
mod node;

#[cfg(feature = "metrics")]
pub use node::new_with_metrics;
pub use node::{new, new_with};

pub use cluster_core::{
    BROADCAST, ClusterKey, Config, ConfigError, ConfigProblem, DropCounts, DropReason, Envelope,
    Event, Events, GroupError, Inbox, Incarnation, Lagged, MAX_MESSAGE_SIZE, MAX_PID, MAX_QUEUE,
    MAX_QUEUE_BYTES, Member, MembershipError, Message, MsgId, MsgIds, MulticastError, Options,
    Outbox, PeerConfig, PeerEvent, PeerSet, PeerStats, Pid, Recipients, SendError, SendOutcome,
    Server, ServerBuilder, ServerError, ServerHandle, ServerMonitor, Stats, Transport,
    TransportError, TransportEvent, WaitTimeout, clock_incarnation,
};

/// The wire format (see [`cluster_core::wire`]).
pub use cluster_core::wire;

/// Peer events (see [`cluster_core::events`]).
pub use cluster_core::events;

/// Membership at run time (see [`cluster_core::membership`]).
pub use cluster_core::membership;

/// The ZeroMQ transport: [`zmq::Backend`], [`zmq::ZmqTransport`], [`zmq::LinkStats`],
/// [`zmq::bind_with`] to pick a backend at run time.
pub use cluster_zmq as zmq;

/// The peer catalog (sled): peer records and this node's incarnation across restarts.
pub use cluster_catalog as catalog;

/// The in-memory transport and simulated network.
#[cfg(feature = "mem")]
pub use cluster_mem as mem;

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
