//! The simulator as a user sees it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use cluster_core::{BROADCAST, DropReason, Pid, Transport};
use cluster_mem::MemNetwork;
use cluster_testkit::{Event, MsgRef, SimCluster, from_json_lines, oracle};

#[tokio::test(flavor = "current_thread")]
async fn faults_drop_and_restarts_rejoin() {
    let mut sim = SimCluster::<String>::builder()
        .nodes(3)
        .seed(11)
        .build()
        .await
        .unwrap();
    assert_eq!(sim.seed(), 11);
    sim.crash(3).await.unwrap();
    sim.send(1, 3, "to a dead node".into()).await.unwrap();
    assert_eq!(sim.restart(3).await.unwrap(), 2);
    assert_eq!(sim.incarnation(3), Some(2));
    sim.cut(1, 2).unwrap();
    sim.send(1, BROADCAST, "only 3 hears".into()).await.unwrap();
    sim.heal().unwrap();
    sim.send(2, 3, "hello".into()).await.unwrap();
    sim.settle().await;
    let at3: Vec<String> = sim.take_received(3).into_iter().map(|e| e.msg).collect();
    assert_eq!(at3, ["only 3 hears", "hello"]);
    assert!(sim.take_received(2).is_empty());
    let s1 = sim.monitor(1).unwrap().stats();
    assert_eq!(s1.dropped_outgoing.get(DropReason::Unreachable), 1);
    assert_eq!(s1.dropped_outgoing.get(DropReason::Partitioned), 1);
    let history = sim.finish().await;
    let verdict = oracle::check(&history);
    assert!(verdict.is_ok(), "{verdict}");
    assert_eq!(verdict.expectations(), (2, 2, 0));
}

