//! User node logic under a random fault schedule, as a user meets it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_core::{BROADCAST, Envelope, Incarnation, Pid, Server};
use cluster_testkit::faults::{self, Fault, FaultSchedule, Phase};
use cluster_testkit::{NodeContext, Op, SimCluster, to_json_lines};
use rand::Rng;
use tokio::time::{Instant, sleep_until};

type Values = Arc<Mutex<BTreeMap<Pid, u64>>>;

/// Gossip of a maximum: each node starts from its pid × 10, adopts any larger value it
/// hears, and broadcasts its value every 100 ms (± a jitter from its seed). Values survive
/// crashes ("on disk").
pub(crate) async fn gossip(mut server: Server<u64>, ctx: NodeContext, values: Values) {
    let me = server.pid();
    let mut rng = ctx.rng();
    let mut value = *values
        .lock()
        .unwrap()
        .entry(me)
        .or_insert(u64::from(me.unsigned_abs()) * 10);
    let mut next = Instant::now() + Duration::from_millis(rng.random_range(50..150));
    loop {
        // `biased`: a fixed order among ready branches, so that a seed replays exactly.
        tokio::select! {
            biased;
            () = sleep_until(next) => {
                let _ = server.outbox().try_send(Envelope::new(BROADCAST, 0, value));
                next = Instant::now() + Duration::from_millis(rng.random_range(50..150));
            }
            env = server.inbox().recv() => {
                let Some(env) = env else { return };
                value = value.max(env.msg);
                values.lock().unwrap().insert(me, value);
            }
        }
    }
}

pub(crate) fn schedule() -> FaultSchedule {
    FaultSchedule {
        steps: 15,
        interval: Duration::from_millis(250),
        recovery: Duration::from_secs(2),
        ..FaultSchedule::default()
    }
}

