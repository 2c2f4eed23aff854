//! C1–C7 on the in-memory transport.

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_core::{BROADCAST, DropReason, Envelope, Options, Pid, Server};

use crate::sim::Sim;

fn small_queues() -> Options {
    Options {
        inbox_capacity: 64,
        outbox_capacity: 64,
        peer_queue: 128,
        ..Options::default()
    }
}

/// Reads `inbox` until `expected` messages are accounted for: received, or counted as
/// dropped by `dropped()`. Panics if that takes longer than a generous deadline.
async fn read_until_accounted<M>(
    inbox: &mut tokio::sync::mpsc::Receiver<Envelope<M>>,
    expected: u64,
    dropped: impl Fn() -> u64,
    mut on_message: impl FnMut(Envelope<M>),
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut received = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_millis(20), inbox.recv()).await {
            Ok(Some(env)) => {
                on_message(env);
                received += 1;
            }
            Ok(None) => panic!("inbox closed"),
            Err(_) => {}
        }
        if received + dropped() >= expected {
            assert_eq!(
                received + dropped(),
                expected,
                "more outcomes than messages"
            );
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {received} received and {} dropped of {expected}",
            dropped()
        );
    }
}

#[tokio::test]
async fn c1_routing_self_peer_broadcast_and_unknown() {
    let mut sim: Sim<u32> = Sim::new(3, Options::default());
    sim.send(1, Envelope::new(1, 10, 1)).await; // to self
    sim.send(1, Envelope::new(2, 11, 2)).await; // to one peer
    sim.send(1, Envelope::new(42, 12, 3)).await; // unknown pid
    sim.send(1, Envelope::new(-9, 13, 4)).await; // negative, not BROADCAST
    sim.send(1, Envelope::new(BROADCAST, 14, 5)).await;
    sim.settle().await;
    assert_eq!(
        sim.drain(1),
        vec![Envelope::new(1, 10, 1)],
        "self-send lands in own inbox; broadcast skips the sender"
    );
    assert_eq!(
        sim.drain(2),
        vec![Envelope::new(1, 11, 2), Envelope::new(1, 14, 5)]
    );
    assert_eq!(sim.drain(3), vec![Envelope::new(1, 14, 5)]);
    let s = sim.nodes[&1].stats();
    assert_eq!(s.dropped_outgoing.get(DropReason::UnknownPeer), 2);
    assert_eq!(s.sent, 6);
    assert_eq!(s.delivered, 1);
    assert_eq!(s.peers[&1].delivered, 1);
    // The outbox survived the unknown pids.
    sim.send(1, Envelope::new(3, 15, 6)).await;
    assert_eq!(
        sim.node(3).inbox().recv().await,
        Some(Envelope::new(1, 15, 6))
    );
    sim.assert_accounting();
}

#[tokio::test]
async fn c2_byte_exact_at_most_once() {
    let mut sim: Sim<Vec<u8>> = Sim::new(2, Options::default());
    let payloads: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xC1; 18],
        (0..=255).collect(),
        (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect(),
    ];
    for (i, p) in payloads.iter().enumerate() {
        sim.send(1, Envelope::new(2, i as i64, p.clone())).await;
    }
    sim.settle().await;
    let got = sim.drain(2);
    let expected: Vec<_> = payloads
        .into_iter()
        .enumerate()
        .map(|(i, p)| Envelope::new(1, i as i64, p))
        .collect();
    assert_eq!(got, expected);
}

