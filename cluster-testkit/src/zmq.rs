//! The ZeroMQ transport as a [`ClusterUnderTest`] (feature `zmq`): real sockets on
//! loopback, both backends of `cluster-zmq`, and [`ZmqMutant`]s of it that prove the
//! oracle's real-socket ("windowed") rules catch transport bugs.
//!
//! Crash and restart are supported (a crash closes the node's sockets at once, without
//! flushing; a restart binds the same port again as the next incarnation); partitions and
//! loss are not (they would need a relay per link). Membership at run time is: a node
//! that joins ([`ClusterUnderTest::join_node`]) binds a port held for it from the start,
//! with a config of the members then and itself, and its peers connect to it through
//! their transports' `add_peer`; one that leaves is crashed after its leave completes. A message sent within the backend's
//! window of a crash or restart on its link may go either way; the harness also waits for
//! connections to be up after a start or restart before it goes on, so what follows is
//! judged exactly.
//!
//! # When the network has settled
//!
//! The harness settles on a condition, not on a quiet time: [`ClusterUnderTest::in_flight`]
//! counts the frames a node's ZeroMQ transport accepted for a live peer that the peer's
//! transport has not handed up yet (by `(sender, receiver, msg id)`, from the frames'
//! headers). A crash forgets what was in flight to and from the crashed node (it dies
//! with the process); a `zeromq` connection given up ([`TransportEvent::Dropped`]) forgets
//! what was in flight on it. Settled = nothing in flight, every outbox empty and every
//! counter still.
//!
//! # Ports
//!
//! Each node's port is drawn outside the kernel's ephemeral range and held
//! ([`net::ReservedPorts`]) until that node binds it for the first time, so no other
//! socket can be handed it in between.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cluster_core::wire::Header;
use cluster_core::{
    Config, DropReason, Incarnation, MsgId, Options, PeerSet, Pid, Transport, TransportError,
    TransportEvent,
};
use cluster_zmq::Backend;
use tokio::sync::watch;

use crate::net;

use crate::conformance::Setup;
use crate::oracle::Invariant;
use crate::scenario::{Op, Scenario};
use crate::sim::SimError;
use crate::under_test::{Capabilities, ClusterUnderTest, Started};

/// Nodes that may join a [`ZmqCluster`] at run time, each on a port held from the start.
const JOINERS: usize = 1;

/// A cluster of ZeroMQ nodes on free loopback ports.
pub struct ZmqCluster {
    config: Config,
    backend: Backend,
    mutant: Option<ZmqMutant>,
    incarnations: BTreeMap<Pid, Incarnation>,
    killed: BTreeMap<Pid, Arc<AtomicBool>>,
    ports: net::ReservedPorts,
    /// Ports held for nodes that join at run time ([`ClusterUnderTest::join_node`]).
    spare_ports: Vec<u16>,
    /// The config each node that joined runs with (the members then, and itself).
    joined: BTreeMap<Pid, Config>,
    flight: Arc<Flight>,
}

impl std::fmt::Debug for ZmqCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqCluster")
            .field("backend", &self.backend)
            .field("mutant", &self.mutant)
            .finish_non_exhaustive()
    }
}

impl ZmqCluster {
    /// These nodes with `key` as their cluster key: every frame carries a MAC.
    pub fn with_cluster_key(mut self, key: Option<cluster_core::ClusterKey>) -> Self {
        self.config = self.config.with_cluster_key(key);
        self
    }

    /// These nodes with `key` as their cluster key and `"encrypt"` on: every frame's
    /// payload is encrypted (XChaCha20-Poly1305) and its header authenticated.
    pub fn with_encryption(self, key: cluster_core::ClusterKey) -> Result<Self, SimError> {
        let mut cluster = self.with_cluster_key(Some(key));
        let options = Options {
            encrypt: true,
            ..cluster.config.options().clone()
        };
        cluster.config = cluster
            .config
            .clone()
            .with_options(options)
            .map_err(|e| SimError::Transport(TransportError::Other(e.to_string())))?;
        Ok(cluster)
    }

