//! A node's counters and gauges through the [`metrics`](https://docs.rs/metrics) facade
//! (cargo feature `metrics`), and the way back: its members read from the Prometheus text
//! that an exporter serves.
//!
//! An [`Exporter`] publishes snapshots of a [`ServerMonitor`](crate::ServerMonitor) to
//! whatever recorder the program installed (`metrics-exporter-prometheus`, `cluster node
//! --metrics ADDR`, or any other): every [`DEFAULT_INTERVAL`] and at once when a connection
//! comes or goes, so values are at most one interval old. Install the recorder first: the
//! metrics' descriptions go to the recorder installed when the exporter first publishes.
//! [`new_with_metrics`](crate::new_with_metrics) starts a node with one attached, seeded
//! with the history in its catalog.
//!
//! ```
//! # #[cfg(feature = "mem")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cluster::{Config, Server, mem::MemNetwork, metrics::Exporter};
//!
//! let config = Config::local(2, 7000)?;
//! let net = MemNetwork::new(&config, 1);
//! let server = Server::<String>::with_transport(1, config.clone(), net.transport(1)?)?;
//! // Published until dropped (and once more then).
//! let exporter = Exporter::new(server.monitor())
//!     .with_incarnation(server.incarnation())
//!     .spawn(cluster::metrics::DEFAULT_INTERVAL);
//! # drop(exporter);
//! # Ok(()) }
//! # #[cfg(feature = "mem")]
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! # The metrics
//!
//! Each is a field of [`Stats`](crate::Stats), [`PeerStats`](crate::PeerStats) or the
//! connection set, as it was at the last publication. Counters count since the node
//! started. `peer` is a pid; `direction` is `outgoing` (dropped here on the way to a peer)
//! or `incoming` (dropped here on arrival); `reason` is a [`DropReason`](crate::DropReason)
//! name (`unreachable`, `backpressure`, …).
//!
//! | metric | type | labels | value |
//! |---|---|---|---|
//! | `cluster_messages_sent_total` | counter | | message copies taken from the outbox, one per destination ([`Stats::sent`](crate::Stats::sent)) |
//! | `cluster_messages_delivered_total` | counter | | messages put into this node's inbox |
//! | `cluster_messages_dropped_total` | counter | `direction`, `reason` | drops here, every reason (zeros too) |
//! | `cluster_messages_lost_in_transit_total` | counter | | frames from peers lost after their transport took them (sequence gaps) |
//! | `cluster_messages_unconfirmed_total` | counter | | frames to peers never acknowledged before the peer went down |
//! | `cluster_peer_messages_sent_total` | counter | `peer` | copies sent to the peer (this node's own pid: sends to self) |
//! | `cluster_peer_messages_delivered_total` | counter | `peer` | messages from the peer delivered here |
//! | `cluster_peer_messages_dropped_total` | counter | `peer`, `direction`, `reason` | drops of messages to or from the peer; a series appears with its first drop |
//! | `cluster_peer_messages_lost_in_transit_total` | counter | `peer` | as above, for this peer |
//! | `cluster_peer_messages_unconfirmed_total` | counter | `peer` | as above, for this peer |
//! | `cluster_peer_unacknowledged_frames` | gauge | `peer` | frames the transport took for the peer and the peer has not acknowledged yet: the queue depth (ZeroMQ only; 0 in memory) |
//! | `cluster_connected_peers` | gauge | | peers with a live connection |
//! | `cluster_up_peers` | gauge | | peers up: messages flow both ways ([`Event::Up`](crate::Event::Up)) |
//! | `cluster_inbox_messages` | gauge | | envelopes in this node's inbox, waiting to be read: its queue depth |
//! | `cluster_inbox_backlog_frames` | gauge | | frames taken off the transport that wait for room in the inbox (ZeroMQ only) |
//! | `cluster_configured_peers` | gauge | | peers in the config, this node excluded |
//! | `cluster_peer_up` | gauge | `peer` | 1 while connected, else 0 |
//! | `cluster_peer_incarnation` | gauge | `peer` | the peer's newest incarnation seen (from the catalog's history until a frame shows one); absent if never known |
//! | `cluster_peer_last_seen_seconds` | gauge | `peer` | when the peer was last known alive (its connection came up, or a message from it was delivered), seconds since the Unix epoch, millisecond precision; absent if never |
//! | `cluster_peer_info` | gauge | `peer`, `address` | 1, for each peer whose address is known (from the catalog) |
//! | `cluster_node_info` | gauge | `pid` | 1: this node's pid |
//! | `cluster_node_incarnation` | gauge | | this node's incarnation, when given |
//!
//! The totals are not the sums of the per-peer series: sends to pids outside the config and
//! frames from unknown senders or that do not decode have no peer, and count in the totals
//! only. That is why they are separate metrics rather than one metric with and without a
//! `peer` label.
//!
//! "Last seen" follows the catalog's rule ([`catalog::Recorder`](crate::catalog::Recorder)),
//! so a running node's view (these gauges) and a stopped node's (its catalog) agree.
//! [`members_from_text`] reads the membership gauges back; `cluster members --node ADDR`
//! prints them.

