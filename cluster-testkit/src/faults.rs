//! Your own node logic under a random fault schedule, with your own invariants checked.
//!
//! [`run`] hands every node's [`Server`](cluster_core::Server) to your logic (an async fn,
//! see [`NodeLogic`]), then, step by step, applies a random fault (crash,
//! restart, partition, cut, loss, heal — drawn from the cluster's seed), lets simulated time
//! pass, and calls your check. At the end it heals everything, restarts crashed nodes, lets
//! the cluster run quietly, and calls your check a last time (for liveness: "a leader was
//! elected", "all replicas agree").
//!
//! Run it on a current-thread runtime with tokio's clock paused
//! (`#[tokio::test(flavor = "current_thread", start_paused = true)]`, or [`runtime`]):
//! timers then advance only when every task is idle, so a run is a function of its seed and
//! `CLUSTER_SEED=<seed>` replays it. See `examples/leader_election.rs`.

use std::fmt;
use std::time::Duration;

use cluster_core::{Message, Pid};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::scenario::Op;
use crate::seed::SEED_VAR;
use crate::sim::{NodeLogic, SimCluster, SimError};

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
        }
    }
}

/// When a check is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// After fault step `n` (from 0) and its interval.
    Step(usize),
    /// After the final heal, restarts and recovery time.
    Final,
}

/// A passing run: the faults applied, in order.
#[derive(Debug, Clone)]
pub struct FaultReport {
    /// The seed of the run.
    pub seed: u64,
    /// `(simulated time since the start, op)` for every fault applied.
    pub faults: Vec<(Duration, Op)>,
}

/// A failed user check, with the faults that led to it and how to replay it.
#[derive(Debug, Clone)]
pub struct FaultFailure {
    /// The seed of the run.
    pub seed: u64,
    /// When the check failed.
    pub phase: Phase,
    /// What the check said.
    pub message: String,
    /// The faults applied until then.
    pub faults: Vec<(Duration, Op)>,
    /// Where the history was written (JSON lines), if it could be.
    pub history_file: Option<std::path::PathBuf>,
}

impl fmt::Display for FaultFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invariant broken at {:?}: {}", self.phase, self.message)?;
        writeln!(f, "faults applied:")?;
        for (at, op) in &self.faults {
            writeln!(f, "  {:>8.3}s  {op}", at.as_secs_f64())?;
        }
        if let Some(p) = &self.history_file {
            writeln!(f, "history (JSON lines): {}", p.display())?;
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

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        items.get(rng.random_range(0..items.len())).copied()
    }
}

/// Draws the next fault, given who is up.
fn draw(rng: &mut StdRng, sim: &SimCluster<impl Message>, s: &FaultSchedule) -> Option<Op> {
    let pids = sim.pids();
    let up: Vec<Pid> = pids.iter().copied().filter(|p| sim.is_up(*p)).collect();
    let down: Vec<Pid> = pids.iter().copied().filter(|p| !sim.is_up(*p)).collect();
    let max_down = s
        .max_down
        .unwrap_or_else(|| pids.len().saturating_sub(1) / 2);
    let caps = sim.capabilities();
    let mut kinds: Vec<u8> = Vec::new();
    if s.crashes && caps.crash_restart {
        if down.len() < max_down {
            kinds.extend([0, 0]);
        }
        if !down.is_empty() {
            kinds.extend([1, 1]);
        }
    }
    if s.partitions && caps.partition {
        kinds.extend([2, 3, 4]);
    }
    if s.loss && caps.loss {
        kinds.extend([5, 4]);
    }
    let a = pick(rng, &pids)?;
    let b = pick(rng, &pids)?;
    Some(match pick(rng, &kinds)? {
        0 => Op::Crash(pick(rng, &up)?),
        1 => Op::Restart(pick(rng, &down)?),
        2 => {
            let (x, y): (Vec<Pid>, Vec<Pid>) = pids.iter().partition(|_| rng.random_bool(0.5));
            Op::Partition(x, y)
        }
        3 => Op::Cut(a, b),
        4 => Op::Heal,
        _ => Op::SetLoss(a, b, if rng.random_bool(0.5) { 0.2 } else { 0.8 }),
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
        Op::Send { .. } | Op::Enqueue { .. } | Op::Settle => Ok(()),
    }
}

/// Runs `logic` on every node of `sim` under `schedule`, calling `check` after each step
/// and at the end. The faults are drawn from the cluster's seed.
pub async fn run<M, L, C>(
    sim: &mut SimCluster<M>,
    logic: L,
    schedule: &FaultSchedule,
    mut check: C,
) -> Result<FaultReport, Box<FaultFailure>>
where
    M: Message,
    L: NodeLogic<M>,
    C: FnMut(Phase) -> Result<(), String>,
{
    let seed = sim.seed();
    let mut rng = StdRng::seed_from_u64(crate::seed_mix(seed, -1, 0));
    let start = tokio::time::Instant::now();
    let mut faults: Vec<(Duration, Op)> = Vec::new();
    sim.spawn_nodes(logic);
    let fail = |phase, message: String, faults: &Vec<(Duration, Op)>, sim: &SimCluster<M>| {
        let path = std::env::temp_dir().join(format!("cluster-faults-{seed}.jsonl"));
        let history_file = sim.history().write_json_lines(&path).ok().map(|()| path);
        Box::new(FaultFailure {
            seed,
            phase,
            message,
            faults: faults.clone(),
            history_file,
        })
    };
    for step in 0..schedule.steps {
        if let Some(op) = draw(&mut rng, sim, schedule) {
            if let Err(e) = apply(sim, &op).await {
                return Err(fail(Phase::Step(step), e.to_string(), &faults, sim));
            }
            faults.push((start.elapsed(), op));
        }
        tokio::time::sleep(schedule.interval).await;
        if let Err(message) = check(Phase::Step(step)) {
            return Err(fail(Phase::Step(step), message, &faults, sim));
        }
    }
    let caps = sim.capabilities();
    if caps.partition || caps.cut || caps.loss {
        let _ = sim.heal();
        faults.push((start.elapsed(), Op::Heal));
    }
    for pid in sim.pids() {
        if !sim.is_up(pid) {
            if let Err(e) = sim.restart(pid).await {
                return Err(fail(Phase::Final, e.to_string(), &faults, sim));
            }
            faults.push((start.elapsed(), Op::Restart(pid)));
        }
    }
    tokio::time::sleep(schedule.recovery).await;
    if let Err(message) = check(Phase::Final) {
        return Err(fail(Phase::Final, message, &faults, sim));
    }
    Ok(FaultReport { seed, faults })
}
