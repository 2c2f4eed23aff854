//! [`NodeCatalog`]: the catalog a node opens at start.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cluster_core::{Config, Incarnation, Pid};

use crate::catalog::{ImportReport, PeerCatalog, own_record_update};
use crate::error::CatalogError;
use crate::record::PeerStatus;

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
    /// [`NodeCatalog::with_catalog_from`] with the clock as the floor
    /// ([`cluster_core::clock_incarnation`]: seconds since 2025).
    ///
    /// Why a floor from the clock: peers drop frames from an incarnation older than the
    /// newest they saw (contract C4), so a node whose catalog is lost (a container without
    /// a volume, a deleted `.cluster/`, a config copied elsewhere) would restart at 1 and
    /// be ignored until its peers restart — with a cluster key, for good. With the floor it
    /// restarts at the current time in seconds, above any incarnation it had before, unless
    /// its clock was set back past its previous start, or it restarts within the same
    /// second it last started (the catalog's own +1 covers restarts that keep the catalog).
    pub fn open(pid: Pid, config: &Config) -> Result<Self, CatalogError> {
        config.check_member(pid)?;
        let catalog = PeerCatalog::open(catalog_dir(pid, config))?;
        Self::with_catalog_from(pid, config, catalog, cluster_core::clock_incarnation())
    }

    /// Makes `catalog` node `pid`'s: checks that no other node owns it, imports `config`
    /// (see [`PeerCatalog::import`]), begins a new incarnation (durably, see
    /// [`PeerCatalog::begin_incarnation`]) and marks this node's own record up.
    /// Incarnations count 1, 2, 3…, with no floor from the clock (for simulations, which
    /// replay exactly); [`NodeCatalog::open`] uses one.
    pub fn with_catalog(
        pid: Pid,
        config: &Config,
        catalog: PeerCatalog,
    ) -> Result<Self, CatalogError> {
        Self::with_catalog_from(pid, config, catalog, 0)
    }

    /// [`NodeCatalog::with_catalog`], with a new incarnation of at least `floor` (see
    /// [`PeerCatalog::begin_incarnation_from`]).
    pub fn with_catalog_from(
        pid: Pid,
        config: &Config,
        catalog: PeerCatalog,
        floor: Incarnation,
    ) -> Result<Self, CatalogError> {
        config.check_member(pid)?;
        catalog.claim(pid)?;
        let report = catalog.import(config)?;
        if !report.is_unchanged() {
            tracing::info!(pid, path = %catalog.path().display(), "peer catalog: {report}");
        }
        let incarnation = catalog.begin_incarnation_from(floor)?;
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
}
