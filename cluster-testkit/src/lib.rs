//! Test kit for `cluster` (work in progress: see issue 5).
//!
//! This crate will hold simulated clusters on `cluster-mem`, scenario operations (send, crash,
//! restart, partition, cut, heal, loss), proptest strategies, the contract oracle, and the
//! conformance suite run against every transport.
