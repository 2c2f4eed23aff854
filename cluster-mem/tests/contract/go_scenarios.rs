//! The Go package's own scenarios.

use cluster_core::{BROADCAST, DropReason, Envelope, Options};

use crate::{check, sim};

#[tokio::test]
async fn four_servers_broadcast_ten_each_and_each_receives_thirty() {
    let (mut sim, _net) = sim::<String>(4, Options::default()).await;
    for round in 0..10 {
        for from in 1..=4 {
            sim.send(from, BROADCAST, format!("{from}:{round}"))
                .await
                .unwrap();
        }
    }
    assert!(sim.settle().await);
    for pid in 1..=4 {
        let got = sim.take_received(pid);
        assert_eq!(got.len(), 30, "node {pid}");
        assert!(got.iter().all(|e| e.pid != pid), "no copy to the sender");
        for from in (1..=4).filter(|f| *f != pid) {
            let texts: Vec<_> = got
                .iter()
                .filter(|e| e.pid == from)
                .map(|e| e.msg.clone())
                .collect();
            let expected: Vec<_> = (0..10).map(|r| format!("{from}:{r}")).collect();
            assert_eq!(texts, expected, "from {from} to {pid}");
        }
    }
    check(&mut sim).await;
}

#[tokio::test]
async fn a_message_passed_round_robin_arrives_intact() {
    let (mut sim, _net) = sim::<Vec<u8>>(4, Options::default()).await;
    let payload: Vec<u8> = (0..=255).cycle().take(10_000).collect();
    let mut id = sim.send(1, 2, payload.clone()).await.unwrap();
    for (me, next) in [(2, 3), (3, 4)] {
        assert!(sim.settle().await);
        let got = sim.take_received(me);
        assert_eq!(got, vec![Envelope::new(me - 1, id, payload.clone())]);
        let env = got.into_iter().next().unwrap();
        id = sim.send(me, next, env.msg).await.unwrap();
    }
    assert!(sim.settle().await);
    assert_eq!(sim.take_received(4), vec![Envelope::new(3, id, payload)]);
    check(&mut sim).await;
}

#[tokio::test]
async fn a_message_to_a_down_peer_is_never_delivered_not_even_after_restart() {
    let (mut sim, _net) = sim::<String>(4, Options::default()).await;
    sim.crash(3).await.unwrap();
    sim.send(1, 3, "while down".into()).await.unwrap();
    sim.send(1, BROADCAST, "broadcast while down".into())
        .await
        .unwrap();
    assert!(sim.settle().await);
    let s1 = sim.monitor(1).unwrap().stats();
    assert_eq!(s1.peers[&3].dropped_to.get(DropReason::Unreachable), 2);

    sim.restart(3).await.unwrap();
    let after = sim.send(1, 3, "after restart".into()).await.unwrap();
    assert!(sim.settle().await);
    let got = sim.take_received(3);
    assert_eq!(
        got,
        vec![Envelope::new(1, after, "after restart".to_string())]
    );
    // The others got the broadcast.
    assert_eq!(sim.take_received(2).len(), 1);
    assert_eq!(sim.take_received(4).len(), 1);
    check(&mut sim).await;
}
