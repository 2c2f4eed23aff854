//! Peer catalog for `cluster`: what a node knows about its peers, persisted in sled so it
//! survives restarts, and the node's own incarnation, which increases durably at every start.
//!
//! * [`PeerCatalog`] — the records, in one sled directory: [`get`](PeerCatalog::get),
//!   [`list`](PeerCatalog::list) (by pid), [`upsert`](PeerCatalog::upsert),
//!   [`update`](PeerCatalog::update), [`remove`](PeerCatalog::remove),
//!   [`flush`](PeerCatalog::flush), [`import`](PeerCatalog::import) from a config, and
//!   [`begin_incarnation`](PeerCatalog::begin_incarnation).
//! * [`NodeCatalog`] — a node's catalog at start: opened in [`catalog_dir`], imported,
//!   with a new incarnation.
//! * [`Recorder`] — records a running server's observations (peer status, last seen,
//!   incarnations) into the catalog.
//! * [`attach`] — all of the above for a [`ServerBuilder`](cluster_core::ServerBuilder),
//!   in one call.
//!
//! ```
//! use cluster_catalog::{PeerCatalog, PeerStatus};
//! use cluster_core::Config;
//!
//! let dir = tempfile::tempdir()?;
//! let config = Config::local(3, 7000)?;
//! {
//!     let catalog = PeerCatalog::open(dir.path())?;
//!     let report = catalog.import(&config)?;
//!     assert_eq!(report.added, [1, 2, 3]);
//!     assert_eq!(catalog.begin_incarnation()?, 1);
//!     let mut two = catalog.get(2)?.expect("imported");
//!     two.metadata.insert("zone".into(), "eu-1".into());
//!     catalog.upsert(&two)?;
//!     catalog.flush()?;
//! }
//! let catalog = PeerCatalog::open(dir.path())?;  // as after a restart
//! assert_eq!(catalog.begin_incarnation()?, 2);
//! let two = catalog.get(2)?.expect("kept");
//! assert_eq!((two.status, two.metadata["zone"].as_str()), (PeerStatus::Unknown, "eu-1"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Record format
//!
//! The catalog is a sled database (one directory) with two trees:
//!
//! * `cluster.peers`: one record per peer. Key: the pid as 4 big-endian bytes with the sign
//!   bit flipped (so keys sort like pids). Value: a format version byte (currently
//!   [`FORMAT_VERSION`] = 1) followed by the record in MessagePack (rmp-serde, fields by
//!   name): `pid`, `address`, `incarnation` (newest seen, or nil), `status` (`"up"`,
//!   `"down"` or `"unknown"`), `last_seen_ms` (milliseconds since the Unix epoch, or nil),
//!   `metadata` (a string-to-string map).
//! * `cluster.node`: `format` → the version byte (marks the database as a catalog), and
//!   `node` → version byte + MessagePack `{owner, incarnation}`: the pid that owns this
//!   catalog and its current incarnation.
//!
//! Beside sled's files (`conf`, `db`, `blobs/`, `snap.*`) the directory holds `CATALOG`, a
//! two-line text stamp (`cluster-catalog 1` / `incarnation <n>`), replaced atomically after
//! each new incarnation is flushed: it marks the directory as a catalog and keeps a second
//! copy of the incarnation, so that a database that sled reopens with less than was flushed
//! is refused as corrupt instead of silently rolled back (see below).
//!
//! A record or catalog of another version is refused with [`CatalogError::UnknownVersion`],
//! never misread; adding a field with a default is a compatible change within a version.
//!
//! # Reconcile rule
//!
//! [`PeerCatalog::import`] makes the records match a config, atomically: the config is
//! authoritative for **membership and addresses** — pids it lists get a record, records of
//! pids it does not list are removed, addresses are taken from it — and the catalog keeps
//! the **history fields** (incarnation, status, last seen, metadata) of every pid that stays.
//! The [`ImportReport`] says what was added, readdressed, removed and unchanged.
//!
//! # Durability: what a crash can lose
//!
//! * This node's incarnation: **nothing**. [`PeerCatalog::begin_incarnation`] flushes
//!   (fsync) before it returns, so a node never starts twice with the same incarnation, and
//!   message ids stay unique across restarts, even after `kill -9`.
//! * Records: everything written before the last completed [`PeerCatalog::flush`] survives a
//!   crash of the process (`kill -9`) or of the machine. Writes after it may be lost (sled
//!   also flushes on its own about every 500 ms), but the catalog always reopens in the state
//!   of some point in time no earlier than the last flush; a record is never half-written.
//! * With a [`Recorder`], observations are flushed every interval (1 s by default) and at
//!   stop, so a crash loses at most the last interval of status and last-seen updates.
//! * Damaged files (not a crash: bytes changed on disk): sled keeps the longest intact
//!   prefix of its log, which looks like an older, consistent state. If that state is older
//!   than the last incarnation in the `CATALOG` stamp, or empty although a catalog was
//!   written, `open` fails with [`CatalogError::Corrupt`]. Damage that only loses records
//!   written since this node's last start cannot be told from a crash, and is not detected.
//!
//! Only one process may have a catalog open (sled locks it). `open` waits up to one second
//! for a held lock before failing with [`CatalogError::Locked`], because a catalog this
//! process has just closed can stay locked for a moment (sled's background threads, or a
//! child process being spawned by another thread, which holds the file until it execs).
//!
//! # Errors
//!
//! Opening fails with a [`CatalogError`] that names the directory and says what to do, for
//! a path that is a file or a directory holding other things, a sled database that is not a
//! catalog, a corrupt database, a directory that cannot be written, a catalog held by another
//! live process (sled locks it), and a catalog owned by another node.

mod attach;
mod catalog;
mod error;
mod node;
mod record;
mod recorder;
mod stamp;

pub use attach::attach;
pub use catalog::{ImportReport, PeerCatalog, Readdressed};
pub use error::CatalogError;
pub use node::{NodeCatalog, catalog_dir};
pub use record::{FORMAT_VERSION, PeerRecord, PeerStatus, seen_between};
pub use recorder::{DEFAULT_INTERVAL, Recorder};
