//! ZeroMQ transport for `cluster`: nodes in separate processes, over real sockets, keeping
//! the delivery contract of `cluster-core` (drop on unreachable, bounded queues, isolation,
//! reconnection, detection of silent partitions).
//!
//! Two backends, each a cargo feature, named by one type, [`Backend`]:
//!
//! * `libzmq` (default) — `LibzmqTransport`, the `zmq` crate over the bundled libzmq;
//! * `zeromq` — `ZeromqTransport`, the pure-Rust `zeromq` crate.
//!
//! [`bind`] binds a node on the default backend (libzmq when compiled in), [`bind_with`] on
//! the one you name; both return a [`ZmqTransport`], which runs on either. With both
//! features on, both backends can run in one process.
//!
//! # Socket layout, and why
//!
//! Every node binds **one inbound socket** on its own configured address and opens **one
//! outbound socket per peer**, connected to that peer's address. One socket per peer (rather
//! than one ROUTER for all) is what makes the contract cheap to keep: each peer has its own
//! bounded queue, so a dead or slow peer fills only its own queue (`backpressure` for that
//! peer, contract C6) and "is this peer connected right now?" is a property of one socket.
//!
//! **libzmq** — PULL inbound, PUSH outbound:
//!
//! * `ZMQ_IMMEDIATE=1` on every PUSH, and every send is non-blocking (`ZMQ_DONTWAIT`): a
//!   frame is queued only on a connection whose handshake has completed. A send to a peer
//!   without one fails at once and is counted `unreachable`; nothing is kept for a peer
//!   that might come back (C4). libzmq discards a pipe's queue when its connection drops.
//! * `ZMQ_SNDHWM` = `RCVHWM` = [`Options::peer_queue`](cluster_core::Options::peer_queue):
//!   a full queue to one peer refuses with `backpressure` and touches no other socket.
//! * `ZMQ_LINGER` = [`Options::linger`](cluster_core::Options::linger) on PUSH sockets (what
//!   `shutdown` may spend flushing to live peers), 0 on the PULL socket.
//! * ZMTP heartbeats from every PUSH (`ZMQ_HEARTBEAT_IVL` = `heartbeat_interval`,
//!   `ZMQ_HEARTBEAT_TIMEOUT` = `heartbeat_timeout`, and a TTL that makes the receiving end
//!   time out too, at `heartbeat_timeout + heartbeat_interval`: when the sender itself
//!   gives up at the latest, never before), and a handshake bounded by the timeout: a cut
//!   that closes nothing closes the connection on both sides within
//!   `heartbeat_timeout + heartbeat_interval`, and a stall shorter than `heartbeat_timeout`
//!   closes nothing (the test `a_stall_shorter_than_the_heartbeat_timeout_loses_nothing`);
//!   libzmq discards what was queued on it, and the peer is `unreachable` from then on.
//!   Reconnection is libzmq's own (100 ms, backing off to 1 s). PULL sockets send no heartbeats of their own, which
//!   avoids an abort in libzmq 4.3.4 (see `set_heartbeat_options` in the source).
//! * A socket monitor per PUSH (`HANDSHAKE_SUCCEEDED` / `DISCONNECTED`) keeps the connection
//!   set that [`Transport::connected`](cluster_core::Transport::connected) publishes; it
//!   also tells a send's `EAGAIN` apart: no connection (`unreachable`) or a full queue
//!   (`backpressure`). The monitor learns of a lost connection a moment after libzmq does,
//!   so a send in that moment is counted `backpressure` where `unreachable` was the cause:
//!   dropped and counted either way, only the reason may lag.
//! * `ZMQ_MAXMSGSIZE` = `max_message_size` exactly on the PULL socket: a frame above the
//!   limit, or a hostile giant length prefix, makes libzmq close that connection without
//!   allocating it ([`LinkStats::inbound_closed`]).
//! * What one inbound connection may hold in memory: `ZMQ_RCVHWM` = `peer_queue` frames
//!   (a count: libzmq has no byte mark), each at most `max_message_size`, so at most
//!   `peer_queue` × `max_message_size` bytes of frames plus libzmq's 8 KiB read batch
//!   and the kernel's socket buffer. A byte mark would need libzmq's count mark derived
//!   from it: `32 MiB / max_message_size` frames (32 with the default frame limit) starves a
//!   fast sender, measured with `./target/release/cluster bench --payload 64 --messages
//!   200000 --round-trips 1000 --rounds 3 --broadcast 0`: P2P 0.55–0.70 M msg/s and 3%
//!   dropped, against 1.41–1.63 M msg/s and under 0.5% with the count mark (3 runs each,
//!   same machine, same hour). So the count mark stays, and this product is what is
//!   bounded (honest peers hold far less: what they leave unacknowledged is bounded by
//!   their `peer_queue_bytes`).
//! * `ZMQ_HANDSHAKE_IVL` = the smaller of `heartbeat_timeout` and `idle_connection_timeout`
//!   on the PULL socket: a connection that does not complete its ZMTP handshake in time
//!   (raw TCP, a client gone silent) is closed by libzmq and counted
//!   ([`LinkStats::rejected_connections`]).
//!
//! libzmq sockets are not thread-safe, so each is used by one thread at a time. The PUSH
//! and PULL sockets belong to the transport itself, which every sending task shares: each
//! socket is behind its own lock, held only for non-blocking calls (uncontended in practice:
//! sends are non-blocking calls into libzmq's lock-free pipes). The PULL socket's `ZMQ_FD`
//! is registered with the tokio reactor, so an arriving frame wakes the server's task
//! directly (no thread, no channel in between; `readable` is cancel-safe because it only
//! looks at `ZMQ_EVENTS`, and `try_recv_many` takes frames without waiting). The monitor
//! sockets belong to a monitor
//! thread that sleeps in `zmq_poll` (no busy loop; an idle node uses ~0% CPU) and stops on a
//! message on an inproc PAIR. `shutdown` stops that thread, closes every socket (PUSH
//! sockets linger at most the given linger) and terminates the context, which frees the port
//! before it returns. (That a flood of frames cannot starve the task reading the inbox on
//! the same thread is the server's concern: it spends tokio's budget after each batch.)
//! The libzmq backend is Unix-only (it registers `ZMQ_FD` with the reactor).
//!
//! **Both** — a connection guard (a thread per transport, Linux only: it uses
//! `pidfd_getfd(2)`) caps the connections accepted on the node's port at
//! [`Options::inbound_connection_cap`](cluster_core::Options::inbound_connection_cap) and
//! closes idle ones, by `shutdown(2)` of the connection's socket, from the side: frames
//! never pass through it (no hop, no copy). Over the cap, the newest connections that never
//! showed activity are closed first ([`LinkStats::refused_over_cap`]; on libzmq, which
//! reports no activity, the oldest are kept: the real peers, connected first). A
//! connection that shows no activity for `idle_connection_timeout` (at least two heartbeat
//! intervals, so that a quiet real peer, whose heartbeats are activity, is never idle) is
//! closed ([`LinkStats::idle_closed`]). Activity is, on `zeromq`, a message of any kind on
//! that connection (the backend sees each one); on libzmq, which tells its user nothing
//! per connection, the last data the kernel received on it (`tcpi_last_data_recv`, read
//! through the `sock_diag` netlink interface, as `ss` does). Either way a client that
//! sends well-formed ZeroMQ traffic (heartbeats, or frames the server drops and counts)
//! is not idle; the cap bounds how many such clients there can be.
//!
//! **zeromq** — the pure-Rust crate has no high-water mark, no heartbeats and does not
//! reconnect a restarted peer reliably, so this backend adds them itself. ROUTER inbound,
//! DEALER outbound (the inbound side must answer):
//!
//! * each peer has a task owning its DEALER, fed by a bounded queue of `peer_queue` frames
//!   (full: `backpressure`);
//! * the receiver acknowledges, every quarter window, how many frames it took from the
//!   connection; a sender keeps at most `peer_queue` unacknowledged frames in flight, which
//!   bounds the crate's internal queue the way SNDHWM/RCVHWM do in libzmq;
//! * the sender pings every `heartbeat_interval`; a connection that shows no sign of life for
//!   `heartbeat_timeout` (or whose write stalls that long) is given up: the peer becomes
//!   `unreachable`, the frames still queued for it are discarded and reported as
//!   [`TransportEvent::Dropped`](cluster_core::TransportEvent::Dropped), and the task
//!   reconnects with a fresh socket (100 ms, backing off to 1 s). A peer counts as connected
//!   only after its first acknowledgement, i.e. after a full round trip;
//! * the receiver discards frames arriving on a connection that was silent for longer than
//!   the heartbeat timeout (its sender has given it up; see [`LinkStats::stale_frames`]).
//! * an acknowledgement is never waited for: one that cannot be queued within 20 ms (the
//!   crate's write queue to that client is full: it does not read) closes that connection
//!   ([`LinkStats::slow_readers`]), so no client can stall the receive path.
//! * a frame header announcing more than the frame limit (plus 64 KiB of slack) fails its
//!   connection before anything is reserved (the crate as patched in `vendor/zeromq`:
//!   unpatched, one header announcing a terabyte aborts the process);
//! * reads are fair: the crate's ROUTER takes messages from its connections in turn, so
//!   a flood on one connection gets one turn in as many as there are connections (see the
//!   `flood_cost_*` measurement in the tests).
//!
//! Control frames start with `0xC2`, cluster frames with the wire magic `0xC1`; control
//! frames never reach the server, and anything that is not a well-formed control frame is
//! handed to the server, which checks and counts it (contract C9).
//!
//! # Membership at run time
//!
//! [`Transport::add_peer`](cluster_core::Transport::add_peer) makes a pid a peer while the
//! node runs, exactly as if the config had listed it: a PUSH socket (libzmq) or a task with
//! its DEALER (`zeromq`), with the same options, the same bounded queue, and the same
//! notion of "connected" in [`Transport::connected`](cluster_core::Transport::connected).
//! The address is checked as the config checks one (`host:port`); adding this node's own
//! pid is an error; adding a peer again is not; adding it at another address moves it
//! (its connection to the old one goes, as on removal). The connection guard's cap
//! follows the number of peers.
//! [`Transport::remove_peer`](cluster_core::Transport::remove_peer) closes this node's
//! connection to the peer at once: sends to it are refused as `unknown_peer`, and frames
//! naming it as their sender are no longer handed up ([`LinkStats::from_removed_peers`]).
//! What was queued for it: the `zeromq` backend discards the messages and reports them
//! ([`TransportEvent::Dropped`](cluster_core::TransportEvent::Dropped), `unknown_peer`),
//! and sends the control frames (the server's notice of the removal) for at most the
//! linger; libzmq can tell neither apart in its queue nor say how much it holds: the
//! queue gets at most the linger to leave, then is discarded, unreported. The removed node's own
//! connection to this node's port stays open while it keeps it (neither library lets a
//! PULL or ROUTER socket close one connection; the guard does not know which is whose).
//!
//! # Accounting on real networks
//!
//! Every frame refused by `send` is counted by the server with its reason. Frames accepted
//! and later lost are counted where the transport can know them: the `zeromq` backend
//! reports every message still in its own queue when a connection is given up
//! ([`TransportEvent::Dropped`](cluster_core::TransportEvent::Dropped); acknowledgements,
//! [`wire::is_control`](cluster_core::wire::is_control), are not messages and are left
//! out). libzmq discards its queue to a connection that dies without saying how many frames
//! it held, so the libzmq backend reports none. What neither can tell, the server counts:
//! the transport says it may lose accepted frames
//! ([`Transport::may_lose_accepted`](cluster_core::Transport::may_lose_accepted)), so
//! receivers acknowledge and senders count what a vanished peer never acknowledged as
//! `unconfirmed` (C7 on real sockets, in `cluster-core`'s crate docs). In both cases
//! nothing sent before a cut or a crash is delivered after it (contract C4).
//! Below the frame level, [`LinkStats`] counts connections refused for not speaking ZMTP
//! (libzmq) and frames from connections already given up (`zeromq`).
//!
//! # Known limits
//!
//! * Without a cluster key, frames are not authenticated: a forged frame claiming a known
//!   sender and a higher incarnation is believed, and makes that sender's real incarnation
//!   stale until nothing has come from the forged one for `heartbeat_timeout` (the rule in
//!   `cluster-core`'s crate docs, C10). With a key, such a frame is dropped as
//!   `unauthenticated` and changes nothing.
//! * libzmq: inbound memory per connection is bounded in frames (`peer_queue`), i.e. in
//!   bytes only through `peer_queue` × `max_message_size`.
//! * When the cap is full of clients that keep sending traffic, a peer that restarts is
//!   refused (the newest go first) until some of them leave or go idle.
//! * `zeromq`: the crate queues up to 100,000 messages to one client before a write to it
//!   waits; acknowledgements are tiny, but a client that never reads holds that much until
//!   it is closed.
//! * The guard runs on Linux only; elsewhere inbound connections are neither capped nor
//!   closed for idleness (the node logs a warning).
//!
//! # Benchmark
//!
//! `cluster bench` (the `cluster-bench` crate) measures this transport against the bare
//! library in the same run; the figures, each with its command, are in the README.
//!
//! # Example
//!
//! ```no_run
//! use cluster_core::{Config, Envelope, Server};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::load("config.json")?;
//! let transport = cluster_zmq::bind(1, &config).await?;
//! let mut server = Server::<String>::with_transport(1, config, transport)?;
//! server.wait_for_peers(std::time::Duration::from_secs(5)).await?;
//! server.outbox().send(Envelope::new(2, server.next_msg_id(), "hello".into())).await?;
//! let reply = server.inbox().recv().await;
//! server.shutdown().await;
//! # Ok(()) }
//! ```

