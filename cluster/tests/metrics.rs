//! The metrics exporter over an in-memory cluster, read back over real HTTP from
//! metrics-exporter-prometheus's scrape endpoint: every counter equals `stats()`, and the
//! membership gauges say who is up, their incarnations and when they were last seen.
//!
//! One test: a process has one global recorder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster::catalog::{PeerRecord, PeerStatus};
use cluster::mem::MemNetwork;
use cluster::metrics::{Exporter, Sample, members_from_text, parse_text};
use cluster::{BROADCAST, Config, DropReason, Envelope, Pid, Server, ServerMonitor, Stats};
use cluster_testkit::net::{DEADLINE, expect, scrape};

type Key = (String, BTreeMap<String, String>);

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// What the endpoint must serve for these counters, written out from `Stats` field by field.
fn expected(s: &Stats, own: Pid) -> BTreeMap<Key, f64> {
    let mut e = BTreeMap::new();
    let mut put = |name: &str, labels: &[(&str, &str)], v: u64| {
        e.insert(key(name, labels), v as f64);
    };
    put("cluster_messages_sent_total", &[], s.sent);
    put("cluster_messages_delivered_total", &[], s.delivered);
    put(
        "cluster_messages_lost_in_transit_total",
        &[],
        s.lost_in_transit,
    );
    put("cluster_messages_unconfirmed_total", &[], s.unconfirmed);
    for r in DropReason::ALL {
        for (direction, counts) in [
            ("outgoing", &s.dropped_outgoing),
            ("incoming", &s.dropped_incoming),
        ] {
            put(
                "cluster_messages_dropped_total",
                &[("direction", direction), ("reason", r.as_str())],
                counts.get(r),
            );
        }
    }
    for (pid, p) in &s.peers {
        let peer = pid.to_string();
        let peer = peer.as_str();
        put(
            "cluster_peer_messages_sent_total",
            &[("peer", peer)],
            p.sent,
        );
        put(
            "cluster_peer_messages_delivered_total",
            &[("peer", peer)],
            p.delivered,
        );
        put(
            "cluster_peer_messages_lost_in_transit_total",
            &[("peer", peer)],
            p.lost_in_transit,
        );
        put(
            "cluster_peer_messages_unconfirmed_total",
            &[("peer", peer)],
            p.unconfirmed,
        );
        put(
            "cluster_peer_unacknowledged_frames",
            &[("peer", peer)],
            p.unacknowledged,
        );
        for (direction, counts) in [("outgoing", &p.dropped_to), ("incoming", &p.dropped_from)] {
            for (r, n) in counts.nonzero() {
                put(
                    "cluster_peer_messages_dropped_total",
                    &[
                        ("peer", peer),
                        ("direction", direction),
                        ("reason", r.as_str()),
                    ],
                    n,
                );
            }
        }
    }
    let others = s.peers.keys().filter(|p| **p != own).count();
    put("cluster_configured_peers", &[], others as u64);
    e
}

/// The samples, by name and labels.
fn by_key(samples: &[Sample]) -> BTreeMap<Key, f64> {
    samples
        .iter()
        .map(|s| ((s.name.clone(), s.labels.clone()), s.value))
        .collect()
}

/// What differs between the scrape and `monitor`'s counters now (empty: they agree).
fn differences(port: u16, monitor: &ServerMonitor) -> Vec<String> {
    let stats = monitor.stats();
    let served = by_key(&parse_text(&scrape(port).unwrap()).unwrap());
    let mut diff: Vec<String> = expected(&stats, monitor.pid())
        .into_iter()
        .filter(|(k, v)| served.get(k) != Some(v))
        .map(|(k, v)| format!("{k:?}: expected {v}, served {:?}", served.get(&k)))
        .collect();
    let gauges = [
        (
            "cluster_connected_peers",
            monitor.connected_peers().len() as f64,
        ),
        ("cluster_up_peers", monitor.up_peers().len() as f64),
        ("cluster_inbox_messages", monitor.inbox_depth().0 as f64),
        (
            "cluster_inbox_backlog_frames",
            monitor.inbox_depth().1 as f64,
        ),
    ];
    for (name, value) in gauges {
        if served.get(&key(name, &[])) != Some(&value) {
            diff.push(format!(
                "{name}: expected {value}, served {:?}",
                served.get(&key(name, &[]))
            ));
        }
    }
    diff
}

