//! [`NodeCatalog`]: the catalog a node opens at start, and the one-call server integration.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cluster_core::{Config, Incarnation, Pid, ServerBuilder};

use crate::catalog::{ImportReport, PeerCatalog, own_record_update};
use crate::error::CatalogError;
use crate::record::PeerStatus;
use crate::recorder::{DEFAULT_INTERVAL, Recorder};

/// The catalog directory of node `pid` under `config`.
///
/// * If the config sets `catalog_dir`, that directory, with `{pid}` replaced by the pid (so
///   one shared config file can give every node its own directory: `"catalog/{pid}"`).
/// * Otherwise `.cluster/catalog-<pid>` (e.g. `.cluster/catalog-3`).
///
/// A relative path is taken relative to the directory of the config file when the config
/// was loaded from a file ([`Config::load`]), and relative to the current directory
/// otherwise. Keeping the default next to the config file keeps a node's incarnation
/// counter in one place however the node is started.
pub fn catalog_dir(pid: Pid, config: &Config) -> PathBuf {
    let dir = match &config.options().catalog_dir {
        Some(dir) => PathBuf::from(dir.to_string_lossy().replace("{pid}", &pid.to_string())),
        None => Path::new(".cluster").join(format!("catalog-{pid}")),
    };
    if dir.is_absolute() {
        return dir;
    }
    let origin = Path::new(config.origin());
    match origin.parent() {
        Some(base) if origin.is_file() => base.join(dir),
        _ => dir,
    }
}

/// The catalog of a running node: opened, reconciled with the config, and holding this
/// start's incarnation.
#[derive(Debug)]
pub struct NodeCatalog {
    pid: Pid,
    incarnation: Incarnation,
    report: ImportReport,
    catalog: PeerCatalog,
}

impl NodeCatalog {
    /// Opens node `pid`'s catalog in [`catalog_dir`]`(pid, config)`, then as
    /// [`NodeCatalog::with_catalog`].
    pub fn open(pid: Pid, config: &Config) -> Result<Self, CatalogError> {
        config.check_member(pid)?;
        let catalog = PeerCatalog::open(catalog_dir(pid, config))?;
        Self::with_catalog(pid, config, catalog)
    }

    /// Makes `catalog` node `pid`'s: checks that no other node owns it, imports `config`
    /// (see [`PeerCatalog::import`]), begins a new incarnation (durably, see
    /// [`PeerCatalog::begin_incarnation`]) and marks this node's own record up.
    pub fn with_catalog(
        pid: Pid,
        config: &Config,
        catalog: PeerCatalog,
    ) -> Result<Self, CatalogError> {
        config.check_member(pid)?;
        catalog.claim(pid)?;
        let report = catalog.import(config)?;
        if !report.is_unchanged() {
            tracing::info!(pid, path = %catalog.path().display(), "peer catalog: {report}");
        }
        let incarnation = catalog.begin_incarnation()?;
        catalog.update(pid, |r| {
            own_record_update(r, incarnation, PeerStatus::Up, SystemTime::now())
        })?;
        catalog.flush()?;
        Ok(Self {
            pid,
            incarnation,
            report,
            catalog,
        })
    }

    /// The node's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The incarnation this start runs as.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// What the import of the config changed.
    pub fn import_report(&self) -> &ImportReport {
        &self.report
    }

    /// The catalog.
    pub fn catalog(&self) -> &PeerCatalog {
        &self.catalog
    }

    /// Gives the catalog back (e.g. to drop it, which closes it).
    pub fn into_catalog(self) -> PeerCatalog {
        self.catalog
    }

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
        interval: std::time::Duration,
    ) -> ServerBuilder {
        builder
            .incarnation(self.incarnation)
            .attach_with(move |monitor| Recorder::spawn(self, monitor, interval))
    }
}

/// Opens node `pid`'s catalog (see [`NodeCatalog::open`] and [`catalog_dir`]), begins a new
/// incarnation, and returns `builder` set to run as that incarnation with a [`Recorder`]
/// attached. The one call that gives a server its catalog:
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