    /// `setup.nodes` nodes on free loopback ports. The setup's options are used, with the
    /// heartbeat settings of [`net::fast_options`] unless the setup changed them.
    pub fn new(setup: &Setup, backend: Backend) -> Result<Self, SimError> {
        // One more than the config's: a scenario's `Join` adds one node at most.
        let ports = net::ReservedPorts::new(setup.nodes + JOINERS)
            .map_err(|e| SimError::Transport(TransportError::Other(e.to_string())))?;
        let mut drawn = ports.ports();
        let spare_ports = drawn.split_off(setup.nodes.min(drawn.len()));
        let mut options = setup.options.clone();
        let defaults = Options::default();
        let quick = net::fast_options();
        if options.heartbeat_interval == defaults.heartbeat_interval {
            options.heartbeat_interval = quick.heartbeat_interval;
        }
        if options.heartbeat_timeout == defaults.heartbeat_timeout {
            options.heartbeat_timeout = quick.heartbeat_timeout;
        }
        if options.linger == defaults.linger {
            options.linger = quick.linger;
        }
        let config = net::config_on(&drawn, options).map_err(cluster_core::ServerError::from)?;
        Ok(Self {
            config,
            backend,
            mutant: None,
            incarnations: BTreeMap::new(),
            killed: BTreeMap::new(),
            ports,
            spare_ports,
            joined: BTreeMap::new(),
            flight: Arc::new(Flight::default()),
        })
    }

    /// Like [`new`](Self::new), with every node's transport broken the way `mutant` says.
    pub fn with_mutant(
        setup: &Setup,
        backend: Backend,
        mutant: ZmqMutant,
    ) -> Result<Self, SimError> {
        let mut cluster = Self::new(setup, backend)?;
        cluster.mutant = Some(mutant);
        Ok(cluster)
    }

    /// A conformance factory for `backend`.
    pub fn factory(
        backend: Backend,
    ) -> impl Fn(&Setup) -> Result<Box<dyn ClusterUnderTest>, SimError> {
        move |setup| Ok(Box::new(ZmqCluster::new(setup, backend)?))
    }

    /// A conformance factory for `backend` broken by `mutant`.
    pub fn mutant_factory(
        backend: Backend,
        mutant: ZmqMutant,
    ) -> impl Fn(&Setup) -> Result<Box<dyn ClusterUnderTest>, SimError> {
        move |setup| Ok(Box::new(ZmqCluster::with_mutant(setup, backend, mutant)?))
    }

    async fn bind(&mut self, pid: Pid) -> Result<Started, TransportError> {
        let config = self.joined.get(&pid).unwrap_or(&self.config).clone();
        // Let go of the port only now, right before the node binds it.
        if let Some(port) = config
            .peer(pid)
            .and_then(|p| p.address.rsplit_once(':'))
            .and_then(|(_, port)| port.parse().ok())
        {
            self.ports.release(port);
        }
        let zmq = cluster_zmq::bind_with(self.backend, pid, &config).await?;
        self.flight.up(pid);
        let tracked: Box<dyn Transport> = Box::new(Tracked {
            pid,
            inner: zmq,
            flight: Arc::clone(&self.flight),
        });
        let inner = match self.mutant {
            Some(mutant) => Box::new(Faulty::new(tracked, mutant)),
            None => tracked,
        };
        let killed = Arc::new(AtomicBool::new(false));
        self.killed.insert(pid, Arc::clone(&killed));
        let incarnation = self.incarnations.get(&pid).copied().unwrap_or(0);
        Ok(Started {
            transport: Box::new(Killable { inner, killed }),
            incarnation,
        })
    }
}

#[async_trait]
impl ClusterUnderTest for ZmqCluster {
    fn name(&self) -> String {
        match self.mutant {
            Some(m) => format!("zmq-{}-mutant-{}", self.backend, m.name()),
            None => format!("zmq-{}", self.backend),
        }
    }

    fn config(&self) -> &Config {
        &self.config
    }

