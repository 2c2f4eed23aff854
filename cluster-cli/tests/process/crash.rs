//! kill -9 a node mid-stream: messages to it are dropped and counted while the others are
//! unaffected; restarted, it is a new incarnation, traffic resumes, and nothing sent while it
//! was down (or before) arrives.

use std::time::{Duration, Instant};

use cluster::zmq::Backend;
use cluster::{DropReason, Envelope, PeerStats};
use cluster_core::MsgIds;
use cluster_testkit::net::DEADLINE;

use crate::node::{Node, next, start_three, wait_connected, wait_until};

on_both_backends!(kill_9_mid_stream_then_restart);

/// `peer_queue`: well below the stream, so that the bound on silent loss means something.
const PEER_QUEUE: u64 = 256;

async fn kill_9_mid_stream_then_restart(backend: Backend) {
    let (config, mut a, b, mut c) = start_three(
        backend,
        &format!(
            r#""heartbeat_interval_ms":100,"heartbeat_timeout_ms":600,"linger_ms":200,"peer_queue":{PEER_QUEUE}"#
        ),
    )
    .await;
    let path = &config.path;
    // Incarnations from the catalog, floored by the clock (seconds since 2025).
    let first_c = c.incarnation;
    assert!(b.incarnation > 365 * 24 * 3600 && first_c > 365 * 24 * 3600);
    a.wait_for_peers(DEADLINE).await.unwrap();

    // A stream to both children; node 3 is killed in the middle of it.
    const N: i64 = 1500;
    const KILL_AT: i64 = 500;
    let out = a.outbox();
    for i in 0..N {
        if i == KILL_AT {
            c.wait_event("some of the stream", |e| {
                e["event"] == "message" && e["from"] == 1
            })
            .await;
            wait_until("node 1 to route what it was given so far", || {
                a.stats().peers[&3].sent == KILL_AT as u64
            })
            .await;
            c.kill();
        }
        out.send(Envelope::new(2, i, format!("s-{i}")))
            .await
            .unwrap();
        out.send(Envelope::new(3, i, format!("s-{i}")))
            .await
            .unwrap();
        if i % 10 == 0 {
            // Pace the stream, so that the kill lands in its middle.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    wait_until("node 1 to see node 3 go", || {
        !a.connected_peers().contains(&3)
    })
    .await;
    wait_until("drops to node 3", || {
        a.stats().peers[&3].dropped_to.get(DropReason::Unreachable) > 0
    })
    .await;

    // Node 2 is unaffected: the whole stream, in order, nothing dropped.
    let want: Vec<String> = (0..N).map(|i| format!("s-{i}")).collect();
    wait_until("node 2 to get the whole stream", || {
        b.received().len() >= N as usize
    })
    .await;
    assert_eq!(b.received(), want);
    assert_eq!(a.stats().peers[&2].dropped_to.total(), 0);

    // While node 3 is down every message to it is dropped and counted.
    let before = a.stats().peers[&3].dropped_to.get(DropReason::Unreachable);
    for i in 0..100 {
        out.send(Envelope::new(3, i, format!("down-{i}")))
            .await
            .unwrap();
    }
    wait_until("100 more drops to node 3", || {
        a.stats().peers[&3].dropped_to.get(DropReason::Unreachable) == before + 100
    })
    .await;

    // Nothing silent across the kill (C7 on real sockets): every message node 1 sent to
    // node 3 was printed by it, dropped with a reason, or — accepted by the transport and
    // never acknowledged before node 3 was gone — counted `unconfirmed`. A message can be
    // counted twice (printed, and unconfirmed because its acknowledgement died with the
    // process), never not at all; the excess is at most what node 3 had not acknowledged
    // when it died, a window's worth.
    let printed = c.received().len() as u64;
    let accounted = |s: &PeerStats| printed + s.dropped_to.total() + s.unconfirmed;
    wait_until("every message to node 3 to be accounted for", || {
        let s = a.stats().peers[&3];
        s.unacknowledged == 0 && accounted(&s) >= s.sent
    })
    .await;
    let to3 = a.stats().peers[&3];
    eprintln!(
        "{backend}: kill -9: {} sent to node 3, {printed} printed, {} dropped, {} unconfirmed \
         ({} counted twice)",
        to3.sent,
        to3.dropped_to.total(),
        to3.unconfirmed,
        accounted(&to3) - to3.sent
    );
    assert!(
        accounted(&to3) - to3.sent <= 16 * PEER_QUEUE,
        "more counted twice than a window: {to3:?}"
    );

    // Restart it: a new incarnation from its catalog; traffic resumes, and nothing sent
    // before arrives.
    let mut c = Node::spawn(backend, path, 3).await;
    assert!(c.incarnation > first_c, "{} after {first_c}", c.incarnation);
    wait_connected(&a, &[3]).await;
    let began = Instant::now();
    let mut k = 0;
    while !c.received().iter().any(|m| m.starts_with("marker")) {
        assert!(
            began.elapsed() < DEADLINE,
            "node 3 never got a marker after restart"
        );
        out.send(Envelope::new(3, k, format!("marker-{k}")))
            .await
            .unwrap();
        k += 1;
        // One marker every 20 ms until one arrives.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..50 {
        out.send(Envelope::new(3, i, format!("after-{i}")))
            .await
            .unwrap();
    }
    wait_until("node 3 to get what was sent after its restart", || {
        c.received()
            .iter()
            .filter(|m| m.starts_with("after-"))
            .count()
            == 50
    })
    .await;
    let got = c.received_from();
    assert!(
        got.iter()
            .all(|(from, m)| *from == 1 && (m.starts_with("marker-") || m.starts_with("after-"))),
        "node 3 got messages from before its restart: {got:?}"
    );
    // And the restarted node reaches node 1, which sees its new incarnation: the message
    // carries the first id of node 3's new incarnation.
    c.wait_peers(&[1]).await;
    c.command("1 hello-from-3");
    let env = next(&mut a).await;
    let id = MsgIds::new(3, c.incarnation).next();
    assert_eq!(env, Envelope::new(3, id, "hello-from-3".to_string()));
    assert_eq!(a.stats().peers[&3].incarnation, Some(c.incarnation));

    let b_stats = b.quit().await;
    assert_eq!(b_stats["peers"]["1"]["delivered"], N, "{b_stats}");
    let c_stats = c.quit().await;
    assert_eq!(c_stats["peers"]["1"]["sent"], 1, "{c_stats}");
    a.shutdown().await;
}
