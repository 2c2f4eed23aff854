//! Your own node logic under a random fault schedule, with your own invariants checked.
//!
//! [`run`] hands every node's [`Server`](cluster_core::Server) to your logic (an async fn,
//! see [`NodeLogic`]), then, step by step, applies a random fault (crash, restart,
//! partition, cut, loss, heal — drawn from the cluster's seed, never one that would change
//! nothing), lets simulated time pass, and calls your check. At the end it heals
//! everything, restarts crashed nodes, lets the cluster run quietly, and calls your check a
//! last time (for liveness: "a leader was elected", "all replicas agree").
//!
//! Between steps is not the only time a run can fail: node logic that sees a broken
//! invariant calls [`NodeContext::fail`](crate::NodeContext::fail), and a panic in node
//! logic counts the same; either stops the run at that simulated instant.
//!
//! [`explore`] does the same on a cluster of its own and, when the run fails, shrinks the
//! fault schedule: it replays the run with fewer and fewer of the faults (delta debugging,
//! each candidate a fresh cluster with the same seed) and reports the smallest schedule that
//! still fails. A failure prints the faults, a space-time diagram of the run (the end of it
//! in the terminal, all of it in an HTML file), and the seed that replays it.
//!
//! Run on a current-thread runtime with tokio's clock paused
//! (`#[tokio::test(flavor = "current_thread", start_paused = true)]`, or [`runtime`];
//! [`explore`] makes its own): timers then advance only when every task is idle, so a run
//! is a function of its seed and `CLUSTER_SEED=<seed>` replays it exactly. See
//! `examples/leader_election.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use cluster_core::{Message, Pid};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::diagram;
use crate::history::{Record, to_json_lines};
use crate::node::{NodeFailure, NodeLogic};
use crate::scenario::Op;
use crate::seed::SEED_VAR;
use crate::sim::{SimBuilder, SimCluster, SimError};

/// Which faults to draw, how often, and how long to let the cluster recover at the end.
#[derive(Debug, Clone)]
pub struct FaultSchedule {
    /// Number of fault steps.
    pub steps: usize,
    /// Simulated time between steps.
    pub interval: Duration,
    /// At most this many nodes down at once (default: a minority).
    pub max_down: Option<usize>,
    /// Draw crashes and restarts.
    pub crashes: bool,
    /// Draw partitions and one-way cuts.
    pub partitions: bool,
    /// Draw lossy links.
    pub loss: bool,
    /// Simulated time to run after the final heal and restarts, before the final check.
    pub recovery: Duration,
    /// At most this many replays when [`explore`] shrinks a failing schedule.
    pub max_shrink_runs: usize,
}

impl Default for FaultSchedule {
    fn default() -> Self {
        Self {
            steps: 30,
            interval: Duration::from_millis(500),
            max_down: None,
            crashes: true,
            partitions: true,
            loss: true,
            recovery: Duration::from_secs(5),
            max_shrink_runs: 200,
        }
    }
}

/// When a fault was applied, or a check called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Fault step `n` (from 0): its fault, the interval after it, and the check after that.
    Step(usize),
    /// After the final heal, restarts and recovery time.
    Final,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Step(n) => write!(f, "step {n}"),
            Phase::Final => f.write_str("the final phase"),
        }
    }
}

/// One fault a run applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// The step it was drawn for, or [`Phase::Final`] for the closing heal and restarts.
    pub phase: Phase,
    /// Simulated time since the run began.
    pub at: Duration,
    /// The fault.
    pub op: Op,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Step(n) => format!("step {n}"),
            Phase::Final => "final".into(),
        };
        write!(
            f,
            "{:>8.3}s  {phase:>8}  {}",
            self.at.as_secs_f64(),
            self.op
        )
    }
}

/// A passing run: the faults applied, in order.
#[derive(Debug, Clone)]
pub struct FaultReport {
    /// The seed of the run.
    pub seed: u64,
    /// Every fault applied, the closing heal and restarts included.
    pub faults: Vec<Fault>,
}

