//! Peer events across processes: a node killed with SIGKILL is told `Down` by every peer
//! (in this process through `Server::events`, in a `cluster node` child as a printed
//! event), within the heartbeat timeout; its restart is told `Restarted` then `Up`. The
//! detection latency is printed (a measurement, not asserted: see the README).

use std::time::Instant;

use cluster::Event;
use cluster::zmq::Backend;
use cluster_testkit::net::{DEADLINE, expect::next_event};

use crate::node::{Node, start_three, wait_until};

on_both_backends!(kill_9_is_told_down_by_every_peer_and_the_restart_restarted_then_up);

/// The heartbeat timeout of this test's config.
const TIMEOUT_MS: u64 = 600;

async fn kill_9_is_told_down_by_every_peer_and_the_restart_restarted_then_up(backend: Backend) {
    let (config, a, mut b, mut c) = start_three(
        backend,
        &format!(
            r#""heartbeat_interval_ms":100,"heartbeat_timeout_ms":{TIMEOUT_MS},"linger_ms":200"#
        ),
    )
    .await;
    let mut events = a.events();
    a.wait_for_peers_up(DEADLINE).await.unwrap();
    let up = |pid: u64| {
        move |e: &serde_json::Value| e["event"] == "peer" && e["kind"] == "up" && e["pid"] == pid
    };
    // In either order (waiting for a line skips those before it).
    wait_until("node 2 to tell nodes 1 and 3 up", || {
        let events = b.events();
        [1, 3].iter().all(|&pid| events.iter().any(|e| up(pid)(e)))
    })
    .await;
    // Node 1's Ups may come before or after its subscription: skip them.
    let killed = Instant::now();
    c.kill();
    let (down, at) = loop {
        let (e, at) = next_event(&mut events).await;
        if !matches!(e, Event::Up(_)) {
            break (e, at);
        }
    };
    assert_eq!(down, Event::Down(3));
    let in_process = at - killed;
    b.wait_event("node 2 to tell node 3 down", |e| {
        e["event"] == "peer" && e["kind"] == "down" && e["pid"] == 3
    })
    .await;
    let in_child = killed.elapsed();
    eprintln!(
        "{backend}: kill -9 -> Down: node 1 (in process) {in_process:?}, node 2 (child, \
         printed and read) within {in_child:?}; heartbeat timeout {TIMEOUT_MS} ms"
    );
    // No Down for the healthy peer, at either node.
    assert!(
        !b.events()
            .iter()
            .any(|e| e["kind"] == "down" && e["pid"] == 1)
    );

    let c = Node::spawn(backend, &config.path, 3).await;
    let restarted = Event::Restarted {
        pid: 3,
        incarnation: c.incarnation,
    };
    assert_eq!(next_event(&mut events).await.0, restarted);
    assert_eq!(next_event(&mut events).await.0, Event::Up(3));
    b.wait_event("node 2 to tell node 3 restarted", |e| {
        e["event"] == "peer" && e["kind"] == "restarted" && e["incarnation"] == c.incarnation
    })
    .await;
    b.wait_event("node 2 to tell node 3 up again", up(3)).await;
    let told = |kind: &str, pid: u64| {
        b.events()
            .iter()
            .filter(|e| e["event"] == "peer" && e["kind"] == kind && e["pid"] == pid)
            .count()
    };
    assert_eq!(
        (told("down", 3), told("restarted", 3), told("up", 3)),
        (1, 1, 2)
    );
    assert_eq!((told("down", 1), told("restarted", 1)), (0, 0));
    a.wait_for_peers_up(DEADLINE).await.unwrap();
    assert!(events.try_recv().is_none(), "nothing more at node 1");
    a.shutdown().await;
}
