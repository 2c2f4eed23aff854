//! Catalog tests: records, import, persistence, bad directories, and the server integration
//! on the in-memory transport. The tests that need a second process are in `tests/process`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults;
mod records;
mod server;

use std::path::Path;

use cluster_catalog::{CatalogError, PeerCatalog};

/// Opens `path`, expecting an error, and checks that its message names the path.
fn open_err(path: &Path) -> CatalogError {
    match PeerCatalog::open(path) {
        Ok(c) => panic!("opening {} succeeded: {c:?}", path.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "the error does not name the path: {msg}"
            );
            e
        }
    }
}
