//! The foundation's scenarios on the in-memory transport: the Go package's own tests, and the
//! contract C1–C7 (routing, at-most-once, FIFO, drop on unreachable, isolation, bounded
//! memory, exact accounting).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod contract;
mod go_scenarios;
mod sim;