    fn capabilities(&self) -> Capabilities {
        // Detection of a dead peer (heartbeat timeout) plus reconnection back-off (≤ 1 s).
        let o = self.config.options();
        Capabilities {
            membership: true,
            ..Capabilities::real(o.heartbeat_timeout + Duration::from_millis(1000))
        }
    }

    /// Binds node `pid` on a port held for joining nodes, with a config of `members` and
    /// itself.
    async fn join_node(
        &mut self,
        pid: Pid,
        members: &[(Pid, String)],
    ) -> Option<Result<(Config, Started), TransportError>> {
        if self.joined.contains_key(&pid) || self.config.peer(pid).is_some() {
            return Some(Err(TransportError::Other(format!(
                "node {pid} has a port already: only a new pid can join"
            ))));
        }
        let Some(port) = self.spare_ports.pop() else {
            return Some(Err(TransportError::Other(format!(
                "no port left for node {pid} to join on ({JOINERS} held per cluster)"
            ))));
        };
        let address = format!("127.0.0.1:{port}");
        let config = match crate::under_test::joiner_config(&self.config, pid, members, address) {
            Ok(config) => config,
            Err(e) => return Some(Err(e)),
        };
        self.joined.insert(pid, config.clone());
        Some(self.bind(pid).await.map(|started| (config, started)))
    }

    async fn start(&mut self, pid: Pid) -> Result<Started, TransportError> {
        self.bind(pid).await
    }

    async fn crash(&mut self, pid: Pid) {
        if let Some(k) = self.killed.get(&pid) {
            k.store(true, Ordering::Release);
        }
        self.flight.down(pid);
    }

    async fn restart(&mut self, pid: Pid) -> Result<Started, TransportError> {
        let next = self.incarnations.get(&pid).map_or(1, |i| i + 1);
        self.incarnations.insert(pid, next);
        self.flight.down(pid);
        self.bind(pid).await
    }

    fn in_flight(&self) -> Option<usize> {
        Some(self.flight.count())
    }
}

/// Frames accepted by a node's real transport for a live peer and not yet handed up by the
/// peer's transport (see the module docs).
#[derive(Debug, Default)]
struct Flight {
    state: Mutex<FlightState>,
}

#[derive(Debug, Default)]
struct FlightState {
    /// Nodes whose transport is bound and not crashed.
    up: BTreeSet<Pid>,
    /// `(from, to, msg id)` → copies in flight (more than one only if a transport sent a
    /// frame twice).
    frames: HashMap<(Pid, Pid, MsgId), u32>,
}

impl Flight {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlightState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn up(&self, pid: Pid) {
        self.lock().up.insert(pid);
    }

    /// `pid` crashed: what was in flight to or from it dies with it.
    fn down(&self, pid: Pid) {
        let mut s = self.lock();
        s.up.remove(&pid);
        s.frames
            .retain(|(from, to, _), _| *from != pid && *to != pid);
    }

    fn accepted(&self, from: Pid, to: Pid, msg_id: MsgId) {
        let mut s = self.lock();
        // A frame accepted for a peer that is down (the sender has not noticed yet) never
        // arrives: not waited for.
        if s.up.contains(&from) && s.up.contains(&to) {
            *s.frames.entry((from, to, msg_id)).or_default() += 1;
        }
    }

    fn arrived(&self, from: Pid, to: Pid, msg_id: MsgId) {
        let mut s = self.lock();
        if let Some(n) = s.frames.get_mut(&(from, to, msg_id)) {
            *n -= 1;
            if *n == 0 {
                s.frames.remove(&(from, to, msg_id));
            }
        }
    }

    /// The transport gave up its connection `from → to` and reported what it discarded.
    fn given_up(&self, from: Pid, to: Pid) {
        self.lock()
            .frames
            .retain(|(f, t, _), _| !(*f == from && *t == to));
    }

    fn count(&self) -> usize {
        self.lock().frames.values().map(|n| *n as usize).sum()
    }
}

/// The real transport, telling [`Flight`] what it accepted and what it handed up.
struct Tracked {
    pid: Pid,
    inner: cluster_zmq::ZmqTransport,
    flight: Arc<Flight>,
}

