//! [`SimCluster`]: every node of a config running a [`Server`] in one process, with fault
//! operations, a seed, and a recorded [`History`].

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use cluster_core::{
    Config, DropReason, Envelope, Events, Incarnation, Lagged, Message, MsgId, Pid, Server,
    ServerError, ServerMonitor, Transport, TransportError,
};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::history::{Event, History, MsgTag, PeerChange, Record, reason_counts};
use crate::names::{Namer, Names, Summarize};
use crate::node::{Failures, NodeContext, NodeFailure, NodeLogic, panic_message};
use crate::probe::{Gate, Probe, ProbeShared};
use crate::scenario::HostileBytes;
use crate::seed::{SeedGuard, replay_hint, seed_or_random};
use crate::under_test::{Capabilities, ClusterUnderTest, MemCluster, Timing, window_of};

/// Why a simulation step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The cluster's config is invalid.
    #[error(transparent)]
    Config(#[from] cluster_core::ConfigError),
    /// The backend could not give a node its transport.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A server could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The pid is not in the config.
    #[error("pid {0} is not in the cluster's config")]
    UnknownPid(Pid),
    /// The node is crashed, or its server was handed to node logic.
    #[error("node {0} has no server here (crashed, or taken by node logic)")]
    NoServer(Pid),
    /// The backend does not support this fault.
    #[error("the {backend} backend does not support {op}")]
    Unsupported {
        /// The backend's name.
        backend: String,
        /// The operation.
        op: &'static str,
    },
    /// The node's outbox is closed (its server stopped).
    #[error("the outbox of node {0} is closed")]
    OutboxClosed(Pid),
    /// The summary function given to [`SimBuilder::summary`] takes another message type.
    #[error("the summary function takes {summarizes}, but the cluster carries {carries}")]
    SummaryType {
        /// What the summary function takes.
        summarizes: &'static str,
        /// The cluster's message type.
        carries: &'static str,
    },
}

type Spawner<M> = Arc<dyn Fn(Server<M>, NodeContext) -> JoinHandle<()> + Send + Sync>;

/// A typed summary function, and the name of its type for the error if it does not fit.
#[derive(Clone)]
struct SummaryFn {
    /// A [`TypedSummary`] for the `M` it was given with.
    typed: Arc<dyn Any + Send + Sync>,
    summarizes: &'static str,
}

type TypedSummary<M> = Arc<dyn Fn(&M) -> String + Send + Sync>;

struct Node<M> {
    incarnation: Incarnation,
    up: bool,
    server: Option<Server<M>>,
    monitor: Option<ServerMonitor>,
    raw: Option<mpsc::UnboundedSender<Bytes>>,
    task: Option<JoinHandle<()>>,
    received: VecDeque<Envelope<M>>,
    inbox_paused: bool,
    /// The incarnation's peer events, made as it started (when recording).
    events: Option<Events>,
    /// The config it runs with: the cluster's, or, for a node that joined, the members'
    /// at the time and itself.
    config: Config,
    /// The membership records it held when it last crashed: its next incarnation starts
    /// from them, as a real node does from its peer catalog.
    records: Vec<cluster_core::Member>,
}

/// Builds a [`SimCluster`]. Cheap to clone: [`faults::explore`](crate::faults::explore)
/// builds a fresh cluster from it for every replay.
#[derive(Clone)]
pub struct SimBuilder {
    config: Option<Config>,
    nodes: usize,
    seed: Option<u64>,
    record: bool,
    catalogs: bool,
    summary: Option<SummaryFn>,
}

impl std::fmt::Debug for SimBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBuilder")
            .field("config", &self.config)
            .field("nodes", &self.nodes)
            .field("seed", &self.seed)
            .field("record", &self.record)
            .field("catalogs", &self.catalogs)
            .field("summary", &self.summary.as_ref().map(|s| s.summarizes))
            .finish()
    }
}

impl Default for SimBuilder {
    fn default() -> Self {
        Self {
            config: None,
            nodes: 3,
            seed: None,
            record: true,
            catalogs: false,
            summary: None,
        }
    }
}

impl SimBuilder {
    /// `n` nodes, pids `1..=n` (ignored if a config is given).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// The nodes of `config` (its options apply to every server).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// The seed; default: [`CLUSTER_SEED`](crate::SEED_VAR) if set, else random.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Whether to record a history (default `true`; turn off for benchmarks).
    pub fn record(mut self, record: bool) -> Self {
        self.record = record;
        self
    }

    /// A one-line summary of a message, written beside each record about it (sends,
    /// copies routed, arrivals, drops, deliveries) and on the arrows of the diagram, e.g.
    /// `|m: &Msg| format!("{m:?}")`. Line breaks become spaces. `M` must be the cluster's
    /// message type ([`SimError::SummaryType`] otherwise).
    pub fn summary<M: Message>(
        mut self,
        summary: impl Fn(&M) -> String + Send + Sync + 'static,
    ) -> Self {
        let typed: TypedSummary<M> = Arc::new(summary);
        self.summary = Some(SummaryFn {
            typed: Arc::new(typed),
            summarizes: std::any::type_name::<M>(),
        });
        self
    }

    /// Fixes the seed now: the one set, else [`CLUSTER_SEED`](crate::SEED_VAR), else a
    /// random one, so that every cluster built from clones of this builder has it.
    pub fn fixed_seed(mut self) -> Self {
        self.seed = Some(self.seed.unwrap_or_else(seed_or_random));
        self
    }

    /// The seed set with [`seed`](Self::seed) or [`fixed_seed`](Self::fixed_seed), if any.
    pub fn seed_value(&self) -> Option<u64> {
        self.seed
    }

    fn typed_summary<M: Message>(&self) -> Result<Option<TypedSummary<M>>, SimError> {
        let Some(summary) = &self.summary else {
            return Ok(None);
        };
        match summary.typed.downcast_ref::<TypedSummary<M>>() {
            Some(typed) => Ok(Some(Arc::clone(typed))),
            None => Err(SimError::SummaryType {
                summarizes: summary.summarizes,
                carries: std::any::type_name::<M>(),
            }),
        }
    }

