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
use cluster_zmq::Backend;
use tokio::sync::watch;

use crate::net;

use crate::conformance::Setup;
use crate::sim::SimError;
use crate::under_test::{Capabilities, ClusterUnderTest, Started};

/// A cluster of ZeroMQ nodes on free loopback ports.
pub struct ZmqCluster {
    config: Config,
    backend: Backend,
    incarnations: BTreeMap<Pid, Incarnation>,
    killed: BTreeMap<Pid, Arc<AtomicBool>>,
}

impl std::fmt::Debug for ZmqCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqCluster")
            .field("flavor", &self.backend)
            .finish_non_exhaustive()
    }
}

impl ZmqCluster {
    /// `setup.nodes` nodes on free loopback ports. The setup's options are used, with the
    /// heartbeat settings of [`test_options`] unless the setup changed them.
    pub fn new(setup: &Setup, backend: Backend) -> Result<Self, SimError> {
        let ports = net::free_ports(setup.nodes)
            .map_err(|e| SimError::Transport(TransportError::Other(e.to_string())))?;
        let peers = ports
            .iter()
            .zip(1..)
            .map(|(port, pid)| (pid, format!("127.0.0.1:{port}")));
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
        let config = Config::from_peers(peers, options).map_err(cluster_core::ServerError::from)?;
        Ok(Self {
            config,
            backend,
            incarnations: BTreeMap::new(),
            killed: BTreeMap::new(),
        })
    }

    /// A conformance factory for `backend`.
    pub fn factory(
        backend: Backend,
    ) -> impl Fn(&Setup) -> Result<Box<dyn ClusterUnderTest>, SimError> {
        move |setup| Ok(Box::new(ZmqCluster::new(setup, backend)?))
    }

    async fn bind(&mut self, pid: Pid) -> Result<Started, TransportError> {
        let inner: Box<dyn Transport> =
            Box::new(cluster_zmq::bind_with(self.backend, pid, &self.config).await?);
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
        format!("zmq-{}", self.backend)
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
