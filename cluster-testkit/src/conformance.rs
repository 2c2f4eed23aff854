//! The conformance suite: one entry point that checks a transport against the contract,
//! run by `cluster-mem`'s tests and (for each backend) by `cluster-zmq`'s.
//!
//! A transport plugs in through a factory that builds a [`ClusterUnderTest`] for a
//! [`Setup`] (node count, seed, options). The suite then runs:
//!
//! * **scenarios** — property-based: random [`Scenario`]s (sends, crashes, restarts,
//!   partitions, cuts, heals, loss, hostile bytes, settles — only what the backend
//!   supports), each judged by the [`oracle`] on C1–C9 and on the peer events (EV); a
//!   failure shrinks to the smallest failing scenario and prints it with the seed and the
//!   command that replays it.
//!   Simulated scenarios run with small receive queues ([`SCENARIO_PEER_QUEUE`]), so that
//!   random bursts overflow them and the oracle judges backpressure too (C6);
//! * **directed cases** — routing basics, restart, partition, backpressure and isolation
//!   with full inboxes (C6), hostile bytes (C9), and multicast (C1, C3, C7).
//!
//! ```
//! use cluster_testkit::conformance::{self, Setup, SuiteOptions};
//! use cluster_testkit::{ClusterUnderTest, MemCluster, SimError};
//!
//! fn mem(setup: &Setup) -> Result<Box<dyn ClusterUnderTest>, SimError> {
//!     Ok(Box::new(MemCluster::new(&setup.config()?, setup.seed)))
//! }
//!
//! // In a `#[test]`: panics with a readable report (seed, shrunk scenario) on failure.
//! let report = conformance::check(mem, SuiteOptions::new(16).with_seed(1));
//! assert!(report.scenarios >= 1);
//! ```
//!
//! Case counts: [`SuiteOptions::new`] takes the default, which
//! [`CLUSTER_CASES`](crate::CASES_VAR) overrides for long runs; the run's seed comes from
//! [`CLUSTER_SEED`](crate::SEED_VAR) when set, so a printed failure replays exactly.
//!
//! For ZeroMQ (real sockets on loopback), implement [`ClusterUnderTest`] with
//! [`Capabilities::real`] (crash and restart; partitions only through a relay) and a
//! "may" window of about the heartbeat timeout, and call [`check`] with fewer cases.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use cluster_core::seal::Sealer;
use cluster_core::{BROADCAST, Config, ConfigError, DropReason, Options, Pid, Recipients, wire};
use proptest::test_runner::{
    Config as ProptestConfig, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
};

use crate::history::{Event, Record, to_json_lines};
use crate::oracle::{self, Invariant, Verdict, Violation};
use crate::scenario::{Op, Scenario, run_scenario, scenario};
use crate::seed::{SEED_VAR, cases_or, seed_or_random};
use crate::sim::{SimCluster, SimError};
use crate::under_test::{Capabilities, ClusterUnderTest, Timing};

/// What a factory must build a cluster for.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Number of nodes; pids must be `1..=nodes`.
    pub nodes: usize,
    /// Seed for the backend's randomness (e.g. simulated loss).
    pub seed: u64,
    /// Options every node must run with (queue bounds matter to some cases).
    pub options: Options,
}

impl Setup {
    /// `nodes` pids `1..=nodes` on `127.0.0.1:20000+pid`, with these options. Real
    /// transports choose their own free ports instead.
    pub fn config(&self) -> Result<Config, ConfigError> {
        Config::local(self.nodes, 20_000)?.with_options(self.options.clone())
    }
}

/// Builds the cluster under test for a [`Setup`].
pub trait Factory: Fn(&Setup) -> Result<Box<dyn ClusterUnderTest>, SimError> {}
impl<F: Fn(&Setup) -> Result<Box<dyn ClusterUnderTest>, SimError>> Factory for F {}

/// How much to run.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Random scenarios to run.
    pub cases: u32,
    /// The run's seed (all scenarios derive from it).
    pub seed: u64,
    /// Node counts to draw from.
    pub nodes: RangeInclusive<usize>,
    /// Longest scenario.
    pub max_ops: usize,
    /// Shrinking steps allowed after a failure.
    pub max_shrink_iters: u32,
    /// Where the history of a failing scenario is written (default: the temp directory).
    pub history_dir: Option<PathBuf>,
    /// Judge scenarios by this clause only (default: all of them). Shows which check
    /// catches a mutant: shrinking then keeps a violation of that clause.
    pub invariant: Option<Invariant>,
}