    /// Gives every node a real sled peer catalog in a temporary directory that outlives
    /// crashes, from which each (re)start takes its incarnation, as a real node does
    /// (default `false`: incarnations come from the simulated network).
    #[cfg(feature = "catalog")]
    pub fn catalogs(mut self, catalogs: bool) -> Self {
        self.catalogs = catalogs;
        self
    }

    fn resolve(&self) -> Result<(Config, u64), SimError> {
        let config = match &self.config {
            Some(c) => c.clone(),
            None => Config::local(self.nodes, 20_000).map_err(ServerError::from)?,
        };
        Ok((config, self.seed.unwrap_or_else(seed_or_random)))
    }

    /// Starts every node on a [`MemNetwork`](cluster_mem::MemNetwork) seeded with the seed.
    /// Must be called inside a tokio runtime (a current-thread one for exact replays).
    pub async fn build<M: Message>(self) -> Result<SimCluster<M>, SimError> {
        let (config, seed) = self.resolve()?;
        let summary = self.typed_summary::<M>()?;
        let backend = MemCluster::new(&config, seed);
        #[cfg(feature = "catalog")]
        if self.catalogs {
            let with = crate::catalogs::WithCatalogs::new(backend).map_err(|e| {
                SimError::Transport(TransportError::Other(format!(
                    "cannot create the catalogs' temporary directory: {e}"
                )))
            })?;
            return SimCluster::start(Box::new(with), seed, self.record, summary).await;
        }
        SimCluster::start(Box::new(backend), seed, self.record, summary).await
    }

    /// Starts every node on `backend` (a transport under test, or a mutant).
    pub async fn build_on<M: Message>(
        self,
        backend: Box<dyn ClusterUnderTest>,
    ) -> Result<SimCluster<M>, SimError> {
        let seed = self.seed.unwrap_or_else(seed_or_random);
        let summary = self.typed_summary::<M>()?;
        SimCluster::start(backend, seed, self.record, summary).await
    }
}

/// A whole cluster in one process: a [`Server`] per node over a shared backend (by default
/// an in-memory network), fault operations, a seed, and a [`History`] of everything.
///
/// Messages a node receives are taken from its inbox by [`settle`](Self::settle) (and the
/// other operations) and kept for [`take_received`](Self::take_received); every one is
/// recorded. With [`spawn_nodes`](Self::spawn_nodes), your own node logic owns the servers.
///
/// If the thread panics while the cluster lives (a failed test), the seed is printed with
/// the command that replays the run.
///
/// **Peer events.** When recording, the harness subscribes to each node incarnation's
/// peer events ([`Server::events`]) as it starts, and records what it told
/// ([`Event::PeerEvent`], stamped with the node's uptime, never the wall clock) whenever it
/// takes messages from the inboxes and before it records any fault or start, node by node
/// in pid order; a crashed incarnation's last events (told as it stopped) are recorded
/// after its crash. The [`oracle`](crate::oracle::check_events) judges them against the
/// faults.
///
/// **Replaying exactly.** On a current-thread runtime of its own with tokio's clock paused
/// ([`faults::runtime`](crate::faults::runtime), or
/// `#[tokio::test(flavor = "current_thread", start_paused = true)]`), a run is a function
/// of its seed: the same seed gives the same history, byte for byte — every record, on
/// every node, in the same order, with the same simulated times and counters — in this
/// process or another. Node logic keeps that as long as it takes its randomness from
/// [`NodeContext::rng`] and writes `biased;` in its own `select!`s. (A node whose logic
/// stops its own server while frames wait for it is the exception: which of them the
/// server still takes is tokio's choice.)
///
/// ```
/// use cluster_core::BROADCAST;
/// use cluster_testkit::SimCluster;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cluster_testkit::SimError> {
/// let mut sim = SimCluster::<String>::builder().nodes(3).seed(7).build().await?;
/// sim.partition(&[1], &[2, 3])?;
/// sim.send(1, BROADCAST, "lost".to_string()).await?;
/// sim.heal()?;
/// sim.send(1, BROADCAST, "hello".to_string()).await?;
/// sim.settle().await;
/// let got: Vec<String> = sim.take_received(2).into_iter().map(|e| e.msg).collect();
/// assert_eq!(got, ["hello"]);
/// # Ok(()) }
/// ```
pub struct SimCluster<M> {
    backend: Box<dyn ClusterUnderTest>,
    config: Config,
    caps: Capabilities,
    seed: u64,
    history: History,
    gate: Gate,
    nodes: BTreeMap<Pid, Node<M>>,
    retired: Vec<(Pid, Incarnation, ServerMonitor)>,
    /// Peer events of crashed incarnations: what they told while they stopped.
    retired_events: Vec<(Pid, Incarnation, Events)>,
    spawner: Option<Spawner<M>>,
    free_running: bool,
    probes: ProbeShared,
    drained: u64,
    failures: Failures,
    /// Whether the caller took the node failure (else `shutdown` or drop panics with it).
    failure_taken: bool,
    names: Arc<Names>,
    summary: Option<TypedSummary<M>>,
    /// Nodes that asked to leave (and were then stopped for good).
    left: BTreeSet<Pid>,
    /// Nodes that joined at run time, with their addresses.
    joined: BTreeMap<Pid, String>,
    _guard: SeedGuard,
}

impl<M> std::fmt::Debug for SimCluster<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCluster")
            .field("backend", &self.backend.name())
            .field("seed", &self.seed)
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

/// Rounds of `yield_now` a settle may take before it reports a stall.
const SETTLE_ROUNDS: usize = 100_000;

impl<M: Message> SimCluster<M> {
    /// A builder.
    pub fn builder() -> SimBuilder {
        SimBuilder::default()
    }

    /// `n` nodes on a memory network, seeded from [`CLUSTER_SEED`](crate::SEED_VAR) or at random.
    pub async fn new(n: usize) -> Result<Self, SimError> {
        Self::builder().nodes(n).build().await
    }

