//! The node: outbox and inbox channels, driven by one task that owns the transport.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::envelope::{MsgId, Pid};
use crate::events::{EventHub, Events};
use crate::group::{self, GroupError, Groups};
use crate::inbox::{Inbox, Receiving};
use crate::membership::{Member, Table};
use crate::outbox::{Outbox, Sending};
use crate::router::{AckOptions, Router};
use crate::seal::Sealer;
use crate::stats::{Stats, StatsCells};
use crate::transport::{PeerSet, Transport, TransportError};
use crate::wire::Incarnation;

/// Why a server could not start. `{:?}` prints the message too (for `main`'s `Result`).
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The config is invalid, or does not list this pid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The transport could not be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The peer catalog could not be opened or updated.
    #[error("peer catalog: {0}")]
    Catalog(String),
    /// Servers spawn tasks, so they must be created inside a tokio runtime.
    #[error("a Server must be created inside a tokio runtime")]
    NoRuntime,
}

/// [`Server::wait_for_peers`] gave up: these peers were still not connected.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("peers not connected after {waited:?}: {missing:?}")]
pub struct WaitTimeout {
    /// The peers without a live connection at the deadline.
    pub missing: Vec<Pid>,
    /// How long it waited.
    pub waited: Duration,
}

/// A membership change ([`Server::add_peer`], [`Server::remove_peer`]) that was refused.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The address is not `host:port`.
    #[error("address \"{0}\" is not host:port (e.g. 127.0.0.1:7001 or [::1]:7001)")]
    BadAddress(String),
    /// The pid is out of range.
    #[error("pid {0} is out of range (0..={max})", max = crate::config::MAX_PID)]
    BadPid(Pid),
    /// A node cannot add or remove itself: see [`Server::join`] and [`Server::leave`].
    #[error("pid {0} is this node: use join or leave")]
    Itself(Pid),
    /// The pid to remove is not a member.
    #[error("pid {0} is not a member")]
    NotAMember(Pid),
    /// The transport cannot connect to the new peer.
    #[error("the transport refused: {0}")]
    Transport(String),
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
}

crate::report::debug_as_message!(ServerError, WaitTimeout, MembershipError);

/// The depth of a node's inbox, whatever its message type (for [`ServerMonitor`]).
trait Depth: Send + Sync {
    fn inbox_depth(&self) -> (usize, usize);
}

impl<M: Message> Depth for Sending<M> {
    fn inbox_depth(&self) -> (usize, usize) {
        self.recv.depth()
    }
}

/// What a [`ServerHandle`] does to its node's membership, whatever its message type.
trait Control: Send + Sync {
    fn add(&self, pid: Pid, address: &str) -> Result<(), MembershipError>;
    fn remove(&self, pid: Pid) -> Result<(), MembershipError>;
    /// Sends a request about this node itself (join, or leave) to `to`.
    fn request(&self, to: &[Pid], address: &str, present: bool);
}

impl<M: Message> Control for Sending<M> {
    fn add(&self, pid: Pid, address: &str) -> Result<(), MembershipError> {
        if pid == self.pid {
            return Err(MembershipError::Itself(pid));
        }
        if !(0..=crate::config::MAX_PID).contains(&pid) {
            return Err(MembershipError::BadPid(pid));
        }
        if crate::config::split_host_port(address).is_none() {
            return Err(MembershipError::BadAddress(address.to_owned()));
        }
        if !self.is_open() {
            return Err(MembershipError::Stopped);
        }
        let mut state = self.lock();
        let router = state.router();
        // The transport first: a transport that cannot add peers refuses the change.
        let known = router
            .members()
            .iter()
            .any(|m| m.pid == pid && m.present && m.address == address);
        if !known {
            self.transport
                .add_peer(pid, address)
                .map_err(|e| MembershipError::Transport(e.to_string()))?;
        }
        router.change_membership(pid, Some(address.to_owned()));
        router.flush_membership(&*self.transport);
        Ok(())
    }

    fn remove(&self, pid: Pid) -> Result<(), MembershipError> {
        if pid == self.pid {
            return Err(MembershipError::Itself(pid));
        }
        if !self.is_open() {
            return Err(MembershipError::Stopped);
        }
        let mut state = self.lock();
        let router = state.router();
        if !router.members().iter().any(|m| m.pid == pid && m.present) {
            return Err(MembershipError::NotAMember(pid));
        }
        router.change_membership(pid, None);
        router.flush_membership(&*self.transport);
        Ok(())
    }

    fn request(&self, to: &[Pid], address: &str, present: bool) {
        let mut state = self.lock();
        let router = state.router();
        router.request_membership(to, address.to_owned(), present);
        router.flush_membership(&*self.transport);
    }
}

/// Message types a server can carry.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {}
impl<M: Serialize + DeserializeOwned + Send + 'static> Message for M {}

/// Builds a [`Server`] with settings beyond those of [`Server::with_transport`].
pub struct ServerBuilder {
    pid: Pid,
    config: Config,
    incarnation: Option<Incarnation>,
    members: Vec<Member>,
    attachments: Vec<Box<dyn Send + Sync>>,
    attach_hooks: Vec<AttachHook>,
    #[cfg(feature = "fault-injection")]
    router_fault: Option<crate::router::RouterFault>,
}

