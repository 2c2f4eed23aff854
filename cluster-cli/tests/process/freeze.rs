//! Freeze a node (SIGSTOP): it keeps its connections open but reads nothing and answers no
//! heartbeat. The others keep getting every message; messages to it are dropped and
//! counted; thawed (SIGCONT), it survives and comes back.

use std::time::{Duration, Instant};

use cluster::zmq::Backend;
use cluster::{DropReason, Envelope};
use cluster_core::MsgIds;
use cluster_testkit::net::DEADLINE;

use crate::node::{next, start_three, wait_connected, wait_until};

on_both_backends!(a_frozen_peer_never_holds_up_the_others);

/// Node 1 sends to each of nodes 2 and 3 one message a millisecond (a thousand a second,
/// which a debug-build child printing a line per message takes even on a loaded machine)
/// and never more than `MAX_SENT` in all: fewer than node 2's inbox holds
/// (`inbox_capacity`, 8192 by default), so that node 2 cannot drop one even if its process
/// falls behind. Node 3's trouble shows within its heartbeat timeout (2 s, some 2,000
/// messages): its queue overflows, or node 1 gives it up.
const MAX_SENT: i64 = 7_000;

async fn a_frozen_peer_never_holds_up_the_others(backend: Backend) {
    let (_config, mut a, b, mut c) = start_three(
        backend,
        r#""heartbeat_interval_ms":200,"heartbeat_timeout_ms":2000,"linger_ms":200,"peer_queue":8192"#,
    )
    .await;
    a.wait_for_peers(DEADLINE).await.unwrap();

    // Node 3 stops reading (and answering heartbeats) but keeps its connection open.
    c.stop();
    let out = a.outbox();
    let began = Instant::now();
    let mut sent = 0i64;
    while a.stats().peers[&3].dropped_to.total() == 0 {
        assert!(
            sent < MAX_SENT && began.elapsed() < DEADLINE,
            "nothing to node 3 was dropped after {sent} messages and {:?}",
            began.elapsed()
        );
        out.send(Envelope::new(3, sent, format!("s-{sent}")))
            .await
            .unwrap();
        out.send(Envelope::new(2, sent, format!("s-{sent}")))
            .await
            .unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Node 2 got everything, in order, while messages to node 3 were dropped (its queue
    // overflowed, or its silence outlasted the heartbeat timeout).
    let want: Vec<String> = (0..sent).map(|i| format!("s-{i}")).collect();
    wait_until("node 2 to get every message (or a drop to it)", || {
        b.received().len() >= sent as usize || a.stats().peers[&2].dropped_to.total() > 0
    })
    .await;
    assert_eq!(
        a.stats().peers[&2].dropped_to.total(),
        0,
        "{:?}",
        a.stats().peers[&2]
    );
    assert_eq!(b.received(), want);
    let to3 = a.stats().peers[&3].dropped_to;
    assert!(
        to3.get(DropReason::Backpressure) + to3.get(DropReason::Unreachable) > 0,
        "{to3}"
    );
    // Thawed, node 3 finds its connections given up; it must survive that (libzmq 4.3.4
    // aborted here when inbound sockets sent heartbeats) and come back.
    c.skip_seen();
    c.cont();
    wait_connected(&a, &[3]).await;
    c.wait_peers(&[1, 2]).await;
    c.command("1 thawed");
    let id = MsgIds::new(3, c.incarnation).next();
    assert_eq!(
        next(&mut a).await,
        Envelope::new(3, id, "thawed".to_string())
    );
    // Whatever node 3 got is from node 1, in order, with gaps only where it was dropped.
    let got: Vec<i64> = c
        .received_from()
        .iter()
        .map(|(from, m)| {
            assert_eq!(*from, 1);
            m.strip_prefix("s-").unwrap().parse().unwrap()
        })
        .collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    b.quit().await;
    c.quit().await;
    a.shutdown().await;
}
