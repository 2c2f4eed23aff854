//! The one-call server integration: a node's catalog, kept current by a [`Recorder`], attached
//! to a [`ServerBuilder`].
//!
//! Kept apart from [`NodeCatalog`]'s own module because the recorder holds a `NodeCatalog`:
//! this way `node` knows nothing of the recorder, and only this module knows both.

use std::time::Duration;

use cluster_core::{Config, Pid, ServerBuilder};

use crate::error::CatalogError;
use crate::node::NodeCatalog;
use crate::recorder::{DEFAULT_INTERVAL, Recorder};

impl NodeCatalog {
    /// Sets `builder`'s incarnation to this start's, and attaches a [`Recorder`] (polling
    /// every [`DEFAULT_INTERVAL`]) that keeps the catalog current while the server runs and
    /// flushes and closes it when the server stops.
    pub fn attach_to(self, builder: ServerBuilder) -> ServerBuilder {
        self.attach_to_with_interval(builder, DEFAULT_INTERVAL)
    }

    /// [`NodeCatalog::attach_to`] with the recorder's polling and flush interval.
    pub fn attach_to_with_interval(
        self,
        builder: ServerBuilder,
        interval: Duration,
    ) -> ServerBuilder {
        // The membership it last knew (membership at run time), over the config's. Records
        // that do not decode are logged and left out: the config's membership holds
        // (`cluster::new` refuses to start on them instead, naming the catalog).
        let members = match self.catalog().membership() {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(
                    pid = self.pid(),
                    "peer catalog: {e}; starting from the config's membership"
                );
                Vec::new()
            }
        };
        builder
            .incarnation(self.incarnation())
            .members(members)
            .attach_with(move |monitor| Recorder::spawn(self, monitor, interval))
    }
}

/// Opens node `pid`'s catalog (see [`NodeCatalog::open`] and
/// [`catalog_dir`](crate::catalog_dir)), begins a new incarnation, and returns `builder` set to
/// run as that incarnation with a [`Recorder`] attached. The one call that gives a server its
/// catalog:
///
/// ```no_run
/// # async fn demo(transport: impl cluster_core::Transport) -> Result<(), cluster_core::ServerError> {
/// use cluster_core::{Config, Server};
///
/// let config = Config::load("config.json")?;
/// let builder = cluster_catalog::attach(1, &config, Server::<String>::builder(1, config.clone()))?;
/// let server: Server<String> = builder.build(transport)?;
/// # Ok(()) }
/// ```
///
/// Opening does blocking file I/O (two fsyncs); from async code on a busy runtime, wrap it
/// in `tokio::task::spawn_blocking`.
pub fn attach(
    pid: Pid,
    config: &Config,
    builder: ServerBuilder,
) -> Result<ServerBuilder, CatalogError> {
    Ok(NodeCatalog::open(pid, config)?.attach_to(builder))
}