impl Tracked {
    fn note(&self, event: &TransportEvent) {
        match event {
            TransportEvent::Frame(bytes) => {
                if let Ok(h) = Header::parse(bytes)
                    && !h.destination.is_control()
                {
                    self.flight.arrived(h.sender, self.pid, h.msg_id);
                }
            }
            TransportEvent::Dropped { peer, .. } => self.flight.given_up(self.pid, *peer),
        }
    }
}

#[async_trait]
impl Transport for Tracked {
    fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        let header = Header::parse(&frame)
            .ok()
            .filter(|h| !h.destination.is_control());
        let result = self.inner.send(to, frame);
        if let (Ok(()), Some(h)) = (&result, header) {
            self.flight.accepted(self.pid, to, h.msg_id);
        }
        result
    }

    // `send_many`: the default, frame by frame, so that each accepted frame is counted.

    async fn writable(&self, to: Pid) {
        self.inner.writable(to).await;
    }

    async fn readable(&self) -> bool {
        self.inner.readable().await
    }

    fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
        let start = events.len();
        let n = self.inner.try_recv_many(events, max);
        for event in events.iter().skip(start) {
            self.note(event);
        }
        n
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        self.inner.connected()
    }

    fn may_lose_accepted(&self) -> bool {
        self.inner.may_lose_accepted()
    }

    async fn shutdown(&self, linger: Duration) {
        self.inner.shutdown(linger).await;
    }

    // Membership at run time: the inner transport's to grant (the defaults would refuse).
    fn add_peer(&self, pid: Pid, address: &str) -> Result<(), TransportError> {
        self.inner.add_peer(pid, address)
    }

    fn remove_peer(&self, pid: Pid) -> Result<(), TransportError> {
        self.inner.remove_peer(pid)
    }
}

/// A transport that can be killed: sends fail, receiving stops, and `shutdown` closes the
/// sockets without flushing, as a crash would.
struct Killable {
    inner: Box<dyn Transport>,
    killed: Arc<AtomicBool>,
}

impl Killable {
    fn dead(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

#[async_trait]
impl Transport for Killable {
    fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        if self.dead() {
            return Err(DropReason::Unreachable);
        }
        self.inner.send(to, frame)
    }

    fn send_many(&self, frames: &mut Vec<(Pid, Bytes)>, refused: &mut dyn FnMut(Pid, DropReason)) {
        if self.dead() {
            for (to, _) in frames.drain(..) {
                refused(to, DropReason::Unreachable);
            }
            return;
        }
        self.inner.send_many(frames, refused);
    }

    async fn writable(&self, to: Pid) {
        if self.dead() {
            // The next send is refused at once: nothing to wait for.
            return;
        }
        self.inner.writable(to).await;
    }

    async fn readable(&self) -> bool {
        if self.dead() {
            return false;
        }
        let ready = self.inner.readable().await;
        // Killed while waiting: what arrived dies with the process.
        ready && !self.dead()
    }

    fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
        if self.dead() {
            return 0;
        }
        self.inner.try_recv_many(events, max)
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        self.inner.connected()
    }

    fn may_lose_accepted(&self) -> bool {
        self.inner.may_lose_accepted()
    }

    async fn shutdown(&self, linger: Duration) {
        let linger = if self.dead() { Duration::ZERO } else { linger };
        self.inner.shutdown(linger).await;
    }

    // Membership at run time: the inner transport's to grant (the defaults would refuse).
    fn add_peer(&self, pid: Pid, address: &str) -> Result<(), TransportError> {
        self.inner.add_peer(pid, address)
    }

    fn remove_peer(&self, pid: Pid) -> Result<(), TransportError> {
        self.inner.remove_peer(pid)
    }
}