/// Makes an attachment from the monitor of the server being built.
type AttachHook = Box<dyn FnOnce(ServerMonitor) -> Box<dyn Send + Sync> + Send>;

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("pid", &self.pid)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// A builder for node `pid` of `config` (the same as [`Server::builder`], without having
    /// to name the message type up front).
    pub fn new(pid: Pid, config: Config) -> Self {
        Self {
            pid,
            config,
            incarnation: None,
            members: Vec::new(),
            attachments: Vec::new(),
            attach_hooks: Vec::new(),
            #[cfg(feature = "fault-injection")]
            router_fault: None,
        }
    }

    /// Test-only (feature `fault-injection`, for `cluster-testkit`'s mutants): builds the
    /// server with a deliberately broken router, to show that the contract checks catch it.
    /// Never use it outside tests.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn router_fault(mut self, fault: crate::router::RouterFault) -> Self {
        self.router_fault = Some(fault);
        self
    }

    /// The incarnation this node runs as (see [`Server::incarnation`]).
    ///
    /// You promise that it grows each time this pid starts again: take it from durable
    /// storage, as the peer catalog does (`cluster::new` opens it for you). A value that
    /// repeats across restarts repeats [`Server::next_msg_id`]'s ids, and peers that saw a
    /// higher one drop the restarted node's frames as `stale_incarnation`.
    ///
    /// Without it, the server takes the incarnation its transport knows (the in-memory
    /// network counts restarts), else one from the wall clock (see
    /// [`clock_incarnation`]) — with a warning in the log, since that is only as good as the
    /// clock.
    pub fn incarnation(mut self, incarnation: Incarnation) -> Self {
        self.incarnation = Some(incarnation);
        self
    }

    /// Membership records to start from, over the config's (see [`crate::membership`]):
    /// what this node knew when it last ran, from durable storage (the peer catalog keeps
    /// them: `cluster::new` passes them), so that a restarted node comes back with the
    /// current membership rather than the config's. A record replaces the config's for its
    /// pid when its stamp is higher (any change beats the config).
    pub fn members(mut self, records: impl IntoIterator<Item = Member>) -> Self {
        self.members.extend(records);
        self
    }

    /// Keeps `value` alive as long as the server runs, and drops it once the server's task has
    /// finished (after `shutdown`, or when the server is dropped). For companions such as a
    /// catalog recorder whose `Drop` does a final flush.
    pub fn attach(mut self, value: impl Send + Sync + 'static) -> Self {
        self.attachments.push(Box::new(value));
        self
    }

    /// Like [`ServerBuilder::attach`], for companions that watch the server: `make` is called
    /// once, inside [`ServerBuilder::build`] (so inside the tokio runtime), with the new
    /// server's [`ServerMonitor`], and what it returns lives as long as the server.
    pub fn attach_with<A: Send + Sync + 'static>(
        mut self,
        make: impl FnOnce(ServerMonitor) -> A + Send + 'static,
    ) -> Self {
        self.attach_hooks
            .push(Box::new(move |monitor| Box::new(make(monitor))));
        self
    }

    /// Starts the server over `transport`. Must be called inside a tokio runtime.
    pub fn build<M: Message, T: Transport>(self, transport: T) -> Result<Server<M>, ServerError> {
        let Self {
            pid,
            config,
            incarnation,
            members,
            mut attachments,
            attach_hooks,
            #[cfg(feature = "fault-injection")]
            router_fault,
        } = self;
        config.check_member(pid)?;
        let opts = config.options();
        let keyless = if opts.encrypt {
            Some("\"encrypt\" is set".to_owned())
        } else if opts.mac != crate::config::MacAlgorithm::Blake3 {
            Some(format!("\"mac\" is \"{}\"", opts.mac))
        } else {
            None
        };
        if let Some(what) = keyless.filter(|_| config.cluster_key().is_none()) {
            // Set in code (`with_options`) rather than loaded: the loader refuses it too. A
            // node must not quietly send in clear (or untagged) what its config protects.
            return Err(ConfigError {
                origin: config.origin().to_owned(),
                entry: None,
                pid: None,
                problem: crate::config::ConfigProblem::BadKey(format!(
                    "{what} but no key is: set \"key_file\" or \"key_env\" \
                     (or Config::with_cluster_key)"
                )),
            }
            .into());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ServerError::NoRuntime)?;
        let incarnation = incarnation
            .or_else(|| transport.incarnation())
            .unwrap_or_else(|| {
                let incarnation = clock_incarnation();
                tracing::warn!(
                    pid,
                    incarnation,
                    "node {pid} runs without a peer catalog: its incarnation ({incarnation}) \
                     comes from the wall clock, so two starts within one second (or a clock \
                     set back) repeat message ids and make peers drop its frames as stale; \
                     use cluster::new, or ServerBuilder::incarnation from durable storage"
                );
                incarnation
            });
        let opts = config.options().clone();
        let mut table = Table::from_config(&config);
        for record in members {
            let _ = table.merge(record);
        }
        // Restored records: the transport learns of peers that joined since the config
        // was written, and forgets those that left.
        for record in table.records().into_iter().filter(|m| m.pid != pid) {
            let configured = config.peer(record.pid).map(|p| p.address.as_str());
            let result = match (record.present, configured) {
                (true, Some(a)) if a == record.address => Ok(()),
                (true, _) => transport.add_peer(record.pid, &record.address),
                (false, Some(_)) => transport.remove_peer(record.pid),
                (false, None) => Ok(()),
            };
            result?;
        }
        let mut all = table.present();
        if let Err(i) = all.binary_search(&pid) {
            all.insert(i, pid);
        }
        let peers: Vec<Pid> = all.iter().copied().filter(|p| *p != pid).collect();
        let stats = Arc::new(StatsCells::new(all.clone()));
        let events = Arc::new(EventHub::new());
        let router = Router::new(
            pid,
            incarnation,
            all,
            opts.max_message_size,
            Arc::clone(&stats),
            Sealer::for_options(config.cluster_key().cloned(), &opts),
            opts.heartbeat_timeout,
        );
        #[cfg(feature = "fault-injection")]
        let router = router.with_fault(router_fault);
        // Unacknowledged frames sit in the sender's transport queue, the receiver's (each
        // up to `peer_queue`), the sockets' buffers between them (megabytes: thousands of
        // small frames), and wait for the receiver's task to run: a window of sixteen
        // queues keeps a healthy link on a busy machine from dropping for want of
        // acknowledgements. Its bookkeeping costs 4 bytes a frame (1 MiB a peer by
        // default); `peer_queue_bytes` bounds the frames themselves.
        let acks = transport.may_lose_accepted().then_some(AckOptions {
            window_frames: opts.peer_queue.saturating_mul(16),
            window_bytes: opts.peer_queue_bytes,
        });
        let router = router
            .with_acks(acks)
            .with_events(Arc::clone(&events))
            .with_table(table);
        let (stop_tx, stop_rx) = oneshot::channel();
        let connected = transport.connected();
        // With acknowledgements, the backlog holds at most what every peer may have
        // unacknowledged (see `Driver`).
        let senders = peers.len().max(1);
        let backlog_max = acks.map(|a| {
            (
                a.window_frames.saturating_mul(senders),
                a.window_bytes.saturating_mul(senders),
            )
        });
        let groups = Groups::new(config.groups());
        let sending = Arc::new(Sending::new(
            pid,
            Box::new(transport),
            router,
            Receiving::new(opts.inbox_capacity, opts.inbox_bytes, backlog_max),
            groups.clone(),
            opts.send_timeout,
        ));
        let depth: Arc<dyn Depth> = Arc::clone(&sending) as Arc<dyn Depth>;
        for hook in attach_hooks {
            attachments.push(hook(ServerMonitor {
                pid,
                stats: Arc::clone(&stats),
                connected: connected.clone(),
                events: Arc::clone(&events),
                depth: Arc::downgrade(&depth),
            }));
        }
        let driver = Driver {
            node: Arc::clone(&sending),
            tick: opts.heartbeat_interval,
            linger: opts.linger,
        };
        // However the node's task ends (stopped, or dropped with its runtime, polled or
        // not, or a panic), sends fail from then on and the inbox ends once read.
        let stopped = StopOnDrop(Arc::clone(&sending), Arc::clone(&events));
        let task = runtime.spawn(async move {
            let _stopped = stopped;
            driver.run(stop_rx).await;
            // Companions may do blocking I/O as they go (a catalog's final flush): off the
            // async threads, and finished before `shutdown` returns.
            if !attachments.is_empty() {
                let _ = tokio::task::spawn_blocking(move || drop(attachments)).await;
            }
        });
        let control: Arc<dyn Control> = Arc::clone(&sending) as Arc<dyn Control>;
        Ok(Server {
            handle: ServerHandle {
                pid,
                peers,
                control,
                incarnation,
                config,
                stats,
                ids: MsgIds::new(pid, incarnation),
                connected,
                events,
                groups,
                depth,
                stop: Some(stop_tx),
                task: Some(task),
            },
            outbox: Outbox::new(Arc::clone(&sending)),
            inbox: Inbox::new(sending, runtime),
        })
    }
}

