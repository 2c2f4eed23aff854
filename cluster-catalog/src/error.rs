//! Everything that can go wrong with a catalog, each naming the path and what to do.

use std::path::PathBuf;

use cluster_core::{ConfigError, Pid, ServerError};

/// A catalog that cannot be opened, read or written.
///
/// Every variant names the catalog directory; the message says what is wrong and what to do.
/// `{:?}` prints the message too, so that `main() -> Result<(), Box<dyn Error>>` shows it.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// Another process (or another handle in this process) has the catalog open, and kept
    /// it for the whole second that `open` waits for a lock to go.
    #[error(
        "peer catalog {path}: in use: another process (or another handle in this process) has \
         it open and sled holds a lock on its db file; stop the node that uses it, or give each \
         node its own catalog_dir"
    )]
    Locked {
        /// The catalog directory.
        path: PathBuf,
    },
    /// The directory (or a file in it) cannot be written.
    #[error(
        "peer catalog {path}: cannot write: {source}; make the directory writable by this user, \
         or set catalog_dir to a writable directory"
    )]
    ReadOnly {
        /// The catalog directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The path exists but is not a catalog: a file, a directory with other content, or a
    /// sled database written by something else.
    #[error(
        "peer catalog {path}: not a peer catalog: {reason}; set catalog_dir to a new or empty \
         directory"
    )]
    NotACatalog {
        /// The path given.
        path: PathBuf,
        /// What was found there.
        reason: String,
    },
    /// The path holds no catalog (when opening one that must exist, e.g. to show it).
    #[error("peer catalog {path}: no catalog there ({reason}); check the path")]
    Missing {
        /// The path given.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// sled could not read its files back: the database is damaged.
    #[error(
        "peer catalog {path}: corrupt database: {detail}; move the directory aside (the node \
         then starts with an empty catalog) and keep it for diagnosis"
    )]
    Corrupt {
        /// The catalog directory.
        path: PathBuf,
        /// What sled reported.
        detail: String,
    },
    /// A record was written in a format version this build does not know.
    #[error(
        "peer catalog {path}: {what} has format version {version}, this build reads version \
         {supported}; use the cluster version that wrote it, or move the directory aside"
    )]
    UnknownVersion {
        /// The catalog directory.
        path: PathBuf,
        /// Which record.
        what: String,
        /// The version found.
        version: u8,
        /// The version this build reads and writes.
        supported: u8,
    },
    /// A record of a known version that does not decode.
    #[error(
        "peer catalog {path}: {what} is unreadable: {detail}; remove that record (or move the \
         directory aside)"
    )]
    BadRecord {
        /// The catalog directory.
        path: PathBuf,
        /// Which record.
        what: String,
        /// The decoder's message.
        detail: String,
    },
    /// The catalog belongs to another node.
    #[error(
        "peer catalog {path}: belongs to node {owner}, not to node {pid}; each node needs its \
         own catalog_dir"
    )]
    WrongOwner {
        /// The catalog directory.
        path: PathBuf,
        /// The pid recorded in the catalog.
        owner: Pid,
        /// The pid that tried to open it.
        pid: Pid,
    },
    /// This node's incarnation counter reached its maximum.
    #[error(
        "peer catalog {path}: incarnation counter exhausted; the node cannot start with a \
         newer incarnation"
    )]
    IncarnationsExhausted {
        /// The catalog directory.
        path: PathBuf,
    },
    /// The config does not list the node.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Any other I/O or storage failure.
    #[error("peer catalog {path}: {detail}")]
    Storage {
        /// The catalog directory.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

impl std::fmt::Debug for CatalogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every message already names its cause (the sled or I/O error, the config problem).
        std::fmt::Display::fmt(self, f)
    }
}

impl From<CatalogError> for ServerError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Config(c) => ServerError::Config(c),
            other => ServerError::Catalog(other.to_string()),
        }
    }
}

/// Maps a sled error on the catalog at `path` to the variant that tells the user what to do.
pub(crate) fn from_sled(path: &std::path::Path, e: sled::Error) -> CatalogError {
    let path = path.to_path_buf();
    match e {
        sled::Error::Io(io) => from_io(path, io),
        sled::Error::Corruption { at, bt: _ } => CatalogError::Corrupt {
            path,
            detail: match at {
                Some(at) => format!("sled found damaged data at {at:?}"),
                None => "sled found damaged data".into(),
            },
        },
        sled::Error::Unsupported(what) => CatalogError::NotACatalog {
            path,
            reason: format!("sled refused it: {what}"),
        },
        other => CatalogError::Storage {
            path,
            detail: other.to_string(),
        },
    }
}

pub(crate) fn from_io(path: PathBuf, io: std::io::Error) -> CatalogError {
    use std::io::ErrorKind;
    // sled 0.34 reports a held lock as an `Other` error with this text (config.rs, `try_lock`).
    if io.to_string().contains("could not acquire lock") {
        return CatalogError::Locked { path };
    }
    match io.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            CatalogError::ReadOnly { path, source: io }
        }
        ErrorKind::NotADirectory => CatalogError::NotACatalog {
            path,
            reason: format!("a component of the path is not a directory ({io})"),
        },
        ErrorKind::UnexpectedEof | ErrorKind::InvalidData => CatalogError::Corrupt {
            path,
            detail: io.to_string(),
        },
        _ => CatalogError::Storage {
            path,
            detail: io.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_the_message() {
        let e = CatalogError::Locked {
            path: PathBuf::from("/data/catalog-3"),
        };
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        let shown = format!("{boxed:?}");
        assert_eq!(shown, boxed.to_string());
        assert!(
            shown.starts_with("peer catalog /data/catalog-3: in use"),
            "{shown}"
        );
    }
}
