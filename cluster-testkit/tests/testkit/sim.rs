//! The simulator as a user sees it.

use cluster_core::{BROADCAST, DropReason};
use cluster_testkit::{Event, SimCluster, from_json_lines, oracle};

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
    assert_eq!(sim.restart(3).await.unwrap(), 1);
    assert_eq!(sim.incarnation(3), Some(1));
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
/// flight by a fault, or dropped by the receiving server; and each copy ends exactly once.
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
    // 2's inbox holds two: the third is dropped on arrival, `backpressure`.
    sim.pause_inbox(2, true);
    for i in 0..3 {
        sim.send(1, 2, i).await.unwrap();
    }
    // 2 also sends to itself, routed while the frames from 1 arrive: not mistaken for them.
    sim.enqueue(2, 2, 9).unwrap();
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
    assert!(has(
        &|e| matches!(e, Event::Dropped { at: 2, from: Some(1), reason, .. }
        if *reason == DropReason::Backpressure)
    ));
    assert!(has(
        &|e| matches!(e, Event::Dropped { at: 2, from: None, reason, .. }
        if *reason == DropReason::Malformed)
    ));
    let c7 = oracle::check_c7_accounting(&oracle::Analysis::new(&history));
    assert!(c7.is_empty(), "{c7:?}");
}
