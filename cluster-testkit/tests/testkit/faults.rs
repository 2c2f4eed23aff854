//! User node logic under a random fault schedule.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_core::{BROADCAST, Envelope, Pid, Server};
use cluster_testkit::faults::{self, FaultSchedule, Phase};
use cluster_testkit::{Event, Record, SimCluster};

type Values = Arc<Mutex<BTreeMap<Pid, u64>>>;

/// Gossip of a maximum: each node starts from its pid × 10, adopts any larger value it
/// hears, and broadcasts its value every 100 ms. Values survive crashes ("on disk").
async fn gossip(mut server: Server<u64>, values: Values) {
    let me = server.pid();
    let mut value = *values
        .lock()
        .unwrap()
        .entry(me)
        .or_insert(u64::from(me.unsigned_abs()) * 10);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        // `biased`: a fixed order among ready branches, so that a seed replays exactly.
        tokio::select! {
            biased;
            _ = tick.tick() => {
                let _ = server.outbox().try_send(Envelope::new(BROADCAST, 0, value));
            }
            env = server.inbox().recv() => {
                let Some(env) = env else { return };
                value = value.max(env.msg);
                values.lock().unwrap().insert(me, value);
            }
        }
    }
}

fn schedule() -> FaultSchedule {
    FaultSchedule {
        steps: 15,
        interval: Duration::from_millis(250),
        recovery: Duration::from_secs(2),
        ..FaultSchedule::default()
    }
}

/// Per node, what it routed and what arrived at it, in order. (The server's task picks among
/// ready branches at random, so records of different nodes may interleave differently from
/// run to run; each node's own streams do not.)
fn per_node(history: &[Record]) -> BTreeMap<(Pid, &'static str), Vec<String>> {
    let mut out: BTreeMap<(Pid, &'static str), Vec<String>> = BTreeMap::new();
    for r in history {
        let line = serde_json::to_string(&r.event).unwrap();
        match &r.event {
            Event::Routed { from, .. } => out.entry((*from, "routed")).or_default().push(line),
            Event::Arrived { at, .. } => out.entry((*at, "arrived")).or_default().push(line),
            _ => out.entry((0, "faults")).or_default().push(line),
        }
    }
    out
}

type Outcome = (
    Result<faults::FaultReport, String>,
    BTreeMap<(Pid, &'static str), Vec<String>>,
    BTreeMap<Pid, u64>,
);

async fn run(seed: u64, fail_at: Option<usize>) -> Outcome {
    let mut sim = SimCluster::<u64>::builder()
        .nodes(4)
        .seed(seed)
        .build()
        .await
        .unwrap();
    let values = Values::default();
    let logic = {
        let values = Arc::clone(&values);
        move |server, _seed| gossip(server, Arc::clone(&values))
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
    let history = sim.shutdown().await;
    let values = values.lock().unwrap().clone();
    (result, per_node(&history), values)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn gossip_converges_under_faults() {
    let (result, _, _) = run(5, None).await;
    let report = result.unwrap();
    assert!(report.faults.len() >= 15, "{:?}", report.faults);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_broken_user_invariant_is_reported_with_the_faults_and_seed() {
    let (result, _, _) = run(6, Some(3)).await;
    let report = result.unwrap_err();
    assert!(report.contains("planted failure at step 3"), "{report}");
    assert!(report.contains("CLUSTER_SEED=6"), "{report}");
    assert!(report.contains("faults applied:"), "{report}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_seed_replays_the_same_faults_and_history() {
    let (a, history_a, values_a) = run(7, None).await;
    let (b, history_b, values_b) = run(7, None).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.faults, b.faults);
    assert_eq!(values_a, values_b);
    assert_eq!(
        history_a.keys().collect::<Vec<_>>(),
        history_b.keys().collect::<Vec<_>>()
    );
    for (key, stream) in &history_a {
        assert!(
            stream == &history_b[key],
            "{key:?} differs between two runs of one seed"
        );
    }
    let (c, _, _) = run(8, None).await;
    assert_ne!(a.faults, c.unwrap().faults, "another seed, other faults");
}
