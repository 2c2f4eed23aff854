//! Test kit for `cluster`: simulated clusters, scenario tests of the delivery contract, and
//! the conformance suite every transport runs.
//!
//! * [`SimCluster`] — every node of a config running a real [`Server`](cluster_core::Server)
//!   in one process over an in-memory network, with the fault operations (crash, restart,
//!   partition, cut, heal, loss), a seed (printed on failure, read back from
//!   [`CLUSTER_SEED`](SEED_VAR)) and a [`History`] of every send, routing decision,
//!   delivery, drop and fault, exportable as JSON lines.
//! * [`Scenario`]s of [`Op`]s and their proptest strategies ([`scenario`]), which shrink to
//!   the smallest failing scenario.
//! * The [`oracle`]: from a history, decides for every message whether it must be
//!   delivered, must be dropped, or may go either way, and checks C1–C8 of the contract,
//!   one function per invariant.
//! * [`conformance`]: one entry point that runs all of it against a transport, plugged in
//!   through [`ClusterUnderTest`]; [`mutants`] are deliberately broken transports that
//!   prove every check can fail.
//! * [`faults`]: run your own node logic under a random fault schedule and check your
//!   own invariants (see `examples/leader_election.rs`).
//! * [`WithCatalogs`] (feature `catalog`, default): simulated nodes whose incarnation comes
//!   from a real sled peer catalog that outlives their crashes.
//! * [`net`]: fixtures for tests on real sockets and processes (free loopback ports, quick
//!   options, waiting on a condition, a child process killed on drop), shared by every
//!   crate's tests.
//! * `zmq` (feature `zmq`, off by default): the ZeroMQ transport, both backends, as a
//!   [`ClusterUnderTest`] on loopback.
//!
//! Replaying: every run has a seed, printed when it fails; `CLUSTER_SEED=<seed>` runs it
//! again exactly (simulations run on a current-thread runtime; scenario runs with tokio's
//! clock paused). `CLUSTER_CASES=<n>` changes how many random scenarios a suite runs.
//!
//! ```
//! use cluster_core::BROADCAST;
//! use cluster_testkit::{SimCluster, oracle};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cluster_testkit::SimError> {
//! let mut sim = SimCluster::<u32>::builder().nodes(3).seed(1).build().await?;
//! sim.send(1, BROADCAST, 10).await?;
//! sim.crash(3).await?;
//! sim.send(1, 3, 11).await?; // dropped: 3 is down
//! sim.restart(3).await?;
//! sim.send(2, 3, 12).await?;
//! let history = sim.finish().await;
//! let verdict = oracle::check(&history);
//! assert!(verdict.is_ok(), "{verdict}");
//! # Ok(()) }
//! ```

#[cfg(feature = "catalog")]
mod catalogs;
pub mod conformance;
pub mod faults;
mod history;
pub mod mutants;
pub mod net;
pub mod oracle;
mod probe;
mod scenario;
mod seed;
mod sim;
mod under_test;
#[cfg(feature = "zmq")]
pub mod zmq;

#[cfg(feature = "catalog")]
pub use catalogs::WithCatalogs;
pub use history::{Event, History, ReasonCounts, Record, from_json_lines, to_json_lines};
pub use scenario::{Op, Scenario, op, run_scenario, scenario};
pub use seed::{
    CASES_VAR, SEED_VAR, cases_or, parse_seed, replay_hint, seed_from_env, seed_or_random,
};
pub use sim::{NodeLogic, SimBuilder, SimCluster, SimError};
pub use under_test::{Capabilities, ClusterUnderTest, MemCluster, Started, Timing};

/// A seed for one node incarnation, derived from the run's seed (splitmix64).
pub(crate) fn seed_mix(seed: u64, pid: cluster_core::Pid, incarnation: u32) -> u64 {
    let mut z = seed
        ^ ((u64::from(pid as u32) << 32) | u64::from(incarnation))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
