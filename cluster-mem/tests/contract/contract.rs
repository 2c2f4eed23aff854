//! C1–C7 on the in-memory transport.

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_core::{BROADCAST, DropReason, Envelope, Message, Options, Pid, Server};
use tokio::sync::mpsc;

use crate::{assert_counters_add_up, assert_counters_add_up_with_waiting, check, sim};

fn small_queues() -> Options {
    Options {
        inbox_capacity: 64,
        outbox_capacity: 64,
        peer_queue: 128,
        ..Options::default()
    }
}

/// Reads `inbox` until `expected` messages are accounted for: received, or counted as
/// dropped by `dropped()`. Gives up (an error) after a generous deadline.
async fn read_until_accounted<M: cluster_core::Message>(
    inbox: &mut cluster_core::Inbox<M>,
    expected: u64,
    dropped: impl Fn() -> u64,
) -> Result<Vec<Envelope<M>>, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut received = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(20), inbox.recv()).await {
            Ok(Some(env)) => received.push(env),
            Ok(None) => return Err("inbox closed".into()),
            Err(_) => {}
        }
        let outcomes = received.len() as u64 + dropped();
        if outcomes >= expected {
            if outcomes > expected {
                return Err(format!("{outcomes} outcomes of {expected} messages"));
            }
            return Ok(received);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "only {} received and {} dropped of {expected}",
                received.len(),
                dropped()
            ));
        }
    }
}

/// What a node's logic hands back to the test when it is done: its server (still running,
/// for its inbox and counters), what it read, and whether its work succeeded.
struct Report<M> {
    pid: Pid,
    server: Server<M>,
    received: Vec<Envelope<M>>,
    outcome: Result<(), String>,
}

/// Waits for a report from each of `n` nodes, by pid.
async fn reports<M: Message>(
    rx: &mut mpsc::UnboundedReceiver<Report<M>>,
    n: usize,
) -> BTreeMap<Pid, Report<M>> {
    let mut out = BTreeMap::new();
    while out.len() < n {
        let report = tokio::time::timeout(Duration::from_secs(180), rx.recv())
            .await
            .expect("a node never reported (its logic hung or panicked)")
            .unwrap();
        if let Err(e) = &report.outcome {
            panic!("node {}: {e}", report.pid);
        }
        out.insert(report.pid, report);
    }
    out
}

#[tokio::test]
async fn c1_routing_self_peer_broadcast_and_unknown() {
    let (mut sim, _net) = sim::<u32>(3, Options::default()).await;
    let to_self = sim.send(1, 1, 1).await.unwrap();
    let to_peer = sim.send(1, 2, 2).await.unwrap();
    sim.send(1, 42, 3).await.unwrap(); // unknown pid
    sim.send(1, -9, 4).await.unwrap(); // negative, not BROADCAST
    let to_all = sim.send(1, BROADCAST, 5).await.unwrap();
    assert!(sim.settle().await);
    assert_eq!(
        sim.take_received(1),
        vec![Envelope::new(1, to_self, 1)],
        "self-send lands in own inbox; broadcast skips the sender"
    );
    assert_eq!(
        sim.take_received(2),
        vec![Envelope::new(1, to_peer, 2), Envelope::new(1, to_all, 5)]
    );
    assert_eq!(sim.take_received(3), vec![Envelope::new(1, to_all, 5)]);
    let s = sim.monitor(1).unwrap().stats();
    assert_eq!(s.dropped_outgoing.get(DropReason::UnknownPeer), 2);
    assert_eq!(s.sent, 6);
    assert_eq!(s.delivered, 1);
    assert_eq!(s.peers[&1].delivered, 1);
    // The outbox survived the unknown pids.
    let after = sim.send(1, 3, 6).await.unwrap();
    assert!(sim.settle().await);
    assert_eq!(sim.take_received(3), vec![Envelope::new(1, after, 6)]);
    check(&mut sim).await;
}

#[tokio::test]
async fn c2_byte_exact_at_most_once() {
    let (mut sim, _net) = sim::<Vec<u8>>(2, Options::default()).await;
    let payloads: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xC1; 18],
        (0..=255).collect(),
        (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect(),
    ];
    let mut expected = Vec::new();
    for p in payloads {
        let id = sim.send(1, 2, p.clone()).await.unwrap();
        expected.push(Envelope::new(1, id, p));
    }
    assert!(sim.settle().await);
    assert_eq!(sim.take_received(2), expected);
    check(&mut sim).await;
}