/// A run of [`gossip`] on four nodes, its outcome and whole history (JSON lines).
pub(crate) async fn gossip_run(
    seed: u64,
    fail_at: Option<usize>,
) -> (Result<faults::FaultReport, String>, String) {
    let mut sim = SimCluster::<u64>::builder()
        .nodes(4)
        .seed(seed)
        .summary(|v: &u64| format!("max {v}"))
        .build()
        .await
        .unwrap();
    let values = Values::default();
    let logic = {
        let values = Arc::clone(&values);
        move |server, ctx| gossip(server, ctx, Arc::clone(&values))
    };
    let result = faults::run(&mut sim, logic, &schedule(), |phase| {
        if let (Phase::Step(n), Some(at)) = (phase, fail_at)
            && n == at
        {
            return Err(format!("planted failure at step {n}"));
        }
        if phase == Phase::Final {
            let v = values.lock().unwrap();
            if v.values().any(|x| *x != 40) {
                return Err(format!("replicas disagree after recovery: {v:?}"));
            }
        }
        Ok(())
    })
    .await
    .map_err(|f| f.to_string());
    let history = sim.finish().await;
    sim.shutdown().await;
    (result, to_json_lines(&history))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn gossip_converges_under_faults() {
    let (result, history) = gossip_run(5, None).await;
    let report = result.unwrap();
    assert!(report.faults.len() >= 10, "{:?}", report.faults);
    assert!(history.contains(r#""event":"arrived""#));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_broken_user_invariant_is_reported_with_the_faults_diagram_and_seed() {
    let (result, _) = gossip_run(6, Some(3)).await;
    let report = result.unwrap_err();
    assert!(report.contains("planted failure at step 3"), "{report}");
    assert!(report.contains("CLUSTER_SEED=6"), "{report}");
    assert!(report.contains("faults applied:"), "{report}");
    assert!(
        report.contains("space-time diagram (the end of the run):"),
        "{report}"
    );
    let html = report
        .lines()
        .find_map(|l| l.strip_prefix("space-time diagram (open in a browser): "))
        .unwrap_or_else(|| panic!("no diagram file in:\n{report}"));
    let page = std::fs::read_to_string(html).unwrap();
    assert!(page.starts_with("<!doctype html>") && page.contains("<svg"));
}

/// The whole history, not per-node streams: every record, in the same order. Each run on
/// a runtime of its own, as every simulated run should be (a runtime's timers remember
/// earlier runs, and order timers due at the same instant by that memory).
#[test]
fn a_seed_replays_the_same_faults_and_the_same_whole_history() {
    let run = |seed| faults::runtime().unwrap().block_on(gossip_run(seed, None));
    let (a, history_a) = run(7);
    let (b, history_b) = run(7);
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.faults, b.faults);
    assert!(
        history_a == history_b,
        "two runs of one seed differ: {}",
        crate::replay::first_difference(&history_a, &history_b)
    );
    let (c, _) = run(8);
    assert_ne!(a.faults, c.unwrap().faults, "another seed, other faults");
}

/// Node 2 panics 1.3 s into the run, between two checks: the run fails then, naming the
/// node and the panic, with the seed.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panic_in_node_logic_fails_the_run_at_once_with_the_seed() {
    let mut sim = SimCluster::<u64>::builder()
        .nodes(3)
        .seed(12)
        .build()
        .await
        .unwrap();
    let start = Instant::now();
    let logic = move |server: Server<u64>, ctx: NodeContext| async move {
        let _server = server;
        sleep_until(start + Duration::from_millis(1300)).await;
        assert!(ctx.pid() != 2 || ctx.restarted(), "node 2 lost its state");
        std::future::pending::<()>().await;
    };
    let no_crashes = FaultSchedule {
        crashes: false,
        ..schedule()
    };
    let failure = faults::run(&mut sim, logic, &no_crashes, |_| Ok(()))
        .await
        .unwrap_err();
    let node = failure.node.clone().expect("a node failure");
    assert_eq!((node.pid, node.incarnation, node.panicked), (2, 1, true));
    assert!(node.message.contains("node 2 lost its state"), "{node}");
    assert_eq!(failure.at, Duration::from_millis(1300), "simulated time");
    assert_eq!(failure.phase, Phase::Step(5));
    let report = failure.to_string();
    assert!(
        report.contains("node 2 (incarnation 1) panicked"),
        "{report}"
    );
    assert!(report.contains("CLUSTER_SEED=12"), "{report}");
    assert!(
        report.contains("PANIC 2 (incarnation 1)"),
        "the diagram shows it:\n{report}"
    );
    sim.shutdown().await;
}

/// A violation that appears and is gone again between two checks: the checks never see
/// it, the node that sees it reports it, and the run fails at that simulated instant.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_violation_reported_by_a_node_fails_the_run_between_checks() {
    let mut sim = SimCluster::<u64>::builder()
        .nodes(3)
        .seed(13)
        .build()
        .await
        .unwrap();
    let broken = Arc::new(Mutex::new(false));
    let start = Instant::now();
    let logic = {
        let broken = Arc::clone(&broken);
        move |server: Server<u64>, ctx: NodeContext| {
            let broken = Arc::clone(&broken);
            async move {
                let _server = server;
                if ctx.pid() == 1 {
                    sleep_until(start + Duration::from_millis(1300)).await;
                    *broken.lock().unwrap() = true;
                    ctx.fail("two leaders in term 4");
                    sleep_until(start + Duration::from_millis(1400)).await;
                    *broken.lock().unwrap() = false;
                }
                std::future::pending::<()>().await;
            }
        }
    };
    let checks = Arc::new(Mutex::new(0));
    let no_crashes = FaultSchedule {
        crashes: false,
        ..schedule()
    };
    let failure = faults::run(&mut sim, logic, &no_crashes, {
        let (broken, checks) = (Arc::clone(&broken), Arc::clone(&checks));
        move |_| {
            *checks.lock().unwrap() += 1;
            match *broken.lock().unwrap() {
                true => Err("seen by a check".into()),
                false => Ok(()),
            }
        }
    })
    .await
    .unwrap_err();
    assert_eq!(
        failure.message,
        "node 1 (incarnation 1) reported a violation: two leaders in term 4"
    );
    assert_eq!(failure.at, Duration::from_millis(1300), "simulated time");
    assert_eq!(failure.phase, Phase::Step(5));
    assert_eq!(
        *checks.lock().unwrap(),
        5,
        "checks ran every 0.25 s until 1.25 s"
    );
    sim.shutdown().await;
}