#[cfg(not(any(feature = "libzmq", feature = "zeromq")))]
compile_error!("cluster-zmq needs a backend: enable the feature `libzmq` or `zeromq`");

mod backend;
mod endpoints;
mod guard;
#[cfg(feature = "libzmq")]
mod libzmq;
mod link_stats;
mod liveness;
#[cfg(feature = "zeromq")]
mod zeromq_backend;

pub use backend::{Backend, UnknownBackend, ZmqTransport};
#[cfg(feature = "libzmq")]
pub use libzmq::LibzmqTransport;
pub use link_stats::LinkStats;
#[cfg(feature = "zeromq")]
pub use zeromq_backend::ZeromqTransport;
#[cfg(feature = "zeromq")]
#[doc(hidden)]
pub use zeromq_backend::fuzz_control_frame;

use cluster_core::{Config, Pid, TransportError};

/// Binds node `pid` of `config` on the default [`Backend`] (libzmq when it is compiled in)
/// and starts connecting to its peers. Must be called inside a tokio runtime. A port
/// already in use is [`TransportError::Bind`], naming the address.
pub async fn bind(pid: Pid, config: &Config) -> Result<ZmqTransport, TransportError> {
    ZmqTransport::bind(Backend::default(), pid, config).await
}

/// Like [`bind`], on the given backend; one that is not compiled in is
/// [`TransportError::Other`] naming the cargo feature to turn on.
pub async fn bind_with(
    backend: Backend,
    pid: Pid,
    config: &Config,
) -> Result<ZmqTransport, TransportError> {
    ZmqTransport::bind(backend, pid, config).await
}