/// Each of three senders sends `N` numbered messages to node 4 while node 4 reads, each
/// node in its own task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_fifo_per_pair_under_load() {
    const N: u64 = 20_000;
    let (mut sim, _net) = sim::<(Pid, u64)>(4, Options::default()).await;
    let senders: Vec<_> = (1..=3).map(|p| sim.monitor(p).unwrap()).collect();
    let receiver = sim.monitor(4).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    sim.spawn_nodes(move |mut server: Server<(Pid, u64)>, _seed| {
        let (tx, senders, receiver) = (tx.clone(), senders.clone(), receiver.clone());
        async move {
            let pid = server.pid();
            let (received, outcome) = if pid == 4 {
                let dropped = || {
                    let rs = receiver.stats();
                    senders
                        .iter()
                        .map(|m| {
                            m.stats().peers[&4].dropped_to.total()
                                + rs.peers[&m.pid()].dropped_from.total()
                        })
                        .sum()
                };
                match read_until_accounted(server.inbox(), 3 * N, dropped).await {
                    Ok(received) => (received, Ok(())),
                    Err(e) => (Vec::new(), Err(e)),
                }
            } else {
                let outbox = server.outbox();
                for i in 0..N {
                    let id = server.next_msg_id();
                    outbox.send(Envelope::new(4, id, (pid, i))).await.unwrap();
                }
                (Vec::new(), Ok(()))
            };
            let _ = tx.send(Report {
                pid,
                server,
                received,
                outcome,
            });
        }
    });
    let reports = reports(&mut rx, 4).await;
    let mut got: BTreeMap<Pid, Vec<u64>> = BTreeMap::new();
    for env in &reports[&4].received {
        assert_eq!(env.pid, env.msg.0, "the envelope names its sender");
        got.entry(env.pid).or_default().push(env.msg.1);
    }
    let rstats = reports[&4].server.stats();
    for from in 1..=3 {
        let seqs = got.get(&from).cloned().unwrap_or_default();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "messages from {from} arrived out of order"
        );
        let sstats = reports[&from].server.stats();
        let dropped =
            sstats.peers[&4].dropped_to.total() + rstats.peers[&from].dropped_from.total();
        assert_eq!(
            seqs.len() as u64 + dropped,
            N,
            "from {from}: every message delivered or counted as dropped"
        );
        // Gaps only where drops were counted: with a reader keeping up, most arrive.
        assert!(!seqs.is_empty());
    }
}

#[tokio::test]
async fn c4_partition_drops_and_nothing_arrives_after_heal() {
    let (mut sim, _net) = sim::<String>(4, Options::default()).await;
    sim.partition(&[1, 2], &[3, 4]).unwrap();
    sim.send(1, 3, "across".into()).await.unwrap();
    let same_side = sim.send(1, 2, "same side".into()).await.unwrap();
    let from_4 = sim.send(4, BROADCAST, "from 4".into()).await.unwrap();
    assert!(sim.settle().await);
    sim.heal().unwrap();
    let healed = sim.send(1, 3, "healed".into()).await.unwrap();
    assert!(sim.settle().await);
    assert_eq!(
        sim.take_received(3),
        vec![
            Envelope::new(4, from_4, "from 4".to_string()),
            Envelope::new(1, healed, "healed".to_string())
        ]
    );
    assert_eq!(
        sim.take_received(2),
        vec![Envelope::new(1, same_side, "same side".to_string())]
    );
    assert!(sim.take_received(1).is_empty());
    let s1 = sim.monitor(1).unwrap().stats();
    assert_eq!(s1.peers[&3].dropped_to.get(DropReason::Partitioned), 1);
    let s4 = sim.monitor(4).unwrap().stats();
    assert_eq!(s4.dropped_outgoing.get(DropReason::Partitioned), 2);
    check(&mut sim).await;
}

#[tokio::test]
async fn c4_one_way_cut_and_frames_in_flight_at_the_cut() {
    let (mut sim, _net) = sim::<u8>(2, Options::default()).await;
    // Queued frames (not yet received) are discarded by the cut, never delivered later.
    let before_cut = sim.enqueue(1, 2, 0).unwrap();
    sim.cut(1, 2).unwrap();
    sim.send(1, 2, 1).await.unwrap();
    let back = sim.send(2, 1, 2).await.unwrap();
    assert!(sim.settle().await);
    sim.heal().unwrap();
    assert!(sim.settle().await);
    assert_eq!(sim.take_received(1), vec![Envelope::new(2, back, 2)]);
    let to2 = sim.take_received(2);
    assert!(
        to2.iter().all(|e| e.msg_id == before_cut),
        "only a frame sent before the cut may arrive: {to2:?}"
    );
    check(&mut sim).await;
}