    async fn start(
        backend: Box<dyn ClusterUnderTest>,
        seed: u64,
        record: bool,
        summary: Option<TypedSummary<M>>,
    ) -> Result<Self, SimError> {
        let config = backend.config().clone();
        let caps = backend.capabilities();
        let history = if record {
            History::new()
        } else {
            History::disabled()
        };
        let pids: Vec<Pid> = config.pids().collect();
        history.push(Event::Begin {
            pids: pids.clone(),
            seed,
            backend: backend.name(),
            window_us: window_of(caps.timing)
                .map(|w| u64::try_from(w.as_micros()).unwrap_or(u64::MAX)),
        });
        if caps.timing == Timing::Exact {
            // As `MemNetwork` bounds a node's receive queue: for the oracle's C6 check.
            let peers = pids.len().saturating_sub(1).max(1);
            let frames = config.options().peer_queue.saturating_mul(peers).max(1);
            history.push(Event::QueueBound {
                frames: u64::try_from(frames).unwrap_or(u64::MAX),
            });
        }
        let mut sim = SimCluster {
            backend,
            config,
            caps,
            seed,
            history,
            // Exact runs hold arrivals until the harness settles: see `Timing::Exact`.
            gate: Gate::new(caps.timing != Timing::Exact),
            nodes: BTreeMap::new(),
            retired: Vec::new(),
            retired_events: Vec::new(),
            spawner: None,
            free_running: caps.timing != Timing::Exact,
            probes: ProbeShared {
                exact: caps.timing == Timing::Exact,
                ..ProbeShared::default()
            },
            drained: 0,
            failures: Failures::default(),
            failure_taken: false,
            names: Arc::new(Names::default()),
            summary,
            left: BTreeSet::new(),
            joined: BTreeMap::new(),
            _guard: SeedGuard { seed },
        };
        let mut started = Vec::new();
        for pid in pids {
            let s = sim.backend.start(pid).await?;
            started.push((pid, s.incarnation));
            let config = sim.config.clone();
            sim.launch(pid, s, false, config)?;
        }
        sim.wait_connected().await?;
        sim.record_peer_events();
        for (pid, incarnation) in started {
            sim.history.push(Event::Start { pid, incarnation });
        }
        Ok(sim)
    }

