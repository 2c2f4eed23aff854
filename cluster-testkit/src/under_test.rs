//! How a transport plugs into the test kit: a "cluster under test" that starts, crashes and
//! restarts nodes and injects whichever faults it can.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cluster_core::{
    Config, DropCounts, DropReason, Incarnation, Pid, ServerBuilder, Transport, TransportError,
};
use cluster_mem::MemNetwork;

/// How precisely the oracle may judge a backend's deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// Simulation: every message is judged exactly, by the order of events. Arrivals are
    /// held until the harness settles, so faults between a send and the next settle hit
    /// frames that are in flight.
    Exact,
    /// Real sockets: a message sent within this window of a fault on its link (before or
    /// after) may go either way; everything else is judged exactly.
    Window(Duration),
}

/// The fault operations a backend supports. Unsupported operations are never generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `Crash` and `Restart`.
    pub crash_restart: bool,
    /// `Partition` (both ways).
    pub partition: bool,
    /// `Cut` (one way).
    pub cut: bool,
    /// `SetLoss`.
    pub loss: bool,
    /// `Hostile`: bytes put on a node's port ([`ClusterUnderTest::inject`]).
    pub inject: bool,
    /// `Join` and `Leave`: membership at run time ([`ClusterUnderTest::join_node`]; the
    /// transports' `add_peer` and `remove_peer`).
    pub membership: bool,
    /// How the oracle judges timing.
    pub timing: Timing,
}

impl Capabilities {
    /// Everything, judged exactly: what a simulation offers.
    pub const SIMULATION: Capabilities = Capabilities {
        crash_restart: true,
        partition: true,
        cut: true,
        loss: true,
        inject: true,
        membership: true,
        timing: Timing::Exact,
    };

    /// Real sockets without a relay: crash and restart only, with a "may" window.
    pub fn real(window: Duration) -> Self {
        Capabilities {
            crash_restart: true,
            partition: false,
            cut: false,
            loss: false,
            inject: false,
            membership: false,
            timing: Timing::Window(window),
        }
    }
}

/// A node's transport as started by a [`ClusterUnderTest`], with the incarnation it runs as.
pub struct Started {
    /// The node's transport.
    pub transport: Box<dyn Transport>,
    /// The incarnation the server must run as (from the catalog, or the simulated network).
    pub incarnation: Incarnation,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

/// A cluster of one transport under test. The harness builds each node's
/// [`Server`](cluster_core::Server) over the transport it returns, so every transport is
/// judged by the same oracle. Fault methods are called only if [`Capabilities`] says so.
///
/// To add a transport (e.g. ZeroMQ): implement this for a struct that owns the config (with
/// free ports), starts a node's transport on [`start`](ClusterUnderTest::start), kills it
/// on [`crash`](ClusterUnderTest::crash) (the harness then shuts its server down), and
/// reopens it as a higher incarnation on [`restart`](ClusterUnderTest::restart); then call
/// [`conformance::run`](crate::conformance::run) with a factory for it.
#[async_trait]
pub trait ClusterUnderTest: Send + 'static {
    /// A short name for reports, e.g. `mem` or `zmq-libzmq`.
    fn name(&self) -> String;
    /// The config every node runs with.
    fn config(&self) -> &Config;
    /// What it supports and how it is judged.
    fn capabilities(&self) -> Capabilities;
    /// Starts `pid` for the first time.
    async fn start(&mut self, pid: Pid) -> Result<Started, TransportError>;
    /// Crashes `pid` abruptly: no flush. The harness shuts its server down afterwards.
    async fn crash(&mut self, pid: Pid);
    /// Brings a crashed `pid` back as a new, higher incarnation.
    async fn restart(&mut self, pid: Pid) -> Result<Started, TransportError>;
    /// Cuts every link between `a` and `b`, both ways.
    fn partition(&mut self, _a: &[Pid], _b: &[Pid]) {}
    /// Cuts the link `from → to`.
    fn cut(&mut self, _from: Pid, _to: Pid) {}
    /// Removes every cut, partition and loss setting.
    fn heal(&mut self) {}
    /// Loses frames on `from → to` with probability `p`.
    fn set_loss(&mut self, _from: Pid, _to: Pid, _p: f64) {}
    /// Frames accepted and not yet received, if the backend can tell (simulation).
    fn in_flight(&self) -> Option<usize> {
        None
    }
    /// Control frames (greetings, acknowledgements, membership changes) accepted and not
    /// yet received, if the backend can tell (simulation): a settled cluster has none
    /// left, or a change to the membership may not have reached every node yet.
    fn control_in_flight(&self) -> Option<usize> {
        None
    }
    /// Frames the backend accepted and later discarded that no server counted.
    fn discarded(&self) -> DropCounts {
        DropCounts::default()
    }
    /// Puts `bytes` on `to`'s port, as if a stranger had sent them (contract C9): `Ok` if
    /// the network took them, else why it refused. `None`: this backend cannot.
    fn inject(&mut self, _to: Pid, _bytes: Bytes) -> Option<Result<(), DropReason>> {
        None
    }
    /// Makes node `pid`, which is in no member's config, exist (in memory: a node added to
    /// the network; on sockets: a fresh port), and starts its transport with a config that
    /// lists `members` (pid and address) and `pid` itself: the node that will ask to join.
    /// Returns that config and the transport. `None`: this backend cannot (the default).
    async fn join_node(
        &mut self,
        _pid: Pid,
        _members: &[(Pid, String)],
    ) -> Option<Result<(Config, Started), TransportError>> {
        None
    }
    /// Adjusts the builder of each node's server before it starts (the router mutants of
    /// [`mutants`](crate::mutants) break the router through it).
    fn server_builder(&self, _pid: Pid, builder: ServerBuilder) -> ServerBuilder {
        builder
    }
}