impl SuiteOptions {
    /// `default_cases` scenarios unless [`CLUSTER_CASES`](crate::CASES_VAR) says otherwise;
    /// the seed from [`CLUSTER_SEED`](crate::SEED_VAR), else random; 2 to 5 nodes; up to
    /// 40 ops.
    pub fn new(default_cases: u32) -> Self {
        Self {
            cases: cases_or(default_cases),
            seed: seed_or_random(),
            nodes: 2..=5,
            max_ops: 40,
            max_shrink_iters: 1024,
            history_dir: None,
            invariant: None,
        }
    }

    /// The same with a fixed seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// A failed conformance check, with everything needed to understand and replay it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The backend's name.
    pub backend: String,
    /// Which part of the suite failed.
    pub case: String,
    /// The run's seed.
    pub seed: u64,
    /// The smallest failing scenario, if a scenario failed.
    pub scenario: Option<Scenario>,
    /// What was broken.
    pub violations: Vec<Violation>,
    /// Other errors (a backend that failed to start a node, …).
    pub error: Option<String>,
    /// Where the failing run's history was written (JSON lines).
    pub history_file: Option<PathBuf>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "conformance failure on `{}`, case `{}`",
            self.backend, self.case
        )?;
        if let Some(sc) = &self.scenario {
            if self.case == "scenarios" {
                writeln!(f, "smallest failing scenario (shrunk): {sc}")?;
            } else {
                writeln!(f, "failing scenario (a fixed one): {sc}")?;
            }
            writeln!(
                f,
                "replay just this scenario: conformance::check_scenario(&factory, &{})",
                sc.to_rust()
            )?;
        }
        if let Some(e) = &self.error {
            writeln!(f, "error: {e}")?;
        }
        if !self.violations.is_empty() {
            writeln!(f, "violations:")?;
            for v in self.violations.iter().take(12) {
                writeln!(f, "  {v}")?;
            }
            if self.violations.len() > 12 {
                writeln!(f, "  … and {} more", self.violations.len() - 12)?;
            }
        }
        if let Some(p) = &self.history_file {
            // The shrunk run drawn, as text and as an HTML page written beside the history.
            write!(f, "{}", crate::diagram::report(p))?;
            writeln!(f, "history (JSON lines): {}", p.display())?;
        }
        write!(
            f,
            "seed {seed}: replay exactly with {SEED_VAR}={seed} and the same test command, \
             e.g. `{SEED_VAR}={seed} cargo test -p <crate> --test conformance`",
            seed = self.seed
        )
    }
}

impl std::error::Error for Failure {}

/// What a passing run covered.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Scenarios run.
    pub scenarios: u32,
    /// Message copies judged: had to be delivered, had to be dropped, either way.
    pub judged: (usize, usize, usize),
    /// Directed cases passed.
    pub directed: Vec<&'static str>,
    /// Runs (random scenarios and directed cases) in which a node joined, and in which a
    /// member left, each change completed: what the membership checks (MB) had to judge.
    pub membership: (u32, u32),
}

/// Whether a node joined, and whether a member left, in a run (each completed in time).
fn membership_done(history: &[Record]) -> (bool, bool) {
    let done = |join: bool| {
        history.iter().any(
            |r| matches!(r.event, Event::MembershipAsked { join: j, ok: true, .. } if j == join),
        )
    };
    (done(true), done(false))
}

/// `peer_queue` of simulated scenario runs: small, so that random scenarios fill queues and
/// the oracle judges what overflows them (C6). Real sockets keep the default.
pub const SCENARIO_PEER_QUEUE: usize = 2;

/// A current-thread runtime. Simulations run with tokio's clock paused (they wait on
/// conditions, never on time), so even the history's timestamps replay exactly.
fn runtime(paused: bool) -> Result<tokio::runtime::Runtime, SimError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .map_err(|e| {
            SimError::Transport(cluster_core::TransportError::Other(format!(
                "cannot build a tokio runtime: {e}"
            )))
        })
}

fn setup(nodes: usize, seed: u64) -> Setup {
    Setup {
        nodes,
        seed,
        options: Options::default(),
    }
}