/// Node 1 sends to a crashed node 3, to node 4 (alive, never reads) and to node 2 (reads):
/// node 2 gets its messages, in order, and node 1's outbox never stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c6_a_crashed_or_slow_peer_does_not_block_the_others() {
    const N: u64 = 20_000;
    let (mut sim, _net) = sim::<u64>(4, small_queues()).await;
    sim.crash(3).await.unwrap();
    let (sender, reader) = (sim.monitor(1).unwrap(), sim.monitor(2).unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    sim.spawn_nodes(move |mut server: Server<u64>, _seed| {
        let (tx, sender, reader) = (tx.clone(), sender.clone(), reader.clone());
        async move {
            let pid = server.pid();
            let (received, outcome) = match pid {
                1 => {
                    let outbox = server.outbox();
                    let sending = async {
                        for i in 0..N {
                            for to in [3, 4, 2] {
                                let id = server.next_msg_id();
                                outbox.send(Envelope::new(to, id, i)).await.unwrap();
                            }
                        }
                    };
                    let outcome = tokio::time::timeout(Duration::from_secs(60), sending)
                        .await
                        .map_err(|_| "the outbox stalled".to_string());
                    (Vec::new(), outcome)
                }
                2 => {
                    let dropped = || {
                        sender.stats().peers[&2].dropped_to.total()
                            + reader.stats().peers[&1].dropped_from.total()
                    };
                    match read_until_accounted(server.inbox(), N, dropped).await {
                        Ok(received) => (received, Ok(())),
                        Err(e) => (Vec::new(), Err(e)),
                    }
                }
                // Node 4 hands its server to the test, which never reads it.
                _ => (Vec::new(), Ok(())),
            };
            let _ = tx.send(Report {
                pid,
                server,
                received,
                outcome,
            });
        }
    });
    let mut reports = reports(&mut rx, 3).await;
    let got: Vec<u64> = reports[&2].received.iter().map(|e| e.msg).collect();
    let s1 = reports[&1].server.stats();
    let lost_to_2 =
        s1.peers[&2].dropped_to.total() + reports[&2].server.stats().peers[&1].dropped_from.total();
    assert_eq!(got.len() as u64 + lost_to_2, N);
    // C5': node 2 reads, so nothing to it is lost, though node 1 sends faster than it
    // reads; node 4 does not, and costs node 1 one `send_timeout`, then drops.
    assert_eq!(lost_to_2, 0);
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    assert_eq!(s1.peers[&3].dropped_to.get(DropReason::Unreachable), N);
    assert!(s1.peers[&4].dropped_to.get(DropReason::Backpressure) > 0);
    let four = &mut reports.get_mut(&4).unwrap().server;
    assert_eq!(four.stats().peers[&1].dropped_from.total(), 0);
    assert!(four.inbox().len() <= 64);
}

/// Both nodes send to each other as fast as they can and nobody reads: both inboxes fill
/// up, yet both senders finish, and memory stays bounded.
#[tokio::test]
async fn c6_bounded_memory_under_overload_and_no_deadlock_between_full_inboxes() {
    const N: u64 = 50_000;
    let (mut sim, net) = sim::<u64>(2, small_queues()).await;
    let monitors = [sim.monitor(1).unwrap(), sim.monitor(2).unwrap()];
    let (tx, mut rx) = mpsc::unbounded_channel();
    sim.spawn_nodes(move |server: Server<u64>, _seed| {
        let tx = tx.clone();
        async move {
            let pid = server.pid();
            let outbox = server.outbox();
            let sending = async {
                for i in 0..N {
                    let id = server.next_msg_id();
                    outbox.send(Envelope::new(3 - pid, id, i)).await.unwrap();
                }
            };
            let outcome = tokio::time::timeout(Duration::from_secs(60), sending)
                .await
                .map_err(|_| "deadlock between two full inboxes".to_string());
            let _ = tx.send(Report {
                pid,
                server,
                received: Vec::new(),
                outcome,
            });
        }
    });
    let mut reports = reports(&mut rx, 2).await;
    // Nobody reads: the cluster comes to rest with frames waiting in the network (which
    // `settle` would count as still moving). Wait for that rest.
    for _ in 0..100_000 {
        if net.in_flight() == 2 * 128 {
            break;
        }
        tokio::task::yield_now().await;
    }
    for pid in [1, 2] {
        let server = &mut reports.get_mut(&pid).unwrap().server;
        assert_eq!(server.inbox().len(), 64, "inbox bounded at its capacity");
        let s = server.stats();
        assert_eq!(s.delivered, 64);
        // The full inbox pushed back: the senders dropped, after one `send_timeout`.
        assert_eq!(s.dropped_incoming.total(), 0);
        assert!(s.dropped_outgoing.get(DropReason::Backpressure) > 0);
    }
    // What waits: each node's receive queue (128 frames), full.
    assert_eq!(net.in_flight(), 2 * 128);
    assert_counters_add_up_with_waiting(&monitors, &net);
    let total: u64 = monitors.iter().map(|m| m.stats().sent).sum();
    assert_eq!(total, 2 * N);
}