/// Each of three senders sends `n` numbered messages to node 4 while node 4 reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_fifo_per_pair_under_load() {
    let n = 20_000u64;
    let mut sim: Sim<(Pid, u64)> = Sim::new(4, Options::default());
    let mut receiver = sim.nodes.remove(&4).unwrap();
    let monitors: Vec<_> = (1..=3).map(|p| sim.nodes[&p].monitor()).collect();
    let reader = tokio::spawn(async move {
        let mut got: BTreeMap<Pid, Vec<u64>> = BTreeMap::new();
        let me = receiver.monitor();
        read_until_accounted(
            receiver.inbox(),
            3 * n,
            || {
                let rs = me.stats();
                monitors
                    .iter()
                    .map(|m| {
                        m.stats().peers[&4].dropped_to.total()
                            + rs.peers[&m.pid()].dropped_from.total()
                    })
                    .sum()
            },
            |env: Envelope<(Pid, u64)>| {
                assert_eq!(env.pid, env.msg.0, "the envelope names its sender");
                got.entry(env.pid).or_default().push(env.msg.1);
            },
        )
        .await;
        (got, receiver)
    });
    let mut senders = Vec::new();
    for from in 1..=3 {
        let outbox = sim.nodes[&from].outbox();
        senders.push(tokio::spawn(async move {
            for i in 0..n {
                outbox
                    .send(Envelope::new(4, i as i64, (from, i)))
                    .await
                    .unwrap();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let (got, receiver) = reader.await.unwrap();
    let rstats = receiver.stats();
    for from in 1..=3 {
        let seqs = got.get(&from).cloned().unwrap_or_default();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "messages from {from} arrived out of order"
        );
        let sstats = sim.nodes[&from].stats();
        let dropped =
            sstats.peers[&4].dropped_to.total() + rstats.peers[&from].dropped_from.total();
        assert_eq!(
            seqs.len() as u64 + dropped,
            n,
            "from {from}: every message delivered or counted as dropped"
        );
        // Gaps only where drops were counted: with a reader keeping up, most arrive.
        assert!(!seqs.is_empty());
    }
}

#[tokio::test]
async fn c4_partition_drops_and_nothing_arrives_after_heal() {
    let mut sim: Sim<String> = Sim::new(4, Options::default());
    sim.net.partition(&[1, 2], &[3, 4]);
    sim.send(1, Envelope::new(3, 1, "across".into())).await;
    sim.send(1, Envelope::new(2, 2, "same side".into())).await;
    sim.send(4, Envelope::new(BROADCAST, 3, "from 4".into()))
        .await;
    sim.settle().await;
    sim.net.heal();
    sim.send(1, Envelope::new(3, 4, "healed".into())).await;
    sim.settle().await;
    assert_eq!(
        sim.drain(3),
        vec![
            Envelope::new(4, 3, "from 4".to_string()),
            Envelope::new(1, 4, "healed".to_string())
        ]
    );
    assert_eq!(
        sim.drain(2),
        vec![Envelope::new(1, 2, "same side".to_string())]
    );
    assert!(sim.drain(1).is_empty());
    let s1 = sim.nodes[&1].stats();
    assert_eq!(s1.peers[&3].dropped_to.get(DropReason::Partitioned), 1);
    let s4 = sim.nodes[&4].stats();
    assert_eq!(s4.dropped_outgoing.get(DropReason::Partitioned), 2);
    sim.assert_accounting();
}

#[tokio::test]
async fn c4_one_way_cut_and_frames_in_flight_at_the_cut() {
    let mut sim: Sim<u8> = Sim::new(2, Options::default());
    // Queued frames (not yet received) are discarded by the cut, never delivered later.
    sim.nodes[&1]
        .outbox()
        .send(Envelope::new(2, 0, 0))
        .await
        .unwrap();
    sim.net.cut(1, 2);
    sim.send(1, Envelope::new(2, 1, 1)).await;
    sim.send(2, Envelope::new(1, 2, 2)).await;
    sim.settle().await;
    sim.net.heal();
    sim.settle().await;
    assert_eq!(sim.drain(1), vec![Envelope::new(2, 2, 2)]);
    let to2 = sim.drain(2);
    assert!(
        to2.iter().all(|e| e.msg_id == 0),
        "only a frame sent before the cut may arrive: {to2:?}"
    );
    sim.assert_accounting();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c6_a_crashed_or_slow_peer_does_not_block_the_others() {
    let n = 20_000;
    let mut sim: Sim<u64> = Sim::new(4, small_queues());
    sim.crash(3).await;
    // Node 4 is alive but never reads its inbox.
    let mut reader2 = sim.nodes.remove(&2).unwrap();
    let sender = sim.nodes[&1].monitor();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let me = reader2.monitor();
        read_until_accounted(
            reader2.inbox(),
            n as u64,
            || {
                sender.stats().peers[&2].dropped_to.total()
                    + me.stats().peers[&1].dropped_from.total()
            },
            |env: Envelope<u64>| got.push(env.msg),
        )
        .await;
        (got, reader2)
    });
    let outbox = sim.nodes[&1].outbox();
    let sending = async {
        for i in 0..n as u64 {
            outbox.send(Envelope::new(3, 0, i)).await.unwrap();
            outbox.send(Envelope::new(4, 0, i)).await.unwrap();
            outbox.send(Envelope::new(2, 0, i)).await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), sending)
        .await
        .expect("the outbox stalled");
    let (got, reader2) = reader.await.unwrap();
    let s1 = sim.nodes[&1].stats();
    let lost_to_2 =
        s1.peers[&2].dropped_to.total() + reader2.stats().peers[&1].dropped_from.total();
    assert_eq!(got.len() as u64 + lost_to_2, n as u64);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        s1.peers[&3].dropped_to.get(DropReason::Unreachable),
        n as u64
    );
    let s4 = sim.nodes[&4].stats();
    assert!(s4.peers[&1].dropped_from.get(DropReason::Backpressure) > 0);
    assert!(sim.node(4).inbox().len() <= 64);
}

#[tokio::test]
async fn c6_bounded_memory_under_overload_and_no_deadlock_between_full_inboxes() {
    let n = 50_000u64;
    let mut sim: Sim<u64> = Sim::new(2, small_queues());
    let (o1, o2) = (sim.nodes[&1].outbox(), sim.nodes[&2].outbox());
    let a = async {
        for i in 0..n {
            o1.send(Envelope::new(2, 0, i)).await.unwrap();
        }
    };
    let b = async {
        for i in 0..n {
            o2.send(Envelope::new(1, 0, i)).await.unwrap();
        }
    };
    // Nobody reads: both inboxes fill up, yet both senders finish.
    tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(a, b) })
        .await
        .expect("deadlock between two full inboxes");
    sim.settle().await;
    for pid in [1, 2] {
        assert_eq!(
            sim.node(pid).inbox().len(),
            64,
            "inbox bounded at its capacity"
        );
        let s = sim.nodes[&pid].stats();
        assert_eq!(s.delivered, 64);
        assert!(s.dropped_incoming.get(DropReason::Backpressure) > 0);
    }
    assert!(sim.net.in_flight() <= 128);
    sim.assert_accounting();
    let total: u64 = sim.all_stats().iter().map(|s| s.sent).sum();
    assert_eq!(total, 2 * n);
}

