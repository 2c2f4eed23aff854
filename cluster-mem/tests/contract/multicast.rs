//! Multicast on the in-memory transport: routing per destination (a group from the config,
//! a list, the sender itself, unknown pids), encoded once, drops counted per destination
//! (sent = delivered + dropped), FIFO shared with sends and broadcasts, never waiting on a
//! slow peer, and group copies authenticated like any other frame.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cluster_core::seal::Sealer;
use cluster_core::wire::{self, Destination};
use cluster_core::{
    BROADCAST, ClusterKey, Config, DropReason, Envelope, KEY_LEN, Options, Pid, SendOutcome, Server,
};
use cluster_mem::MemNetwork;
use serde::{Deserialize, Serialize};

use crate::{assert_counters_add_up, assert_counters_add_up_with_waiting};

/// Serializations of [`Counted`] messages, process-wide (only one test sends them).
static SERIALIZED: AtomicUsize = AtomicUsize::new(0);

/// A message that counts how often it is serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
struct Counted(u32);

impl Serialize for Counted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SERIALIZED.fetch_add(1, Ordering::Relaxed);
        s.serialize_u32(self.0)
    }
}

/// Nodes `1..=n` of `config` on one memory network (seed 1).
fn start<M: cluster_core::Message>(config: &Config, net: &MemNetwork) -> Vec<Server<M>> {
    config
        .pids()
        .map(|pid| {
            Server::with_transport(pid, config.clone(), net.transport(pid).unwrap()).unwrap()
        })
        .collect()
}

fn ids<M>(envs: Vec<Envelope<M>>) -> Vec<(Pid, i64)> {
    envs.into_iter().map(|e| (e.pid, e.msg_id)).collect()
}

