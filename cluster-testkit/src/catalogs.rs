//! Simulated nodes with real peer catalogs (feature `catalog`, on by default): contract C8
//! as a real restart has it.
//!
//! [`WithCatalogs`] wraps any [`ClusterUnderTest`]: each node gets a sled catalog in its own
//! directory under a temporary root that outlives crashes. A start opens the catalog and
//! begins a new incarnation (durably); a crash closes it, as the process's death would; a
//! restart reopens it, so the incarnation comes from disk and increases.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use cluster_catalog::{NodeCatalog, PeerCatalog};
use cluster_core::{Config, DropCounts, DropReason, Pid, ServerBuilder, TransportError};

use crate::under_test::{Capabilities, ClusterUnderTest, Started};

/// A backend whose nodes take their incarnation from a sled catalog on disk.
pub struct WithCatalogs<B> {
    inner: B,
    root: tempfile::TempDir,
    open: BTreeMap<Pid, NodeCatalog>,
    /// The configs of the nodes that joined at run time.
    joined: BTreeMap<Pid, Config>,
}

impl<B> std::fmt::Debug for WithCatalogs<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithCatalogs")
            .field("root", &self.root.path())
            .finish_non_exhaustive()
    }
}

impl<B: ClusterUnderTest> WithCatalogs<B> {
    /// Wraps `inner`, with catalogs under a new temporary directory.
    pub fn new(inner: B) -> std::io::Result<Self> {
        Ok(Self {
            inner,
            root: tempfile::Builder::new()
                .prefix("cluster-testkit-catalogs-")
                .tempdir()?,
            open: BTreeMap::new(),
            joined: BTreeMap::new(),
        })
    }

    /// The directory of `pid`'s catalog.
    pub fn catalog_dir(&self, pid: Pid) -> std::path::PathBuf {
        self.root.path().join(format!("catalog-{pid}"))
    }

    fn open_catalog(&mut self, pid: Pid, started: Started) -> Result<Started, TransportError> {
        let unavailable = |e: cluster_catalog::CatalogError| TransportError::Unavailable {
            pid,
            reason: e.to_string(),
        };
        let catalog = PeerCatalog::open(self.catalog_dir(pid)).map_err(unavailable)?;
        // A node that joined is in no member's config: its catalog takes its own.
        let config = self.joined.get(&pid).unwrap_or(self.inner.config());
        let node = NodeCatalog::with_catalog(pid, config, catalog).map_err(unavailable)?;
        let incarnation = node.incarnation();
        self.open.insert(pid, node);
        Ok(Started {
            transport: started.transport,
            incarnation,
        })
    }
}

#[async_trait]
impl<B: ClusterUnderTest> ClusterUnderTest for WithCatalogs<B> {
    fn name(&self) -> String {
        format!("{}+catalogs", self.inner.name())
    }

    fn config(&self) -> &Config {
        self.inner.config()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn start(&mut self, pid: Pid) -> Result<Started, TransportError> {
        let started = self.inner.start(pid).await?;
        self.open_catalog(pid, started)
    }

    async fn crash(&mut self, pid: Pid) {
        // The process dies: its catalog is closed, its directory stays.
        self.open.remove(&pid);
        self.inner.crash(pid).await;
    }

    async fn restart(&mut self, pid: Pid) -> Result<Started, TransportError> {
        self.open.remove(&pid);
        let started = self.inner.restart(pid).await?;
        self.open_catalog(pid, started)
    }

    fn partition(&mut self, a: &[Pid], b: &[Pid]) {
        self.inner.partition(a, b);
    }

    fn cut(&mut self, from: Pid, to: Pid) {
        self.inner.cut(from, to);
    }

    fn heal(&mut self) {
        self.inner.heal();
    }

    fn set_loss(&mut self, from: Pid, to: Pid, p: f64) {
        self.inner.set_loss(from, to, p);
    }

    fn in_flight(&self) -> Option<usize> {
        self.inner.in_flight()
    }

    fn control_in_flight(&self) -> Option<usize> {
        self.inner.control_in_flight()
    }

    fn discarded(&self) -> DropCounts {
        self.inner.discarded()
    }

    fn inject(&mut self, to: Pid, bytes: Bytes) -> Option<Result<(), DropReason>> {
        self.inner.inject(to, bytes)
    }

    fn server_builder(&self, pid: Pid, builder: ServerBuilder) -> ServerBuilder {
        self.inner.server_builder(pid, builder)
    }

    async fn join_node(
        &mut self,
        pid: Pid,
        members: &[(Pid, String)],
    ) -> Option<Result<(Config, Started), TransportError>> {
        let made = self.inner.join_node(pid, members).await?;
        Some(made.and_then(|(config, started)| {
            self.joined.insert(pid, config.clone());
            Ok((config, self.open_catalog(pid, started)?))
        }))
    }
}