/// A deliberately broken ZeroMQ transport: each breaks one promise of the contract in the
/// transport layer, above the real sockets, so that the oracle's real-socket ("windowed")
/// rules can be shown to catch it ([`scenario`](Self::scenario) exposes it; the healthy
/// transport passes the same scenario). Frames a mutant keeps or loses never reach the real
/// sockets, so the harness never waits for them to arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZmqMutant {
    /// Keeps every frame the real transport refuses because its peer is down, reports it
    /// as sent, and sends it once the peer is connected again — to its next incarnation:
    /// what the Go package did (ZeroMQ queues for an absent peer). Breaks C4.
    DeliverLate,
    /// Reports every fourth frame on each link as sent and never sends it: silent loss on
    /// a healthy link. Breaks C5 (and C7: the totals no longer add up).
    LoseSilently,
    /// Swaps each pair of frames on a link (holds one, sends it after the next). Broke C3;
    /// since the wire format v2 the receiving router drops the overtaken frame as
    /// `replayed` (its sequence number is below one already seen), so order holds and the
    /// loss breaks C5.
    Reorder,
    /// Sends every frame twice. Broke C2; the receiving router now drops the copy as
    /// `replayed`, so nothing is delivered twice, and the surplus drop breaks C7.
    Duplicate,
}

impl ZmqMutant {
    /// Every mutant.
    pub const ALL: [ZmqMutant; 4] = [
        ZmqMutant::DeliverLate,
        ZmqMutant::LoseSilently,
        ZmqMutant::Reorder,
        ZmqMutant::Duplicate,
    ];

    /// A short name, e.g. `deliver-late`.
    pub fn name(self) -> &'static str {
        match self {
            ZmqMutant::DeliverLate => "deliver-late",
            ZmqMutant::LoseSilently => "lose-silently",
            ZmqMutant::Reorder => "reorder",
            ZmqMutant::Duplicate => "duplicate",
        }
    }

    /// The clause of the contract it breaks, which the oracle must report.
    pub fn breaks(self) -> Invariant {
        match self {
            ZmqMutant::DeliverLate => Invariant::C4DropOnUnreachable,
            ZmqMutant::LoseSilently => Invariant::C5Delivery,
            ZmqMutant::Reorder => Invariant::C5Delivery,
            ZmqMutant::Duplicate => Invariant::C7Accounting,
        }
    }

    /// A scenario on which the oracle's windowed rules must catch it, judged away from
    /// any fault's window (or, for [`DeliverLate`](Self::DeliverLate), sent while the
    /// destination was down, which no window excuses).
    pub fn scenario(self) -> Scenario {
        let send = |from: Pid, to: Pid, byte: u8| Op::Send {
            from,
            to,
            payload: vec![byte],
        };
        let ops = match self {
            // The settle after the crash lets node 1 notice it (its sends are then refused
            // as unreachable, which the mutant turns into "sent" and keeps).
            ZmqMutant::DeliverLate => vec![
                send(1, 2, 1),
                Op::Settle,
                Op::Crash(2),
                Op::Settle,
                send(1, 2, 2),
                send(1, 2, 3),
                Op::Restart(2),
                Op::Settle,
                send(1, 2, 4),
            ],
            ZmqMutant::LoseSilently => {
                let mut ops: Vec<Op> = (1..=8).map(|i| send(1, 2, i)).collect();
                ops.extend((1..=4).map(|i| send(2, 1, i)));
                ops
            }
            ZmqMutant::Reorder => (1..=4).map(|i| send(1, 2, i)).collect(),
            ZmqMutant::Duplicate => vec![send(1, 2, 1), send(2, 1, 2)],
        };
        Scenario {
            nodes: 2,
            seed: 1,
            ops,
        }
    }
}

/// The real transport (tracked) broken the way a [`ZmqMutant`] says.
struct Faulty {
    inner: Box<dyn Transport>,
    mutant: ZmqMutant,
    /// Only read here; `readable` waits on a clone of its own.
    connected: watch::Receiver<PeerSet>,
    /// Held while a frame goes to the inner transport, so that what was held back and what
    /// is sent now keep their order when several tasks send.
    state: Mutex<FaultyState>,
}

