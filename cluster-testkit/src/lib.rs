//! Test kit for `cluster`: simulated clusters, scenario tests of the delivery contract, and
//! the conformance suite every transport runs.
//!
//! * [`SimCluster`] — every node of a config running a real [`Server`](cluster_core::Server)
//!   in one process over an in-memory network, with the fault operations (crash, restart,
//!   partition, cut, heal, loss), a seed (printed on failure, read back from
//!   [`CLUSTER_SEED`](SEED_VAR)) and a [`History`] of every send, routing decision,
//!   delivery, drop, fault and peer event (`Up`, `Down`, `Restarted` as each node told
//!   them), exportable as JSON lines.
//! * [`Scenario`]s of [`Op`]s and their proptest strategies ([`scenario`]), which shrink to
//!   the smallest failing scenario.
//! * The [`oracle`]: from a history, decides for every message whether it must be
//!   delivered, must be dropped, or may go either way, and checks C1–C9 of the contract,
//!   one function per invariant, and that the peer events the nodes told match the faults
//!   injected.
//! * [`conformance`]: one entry point that runs all of it against a transport, plugged in
//!   through [`ClusterUnderTest`]; [`mutants`] are deliberately broken transports that
//!   prove every check can fail.
//! * [`faults`]: run your own node logic (an async fn given each node's server and its
//!   [`NodeContext`]: pid, incarnation, restarted or not) under a random fault schedule;
//!   check your invariants between faults and, with [`NodeContext::fail`], at the moment a
//!   node sees one broken; panics in node logic fail the run too; failures shrink to the
//!   smallest fault schedule (see `examples/leader_election.rs`).
//! * [`diagram`]: a run drawn as a space-time diagram (one column per node, arrows for
//!   messages, marks for drops, crashes and cuts), as text and as an HTML page; failure
//!   reports show it.
//! * [`WithCatalogs`] (feature `catalog`, default): simulated nodes whose incarnation comes
//!   from a real sled peer catalog that outlives their crashes.
//! * [`net`]: fixtures for tests on real sockets and processes (free loopback ports, quick
//!   options, waiting on a condition, a child process killed on drop, a TCP relay with
//!   delay, jitter, bandwidth and silent cuts), shared by every
//!   crate's tests.
//! * `zmq` (feature `zmq`, off by default): the ZeroMQ transport, both backends, as a
//!   [`ClusterUnderTest`] on loopback.
//!
//! # Replaying a run
//!
//! Every run has a seed, printed when it fails; `CLUSTER_SEED=<seed>` (decimal or `0x` hex)
//! runs it again. A simulated run on a fresh current-thread runtime with tokio's clock paused
//! ([`faults::runtime`], `#[tokio::test(flavor = "current_thread", start_paused = true)]`;
//! the conformance suite and [`faults::explore`] make their own) replays exactly: the same
//! history, byte for byte — every record on every node in the same order, the same
//! simulated times, the same counters — in the same process or another. What makes it so:
//! one thread and a paused clock (time moves only when every task waits), all randomness
//! from the seed, no hash-map order and no wall clock in anything that is recorded, and one
//! order of work per server and per wake-up where tokio would choose at random (see
//! [`SimCluster`]). Your node logic keeps it if it draws its randomness from
//! [`NodeContext::rng`] and writes `biased;` in its own `select!`s. Runs on real sockets
//! (`zmq`) do not replay exactly: only the scenario (the ops, drawn from the seed) does.
//!
//! # Case counts
//!
//! `CLUSTER_CASES=<n>` sets how many random cases a run tries, wherever cases are counted:
//! the random scenarios of every conformance suite built with [`conformance::SuiteOptions::new`]
//! (in memory: 256 by default; with catalogs on disk: 24, at most 200; on each ZeroMQ backend,
//! `cargo test -p cluster-testkit --features zmq --test zmq`: 16), and the seeds the
//! leader-election example tries (20). Read it with [`cases_or`] for counts of your own.
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
pub mod diagram;
pub mod faults;
mod history;
pub mod mutants;
mod names;
pub mod net;
mod node;
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
pub use history::{
    Event, History, MsgRef, PeerChange, ReasonCounts, Record, from_json_lines, to_json_lines,
};
pub use node::{NodeContext, NodeFailure, NodeLogic};
pub use scenario::{FORGED_MSG_ID, HostileBytes, Op, Scenario, op, run_scenario, scenario};
pub use seed::{
    CASES_VAR, SEED_VAR, cases_or, parse_seed, replay_hint, seed_from_env, seed_or_random,
};
pub use sim::{SimBuilder, SimCluster, SimError};
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