/// Everything in `server`'s inbox once the network is quiet.
async fn drain<M: cluster_core::Message>(
    server: &mut Server<M>,
    net: &MemNetwork,
) -> Vec<Envelope<M>> {
    for _ in 0..10_000 {
        if net.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut got = Vec::new();
    // The node's task may still be moving the last frames into the inbox.
    while let Ok(Some(env)) =
        tokio::time::timeout(Duration::from_millis(50), server.inbox().recv()).await
    {
        got.push(env);
    }
    got
}

/// C1 and C7 for multicast: a group from the config and a list reach each listed node
/// once (the sender's own copy in its own inbox), serialized once per multicast; unknown
/// pids and a down node are dropped and counted for that destination alone; sent =
/// delivered + dropped over the cluster.
#[tokio::test(start_paused = true)]
async fn multicast_routes_each_destination_once_and_counts_each_drop() {
    let config = Config::local(4, 17600)
        .unwrap()
        .with_group("replicas", [1, 2, 3])
        .unwrap();
    let net = MemNetwork::new(&config, 1);
    let mut nodes = start::<Counted>(&config, &net);
    let one = nodes[0].outbox();
    let multicast = SendOutcome::Multicast {
        sent: 3,
        dropped: 0,
    };
    assert_eq!(one.multicast("replicas", 1, Counted(1)).unwrap(), multicast);
    assert_eq!(SERIALIZED.load(Ordering::Relaxed), 1, "encoded once");
    let outcome = one
        .multicast(vec![4, 2, 4, 9, BROADCAST], 2, Counted(2))
        .unwrap();
    assert_eq!(
        outcome,
        SendOutcome::Multicast {
            sent: 2,
            dropped: 2
        }
    );
    assert_eq!(SERIALIZED.load(Ordering::Relaxed), 2, "encoded once");
    let mut got = Vec::new();
    for node in &mut nodes {
        got.push(ids(drain(node, &net).await));
    }
    assert_eq!(got[0], [(1, 1)], "the sender's own copy");
    assert_eq!(got[1], [(1, 1), (1, 2)]);
    assert_eq!(got[2], [(1, 1)]);
    assert_eq!(
        got[3],
        [(1, 2)],
        "node 4 is in no group; listed twice, sent once"
    );
    net.crash(3);
    let outcome = one.multicast("replicas", 3, Counted(3)).unwrap();
    assert_eq!(
        outcome,
        SendOutcome::Multicast {
            sent: 2,
            dropped: 1
        }
    );
    assert_eq!(ids(drain(&mut nodes[0], &net).await), [(1, 3)]);
    assert_eq!(ids(drain(&mut nodes[1], &net).await), [(1, 3)]);
    let s = nodes[0].stats();
    assert_eq!(s.sent, 3 + 4 + 3);
    assert_eq!(s.dropped_outgoing.get(DropReason::UnknownPeer), 2);
    assert_eq!(s.peers[&3].dropped_to.get(DropReason::Unreachable), 1);
    assert_eq!(s.peers[&2].dropped_to.total(), 0);
    let monitors: Vec<_> = nodes.iter().map(Server::monitor).collect();
    assert_counters_add_up(&monitors, &net);
}

/// C3 across kinds of sends: what node 1 sends node 2 directly, by broadcast and by
/// multicast (to a list and to a group changed at run time) arrives in send order; node
/// 3 gets only what was addressed to it, in order too.
#[tokio::test(start_paused = true)]
async fn multicasts_keep_fifo_with_sends_and_broadcasts() {
    let config = Config::local(3, 17620).unwrap();
    let net = MemNetwork::new(&config, 1);
    let mut nodes = start::<u64>(&config, &net);
    let one = nodes[0].outbox();
    nodes[0].set_group("pair", [2, 3]).unwrap();
    let mut to_two = Vec::new();
    let mut to_three = Vec::new();
    for i in 0..300u64 {
        let id = i as i64;
        match i % 5 {
            0 => {
                one.send(Envelope::new(2, id, i)).await.unwrap();
                to_two.push(i);
            }
            1 => {
                one.multicast([3, 2], id, i).unwrap();
                to_two.push(i);
                to_three.push(i);
            }
            2 => {
                one.send(Envelope::new(BROADCAST, id, i)).await.unwrap();
                to_two.push(i);
                to_three.push(i);
            }
            3 => {
                one.multicast("pair", id, i).unwrap();
                to_two.push(i);
                to_three.push(i);
            }
            _ => {
                one.multicast([3], id, i).unwrap();
                to_three.push(i);
            }
        }
        if i == 150 {
            nodes[0].set_group("pair", [2, 3, 3]).unwrap();
        }
        // Multicasts never wait: let the receivers keep up.
        tokio::task::yield_now().await;
    }
    let two: Vec<u64> = drain(&mut nodes[1], &net)
        .await
        .into_iter()
        .map(|e| e.msg)
        .collect();
    let three: Vec<u64> = drain(&mut nodes[2], &net)
        .await
        .into_iter()
        .map(|e| e.msg)
        .collect();
    assert_eq!(two, to_two);
    assert_eq!(three, to_three);
    assert_eq!(nodes[0].stats().dropped().total(), 0);
    let monitors: Vec<_> = nodes.iter().map(Server::monitor).collect();
    assert_counters_add_up(&monitors, &net);
}

/// C5'/C6 for multicast, as for broadcast: with node 3 not reading (its queue full), a
/// stream of multicasts to 2 and 3 reaches node 2 whole without waiting for node 3, and
/// the copies to node 3 beyond its room are dropped as `backpressure`, counted for it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_multicast_does_not_wait_for_a_slow_peer() {
    const N: u64 = 300;
    let options = Options {
        inbox_capacity: 8,
        peer_queue: 4,
        send_timeout: Duration::from_secs(600),
        ..Options::default()
    };
    let config = Config::local(3, 17640)
        .unwrap()
        .with_options(options)
        .unwrap();
    let net = MemNetwork::with_queue_capacity(&config, 1, 4);
    let mut nodes = start::<u64>(&config, &net);
    let c = nodes.pop().unwrap();
    let mut b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
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
    let start = tokio::time::Instant::now();
    let outbox = a.outbox();
    let mut dropped = 0;
    for i in 0..N {
        tokio::task::yield_now().await;
        match outbox.multicast([2, 3], i as i64, i).unwrap() {
            SendOutcome::Multicast { dropped: d, .. } => dropped += d,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(600),
        "no send_timeout waited"
    );
    let (got, b) = reader.await.unwrap();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    let s = a.stats();
    assert!(dropped > 0);
    assert_eq!(
        dropped as u64,
        s.peers[&3].dropped_to.get(DropReason::Backpressure)
    );
    assert_eq!(dropped as u64, s.dropped_outgoing.total());
    assert_eq!(s.peers[&2].dropped_to.total(), 0);
    assert_counters_add_up_with_waiting(&[a.monitor(), b.monitor(), c.monitor()], &net);
}

/// C10 for multicast: with a cluster key, group copies are sealed and delivered; a group
/// frame injected with another key, without a tag, or naming another receiver is dropped
/// and counted, and moves nothing; one sealed with the cluster's key in a member's name
/// is delivered like a send from that member.
#[tokio::test(start_paused = true)]
async fn group_copies_are_authenticated_like_any_other_frame() {
    let key = ClusterKey::from_bytes([7; KEY_LEN]);
    let config = Config::local(3, 17660)
        .unwrap()
        .with_cluster_key(Some(key.clone()))
        .with_group("others", [2, 3])
        .unwrap();
    let net = MemNetwork::new(&config, 1);
    let mut nodes = start::<String>(&config, &net);
    let outcome = nodes[0]
        .outbox()
        .multicast("others", 1, "sealed".to_string())
        .unwrap();
    assert!(outcome.is_sent(), "{outcome:?}");
    for node in &mut nodes[1..] {
        let got = drain(node, &net).await;
        assert_eq!(got, [Envelope::new(1, 1, "sealed".to_string())]);
    }
    // Group frames "from node 2" to node 3, made outside the cluster.
    let group_frame = |key: Option<ClusterKey>, to: Pid, seq: u64, text: &str| -> Bytes {
        let mut sealer = Sealer::new(key, false);
        let mut header = wire::Header::new(2, to, 99, 5);
        header.destination = Destination::Group;
        header.seq = seq;
        let header = sealer.mark(header);
        let mut encoder = wire::Encoder::new();
        encoder.serialize(text).unwrap();
        encoder.frame(&header, |covered| sealer.seal(covered))
    };
    let other_key = Some(ClusterKey::from_bytes([8; KEY_LEN]));
    for forged in [
        group_frame(other_key, 3, 1, "other cluster"),
        group_frame(None, 3, 1, "untagged"),
        group_frame(Some(key.clone()), 1, 1, "for node 1"),
    ] {
        net.inject(3, forged).unwrap();
    }
    let got = drain(&mut nodes[2], &net).await;
    assert!(got.is_empty(), "{got:?}");
    let s = nodes[2].stats();
    assert_eq!(s.dropped_incoming.get(DropReason::Unauthenticated), 2);
    assert_eq!(s.dropped_incoming.get(DropReason::Malformed), 1);
    assert_ne!(s.peers[&2].incarnation, Some(99), "nothing moved");
    let authentic = group_frame(Some(key), 3, 1, "in node 2's name");
    net.inject(3, authentic.clone()).unwrap();
    net.inject(3, authentic).unwrap();
    let got = drain(&mut nodes[2], &net).await;
    assert_eq!(got, [Envelope::new(2, 5, "in node 2's name".to_string())]);
    let s = nodes[2].stats();
    assert_eq!(s.peers[&2].incarnation, Some(99));
    assert_eq!(s.dropped_incoming.get(DropReason::Replayed), 1);
}