#[tokio::test]
async fn c7_counters_add_up_exactly_through_faults() {
    let mut sim: Sim<u32> = Sim::new(5, small_queues());
    sim.net.set_loss(1, 2, 0.3);
    let mut sent = 0u64;
    for round in 0..200u32 {
        let from = (round % 5 + 1) as Pid;
        let to = match round % 7 {
            0 => BROADCAST,
            1 => from,
            2 => 99,
            _ => (round % 5 + 2) as Pid % 6,
        };
        if sim.nodes.contains_key(&from) {
            sim.send(from, Envelope::new(to, round as i64, round)).await;
            sent += 1;
        }
        match round {
            50 => sim.crash(4).await,
            80 => sim.net.partition(&[1], &[3, 5]),
            120 => sim.restart(4),
            150 => sim.net.heal(),
            _ => {}
        }
        if round % 3 == 0 {
            sim.settle().await;
        }
    }
    sim.settle().await;
    assert!(sent > 150);
    sim.assert_accounting();
    let all = sim.all_stats();
    let dropped = |r| all.iter().map(|s| s.dropped().get(r)).sum::<u64>();
    assert!(dropped(DropReason::Injected) > 0);
    assert!(dropped(DropReason::Partitioned) > 0);
    assert!(dropped(DropReason::Unreachable) > 0);
    assert!(dropped(DropReason::UnknownPeer) > 0);
}

#[tokio::test]
async fn servers_report_connectivity_and_wait_for_peers() {
    let mut sim: Sim<u8> = Sim::new(3, Options::default());
    assert_eq!(sim.nodes[&1].connected_peers(), vec![2, 3]);
    sim.nodes[&1]
        .wait_for_peers(Duration::from_secs(5))
        .await
        .unwrap();
    sim.crash(3).await;
    assert_eq!(sim.nodes[&1].connected_peers(), vec![2]);
    let err = sim.nodes[&1]
        .wait_for_peers(Duration::from_millis(10))
        .await
        .unwrap_err();
    assert_eq!(err.missing, vec![3]);
    sim.restart(3);
    sim.nodes[&1]
        .wait_for_peers(Duration::from_secs(5))
        .await
        .unwrap();
    let _: &mut Server<u8> = sim.node(3);
}

#[tokio::test]
async fn a_stopped_node_is_down_for_its_peers_and_nothing_is_lost_silently() {
    let mut sim: Sim<u32> = Sim::new(3, Options::default());
    sim.send(1, Envelope::new(3, 1, 1)).await;
    sim.settle().await;
    // Node 3 stops without reading its inbox: its peers see it go.
    let three = sim.nodes.remove(&3).unwrap();
    let monitor = three.monitor();
    three.shutdown().await;
    sim.retired.push(monitor.stats());
    assert_eq!(sim.nodes[&1].connected_peers(), vec![2]);
    assert!(!sim.net.is_up(3));
    sim.send(1, Envelope::new(3, 2, 2)).await;
    sim.send(2, Envelope::new(BROADCAST, 3, 3)).await;
    sim.settle().await;
    assert_eq!(
        sim.nodes[&1].stats().peers[&3]
            .dropped_to
            .get(DropReason::Unreachable),
        1
    );
    assert_eq!(sim.drain(1), vec![Envelope::new(2, 3, 3)]);
    sim.assert_accounting();
    // It comes back only through a restart.
    assert!(sim.net.transport(3).is_err());
    sim.restart(3);
    sim.send(1, Envelope::new(3, 4, 4)).await;
    sim.settle().await;
    assert_eq!(sim.drain(3), vec![Envelope::new(1, 4, 4)]);
}