mod exporter;
mod text;

pub use exporter::{DEFAULT_INTERVAL, Exporter, ExporterTask};
pub use text::{Members, Sample, TextError, members_from_text, parse_text};

/// The metric names, for readers of the exported text.
pub mod names {
    /// [`Stats::sent`](crate::Stats::sent).
    pub const SENT: &str = "cluster_messages_sent_total";
    /// [`Stats::delivered`](crate::Stats::delivered).
    pub const DELIVERED: &str = "cluster_messages_delivered_total";
    /// [`Stats::dropped_outgoing`](crate::Stats::dropped_outgoing) and
    /// [`Stats::dropped_incoming`](crate::Stats::dropped_incoming), by `direction` and `reason`.
    pub const DROPPED: &str = "cluster_messages_dropped_total";
    /// [`Stats::lost_in_transit`](crate::Stats::lost_in_transit).
    pub const LOST_IN_TRANSIT: &str = "cluster_messages_lost_in_transit_total";
    /// [`Stats::unconfirmed`](crate::Stats::unconfirmed).
    pub const UNCONFIRMED: &str = "cluster_messages_unconfirmed_total";
    /// [`PeerStats::sent`](crate::PeerStats::sent), by `peer`.
    pub const PEER_SENT: &str = "cluster_peer_messages_sent_total";
    /// [`PeerStats::delivered`](crate::PeerStats::delivered), by `peer`.
    pub const PEER_DELIVERED: &str = "cluster_peer_messages_delivered_total";
    /// [`PeerStats::dropped_to`](crate::PeerStats::dropped_to) and
    /// [`PeerStats::dropped_from`](crate::PeerStats::dropped_from), by `peer`, `direction`
    /// and `reason`.
    pub const PEER_DROPPED: &str = "cluster_peer_messages_dropped_total";
    /// [`PeerStats::lost_in_transit`](crate::PeerStats::lost_in_transit), by `peer`.
    pub const PEER_LOST_IN_TRANSIT: &str = "cluster_peer_messages_lost_in_transit_total";
    /// [`PeerStats::unconfirmed`](crate::PeerStats::unconfirmed), by `peer`.
    pub const PEER_UNCONFIRMED: &str = "cluster_peer_messages_unconfirmed_total";
    /// [`PeerStats::unacknowledged`](crate::PeerStats::unacknowledged), by `peer`.
    pub const PEER_UNACKNOWLEDGED: &str = "cluster_peer_unacknowledged_frames";
    /// How many peers are connected.
    pub const CONNECTED_PEERS: &str = "cluster_connected_peers";
    /// Envelopes in the inbox, waiting to be read.
    pub const INBOX_MESSAGES: &str = "cluster_inbox_messages";
    /// Frames taken off the transport that wait for room in the inbox.
    pub const INBOX_BACKLOG: &str = "cluster_inbox_backlog_frames";
    /// How many peers are up (messages flow both ways: see `Server::events`).
    pub const UP_PEERS: &str = "cluster_up_peers";
    /// How many peers the config lists, this node excluded.
    pub const CONFIGURED_PEERS: &str = "cluster_configured_peers";
    /// 1 while the `peer` is connected, else 0.
    pub const PEER_UP: &str = "cluster_peer_up";
    /// The `peer`'s newest incarnation known.
    pub const PEER_INCARNATION: &str = "cluster_peer_incarnation";
    /// When the `peer` was last known alive, in seconds since the Unix epoch.
    pub const PEER_LAST_SEEN: &str = "cluster_peer_last_seen_seconds";
    /// 1, labelled with the `peer`'s `address`.
    pub const PEER_INFO: &str = "cluster_peer_info";
    /// 1, labelled with this node's `pid`.
    pub const NODE_INFO: &str = "cluster_node_info";
    /// This node's incarnation.
    pub const NODE_INCARNATION: &str = "cluster_node_incarnation";
}

/// The `direction` label of drops made on the way to a peer.
pub const OUTGOING: &str = "outgoing";
/// The `direction` label of drops made on arrival.
pub const INCOMING: &str = "incoming";