#[tokio::test]
async fn c7_counters_add_up_exactly_through_faults() {
    let (mut sim, net) = sim::<u32>(5, small_queues()).await;
    sim.set_loss(1, 2, 0.3).unwrap();
    // Every incarnation's counters: node 4's first one is retired by its crash.
    let mut monitors = vec![sim.monitor(4).unwrap()];
    let mut sent = 0u64;
    for round in 0..200u32 {
        let from = (round % 5 + 1) as Pid;
        let to = match round % 7 {
            0 => BROADCAST,
            1 => from,
            2 => 99,
            _ => (round % 5 + 2) as Pid % 6,
        };
        if sim.is_up(from) {
            sim.send(from, to, round).await.unwrap();
            sent += 1;
        }
        match round {
            50 => sim.crash(4).await.unwrap(),
            80 => sim.partition(&[1], &[3, 5]).unwrap(),
            120 => {
                sim.restart(4).await.unwrap();
            }
            150 => sim.heal().unwrap(),
            _ => {}
        }
        if round % 3 == 0 {
            assert!(sim.settle().await);
        }
    }
    assert!(sim.settle().await);
    assert!(sent > 150);
    monitors.extend(sim.pids().into_iter().map(|p| sim.monitor(p).unwrap()));
    assert_counters_add_up(&monitors, &net);
    let all: Vec<_> = monitors.iter().map(|m| m.stats()).collect();
    let dropped = |r| all.iter().map(|s| s.dropped().get(r)).sum::<u64>();
    assert!(dropped(DropReason::Injected) > 0);
    assert!(dropped(DropReason::Partitioned) > 0);
    assert!(dropped(DropReason::Unreachable) > 0);
    assert!(dropped(DropReason::UnknownPeer) > 0);
    check(&mut sim).await;
}

#[tokio::test]
async fn servers_report_connectivity_and_wait_for_peers() {
    let (mut sim, _net) = sim::<u8>(3, Options::default()).await;
    let one = sim.monitor(1).unwrap();
    assert_eq!(one.connected_peers(), vec![2, 3]);
    let server = sim.server(1).unwrap();
    server.wait_for_peers(Duration::from_secs(5)).await.unwrap();
    sim.crash(3).await.unwrap();
    let server = sim.server(1).unwrap();
    assert_eq!(server.connected_peers(), vec![2]);
    let err = server
        .wait_for_peers(Duration::from_millis(10))
        .await
        .unwrap_err();
    assert_eq!(err.missing, vec![3]);
    sim.restart(3).await.unwrap();
    sim.server(1)
        .unwrap()
        .wait_for_peers(Duration::from_secs(5))
        .await
        .unwrap();
    let _: &mut Server<u8> = sim.server(3).unwrap();
}

#[tokio::test]
async fn a_stopped_node_is_down_for_its_peers_and_nothing_is_lost_silently() {
    let (mut sim, net) = sim::<u32>(3, Options::default()).await;
    let first = sim.send(1, 3, 1).await.unwrap();
    assert!(sim.settle().await);
    assert_eq!(sim.take_received(3), vec![Envelope::new(1, first, 1)]);
    let mut monitors: Vec<_> = (1..=3).map(|p| sim.monitor(p).unwrap()).collect();
    // Node 3 stops (not a crash of the network node: the server shuts down): its peers see
    // it go.
    sim.server(3).unwrap().stop().await;
    assert_eq!(sim.monitor(1).unwrap().connected_peers(), vec![2]);
    assert!(!net.is_up(3));
    sim.send(1, 3, 2).await.unwrap();
    let to_all = sim.send(2, BROADCAST, 3).await.unwrap();
    assert!(sim.settle().await);
    assert_eq!(
        sim.monitor(1).unwrap().stats().peers[&3]
            .dropped_to
            .get(DropReason::Unreachable),
        1
    );
    assert_eq!(sim.take_received(1), vec![Envelope::new(2, to_all, 3)]);
    assert_counters_add_up(&monitors, &net);
    // It comes back only through a restart.
    assert!(net.transport(3).is_err());
    sim.restart(3).await.unwrap();
    monitors.push(sim.monitor(3).unwrap());
    let after = sim.send(1, 3, 4).await.unwrap();
    assert!(sim.settle().await);
    assert_eq!(sim.take_received(3), vec![Envelope::new(1, after, 4)]);
    assert_counters_add_up(&monitors, &net);
}
