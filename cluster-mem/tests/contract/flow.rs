//! C5' (lossless when healthy) and C6's no-deadlock rule: flow control from a full inbox
//! back to the senders, bounded by `send_timeout`.

use std::time::Duration;

use cluster_core::{BROADCAST, Config, DropReason, Envelope, Options, SendOutcome, Server};
use cluster_mem::MemNetwork;

use crate::{assert_counters_add_up, assert_counters_add_up_with_waiting};

/// Small queues everywhere, so that a fast sender fills them at once.
fn tight(send_timeout: Duration) -> Options {
    Options {
        inbox_capacity: 8,
        peer_queue: 4,
        send_timeout,
        ..Options::default()
    }
}

fn cluster(n: usize, options: Options) -> (Vec<Server<u64>>, MemNetwork) {
    let config = Config::local(n, 17500)
        .unwrap()
        .with_options(options)
        .unwrap();
    // A receive queue of 4 frames per node: far below what the senders send.
    let net = MemNetwork::with_queue_capacity(&config, 1, 4);
    let servers = (1..=n as i32)
        .map(|pid| {
            Server::with_transport(pid, config.clone(), net.transport(pid).unwrap()).unwrap()
        })
        .collect();
    (servers, net)
}

/// A sender much faster than its receiver, through queues of a few frames: every message
/// arrives, in order, and nothing is dropped — the sender waits instead.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_fast_sender_loses_nothing_to_a_slow_healthy_receiver() {
    const N: u64 = 5_000;
    let (mut servers, net) = cluster(2, tight(Duration::from_secs(10)));
    let mut b = servers.pop().unwrap();
    let a = servers.pop().unwrap();
    let outbox = a.outbox();
    let sender = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for i in 0..N {
            outcomes.push(outbox.send(Envelope::new(2, i as i64, i)).await.unwrap());
        }
        outcomes
    });
    let mut got = Vec::new();
    while got.len() < N as usize {
        let env = tokio::time::timeout(Duration::from_secs(60), b.inbox().recv())
            .await
            .expect("the receiver is not starved")
            .unwrap();
        got.push(env.msg);
        if got.len() % 100 == 0 {
            // A slow reader: every hundred messages, a millisecond elsewhere.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let outcomes = sender.await.unwrap();
    assert!(outcomes.iter().all(|o| *o == SendOutcome::Sent));
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.sent, N);
    assert_eq!(sa.dropped().total(), 0, "{sa:?}");
    assert_eq!(sb.delivered, N);
    assert_eq!(sb.dropped().total(), 0, "{sb:?}");
    assert_counters_add_up(&[a.monitor(), b.monitor()], &net);
}

/// Two nodes whose inboxes are full (nobody reads them) each send to the other: neither
/// waits forever. Each direction waits one `send_timeout`, then its peer is stalled and
/// the rest is dropped at once as `backpressure`; every message is accounted for, and
/// what was accepted is delivered once the nodes read again.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn two_full_inboxes_sending_to_each_other_do_not_deadlock() {
    const N: u64 = 200;
    let timeout = Duration::from_secs(2);
    let (mut servers, net) = cluster(2, tight(timeout));
    let mut b = servers.pop().unwrap();
    let mut a = servers.pop().unwrap();
    let send_all = |outbox: cluster_core::Outbox<u64>, to| async move {
        let start = tokio::time::Instant::now();
        let mut dropped = 0;
        for i in 0..N {
            match outbox.send(Envelope::new(to, i as i64, i)).await.unwrap() {
                SendOutcome::Sent => {}
                SendOutcome::Dropped(DropReason::Backpressure) => dropped += 1,
                other => panic!("{other:?}"),
            }
        }
        (dropped, start.elapsed())
    };
    let to_b = tokio::spawn(send_all(a.outbox(), 2));
    let to_a = tokio::spawn(send_all(b.outbox(), 1));
    let within = Duration::from_secs(3600);
    let (dropped_ab, took_ab) = tokio::time::timeout(within, to_b).await.unwrap().unwrap();
    let (dropped_ba, took_ba) = tokio::time::timeout(within, to_a).await.unwrap().unwrap();
    for (dropped, took) in [(dropped_ab, took_ab), (dropped_ba, took_ba)] {
        assert!(dropped > 0 && dropped < N, "{dropped} of {N} dropped");
        // One wait of `send_timeout` (virtual time), not one per message.
        assert!(took >= timeout && took < 2 * timeout, "{took:?}");
    }
    // Reading again: what was accepted arrives, in order.
    for (server, dropped) in [(&mut a, dropped_ba), (&mut b, dropped_ab)] {
        let mut got = Vec::new();
        while (got.len() as u64) < N - dropped {
            let env = tokio::time::timeout(Duration::from_secs(60), server.inbox().recv())
                .await
                .expect("accepted messages arrive")
                .unwrap();
            got.push(env.msg);
        }
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
        let stats = server.stats();
        assert_eq!(stats.delivered, N - dropped);
        assert_eq!(
            stats.dropped_incoming.total(),
            0,
            "the receivers dropped nothing"
        );
    }
    assert_eq!(
        a.stats().dropped_outgoing.get(DropReason::Backpressure),
        dropped_ab
    );
    assert_counters_add_up(&[a.monitor(), b.monitor()], &net);
}

/// A broadcast never waits on one slow peer: with node 3 not reading (its queue full), a
/// stream of broadcasts reaches node 2 whole, and the copies to node 3 beyond what it has
/// room for are dropped and counted — at once, not after a `send_timeout`.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_broadcast_does_not_wait_for_a_slow_peer() {
    const N: u64 = 300;
    let (mut servers, net) = cluster(3, tight(Duration::from_secs(600)));
    let c = servers.pop().unwrap();
    let mut b = servers.pop().unwrap();
    let a = servers.pop().unwrap();
    let outbox = a.outbox();
    let start = tokio::time::Instant::now();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while (got.len() as u64) < N {
            match tokio::time::timeout(Duration::from_secs(60), b.inbox().recv()).await {
                Ok(Some(env)) => got.push(env.msg),
                _ => break,
            }
        }
        (got, b)
    });
    let mut dropped = 0;
    for i in 0..N {
        // Broadcasts do not wait even for node 2: give its node and reader a turn.
        tokio::task::yield_now().await;
        match outbox
            .send(Envelope::new(BROADCAST, i as i64, i))
            .await
            .unwrap()
        {
            SendOutcome::Broadcast { dropped: d, .. } => dropped += d,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(600),
        "no send_timeout waited"
    );
    let (got, b) = reader.await.unwrap();
    let stats = a.stats();
    assert_eq!(dropped as u64, stats.dropped_outgoing.total());
    assert_eq!(
        stats.peers[&3].dropped_to.get(DropReason::Backpressure),
        stats.dropped_outgoing.total(),
        "only copies to the slow node are dropped"
    );
    assert!(stats.peers[&3].dropped_to.total() > 0);
    assert_eq!(stats.peers[&2].dropped_to.total(), 0);
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    // Node 3's queue still holds what it could not take.
    assert_counters_add_up_with_waiting(&[a.monitor(), b.monitor(), c.monitor()], &net);
}