/// What a [`Faulty`] keeps between calls.
#[derive(Default)]
struct FaultyState {
    /// Frames kept back, per peer: for a peer that is down (`DeliverLate`), or the first
    /// of a pair (`Reorder`).
    held: BTreeMap<Pid, VecDeque<Bytes>>,
    /// Frames handed over per peer (`LoseSilently`).
    frames: BTreeMap<Pid, u64>,
}

impl Faulty {
    fn new(inner: Box<dyn Transport>, mutant: ZmqMutant) -> Self {
        let connected = inner.connected();
        Self {
            inner,
            mutant,
            connected,
            state: Mutex::new(FaultyState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FaultyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `DeliverLate`: sends what was kept for peers that are connected again.
    fn send_held(&self, state: &mut FaultyState) {
        let back: Vec<Pid> = {
            let set = self.connected.borrow();
            state
                .held
                .keys()
                .copied()
                .filter(|p| set.contains(p))
                .collect()
        };
        for peer in back {
            let Some(mut queue) = state.held.remove(&peer) else {
                continue;
            };
            while let Some(frame) = queue.pop_front() {
                if self.inner.send(peer, frame.clone()).is_err() {
                    // Still not reachable: keep the rest for later.
                    queue.push_front(frame);
                    state.held.insert(peer, queue);
                    break;
                }
            }
        }
    }

    fn waits_for_a_peer(&self) -> bool {
        self.mutant == ZmqMutant::DeliverLate && !self.state().held.is_empty()
    }
}

#[async_trait]
impl Transport for Faulty {
    fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        let mut state = self.state();
        match self.mutant {
            ZmqMutant::DeliverLate => {
                self.send_held(&mut state);
                match self.inner.send(to, frame.clone()) {
                    Err(DropReason::Unreachable) => {
                        state.held.entry(to).or_default().push_back(frame);
                        Ok(())
                    }
                    other => other,
                }
            }
            ZmqMutant::LoseSilently => {
                let n = state.frames.entry(to).or_default();
                *n += 1;
                if n.is_multiple_of(4) {
                    Ok(())
                } else {
                    self.inner.send(to, frame)
                }
            }
            ZmqMutant::Reorder => match state.held.get_mut(&to).and_then(VecDeque::pop_front) {
                None => {
                    state.held.entry(to).or_default().push_back(frame);
                    Ok(())
                }
                Some(first) => {
                    let result = self.inner.send(to, frame);
                    let _ = self.inner.send(to, first);
                    result
                }
            },
            ZmqMutant::Duplicate => {
                let result = self.inner.send(to, frame.clone());
                let _ = self.inner.send(to, frame);
                result
            }
        }
    }

    async fn writable(&self, to: Pid) {
        self.inner.writable(to).await;
    }

    async fn readable(&self) -> bool {
        if self.waits_for_a_peer() {
            // A receiver of this call's own: it has seen the set as it is now, and what
            // the set already holds is handled at once (a peer may have come back since
            // the last send).
            let mut connected = self.connected.clone();
            connected.borrow_and_update();
            self.send_held(&mut self.state());
            while self.waits_for_a_peer() {
                // Cancel-safe: both futures are (the inner transport's by its contract).
                let changed = tokio::select! {
                    ready = self.inner.readable() => return ready,
                    changed = connected.changed() => changed,
                };
                if changed.is_err() {
                    break;
                }
                self.send_held(&mut self.state());
            }
        }
        self.inner.readable().await
    }

    fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
        if self.waits_for_a_peer() {
            self.send_held(&mut self.state());
        }
        self.inner.try_recv_many(events, max)
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        self.inner.connected()
    }

    fn may_lose_accepted(&self) -> bool {
        self.inner.may_lose_accepted()
    }

    async fn shutdown(&self, linger: Duration) {
        self.inner.shutdown(linger).await;
    }

    // Membership at run time: the inner transport's to grant (the defaults would refuse).
    fn add_peer(&self, pid: Pid, address: &str) -> Result<(), TransportError> {
        self.inner.add_peer(pid, address)
    }

    fn remove_peer(&self, pid: Pid) -> Result<(), TransportError> {
        self.inner.remove_peer(pid)
    }
}