/// Seconds since 2025-01-01 UTC, at least 1: the incarnation of a node that has no durable
/// one (no peer catalog). It grows across restarts that are at least a second apart, as
/// long as the clock is not set back. Fits an [`Incarnation`] until the year 2161.
pub fn clock_incarnation() -> Incarnation {
    /// 2025-01-01T00:00:00Z in Unix seconds.
    const EPOCH: u64 = 1_735_689_600;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Incarnation::try_from(now.saturating_sub(EPOCH))
        .unwrap_or(Incarnation::MAX)
        .max(1)
}

/// A source of message ids, unique across the cluster and across restarts: a cheap clone
/// for every task that sends (they share one counter). From [`Server::msg_ids`].
///
/// Layout (bits, high to low): 0, pid (16), incarnation mod 2^15 (15), counter (32). Ids
/// are unique as long as a node draws fewer than 2^32 ids per incarnation, and two
/// incarnations of one pid whose ids may meet differ by less than 2^15: incarnations floored
/// by the clock (the peer catalog's, or the clock's alone) grow by one a second, so that
/// is about nine hours between starts, or 32,768 starts within a second.
///
/// The library carries `msg_id` from sender to receiver and never reads it: ids are for
/// your protocol (matching replies, deduplicating), any value is sent as it is.
#[derive(Clone)]
pub struct MsgIds {
    base: MsgId,
    counter: Arc<AtomicU32>,
}

impl std::fmt::Debug for MsgIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgIds")
            .field("base", &format_args!("{:#x}", self.base))
            .field("drawn", &self.counter.load(Ordering::Relaxed))
            .finish()
    }
}

impl MsgIds {
    /// The id source of node `pid` running as `incarnation`.
    pub fn new(pid: Pid, incarnation: Incarnation) -> Self {
        let pid = i64::from(pid) & 0xFFFF;
        let inc = i64::from(incarnation & 0x7FFF);
        Self {
            base: (pid << 47) | (inc << 32),
            counter: Arc::new(AtomicU32::new(0)),
        }
    }

    /// A fresh id.
    #[allow(clippy::should_implement_trait)] // not an Iterator: it never ends, and is shared
    pub fn next(&self) -> MsgId {
        self.base | i64::from(self.counter.fetch_add(1, Ordering::Relaxed))
    }
}

/// One node of the cluster: an outbox to send [`Envelope`](crate::Envelope)s from, an inbox to receive them.
///
/// All routing happens here, over any [`Transport`]: a send to a peer goes to that peer only,
/// [`BROADCAST`](crate::BROADCAST) to every peer but this one (encoded once), a send to this
/// node's own pid lands in its own inbox, and a send to an unknown pid is counted and dropped;
/// a [multicast](Outbox::multicast) applies these rules to each of its destinations.
/// See the crate docs for the full delivery contract.
///
/// To send and receive from different tasks, clone [`Server::outbox`] and
/// [`Server::msg_ids`], or take the server apart with [`Server::into_split`].
pub struct Server<M> {
    handle: ServerHandle,
    outbox: Outbox<M>,
    inbox: Inbox<M>,
}

impl<M> std::fmt::Debug for Server<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("pid", &self.handle.pid)
            .field("incarnation", &self.handle.incarnation)
            .field("peers", &self.handle.peers)
            .finish_non_exhaustive()
    }
}

impl<M: Message> Server<M> {
    /// Starts node `pid` of `config` over `transport`. Its incarnation is the one the
    /// transport knows, else one from the clock (see [`ServerBuilder::incarnation`] for
    /// why the peer catalog — `cluster::new` — is the safe choice on real networks).
    /// Must be called inside a tokio runtime.
    pub fn with_transport<T: Transport>(
        pid: Pid,
        config: Config,
        transport: T,
    ) -> Result<Self, ServerError> {
        Self::builder(pid, config).build(transport)
    }
}

impl<M> Server<M> {
    /// A builder for node `pid` of `config`.
    pub fn builder(pid: Pid, config: Config) -> ServerBuilder {
        ServerBuilder::new(pid, config)
    }

    /// This node's pid.
    pub fn pid(&self) -> Pid {
        self.handle.pid
    }

    /// Every other member when the node started, ascending: the config's, or the
    /// membership restored from its catalog. Membership can change at run time: see
    /// [`Server::current_peers`].
    pub fn peers(&self) -> &[Pid] {
        &self.handle.peers
    }