/// The setup of one scenario run: simulations get small queues (see
/// [`SCENARIO_PEER_QUEUE`]) and a small `max_message_size` (oversized hostile bytes stay
/// cheap); real sockets the defaults.
fn scenario_setup(nodes: usize, seed: u64, exact: bool) -> Setup {
    let mut setup = setup(nodes, seed);
    if exact {
        setup.options.peer_queue = SCENARIO_PEER_QUEUE;
        setup.options.max_message_size = 4096;
    }
    setup
}

/// Runs one scenario on a fresh cluster from `factory` and judges it (e.g. to replay a
/// printed scenario, or in a regression test).
pub fn check_scenario(
    factory: &dyn Factory,
    scenario: &Scenario,
) -> Result<(Verdict, Vec<Record>), SimError> {
    let (_, caps) = capabilities(factory)?;
    scenario_on(factory, scenario, caps.timing == Timing::Exact)
}

fn scenario_on(
    factory: &dyn Factory,
    scenario: &Scenario,
    paused: bool,
) -> Result<(Verdict, Vec<Record>), SimError> {
    let rt = runtime(paused)?;
    rt.block_on(async {
        let backend = factory(&scenario_setup(scenario.nodes, scenario.seed, paused))?;
        let history = run_scenario(backend, scenario).await?;
        Ok((oracle::check(&history), history))
    })
}

fn capabilities(factory: &dyn Factory) -> Result<(String, Capabilities), SimError> {
    // Inside a runtime: a factory may need one even to build its config.
    runtime(false)?.block_on(async {
        let backend = factory(&setup(2, 0))?;
        Ok((backend.name(), backend.capabilities()))
    })
}