async fn wait_agree(port: u16, monitor: &ServerMonitor) {
    let began = Instant::now();
    loop {
        let port_monitor = monitor.clone();
        let diff = tokio::task::spawn_blocking(move || differences(port, &port_monitor))
            .await
            .unwrap();
        if diff.is_empty() {
            return;
        }
        assert!(
            began.elapsed() < DEADLINE,
            "the endpoint never agreed with stats():\n{}",
            diff.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_serves_what_stats_counts() {
    let port = cluster_testkit::net::free_ports(1).unwrap()[0];
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], port))
        .install()
        .unwrap();

    let config = Config::local(3, 7000).unwrap();
    let net = MemNetwork::new(&config, 7);
    let mut nodes: Vec<Server<String>> = config
        .pids()
        .map(|pid| {
            Server::with_transport(pid, config.clone(), net.transport(pid).unwrap()).unwrap()
        })
        .collect();
    // What node 1's catalog would remember of node 3 from an earlier run.
    let mut three = PeerRecord::new(3, "127.0.0.1:7003");
    three.incarnation = Some(42);
    three.last_seen = Some(std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250));
    let monitor = nodes[0].monitor();
    let exporter = Exporter::new(monitor.clone())
        .with_incarnation(nodes[0].incarnation())
        .with_history([&three])
        .spawn(Duration::from_millis(50));

    // Node 1: a broadcast, one to itself, one to nobody; node 2 to node 1 three times;
    // node 3 crashes, and node 1 sends to it.
    expect::connected(&nodes[0], &[2, 3]).await;
    let out = nodes[0].outbox();
    for (to, text) in [(BROADCAST, "all"), (1, "me"), (7, "nobody")] {
        out.send(Envelope::new(to, nodes[0].next_msg_id(), text.into()))
            .await
            .unwrap();
    }
    for i in 0..3 {
        let id = nodes[1].next_msg_id();
        nodes[1]
            .outbox()
            .send(Envelope::new(1, id, format!("{i}")))
            .await
            .unwrap();
    }
    for _ in 0..4 {
        expect::next(&mut nodes[0]).await;
    }
    expect::next(&mut nodes[1]).await;
    net.crash(3);
    expect::until("node 1 to see node 3 gone", || {
        monitor.connected_peers() == [2]
    })
    .await;
    out.send(Envelope::new(3, nodes[0].next_msg_id(), "lost".into()))
        .await
        .unwrap();

    // Two more from node 2 that node 1 does not read: its inbox's depth.
    for i in 0..2 {
        let id = nodes[1].next_msg_id();
        nodes[1]
            .outbox()
            .send(Envelope::new(1, id, format!("unread {i}")))
            .await
            .unwrap();
    }
    expect::until("node 1's inbox to hold the two", || {
        monitor.inbox_depth() == (2, 0)
    })
    .await;
    let stats = monitor.stats();
    assert_eq!(stats.sent, 5, "{stats:?}");
    assert_eq!(stats.delivered, 6, "{stats:?}");
    assert_eq!(stats.dropped_outgoing.get(DropReason::UnknownPeer), 1);
    assert_eq!(stats.peers[&3].dropped_to.get(DropReason::Unreachable), 1);
    wait_agree(port, &monitor).await;

    let text = tokio::task::spawn_blocking(move || scrape(port))
        .await
        .unwrap()
        .unwrap();
    let served = by_key(&parse_text(&text).unwrap());
    // The per-peer drops that happened are there, and none that did not.
    let peer_drops: Vec<&Key> = served
        .keys()
        .filter(|(name, _)| name == "cluster_peer_messages_dropped_total")
        .collect();
    assert_eq!(
        peer_drops,
        [&key(
            "cluster_peer_messages_dropped_total",
            &[
                ("direction", "outgoing"),
                ("peer", "3"),
                ("reason", "unreachable")
            ]
        )],
        "{text}"
    );
    assert!(text.contains("# HELP cluster_peer_up "), "{text}");

    let members = members_from_text(&text).unwrap();
    assert_eq!(members.pid, 1);
    assert_eq!(members.incarnation, Some(nodes[0].incarnation()));
    let [two, three]: [PeerRecord; 2] = members.peers.try_into().unwrap();
    assert_eq!((two.pid, two.status), (2, PeerStatus::Up));
    assert_eq!(two.incarnation, Some(nodes[1].incarnation()));
    assert!(two.last_seen.is_some(), "{text}");
    assert_eq!(two.address, "");
    // Node 3 was seen when it came up, never heard from: its incarnation is the history's.
    assert_eq!((three.pid, three.status), (3, PeerStatus::Down));
    assert_eq!(three.incarnation, Some(42));
    assert!(three.last_seen > Some(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_001)));
    assert_eq!(three.address, "127.0.0.1:7003");

    // Dropping the exporter publishes once more: what the stopped node counted last.
    let late = nodes[0].next_msg_id();
    out.send(Envelope::new(7, late, "late".into()))
        .await
        .unwrap();
    for node in nodes {
        node.shutdown().await;
    }
    drop(exporter);
    assert!(
        differences(port, &monitor).is_empty(),
        "{:?}",
        differences(port, &monitor)
    );
}