    /// This node's incarnation, which increases each time the node restarts.
    pub fn incarnation(&self) -> Incarnation {
        self.handle.incarnation
    }

    /// The config this node runs with.
    pub fn config(&self) -> &Config {
        &self.handle.config
    }

    /// The outbox: send an envelope whose `pid` is a peer, this node, or `BROADCAST`.
    /// Clone it freely; see [`Outbox`] for when a send waits.
    pub fn outbox(&self) -> Outbox<M> {
        self.outbox.clone()
    }

    /// The inbox: envelopes from peers (and from this node to itself), `pid` = the sender.
    /// When it is full, the node stops taking frames from its peers (see [`Inbox`]).
    pub fn inbox(&mut self) -> &mut Inbox<M> {
        &mut self.inbox
    }

    /// Takes the server apart, so that receiving can run in a task of its own: the outbox
    /// (clone it for more senders), the inbox, and the [`ServerHandle`] that keeps the
    /// node running and stops it. Dropping the handle stops the node, as dropping the
    /// server does.
    pub fn into_split(self) -> (Outbox<M>, Inbox<M>, ServerHandle) {
        (self.outbox, self.inbox, self.handle)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.handle.stats()
    }

    /// A fresh message id, unique across the cluster and across restarts (see [`MsgIds`]).
    pub fn next_msg_id(&self) -> MsgId {
        self.handle.next_msg_id()
    }

    /// A cloneable source of the same ids as [`Server::next_msg_id`], for tasks that hold
    /// only an outbox.
    pub fn msg_ids(&self) -> MsgIds {
        self.handle.msg_ids()
    }

    /// The peers this node currently has a live connection to.
    pub fn connected_peers(&self) -> Vec<Pid> {
        self.handle.connected_peers()
    }

    /// Defines (or redefines) this node's multicast group `name` as `pids`, for
    /// [`Outbox::multicast`] from now on. See [`ServerHandle::set_group`].
    pub fn set_group(
        &self,
        name: impl Into<String>,
        pids: impl IntoIterator<Item = Pid>,
    ) -> Result<(), GroupError> {
        self.handle.set_group(name, pids)
    }

    /// Forgets this node's group `name`; its members, if it had one.
    pub fn remove_group(&self, name: &str) -> Option<Vec<Pid>> {
        self.handle.remove_group(name)
    }

    /// This node's multicast groups as they are now: name → members, ascending.
    pub fn groups(&self) -> BTreeMap<String, Vec<Pid>> {
        self.handle.groups()
    }

    /// A cloneable, read-only view of this server's counters and connections, for tasks
    /// that watch a server (e.g. the peer catalog recording status and last-seen).
    pub fn monitor(&self) -> ServerMonitor {
        self.handle.monitor()
    }

    /// Waits until this node has a live connection to every peer, or `timeout` passes: a
    /// start-up barrier for transports that connect asynchronously (ZeroMQ). See
    /// [`ServerHandle::wait_for_peers`] for what it does and does not promise.
    pub async fn wait_for_peers(&self, timeout: Duration) -> Result<(), WaitTimeout> {
        self.handle.wait_for_peers(timeout).await
    }

    /// Waits until every peer is [`Up`](crate::Event::Up) — messages flow both ways — or
    /// `timeout` passes: the start-up barrier that also covers the peers' connections to
    /// this node (see [`ServerHandle::wait_for_peers_up`]).
    pub async fn wait_for_peers_up(&self, timeout: Duration) -> Result<(), WaitTimeout> {
        self.handle.wait_for_peers_up(timeout).await
    }

    /// A new subscription to this node's peer events (`Up`, `Down`, `Restarted`, …), from
    /// now on: see [`Events`] and [`crate::events`].
    pub fn events(&self) -> Events {
        self.handle.events()
    }

    /// The peers that are [`Up`](crate::Event::Up) now: messages flow both ways.
    pub fn up_peers(&self) -> Vec<Pid> {
        self.handle.up_peers()
    }

    /// Adds node `pid` at `address` to the cluster, at run time: see
    /// [`ServerHandle::add_peer`].
    pub fn add_peer(&self, pid: Pid, address: &str) -> Result<(), MembershipError> {
        self.handle.add_peer(pid, address)
    }

    /// Removes node `pid` from the cluster, at run time: see [`ServerHandle::remove_peer`].
    pub fn remove_peer(&self, pid: Pid) -> Result<(), MembershipError> {
        self.handle.remove_peer(pid)
    }

    /// Every membership record this node holds: see [`ServerHandle::members`].
    pub fn members(&self) -> Vec<Member> {
        self.handle.members()
    }

    /// The other members now, ascending: [`Server::peers`] plus those that joined, less
    /// those that left.
    pub fn current_peers(&self) -> Vec<Pid> {
        self.handle.current_peers()
    }

    /// Asks the members in this node's config to let it in: see [`ServerHandle::join`].
    pub async fn join(&self, timeout: Duration) -> Result<(), WaitTimeout> {
        self.handle.join(timeout).await
    }

    /// Asks the members to let this node go: see [`ServerHandle::leave`].
    pub async fn leave(&self, timeout: Duration) -> Result<(), WaitTimeout> {
        self.handle.leave(timeout).await
    }

    /// Stops the node: later sends fail, what was sent is flushed to live peers for at
    /// most the configured linger, and the transport is released (ports included).
    pub async fn shutdown(mut self) {
        self.handle.stop_task().await;
    }

    /// Stops the node like [`Server::shutdown`], but keeps the server so that what is still
    /// in its inbox can be read (`inbox().try_recv()`). The outbox is closed: later sends fail.
    pub async fn stop(&mut self) {
        self.handle.stop_task().await;
    }
}