/// The in-memory backend: a [`MemNetwork`].
#[derive(Debug, Clone)]
pub struct MemCluster {
    net: MemNetwork,
    config: Config,
    /// Nodes added to the network at run time ([`ClusterUnderTest::join_node`]).
    joined: Vec<Pid>,
}

impl MemCluster {
    /// A network of every pid of `config`, with loss randomness from `seed`.
    pub fn new(config: &Config, seed: u64) -> Self {
        Self {
            net: MemNetwork::new(config, seed),
            config: config.clone(),
            joined: Vec::new(),
        }
    }

    /// Over an existing network (which must have been built from `config`).
    pub fn from_network(net: MemNetwork, config: &Config) -> Self {
        Self {
            net,
            config: config.clone(),
            joined: Vec::new(),
        }
    }

    /// The network.
    pub fn network(&self) -> &MemNetwork {
        &self.net
    }

    fn started(&self, pid: Pid) -> Result<Started, TransportError> {
        let transport = self.net.transport(pid)?;
        let incarnation = self.net.incarnation(pid).unwrap_or(0);
        Ok(Started {
            transport: Box::new(transport),
            incarnation,
        })
    }
}

#[async_trait]
impl ClusterUnderTest for MemCluster {
    fn name(&self) -> String {
        "mem".into()
    }

    fn config(&self) -> &Config {
        &self.config
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::SIMULATION
    }

    async fn start(&mut self, pid: Pid) -> Result<Started, TransportError> {
        self.started(pid)
    }

    async fn crash(&mut self, pid: Pid) {
        self.net.crash(pid);
    }

    async fn restart(&mut self, pid: Pid) -> Result<Started, TransportError> {
        self.net
            .restart(pid)
            .ok_or_else(|| TransportError::Unavailable {
                pid,
                reason: "not in the network".into(),
            })?;
        let started = self.started(pid)?;
        // `MemNetwork` keeps the peers a node removed across its restart (its `removed`
        // pairs are by pid): the new incarnation's transport would refuse them as
        // `unknown_peer` while its server, started from its config, counts them members.
        // A restarted process remembers no removal: undo them, as a fresh transport has
        // none.
        let others = self.config.pids().chain(self.joined.iter().copied());
        for peer in others.filter(|p| *p != pid) {
            let _ = started.transport.add_peer(peer, &mem_address(peer));
        }
        Ok(started)
    }

    fn partition(&mut self, a: &[Pid], b: &[Pid]) {
        self.net.partition(a, b);
    }

    fn cut(&mut self, from: Pid, to: Pid) {
        self.net.cut(from, to);
    }

    fn heal(&mut self) {
        self.net.heal();
    }

    fn set_loss(&mut self, from: Pid, to: Pid, p: f64) {
        self.net.set_loss(from, to, p);
    }

    fn in_flight(&self) -> Option<usize> {
        Some(self.net.in_flight())
    }

    fn control_in_flight(&self) -> Option<usize> {
        Some(self.net.control_in_flight())
    }

    fn discarded(&self) -> DropCounts {
        self.net.stats().discarded
    }

    fn inject(&mut self, to: Pid, bytes: Bytes) -> Option<Result<(), DropReason>> {
        Some(self.net.inject(to, bytes))
    }

    async fn join_node(
        &mut self,
        pid: Pid,
        members: &[(Pid, String)],
    ) -> Option<Result<(Config, Started), TransportError>> {
        let made = (|| {
            let config = joiner_config(&self.config, pid, members, mem_address(pid))?;
            self.net.add_node(pid)?;
            self.joined.push(pid);
            Ok((config, self.started(pid)?))
        })();
        Some(made)
    }
}

/// A made-up address for a node the in-memory network adds at run time (it routes by pid:
/// the address only has to be `host:port`).
fn mem_address(pid: Pid) -> String {
    format!("127.0.0.1:{}", 10_000 + pid.rem_euclid(50_000))
}

/// The config of node `pid` that asks to join: `members` and itself at `address`, with
/// `base`'s options and key.
pub(crate) fn joiner_config(
    base: &Config,
    pid: Pid,
    members: &[(Pid, String)],
    address: String,
) -> Result<Config, TransportError> {
    let peers = members
        .iter()
        .filter(|(p, _)| *p != pid)
        .cloned()
        .chain(std::iter::once((pid, address)));
    Config::from_peers(peers, base.options().clone())
        .map(|c| c.with_cluster_key(base.cluster_key().cloned()))
        .map_err(|e| TransportError::Other(format!("the config of joining node {pid}: {e}")))
}

pub(crate) fn window_of(timing: Timing) -> Option<Duration> {
    match timing {
        Timing::Exact => None,
        Timing::Window(w) => Some(w),
    }
}
