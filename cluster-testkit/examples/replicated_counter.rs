//! A replicated counter driven by peer events, tested under random faults: five simulated
//! nodes each count their own increments (a grow-only counter: one count per node, merged
//! by taking the larger), and spread them using what `Server::events` tells:
//!
//! * a node sends its counts only to the peers that are `Up` (messages flow both ways), and
//!   at once to a peer that comes `Up` or has `Restarted` (it may have missed everything);
//! * a `Down` peer is left alone until it is back.
//!
//! If the events were wrong — an `Up` never told after a partition heals, a `Restarted`
//! missed — some node would stop hearing about others, and the counts would not converge.
//! Two invariants are checked:
//!
//! * **safety** — a node's view of any count never goes down, and never exceeds what its
//!   owner counted (checked after every fault step);
//! * **convergence** — once the network is healed and every node is back, every node holds
//!   every owner's count (checked at the end).
//!
//! ```text
//! cargo run -p cluster-testkit --example replicated_counter            # 20 seeds (CLUSTER_CASES)
//! CLUSTER_SEED=7 cargo run -p cluster-testkit --example replicated_counter   # replay one
//! cargo run -p cluster-testkit --example replicated_counter -- --ignore-events  # a bug to catch
//! ```
//!
//! `--ignore-events` plants the bug this example is about: nodes send only when they count
//! (no catch-up when a peer comes up or restarts), so what a peer missed while cut off or
//! down is never sent again, and the kit finds a seed where the counts do not converge.
//! Lossy links are not drawn: a message lost on a link that stays up is told by no event
//! (see `run_once`). Membership changes are not exercised here: the simulated cluster's nodes are fixed (see
//! `cluster-mem/tests/contract/membership.rs` for joins and leaves in simulation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_core::{Envelope, Event, Pid, Server};
use cluster_testkit::faults::{self, FaultSchedule, Phase};
use cluster_testkit::{NodeContext, SimCluster, cases_or, seed_from_env};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep_until};

/// Every count a node knows, by owner.
type Counts = BTreeMap<Pid, u64>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State(Counts);

/// Shared between the nodes and the checks: each node's counts (its "disk": they survive a
/// crash), and the highest each node ever showed (for safety).
#[derive(Default)]
struct World {
    /// Nodes count until then (virtual time), so that the final check sees a still state.
    stop_counting: Option<Instant>,
    disks: BTreeMap<Pid, Counts>,
    shown: BTreeMap<(Pid, Pid), u64>,
    violation: Option<String>,
}

type Shared = Arc<Mutex<World>>;

/// How long (virtual time, from the first start) the nodes count: most of the fault steps.
const COUNTING: Duration = Duration::from_secs(7);

/// Takes the larger of each count. Returns whether anything grew.
fn merge(into: &mut Counts, from: &Counts) -> bool {
    let mut grew = false;
    for (&owner, &n) in from {
        let c = into.entry(owner).or_default();
        if n > *c {
            *c = n;
            grew = true;
        }
    }
    grew
}

async fn node(server: Server<State>, ctx: NodeContext, world: Shared, use_events: bool) {
    let me = server.pid();
    let mut rng = ctx.rng();
    let (mut counts, stop_counting) = {
        let mut w = world.lock().unwrap();
        let stop = *w.stop_counting.get_or_insert(Instant::now() + COUNTING);
        (w.disks.get(&me).cloned().unwrap_or_default(), stop)
    };
    // Subscribe, then read who is up already: what comes after is told, and nothing falls
    // between the two.
    let mut events = server.events();
    let mut up: BTreeSet<Pid> = server.up_peers().into_iter().collect();
    let ids = server.msg_ids();
    let (outbox, mut inbox, _node) = server.into_split();
    let send = |to: Pid, counts: &Counts| {
        // A full queue drops it, as a lossy network would: the next count repairs it.
        let _ = outbox.try_send(Envelope::new(to, ids.next(), State(counts.clone())));
    };
    if use_events {
        for &p in &up {
            send(p, &counts);
        }
    }
    let mut next = Instant::now() + Duration::from_millis(rng.random_range(20..60));
    loop {
        {
            let mut w = world.lock().unwrap();
            w.disks.insert(me, counts.clone());
            for (&owner, &n) in &counts {
                let shown = w.shown.entry((me, owner)).or_default();
                let was = *shown;
                *shown = n;
                if n < was {
                    w.violation = Some(format!(
                        "node {me}: count of {owner} went from {was} to {n}"
                    ));
                }
            }
        }
        // `biased`: a fixed order of ready branches, so that a seed replays exactly.
        tokio::select! {
            biased;
            event = events.recv() => {
                let Some(Ok(event)) = event else { return };
                match event.event {
                    Event::Up(p) => {
                        up.insert(p);
                        if use_events {
                            send(p, &counts);
                        }
                    }
                    Event::Restarted { pid, .. } if use_events && up.contains(&pid) => {
                        send(pid, &counts);
                    }
                    Event::Down(p) | Event::Left(p) => {
                        up.remove(&p);
                    }
                    _ => {}
                }
            }
            env = inbox.recv() => {
                let Some(env) = env else { return };
                merge(&mut counts, &env.msg.0);
            }
            () = sleep_until(next), if next < stop_counting => {
                *counts.entry(me).or_default() += 1;
                for &p in &up {
                    send(p, &counts);
                }
                next = Instant::now() + Duration::from_millis(rng.random_range(20..60));
            }
        }
    }
}