/// What keeps a node running once [`Server::into_split`] has handed out its outbox and
/// inbox: identity, counters, message ids, connections, and [`ServerHandle::shutdown`].
/// Dropping it stops the node.
pub struct ServerHandle {
    pid: Pid,
    peers: Vec<Pid>,
    control: Arc<dyn Control>,
    depth: Arc<dyn Depth>,
    incarnation: Incarnation,
    config: Config,
    stats: Arc<StatsCells>,
    ids: MsgIds,
    connected: watch::Receiver<PeerSet>,
    events: Arc<EventHub>,
    groups: Groups,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("pid", &self.pid)
            .field("incarnation", &self.incarnation)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// This node's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Every other member when the node started, ascending (see [`Server::peers`]).
    pub fn peers(&self) -> &[Pid] {
        &self.peers
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The config this node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// A fresh message id (see [`MsgIds`]).
    pub fn next_msg_id(&self) -> MsgId {
        self.ids.next()
    }

    /// A cloneable source of this node's message ids.
    pub fn msg_ids(&self) -> MsgIds {
        self.ids.clone()
    }

    /// The peers this node currently has a live connection to.
    pub fn connected_peers(&self) -> Vec<Pid> {
        self.monitor().connected_peers()
    }

    /// Defines (or redefines) this node's multicast group `name` as `pids`: multicasts to
    /// `name` from any of its outboxes go to these pids from now on. Every pid must be in
    /// the config (this node's own may be: its copy lands in its own inbox); duplicates
    /// count once; the name must not be empty. A group is this node's name for a list of
    /// pids: it changes nothing on other nodes, and is not propagated to them (each node
    /// starts with the config's `"groups"`).
    pub fn set_group(
        &self,
        name: impl Into<String>,
        pids: impl IntoIterator<Item = Pid>,
    ) -> Result<(), GroupError> {
        let name = name.into();
        let members = group::members(&name, pids, |pid| self.config.contains(pid))?;
        self.groups.set(name, members);
        Ok(())
    }

    /// Forgets this node's group `name` (a multicast to it then fails with
    /// [`MulticastError::UnknownGroup`](crate::MulticastError)); its members, if it had
    /// one.
    pub fn remove_group(&self, name: &str) -> Option<Vec<Pid>> {
        self.groups.remove(name)
    }

    /// This node's multicast groups as they are now: name → members, ascending.
    pub fn groups(&self) -> BTreeMap<String, Vec<Pid>> {
        self.groups.snapshot()
    }

    /// A cloneable, read-only view of the counters and connections.
    pub fn monitor(&self) -> ServerMonitor {
        ServerMonitor {
            pid: self.pid,
            stats: Arc::clone(&self.stats),
            connected: self.connected.clone(),
            events: Arc::clone(&self.events),
            depth: Arc::downgrade(&self.depth),
        }
    }

    /// A new subscription to this node's peer events, from now on (see [`Events`]).
    pub fn events(&self) -> Events {
        self.events.subscribe()
    }

    /// Adds node `pid` at `address` to the cluster, at run time (see
    /// [`crate::membership`]): this node connects to it, routes to it (a
    /// [`BROADCAST`](crate::BROADCAST) includes it), tells [`Joined`](crate::Event::Joined),
    /// and sends the change to every member, which does the same. The new node itself
    /// learns the membership from the members (its own config need only list some).
    /// Returns once the change is made here, without waiting for the others.
    pub fn add_peer(&self, pid: Pid, address: &str) -> Result<(), MembershipError> {
        self.control.add(pid, address)
    }

    /// Removes node `pid` from the cluster, at run time (see [`crate::membership`]):
    /// messages to it are dropped as `unknown_peer` from now on (what its transport still
    /// held too), its frames as `unknown_sender`; this node tells
    /// [`Left`](crate::Event::Left) and sends the change to every member, and to `pid`.
    pub fn remove_peer(&self, pid: Pid) -> Result<(), MembershipError> {
        self.control.remove(pid)
    }

    /// Every membership record this node holds, by pid: members and former members, each
    /// with its address and the stamp of the change that set it.
    pub fn members(&self) -> Vec<Member> {
        self.events.members().borrow().records()
    }

    /// The other members now, ascending.
    pub fn current_peers(&self) -> Vec<Pid> {
        let mut peers = self.events.members().borrow().present();
        peers.retain(|p| *p != self.pid);
        peers
    }

    /// Asks to be let in: sends a join request (this node, present, at its address in its
    /// membership records or config) to every other member it knows of that is not
    /// [`Up`](crate::Event::Up) yet, every heartbeat interval, until all are up or
    /// `timeout` passes. A member that accepts adds this node like
    /// [`ServerHandle::add_peer`] and sends it its records, so this node learns the rest of
    /// the cluster. With a cluster key, a node without it cannot join.
    pub async fn join(&self, timeout: Duration) -> Result<(), WaitTimeout> {
        let address = self.own_address();
        let beat = self.config.options().heartbeat_interval;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let up = self.events.up().borrow().clone();
            let missing: Vec<Pid> = self
                .current_peers()
                .into_iter()
                .filter(|p| !up.contains(p))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WaitTimeout {
                    missing,
                    waited: timeout,
                });
            }
            self.control.request(&missing, &address, true);
            let mut rx = self.events.up();
            let _ = tokio::time::timeout(beat, rx.changed()).await;
        }
    }

    /// Asks to be let go: sends a leave request to every other member, every heartbeat
    /// interval, until one of them has removed this node (this node then tells
    /// [`Left`](crate::Event::Left) about itself) or `timeout` passes. Stop the node after:
    /// its peers drop what it sends from then on.
    pub async fn leave(&self, timeout: Duration) -> Result<(), WaitTimeout> {
        let address = self.own_address();
        let beat = self.config.options().heartbeat_interval;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut members = self.events.members();
        let gone = |records: &[Member]| records.iter().any(|m| m.pid == self.pid && !m.present);
        loop {
            if gone(&members.borrow_and_update().records()) {
                return Ok(());
            }
            let peers = self.current_peers();
            if tokio::time::Instant::now() >= deadline {
                return Err(WaitTimeout {
                    missing: peers,
                    waited: timeout,
                });
            }
            self.control.request(&peers, &address, false);
            let _ = tokio::time::timeout(beat, members.changed()).await;
        }
    }

    /// This node's address: its membership record's, else the config's.
    fn own_address(&self) -> String {
        self.events
            .members()
            .borrow()
            .get(self.pid)
            .map(|m| m.address)
            .or_else(|| self.config.peer(self.pid).map(|p| p.address.clone()))
            .unwrap_or_default()
    }

    /// The peers that are [`Up`](crate::Event::Up) now: messages flow both ways.
    pub fn up_peers(&self) -> Vec<Pid> {
        self.events.up().borrow().iter().copied().collect()
    }

    /// Waits until every peer is [`Up`](crate::Event::Up), or `timeout` passes.
    ///
    /// Stronger than [`ServerHandle::wait_for_peers`]: besides this node's connection to
    /// every peer, a frame from every peer's current incarnation arrived over its
    /// connection to this node (the peers greet the nodes they connect to). So a message
    /// sent now to a healthy peer is delivered, and the peer's messages to this node are
    /// no longer dropped as `unreachable` for want of a connection — the gap that
    /// `wait_for_peers` leaves after a restart. On a timeout, `missing` lists the peers
    /// that were not up.
    pub async fn wait_for_peers_up(&self, timeout: Duration) -> Result<(), WaitTimeout> {
        let peers = self.current_peers();
        let mut rx = self.events.up();
        let all = |set: &PeerSet| peers.iter().all(|p| set.contains(p));
        let wait = rx.wait_for(|set| all(set));
        if let Ok(Ok(_)) = tokio::time::timeout(timeout, wait).await {
            return Ok(());
        }
        let set = self.events.up().borrow().clone();
        Err(WaitTimeout {
            missing: peers.iter().copied().filter(|p| !set.contains(p)).collect(),
            waited: timeout,
        })
    }

    /// Waits until this node has a live connection to every peer, or `timeout` passes.
    ///
    /// What it promises: every peer has accepted this node's outgoing connection, so a
    /// message sent now to a healthy peer is delivered (contract C5). What it does not: that
    /// the peers can reach this node yet. Each peer connects to this node on its own
    /// schedule; a node that just restarted may have its peers' messages to it dropped as
    /// `unreachable` until they have reconnected (on ZeroMQ, up to the reconnection
    /// back-off after they noticed the restart: about 0.7 s measured on loopback). A
    /// protocol that needs both directions should exchange a message first.
    pub async fn wait_for_peers(&self, timeout: Duration) -> Result<(), WaitTimeout> {
        let peers = self.current_peers();
        let mut rx = self.connected.clone();
        let all = |set: &PeerSet| peers.iter().all(|p| set.contains(p));
        let wait = rx.wait_for(|set| all(set));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(WaitTimeout {
                missing: {
                    let set = self.connected.borrow();
                    peers.iter().copied().filter(|p| !set.contains(p)).collect()
                },
                waited: timeout,
            }),
        }
    }

    /// Stops the node: later sends fail, what was sent is flushed to live peers for at
    /// most the configured linger, and the transport is released (ports included). Senders
    /// still holding the outbox see it closed; the inbox yields what it holds, then `None`.
    pub async fn shutdown(mut self) {
        self.stop_task().await;
    }

    async fn stop_task(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!(pid = self.pid, "server task failed: {e}");
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // Dropping the stop sender tells the task to finish on its own.
        self.stop.take();
    }
}

