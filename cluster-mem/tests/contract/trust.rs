//! C10 without a key, on the in-memory transport: a node that lost its catalog (and so
//! restarts at a lower incarnation than its peers have seen) is heard again once its old
//! incarnation has been silent for `heartbeat_timeout`; the frames it sends before that
//! are dropped as stale and counted, not lost silently.

use std::time::Duration;

use cluster_core::{Config, DropReason, Envelope, Options, Server, ServerBuilder};
use cluster_mem::MemNetwork;

async fn recv(server: &mut Server<String>) -> String {
    tokio::time::timeout(Duration::from_secs(60), server.inbox().recv())
        .await
        .expect("a message within the deadline")
        .expect("an open inbox")
        .msg
}

/// Waits (on the paused clock) until `server` has counted `n` drops for `reason` from 1.
async fn until_dropped(server: &Server<String>, reason: DropReason, n: u64) {
    for _ in 0..10_000 {
        if server.stats().peers[&1].dropped_from.get(reason) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never counted {n} {reason}: {:?}", server.stats());
}

#[tokio::test(start_paused = true)]
async fn a_node_that_lost_its_catalog_is_heard_again_after_heartbeat_timeout() {
    let options = Options {
        heartbeat_timeout: Duration::from_millis(2000),
        ..Options::default()
    };
    let config = Config::local(2, 17300)
        .unwrap()
        .with_options(options)
        .unwrap();
    let net = MemNetwork::new(&config, 1);
    let mut two: Server<String> = ServerBuilder::new(2, config.clone())
        .incarnation(1)
        .build(net.transport(2).unwrap())
        .unwrap();
    let one: Server<String> = ServerBuilder::new(1, config.clone())
        .incarnation(5)
        .build(net.transport(1).unwrap())
        .unwrap();
    one.outbox()
        .send(Envelope::new(2, 1, "from incarnation 5".into()))
        .await
        .unwrap();
    assert_eq!(recv(&mut two).await, "from incarnation 5");
    one.shutdown().await;
    net.restart(1);
    // Its catalog is gone: it starts again at incarnation 1 (below the 5 node 2 has seen).
    let one: Server<String> = ServerBuilder::new(1, config.clone())
        .incarnation(1)
        .build(net.transport(1).unwrap())
        .unwrap();
    one.outbox()
        .send(Envelope::new(2, 2, "too soon".into()))
        .await
        .unwrap();
    until_dropped(&two, DropReason::StaleIncarnation, 1).await;
    // Incarnation 5 has now been silent for longer than heartbeat_timeout.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    one.outbox()
        .send(Envelope::new(2, 3, "heard again".into()))
        .await
        .unwrap();
    assert_eq!(recv(&mut two).await, "heard again");
    let s = two.stats();
    assert_eq!(s.peers[&1].incarnation, Some(1));
    assert_eq!(s.peers[&1].delivered, 2);
    assert_eq!(
        s.peers[&1].dropped_from.get(DropReason::StaleIncarnation),
        1
    );
    assert_eq!(s.lost_in_transit, 0);
    one.shutdown().await;
    two.shutdown().await;
}