/// Safety: no count ever went down, none exceeds its owner's.
fn safety(world: &Shared) -> Result<(), String> {
    let w = world.lock().unwrap();
    if let Some(v) = &w.violation {
        return Err(v.clone());
    }
    for ((at, owner), n) in &w.shown {
        let own = w
            .disks
            .get(owner)
            .and_then(|c| c.get(owner))
            .copied()
            .unwrap_or(0);
        if *n > own {
            return Err(format!(
                "node {at} shows {n} for {owner}, which counted {own}"
            ));
        }
    }
    Ok(())
}

/// Convergence: every node holds every owner's own count.
fn converged(world: &Shared) -> Result<(), String> {
    let w = world.lock().unwrap();
    let own: Counts = w
        .disks
        .iter()
        .map(|(p, c)| (*p, c.get(p).copied().unwrap_or(0)))
        .collect();
    for (p, c) in &w.disks {
        let behind: Vec<_> = own
            .iter()
            .filter(|(o, n)| c.get(o).copied().unwrap_or(0) < **n)
            .collect();
        if !behind.is_empty() {
            return Err(format!(
                "node {p} is behind on {behind:?} (it holds {c:?}; the owners counted {own:?})"
            ));
        }
    }
    Ok(())
}

fn run_once(seed: u64, use_events: bool) -> Result<String, String> {
    const NODES: usize = 5;
    let builder = SimCluster::<State>::builder()
        .nodes(NODES)
        .seed(seed)
        .summary(|m: &State| format!("{:?}", m.0));
    // No lossy links: a message lost on a link that stays up is told by no event, and this
    // counter sends a count once (a counter on lossy links needs retransmission, e.g.
    // sending its counts every so often). Crashes, restarts, partitions and cuts are drawn.
    let schedule = FaultSchedule {
        steps: 30,
        interval: Duration::from_millis(300),
        loss: false,
        ..FaultSchedule::default()
    };
    let last = Arc::new(Mutex::new(Shared::default()));
    let report = faults::explore::<State, _, _, _>(&builder, &schedule, || {
        let world = Shared::default();
        *last.lock().unwrap() = Arc::clone(&world);
        let logic = {
            let world = Arc::clone(&world);
            move |server, ctx| node(server, ctx, Arc::clone(&world), use_events)
        };
        let check = move |phase| {
            safety(&world)?;
            if phase == Phase::Final {
                converged(&world)?;
            }
            Ok(())
        };
        (logic, check)
    })
    .map_err(|failure| failure.to_string())?;
    let total: u64 = last
        .lock()
        .unwrap()
        .lock()
        .unwrap()
        .disks
        .iter()
        .map(|(p, c)| c.get(p).copied().unwrap_or(0))
        .sum();
    Ok(format!(
        "{} faults, {total} increments, every node holds all of them",
        report.faults.len()
    ))
}

fn main() {
    let use_events = !std::env::args().any(|a| a == "--ignore-events");
    let seeds: Vec<u64> = match seed_from_env() {
        Some(seed) => vec![seed],
        None => (1..=u64::from(cases_or(20))).collect(),
    };
    for seed in seeds {
        match run_once(seed, use_events) {
            Ok(summary) => println!("seed {seed}: ok — {summary}"),
            Err(report) => {
                eprintln!("seed {seed}: FAILED\n{report}");
                std::process::exit(1);
            }
        }
    }
}