    /// Real networks connect asynchronously: wait until every up node is connected to
    /// every other up node, so that what follows is judged exactly, not as "either way".
    async fn wait_connected(&self) -> Result<(), SimError> {
        if self.caps.timing == Timing::Exact {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let up: Vec<Pid> = self.pids().into_iter().filter(|p| self.is_up(*p)).collect();
            let missing: Vec<(Pid, Pid)> = up
                .iter()
                .filter_map(|p| self.monitor(*p).map(|m| (*p, m.connected_peers())))
                .flat_map(|(p, connected)| {
                    up.iter()
                        .copied()
                        .filter(move |q| *q != p && !connected.contains(q))
                        .map(move |q| (p, q))
                })
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SimError::Transport(TransportError::Other(format!(
                    "links (from, to) still not connected after 20 s: {missing:?}"
                ))));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A summary of a frame's payload, for the names of a node's frames.
    fn frame_summary(&self) -> Option<Summarize> {
        let summary = self.summary.clone()?;
        Some(Arc::new(move |frame: &[u8]| {
            let msg: M = cluster_core::wire::decode_payload(frame).ok()?;
            Some(one_line(&summary(&msg)))
        }))
    }

    /// What the history says of a message the harness holds: its summary, if any.
    fn msg_tag(summary: Option<&TypedSummary<M>>, msg: &M) -> Option<MsgTag> {
        summary.map(|s| MsgTag {
            msg: None,
            summary: Some(one_line(&s(msg))),
        })
    }

    /// Starts `pid`'s server over `started` (the caller records the `Start` event).
    ///
    /// Between the server and the backend's transport: the recording [`Probe`], and, when
    /// recording, the [`Namer`] (names for the frames).
    fn launch(
        &mut self,
        pid: Pid,
        started: crate::under_test::Started,
        restarted: bool,
        config: Config,
    ) -> Result<(), SimError> {
        let incarnation = started.incarnation;
        let slot = Arc::new(OnceLock::new());
        let transport: Box<dyn Transport> = if self.history.is_enabled() {
            Box::new(Namer::new(
                pid,
                incarnation,
                started.transport,
                self.history.clone(),
                // Only an in-memory network hands over the very bytes that were sent.
                (self.caps.timing == Timing::Exact).then(|| Arc::clone(&self.names)),
                self.frame_summary(),
            ))
        } else {
            started.transport
        };
        let (probe, raw) = Probe::new(
            pid,
            incarnation,
            transport,
            self.history.clone(),
            &self.gate,
            &self.probes,
            Arc::clone(&slot),
        );
        let records = self
            .nodes
            .get(&pid)
            .map(|n| n.records.clone())
            .unwrap_or_default();
        let builder = Server::<M>::builder(pid, config.clone())
            .incarnation(incarnation)
            .members(records);
        let builder = self.backend.server_builder(pid, builder);
        let server: Server<M> = builder.build(probe)?;
        // Before the server's task first runs: the subscription misses nothing.
        let events = self.history.is_enabled().then(|| server.events());
        let monitor = server.monitor();
        let _ = slot.set(monitor.clone());
        let node = self.nodes.entry(pid).or_insert_with(|| Node {
            incarnation,
            up: true,
            server: None,
            monitor: None,
            raw: None,
            task: None,
            received: VecDeque::new(),
            inbox_paused: false,
            events: None,
            config: config.clone(),
            records: Vec::new(),
        });
        node.config = config;
        node.incarnation = incarnation;
        node.events = events;
        node.up = true;
        node.monitor = Some(monitor);
        node.raw = Some(raw);
        match &self.spawner {
            Some(spawn) => {
                let ctx = NodeContext::new(
                    pid,
                    incarnation,
                    restarted,
                    crate::seed_mix(self.seed, pid, incarnation),
                    self.history.clone(),
                    self.failures.clone(),
                );
                node.task = Some(spawn(server, ctx));
            }
            None => node.server = Some(server),
        }
        Ok(())
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The config every node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every pid, ascending.
    pub fn pids(&self) -> Vec<Pid> {
        self.nodes.keys().copied().collect()
    }

    /// What the backend supports.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// The recorded history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Whether `pid` is up.
    pub fn is_up(&self, pid: Pid) -> bool {
        self.nodes.get(&pid).is_some_and(|n| n.up)
    }

    /// The incarnation `pid` runs (or last ran) as: on the in-memory network, 1 at first
    /// and one more per restart, as a fresh peer catalog gives them.
    pub fn incarnation(&self, pid: Pid) -> Option<Incarnation> {
        self.nodes.get(&pid).map(|n| n.incarnation)
    }

    /// The server of `pid`, unless crashed or handed to node logic. Messages put straight
    /// into its outbox are not in the history as sends: use [`send`](Self::send) for those
    /// the [`oracle`](crate::oracle) should judge.
    pub fn server(&mut self, pid: Pid) -> Option<&mut Server<M>> {
        self.nodes.get_mut(&pid).and_then(|n| n.server.as_mut())
    }

    /// A read-only view of `pid`'s current server (also when node logic owns it).
    pub fn monitor(&self, pid: Pid) -> Option<ServerMonitor> {
        self.nodes.get(&pid).and_then(|n| n.monitor.clone())
    }

    /// Takes the messages `pid` has received so far (in arrival order).
    pub fn take_received(&mut self, pid: Pid) -> Vec<Envelope<M>> {
        self.drain_inboxes();
        self.nodes
            .get_mut(&pid)
            .map(|n| n.received.drain(..).collect())
            .unwrap_or_default()
    }

    /// Stops (`true`) or resumes (`false`) reading `pid`'s inbox, e.g. to fill it up and
    /// see arriving messages dropped as `backpressure`.
    pub fn pause_inbox(&mut self, pid: Pid, paused: bool) {
        if let Some(n) = self.nodes.get_mut(&pid) {
            n.inbox_paused = paused;
        }
    }

    /// Appends a free-form note to the history.
    pub fn note(&self, text: impl Into<String>) {
        self.history.push(Event::Note { text: text.into() });
    }

    /// Sends `msg` from `from` to `to` (a pid, `from` itself, or `BROADCAST`) with a fresh
    /// message id, as [`Outbox::send`](cluster_core::Outbox::send) does: routed at once, and
    /// waiting for room (up to `send_timeout`, in the simulation's time) when its only
    /// destination is a connected peer whose queue is full.
    ///
    /// While it waits, the harness keeps reading every inbox that is not paused, as the
    /// nodes' programs would: a node's full inbox stops it taking frames, and a send to it
    /// waits until the node's program reads.
    pub async fn send(&mut self, from: Pid, to: Pid, msg: M) -> Result<MsgId, SimError> {
        let (env, outbox) = self.put(from, to, msg)?;
        let msg_id = env.msg_id;
        let send = outbox.send(env);
        tokio::pin!(send);
        let exact = self.caps.timing == Timing::Exact;
        let mut opened = false;
        let sent = loop {
            tokio::select! {
                // Biased: one order of polls, for exact replays.
                biased;
                sent = &mut send => break sent,
                () = tokio::task::yield_now() => {
                    // Waiting for room: the cluster runs and the programs read.
                    if exact {
                        // Arrivals pass only when the harness settles (the oracle judges
                        // by settles): settle once; what is then still full stays so.
                        self.settle().await;
                        break send.await;
                    }
                    if !opened {
                        self.gate.set(true);
                        opened = true;
                    }
                    self.drain_inboxes();
                }
            }
        };
        if opened && !self.free_running {
            self.gate.set(false);
        }
        sent.map_err(|_| SimError::OutboxClosed(from))?;
        Ok(msg_id)
    }

    /// Sends `msg` like [`SimCluster::send`] but never waits, as
    /// [`Outbox::try_send`](cluster_core::Outbox::try_send) does: a full queue to the
    /// destination is a counted `backpressure` drop.
    pub fn enqueue(&mut self, from: Pid, to: Pid, msg: M) -> Result<MsgId, SimError> {
        let (env, outbox) = self.put(from, to, msg)?;
        let msg_id = env.msg_id;
        outbox
            .try_send(env)
            .map_err(|_| SimError::OutboxClosed(from))?;
        Ok(msg_id)
    }

    /// Records the send (before anything routes it, so that the history has the send
    /// before what became of it) and gives the envelope and the outbox to send it from.
    #[allow(clippy::type_complexity)]
    fn put(
        &mut self,
        from: Pid,
        to: Pid,
        msg: M,
    ) -> Result<(Envelope<M>, cluster_core::Outbox<M>), SimError> {
        self.drain_inboxes();
        let history = self.history.clone();
        let node = self
            .nodes
            .get_mut(&from)
            .ok_or(SimError::UnknownPid(from))?;
        let server = node.server.as_ref().ok_or(SimError::NoServer(from))?;
        let outbox = server.outbox();
        if outbox.is_closed() {
            return Err(SimError::OutboxClosed(from));
        }
        let msg_id = server.next_msg_id();
        if history.is_enabled() {
            let tag = Self::msg_tag(self.summary.as_ref(), &msg);
            history.push_tagged(
                Event::Send {
                    from,
                    incarnation: node.incarnation,
                    to,
                    msg_id,
                    payload: payload_json(&msg),
                },
                tag,
            );
        }
        Ok((Envelope::new(to, msg_id, msg), outbox))
    }

    /// Pushes raw bytes into `to`'s transport, as if they had arrived on its port.
    pub fn inject_raw(&mut self, to: Pid, bytes: Bytes) -> Result<(), SimError> {
        let node = self.nodes.get(&to).ok_or(SimError::UnknownPid(to))?;
        let raw = node.raw.as_ref().ok_or(SimError::NoServer(to))?;
        self.history.push(Event::Raw {
            to,
            len: bytes.len(),
        });
        raw.send(bytes).map_err(|_| SimError::NoServer(to))?;
        self.probes.raw_pending.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Puts hostile bytes of `kind` on `to`'s port through the backend's network, where they
    /// queue (and are lost in a crash) like any arrival, and records the injection
    /// ([`Event::Injected`]). Fails with [`SimError::Unsupported`] if the backend cannot.
    ///
    /// Bytes under the wrong key claim a member other than `to` (else they are a
    /// non-member's, dropped before any key is checked): when `to` counts no such member
    /// that has not asked to leave (a node restarted after the others left or joined), nothing
    /// is put and nothing recorded.
    pub fn inject_hostile(&mut self, to: Pid, kind: HostileBytes) -> Result<(), SimError> {
        let node = self.nodes.get(&to).ok_or(SimError::UnknownPid(to))?;
        let at_incarnation = node.incarnation;
        // A pid the receiving node counts a member now (a node restarted before a join
        // may not know the one that joined).
        let members: Vec<Pid> = node
            .monitor
            .as_ref()
            .map(|m| {
                m.members()
                    .iter()
                    .filter(|r| r.present && !self.left.contains(&r.pid))
                    .map(|r| r.pid)
                    .collect()
            })
            .unwrap_or_else(|| self.members());
        if kind == HostileBytes::WrongKey && members.iter().all(|p| *p == to) {
            return Ok(());
        }
        let bytes = kind.forge(to, &self.config, &members);
        let len = bytes.len();
        let Some(result) = self.backend.inject(to, bytes) else {
            return Err(self.unsupported("inject"));
        };
        // Nothing can take the bytes before the harness yields: recorded before any arrival.
        self.history.push(Event::Injected {
            to,
            at_incarnation,
            bytes: kind,
            len,
            refused: result.err(),
        });
        Ok(())
    }

    fn unsupported(&self, op: &'static str) -> SimError {
        SimError::Unsupported {
            backend: self.backend.name(),
            op,
        }
    }

    /// Crashes `pid` (no effect if it is down). Messages it had taken into its inbox are
    /// recorded first; its node logic, if any, is dropped.
    pub async fn crash(&mut self, pid: Pid) -> Result<(), SimError> {
        if !self.caps.crash_restart {
            return Err(self.unsupported("crash"));
        }
        if !self.nodes.contains_key(&pid) {
            return Err(SimError::UnknownPid(pid));
        }
        if !self.is_up(pid) {
            return Ok(());
        }
        self.drain_inboxes();
        self.history.push(Event::Crash { pid });
        self.record_discards(|from, to| from == pid || to == pid, DropReason::Unreachable);
        self.backend.crash(pid).await;
        let Some(node) = self.nodes.get_mut(&pid) else {
            return Ok(());
        };
        node.up = false;
        node.raw = None;
        if let Some(task) = node.task.take() {
            task.abort();
            // Cancelled, or finished before: a panic was caught in the task and reported.
            let _ = task.await;
        }
        if let Some(mut server) = node.server.take() {
            // The transport is already dead: this only routes what was left in the outbox
            // (remote copies refused and counted; sends to itself land in its inbox) and
            // joins the server's task. What reached the inbox is recorded, as the server
            // counted it delivered.
            server.stop().await;
            let inc = node.incarnation;
            // What let those messages through was told before them.
            if let Some(events) = node.events.as_mut() {
                record_events(&self.history, pid, inc, events);
            }
            while let Ok(env) = server.inbox().try_recv() {
                if self.history.is_enabled() {
                    // A message to itself crossed no network: no arrival names it.
                    let summary = self.summary.as_ref().filter(|_| env.pid == pid);
                    self.history.push_tagged(
                        Event::Delivered {
                            at: pid,
                            at_incarnation: inc,
                            from: env.pid,
                            msg_id: env.msg_id,
                            payload: payload_json(&env.msg),
                        },
                        Self::msg_tag(summary, &env.msg),
                    );
                }
                self.drained += 1;
                node.received.push_back(env);
            }
        }
        if let Some(monitor) = node.monitor.take() {
            node.records = monitor.members();
            self.retired.push((pid, node.incarnation, monitor));
        }
        if let Some(events) = node.events.take() {
            self.retired_events.push((pid, node.incarnation, events));
        }
        // What the crash made every node tell (the crashed one's own, as it stopped).
        self.record_peer_events();
        Ok(())
    }

    /// Restarts `pid` as a new incarnation (crashing it first if it is up).
    pub async fn restart(&mut self, pid: Pid) -> Result<Incarnation, SimError> {
        self.crash(pid).await?;
        let started = self.backend.restart(pid).await?;
        let incarnation = started.incarnation;
        let config = self
            .nodes
            .get(&pid)
            .map_or_else(|| self.config.clone(), |n| n.config.clone());
        if let Some(node) = self.nodes.get(&pid)
            && node.records.iter().any(|m| m.epoch > 0)
        {
            self.history.push(Event::Restored {
                pid,
                members: node
                    .records
                    .iter()
                    .filter(|m| m.present)
                    .map(|m| m.pid)
                    .collect(),
            });
        }
        self.launch(pid, started, true, config)?;
        self.wait_connected().await?;
        self.record_peer_events();
        self.history.push(Event::Start { pid, incarnation });
        Ok(incarnation)
    }

    /// The members as the harness asked for them: the config's, those that joined (or
    /// asked to), less those that asked to leave. Each node's own view may differ while a
    /// change spreads (see `cluster_core::membership`).
    pub fn members(&self) -> Vec<Pid> {
        self.config
            .pids()
            .chain(self.joined.keys().copied())
            .filter(|p| !self.left.contains(p))
            .collect::<BTreeSet<Pid>>()
            .into_iter()
            .collect()
    }

    /// Whether `pid` has asked to leave (it is stopped for good).
    pub fn has_left(&self, pid: Pid) -> bool {
        self.left.contains(&pid)
    }

    /// Whether `pid` ever ran in this cluster (a config pid, or one that joined).
    pub fn knows(&self, pid: Pid) -> bool {
        self.nodes.contains_key(&pid)
    }

    /// Node `pid`, in no member's config, joins the running cluster: the backend makes it
    /// exist ([`ClusterUnderTest::join_node`]), its server starts with a config that lists
    /// the current [`members`](Self::members) and itself, and it asks to join
    /// ([`Server::join`]), waiting at most `timeout`. Returns whether the join completed in
    /// time (every member it knows of is `Up`).
    ///
    /// The network runs freely meanwhile. So that this judges nothing of the messages sent
    /// before, it settles first; and it settles after, so that the change has spread to
    /// every node that can be reached when it returns.
    pub async fn join(&mut self, pid: Pid, timeout: Duration) -> Result<bool, SimError> {
        if !self.caps.membership {
            return Err(self.unsupported("join"));
        }
        if self.nodes.contains_key(&pid) {
            return Err(SimError::Transport(TransportError::Other(format!(
                "node {pid} ran in this cluster already: only a new pid can join"
            ))));
        }
        self.settle().await;
        let members: Vec<(Pid, String)> = self
            .members()
            .into_iter()
            .filter_map(|p| {
                let address = self
                    .joined
                    .get(&p)
                    .cloned()
                    .or_else(|| self.config.peer(p).map(|c| c.address.clone()))?;
                Some((p, address))
            })
            .collect();
        let Some(made) = self.backend.join_node(pid, &members).await else {
            return Err(self.unsupported("join"));
        };
        let (config, started) = made?;
        let address = config
            .peer(pid)
            .map(|c| c.address.clone())
            .unwrap_or_default();
        self.joined.insert(pid, address);
        self.record_peer_events();
        self.history.push(Event::Join {
            pid,
            members: config.pids().collect(),
        });
        let incarnation = started.incarnation;
        self.launch(pid, started, false, config)?;
        self.history.push(Event::Start { pid, incarnation });
        let ok = self.ask_membership(pid, true, timeout).await?;
        Ok(ok)
    }

    /// Member `pid` leaves: it asks to ([`Server::leave`]), waiting at most `timeout`, and is
    /// then crashed, for good (it is never restarted: a node that left does not come back
    /// under its pid in this harness). Returns whether the leave completed in time (a
    /// member removed it, and it heard so). Settles before and after, as
    /// [`join`](Self::join) does, the crash coming after the second settle.
    pub async fn leave(&mut self, pid: Pid, timeout: Duration) -> Result<bool, SimError> {
        if !self.caps.membership || !self.caps.crash_restart {
            return Err(self.unsupported("leave"));
        }
        if !self.is_up(pid) {
            return Err(SimError::NoServer(pid));
        }
        self.settle().await;
        self.record_peer_events();
        self.history.push(Event::Leave { pid });
        self.left.insert(pid);
        let ok = self.ask_membership(pid, false, timeout).await?;
        self.crash(pid).await?;
        Ok(ok)
    }

    /// Node `pid` asks to join (`join`) or to leave, waiting at most `timeout`, its server
    /// out of its slot meanwhile so that the others' inboxes are read; records whether the
    /// change completed in time, and settles.
    async fn ask_membership(
        &mut self,
        pid: Pid,
        join: bool,
        timeout: Duration,
    ) -> Result<bool, SimError> {
        let Some(server) = self.nodes.get_mut(&pid).and_then(|n| n.server.take()) else {
            return Err(SimError::NoServer(pid));
        };
        let ok = if join {
            self.run_open(server.join(timeout)).await.is_ok()
        } else {
            self.run_open(server.leave(timeout)).await.is_ok()
        };
        if let Some(node) = self.nodes.get_mut(&pid) {
            node.server = Some(server);
        }
        self.history.push(Event::MembershipAsked { pid, join, ok });
        self.settle().await;
        Ok(ok)
    }

    /// Runs `fut` with the network flowing (arrivals not held back). It waits, rather than
    /// polling: with tokio's clock paused, time moves on only while every task waits, and a
    /// join or leave that cannot complete must reach its deadline. The inboxes are read by
    /// the settle that follows (only control frames move meanwhile).
    async fn run_open<T>(&mut self, fut: impl std::future::Future<Output = T>) -> T {
        self.gate.set(true);
        let out = fut.await;
        if !self.free_running {
            self.gate.set(false);
        }
        out
    }

    /// Cuts every link between `a` and `b`, both ways.
    pub fn partition(&mut self, a: &[Pid], b: &[Pid]) -> Result<(), SimError> {
        if !self.caps.partition {
            return Err(self.unsupported("partition"));
        }
        self.record_peer_events();
        self.history.push(Event::Partition {
            a: a.to_vec(),
            b: b.to_vec(),
        });
        self.record_discards(
            |x, y| (a.contains(&x) && b.contains(&y)) || (b.contains(&x) && a.contains(&y)),
            DropReason::Partitioned,
        );
        self.backend.partition(a, b);
        Ok(())
    }

    /// Cuts the one-way link `from → to`.
    pub fn cut(&mut self, from: Pid, to: Pid) -> Result<(), SimError> {
        if !self.caps.cut {
            return Err(self.unsupported("cut"));
        }
        self.record_peer_events();
        self.history.push(Event::Cut { from, to });
        self.record_discards(
            |x, y| x == from && y == to && x != y,
            DropReason::Partitioned,
        );
        self.backend.cut(from, to);
        Ok(())
    }

    /// Removes every cut, partition and loss setting.
    pub fn heal(&mut self) -> Result<(), SimError> {
        if !(self.caps.partition || self.caps.cut || self.caps.loss) {
            return Err(self.unsupported("heal"));
        }
        self.record_peer_events();
        self.history.push(Event::Heal);
        self.backend.heal();
        Ok(())
    }

    /// Loses each frame on `from → to` with probability `p` (seeded).
    pub fn set_loss(&mut self, from: Pid, to: Pid, p: f64) -> Result<(), SimError> {
        if !self.caps.loss {
            return Err(self.unsupported("set_loss"));
        }
        self.record_peer_events();
        self.history.push(Event::SetLoss { from, to, p });
        self.backend.set_loss(from, to, p);
        Ok(())
    }

    /// Simulation: the network discards what is in flight on the links a fault hits; record
    /// each such frame. (Real networks may still deliver them: nothing is recorded there.)
    fn record_discards(&self, doomed: impl Fn(Pid, Pid) -> bool, reason: DropReason) {
        if self.caps.timing != Timing::Exact {
            return;
        }
        for (from, incarnation, to, msg_id) in self.probes.in_flight.take(doomed) {
            self.history.push(Event::Discarded {
                from,
                incarnation,
                to,
                msg_id,
                reason,
            });
        }
    }

    /// Takes every inbox's messages into the nodes' received lists, recording each, and
    /// records the peer events told meanwhile.
    ///
    /// Messages are taken first and recorded after the events: a node tells what let a
    /// message through (`Restarted`, `Up`) before the message reaches its inbox, so events
    /// taken after the messages come before them in the history, as they happened.
    fn drain_inboxes(&mut self) {
        let mut taken: Vec<(Pid, Incarnation, Envelope<M>)> = Vec::new();
        for (&pid, node) in &mut self.nodes {
            if node.inbox_paused {
                continue;
            }
            let Some(server) = node.server.as_mut() else {
                continue;
            };
            while let Ok(env) = server.inbox().try_recv() {
                taken.push((pid, node.incarnation, env));
            }
        }
        self.record_peer_events();
        let summary = self.summary.as_ref();
        for (pid, incarnation, env) in taken {
            if self.history.is_enabled() {
                // A message to itself crossed no network: no arrival names it.
                let own = summary.filter(|_| env.pid == pid);
                self.history.push_tagged(
                    Event::Delivered {
                        at: pid,
                        at_incarnation: incarnation,
                        from: env.pid,
                        msg_id: env.msg_id,
                        payload: payload_json(&env.msg),
                    },
                    Self::msg_tag(own, &env.msg),
                );
            }
            self.drained += 1;
            if let Some(node) = self.nodes.get_mut(&pid) {
                node.received.push_back(env);
            }
        }
    }

    /// Records the peer events every node incarnation (crashed ones included) told since
    /// the last call, node by node in pid order: deterministic in simulation. Called before
    /// every fault and start is recorded, so that what a node told before a fault comes
    /// before it in the history.
    fn record_peer_events(&mut self) {
        let history = &self.history;
        for (&pid, node) in &mut self.nodes {
            if let Some(events) = node.events.as_mut() {
                record_events(history, pid, node.incarnation, events);
            }
        }
        for (pid, incarnation, events) in &mut self.retired_events {
            record_events(history, *pid, *incarnation, events);
        }
    }

    /// A fingerprint of the cluster's motion, to tell when it has stopped moving. Cheap
    /// parts always; the servers' counters (a snapshot per node) only when the harness does
    /// not see everything itself (node logic owns servers, or a real network).
    fn progress(&self) -> Progress {
        let mut counters = (0, 0);
        if self.spawner.is_some() || self.caps.timing != Timing::Exact {
            let monitors = self
                .nodes
                .values()
                .filter_map(|n| n.monitor.as_ref())
                .chain(self.retired.iter().map(|(_, _, m)| m));
            for m in monitors {
                let s = m.stats();
                counters.0 += s.sent;
                counters.1 += s.delivered + s.dropped_outgoing.total() + s.dropped_incoming.total();
            }
        }
        Progress {
            in_flight: self.backend.in_flight().unwrap_or(0),
            control: self.backend.control_in_flight().unwrap_or(0),
            raw_pending: self.probes.raw_pending.load(Ordering::Relaxed),
            drained: self.drained,
            counters,
            discarded: self.backend.discarded().total(),
        }
    }

    /// Lets the cluster run until nothing is in flight and no counter moves, taking every
    /// inbox's messages. Simulation: by condition (`yield_now`), no clock. Real transports:
    /// until counters are still for a quarter of the backend's window (50–250 ms), within
    /// 20 windows.
    /// Returns `false` if the cluster did not become quiet (a stall).
    pub async fn settle(&mut self) -> bool {
        self.gate.set(true);
        let quiet = match self.caps.timing {
            Timing::Exact => self.settle_exact().await,
            Timing::Window(w) => self.settle_window(w).await,
        };
        self.drain_inboxes();
        if !self.free_running {
            self.gate.set(false);
        }
        let in_flight = self.backend.in_flight().unwrap_or(0) as u64;
        self.history.push(Event::Settled { in_flight, quiet });
        quiet
    }

    /// Whether a running node's inbox is paused: frames to it then wait in the transport
    /// (its full inbox pushes back), still in flight but not moving.
    fn holding_back(&self) -> bool {
        self.nodes
            .values()
            .any(|n| n.inbox_paused && n.server.is_some())
    }

    async fn settle_exact(&mut self) -> bool {
        let mut last = None;
        let mut still = 0;
        for _ in 0..SETTLE_ROUNDS {
            tokio::task::yield_now().await;
            self.drain_inboxes();
            let now = self.progress();
            let idle = ((now.in_flight == 0 && now.control == 0) || self.holding_back())
                && now.raw_pending == 0;
            if idle && last == Some(now) {
                still += 1;
                if still >= 3 {
                    return true;
                }
            } else {
                still = 0;
            }
            last = Some(now);
        }
        false
    }

    async fn settle_window(&mut self, window: Duration) -> bool {
        // Quiet = no counter moved for a while; loopback delivers in well under this.
        let quiet = (window / 4).clamp(Duration::from_millis(50), Duration::from_millis(250));
        let tick = (quiet / 10).max(Duration::from_millis(1));
        let deadline = tokio::time::Instant::now() + window * 20;
        let mut last = self.progress();
        let mut still_since = tokio::time::Instant::now();
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(tick).await;
            self.drain_inboxes();
            let now = self.progress();
            if now != last {
                last = now;
                still_since = tokio::time::Instant::now();
            } else if (now.in_flight == 0 || self.holding_back())
                // Nothing the backend accepted is still on its way (a real transport that
                // counts it, e.g. `ZmqCluster`): settled on that condition, not on a
                // quiet time alone, which a loaded machine can outlast.
                && still_since.elapsed() >= quiet
            {
                return true;
            }
        }
        false
    }

    /// Settles, then records every node incarnation's final counters and the backend's own
    /// discards, and returns the whole history.
    pub async fn finish(&mut self) -> Vec<Record> {
        self.settle().await;
        let mut all: Vec<(Pid, Incarnation, ServerMonitor)> = self.retired.clone();
        for (&pid, node) in &self.nodes {
            if let Some(m) = &node.monitor {
                all.push((pid, node.incarnation, m.clone()));
            }
        }
        all.sort_by_key(|(pid, inc, _)| (*pid, *inc));
        for (pid, inc, m) in all {
            self.history.push(Event::stats(pid, inc, &m.stats()));
        }
        if self.history.is_enabled() {
            for (&pid, node) in &self.nodes {
                if let (true, Some(m)) = (node.up, &node.monitor) {
                    self.history.push(Event::Members {
                        pid,
                        incarnation: node.incarnation,
                        records: m.members(),
                    });
                }
            }
        }
        self.history.push(Event::NetDiscarded {
            discarded: reason_counts(&self.backend.discarded()),
        });
        self.history.records()
    }

    /// Hands every up node's server to `logic`, in a task per node, with its
    /// [`NodeContext`], and does so again for each node restarted later. A crash drops
    /// (aborts) the node's task. The harness no longer reads those inboxes: your logic does.
    ///
    /// A panic in a node's logic fails the run, as [`NodeContext::fail`] does: it is
    /// recorded, [`node_failure`](Self::node_failure) returns it,
    /// [`faults::run`](crate::faults::run) reports it at once, and if nobody
    /// [took](Self::take_node_failure) it, [`shutdown`](Self::shutdown) (or dropping the
    /// cluster) panics with it and the seed.
    pub fn spawn_nodes<L: NodeLogic<M>>(&mut self, logic: L) {
        let logic = Arc::new(logic);
        let spawner: Spawner<M> = Arc::new(move |server, ctx: NodeContext| {
            let run = logic.start(server, ctx.clone());
            tokio::spawn(async move {
                if let Err(panic) = AssertUnwindSafe(run).catch_unwind().await {
                    ctx.report_panic(panic_message(&*panic));
                }
            })
        });
        for (&pid, node) in &mut self.nodes {
            if let Some(server) = node.server.take() {
                let ctx = NodeContext::new(
                    pid,
                    node.incarnation,
                    false,
                    crate::seed_mix(self.seed, pid, node.incarnation),
                    self.history.clone(),
                    self.failures.clone(),
                );
                node.task = Some(spawner(server, ctx));
            }
        }
        self.spawner = Some(spawner);
        // Node logic talks back and forth: arrivals flow freely from now on.
        self.free_running = true;
        self.gate.set(true);
    }

    /// The first failure of node logic in this run (a violation it reported with
    /// [`NodeContext::fail`], or a panic), if any.
    pub fn node_failure(&self) -> Option<NodeFailure> {
        self.failures.first()
    }

    /// Takes the first failure of node logic as handled: [`shutdown`](Self::shutdown) and
    /// dropping the cluster then no longer panic with it.
    pub fn take_node_failure(&mut self) -> Option<NodeFailure> {
        let failure = self.failures.first();
        self.failure_taken |= failure.is_some();
        failure
    }

    /// Waits until node logic fails, and returns the failure (never returns if none does):
    /// `select!` on it beside your own waiting, to stop at the moment a node fails.
    pub async fn node_failed(&self) -> NodeFailure {
        self.failures.wait().await
    }

    /// Stops every node (node logic included) and returns the history. The history ends
    /// here: what the nodes do while they stop is not part of the run.
    ///
    /// # Panics
    ///
    /// If node logic failed and nobody [took](Self::take_node_failure) the failure: a test
    /// must not pass over it.
    pub async fn shutdown(mut self) -> Vec<Record> {
        self.record_peer_events();
        let records = self.history.records();
        self.history.close();
        let untaken = self.untaken_failure();
        for node in self.nodes.values_mut() {
            if let Some(task) = node.task.take() {
                task.abort();
                let _ = task.await;
            }
            if let Some(server) = node.server.take() {
                server.shutdown().await;
            }
        }
        if let Some(failure) = untaken {
            panic!("{failure}\ncluster-testkit: {}", replay_hint(self.seed));
        }
        records
    }
}

impl<M> SimCluster<M> {
    /// The run's node failure if nobody took it (and the thread is not already panicking),
    /// marked as taken: it is reported once, and what fails after the run is not the run's.
    fn untaken_failure(&mut self) -> Option<NodeFailure> {
        let taken = std::mem::replace(&mut self.failure_taken, true);
        if taken || std::thread::panicking() {
            return None;
        }
        self.failures.first()
    }
}

impl<M> Drop for SimCluster<M> {
    fn drop(&mut self) {
        if let Some(failure) = self.untaken_failure() {
            panic!("{failure}\ncluster-testkit: {}", replay_hint(self.seed));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    in_flight: usize,
    /// Control frames not yet received (simulation): one node may be behind the others
    /// in taking them (a node that joined gets every member's records at once).
    control: usize,
    raw_pending: usize,
    drained: u64,
    /// (sent, delivered + dropped) over every incarnation, when watched.
    counters: (u64, u64),
    discarded: u64,
}

/// Records the peer events `pid` (as `incarnation`) told that are waiting in `events`.
fn record_events(history: &History, pid: Pid, incarnation: Incarnation, events: &mut Events) {
    while let Some(told) = events.try_recv() {
        let event = match told {
            Ok(told) => match PeerChange::from_core(&told.event) {
                Some(change) => Event::PeerEvent {
                    at: pid,
                    at_incarnation: incarnation,
                    change,
                    uptime_us: u64::try_from(told.uptime.as_micros()).unwrap_or(u64::MAX),
                },
                None => Event::Note {
                    text: format!("{pid} told a peer event the test kit does not know: {told:?}"),
                },
            },
            Err(Lagged(lost)) => Event::PeerEventsLost {
                at: pid,
                at_incarnation: incarnation,
                lost,
            },
        };
        history.push(event);
    }
}

/// `text` on one line: a summary must not break the history's or the diagram's lines.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn payload_json<M: serde::Serialize>(msg: &M) -> serde_json::Value {
    serde_json::to_value(msg)
        .unwrap_or_else(|e| serde_json::Value::String(format!("<not representable as JSON: {e}>")))
}
