//! [`PeerCatalog`]: the records in sled, the import from a config, and this node's incarnation.

use std::collections::BTreeMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use cluster_core::{Config, Incarnation, Pid};

use crate::error::{CatalogError, from_io, from_sled};
use crate::record::{
    self, DecodeError, FORMAT_VERSION, NodeRecord, PeerRecord, decode_node, decode_peer,
    encode_node, encode_peer, peer_key, pid_of_key,
};
use crate::stamp::{self, Stamp};

const PEERS_TREE: &str = "cluster.peers";
const NODE_TREE: &str = "cluster.node";
/// Marks a sled database as a peer catalog; its value is the format version.
const FORMAT_KEY: &str = "format";
const NODE_KEY: &str = "node";
/// In the node tree: the membership records this node last knew.
const MEMBERSHIP_KEY: &str = "membership";
const TEMPORARY: &str = "<temporary>";

/// The peer catalog of one node, persisted in a sled database (one directory).
///
/// Cheap to share between threads (`&self` methods, `Send + Sync`); only one process may
/// have a given directory open at a time. Writes are durable once [`PeerCatalog::flush`]
/// returns (sled also flushes on its own about every 500 ms, and when the catalog is
/// dropped). See the crate docs for the record format and the durability promise.
pub struct PeerCatalog {
    path: PathBuf,
    /// Whether the directory has a stamp (every catalog but a temporary one).
    stamped: bool,
    // Dropped in this order: the trees, then the database (which closes the files).
    peers: sled::Tree,
    node: sled::Tree,
    db: sled::Db,
}

impl fmt::Debug for PeerCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerCatalog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What [`PeerCatalog::import`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Pids in the config without a record before: new records, no history.
    pub added: Vec<Pid>,
    /// Records whose address the config changed (history kept).
    pub readdressed: Vec<Readdressed>,
    /// Records of pids no longer in the config, as they were before removal.
    pub removed: Vec<PeerRecord>,
    /// Pids whose record already matched the config.
    pub unchanged: Vec<Pid>,
}

/// A peer whose address changed in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readdressed {
    /// The peer.
    pub pid: Pid,
    /// The address in the catalog before.
    pub old: String,
    /// The address in the config, now in the catalog.
    pub new: String,
}

impl ImportReport {
    /// Whether the import changed nothing.
    pub fn is_unchanged(&self) -> bool {
        self.added.is_empty() && self.readdressed.is_empty() && self.removed.is_empty()
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} added, {} readdressed, {} removed, {} unchanged",
            self.added.len(),
            self.readdressed.len(),
            self.removed.len(),
            self.unchanged.len()
        )?;
        for r in &self.readdressed {
            write!(f, "; pid {}: {} -> {}", r.pid, r.old, r.new)?;
        }
        for r in &self.removed {
            write!(f, "; pid {} removed (was {})", r.pid, r.address)?;
        }
        Ok(())
    }
}