fn runner(options: &SuiteOptions) -> TestRunner {
    // Expand the 64-bit seed to ChaCha's 32 bytes (splitmix64), so one number replays all.
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let word = crate::seed_mix(options.seed, 0, i as u32);
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    let config = ProptestConfig {
        cases: options.cases,
        failure_persistence: None,
        max_shrink_iters: options.max_shrink_iters,
        ..ProptestConfig::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

fn write_history(options: &SuiteOptions, backend: &str, records: &[Record]) -> Option<PathBuf> {
    let dir = options
        .history_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!(
        "cluster-conformance-{backend}-{}.jsonl",
        options.seed
    ));
    std::fs::write(&path, to_json_lines(records)).ok()?;
    Some(path)
}

/// The property part: `options.cases` random scenarios, judged by the oracle. On failure,
/// the smallest failing scenario.
pub fn check_scenarios(
    factory: &dyn Factory,
    options: &SuiteOptions,
) -> Result<Report, Box<Failure>> {
    let (name, caps) = capabilities(factory).map_err(|e| {
        Box::new(Failure {
            backend: "?".into(),
            case: "scenarios".into(),
            seed: options.seed,
            scenario: None,
            violations: Vec::new(),
            error: Some(e.to_string()),
            history_file: None,
        })
    })?;
    let strategy = scenario(options.nodes.clone(), options.max_ops, caps);
    let exact = caps.timing == Timing::Exact;
    let judged = std::cell::Cell::new((0usize, 0usize, 0usize));
    let membership = std::cell::Cell::new((0u32, 0u32));
    let judge = |mut verdict: Verdict| {
        if let Some(only) = options.invariant {
            verdict.violations.retain(|v| v.invariant == only);
        }
        verdict
    };
    let result = runner(options).run(&strategy, |sc| {
        let (verdict, history) =
            scenario_on(factory, &sc, exact).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let verdict = judge(verdict);
        if verdict.is_ok() {
            let (joined, left) = membership_done(&history);
            let (j, l) = membership.get();
            membership.set((j + u32::from(joined), l + u32::from(left)));
            let (a, b, c) = verdict.expectations();
            let (x, y, z) = judged.get();
            judged.set((x + a, y + b, z + c));
            Ok(())
        } else {
            Err(TestCaseError::fail(verdict.to_string()))
        }
    });
    let fail = |scenario: Option<Scenario>, error: Option<String>| {
        let mut failure = Failure {
            backend: name.clone(),
            case: "scenarios".into(),
            seed: options.seed,
            scenario: scenario.clone(),
            violations: Vec::new(),
            error,
            history_file: None,
        };
        if let Some(sc) = &scenario {
            match scenario_on(factory, sc, exact) {
                Ok((verdict, history)) => {
                    failure.violations = judge(verdict).violations;
                    failure.history_file = write_history(options, &name, &history);
                }
                Err(e) => failure.error = Some(e.to_string()),
            }
        }
        Box::new(failure)
    };
    match result {
        Ok(()) => Ok(Report {
            scenarios: options.cases,
            judged: judged.get(),
            directed: Vec::new(),
            membership: membership.get(),
        }),
        Err(TestError::Fail(_, minimal)) => Err(fail(Some(minimal), None)),
        Err(TestError::Abort(why)) => Err(fail(None, Some(why.to_string()))),
    }
}

/// Fixed scenarios every transport must pass, by name: routing basics, restart, partition.
pub fn directed_scenarios(caps: Capabilities) -> Vec<(&'static str, Scenario)> {
    let send = |from: Pid, to: Pid, byte: u8| Op::Send {
        from,
        to,
        payload: vec![byte, 0, 255],
    };
    let mut out = vec![(
        "routing",
        Scenario {
            nodes: 4,
            seed: 1,
            ops: vec![
                send(1, 1, 1),
                send(1, BROADCAST, 2),
                send(2, 3, 3),
                send(3, 99, 4),
                send(4, -7, 5),
                send(4, BROADCAST, 6),
                Op::Settle,
                send(3, 2, 7),
                send(3, 2, 8),
            ],
        },
    )];
    if caps.crash_restart {
        out.push((
            "restart",
            Scenario {
                nodes: 3,
                seed: 2,
                ops: vec![
                    send(1, 2, 1),
                    Op::Settle,
                    Op::Crash(2),
                    send(1, 2, 2),
                    send(3, BROADCAST, 3),
                    Op::Restart(2),
                    Op::Settle,
                    send(1, 2, 4),
                    send(2, 1, 5),
                    send(2, BROADCAST, 6),
                    send(1, 2, 7),
                    Op::Restart(1),
                    send(1, 2, 8),
                ],
            },
        ));
    }
    if caps.membership && caps.crash_restart {
        // Node 4 is in no member's config: a send to it is `unknown_peer` until it joins.
        out.push((
            MEMBERSHIP_CASE,
            Scenario {
                nodes: 3,
                seed: 4,
                ops: vec![
                    send(1, 4, 1),
                    Op::Settle,
                    Op::Join(4),
                    send(1, BROADCAST, 2),
                    send(4, 2, 3),
                    send(4, BROADCAST, 4),
                    Op::Settle,
                    Op::Leave(2),
                    send(1, 2, 5),
                    send(4, BROADCAST, 6),
                    send(3, 4, 7),
                ],
            },
        ));
    }
    if caps.partition {
        out.push((
            "partition",
            Scenario {
                nodes: 3,
                seed: 3,
                ops: vec![
                    Op::Partition(vec![1], vec![2, 3]),
                    send(1, BROADCAST, 1),
                    send(2, 3, 2),
                    send(3, 1, 3),
                    Op::Heal,
                    send(1, BROADCAST, 4),
                    send(3, 1, 5),
                ],
            },
        ));
    }
    out
}

/// The directed case in which a node joins and a member leaves: both must complete.
const MEMBERSHIP_CASE: &str = "membership";

fn directed_failure(name: &str, case: &str, seed: u64, error: String) -> Box<Failure> {
    Box::new(Failure {
        backend: name.into(),
        case: case.into(),
        seed,
        scenario: None,
        violations: Vec::new(),
        error: Some(error),
        history_file: None,
    })
}

/// C6: bounded queues and isolation. Node 2's inbox is never read while node 1 floods it;
/// overflow must be counted (`backpressure`), node 3 must get all of its messages, the
/// cluster must go quiet (also with two nodes flooding each other's full inboxes), and
/// node 2 must keep serving once it reads again.
pub fn check_backpressure_isolation(factory: &dyn Factory) -> Result<(), Box<Failure>> {
    const CASE: &str = "backpressure-isolation";
    let rt = runtime(false).map_err(|e| directed_failure("?", CASE, 0, e.to_string()))?;
    let options = Options {
        inbox_capacity: 8,
        peer_queue: 8,
        ..Options::default()
    };
    let backend = factory(&Setup {
        nodes: 3,
        seed: 4,
        options,
    })
    .map_err(|e| directed_failure("?", CASE, 4, e.to_string()))?;
    let name = backend.name();
    let fail = |e: String| directed_failure(&name, CASE, 4, e);
    rt.block_on(async {
        let mut sim = SimCluster::<u32>::builder()
            .seed(4)
            .build_on(backend)
            .await
            .map_err(|e| fail(e.to_string()))?;
        sim.pause_inbox(2, true);
        sim.pause_inbox(1, true);
        // More than a peer's window of unacknowledged frames (16 × `peer_queue`) and its
        // queues, so that on real sockets too the full inboxes push back to the senders.
        const N: u32 = 400;
        for i in 0..N {
            sim.send(1, 2, i).await.map_err(|e| fail(e.to_string()))?;
            sim.send(2, 1, i).await.map_err(|e| fail(e.to_string()))?;
            if i % 10 == 0 {
                sim.send(1, 3, i).await.map_err(|e| fail(e.to_string()))?;
            }
            if i % 25 == 0 && !sim.settle().await {
                return Err(fail("the cluster stalled with two full inboxes".into()));
            }
        }
        if !sim.settle().await {
            return Err(fail("the cluster stalled with two full inboxes".into()));
        }
        let to3: Vec<u32> = sim.take_received(3).into_iter().map(|e| e.msg).collect();
        let expected: Vec<u32> = (0..N).step_by(10).collect();
        if to3 != expected {
            return Err(fail(format!(
                "node 3 got {to3:?} while node 2 was flooded, expected {expected:?}"
            )));
        }
        let m2 = sim.monitor(2).ok_or_else(|| fail("node 2 is gone".into()))?;
        let m1 = sim.monitor(1).ok_or_else(|| fail("node 1 is gone".into()))?;
        let overflow = m2.stats().dropped().get(DropReason::Backpressure)
            + m1.stats().dropped().get(DropReason::Backpressure);
        if overflow == 0 {
            return Err(fail(
                "800 messages into two 8-slot inboxes nobody reads, and no backpressure drop counted"
                    .into(),
            ));
        }
        // Reading again: what waited in the transport arrives, and node 2 serves again.
        sim.pause_inbox(2, false);
        sim.pause_inbox(1, false);
        sim.settle().await;
        sim.take_received(2);
        sim.send(1, 2, 1000).await.map_err(|e| fail(e.to_string()))?;
        sim.settle().await;
        let got: Vec<u32> = sim.take_received(2).into_iter().map(|e| e.msg).collect();
        if got != [1000] {
            return Err(fail(format!(
                "after draining, node 2 got {got:?} instead of [1000]: it stopped serving"
            )));
        }
        let history = sim.finish().await;
        let violations = oracle::check_c7_accounting(&oracle::Analysis::new(&history));
        // Refusals for backpressure are fine here; the totals must still add up.
        let totals: Vec<Violation> = violations.into_iter().filter(|v| v.seq.is_none()).collect();
        if !totals.is_empty() {
            let mut f = fail("counters do not add up under backpressure".into());
            f.violations = totals;
            return Err(f);
        }
        Ok(())
    })
}

/// C5': through queues of a few frames, a sender much faster than its (reading) receiver
/// loses nothing — its sends wait — while a broadcast never waits on a peer that does not
/// read (that peer's copies are dropped and counted, the reading peer's arrive).
pub fn check_lossless_when_healthy(factory: &dyn Factory) -> Result<(), Box<Failure>> {
    const CASE: &str = "lossless-when-healthy";
    const N: u32 = 600;
    let rt = runtime(false).map_err(|e| directed_failure("?", CASE, 0, e.to_string()))?;
    let options = Options {
        inbox_capacity: 8,
        peer_queue: 8,
        // A broadcast that waited on the non-reading peer would show here.
        send_timeout: Duration::from_secs(3600),
        ..Options::default()
    };
    let backend = factory(&Setup {
        nodes: 3,
        seed: 6,
        options,
    })
    .map_err(|e| directed_failure("?", CASE, 6, e.to_string()))?;
    let name = backend.name();
    let fail = |e: String| directed_failure(&name, CASE, 6, e);
    rt.block_on(async {
        let mut sim = SimCluster::<u32>::builder()
            .seed(6)
            .build_on(backend)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let within = Duration::from_secs(600);
        let stream = async {
            for i in 0..N {
                sim.send(1, 2, i).await?;
            }
            Ok::<_, SimError>(())
        };
        match tokio::time::timeout(within, stream).await {
            Ok(sent) => sent.map_err(|e| fail(e.to_string()))?,
            Err(_) => {
                return Err(fail(format!(
                    "{N} sends to a reading peer took over {within:?}"
                )));
            }
        }
        if !sim.settle().await {
            return Err(fail("the cluster did not settle after the stream".into()));
        }
        let got: Vec<u32> = sim.take_received(2).into_iter().map(|e| e.msg).collect();
        if got != (0..N).collect::<Vec<_>>() {
            let lost = N as usize - got.len();
            return Err(fail(format!(
                "node 2 reads, yet {lost} of {N} messages sent to it did not arrive in order"
            )));
        }
        // Node 3 stops reading: broadcasts go on, to node 2 whole, without waiting.
        sim.pause_inbox(3, true);
        let broadcasts = async {
            for i in 0..N {
                sim.send(1, BROADCAST, N + i).await?;
                if i % 4 == 3 && !sim.settle().await {
                    return Err(SimError::Transport(cluster_core::TransportError::Other(
                        "the cluster did not settle between broadcasts".into(),
                    )));
                }
            }
            Ok(())
        };
        match tokio::time::timeout(within, broadcasts).await {
            Ok(sent) => sent.map_err(|e| fail(e.to_string()))?,
            Err(_) => {
                return Err(fail(format!(
                    "{N} broadcasts took over {within:?}: one waited on the peer that does not read"
                )));
            }
        }
        sim.settle().await;
        let got: Vec<u32> = sim.take_received(2).into_iter().map(|e| e.msg).collect();
        if got != (N..2 * N).collect::<Vec<_>>() {
            return Err(fail(format!(
                "node 2 got {} of {N} broadcasts while node 3 did not read",
                got.len()
            )));
        }
        let m1 = sim
            .monitor(1)
            .ok_or_else(|| fail("node 1 is gone".into()))?;
        let s1 = m1.stats();
        if s1.peers[&3].dropped_to.get(DropReason::Backpressure) == 0 {
            return Err(fail(
                "node 3 read nothing, yet no copy to it was dropped as backpressure".into(),
            ));
        }
        if s1.peers[&2].dropped_to.total() != 0 {
            return Err(fail(format!(
                "copies to the reading node 2 were dropped: {:?}",
                s1.peers[&2].dropped_to
            )));
        }
        sim.pause_inbox(3, false);
        let history = sim.finish().await;
        let violations = oracle::check_c7_accounting(&oracle::Analysis::new(&history));
        let totals: Vec<Violation> = violations.into_iter().filter(|v| v.seq.is_none()).collect();
        if !totals.is_empty() {
            let mut f = fail("counters do not add up under flow control".into());
            f.violations = totals;
            return Err(f);
        }
        Ok(())
    })
}

/// C9: garbage, truncated, oversized and forged frames pushed into a node's transport are
/// dropped and counted, and the node keeps serving.
pub fn check_hostile_input(factory: &dyn Factory) -> Result<(), Box<Failure>> {
    const CASE: &str = "hostile-input";
    let rt = runtime(false).map_err(|e| directed_failure("?", CASE, 0, e.to_string()))?;
    let options = Options {
        max_message_size: 1024,
        ..Options::default()
    };
    let backend = factory(&Setup {
        nodes: 3,
        seed: 5,
        options,
    })
    .map_err(|e| directed_failure("?", CASE, 5, e.to_string()))?;
    let name = backend.name();
    // With a cluster key, a whole frame that carries no tag is unauthenticated, not
    // malformed: the tag is checked before the payload.
    let config = backend.config().clone();
    let unsigned = if config.cluster_key().is_some() {
        DropReason::Unauthenticated
    } else {
        DropReason::Malformed
    };
    let fail = |e: String| directed_failure(&name, CASE, 5, e);
    rt.block_on(async {
        let mut sim = SimCluster::<String>::builder()
            .seed(5)
            .build_on(backend)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let forged = |sender: Pid| {
            wire::encode(&wire::Header::new(sender, 1, 0, 1), "forged")
                .map_err(|e| fail(e.to_string()))
        };
        let valid = forged(2)?;
        let mut hostile: Vec<(Bytes, DropReason)> = vec![
            (Bytes::from_static(b""), DropReason::Malformed),
            (
                Bytes::from_static(b"garbage garbage garbage"),
                DropReason::Malformed,
            ),
            (valid.slice(..10), DropReason::Malformed),
            (Bytes::from(vec![wire::MAGIC; 4096]), DropReason::TooLarge),
            (forged(77)?, DropReason::UnknownSender),
            (forged(1)?, DropReason::UnknownSender),
            (valid.slice(..valid.len() - 1), unsigned),
        ];
        let blake3_mac =
            !config.options().encrypt && config.options().mac == cluster_core::MacAlgorithm::Blake3;
        if let (Some(key), false) = (config.cluster_key(), blake3_mac) {
            // At an encrypting node, or one tagging with SipHash, a frame tagged with
            // BLAKE3 under the right key (a default MAC-mode member's) is refused too:
            // modes must match.
            let mut mac = Sealer::new(Some(key.clone()), false);
            let mut encoder = wire::Encoder::new();
            encoder
                .serialize("tagged")
                .map_err(|e| fail(e.to_string()))?;
            let header = mac.mark(wire::Header::new(2, 1, 0, 1));
            let tagged = encoder.frame(&header, |covered| mac.seal(covered));
            hostile.push((tagged, DropReason::Unauthenticated));
        }
        for (bytes, _) in &hostile {
            sim.inject_raw(1, bytes.clone())
                .map_err(|e| fail(e.to_string()))?;
        }
        sim.settle().await;
        sim.send(2, 1, "real".into())
            .await
            .map_err(|e| fail(e.to_string()))?;
        sim.settle().await;
        let got: Vec<String> = sim.take_received(1).into_iter().map(|e| e.msg).collect();
        if got != ["real"] {
            return Err(fail(format!(
                "after hostile input node 1 got {got:?}, expected [\"real\"]"
            )));
        }
        let stats = sim
            .monitor(1)
            .ok_or_else(|| fail("node 1 is gone".into()))?
            .stats();
        for reason in [
            DropReason::Malformed,
            DropReason::TooLarge,
            DropReason::UnknownSender,
            DropReason::Unauthenticated,
        ] {
            let expected = hostile.iter().filter(|(_, r)| *r == reason).count() as u64;
            let counted = stats.dropped_incoming.get(reason);
            if counted != expected {
                return Err(fail(format!(
                    "node 1 counted {counted} incoming {reason} drops, expected {expected} ({})",
                    stats.dropped_incoming
                )));
            }
        }
        Ok(())
    })
}

/// C1, C3 and C7 for multicast: from node 1, multicasts to a group (changed at run time)
/// and to lists (with a duplicate, the sender itself and an unknown pid) reach each
/// destination once and in send order, the unknown pid is counted `unknown_peer`, and over
/// the cluster sent = delivered + dropped.
pub fn check_multicast(factory: &dyn Factory) -> Result<(), Box<Failure>> {
    const CASE: &str = "multicast";
    const N: u32 = 60;
    let rt = runtime(false).map_err(|e| directed_failure("?", CASE, 0, e.to_string()))?;
    let backend = factory(&Setup {
        nodes: 4,
        seed: 7,
        options: Options::default(),
    })
    .map_err(|e| directed_failure("?", CASE, 7, e.to_string()))?;
    let name = backend.name();
    let fail = |e: String| directed_failure(&name, CASE, 7, e);
    rt.block_on(async {
        let mut sim = SimCluster::<u32>::builder()
            .seed(7)
            .build_on(backend)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let one = sim
            .server(1)
            .ok_or_else(|| fail("node 1 is not running".into()))?;
        one.set_group("odd", [1, 3])
            .map_err(|e| fail(e.to_string()))?;
        let outbox = one.outbox();
        let mut expected: BTreeMap<Pid, Vec<u32>> = BTreeMap::new();
        let mut unknown = 0;
        for i in 0..N {
            if i == N / 2 {
                let one = sim
                    .server(1)
                    .ok_or_else(|| fail("node 1 is not running".into()))?;
                one.set_group("odd", [1, 3, 4])
                    .map_err(|e| fail(e.to_string()))?;
            }
            let (to, reach): (Recipients, &[Pid]) = match i % 3 {
                0 if i < N / 2 => ("odd".into(), &[1, 3]),
                0 => ("odd".into(), &[1, 3, 4]),
                1 => {
                    unknown += 1;
                    (vec![3, 2, 3, 9].into(), &[2, 3])
                }
                _ => ([4, 1, 2].into(), &[1, 2, 4]),
            };
            outbox
                .multicast(to, i64::from(i), i)
                .map_err(|e| fail(e.to_string()))?;
            for pid in reach {
                expected.entry(*pid).or_default().push(i);
            }
            if i % 10 == 9 && !sim.settle().await {
                return Err(fail("the cluster did not settle between multicasts".into()));
            }
        }
        if !sim.settle().await {
            return Err(fail(
                "the cluster did not settle after the multicasts".into(),
            ));
        }
        for pid in 1..=4 {
            let got: Vec<u32> = sim.take_received(pid).into_iter().map(|e| e.msg).collect();
            let want = expected.remove(&pid).unwrap_or_default();
            if got != want {
                return Err(fail(format!(
                    "node {pid} got multicasts {got:?}, expected {want:?} (each once, in order)"
                )));
            }
        }
        let mut totals = (0, 0, 0);
        for pid in 1..=4 {
            let s = sim
                .monitor(pid)
                .ok_or_else(|| fail(format!("node {pid} is gone")))?
                .stats();
            if pid == 1 {
                let dropped = s.dropped_outgoing;
                if dropped.get(DropReason::UnknownPeer) != unknown || dropped.total() != unknown {
                    return Err(fail(format!(
                        "node 1 counted {dropped} outgoing drops, expected unknown_peer={unknown}"
                    )));
                }
            }
            totals.0 += s.sent;
            totals.1 += s.delivered;
            totals.2 += s.dropped().total();
        }
        let (sent, delivered, dropped) = totals;
        if sent != delivered + dropped {
            return Err(fail(format!(
                "sent {sent} != delivered {delivered} + dropped {dropped}"
            )));
        }
        Ok(())
    })
}

/// Runs the whole suite: the directed scenarios, the directed cases, and
/// `options.cases` random scenarios.
pub fn run(factory: &dyn Factory, options: &SuiteOptions) -> Result<Report, Box<Failure>> {
    let (name, caps) = capabilities(factory).map_err(|e| {
        Box::new(Failure {
            backend: "?".into(),
            case: "setup".into(),
            seed: options.seed,
            scenario: None,
            violations: Vec::new(),
            error: Some(e.to_string()),
            history_file: None,
        })
    })?;
    let mut directed = Vec::new();
    let mut membership = (0, 0);
    for (case, sc) in directed_scenarios(caps) {
        let (verdict, history) = scenario_on(factory, &sc, caps.timing == Timing::Exact)
            .map_err(|e| directed_failure(&name, case, sc.seed, e.to_string()))?;
        let (joined, left) = membership_done(&history);
        membership.0 += u32::from(joined);
        membership.1 += u32::from(left);
        if case == MEMBERSHIP_CASE && !(joined && left) {
            let mut failure = directed_failure(
                &name,
                case,
                sc.seed,
                format!(
                    "the join of node 4 {} and the leave of node 2 {} (within {:?} each)",
                    if joined {
                        "completed"
                    } else {
                        "did not complete"
                    },
                    if left {
                        "completed"
                    } else {
                        "did not complete"
                    },
                    crate::scenario::MEMBERSHIP_WAIT
                ),
            );
            failure.scenario = Some(sc);
            failure.history_file = write_history(options, &name, &history);
            return Err(failure);
        }
        if !verdict.is_ok() {
            return Err(Box::new(Failure {
                backend: name.clone(),
                case: case.into(),
                seed: options.seed,
                scenario: Some(sc),
                violations: verdict.violations,
                error: None,
                history_file: write_history(options, &name, &history),
            }));
        }
        directed.push(case);
    }
    check_backpressure_isolation(factory)?;
    directed.push("backpressure-isolation");
    check_lossless_when_healthy(factory)?;
    directed.push("lossless-when-healthy");
    check_hostile_input(factory)?;
    directed.push("hostile-input");
    check_multicast(factory)?;
    directed.push("multicast");
    let mut report = check_scenarios(factory, options)?;
    report.directed = directed;
    report.membership.0 += membership.0;
    report.membership.1 += membership.1;
    Ok(report)
}

/// [`run`], panicking with the readable [`Failure`] report (for `#[test]` functions).
pub fn check(factory: impl Factory, options: SuiteOptions) -> Report {
    match run(&factory, &options) {
        Ok(report) => {
            eprintln!(
                "conformance: {} directed cases and {} scenarios passed (seed {}); judged {} copies that had to be delivered, {} that had to be dropped, {} either way; {} runs with a node joining, {} with a member leaving",
                report.directed.len(),
                report.scenarios,
                options.seed,
                report.judged.0,
                report.judged.1,
                report.judged.2,
                report.membership.0,
                report.membership.1
            );
            report
        }
        Err(failure) => panic!("{failure}"),
    }
}