/// A read-only view of a [`Server`]: counters and connection state. Cheap to clone; stays
/// valid (frozen) after the server stops.
#[derive(Clone)]
pub struct ServerMonitor {
    pid: Pid,
    stats: Arc<StatsCells>,
    connected: watch::Receiver<PeerSet>,
    events: Arc<EventHub>,
    /// Weak: a monitor (a catalog recorder, a metrics exporter) must not keep a stopped
    /// or killed node's transport, and so its sockets, alive.
    depth: std::sync::Weak<dyn Depth>,
}

impl std::fmt::Debug for ServerMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMonitor")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl ServerMonitor {
    /// The watched server's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// The peers with a live connection now.
    pub fn connected_peers(&self) -> Vec<Pid> {
        self.connected
            .borrow()
            .iter()
            .copied()
            .filter(|p| *p != self.pid)
            .collect()
    }

    /// A receiver that changes whenever the connection set does.
    pub fn connection_changes(&self) -> watch::Receiver<PeerSet> {
        self.connected.clone()
    }

    /// A new subscription to the watched server's peer events (see [`Events`]).
    pub fn events(&self) -> Events {
        self.events.subscribe()
    }

    /// The peers that are [`Up`](crate::Event::Up) now: messages flow both ways.
    pub fn up_peers(&self) -> Vec<Pid> {
        self.events.up().borrow().iter().copied().collect()
    }

    /// Every membership record the watched server holds (see [`ServerHandle::members`]).
    pub fn members(&self) -> Vec<Member> {
        self.events.members().borrow().records()
    }

    /// The watched server's inbox: envelopes waiting to be read (including those a reader
    /// has taken in its current batch), and, on transports with acknowledgements, frames
    /// taken off the transport that wait for room behind them (the backlog). `(0, 0)` once
    /// the node and its handles are gone: a monitor does not keep them alive.
    pub fn inbox_depth(&self) -> (usize, usize) {
        self.depth
            .upgrade()
            .map_or((0, 0), |node| node.inbox_depth())
    }
}

/// The node's receiving side and timers; sending happens in the senders' own tasks
/// ([`Outbox`]), through the [`Sending`] state it shares with them.
///
/// Flow control from a full inbox back to the senders takes one of two forms:
///
/// * Transports without acknowledgements (in memory): the task takes frames off the
///   transport only as the inbox has room, so that the transport's queues fill and the
///   senders' sends wait for room there.
/// * Transports with acknowledgements (ZeroMQ): the task keeps taking frames (a libzmq
///   connection left unread while its peer goes away can abort the process: see
///   `cluster-zmq`), holds what the inbox has no room for in a backlog, and acknowledges
///   only what reached its end (delivered, or dropped and counted). The senders' windows
///   of unacknowledged frames fill, and their sends wait for acknowledgements. The
///   backlog is bounded by those windows (each peer's `16 × peer_queue` frames and
///   `peer_queue_bytes` bytes); a sender that ignores them has what exceeds the bound
///   dropped as `backpressure`.
struct Driver<M> {
    node: Arc<Sending<M>>,
    /// How often silent peers' unacknowledged frames are written off (the heartbeat
    /// interval); acknowledgements are flushed [`ACK_TICKS`] times as often.
    tick: Duration,
    linger: Duration,
}

/// Closes a node's sending, receiving and events when dropped (see `Driver::run`).
struct StopOnDrop<M: Message>(Arc<Sending<M>>, Arc<EventHub>);