impl PeerCatalog {
    /// Opens the catalog in directory `path`, creating it if the directory does not exist or
    /// is empty.
    ///
    /// Fails with a clear [`CatalogError`] if the path is a file, a directory holding
    /// something else, a sled database that is not a catalog, a corrupt catalog (including
    /// one that sled would silently roll back to an older state), a directory this process
    /// cannot write, or a catalog another process has open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CatalogError> {
        Self::open_dir(path.as_ref(), true)
    }

    /// Opens an existing catalog, failing with [`CatalogError::Missing`] rather than creating
    /// one (for tools that only read, such as `cluster catalog show`).
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self, CatalogError> {
        Self::open_dir(path.as_ref(), false)
    }

    /// A catalog that lives only as long as this value (in `/dev/shm` on Linux), for tests.
    pub fn temporary() -> Result<Self, CatalogError> {
        let db = open_sled(Path::new(TEMPORARY), sled::Config::new().temporary(true))?;
        Self::init(PathBuf::from(TEMPORARY), db, None, true)
    }

    fn open_dir(path: &Path, create: bool) -> Result<Self, CatalogError> {
        check_directory(path, create)?;
        let stamp = stamp::read(path)?;
        let db = match open_sled_waiting(path) {
            Ok(db) => db,
            // The stamp says a catalog was here, so whatever sled refuses is damage.
            Err(CatalogError::NotACatalog { reason, .. }) if stamp.is_some() => {
                return Err(CatalogError::Corrupt {
                    path: path.to_path_buf(),
                    detail: reason,
                });
            }
            Err(e) => return Err(e),
        };
        Self::init(path.to_path_buf(), db, stamp, create)
    }

    fn init(
        path: PathBuf,
        db: sled::Db,
        stamp: Option<Stamp>,
        create: bool,
    ) -> Result<Self, CatalogError> {
        let is_fresh = db.tree_names().len() <= 1 && db.is_empty();
        let peers = db.open_tree(PEERS_TREE).map_err(|e| from_sled(&path, e))?;
        let node = db.open_tree(NODE_TREE).map_err(|e| from_sled(&path, e))?;
        let stamped = path.as_os_str() != TEMPORARY;
        let catalog = Self {
            path,
            stamped,
            peers,
            node,
            db,
        };
        let format = catalog
            .node
            .get(FORMAT_KEY)
            .map_err(|e| catalog.sled_err(e))?;
        match (format, stamp) {
            (Some(v), _) if v.as_ref() != [FORMAT_VERSION] => {
                return Err(CatalogError::UnknownVersion {
                    path: catalog.path.clone(),
                    what: "the catalog".into(),
                    version: v.first().copied().unwrap_or(0),
                    supported: FORMAT_VERSION,
                });
            }
            (Some(_), Some(stamp)) => {
                let incarnation = catalog.incarnation()?;
                if incarnation < stamp.incarnation {
                    let show =
                        |i: Option<Incarnation>| i.map_or_else(|| "none".into(), |i| i.to_string());
                    return Err(catalog.rolled_back(format!(
                        "sled recovered incarnation {} but incarnation {} had been flushed",
                        show(incarnation),
                        show(stamp.incarnation),
                    )));
                }
            }
            // Created, but stopped before the stamp was written.
            (Some(_), None) => catalog.write_stamp()?,
            (None, Some(_)) => {
                return Err(catalog.rolled_back(
                    "the database is empty although a catalog was written here".into(),
                ));
            }
            (None, None) if is_fresh && create => {
                catalog
                    .node
                    .insert(FORMAT_KEY, &[FORMAT_VERSION])
                    .map_err(|e| catalog.sled_err(e))?;
                catalog.flush()?;
                catalog.write_stamp()?;
            }
            (None, None) if is_fresh => {
                return Err(CatalogError::Missing {
                    path: catalog.path.clone(),
                    reason: "an empty sled database".into(),
                });
            }
            (None, None) => {
                return Err(CatalogError::NotACatalog {
                    path: catalog.path.clone(),
                    reason: "a sled database written by something else".into(),
                });
            }
        }
        Ok(catalog)
    }

    fn rolled_back(&self, detail: String) -> CatalogError {
        CatalogError::Corrupt {
            path: self.path.clone(),
            detail: format!("data flushed earlier is lost ({detail})"),
        }
    }

    /// Records the flushed incarnation in the stamp (after sled has flushed it).
    fn write_stamp(&self) -> Result<(), CatalogError> {
        if !self.stamped {
            return Ok(());
        }
        let incarnation = self.incarnation()?;
        stamp::write(&self.path, Stamp { incarnation })
    }

    /// The catalog directory (`<temporary>` for [`PeerCatalog::temporary`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sled_err(&self, e: sled::Error) -> CatalogError {
        from_sled(&self.path, e)
    }

    fn decode_err(&self, what: String, e: DecodeError) -> CatalogError {
        match e {
            DecodeError::UnknownVersion(version) => CatalogError::UnknownVersion {
                path: self.path.clone(),
                what,
                version,
                supported: FORMAT_VERSION,
            },
            DecodeError::Bad(detail) => CatalogError::BadRecord {
                path: self.path.clone(),
                what,
                detail,
            },
        }
    }

    fn decode(&self, pid: Pid, bytes: &[u8]) -> Result<PeerRecord, CatalogError> {
        decode_peer(bytes).map_err(|e| self.decode_err(format!("the record of pid {pid}"), e))
    }

    /// The record of `pid`, if any.
    pub fn get(&self, pid: Pid) -> Result<Option<PeerRecord>, CatalogError> {
        match self
            .peers
            .get(peer_key(pid))
            .map_err(|e| self.sled_err(e))?
        {
            Some(bytes) => self.decode(pid, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Every record, ascending by pid.
    pub fn list(&self) -> Result<Vec<PeerRecord>, CatalogError> {
        let mut out = Vec::new();
        for item in self.peers.iter() {
            let (key, value) = item.map_err(|e| self.sled_err(e))?;
            let Some(pid) = pid_of_key(&key) else {
                return Err(CatalogError::BadRecord {
                    path: self.path.clone(),
                    what: format!("the record with key {:?}", key.as_ref()),
                    detail: "the key is not a pid".into(),
                });
            };
            out.push(self.decode(pid, &value)?);
        }
        Ok(out)
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Inserts or replaces the record of `record.pid`; returns the previous one.
    pub fn upsert(&self, record: &PeerRecord) -> Result<Option<PeerRecord>, CatalogError> {
        let old = self
            .peers
            .insert(peer_key(record.pid), encode_peer(record))
            .map_err(|e| self.sled_err(e))?;
        old.map(|b| self.decode(record.pid, &b)).transpose()
    }

    /// Atomically replaces the record of `pid` by `f(current)` (`None` removes it), retrying
    /// `f` if another writer got in between. Returns the new record. A `pid` that `f` sets
    /// is ignored: the record stays under `pid`.
    pub fn update(
        &self,
        pid: Pid,
        mut f: impl FnMut(Option<PeerRecord>) -> Option<PeerRecord>,
    ) -> Result<Option<PeerRecord>, CatalogError> {
        let key = peer_key(pid);
        loop {
            let old_bytes = self.peers.get(key).map_err(|e| self.sled_err(e))?;
            let old = old_bytes
                .as_ref()
                .map(|b| self.decode(pid, b))
                .transpose()?;
            let new = f(old).map(|mut r| {
                r.pid = pid;
                r
            });
            let new_bytes = new.as_ref().map(encode_peer);
            match self
                .peers
                .compare_and_swap(key, old_bytes, new_bytes)
                .map_err(|e| self.sled_err(e))?
            {
                Ok(()) => return Ok(new),
                Err(_) => continue,
            }
        }
    }

    /// Removes the record of `pid`; returns it.
    pub fn remove(&self, pid: Pid) -> Result<Option<PeerRecord>, CatalogError> {
        let old = self
            .peers
            .remove(peer_key(pid))
            .map_err(|e| self.sled_err(e))?;
        old.map(|b| self.decode(pid, &b)).transpose()
    }

    /// Writes everything to disk and waits for it (fsync). Returns the bytes flushed.
    pub fn flush(&self) -> Result<usize, CatalogError> {
        self.db.flush().map_err(|e| self.sled_err(e))
    }

    /// Reconciles the records with `config`, atomically, and reports what changed.
    ///
    /// The config is authoritative for membership and addresses: a pid without a record gets
    /// one (status unknown, no history); a record whose address differs takes the config's
    /// address and keeps its history (incarnation, status, last seen, metadata); a record of
    /// a pid the config no longer lists is removed. Not flushed: call
    /// [`PeerCatalog::flush`] to make it durable.
    pub fn import(&self, config: &Config) -> Result<ImportReport, CatalogError> {
        let mut existing: BTreeMap<Pid, PeerRecord> =
            self.list()?.into_iter().map(|r| (r.pid, r)).collect();
        let mut report = ImportReport::default();
        let mut batch = sled::Batch::default();
        for peer in config.peers() {
            match existing.remove(&peer.pid) {
                None => {
                    report.added.push(peer.pid);
                    batch.insert(
                        &peer_key(peer.pid),
                        encode_peer(&PeerRecord::new(peer.pid, peer.address.clone())),
                    );
                }
                Some(mut r) if r.address != peer.address => {
                    report.readdressed.push(Readdressed {
                        pid: peer.pid,
                        old: std::mem::replace(&mut r.address, peer.address.clone()),
                        new: peer.address.clone(),
                    });
                    batch.insert(&peer_key(peer.pid), encode_peer(&r));
                }
                Some(_) => report.unchanged.push(peer.pid),
            }
        }
        for (pid, r) in existing {
            batch.remove(&peer_key(pid));
            report.removed.push(r);
        }
        self.peers
            .apply_batch(batch)
            .map_err(|e| self.sled_err(e))?;
        Ok(report)
    }

    fn node_record(&self) -> Result<(Option<sled::IVec>, NodeRecord), CatalogError> {
        let bytes = self.node.get(NODE_KEY).map_err(|e| self.sled_err(e))?;
        let record = match &bytes {
            Some(b) => decode_node(b).map_err(|e| self.decode_err("the node record".into(), e))?,
            None => NodeRecord::default(),
        };
        Ok((bytes, record))
    }

    fn update_node(
        &self,
        mut f: impl FnMut(NodeRecord) -> Result<NodeRecord, CatalogError>,
    ) -> Result<NodeRecord, CatalogError> {
        loop {
            let (old_bytes, old) = self.node_record()?;
            let new = f(old)?;
            match self
                .node
                .compare_and_swap(NODE_KEY, old_bytes, Some(encode_node(&new)))
                .map_err(|e| self.sled_err(e))?
            {
                Ok(()) => return Ok(new),
                Err(_) => continue,
            }
        }
    }

    /// The membership records this node last knew (membership at run time, see
    /// `cluster_core::membership`): empty if it never changed, or was never recorded. A
    /// restarted node starts from them (`ServerBuilder::members`), not only from its config.
    pub fn membership(&self) -> Result<Vec<cluster_core::Member>, CatalogError> {
        match self
            .node
            .get(MEMBERSHIP_KEY)
            .map_err(|e| self.sled_err(e))?
        {
            None => Ok(Vec::new()),
            Some(bytes) => crate::record::decode_members(&bytes)
                .map_err(|e| self.decode_err("the membership records".into(), e)),
        }
    }

    /// Stores the membership records (not flushed: see [`PeerCatalog::flush`]).
    pub fn set_membership(&self, records: &[cluster_core::Member]) -> Result<(), CatalogError> {
        self.node
            .insert(MEMBERSHIP_KEY, crate::record::encode_members(records))
            .map_err(|e| self.sled_err(e))?;
        Ok(())
    }

    /// This node's current incarnation: `None` before the first
    /// [`PeerCatalog::begin_incarnation`].
    pub fn incarnation(&self) -> Result<Option<Incarnation>, CatalogError> {
        Ok(self.node_record()?.1.incarnation)
    }

    /// Starts a new incarnation of this node: increments the stored incarnation (the first
    /// is 1), flushes it to disk, and returns it. Call it once per start, before the node
    /// sends anything, so no two starts share an incarnation even if the process is killed.
    pub fn begin_incarnation(&self) -> Result<Incarnation, CatalogError> {
        self.begin_incarnation_from(0)
    }

    /// [`PeerCatalog::begin_incarnation`], but never below `floor`: the new incarnation
    /// is the larger of the stored one plus one and `floor`. With a floor that grows with
    /// time ([`cluster_core::clock_incarnation`], as [`NodeCatalog::open`](crate::NodeCatalog::open)
    /// uses), a node whose catalog was lost still restarts newer than any incarnation its
    /// peers saw, as long as its clock is not set back.
    pub fn begin_incarnation_from(&self, floor: Incarnation) -> Result<Incarnation, CatalogError> {
        let new = self.update_node(|mut r| {
            let next = match r.incarnation {
                None => 1,
                Some(i) => i
                    .checked_add(1)
                    .ok_or_else(|| CatalogError::IncarnationsExhausted {
                        path: self.path.clone(),
                    })?,
            };
            r.incarnation = Some(next.max(floor));
            Ok(r)
        })?;
        self.flush()?;
        self.write_stamp()?;
        Ok(new.incarnation.unwrap_or(1))
    }

    /// The pid of the node that owns this catalog, if one has claimed it.
    pub fn owner(&self) -> Result<Option<Pid>, CatalogError> {
        Ok(self.node_record()?.1.owner)
    }

    /// Records `pid` as the owner, or fails with [`CatalogError::WrongOwner`] if another
    /// node owns the catalog.
    pub fn claim(&self, pid: Pid) -> Result<(), CatalogError> {
        self.update_node(|mut r| match r.owner {
            Some(owner) if owner != pid => Err(CatalogError::WrongOwner {
                path: self.path.clone(),
                owner,
                pid,
            }),
            _ => {
                r.owner = Some(pid);
                Ok(r)
            }
        })?;
        Ok(())
    }
}

/// How long `open` waits for a lock that this process itself may still hold for a moment.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens the sled database in `path`, waiting up to [`LOCK_GRACE`] for its lock.
///
/// A just-dropped catalog can stay locked for a moment: sled's background threads release
/// the file shortly after the last handle drops, and a child process forked by another
/// thread meanwhile inherits the locked file until it execs. A node restarted in-process
/// would then fail for no reason, so a held lock is only reported once it outlasts the grace.
fn open_sled_waiting(path: &Path) -> Result<sled::Db, CatalogError> {
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match open_sled(path, sled::Config::new().path(path)) {
            Err(CatalogError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn open_sled(path: &Path, config: sled::Config) -> Result<sled::Db, CatalogError> {
    // sled 0.34 panics instead of failing on some kinds of damaged files.
    match std::panic::catch_unwind(AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(from_sled(path, e)),
        Err(panic) => {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "sled panicked while reading it".into());
            Err(CatalogError::Corrupt {
                path: path.to_path_buf(),
                detail,
            })
        }
    }
}

/// Checks what is at `path` before sled sees it: sled would happily create its files in any
/// directory, or fail obscurely on a file.
fn check_directory(path: &Path, create: bool) -> Result<(), CatalogError> {
    let missing = |reason: &str| CatalogError::Missing {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if create {
                Ok(())
            } else {
                Err(missing("the directory does not exist"))
            };
        }
        Err(e) => return Err(from_io(path.to_path_buf(), e)),
    };
    if !meta.is_dir() {
        return Err(CatalogError::NotACatalog {
            path: path.to_path_buf(),
            reason: "it is a file, not a directory".into(),
        });
    }
    let entries = std::fs::read_dir(path).map_err(|e| from_io(path.to_path_buf(), e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| from_io(path.to_path_buf(), e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    if names.is_empty() {
        return if create {
            Ok(())
        } else {
            Err(missing("the directory is empty"))
        };
    }
    // A directory with only some of sled's files is a database whose creation was
    // interrupted, which sled completes.
    let is_sled = names.iter().all(|n| stamp::is_catalog_file(n))
        || (names.iter().any(|n| n == "db") && names.iter().any(|n| n == "conf"));
    if !is_sled {
        names.retain(|n| !stamp::is_catalog_file(n));
        names.sort();
        names.truncate(3);
        return Err(CatalogError::NotACatalog {
            path: path.to_path_buf(),
            reason: format!(
                "the directory holds other files ({}) and no sled database",
                names.join(", ")
            ),
        });
    }
    Ok(())
}

/// The record a node keeps of itself, updated at start and stop.
pub(crate) fn own_record_update(
    record: Option<PeerRecord>,
    incarnation: Incarnation,
    status: record::PeerStatus,
    now: std::time::SystemTime,
) -> Option<PeerRecord> {
    let mut r = record?;
    r.incarnation = Some(incarnation);
    r.status = status;
    r.last_seen = Some(now);
    Some(r)
}
