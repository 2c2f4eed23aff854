//! A slow wide-area link: every connection between three nodes goes through a relay
//! (`cluster_testkit::net::Relay`) that delays it 20 ± 5 ms one way. FIFO per pair and
//! drop-on-unreachable hold, every message sent while all are up is delivered, and no peer
//! is ever declared down while it is up.
//!
//! With the quick heartbeat options (`net::fast_options`: a ping every 100 ms, 600 ms
//! timeout), not the defaults (500 ms, 2 s): the quick ones leave the least margin over a
//! ~50 ms round trip, so they are where a false "down" would show, and they keep the
//! crash phase short.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cluster_core::{BROADCAST, DropReason, Envelope, Pid, Server, ServerMonitor};
use cluster_testkit::net::{self, DEADLINE, Shape};
use cluster_zmq::Backend;
use tokio::task::JoinHandle;

use crate::nodes::{drain_until_marker, next, start_as, start_relayed, wait_connected, wait_until};

on_every_backend!(over_a_slow_link_fifo_and_drop_on_unreachable_hold_and_nobody_is_falsely_down);

const LATENCY: Duration = Duration::from_millis(20);
const JITTER: Duration = Duration::from_millis(5);
/// Broadcasts each node sends, one every `PACE`: traffic for several heartbeat timeouts.
const ROUNDS: i64 = 300;
const PACE: Duration = Duration::from_millis(5);

/// Records every peer that leaves `monitor`'s connection set while it runs.
fn watch_for_downs(
    monitor: ServerMonitor,
    peers: Vec<Pid>,
) -> (Arc<Mutex<Vec<Pid>>>, JoinHandle<()>) {
    let downs = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&downs);
    let mut rx = monitor.connection_changes();
    let task = tokio::spawn(async move {
        // A false "down" lasts at least a reconnection (≥ 100 ms): no change is missed.
        while rx.changed().await.is_ok() {
            let set = rx.borrow_and_update().clone();
            let gone = peers.iter().filter(|p| !set.contains(p));
            seen.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(gone);
        }
    });
    (downs, task)
}

/// Receives on `server` until it holds `ROUNDS` messages from each of `from`, and checks
/// each sender's come in order, every one of them.
async fn receive_all_in_order(server: &mut Server<String>, from: &[Pid]) {
    let me = server.pid();
    let mut got: BTreeMap<Pid, Vec<i64>> = BTreeMap::new();
    let done = |got: &BTreeMap<Pid, Vec<i64>>| {
        from.iter()
            .all(|p| got.get(p).map_or(0, Vec::len) == ROUNDS as usize)
    };
    while !done(&got) {
        let env = net::recv_within(me, server.inbox(), DEADLINE)
            .await
            .unwrap();
        let i: i64 = env.msg.rsplit_once('-').unwrap().1.parse().unwrap();
        got.entry(env.pid).or_default().push(i);
    }
    for (sender, seq) in &got {
        let want: Vec<i64> = (0..ROUNDS).collect();
        assert_eq!(
            seq, &want,
            "node {me} from node {sender}: out of order or lost"
        );
    }
}

async fn over_a_slow_link_fifo_and_drop_on_unreachable_hold_and_nobody_is_falsely_down(
    backend: Backend,
) {
    let shape = Shape::wan(LATENCY, JITTER);
    let (relayed, nodes) = start_relayed(backend, 3, net::fast_options(), shape, |_| true).await;
    let [mut a, mut b, mut c] = <[_; 3]>::try_from(nodes).ok().unwrap();
    for s in [&a, &b, &c] {
        s.wait_for_peers(DEADLINE).await.unwrap();
    }
    let watchers: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|s| watch_for_downs(s.monitor(), s.peers().to_vec()))
        .collect();

    // Every node broadcasts, paced, for ROUNDS × PACE (1.5 s, 2.5 heartbeat timeouts).
    let outs = [a.outbox(), b.outbox(), c.outbox()];
    let sender = tokio::spawn(async move {
        for i in 0..ROUNDS {
            for (k, out) in outs.iter().enumerate() {
                out.send(Envelope::new(BROADCAST, i, format!("{}-{i}", k + 1)))
                    .await
                    .unwrap();
            }
            tokio::time::sleep(PACE).await;
        }
    });
    receive_all_in_order(&mut a, &[2, 3]).await;
    receive_all_in_order(&mut b, &[1, 3]).await;
    receive_all_in_order(&mut c, &[1, 2]).await;
    tokio::time::timeout(DEADLINE, sender)
        .await
        .unwrap()
        .unwrap();
    for (s, (downs, task)) in [&a, &b, &c].iter().zip(watchers) {
        task.abort();
        let downs = downs.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert!(
            downs.is_empty(),
            "node {} declared {downs:?} down over a healthy slow link",
            s.pid()
        );
        let st = s.stats();
        assert_eq!(st.dropped_outgoing.total(), 0, "node {}: {st:?}", s.pid());
        assert_eq!(st.dropped_incoming.total(), 0, "node {}: {st:?}", s.pid());
    }
    for r in relayed.relays.values() {
        assert!(r.stats().forwarded > 0);
    }

    // Node 3 goes away; over the slow link too, what is sent to it while it is down is
    // dropped, counted, and never delivered after it comes back.
    c.shutdown().await;
    wait_until("nodes 1 and 2 to see node 3 go", || {
        !a.connected_peers().contains(&3) && !b.connected_peers().contains(&3)
    })
    .await;
    let unreachable =
        |s: &Server<String>| s.stats().peers[&3].dropped_to.get(DropReason::Unreachable);
    let (ua, ub) = (unreachable(&a), unreachable(&b));
    for i in 0..50 {
        a.outbox()
            .send(Envelope::new(3, i, format!("down-{i}")))
            .await
            .unwrap();
        b.outbox()
            .send(Envelope::new(3, i, format!("down-{i}")))
            .await
            .unwrap();
    }
    wait_until("100 unreachable drops to node 3", || {
        unreachable(&a) == ua + 50 && unreachable(&b) == ub + 50
    })
    .await;

    let mut c = start_as(backend, 3, relayed.config(3), 1).await;
    wait_connected(&a, &[3]).await;
    wait_connected(&b, &[3]).await;
    c.wait_for_peers(DEADLINE).await.unwrap();
    assert!(drain_until_marker(&a, &mut c, "marker-a").await.is_empty());
    assert!(drain_until_marker(&b, &mut c, "marker-b").await.is_empty());
    // And the restarted node reaches the others, as its new incarnation.
    c.outbox()
        .send(Envelope::new(1, 7, "back".into()))
        .await
        .unwrap();
    assert_eq!(next(&mut a).await, Envelope::new(3, 7, "back".into()));
    assert_eq!(a.stats().peers[&3].incarnation, Some(1));
    for s in [a, b, c] {
        s.shutdown().await;
    }
}