impl<M: Message> Drop for StopOnDrop<M> {
    fn drop(&mut self) {
        self.0.close();
        self.0.stop_receiving();
        self.1.close();
    }
}

/// Acknowledgement flushes per heartbeat interval: a receiver acknowledges what it got
/// within a tenth of the interval (50 ms by default) even when traffic is too light to
/// fill a quarter window, so that a peer that dies soon after receiving leaves little
/// counted twice (delivered there, unconfirmed here).
const ACK_TICKS: u32 = 10;

impl<M: Message> Driver<M> {
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let node = self.node;
        let confirming = node.transport.may_lose_accepted();
        // Acknowledgements are flushed ACK_TICKS times per heartbeat interval; without
        // them, the task ticks once per interval (greetings, for peer events).
        let per_beat = if confirming { ACK_TICKS } else { 1 };
        let mut tick = tokio::time::interval((self.tick / per_beat).max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u32 = 0;
        // This node's connections, as they change: peer events, and greetings.
        let mut connections = node.connected.clone();
        connections.mark_changed();
        let mut watching = true;
        // The transport's `readable`, kept between wake-ups (see `Sending::poll_readable`).
        let mut readable = None;
        loop {
            let may_take = {
                let st = node.recv.lock();
                let may = node.recv.may_take(&st);
                node.recv.set_task_waits(!may);
                may
            };
            // Biased, in this order: a simulation with a paused clock replays exactly
            // (tokio's random branch order is not seeded).
            tokio::select! {
                biased;
                _ = &mut stop => break,
                changed = connections.changed(), if watching => {
                    if changed.is_err() {
                        // The transport is gone: its set stays as it was.
                        watching = false;
                        continue;
                    }
                    // A copy: no lock of the watch channel is held while sending.
                    let connected = connections.borrow_and_update().clone();
                    let mut state = node.lock();
                    let transport = &node.transport;
                    let router = state.router();
                    router.connectivity(&connected, |to, frame| transport.send(to, frame));
                    router.flush_membership(&**transport);
                }
                _ = tick.tick() => {
                    {
                        let mut state = node.lock();
                        let transport = &node.transport;
                        let router = state.router();
                        router.acknowledge(true, |to, frame| transport.send(to, frame));
                        ticks = (ticks + 1) % per_beat;
                        if ticks == 0 {
                            // A copy: no lock of the watch channel is held while sending.
                            let connected = node.connected.borrow().clone();
                            router.write_off(&connected);
                            router.probe_silent(&connected, |to, frame| transport.send(to, frame));
                            router.greet(true, |to, frame| transport.send(to, frame));
                        }
                        router.flush_membership(&**transport);
                    }
                    if ticks == 0 && confirming {
                        node.credit.notify_waiters();
                    }
                }
                // The reader made room, or closed or dropped the inbox (what arrives is
                // then taken, to be dropped): look again. (Also what wakes this task when
                // it kept off the transport for a parked reader that went away.)
                () = node.recv.room.notified() => node.pump_and_wake(),
                ready = std::future::poll_fn(|cx| node.poll_readable(&mut readable, cx)),
                    if may_take =>
                {
                    if !ready {
                        node.recv.lock().transport_gone = true;
                        continue;
                    }
                    node.pump_after_reader().await;
                    // Reading a ready transport may touch no tokio resource, so the
                    // runtime's budget alone would seldom make this task yield: the tasks
                    // reading the inbox and feeding the transport, maybe on the same
                    // thread, would wait. A batch at most between two yields.
                    tokio::task::yield_now().await;
                }
            }
        }
        drop(readable);
        node.close();
        node.stop_receiving();
        node.transport.shutdown(self.linger).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::envelope::Envelope;
    use crate::stats::DropReason;
    use crate::transport::TransportEvent;

    /// A transport that connects to nobody, and reports an incarnation if given one.
    struct Nowhere {
        incarnation: Option<Incarnation>,
        connected: watch::Receiver<PeerSet>,
        _keep: watch::Sender<PeerSet>,
    }

    fn nowhere(incarnation: Option<Incarnation>) -> Nowhere {
        let (tx, rx) = watch::channel(PeerSet::new());
        Nowhere {
            incarnation,
            connected: rx,
            _keep: tx,
        }
    }

    #[async_trait::async_trait]
    impl Transport for Nowhere {
        fn send(&self, _to: Pid, _frame: Bytes) -> Result<(), DropReason> {
            Err(DropReason::Unreachable)
        }
        async fn readable(&self) -> bool {
            std::future::pending().await
        }
        fn try_recv_many(&self, _events: &mut Vec<TransportEvent>, _max: usize) -> usize {
            0
        }
        fn connected(&self) -> watch::Receiver<PeerSet> {
            self.connected.clone()
        }
        async fn shutdown(&self, _linger: Duration) {}
        fn incarnation(&self) -> Option<Incarnation> {
            self.incarnation
        }
    }

    fn config() -> Config {
        Config::local(3, 7100).unwrap()
    }

    #[tokio::test]
    async fn the_incarnation_comes_from_the_builder_then_the_transport_then_the_clock() {
        let s: Server<u8> = Server::<u8>::builder(1, config())
            .incarnation(7)
            .build(nowhere(Some(3)))
            .unwrap();
        assert_eq!(s.incarnation(), 7);
        let s = Server::<u8>::with_transport(1, config(), nowhere(Some(3))).unwrap();
        assert_eq!(s.incarnation(), 3);
        let before = clock_incarnation();
        let s = Server::<u8>::with_transport(1, config(), nowhere(None)).unwrap();
        assert!(s.incarnation() >= before && s.incarnation() <= clock_incarnation());
        // A year past 2025-01-01, so far from the first incarnations a catalog gives.
        assert!(before > 365 * 24 * 3600, "{before}");
    }

    /// `recv_many` takes what is there, up to the limit, and waits for at least one.
    #[tokio::test]
    async fn the_inbox_gives_many_at_once() {
        let mut s = Server::<u8>::with_transport(1, config(), nowhere(None)).unwrap();
        for i in 0..3 {
            s.outbox().send(Envelope::new(1, i, 7)).await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 3 {
            s.inbox().recv_many(&mut got, 2).await;
            assert!(got.len() <= 3);
        }
        assert_eq!(got.iter().map(|e| e.msg_id).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(s.inbox().is_empty());
        assert_eq!(s.inbox().bytes(), 0);
        assert!(s.inbox().try_recv().is_err());
    }

    /// The inbox is a stream: it yields in order, and ends once the node has stopped and
    /// everything waiting was read.
    #[tokio::test]
    async fn the_inbox_is_a_stream_that_ends_when_the_node_stops() {
        use futures::StreamExt;
        let mut s = Server::<u8>::with_transport(1, config(), nowhere(None)).unwrap();
        for i in 0..3 {
            s.outbox().send(Envelope::new(1, i, 7u8)).await.unwrap();
        }
        let first = s.inbox().next().await.unwrap();
        assert_eq!((first.pid, first.msg_id), (1, 0));
        assert_eq!(futures::Stream::size_hint(s.inbox()), (2, None));
        assert_eq!(s.inbox().len(), 2);
        s.stop().await;
        let within = |f| tokio::time::timeout(Duration::from_secs(10), f);
        let rest: Vec<_> = within(s.inbox().by_ref().map(|e| e.msg_id).collect())
            .await
            .expect("the stream ends");
        assert_eq!(rest, [1, 2]);
        assert!(s.inbox().next().await.is_none(), "ended");
        assert!(matches!(
            s.inbox().try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
        ));
    }

    /// A transport that raises a flag when it is dropped (its sockets closed).
    struct Released(Nowhere, Arc<AtomicBool>);

    impl Drop for Released {
        fn drop(&mut self) {
            self.1.store(true, Ordering::Release);
        }
    }

    #[async_trait::async_trait]
    impl Transport for Released {
        fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
            self.0.send(to, frame)
        }
        async fn readable(&self) -> bool {
            self.0.readable().await
        }
        fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
            self.0.try_recv_many(events, max)
        }
        fn connected(&self) -> watch::Receiver<PeerSet> {
            self.0.connected()
        }
        async fn shutdown(&self, linger: Duration) {
            self.0.shutdown(linger).await;
        }
    }

    /// A monitor outlives its node (its counters stay readable), but must not keep the node's
    /// transport alive: a killed node's sockets would go on taking frames meant for the
    /// node that replaces it.
    #[tokio::test]
    async fn a_monitor_does_not_keep_a_dropped_nodes_transport_alive() {
        for stop in [true, false] {
            let released = Arc::new(AtomicBool::new(false));
            let kept = Arc::new(std::sync::Mutex::new(None));
            let keep = Arc::clone(&kept);
            let mut s = Server::<u8>::builder(1, config())
                .attach_with(move |monitor| {
                    *keep.lock().unwrap() = Some(monitor.clone());
                    monitor
                })
                .build(Released(nowhere(None), Arc::clone(&released)))
                .unwrap();
            let monitor = s.monitor();
            s.outbox().send(Envelope::new(1, 0, 7u8)).await.unwrap();
            assert_eq!(monitor.inbox_depth(), (1, 0));
            if stop {
                s.stop().await;
            }
            drop(s);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !released.load(Ordering::Acquire) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the transport outlived its node (stopped: {stop})"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(monitor.inbox_depth(), (0, 0), "a gone node holds nothing");
            assert!(kept.lock().unwrap().is_some());
        }
    }

    /// `encrypt` without a key is an error, not a node that sends in clear.
    #[tokio::test]
    async fn encrypt_or_a_mac_choice_without_a_key_is_refused() {
        let encrypting = crate::Options {
            encrypt: true,
            ..crate::Options::default()
        };
        let siphash = crate::Options {
            mac: crate::MacAlgorithm::SipHash24,
            ..crate::Options::default()
        };
        for (options, says) in [
            (encrypting, "\"encrypt\" is set but no key is"),
            (siphash, "\"mac\" is \"siphash-2-4\" but no key is"),
        ] {
            let config = config().with_options(options).unwrap();
            let e = Server::<u8>::with_transport(1, config.clone(), nowhere(None)).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
            let key = crate::ClusterKey::from_bytes([1; crate::KEY_LEN]);
            let keyed = config.with_cluster_key(Some(key));
            assert!(Server::<u8>::with_transport(1, keyed, nowhere(None)).is_ok());
        }
    }

    #[tokio::test]
    async fn ids_are_shared_by_clones_and_differ_across_nodes_and_incarnations() {
        let mut seen = HashSet::new();
        for (pid, incarnation) in [(1, 1), (1, 2), (2, 1)] {
            let s: Server<u8> = Server::<u8>::builder(pid, config())
                .incarnation(incarnation)
                .build(nowhere(None))
                .unwrap();
            let ids = s.msg_ids();
            let other = ids.clone();
            let task =
                tokio::spawn(async move { (0..100).map(|_| other.next()).collect::<Vec<_>>() });
            for _ in 0..100 {
                assert!(seen.insert(ids.next()));
                assert!(seen.insert(s.next_msg_id()));
            }
            for id in task.await.unwrap() {
                assert!(seen.insert(id), "{id:#x} drawn twice");
            }
        }
        assert_eq!(seen.len(), 3 * 300);
        assert!(seen.iter().all(|id| *id >= 0));
    }

    #[tokio::test]
    async fn a_split_server_sends_receives_and_stops_from_its_handle() {
        let s = Server::<String>::with_transport(1, config(), nowhere(None)).unwrap();
        let (outbox, mut inbox, handle) = s.into_split();
        let receiver = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(env) = inbox.recv().await {
                got.push(env);
            }
            got
        });
        let ids = handle.msg_ids();
        outbox
            .send(Envelope::new(1, ids.next(), "to myself".into()))
            .await
            .unwrap();
        outbox
            .send(Envelope::new(2, ids.next(), "unreachable".into()))
            .await
            .unwrap();
        outbox
            .send(Envelope::new(9, ids.next(), "nobody".into()))
            .await
            .unwrap();
        handle.shutdown().await;
        // The inbox ends once the node has stopped: the receiving task finishes.
        let got = receiver.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].pid, got[0].msg.as_str()), (1, "to myself"));
        assert!(
            outbox
                .send(Envelope::new(1, 0, "late".into()))
                .await
                .is_err()
        );
    }
}
