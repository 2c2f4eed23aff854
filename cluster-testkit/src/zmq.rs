//! The ZeroMQ transport as a [`ClusterUnderTest`] (feature `zmq`): real sockets on
//! loopback, both backends of `cluster-zmq`.
//!
//! Crash and restart are supported (a crash closes the node's sockets at once, without
//! flushing; a restart binds the same port again as the next incarnation); partitions and
//! loss are not (they would need a relay). A message sent within the backend's window of a
//! crash or restart on its link may go either way; the harness also waits for connections
//! to be up after a start or restart before it goes on, so what follows is judged exactly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cluster_core::{
    Config, DropReason, Incarnation, Options, PeerSet, Pid, Transport, TransportError,
    TransportEvent,
};
use tokio::sync::watch;

use crate::backend::{Capabilities, ClusterUnderTest, Started};
use crate::conformance::Setup;
use crate::sim::SimError;

/// Which ZeroMQ library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// libzmq through the `zmq` crate.
    Libzmq,
    /// The pure-Rust `zeromq` crate.
    Zeromq,
}

/// Options for real-socket runs: quick heartbeats, short linger.
pub fn test_options() -> Options {
    Options {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(600),
        linger: Duration::from_millis(200),
        ..Options::default()
    }
}

/// A cluster of ZeroMQ nodes on free loopback ports.
pub struct ZmqBackend {
    config: Config,
    flavor: Flavor,
    incarnations: BTreeMap<Pid, Incarnation>,
    killed: BTreeMap<Pid, Arc<AtomicBool>>,
}

impl std::fmt::Debug for ZmqBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqBackend")
            .field("flavor", &self.flavor)
            .finish_non_exhaustive()
    }
}

fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    // Hold every listener at once so the ports differ, then release them.
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

impl ZmqBackend {
    /// `setup.nodes` nodes on free loopback ports. The setup's options are used, with the
    /// heartbeat settings of [`test_options`] unless the setup changed them.
    pub fn new(setup: &Setup, flavor: Flavor) -> Result<Self, SimError> {
        let ports = free_ports(setup.nodes)
            .map_err(|e| SimError::Transport(TransportError::Other(e.to_string())))?;
        let peers = ports
            .iter()
            .zip(1..)
            .map(|(port, pid)| (pid, format!("127.0.0.1:{port}")));
        let mut options = setup.options.clone();
        let defaults = Options::default();
        let quick = test_options();
        if options.heartbeat_interval == defaults.heartbeat_interval {
            options.heartbeat_interval = quick.heartbeat_interval;
        }
        if options.heartbeat_timeout == defaults.heartbeat_timeout {
            options.heartbeat_timeout = quick.heartbeat_timeout;
        }
        if options.linger == defaults.linger {
            options.linger = quick.linger;
        }
        let config = Config::from_peers(peers, options).map_err(cluster_core::ServerError::from)?;
        Ok(Self {
            config,
            flavor,
            incarnations: BTreeMap::new(),
            killed: BTreeMap::new(),
        })
    }

    /// A conformance factory for `flavor`.
    pub fn factory(
        flavor: Flavor,
    ) -> impl Fn(&Setup) -> Result<Box<dyn ClusterUnderTest>, SimError> {
        move |setup| Ok(Box::new(ZmqBackend::new(setup, flavor)?))
    }

    async fn bind(&mut self, pid: Pid) -> Result<Started, TransportError> {
        let inner: Box<dyn Transport> = match self.flavor {
            Flavor::Libzmq => Box::new(cluster_zmq::LibzmqTransport::bind(pid, &self.config)?),
            Flavor::Zeromq => {
                Box::new(cluster_zmq::ZeromqTransport::bind(pid, &self.config).await?)
            }
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
impl ClusterUnderTest for ZmqBackend {
    fn name(&self) -> String {
        match self.flavor {
            Flavor::Libzmq => "zmq-libzmq".into(),
            Flavor::Zeromq => "zmq-zeromq".into(),
        }
    }

    fn config(&self) -> &Config {
        &self.config
    }

    fn capabilities(&self) -> Capabilities {
        // Detection of a dead peer (heartbeat timeout) plus reconnection back-off (≤ 1 s).
        let o = self.config.options();
        Capabilities::real(o.heartbeat_timeout + Duration::from_millis(1000))
    }

    async fn start(&mut self, pid: Pid) -> Result<Started, TransportError> {
        self.bind(pid).await
    }

    async fn crash(&mut self, pid: Pid) {
        if let Some(k) = self.killed.get(&pid) {
            k.store(true, Ordering::Release);
        }
    }

    async fn restart(&mut self, pid: Pid) -> Result<Started, TransportError> {
        let next = self.incarnations.get(&pid).map_or(1, |i| i + 1);
        self.incarnations.insert(pid, next);
        self.bind(pid).await
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
    fn send(&mut self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        if self.dead() {
            return Err(DropReason::Unreachable);
        }
        self.inner.send(to, frame)
    }

    async fn recv(&mut self) -> Option<TransportEvent> {
        if self.dead() {
            return None;
        }
        let event = self.inner.recv().await;
        // Killed while waiting: what arrived dies with the process.
        if self.dead() { None } else { event }
    }

    fn try_recv(&mut self) -> Option<TransportEvent> {
        if self.dead() {
            return None;
        }
        self.inner.try_recv()
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        self.inner.connected()
    }

    async fn shutdown(&mut self, linger: Duration) {
        let linger = if self.dead() { Duration::ZERO } else { linger };
        self.inner.shutdown(linger).await;
    }
}