#[tokio::test(flavor = "current_thread")]
async fn history_exports_as_json_lines() {
    let mut sim = SimCluster::<u32>::builder()
        .nodes(2)
        .seed(3)
        .build()
        .await
        .unwrap();
    sim.send(1, 2, 7).await.unwrap();
    sim.set_loss(2, 1, 1.0).unwrap();
    sim.send(2, 1, 8).await.unwrap();
    sim.finish().await;
    let text = sim.history().to_json_lines();
    let records = from_json_lines(&text).unwrap();
    assert_eq!(records, sim.history().records());
    assert!(
        text.lines()
            .all(|l| l.starts_with('{') && l.contains("\"event\":"))
    );
    assert!(text.contains(r#""refused":"injected""#), "{text}");
    assert!(records.iter().any(|r| matches!(
        &r.event,
        Event::Delivered { at: 2, from: 1, payload, .. } if *payload == serde_json::json!(7)
    )));
}

#[tokio::test(flavor = "current_thread")]
async fn unsupported_or_unknown_operations_are_errors_not_panics() {
    let mut sim = SimCluster::<u8>::new(2).await.unwrap();
    assert!(sim.crash(9).await.is_err());
    assert!(sim.send(9, 1, 0).await.is_err());
    sim.crash(2).await.unwrap();
    assert!(sim.send(2, 1, 0).await.is_err());
    assert!(sim.inject_raw(2, bytes::Bytes::new()).is_err());
}

/// C8 as a real restart has it: the crashed node's catalog stays on disk, and its restart
/// reopens it and takes a higher incarnation from it; messages flow to and from it.
#[tokio::test(flavor = "current_thread")]
async fn restarts_take_their_incarnation_from_the_catalog_on_disk() {
    let mut sim = SimCluster::<String>::builder()
        .nodes(3)
        .seed(21)
        .catalogs(true)
        .build()
        .await
        .unwrap();
    // A fresh catalog's first incarnation is 1.
    assert_eq!(sim.incarnation(2), Some(1));
    sim.crash(2).await.unwrap();
    sim.send(1, 2, "while down".into()).await.unwrap();
    assert_eq!(sim.restart(2).await.unwrap(), 2);
    assert_eq!(sim.restart(2).await.unwrap(), 3);
    sim.send(1, 2, "after".into()).await.unwrap();
    sim.send(2, 3, "from the new incarnation".into())
        .await
        .unwrap();
    sim.settle().await;
    let at2: Vec<String> = sim.take_received(2).into_iter().map(|e| e.msg).collect();
    assert_eq!(at2, ["after"]);
    assert_eq!(sim.take_received(3).len(), 1);
    let history = sim.finish().await;
    let verdict = oracle::check(&history);
    assert!(verdict.is_ok(), "{verdict}");
}

/// Every drop is recorded with its reason, per message: refused at send, discarded in
/// flight by a fault, or dropped by the receiving server; a full inbox drops nothing (it
/// pushes back); and each copy ends exactly once.
#[tokio::test(flavor = "current_thread")]
async fn every_drop_is_recorded_with_its_reason() {
    let config = cluster_core::Config::local(3, 20_000)
        .unwrap()
        .with_options(cluster_core::Options {
            inbox_capacity: 2,
            ..cluster_core::Options::default()
        })
        .unwrap();
    let mut sim = SimCluster::<u8>::builder()
        .config(config)
        .seed(5)
        .build()
        .await
        .unwrap();
    // In flight to 3 when it crashes: discarded, `unreachable`.
    let lost = sim.send(1, 3, 1).await.unwrap();
    sim.crash(3).await.unwrap();
    // 2's inbox holds two: 2 sends itself one, and of the three from 1 the last two wait
    // in the network (flow control), to be delivered once 2 reads again, not dropped.
    sim.pause_inbox(2, true);
    sim.enqueue(2, 2, 9).unwrap();
    for i in 0..3 {
        sim.send(1, 2, i).await.unwrap();
    }
    sim.settle().await;
    sim.pause_inbox(2, false);
    // Garbage: dropped by 2's server as `malformed`, with no sender.
    sim.inject_raw(2, bytes::Bytes::from_static(b"garbage"))
        .unwrap();
    let history = sim.finish().await;
    let has = |f: &dyn Fn(&Event) -> bool| history.iter().any(|r| f(&r.event));
    assert!(has(
        &|e| matches!(e, Event::Discarded { to: 3, msg_id, reason, .. }
        if *msg_id == lost && *reason == DropReason::Unreachable)
    ));
    assert!(!has(&|e| matches!(
        e,
        Event::Dropped {
            at: 2,
            from: Some(_),
            ..
        }
    )));
    let delivered = |from: Pid| {
        history
            .iter()
            .filter(|r| matches!(r.event, Event::Delivered { at: 2, from: f, .. } if f == from))
            .count()
    };
    assert_eq!((delivered(1), delivered(2)), (3, 1));
    assert!(has(
        &|e| matches!(e, Event::Dropped { at: 2, from: None, reason, .. }
        if *reason == DropReason::Malformed)
    ));
    let c7 = oracle::check_c7_accounting(&oracle::Analysis::new(&history));
    assert!(c7.is_empty(), "{c7:?}");
}

/// Incarnations mean the same in simulation as on a real node: a fresh catalog's first
/// start is incarnation 1, each restart one more; the in-memory network agrees, and so does
/// its transport's `Transport::incarnation`.
#[tokio::test(flavor = "current_thread")]
async fn incarnations_are_those_of_a_real_node_with_or_without_catalogs() {
    let mut plain: SimCluster<u8> = SimCluster::<u8>::builder()
        .nodes(2)
        .seed(1)
        .build()
        .await
        .unwrap();
    let mut catalogs: SimCluster<u8> = SimCluster::<u8>::builder()
        .nodes(2)
        .seed(1)
        .catalogs(true)
        .build()
        .await
        .unwrap();
    for sim in [&mut plain, &mut catalogs] {
        assert_eq!(sim.incarnation(1), Some(1));
        assert_eq!(sim.restart(1).await.unwrap(), 2);
        assert_eq!(sim.restart(1).await.unwrap(), 3);
        assert_eq!(sim.incarnation(2), Some(1));
    }
    let config = cluster_core::Config::local(2, 7000).unwrap();
    let net = MemNetwork::new(&config, 1);
    assert_eq!(net.transport(1).unwrap().incarnation(), Some(1));
    assert_eq!(net.restart(1), Some(2));
    assert_eq!(net.transport(1).unwrap().incarnation(), Some(2));
}

/// Node logic that broadcasts its value with message id 0 every time, and keeps the
/// largest it hears: ids that say nothing, so only names tell the messages apart.
async fn same_id_every_time(
    mut server: cluster_core::Server<u64>,
    ctx: cluster_testkit::NodeContext,
) {
    let mut value = u64::from(ctx.pid().unsigned_abs());
    for _ in 0..5 {
        let _ = server
            .outbox()
            .try_send(cluster_core::Envelope::new(BROADCAST, 0, value));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        while let Ok(env) = server.inbox().try_recv() {
            value = value.max(env.msg);
        }
    }
    std::future::pending::<()>().await;
}

/// The history names each message (sender, incarnation, sequence) wherever it goes, with
/// the user's one-line summary of its payload; an arrival carries the name its sender gave.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_message_is_named_and_summarized_where_it_goes() {
    let mut sim = SimCluster::<u64>::builder()
        .nodes(3)
        .seed(9)
        .summary(|v: &u64| format!("value\n{v}"))
        .build()
        .await
        .unwrap();
    sim.spawn_nodes(same_id_every_time);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let history = sim.finish().await;
    sim.shutdown().await;
    let mut routed: BTreeMap<MsgRef, (BTreeSet<i32>, String)> = BTreeMap::new();
    let mut arrivals = 0;
    for r in &history {
        match &r.event {
            Event::Routed {
                from,
                incarnation,
                to,
                msg_id,
                ..
            } => {
                let name = r.msg.unwrap_or_else(|| panic!("unnamed: {r:?}"));
                assert_eq!(
                    (name.from, name.incarnation, *msg_id),
                    (*from, *incarnation, 0)
                );
                let summary = r.summary.clone().unwrap_or_default();
                assert!(summary.starts_with("value "), "one line: {summary:?}");
                routed
                    .entry(name)
                    .or_insert_with(|| (BTreeSet::new(), summary))
                    .0
                    .insert(*to);
            }
            Event::Arrived { at, .. } => {
                let name = r.msg.unwrap_or_else(|| panic!("unnamed: {r:?}"));
                let (to, summary) = routed
                    .get(&name)
                    .unwrap_or_else(|| panic!("{name} arrived at {at} before it was sent"));
                assert!(to.contains(at), "{name} arrived at {at}, sent to {to:?}");
                assert_eq!(r.summary.as_ref(), Some(summary));
                arrivals += 1;
            }
            _ => {}
        }
    }
    // Each broadcast is one message with two copies, numbered 1, 2, … per sender.
    for pid in 1..=3 {
        let seqs: Vec<u64> = routed
            .keys()
            .filter(|n| n.from == pid)
            .map(|n| n.seq)
            .collect();
        assert_eq!(seqs, (1..=5).collect::<Vec<_>>(), "node {pid}");
    }
    assert!(routed.values().all(|(to, _)| to.len() == 2));
    assert_eq!(arrivals, 3 * 5 * 2);
}

/// In scenario runs too: the send and the delivery of a message name it.
#[tokio::test(flavor = "current_thread")]
async fn harness_sends_and_deliveries_are_named_too() {
    let mut sim = SimCluster::<String>::builder()
        .nodes(2)
        .seed(4)
        .summary(|s: &String| s.to_uppercase())
        .build()
        .await
        .unwrap();
    sim.send(1, 2, String::from("hello")).await.unwrap();
    sim.send(1, 1, String::from("to myself")).await.unwrap();
    let history = sim.finish().await;
    let find = |f: &dyn Fn(&Event) -> bool| {
        history
            .iter()
            .find(|r| f(&r.event))
            .unwrap_or_else(|| panic!("not in {history:#?}"))
    };
    let send = find(&|e| matches!(e, Event::Send { to: 2, .. }));
    assert_eq!(send.summary.as_deref(), Some("HELLO"));
    let delivered = find(&|e| matches!(e, Event::Delivered { at: 2, .. }));
    assert_eq!(
        delivered.msg.map(|m| m.to_string()).as_deref(),
        Some("1.1#1")
    );
    assert_eq!(delivered.summary.as_deref(), Some("HELLO"));
    let to_itself = find(&|e| matches!(e, Event::Delivered { at: 1, .. }));
    assert_eq!(to_itself.summary.as_deref(), Some("TO MYSELF"));
}

/// Node logic with a panic in it, and one that reports: the first failure is kept and
/// recorded in the history, with the node's incarnation.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn node_failures_are_recorded_and_kept() {
    let mut sim = SimCluster::<u8>::builder()
        .nodes(3)
        .seed(2)
        .build()
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    sim.spawn_nodes({
        let seen = Arc::clone(&seen);
        move |server: cluster_core::Server<u8>, ctx: cluster_testkit::NodeContext| {
            let seen = Arc::clone(&seen);
            async move {
                let _server = server;
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(
                    ctx.pid().unsigned_abs(),
                )))
                .await;
                seen.lock().unwrap().push(ctx.pid());
                match ctx.pid() {
                    1 => ctx.fail("first"),
                    2 => panic!("second"),
                    _ => {}
                }
                std::future::pending::<()>().await;
            }
        }
    });
    let first = sim.node_failed().await;
    assert_eq!(
        first.to_string(),
        "node 1 (incarnation 1) reported a violation: first"
    );
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    assert_eq!(*seen.lock().unwrap(), [1, 2, 3]);
    assert_eq!(sim.take_node_failure(), Some(first));
    let failed: Vec<(i32, bool)> = sim
        .history()
        .records()
        .iter()
        .filter_map(|r| match &r.event {
            Event::NodeFailed { pid, panicked, .. } => Some((*pid, *panicked)),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [(1, false), (2, true)]);
    sim.shutdown().await;
}

