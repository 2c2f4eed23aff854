//! The node: outbox and inbox channels, driven by one task that owns the transport.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::envelope::{Envelope, MsgId, Pid};
use crate::router::Router;
use crate::stats::{DropReason, Stats, StatsCells};
use crate::transport::{PeerSet, Transport, TransportError, TransportEvent};
use crate::wire::Incarnation;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peers not connected after {waited:?}: {missing:?}")]
pub struct WaitTimeout {
    /// The peers without a live connection at the deadline.
    pub missing: Vec<Pid>,
    /// How long it waited.
    pub waited: Duration,
}

/// Message types a server can carry.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {}
impl<M: Serialize + DeserializeOwned + Send + 'static> Message for M {}

/// Builds a [`Server`] with settings beyond those of [`Server::with_transport`].
pub struct ServerBuilder {
    pid: Pid,
    config: Config,
    incarnation: Incarnation,
    attachments: Vec<Box<dyn Send + Sync>>,
    attach_hooks: Vec<AttachHook>,
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
            incarnation: 0,
            attachments: Vec::new(),
            attach_hooks: Vec::new(),
        }
    }

    /// The incarnation this node runs as (see [`Server::incarnation`]). Default 0.
    pub fn incarnation(mut self, incarnation: Incarnation) -> Self {
        self.incarnation = incarnation;
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
            mut attachments,
            attach_hooks,
        } = self;
        config.check_member(pid)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ServerError::NoRuntime)?;
        let opts = config.options().clone();
        let all: Vec<Pid> = config.pids().collect();
        let peers: Vec<Pid> = all.iter().copied().filter(|p| *p != pid).collect();
        let stats = Arc::new(StatsCells::new(all.clone()));
        let router = Router::new(
            pid,
            incarnation,
            all,
            opts.max_message_size,
            Arc::clone(&stats),
        );
        let (outbox_tx, outbox_rx) = mpsc::channel(opts.outbox_capacity);
        let (inbox_tx, inbox_rx) = mpsc::channel(opts.inbox_capacity);
        let (stop_tx, stop_rx) = oneshot::channel();
        let connected = transport.connected();
        for hook in attach_hooks {
            attachments.push(hook(ServerMonitor {
                pid,
                stats: Arc::clone(&stats),
                connected: connected.clone(),
            }));
        }
        let driver = Driver {
            router,
            transport,
            outbox: outbox_rx,
            inbox: inbox_tx,
            linger: opts.linger,
            frames: Vec::new(),
            events: Vec::new(),
            arrived: Vec::new(),
        };
        let task = runtime.spawn(async move {
            driver.run(stop_rx).await;
            // Companions may do blocking I/O as they go (a catalog's final flush): off the
            // async threads, and finished before `shutdown` returns.
            if !attachments.is_empty() {
                let _ = tokio::task::spawn_blocking(move || drop(attachments)).await;
            }
        });
        Ok(Server {
            pid,
            peers,
            incarnation,
            config,
            outbox: outbox_tx,
            inbox: inbox_rx,
            stats,
            next_id: AtomicU32::new(0),
            connected,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// One node of the cluster: an outbox to send [`Envelope`]s from, an inbox to receive them.
///
/// All routing happens here, over any [`Transport`]: a send to a peer goes to that peer only,
/// [`BROADCAST`](crate::BROADCAST) to every peer but this one (encoded once), a send to this
/// node's own pid lands in its own inbox, and a send to an unknown pid is counted and dropped.
/// See the crate docs for the full delivery contract.
pub struct Server<M> {
    pid: Pid,
    peers: Vec<Pid>,
    incarnation: Incarnation,
    config: Config,
    outbox: mpsc::Sender<Envelope<M>>,
    inbox: mpsc::Receiver<Envelope<M>>,
    stats: Arc<StatsCells>,
    next_id: AtomicU32,
    connected: watch::Receiver<PeerSet>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl<M> std::fmt::Debug for Server<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("pid", &self.pid)
            .field("incarnation", &self.incarnation)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl<M: Message> Server<M> {
    /// Starts node `pid` of `config` over `transport`, as incarnation 0.
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
        self.pid
    }

    /// Every other pid of the config, ascending.
    pub fn peers(&self) -> &[Pid] {
        &self.peers
    }

    /// This node's incarnation, which increases each time the node restarts.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The config this node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The outbox: send an envelope whose `pid` is a peer, this node, or `BROADCAST`.
    /// Clone it freely. `send().await` waits only while the outbox itself is full (which
    /// the server's task drains without ever waiting on a peer); `try_send` never waits.
    pub fn outbox(&self) -> mpsc::Sender<Envelope<M>> {
        self.outbox.clone()
    }

    /// The inbox: envelopes from peers (and from this node to itself), `pid` = the sender.
    /// When it is full, arriving messages are dropped and counted as `backpressure`.
    pub fn inbox(&mut self) -> &mut mpsc::Receiver<Envelope<M>> {
        &mut self.inbox
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// A fresh message id, unique across the cluster and across restarts.
    ///
    /// Layout (bits, high to low): 0, pid (16), incarnation mod 2^15 (15), counter (32).
    /// Ids are unique as long as a node draws fewer than 2^32 ids per incarnation and
    /// restarts fewer than 2^15 times between any two incarnations whose ids may meet.
    pub fn next_msg_id(&self) -> MsgId {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let pid = i64::from(self.pid) & 0xFFFF;
        let inc = i64::from(self.incarnation & 0x7FFF);
        (pid << 47) | (inc << 32) | i64::from(n)
    }

    /// The peers this node currently has a live connection to.
    pub fn connected_peers(&self) -> Vec<Pid> {
        self.monitor().connected_peers()
    }

    /// A cloneable, read-only view of this server's counters and connections, for tasks
    /// that watch a server (e.g. the peer catalog recording status and last-seen).
    pub fn monitor(&self) -> ServerMonitor {
        ServerMonitor {
            pid: self.pid,
            stats: Arc::clone(&self.stats),
            connected: self.connected.clone(),
        }
    }

    /// Waits until every peer is connected, or `timeout` passes. A start-up barrier for
    /// transports that connect asynchronously (ZeroMQ).
    pub async fn wait_for_peers(&self, timeout: Duration) -> Result<(), WaitTimeout> {
        let mut rx = self.connected.clone();
        let all = |set: &PeerSet| self.peers.iter().all(|p| set.contains(p));
        let wait = rx.wait_for(|set| all(set));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(WaitTimeout {
                missing: {
                    let set = self.connected.borrow();
                    self.peers
                        .iter()
                        .copied()
                        .filter(|p| !set.contains(p))
                        .collect()
                },
                waited: timeout,
            }),
        }
    }

    /// Stops the node: routes what is already in the outbox, flushes to live peers for at
    /// most the configured linger, and releases the transport (ports included).
    pub async fn shutdown(mut self) {
        self.stop_task().await;
    }

    /// Stops the node like [`Server::shutdown`], but keeps the server so that what is still
    /// in its inbox can be read (`inbox().try_recv()`). The outbox is closed: later sends fail.
    pub async fn stop(&mut self) {
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

impl<M> Drop for Server<M> {
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
}

struct Driver<M, T> {
    router: Router,
    transport: T,
    outbox: mpsc::Receiver<Envelope<M>>,
    inbox: mpsc::Sender<Envelope<M>>,
    linger: Duration,
    /// Frames routed from the current outbox batch, handed to the transport at its end.
    frames: Vec<(Pid, Bytes)>,
    /// Events taken from the transport in one go.
    events: Vec<TransportEvent>,
    /// Envelopes decoded from `events`, to be delivered together.
    arrived: Vec<Envelope<M>>,
}

/// Envelopes taken from the outbox per wake-up.
const BATCH: usize = 256;

impl<M: Message, T: Transport> Driver<M, T> {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut transport_open = true;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                n = self.outbox.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    for env in batch.drain(..) {
                        self.route(env);
                    }
                    self.send_frames();
                }
                event = self.transport.recv(), if transport_open => match event {
                    Some(event) => {
                        self.events.push(event);
                        self.drain_transport();
                    }
                    None => transport_open = false,
                },
            }
        }
        // Route what the user had already handed over (closing first, so that senders
        // still running cannot keep this loop going), then flush within the linger.
        self.outbox.close();
        while let Ok(env) = self.outbox.try_recv() {
            self.route(env);
        }
        self.send_frames();
        self.transport.shutdown(self.linger).await;
    }

    /// Routes one envelope; its frames wait in `frames` for [`Driver::send_frames`], which
    /// runs before the task next waits, so no frame is held across a wake-up.
    fn route(&mut self, env: Envelope<M>) {
        let frames = &mut self.frames;
        if let Some(local) = self.router.outgoing(env, |to, frame| {
            frames.push((to, frame));
            Ok(())
        }) {
            self.deliver(local);
        }
    }

    /// Hands the routed frames to the transport in one batch; refusals are counted as drops.
    fn send_frames(&mut self) {
        let stats = self.router.stats();
        self.transport
            .send_many(&mut self.frames, &mut |to, reason| {
                stats.dropped_to(to, reason, 1)
            });
    }

    /// Handles the events that are ready now, up to a batch, after a wake-up.
    fn drain_transport(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        let mut arrived = std::mem::take(&mut self.arrived);
        let room = BATCH.saturating_sub(events.len());
        self.transport.try_recv_many(&mut events, room);
        for event in events.drain(..) {
            match event {
                TransportEvent::Frame(bytes) => arrived.extend(self.router.incoming(bytes)),
                TransportEvent::Dropped {
                    peer,
                    reason,
                    count,
                } => self.router.stats().dropped_to(peer, reason, count),
            }
        }
        self.deliver_all(&mut arrived);
        self.events = events;
        self.arrived = arrived;
    }

    /// Delivers `envs` in order, taking the inbox's room for all of them at once when it
    /// has enough, and one by one (counting those that find it full) when it has not.
    fn deliver_all(&mut self, envs: &mut Vec<Envelope<M>>) {
        if envs.is_empty() {
            return;
        }
        if let Ok(permits) = self.inbox.try_reserve_many(envs.len()) {
            let stats = self.router.stats();
            for (permit, env) in permits.zip(envs.drain(..)) {
                let from = env.pid;
                permit.send(env);
                stats.delivered(from);
            }
            return;
        }
        for env in envs.drain(..) {
            self.deliver(env);
        }
    }

    fn deliver(&mut self, env: Envelope<M>) {
        let from = env.pid;
        match self.inbox.try_send(env) {
            Ok(()) => self.router.stats().delivered(from),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.router
                    .stats()
                    .dropped_from(Some(from), DropReason::Backpressure);
            }
            // The inbox was closed, or the server dropped: nobody will read this message.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.router
                    .stats()
                    .dropped_from(Some(from), DropReason::Unreachable);
            }
        }
    }
}