/// How [`explore`] shrank a failing schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shrunk {
    /// Fault steps of the run that failed first.
    pub from: usize,
    /// Replays it took.
    pub runs: usize,
}

/// A failed run: what broke, when, the faults that led there, and how to see and replay it.
#[derive(Debug, Clone)]
pub struct FaultFailure {
    /// The seed of the run.
    pub seed: u64,
    /// The step during which it failed.
    pub phase: Phase,
    /// Simulated time since the run began, when it failed.
    pub at: Duration,
    /// What broke: the check's message, the node's ([`node`](Self::node)), or the harness's.
    pub message: String,
    /// The node failure, if node logic reported a violation or panicked.
    pub node: Option<NodeFailure>,
    /// The faults applied until then (after shrinking, the smallest failing schedule).
    pub faults: Vec<Fault>,
    /// Set if [`explore`] shrank the schedule.
    pub shrunk: Option<Shrunk>,
    /// Where the history was written (JSON lines), if it could be.
    pub history_file: Option<PathBuf>,
    /// Where the space-time diagram was written (HTML: open it in a browser), if it could be.
    pub diagram_file: Option<PathBuf>,
    /// The last rows of the space-time diagram, as text.
    pub diagram: String,
}

/// Diagram rows printed with a failure (the HTML file has them all).
const DIAGRAM_ROWS: usize = 40;

impl fmt::Display for FaultFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invariant broken in {} at {:.3} s of simulated time: {}",
            self.phase,
            self.at.as_secs_f64(),
            self.message
        )?;
        match self.shrunk {
            Some(s) => writeln!(
                f,
                "faults applied (shrunk from {} to {} fault steps, in {} replays):",
                s.from,
                self.faults
                    .iter()
                    .filter(|x| x.phase != Phase::Final)
                    .count(),
                s.runs
            )?,
            None => writeln!(f, "faults applied:")?,
        }
        for fault in &self.faults {
            writeln!(f, "  {fault}")?;
        }
        if !self.diagram.is_empty() {
            writeln!(f, "space-time diagram (the end of the run):")?;
            writeln!(f, "{}", self.diagram.trim_end())?;
        }
        if let Some(p) = &self.history_file {
            writeln!(f, "history (JSON lines): {}", p.display())?;
        }
        if let Some(p) = &self.diagram_file {
            writeln!(f, "space-time diagram (open in a browser): {}", p.display())?;
        }
        write!(
            f,
            "seed {seed}: replay exactly with {SEED_VAR}={seed} and the same command",
            seed = self.seed
        )
    }
}

impl std::error::Error for FaultFailure {}

/// A current-thread runtime with tokio's clock paused: what simulated runs need.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
}

fn pick<T: Clone>(rng: &mut StdRng, items: &[T]) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        items.get(rng.random_range(0..items.len())).cloned()
    }
}

/// The links as the faults so far left them, to tell which fault would change something.
#[derive(Debug, Default)]
struct Links {
    blocked: BTreeSet<(Pid, Pid)>,
    loss: BTreeMap<(Pid, Pid), f64>,
}

impl Links {
    fn blocked(&self, from: Pid, to: Pid) -> bool {
        self.blocked.contains(&(from, to))
    }

    fn anything_to_heal(&self) -> bool {
        !self.blocked.is_empty() || !self.loss.is_empty()
    }

