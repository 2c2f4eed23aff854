//! The Go package's own scenarios.

use cluster_core::{BROADCAST, DropReason, Envelope, Options};

use crate::sim::Sim;

#[tokio::test]
async fn four_servers_broadcast_ten_each_and_each_receives_thirty() {
    let mut sim: Sim<String> = Sim::new(4, Options::default());
    for round in 0..10 {
        for from in 1..=4 {
            let id = sim.nodes[&from].next_msg_id();
            sim.send(
                from,
                Envelope::new(BROADCAST, id, format!("{from}:{round}")),
            )
            .await;
        }
    }
    sim.settle().await;
    for pid in 1..=4 {
        let got = sim.drain(pid);
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
    sim.assert_accounting();
}

#[tokio::test]
async fn a_message_passed_round_robin_arrives_intact() {
    let mut sim: Sim<Vec<u8>> = Sim::new(4, Options::default());
    let payload: Vec<u8> = (0..=255).cycle().take(10_000).collect();
    sim.send(1, Envelope::new(2, 77, payload.clone())).await;
    for (me, next) in [(2, 3), (3, 4)] {
        let env = sim.node(me).inbox().recv().await.unwrap();
        assert_eq!(env.pid, me - 1);
        sim.send(me, Envelope::new(next, env.msg_id, env.msg)).await;
    }
    let last = sim.node(4).inbox().recv().await.unwrap();
    assert_eq!(last, Envelope::new(3, 77, payload));
}

#[tokio::test]
async fn a_message_to_a_down_peer_is_never_delivered_not_even_after_restart() {
    let mut sim: Sim<String> = Sim::new(4, Options::default());
    sim.crash(3).await;
    sim.send(1, Envelope::new(3, 1, "while down".into())).await;
    sim.send(
        1,
        Envelope::new(BROADCAST, 2, "broadcast while down".into()),
    )
    .await;
    sim.settle().await;
    let s1 = sim.nodes[&1].stats();
    assert_eq!(s1.peers[&3].dropped_to.get(DropReason::Unreachable), 2);

    sim.restart(3);
    sim.send(1, Envelope::new(3, 3, "after restart".into()))
        .await;
    sim.settle().await;
    let got = sim.drain(3);
    assert_eq!(got, vec![Envelope::new(1, 3, "after restart".to_string())]);
    // The others got the broadcast.
    assert_eq!(sim.drain(2).len(), 1);
    assert_eq!(sim.drain(4).len(), 1);
    sim.assert_accounting();
}
