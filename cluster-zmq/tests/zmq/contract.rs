//! The contract scenarios (`cluster-core`'s crate docs) over real sockets on loopback.

use std::time::Duration;

use cluster_core::{BROADCAST, DropReason, Envelope, TransportError};
use cluster_testkit::net::{self, DEADLINE};
use cluster_zmq::Backend;

use crate::nodes::{
    drain_until_marker, local_config, next, start, start_as, start_on_fresh_ports, wait_connected,
    wait_until,
};

on_every_backend!(
    routing_broadcast_self_and_unknown,
    fifo_per_pair_and_every_message_accounted,
    a_message_to_a_down_peer_is_dropped_and_never_delivered_later,
    a_restarted_peer_is_reconnected_and_gets_only_what_was_sent_after,
    a_dead_peer_never_blocks_the_others,
    a_port_in_use_is_a_clear_bind_error_and_shutdown_frees_the_port,
);

async fn routing_broadcast_self_and_unknown(backend: Backend) {
    let (_, nodes) = start_on_fresh_ports(backend, 3, net::fast_options(), &[1, 2, 3]).await;
    let [mut a, mut b, mut c] = <[_; 3]>::try_from(nodes).ok().unwrap();
    for s in [&a, &b, &c] {
        s.wait_for_peers(DEADLINE).await.unwrap();
    }
    let out = a.outbox();
    out.send(Envelope::new(2, 1, "to-b".into())).await.unwrap();
    out.send(Envelope::new(BROADCAST, 2, "all".into()))
        .await
        .unwrap();
    out.send(Envelope::new(1, 3, "me".into())).await.unwrap();
    out.send(Envelope::new(99, 4, "nobody".into()))
        .await
        .unwrap();

    assert_eq!(next(&mut b).await, Envelope::new(1, 1, "to-b".into()));
    assert_eq!(next(&mut b).await, Envelope::new(1, 2, "all".into()));
    // c gets the broadcast first: the message for b went to b only.
    assert_eq!(next(&mut c).await, Envelope::new(1, 2, "all".into()));
    assert_eq!(next(&mut a).await, Envelope::new(1, 3, "me".into()));
    // Nothing else is on the way to anyone (FIFO: the markers come after it).
    assert!(drain_until_marker(&a, &mut b, "marker-b").await.is_empty());
    assert!(drain_until_marker(&a, &mut c, "marker-c").await.is_empty());
    assert!(
        a.inbox().try_recv().is_err(),
        "broadcast came back to its sender"
    );

    let s = a.stats();
    assert_eq!(s.dropped_outgoing.get(DropReason::UnknownPeer), 1);
    assert_eq!(s.peers[&2].delivered, 0);
    assert_eq!(b.stats().peers[&1].delivered, b.stats().delivered);
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

async fn fifo_per_pair_and_every_message_accounted(backend: Backend) {
    const N: usize = 20_000;
    let (_, nodes) = start_on_fresh_ports(backend, 2, net::fast_options(), &[1, 2]).await;
    let [a, mut b] = <[_; 2]>::try_from(nodes).ok().unwrap();
    a.wait_for_peers(DEADLINE).await.unwrap();
    let out = a.outbox();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            out.send(Envelope::new(2, i as i64, format!("{i}")))
                .await
                .unwrap();
        }
    });
    let mut got: Vec<i64> = Vec::new();
    let accounted =
        |got: usize, a: &cluster_core::Server<String>, b: &cluster_core::Server<String>| {
            got as u64
                + a.stats().peers[&2].dropped_to.total()
                + b.stats().peers[&1].dropped_from.total()
        };
    let began = std::time::Instant::now();
    while accounted(got.len(), &a, &b) < N as u64 {
        assert!(
            began.elapsed() < DEADLINE,
            "only {} of {N} accounted",
            accounted(got.len(), &a, &b)
        );
        if let Ok(Some(env)) =
            tokio::time::timeout(Duration::from_millis(50), b.inbox().recv()).await
        {
            assert_eq!(env.pid, 1);
            assert_eq!(env.msg, env.msg_id.to_string(), "corrupted");
            got.push(env.msg_id);
        }
    }
    sender.await.unwrap();
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "out of order or duplicated"
    );
    assert_eq!(accounted(got.len(), &a, &b), N as u64, "phantoms");
    // The bound on silent loss on a healthy link is zero, on both backends: every copy
    // node 1 sent to node 2 was delivered or dropped with a reason, exactly.
    let (sa, sb) = (a.stats().peers[&2], b.stats().peers[&1]);
    assert_eq!(sa.sent, N as u64);
    assert_eq!(
        sa.sent,
        sb.delivered + sa.dropped_to.total() + sb.dropped_from.total(),
        "silently lost on a healthy link: sent {sa:?}, received {sb:?}"
    );
    assert_eq!(sb.delivered, got.len() as u64);
    // On an idle loopback with default queues every message gets through.
    assert!(!got.is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

async fn a_message_to_a_down_peer_is_dropped_and_never_delivered_later(backend: Backend) {
    let (config, nodes) = start_on_fresh_ports(backend, 2, net::fast_options(), &[1]).await;
    let [a] = <[_; 1]>::try_from(nodes).ok().unwrap();
    let out = a.outbox();
    for i in 0..100 {
        out.send(Envelope::new(2, i, format!("early-{i}")))
            .await
            .unwrap();
    }
    wait_until("100 unreachable drops", || {
        a.stats().peers[&2].dropped_to.get(DropReason::Unreachable) == 100
    })
    .await;
    assert!(a.connected_peers().is_empty());

    let mut b = start(backend, 2, &config).await;
    a.wait_for_peers(DEADLINE).await.unwrap();
    let before = drain_until_marker(&a, &mut b, "marker-up").await;
    assert!(before.is_empty(), "delivered late: {before:?}");
    assert_eq!(
        a.stats().peers[&2].dropped_to.get(DropReason::Unreachable),
        100
    );
    a.shutdown().await;
    b.shutdown().await;
}

async fn a_restarted_peer_is_reconnected_and_gets_only_what_was_sent_after(backend: Backend) {
    let (config, nodes) = start_on_fresh_ports(backend, 2, net::fast_options(), &[1, 2]).await;
    let [a, mut b] = <[_; 2]>::try_from(nodes).ok().unwrap();
    a.wait_for_peers(DEADLINE).await.unwrap();
    assert!(drain_until_marker(&a, &mut b, "marker-1").await.is_empty());

    b.shutdown().await;
    wait_until("a to see b go", || a.connected_peers().is_empty()).await;
    let out = a.outbox();
    for i in 0..50 {
        out.send(Envelope::new(2, i, format!("while-down-{i}")))
            .await
            .unwrap();
    }
    wait_until("50 unreachable drops", || {
        a.stats().peers[&2].dropped_to.get(DropReason::Unreachable) == 50
    })
    .await;

    let mut b = start_as(backend, 2, &config, 1).await;
    a.wait_for_peers(DEADLINE).await.unwrap();
    let before = drain_until_marker(&a, &mut b, "marker-2").await;
    assert!(before.is_empty(), "delivered after restart: {before:?}");
    // And the other way round: the restarted node reaches its old peer.
    b.wait_for_peers(DEADLINE).await.unwrap();
    b.outbox()
        .send(Envelope::new(1, 7, "back".into()))
        .await
        .unwrap();
    let mut a = a;
    let env = next(&mut a).await;
    assert_eq!(env, Envelope::new(2, 7, "back".into()));
    assert_eq!(a.stats().peers[&2].incarnation, Some(1));
    a.shutdown().await;
    b.shutdown().await;
}

async fn a_dead_peer_never_blocks_the_others(backend: Backend) {
    const N: i64 = 5_000;
    // Node 3 is configured but never started.
    let (_, nodes) = start_on_fresh_ports(backend, 3, net::fast_options(), &[1, 2]).await;
    let [a, mut b] = <[_; 2]>::try_from(nodes).ok().unwrap();
    wait_connected(&a, &[2]).await;
    let out = a.outbox();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            out.send(Envelope::new(3, i, "lost".into())).await.unwrap();
            out.send(Envelope::new(BROADCAST, i, format!("{i}")))
                .await
                .unwrap();
        }
    });
    let mut last = -1;
    let began = std::time::Instant::now();
    loop {
        let s = a.stats();
        if last + 1 + s.peers[&2].dropped_to.total() as i64 >= N && last >= 0 {
            break;
        }
        assert!(began.elapsed() < DEADLINE, "b stalled at {last}");
        if let Ok(Some(env)) =
            tokio::time::timeout(Duration::from_millis(50), b.inbox().recv()).await
        {
            assert!(env.msg_id > last);
            last = env.msg_id;
        }
    }
    tokio::time::timeout(DEADLINE, sender)
        .await
        .unwrap()
        .unwrap();
    // The outbox is drained by the server's task: wait until it routed everything.
    wait_until("every copy for node 3 to be routed", || {
        a.stats().peers[&3].sent == 2 * N as u64
    })
    .await;
    let s = a.stats();
    assert_eq!(
        s.peers[&3].dropped_to.get(DropReason::Unreachable),
        2 * N as u64
    );
    a.shutdown().await;
    b.shutdown().await;
}

async fn a_port_in_use_is_a_clear_bind_error_and_shutdown_frees_the_port(backend: Backend) {
    let config = local_config(2);
    let address = config.peer(1).unwrap().address.clone();
    let squatter = std::net::TcpListener::bind(&address).unwrap();
    match cluster_zmq::bind_with(backend, 1, &config).await {
        Err(TransportError::Bind { address: a, .. }) => assert_eq!(a, address),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("bound a port in use"),
    }
    let e = cluster_zmq::bind_with(backend, 1, &config)
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&address), "{e}");
    drop(squatter);

    let a = start(backend, 1, &config).await;
    a.shutdown().await;
    // Freed at once: no wait.
    let again = std::net::TcpListener::bind(&address);
    assert!(again.is_ok(), "port still held after shutdown: {again:?}");
    drop(again);
    let a = start(backend, 1, &config).await;
    a.shutdown().await;
}
