//! ZeroMQ transport for `cluster` (work in progress: see issue 3).
//!
//! This crate will hold a [`cluster_core::Transport`] over real sockets with two backends
//! picked by cargo feature: `libzmq` (the `zmq` crate, bundled libzmq; the default) and
//! `zeromq` (the pure-Rust crate). It keeps the contract of `cluster-core` on real networks:
//! drop on unreachable, bounded queues, reconnection, heartbeats for silent partitions.
