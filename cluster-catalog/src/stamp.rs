//! The `CATALOG` file beside sled's files: proof that the directory holds a catalog, and a
//! second durable copy of this node's incarnation.
//!
//! sled recovers a damaged log by keeping its longest intact prefix, which looks exactly like
//! an orderly state from the past: a damaged catalog would reopen empty, or with an older
//! incarnation, without any error. The stamp, written after sled has flushed, lets `open`
//! tell such a rollback from a fresh directory and refuse it.

use std::io::Write;
use std::path::Path;

use cluster_core::Incarnation;

use crate::error::{CatalogError, from_io};
use crate::record::FORMAT_VERSION;

/// The stamp's file name inside the catalog directory.
pub(crate) const STAMP_FILE: &str = "CATALOG";
const TEMP_FILE: &str = "CATALOG.tmp";
const MAGIC: &str = "cluster-catalog";

/// What the stamp says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// The newest incarnation flushed by sled when the stamp was written.
    pub(crate) incarnation: Option<Incarnation>,
}

/// Reads the stamp of catalog directory `dir`; `None` if there is none.
pub(crate) fn read(dir: &Path) -> Result<Option<Stamp>, CatalogError> {
    let file = dir.join(STAMP_FILE);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(corrupt(dir, "is not text"));
        }
        Err(e) => return Err(from_io(dir.to_path_buf(), e)),
    };
    let mut lines = text.lines();
    match lines
        .next()
        .and_then(|l| l.strip_prefix(MAGIC))
        .map(str::trim)
    {
        Some(v) if v == FORMAT_VERSION.to_string() => {}
        Some(v) => {
            return match v.parse::<u8>() {
                Ok(version) => Err(CatalogError::UnknownVersion {
                    path: dir.to_path_buf(),
                    what: format!("the {STAMP_FILE} file"),
                    version,
                    supported: FORMAT_VERSION,
                }),
                Err(_) => Err(corrupt(dir, "has a malformed first line")),
            };
        }
        None => return Err(corrupt(dir, "does not start with \"cluster-catalog\"")),
    }
    let incarnation = match lines.next().and_then(|l| l.strip_prefix("incarnation ")) {
        Some("-") => None,
        Some(n) => Some(
            n.trim()
                .parse()
                .map_err(|_| corrupt(dir, "has a malformed incarnation"))?,
        ),
        None => return Err(corrupt(dir, "has no incarnation line")),
    };
    Ok(Some(Stamp { incarnation }))
}

/// Replaces the stamp of `dir` atomically and durably (write, fsync, rename, fsync the
/// directory).
pub(crate) fn write(dir: &Path, stamp: Stamp) -> Result<(), CatalogError> {
    let io = |e| from_io(dir.to_path_buf(), e);
    let incarnation = stamp
        .incarnation
        .map_or_else(|| "-".to_owned(), |i| i.to_string());
    let temp = dir.join(TEMP_FILE);
    let mut f = std::fs::File::create(&temp).map_err(io)?;
    write!(f, "{MAGIC} {FORMAT_VERSION}\nincarnation {incarnation}\n").map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&temp, dir.join(STAMP_FILE)).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

fn corrupt(dir: &Path, what: &str) -> CatalogError {
    CatalogError::Corrupt {
        path: dir.to_path_buf(),
        detail: format!("the {STAMP_FILE} file {what}"),
    }
}

/// Whether `name` is one of the files a catalog directory holds.
pub(crate) fn is_catalog_file(name: &str) -> bool {
    matches!(name, "db" | "conf" | "blobs" | STAMP_FILE | TEMP_FILE) || name.starts_with("snap.")
}
