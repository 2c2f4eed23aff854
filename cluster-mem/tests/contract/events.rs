//! Peer events in simulation (`Server::events`, see `cluster_core::events`): `Up` once
//! messages flow both ways, `Down` on a crash or a partition, `Restarted` once per restart,
//! nothing for a healthy peer, and the same events at the same (virtual) times for the
//! same run.

use std::time::Duration;

use cluster_core::{Config, Envelope, Event, Events, Pid, SendOutcome, Server};
use cluster_mem::MemNetwork;

/// The events told so far, each with the node that told it and its uptime.
fn told(pid: Pid, events: &mut Events, log: &mut Vec<(Pid, Event, Duration)>) {
    while let Some(e) = events.try_recv() {
        let e = e.expect("no subscription falls behind here");
        log.push((pid, e.event, e.uptime));
    }
}

/// Lets the nodes run for `d` of virtual time.
async fn run_for(d: Duration) {
    tokio::time::sleep(d).await;
}

struct Node {
    server: Server<u32>,
    events: Events,
}

fn start(net: &MemNetwork, config: &Config, pid: Pid) -> Node {
    let server = Server::with_transport(pid, config.clone(), net.transport(pid).unwrap()).unwrap();
    let events = server.events();
    Node { server, events }
}

/// One run: start, a crash and restart of 3, a partition of 1 from the others, a heal.
/// Returns every event told, in order, per observer.
async fn scenario() -> Vec<(Pid, Event, Duration)> {
    let config = Config::local(3, 17300).unwrap();
    let beat = config.options().heartbeat_interval;
    let net = MemNetwork::new(&config, 7);
    let mut nodes: Vec<Node> = (1..=3).map(|p| start(&net, &config, p)).collect();
    let mut log = Vec::new();
    let drain = |nodes: &mut Vec<Node>, log: &mut Vec<_>| {
        for n in nodes.iter_mut() {
            let pid = n.server.pid();
            told(pid, &mut n.events, log);
        }
    };
    for n in &nodes {
        n.server
            .wait_for_peers_up(Duration::from_secs(10))
            .await
            .expect("every peer up");
    }
    drain(&mut nodes, &mut log);
    let ups = |log: &[(Pid, Event, Duration)], at: Pid| {
        let mut v: Vec<_> = log
            .iter()
            .filter(|(p, _, _)| *p == at)
            .map(|(_, e, _)| *e)
            .collect();
        v.sort_by_key(Event::pid);
        v
    };
    for pid in 1..=3 {
        let want: Vec<_> = (1..=3).filter(|p| *p != pid).map(Event::Up).collect();
        assert_eq!(ups(&log, pid), want, "node {pid} at start: {log:?}");
    }
    let begin = log.len();

    // A crash: the others tell Down(3), once; nothing else.
    net.crash(3);
    run_for(beat * 3).await;
    drain(&mut nodes, &mut log);
    let crash: Vec<_> = log[begin..].iter().map(|(p, e, _)| (*p, *e)).collect();
    assert_eq!(crash, [(1, Event::Down(3)), (2, Event::Down(3))]);

    // Its restart: the others tell Restarted then Up, once each; the new node tells Up.
    let incarnation = net.restart(3).unwrap();
    nodes.pop();
    nodes.push(start(&net, &config, 3));
    nodes[2]
        .server
        .wait_for_peers_up(Duration::from_secs(10))
        .await
        .expect("the restarted node has every peer up");
    run_for(beat * 3).await;
    drain(&mut nodes, &mut log);
    let mut restart: Vec<_> = log[begin + crash.len()..]
        .iter()
        .map(|(p, e, _)| (*p, *e))
        .collect();
    restart.sort_by_key(|(p, _)| *p);
    let restarted = Event::Restarted {
        pid: 3,
        incarnation,
    };
    assert_eq!(
        restart,
        [
            (1, restarted),
            (1, Event::Up(3)),
            (2, restarted),
            (2, Event::Up(3)),
            (3, Event::Up(1)),
            (3, Event::Up(2)),
        ],
        "{log:?}"
    );
    // Once up both ways, a message to the restarted node is delivered.
    let outcome = nodes[0]
        .server
        .outbox()
        .send(Envelope::new(3, 1, 7))
        .await
        .unwrap();
    assert_eq!(outcome, SendOutcome::Sent);
    let got = tokio::time::timeout(Duration::from_secs(10), nodes[2].server.inbox().recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.pid, got.msg), (1, 7));

    // A partition of 1 from 2 and 3: each side tells Down for the other; a heal, Up.
    let before = log.len();
    net.partition(&[1], &[2, 3]);
    run_for(beat * 3).await;
    net.heal();
    run_for(beat * 3).await;
    drain(&mut nodes, &mut log);
    let mut cut: Vec<_> = log[before..].iter().map(|(p, e, _)| (*p, *e)).collect();
    cut.sort_by_key(|(p, e)| (*p, e.pid(), matches!(e, Event::Up(_))));
    assert_eq!(
        cut,
        [
            (1, Event::Down(2)),
            (1, Event::Up(2)),
            (1, Event::Down(3)),
            (1, Event::Up(3)),
            (2, Event::Down(1)),
            (2, Event::Up(1)),
            (3, Event::Down(1)),
            (3, Event::Up(1)),
        ],
        "{log:?}"
    );
    // A quiet while with healthy peers tells nothing.
    let before = log.len();
    run_for(beat * 20).await;
    drain(&mut nodes, &mut log);
    assert_eq!(log.len(), before, "no event for healthy peers: {log:?}");
    log
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn crashes_restarts_and_partitions_are_told_and_the_same_run_tells_the_same() {
    let first = scenario().await;
    let second = scenario().await;
    assert_eq!(first, second, "deterministic, times included");
    // Down is told at once in simulation: the crash is the network's own knowledge.
    assert!(first.iter().any(|(_, e, _)| *e == Event::Down(3)));
}
