//! Peer events over real sockets (`Server::events`, see `cluster_core::events`): a peer
//! that stops is told `Down`, its restart `Restarted` then `Up`; and `wait_for_peers_up`
//! returns only once the peers reach the node, so that what they send it from then on is
//! delivered (not dropped as `unreachable` while they reconnect).

use std::time::{Duration, Instant};

use cluster_core::{DropReason, Envelope, Event, SendOutcome};
use cluster_testkit::net::{DEADLINE, expect::next_event};
use cluster_zmq::Backend;

use crate::nodes::{next, start_as, start_on_fresh_ports};

on_every_backend!(
    a_stopped_peer_is_down_and_its_restart_is_told_then_up,
    once_a_restarted_node_has_its_peers_up_their_messages_to_it_are_delivered,
);

async fn a_stopped_peer_is_down_and_its_restart_is_told_then_up(backend: Backend) {
    let (config, mut servers) =
        start_on_fresh_ports(backend, 2, cluster_testkit::net::fast_options(), &[1, 2]).await;
    let b = servers.pop().unwrap();
    let a = servers.pop().unwrap();
    let mut events = a.events();
    a.wait_for_peers_up(DEADLINE).await.unwrap();
    b.wait_for_peers_up(DEADLINE).await.unwrap();
    assert_eq!(a.up_peers(), [2]);
    let stopped = Instant::now();
    b.shutdown().await;
    // Up(2) may have been told before the subscription or after it.
    let mut got = next_event(&mut events).await;
    if got.0 == Event::Up(2) {
        got = next_event(&mut events).await;
    }
    assert_eq!(got.0, Event::Down(2));
    eprintln!(
        "{backend:?}: Down told {:?} after the peer's shutdown",
        got.1 - stopped
    );
    let b = start_as(backend, 2, &config, 1).await;
    let (restarted, _) = next_event(&mut events).await;
    assert_eq!(
        restarted,
        Event::Restarted {
            pid: 2,
            incarnation: 1
        }
    );
    assert_eq!(next_event(&mut events).await.0, Event::Up(2));
    b.wait_for_peers_up(DEADLINE).await.unwrap();
    // Healthy peers: nothing more for a while (ten heartbeat intervals).
    let quiet = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
    assert!(quiet.is_err(), "an event for a healthy peer: {quiet:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// The gap `wait_for_peers` leaves after a restart (the peers' connections to the node come
/// back after their reconnection back-off) is closed by `wait_for_peers_up`.
async fn once_a_restarted_node_has_its_peers_up_their_messages_to_it_are_delivered(
    backend: Backend,
) {
    let (config, mut servers) =
        start_on_fresh_ports(backend, 3, cluster_testkit::net::fast_options(), &[1, 2, 3]).await;
    for s in &servers {
        s.wait_for_peers_up(DEADLINE).await.unwrap();
    }
    let c = servers.pop().unwrap();
    c.shutdown().await;
    let mut c = start_as(backend, 3, &config, 1).await;
    let waited = Instant::now();
    c.wait_for_peers_up(DEADLINE).await.unwrap();
    eprintln!(
        "{backend:?}: restarted node up both ways after {:?}",
        waited.elapsed()
    );
    // At once: every peer's messages to it are delivered.
    for s in &servers {
        for i in 0..10 {
            let outcome = s
                .outbox()
                .send(Envelope::new(3, i, format!("{} {i}", s.pid())))
                .await
                .unwrap();
            assert_eq!(outcome, SendOutcome::Sent, "from {}", s.pid());
        }
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        got.push(next(&mut c).await.msg);
    }
    got.sort();
    let mut want: Vec<String> = (1..=2)
        .flat_map(|p| (0..10).map(move |i| format!("{p} {i}")))
        .collect();
    want.sort();
    assert_eq!(got, want);
    for s in &servers {
        let dropped = s.stats().peers[&3].dropped_to.get(DropReason::Unreachable);
        assert_eq!(dropped, 0, "from {}", s.pid());
    }
    for s in servers {
        s.shutdown().await;
    }
    c.shutdown().await;
}
