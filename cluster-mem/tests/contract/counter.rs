//! A replicated counter that uses peer events and membership, under random faults drawn
//! from a seed: the example, with membership (the test kit's
//! `examples/replicated_counter.rs` runs the same logic on a fixed cluster under the test
//! kit's fault schedules).
//!
//! Each node counts its own increments (a grow-only counter, merged by taking the larger
//! count) and sends its counts to the peers that are `Up`, and at once to a peer that comes
//! up or restarts. While crashes, restarts and partitions are drawn, node 4 joins the
//! running cluster and node 2 is removed. Checked: a node's view of a count never goes
//! down; at the end every member holds every member's own count, and the members agree on
//! the membership.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_core::{Config, Envelope, Event, Member, Pid, Server, ServerBuilder};
use cluster_mem::MemNetwork;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

type Counts = BTreeMap<Pid, u64>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State(Counts);

/// What survives a crash (a node's disk): its counts and its membership records.
#[derive(Default)]
struct Disk {
    counts: Counts,
    members: Vec<Member>,
    /// A count that went down, if any node saw one.
    violation: Option<String>,
}

type Disks = Arc<Mutex<BTreeMap<Pid, Disk>>>;

/// Nodes count for this long (virtual time) from their first start.
const COUNTING: Duration = Duration::from_secs(6);

async fn node(server: Server<State>, disks: Disks, stop_counting: tokio::time::Instant) {
    let me = server.pid();
    let mut events = server.events();
    let mut up: BTreeSet<Pid> = server.up_peers().into_iter().collect();
    let mut counts = disks.lock().unwrap().entry(me).or_default().counts.clone();
    let monitor = server.monitor();
    let (outbox, mut inbox, _handle) = server.into_split();
    let send = |to: Pid, counts: &Counts| {
        let _ = outbox.try_send(Envelope::new(to, 0, State(counts.clone())));
    };
    for &p in &up {
        send(p, &counts);
    }
    let mut next = tokio::time::Instant::now() + Duration::from_millis(30);
    loop {
        {
            let mut d = disks.lock().unwrap();
            let disk = d.entry(me).or_default();
            for (owner, n) in &counts {
                if disk.counts.get(owner).is_some_and(|was| n < was) {
                    disk.violation = Some(format!("node {me}: count of {owner} went down"));
                }
            }
            disk.counts = counts.clone();
            disk.members = monitor.members();
        }
        tokio::select! {
            biased;
            event = events.recv() => {
                let Some(Ok(event)) = event else { return };
                match event.event {
                    Event::Up(p) => {
                        up.insert(p);
                        send(p, &counts);
                    }
                    Event::Restarted { pid, .. } if up.contains(&pid) => send(pid, &counts),
                    Event::Down(p) | Event::Left(p) => {
                        up.remove(&p);
                    }
                    _ => {}
                }
            }
            env = inbox.recv() => {
                let Some(env) = env else { return };
                for (owner, n) in env.msg.0 {
                    let c = counts.entry(owner).or_default();
                    *c = (*c).max(n);
                }
            }
            () = tokio::time::sleep_until(next), if next < stop_counting => {
                *counts.entry(me).or_default() += 1;
                for &p in &up {
                    send(p, &counts);
                }
                next = tokio::time::Instant::now() + Duration::from_millis(30);
            }
        }
    }
}

struct Running {
    server_task: JoinHandle<()>,
}

/// Starts `pid` with the membership records on its disk (as the peer catalog does).
fn start(net: &MemNetwork, config: &Config, pid: Pid, disks: &Disks) -> Server<State> {
    let members = disks
        .lock()
        .unwrap()
        .get(&pid)
        .map(|d| d.members.clone())
        .unwrap_or_default();
    ServerBuilder::new(pid, config.clone())
        .members(members)
        .build(net.transport(pid).unwrap())
        .unwrap()
}

fn spawn(server: Server<State>, disks: &Disks, stop: tokio::time::Instant) -> Running {
    Running {
        server_task: tokio::spawn(node(server, Arc::clone(disks), stop)),
    }
}

