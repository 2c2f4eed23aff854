//! A small Raft-style leader election, tested the way you would test your own node logic:
//! five simulated nodes run it under a random schedule of crashes, restarts, partitions,
//! cuts and lossy links, and two invariants are checked throughout:
//!
//! * **election safety** — never two leaders in the same term: a node that wins an
//!   election checks it at that moment and reports a violation (`NodeContext::fail`), and
//!   the check after every fault step looks again;
//! * **liveness** — once the network is healed and every node is back, a leader is elected
//!   and a majority follows it (checked at the end).
//!
//! ```text
//! cargo run -p cluster-testkit --example leader_election            # 20 seeds (CLUSTER_CASES)
//! CLUSTER_SEED=123 cargo run -p cluster-testkit --example leader_election   # replay one
//! cargo run -p cluster-testkit --example leader_election -- --vote-twice  # a bug to catch
//! ```
//!
//! `--vote-twice` plants a classic bug: a node grants every vote request of its current
//! term, forgetting that it already voted. The kit finds a seed where that elects two
//! leaders, shrinks the fault schedule to the faults that matter, draws the run as a
//! space-time diagram, and prints the seed that replays it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_core::{BROADCAST, Envelope, Pid, Server};
use cluster_testkit::faults::{self, FaultSchedule, Phase};
use cluster_testkit::{NodeContext, SimCluster, cases_or, seed_from_env};
use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep_until};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Msg {
    RequestVote { term: u64 },
    Vote { term: u64, granted: bool },
    Heartbeat { term: u64 },
}

/// What a node keeps on disk: it survives crashes (unless `--vote-twice`).
#[derive(Debug, Clone, Copy, Default)]
struct Disk {
    term: u64,
    voted_for: Option<Pid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Follower,
    Candidate,
    Leader,
}

/// Shared between the nodes and the checks: the "disks", and what the checks observe.
#[derive(Default)]
struct World {
    disks: BTreeMap<Pid, Disk>,
    /// Every (term → leaders) ever elected.
    leaders: BTreeMap<u64, BTreeSet<Pid>>,
    /// Each node's current view: (term, role, leader it follows).
    views: BTreeMap<Pid, (u64, Role, Option<Pid>)>,
}

type Shared = Arc<Mutex<World>>;

const HEARTBEAT: Duration = Duration::from_millis(50);

fn election_timeout(rng: &mut StdRng) -> Duration {
    Duration::from_millis(rng.random_range(150..300))
}

async fn node(server: Server<Msg>, ctx: NodeContext, world: Shared, vote_twice: bool) {
    let me = server.pid();
    let nodes = server.peers().len() + 1;
    let majority = nodes / 2 + 1;
    // From the run's seed, so that a run replays exactly.
    let mut rng = ctx.rng();
    let mut disk = world
        .lock()
        .unwrap()
        .disks
        .get(&me)
        .copied()
        .unwrap_or_default();
    let mut role = Role::Follower;
    let mut leader: Option<Pid> = None;
    let mut votes: BTreeSet<Pid> = BTreeSet::new();
    let mut deadline = Instant::now() + election_timeout(&mut rng);
    // The sending half and an id source go with `send`; the inbox is this task's own.
    let ids = server.msg_ids();
    let (outbox, mut inbox, _node) = server.into_split();
    let send = |to: Pid, msg: Msg| {
        // A full outbox drops the message, as a lossy network would.
        let _ = outbox.try_send(Envelope::new(to, ids.next(), msg));
    };
    loop {
        {
            let mut w = world.lock().unwrap();
            w.disks.insert(me, disk);
            w.views.insert(me, (disk.term, role, leader));
        }
        // `biased`: ready branches are taken in a fixed order, so that a seed replays exactly.
        tokio::select! {
            biased;
            () = sleep_until(deadline) => {
                if role == Role::Leader {
                    send(BROADCAST, Msg::Heartbeat { term: disk.term });
                    deadline = Instant::now() + HEARTBEAT;
                } else {
                    disk.term += 1;
                    disk.voted_for = Some(me);
                    role = Role::Candidate;
                    leader = None;
                    votes = BTreeSet::from([me]);
                    send(BROADCAST, Msg::RequestVote { term: disk.term });
                    deadline = Instant::now() + election_timeout(&mut rng);
                }
            }
            env = inbox.recv() => {
                let Some(env) = env else { return };
                let from = env.pid;
                let term = match env.msg {
                    Msg::RequestVote { term } | Msg::Vote { term, .. } | Msg::Heartbeat { term } => term,
                };
                if term > disk.term {
                    disk = Disk { term, voted_for: None };
                    role = Role::Follower;
                    leader = None;
                }
                match env.msg {
                    Msg::RequestVote { term } => {
                        let granted = term == disk.term
                            && (vote_twice || disk.voted_for.is_none_or(|v| v == from));
                        if granted {
                            disk.voted_for = Some(from);
                            deadline = Instant::now() + election_timeout(&mut rng);
                        }
                        send(from, Msg::Vote { term: disk.term, granted });
                    }
                    Msg::Vote { term, granted } => {
                        if role == Role::Candidate && term == disk.term && granted {
                            votes.insert(from);
                            if votes.len() >= majority {
                                role = Role::Leader;
                                leader = Some(me);
                                let mut w = world.lock().unwrap();
                                let leaders = w.leaders.entry(term).or_default();
                                leaders.insert(me);
                                if leaders.len() > 1 {
                                    // Said the moment it happens, not at the next check.
                                    ctx.fail(format!("two leaders in term {term}: {leaders:?}"));
                                }
                                drop(w);
                                send(BROADCAST, Msg::Heartbeat { term });
                                deadline = Instant::now() + HEARTBEAT;
                            }
                        }
                    }
                    Msg::Heartbeat { term } => {
                        if term == disk.term && role != Role::Leader {
                            role = Role::Follower;
                            leader = Some(from);
                            deadline = Instant::now() + election_timeout(&mut rng);
                        }
                    }
                }
            }
        }
    }
}