/// A node joins a running cluster and gets broadcasts; a member leaves, and a send to it is
/// then `unknown_peer`; the oracle (membership included) passes the run.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_node_joins_and_a_member_leaves() {
    let mut sim = SimCluster::<u32>::builder()
        .nodes(3)
        .seed(5)
        .build()
        .await
        .unwrap();
    sim.send(1, 4, 0).await.unwrap(); // not a member yet: unknown_peer
    let timeout = std::time::Duration::from_secs(3);
    assert!(
        sim.join(4, timeout).await.unwrap(),
        "the join did not complete"
    );
    assert_eq!(sim.members(), [1, 2, 3, 4]);
    sim.send(1, BROADCAST, 1).await.unwrap();
    sim.send(4, 2, 2).await.unwrap();
    sim.settle().await;
    let got: Vec<u32> = sim.take_received(4).into_iter().map(|e| e.msg).collect();
    assert_eq!(got, [1]);
    assert_eq!(
        sim.take_received(2).iter().filter(|e| e.pid == 4).count(),
        1
    );
    assert!(
        sim.leave(2, timeout).await.unwrap(),
        "the leave did not complete"
    );
    assert!(!sim.is_up(2));
    sim.send(1, 2, 3).await.unwrap(); // removed: unknown_peer
    sim.send(4, BROADCAST, 4).await.unwrap();
    let history = sim.finish().await;
    let verdict = oracle::check(&history);
    assert!(verdict.is_ok(), "{verdict}");
    let unknown: u64 = history
        .iter()
        .filter_map(|r| match &r.event {
            Event::Stats {
                dropped_outgoing, ..
            } => dropped_outgoing.get(&DropReason::UnknownPeer).copied(),
            _ => None,
        })
        .sum();
    assert_eq!(unknown, 2);
    let ends: Vec<usize> = history
        .iter()
        .filter_map(|r| match &r.event {
            Event::Members { records, .. } => Some(records.iter().filter(|m| m.present).count()),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [3, 3, 3], "1, 3 and 4 agree on three members");
}