async fn run(seed: u64) -> Result<(), String> {
    let three = Config::local(3, 17600).unwrap();
    let four = Config::local(4, 17600).unwrap();
    let net = MemNetwork::new(&three, seed);
    net.add_node(4).unwrap();
    let disks: Disks = Arc::default();
    let stop = tokio::time::Instant::now() + COUNTING;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut running: BTreeMap<Pid, Running> = BTreeMap::new();
    for pid in 1..=3 {
        let server = start(&net, &three, pid, &disks);
        running.insert(pid, spawn(server, &disks, stop));
    }
    let mut removed = false;
    for step in 0..24 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        match step {
            6 => {
                // Node 4 joins the running cluster.
                let server = start(&net, &four, 4, &disks);
                let joiner = tokio::spawn(async move {
                    let _ = server.join(Duration::from_secs(3)).await;
                    server
                });
                let server = joiner.await.unwrap();
                running.insert(4, spawn(server, &disks, stop));
                continue;
            }
            12 => {
                // Node 2 leaves, as `cluster leave` does: stopped, started again only to ask
                // the members to let it go, stopped for good.
                if let Some(r) = running.remove(&2) {
                    r.server_task.abort();
                }
                net.crash(2);
                net.restart(2).unwrap();
                let server = start(&net, &three, 2, &disks);
                // Healed first, so that the request can get through: a leave cut off from
                // every member cannot happen (its `leave` says so).
                net.heal();
                if let Err(e) = server.leave(Duration::from_secs(3)).await {
                    return Err(format!("seed {seed}: node 2 could not leave: {e}"));
                }
                server.shutdown().await;
                net.crash(2);
                removed = true;
                continue;
            }
            _ => {}
        }
        // A random fault among the members running (never node 2 once removed).
        let pids: Vec<Pid> = running.keys().copied().collect();
        match rng.random_range(0..4) {
            0 => {
                let a = pids[rng.random_range(0..pids.len())];
                let others: Vec<Pid> = pids.iter().copied().filter(|p| *p != a).collect();
                net.partition(&[a], &others);
            }
            1 => net.heal(),
            2 if pids.len() > 2 => {
                let victim = pids[rng.random_range(0..pids.len())];
                if let Some(r) = running.remove(&victim) {
                    r.server_task.abort();
                }
                net.crash(victim);
                net.restart(victim).unwrap();
                let config = if victim == 4 { &four } else { &three };
                let server = start(&net, config, victim, &disks);
                running.insert(victim, spawn(server, &disks, stop));
            }
            _ => {}
        }
    }
    net.heal();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let d = disks.lock().unwrap();
    if let Some(v) = d.values().find_map(|disk| disk.violation.clone()) {
        return Err(v);
    }
    let members: Vec<Pid> = running.keys().copied().collect();
    let want: Counts = members
        .iter()
        .map(|p| (*p, d[p].counts.get(p).copied().unwrap_or(0)))
        .collect();
    for p in &members {
        let holds = &d[p].counts;
        for (owner, n) in &want {
            if holds.get(owner).copied().unwrap_or(0) < *n {
                return Err(format!(
                    "seed {seed}: node {p} is behind on {owner} ({holds:?}, want {want:?})"
                ));
            }
        }
        let present: Vec<Pid> = d[p]
            .members
            .iter()
            .filter(|m| m.present)
            .map(|m| m.pid)
            .collect();
        let expect: Vec<Pid> = if removed {
            vec![1, 3, 4]
        } else {
            vec![1, 2, 3, 4]
        };
        if present != expect {
            return Err(format!("seed {seed}: node {p} holds members {present:?}"));
        }
    }
    for r in running.into_values() {
        r.server_task.abort();
    }
    Ok(())
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_counter_on_events_converges_while_a_node_joins_and_another_leaves_under_faults() {
    for seed in 1..=20 {
        if let Err(e) = run(seed).await {
            panic!("{e}");
        }
    }
}