/// Election safety: at most one leader per term, ever.
fn election_safety(world: &Shared) -> Result<(), String> {
    let w = world.lock().unwrap();
    match w.leaders.iter().find(|(_, l)| l.len() > 1) {
        Some((term, l)) => Err(format!("two leaders in term {term}: {l:?}")),
        None => Ok(()),
    }
}

/// Liveness: a leader that a majority of nodes follow in its term.
fn leader_followed(world: &Shared, nodes: usize) -> Result<(), String> {
    let w = world.lock().unwrap();
    let mut following: BTreeMap<(u64, Pid), usize> = BTreeMap::new();
    for (term, _, leader) in w.views.values() {
        if let Some(l) = leader {
            *following.entry((*term, *l)).or_default() += 1;
        }
    }
    match following.iter().find(|(_, n)| **n > nodes / 2) {
        Some(_) => Ok(()),
        None => Err(format!(
            "no leader followed by a majority; views: {:?}",
            w.views
        )),
    }
}

/// One seeded run (and, if it fails, the replays that shrink it); `Ok` with a summary, or
/// the failure report.
fn run_once(seed: u64, vote_twice: bool) -> Result<String, String> {
    const NODES: usize = 5;
    let builder = SimCluster::<Msg>::builder()
        .nodes(NODES)
        .seed(seed)
        // Shown beside each message in the history and on the diagram's arrows.
        .summary(|m: &Msg| format!("{m:?}"));
    let schedule = FaultSchedule {
        steps: 40,
        interval: Duration::from_millis(300),
        ..FaultSchedule::default()
    };
    // The world of the last run, for the summary.
    let last = Arc::new(Mutex::new(Shared::default()));
    let report = faults::explore::<Msg, _, _, _>(&builder, &schedule, || {
        // Fresh for every run: shrinking replays the run from scratch.
        let world = Shared::default();
        *last.lock().unwrap() = Arc::clone(&world);
        let logic = {
            let world = Arc::clone(&world);
            move |server, ctx| node(server, ctx, Arc::clone(&world), vote_twice)
        };
        let check = move |phase| {
            election_safety(&world)?;
            if phase == Phase::Final {
                leader_followed(&world, NODES)?;
            }
            Ok(())
        };
        (logic, check)
    })
    .map_err(|failure| failure.to_string())?;
    let terms = last.lock().unwrap().lock().unwrap().leaders.len();
    Ok(format!(
        "{} faults, leaders elected in {terms} terms, never two in one",
        report.faults.len()
    ))
}

fn main() {
    let vote_twice = std::env::args().any(|a| a == "--vote-twice");
    let seeds: Vec<u64> = match seed_from_env() {
        Some(seed) => vec![seed],
        None => (1..=u64::from(cases_or(20))).collect(),
    };
    for seed in seeds {
        match run_once(seed, vote_twice) {
            Ok(summary) => println!("seed {seed}: ok — {summary}"),
            Err(report) => {
                eprintln!("seed {seed}: FAILED\n{report}");
                std::process::exit(1);
            }
        }
    }
}