    /// Whether `op` would change the cluster: a crash of a node that is up, a cut of a link
    /// that is open, a heal of something, …
    fn effective<M: Message>(&self, sim: &SimCluster<M>, op: &Op) -> bool {
        match op {
            Op::Crash(p) => sim.is_up(*p),
            Op::Restart(p) => !sim.is_up(*p),
            Op::Partition(a, b) => a.iter().any(|&x| {
                b.iter()
                    .any(|&y| x != y && !(self.blocked(x, y) && self.blocked(y, x)))
            }),
            Op::Cut(a, b) => a != b && !self.blocked(*a, *b),
            Op::Heal => self.anything_to_heal(),
            // Loss on a cut link would never show: the heal that opens it clears the loss.
            Op::SetLoss(a, b, p) => {
                a != b && !self.blocked(*a, *b) && self.loss.get(&(*a, *b)) != Some(p)
            }
            _ => false,
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Partition(a, b) => {
                for &x in a {
                    for &y in b.iter().filter(|y| **y != x) {
                        self.blocked.insert((x, y));
                        self.blocked.insert((y, x));
                    }
                }
            }
            Op::Cut(a, b) => {
                self.blocked.insert((*a, *b));
            }
            Op::Heal => {
                self.blocked.clear();
                self.loss.clear();
            }
            Op::SetLoss(a, b, p) => {
                self.loss.insert((*a, *b), *p);
            }
            _ => {}
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Crash,
    Restart,
    Partition,
    Cut,
    Heal,
    Loss,
}

/// Draws the next fault among those that would change something, given who is up and what
/// is cut; `None` if there is none.
fn draw<M: Message>(
    rng: &mut StdRng,
    sim: &SimCluster<M>,
    links: &Links,
    s: &FaultSchedule,
) -> Option<Op> {
    let pids = sim.pids();
    let up: Vec<Pid> = pids.iter().copied().filter(|p| sim.is_up(*p)).collect();
    let down: Vec<Pid> = pids.iter().copied().filter(|p| !sim.is_up(*p)).collect();
    let max_down = s
        .max_down
        .unwrap_or_else(|| pids.len().saturating_sub(1) / 2);
    let open: Vec<(Pid, Pid)> = pids
        .iter()
        .flat_map(|&a| pids.iter().map(move |&b| (a, b)))
        .filter(|&(a, b)| a != b && !links.blocked(a, b))
        .collect();
    let caps = sim.capabilities();
    let mut kinds = Vec::new();
    if s.crashes && caps.crash_restart {
        if down.len() < max_down && !up.is_empty() {
            kinds.extend([Kind::Crash, Kind::Crash]);
        }
        if !down.is_empty() {
            kinds.extend([Kind::Restart, Kind::Restart]);
        }
    }
    if s.partitions && caps.partition && !open.is_empty() {
        kinds.push(Kind::Partition);
    }
    if s.partitions && caps.cut && !open.is_empty() {
        kinds.push(Kind::Cut);
    }
    if (s.partitions || s.loss) && links.anything_to_heal() {
        kinds.push(Kind::Heal);
        if s.loss {
            kinds.push(Kind::Heal);
        }
    }
    if s.loss && caps.loss && !open.is_empty() {
        kinds.push(Kind::Loss);
    }
    Some(match pick(rng, &kinds)? {
        Kind::Crash => Op::Crash(pick(rng, &up)?),
        Kind::Restart => Op::Restart(pick(rng, &down)?),
        Kind::Partition => {
            // Around a link that is open, so that the partition cuts something.
            let (x, y) = pick(rng, &open)?;
            let (mut a, mut b) = (vec![x], vec![y]);
            for &p in pids.iter().filter(|p| **p != x && **p != y) {
                if rng.random_bool(0.5) {
                    a.push(p);
                } else {
                    b.push(p);
                }
            }
            a.sort_unstable();
            b.sort_unstable();
            Op::Partition(a, b)
        }
        Kind::Cut => {
            let (a, b) = pick(rng, &open)?;
            Op::Cut(a, b)
        }
        Kind::Heal => Op::Heal,
        Kind::Loss => {
            let (a, b) = pick(rng, &open)?;
            let mut p = if rng.random_bool(0.5) { 0.2 } else { 0.8 };
            if links.loss.get(&(a, b)) == Some(&p) {
                p = 1.0 - p;
            }
            Op::SetLoss(a, b, p)
        }
    })
}

async fn apply<M: Message>(sim: &mut SimCluster<M>, op: &Op) -> Result<(), SimError> {
    match op {
        Op::Crash(p) => sim.crash(*p).await,
        Op::Restart(p) => sim.restart(*p).await.map(|_| ()),
        Op::Partition(a, b) => sim.partition(a, b),
        Op::Cut(a, b) => sim.cut(*a, *b),
        Op::Heal => sim.heal(),
        Op::SetLoss(a, b, p) => sim.set_loss(*a, *b, *p),
        _ => Ok(()),
    }
}

/// Where a run's faults come from.
enum Plan<'a> {
    /// Drawn at random from this generator.
    Draw(Box<StdRng>),
    /// These, at their steps (skipping any that would change nothing now).
    Replay(&'a [Fault]),
}

/// A failed run, with its history (written to files only for the failure reported).
struct Failed {
    failure: Box<FaultFailure>,
    records: Vec<Record>,
    /// The harness failed (a cluster that could not be built, a fault it could not
    /// apply), not the user's logic: not a failure to shrink towards.
    harness: bool,
}

/// Marks a failure as the harness's own.
fn harness(mut failed: Failed) -> Failed {
    failed.harness = true;
    failed
}

/// Lets `d` of simulated time pass, unless node logic fails first.
async fn pause<M: Message>(sim: &SimCluster<M>, d: Duration) -> Result<(), NodeFailure> {
    tokio::select! {
        biased;
        failure = sim.node_failed() => Err(failure),
        () = tokio::time::sleep(d) => Ok(()),
    }
}

/// One run of `logic` on `sim` under `plan`.
async fn execute<M, L, C>(
    sim: &mut SimCluster<M>,
    logic: L,
    schedule: &FaultSchedule,
    mut plan: Plan<'_>,
    mut check: C,
) -> Result<FaultReport, Failed>
where
    M: Message,
    L: NodeLogic<M>,
    C: FnMut(Phase) -> Result<(), String>,
{
    let seed = sim.seed();
    let start = tokio::time::Instant::now();
    let mut faults: Vec<Fault> = Vec::new();
    let mut links = Links::default();
    sim.spawn_nodes(logic);
    let fail = |sim: &mut SimCluster<M>, phase, message: String, faults: &[Fault]| {
        let node = sim.take_node_failure();
        Failed {
            harness: false,
            failure: Box::new(FaultFailure {
                seed,
                phase,
                at: start.elapsed(),
                message: node.as_ref().map_or(message, ToString::to_string),
                node,
                faults: faults.to_vec(),
                shrunk: None,
                history_file: None,
                diagram_file: None,
                diagram: String::new(),
            }),
            records: sim.history().records(),
        }
    };
    for step in 0..schedule.steps {
        let phase = Phase::Step(step);
        let op = match &mut plan {
            Plan::Draw(rng) => draw(rng, sim, &links, schedule),
            Plan::Replay(list) => list
                .iter()
                .find(|f| f.phase == phase)
                .map(|f| f.op.clone())
                .filter(|op| links.effective(sim, op)),
        };
        if let Some(op) = op {
            if let Err(e) = apply(sim, &op).await {
                return Err(harness(fail(sim, phase, e.to_string(), &faults)));
            }
            links.apply(&op);
            faults.push(Fault {
                phase,
                at: start.elapsed(),
                op,
            });
        }
        if let Err(failure) = pause(sim, schedule.interval).await {
            return Err(fail(sim, phase, failure.to_string(), &faults));
        }
        if let Err(message) = check(phase) {
            return Err(fail(sim, phase, message, &faults));
        }
    }
    let phase = Phase::Final;
    if links.anything_to_heal() {
        if let Err(e) = sim.heal() {
            return Err(harness(fail(sim, phase, e.to_string(), &faults)));
        }
        faults.push(Fault {
            phase,
            at: start.elapsed(),
            op: Op::Heal,
        });
    }
    for pid in sim.pids() {
        if !sim.is_up(pid) {
            if let Err(e) = sim.restart(pid).await {
                return Err(harness(fail(sim, phase, e.to_string(), &faults)));
            }
            faults.push(Fault {
                phase,
                at: start.elapsed(),
                op: Op::Restart(pid),
            });
        }
    }
    if let Err(failure) = pause(sim, schedule.recovery).await {
        return Err(fail(sim, phase, failure.to_string(), &faults));
    }
    if let Err(message) = check(phase) {
        return Err(fail(sim, phase, message, &faults));
    }
    Ok(FaultReport { seed, faults })
}

/// Writes the failed run's history and diagram to the temporary directory, and puts the
/// end of the diagram into the report.
fn report(failed: Failed) -> Box<FaultFailure> {
    let Failed {
        mut failure,
        records,
        ..
    } = failed;
    if records.is_empty() {
        return failure;
    }
    let stem = std::env::temp_dir().join(format!("cluster-faults-{}", failure.seed));
    let written = |path: PathBuf, text: String| std::fs::write(&path, text).ok().map(|()| path);
    failure.history_file = written(stem.with_extension("jsonl"), to_json_lines(&records));
    failure.diagram_file = written(stem.with_extension("html"), diagram::html(&records));
    failure.diagram = diagram::text_last(&records, DIAGRAM_ROWS);
    failure
}

/// Runs `logic` on every node of `sim` under a random fault schedule drawn from the
/// cluster's seed, calling `check` after each step and at the end. Fails at the first
/// broken check, violation reported by a node ([`NodeContext::fail`](crate::NodeContext::fail))
/// or panic in node logic. To also shrink the schedule of a failure, use [`explore`].
pub async fn run<M, L, C>(
    sim: &mut SimCluster<M>,
    logic: L,
    schedule: &FaultSchedule,
    check: C,
) -> Result<FaultReport, Box<FaultFailure>>
where
    M: Message,
    L: NodeLogic<M>,
    C: FnMut(Phase) -> Result<(), String>,
{
    let rng = StdRng::seed_from_u64(crate::seed_mix(sim.seed(), -1, 0));
    execute(sim, logic, schedule, Plan::Draw(Box::new(rng)), check)
        .await
        .map_err(report)
}

/// Like [`run`], with these faults at their steps instead of random ones (e.g. a shrunk
/// schedule from a failure, as a regression test). A fault that would change nothing when
/// its step comes (a restart of a node that is up, …) is skipped.
pub async fn replay<M, L, C>(
    sim: &mut SimCluster<M>,
    logic: L,
    schedule: &FaultSchedule,
    faults: &[Fault],
    check: C,
) -> Result<FaultReport, Box<FaultFailure>>
where
    M: Message,
    L: NodeLogic<M>,
    C: FnMut(Phase) -> Result<(), String>,
{
    execute(sim, logic, schedule, Plan::Replay(faults), check)
        .await
        .map_err(report)
}

/// One run on a fresh cluster from `builder`, on a runtime of its own.
fn trial<M, S, L, C>(
    builder: &SimBuilder,
    schedule: &FaultSchedule,
    faults: Option<&[Fault]>,
    setup: &mut S,
) -> Result<FaultReport, Failed>
where
    M: Message,
    S: FnMut() -> (L, C),
    L: NodeLogic<M>,
    C: FnMut(Phase) -> Result<(), String>,
{
    let seed = builder.seed_value().unwrap_or_default();
    let cannot_run = |message: String| Failed {
        failure: Box::new(FaultFailure {
            seed,
            phase: Phase::Step(0),
            at: Duration::ZERO,
            message,
            node: None,
            faults: Vec::new(),
            shrunk: None,
            history_file: None,
            diagram_file: None,
            diagram: String::new(),
        }),
        records: Vec::new(),
        harness: true,
    };
    let rt = runtime().map_err(|e| cannot_run(format!("cannot build a tokio runtime: {e}")))?;
    rt.block_on(async {
        let mut sim = builder
            .clone()
            .build::<M>()
            .await
            .map_err(|e| cannot_run(e.to_string()))?;
        let (logic, check) = setup();
        let plan = match faults {
            Some(list) => Plan::Replay(list),
            None => Plan::Draw(Box::new(StdRng::seed_from_u64(crate::seed_mix(
                seed, -1, 0,
            )))),
        };
        let result = execute(&mut sim, logic, schedule, plan, check).await;
        sim.shutdown().await;
        result
    })
}

/// Runs node logic under a random fault schedule like [`run`], on a cluster of its own
/// built from `builder` (on a current-thread runtime with a paused clock, made here), and
/// if the run fails, shrinks its schedule to the smallest one that still fails.
///
/// `setup` makes the node logic and the check for one run, fresh each time (they usually
/// share state, e.g. an `Arc<Mutex<World>>`): shrinking replays the run on a new cluster,
/// with the same seed and a subset of the faults, dropping them chunk by chunk and then one
/// by one (delta debugging), at most [`FaultSchedule::max_shrink_runs`] times. The failure
/// reported is that of the smallest schedule.
pub fn explore<M, S, L, C>(
    builder: &SimBuilder,
    schedule: &FaultSchedule,
    mut setup: S,
) -> Result<FaultReport, Box<FaultFailure>>
where
    M: Message,
    S: FnMut() -> (L, C),
    L: NodeLogic<M>,
    C: FnMut(Phase) -> Result<(), String>,
{
    let builder = builder.clone().fixed_seed();
    let first = match trial::<M, _, _, _>(&builder, schedule, None, &mut setup) {
        Ok(report) => return Ok(report),
        Err(failed) => failed,
    };
    Err(report(shrink::<M, _, _, _>(
        &builder, schedule, &mut setup, first,
    )))
}

/// The fault steps of a failure's schedule (the closing heal and restarts are not theirs).
fn steps_of(failure: &FaultFailure) -> Vec<Fault> {
    failure
        .faults
        .iter()
        .filter(|f| f.phase != Phase::Final)
        .cloned()
        .collect()
}

/// Delta debugging over the fault steps of `failed`: try the schedule without one chunk of
/// its faults; keep any that still fails; halve the chunks when none does.
fn shrink<M, S, L, C>(
    builder: &SimBuilder,
    schedule: &FaultSchedule,
    setup: &mut S,
    failed: Failed,
) -> Failed
where
    M: Message,
    S: FnMut() -> (L, C),
    L: NodeLogic<M>,
    C: FnMut(Phase) -> Result<(), String>,
{
    let mut current = steps_of(&failed.failure);
    let from = current.len();
    let mut best = failed;
    let mut runs = 0;
    let mut chunks = 2;
    'shrinking: while !current.is_empty() {
        let n = chunks.min(current.len());
        let size = current.len().div_ceil(n);
        let mut reduced = false;
        for i in 0..n {
            if runs >= schedule.max_shrink_runs {
                break 'shrinking;
            }
            let candidate: Vec<Fault> = current
                .iter()
                .enumerate()
                .filter(|(j, _)| j / size != i)
                .map(|(_, f)| f.clone())
                .collect();
            runs += 1;
            if let Err(failed) = trial::<M, _, _, _>(builder, schedule, Some(&candidate), setup)
                && !failed.harness
            {
                // What that run applied: faults that became no-ops, or came after the
                // failure, are gone too.
                current = steps_of(&failed.failure);
                best = failed;
                chunks = (chunks - 1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if n >= current.len() {
                break;
            }
            chunks = (n * 2).min(current.len());
        }
    }
    best.failure.shrunk = Some(Shrunk { from, runs });
    best
}