/// Without `faults::run`, a node's panic is not lost either: shutting the cluster down
/// fails the test, with the seed.
#[tokio::test(flavor = "current_thread", start_paused = true)]
#[should_panic(expected = "node 2 (incarnation 1) panicked: boom\ncluster-testkit: seed 14")]
async fn a_panic_in_node_logic_fails_the_test_at_shutdown() {
    let mut sim = SimCluster::<u64>::builder()
        .nodes(2)
        .seed(14)
        .build()
        .await
        .unwrap();
    sim.spawn_nodes(|server: Server<u64>, ctx: NodeContext| async move {
        let _server = server;
        tokio::time::sleep(Duration::from_millis(10)).await;
        if ctx.pid() == 2 {
            panic!("boom");
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    sim.shutdown().await;
}

/// Every start is told its incarnation (the server's, from 1 as on a real node) and
/// whether it is a restart.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn node_logic_is_told_its_incarnation_and_whether_it_restarted() {
    let mut sim = SimCluster::<u64>::builder()
        .nodes(5)
        .seed(15)
        .build()
        .await
        .unwrap();
    type Starts = Arc<Mutex<Vec<(Pid, Incarnation, Incarnation, bool)>>>;
    let starts = Starts::default();
    let logic = {
        let starts = Arc::clone(&starts);
        move |server: Server<u64>, ctx: NodeContext| {
            starts.lock().unwrap().push((
                ctx.pid(),
                ctx.incarnation(),
                server.incarnation(),
                ctx.restarted(),
            ));
            async move {
                let _server = server;
                std::future::pending::<()>().await;
            }
        }
    };
    let report = faults::run(&mut sim, logic, &schedule(), |_| Ok(()))
        .await
        .unwrap();
    let starts = starts.lock().unwrap().clone();
    let restarts = report
        .faults
        .iter()
        .filter(|f| matches!(f.op, Op::Restart(_)))
        .count();
    assert!(restarts > 0, "{:?}", report.faults);
    assert_eq!(starts.len(), 5 + restarts);
    let mut last: BTreeMap<Pid, Incarnation> = BTreeMap::new();
    for (pid, told, server, restarted) in starts {
        assert_eq!(told, server, "the context and the server agree");
        assert_eq!(restarted, last.contains_key(&pid), "node {pid}");
        assert_eq!(told, last.get(&pid).map_or(1, |i| i + 1), "node {pid}");
        last.insert(pid, told);
    }
    sim.shutdown().await;
}

/// Nodes that only wait: the schedule alone is under test.
async fn idle(server: Server<u64>, _ctx: NodeContext) {
    let _server = server;
    std::future::pending::<()>().await;
}

/// Every fault drawn changes something: no crash of a node that is down, no restart of
/// one that is up, no partition or cut of links already cut, no heal with nothing to heal,
/// no loss on a cut link.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_fault_drawn_is_a_no_op() {
    let schedule = FaultSchedule {
        steps: 40,
        interval: Duration::from_millis(10),
        recovery: Duration::from_millis(10),
        ..FaultSchedule::default()
    };
    let mut drawn = 0;
    for seed in 1..=25 {
        let mut sim = SimCluster::<u64>::builder()
            .nodes(4)
            .seed(seed)
            .build()
            .await
            .unwrap();
        let report = faults::run(&mut sim, idle, &schedule, |_| Ok(()))
            .await
            .unwrap();
        sim.shutdown().await;
        let mut down: BTreeSet<Pid> = BTreeSet::new();
        let mut blocked: BTreeSet<(Pid, Pid)> = BTreeSet::new();
        let mut loss: BTreeMap<(Pid, Pid), f64> = BTreeMap::new();
        for Fault { op, phase, .. } in &report.faults {
            let why = format!("seed {seed}, {phase}: {op} changes nothing");
            match op {
                Op::Crash(p) => assert!(down.insert(*p), "{why}"),
                Op::Restart(p) => assert!(down.remove(p), "{why}"),
                Op::Partition(a, b) => {
                    let mut cut_any = false;
                    for &x in a {
                        for &y in b.iter().filter(|y| **y != x) {
                            cut_any |= blocked.insert((x, y)) | blocked.insert((y, x));
                        }
                    }
                    assert!(cut_any, "{why}");
                }
                Op::Cut(a, b) => assert!(a != b && blocked.insert((*a, *b)), "{why}"),
                Op::Heal => {
                    assert!(!blocked.is_empty() || !loss.is_empty(), "{why}");
                    blocked.clear();
                    loss.clear();
                }
                Op::SetLoss(a, b, p) => {
                    assert!(a != b && !blocked.contains(&(*a, *b)), "{why}");
                    assert_ne!(loss.insert((*a, *b), *p), Some(*p), "{why}");
                }
                other => panic!("not a fault: {other}"),
            }
            drawn += 1;
        }
    }
    assert!(drawn > 25 * 30, "{drawn} faults drawn");
}

/// Node 1 broadcasts every 50 ms; node 2, restarted, expects to hear from it within
/// 300 ms — a bug under a cut, a partition or a crash of node 1.
async fn hears_node_one_after_a_restart(mut server: Server<u64>, ctx: NodeContext) {
    if ctx.pid() == 1 {
        loop {
            let _ = server.outbox().try_send(Envelope::new(BROADCAST, 0, 1));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if ctx.pid() == 2 && ctx.restarted() {
        let heard = tokio::time::timeout(Duration::from_millis(300), async {
            while let Some(env) = server.inbox().recv().await {
                if env.pid == 1 {
                    return;
                }
            }
        })
        .await;
        if heard.is_err() {
            ctx.fail("restarted without hearing from node 1");
        }
    }
    std::future::pending::<()>().await;
}

fn no_check(_: Phase) -> Result<(), String> {
    Ok(())
}

/// `explore` finds a seed that breaks [`hears_node_one_after_a_restart`] and shrinks the
/// schedule to the faults that matter; replaying those faults fails the same way.
#[test]
fn a_failure_of_user_logic_shrinks_to_the_faults_that_matter() {
    let schedule = FaultSchedule {
        steps: 25,
        interval: Duration::from_millis(400),
        max_down: Some(2),
        ..FaultSchedule::default()
    };
    let setup = || (hears_node_one_after_a_restart, no_check);
    let (seed, failure) = (1..=40)
        .find_map(|seed| {
            let builder = SimCluster::<u64>::builder().nodes(4).seed(seed);
            faults::explore::<u64, _, _, _>(&builder, &schedule, setup)
                .err()
                .map(|f| (seed, f))
        })
        .expect("some seed breaks node 2");
    let shrunk = failure.shrunk.expect("shrunk");
    let steps: Vec<&Op> = failure
        .faults
        .iter()
        .filter(|f| f.phase != Phase::Final)
        .map(|f| &f.op)
        .collect();
    assert!(
        shrunk.from > steps.len() && steps.len() <= 3,
        "seed {seed}: {} fault steps shrunk to {}:\n{failure}",
        shrunk.from,
        steps.len()
    );
    assert!(steps.contains(&&Op::Restart(2)), "{failure}");
    assert!(
        failure.message.contains("restarted without hearing"),
        "{failure}"
    );
    // The shrunk schedule, replayed on a fresh cluster, fails the same way.
    let rt = faults::runtime().unwrap();
    let again = rt.block_on(async {
        let mut sim = SimCluster::<u64>::builder()
            .nodes(4)
            .seed(seed)
            .build()
            .await
            .unwrap();
        let (logic, check) = setup();
        let result = faults::replay(&mut sim, logic, &schedule, &failure.faults, check).await;
        sim.shutdown().await;
        result
    });
    let again = again.unwrap_err();
    assert_eq!(again.message, failure.message);
    assert_eq!(again.faults, failure.faults);
}
