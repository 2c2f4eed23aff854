//! The `zeromq` backend.
