//! Peer catalog for `cluster` (work in progress: see issue 4).
//!
//! This crate will persist, in sled, a record per peer (pid, address, incarnation, status,
//! last seen, metadata) and this node's own incarnation, which increases durably at each start.
