//! Membership at run time in simulation (`cluster_core::membership`): a node joins a
//! running cluster, a member removes a peer, a member leaves, concurrent changes resolve
//! the same everywhere, and a restarted node comes back with the membership it knew.

use std::time::Duration;

use cluster_core::{
    BROADCAST, Config, DropReason, Envelope, Event, Events, Member, MembershipError, Pid, Server,
    ServerBuilder,
};
use cluster_mem::MemNetwork;

const WAIT: Duration = Duration::from_secs(10);

fn told(events: &mut Events) -> Vec<Event> {
    std::iter::from_fn(|| events.try_recv())
        .map(|e| e.unwrap().event)
        .collect()
}

/// Present pids, as `members()` records them.
fn present(records: &[Member]) -> Vec<Pid> {
    records
        .iter()
        .filter(|m| m.present)
        .map(|m| m.pid)
        .collect()
}

/// Lets the nodes run a while (virtual time).
async fn settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// Nodes 1..=3 of a 3-node config, and node 4 with a config that lists all four.
fn cluster() -> (MemNetwork, Config, Vec<Server<u32>>, Server<u32>) {
    let three = Config::local(3, 17400).unwrap();
    let four = Config::local(4, 17400).unwrap();
    let net = MemNetwork::new(&three, 3);
    net.add_node(4).unwrap();
    let servers = (1..=3)
        .map(|p| Server::with_transport(p, three.clone(), net.transport(p).unwrap()).unwrap())
        .collect();
    let joiner = Server::with_transport(4, four.clone(), net.transport(4).unwrap()).unwrap();
    (net, four, servers, joiner)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_node_joins_a_running_cluster_and_is_removed_again() {
    let (_net, four, mut s, mut joiner) = cluster();
    let mut events: Vec<Events> = s.iter().map(Server::events).collect();
    for n in &s {
        n.wait_for_peers_up(WAIT).await.unwrap();
    }
    // Not a member yet: a message to it is for an unknown peer.
    s[0].outbox().send(Envelope::new(4, 1, 1)).await.unwrap();
    assert_eq!(
        s[0].stats().dropped_outgoing.get(DropReason::UnknownPeer),
        1
    );
    // It asks to join: every member lets it in, and it is up with each.
    joiner.join(WAIT).await.unwrap();
    for n in &s {
        n.wait_for_peers_up(WAIT).await.unwrap();
        assert_eq!(n.current_peers().len(), 3, "node {}", n.pid());
    }
    settle().await;
    for (n, ev) in s.iter().zip(events.iter_mut()) {
        let got = told(ev);
        assert!(
            got.contains(&Event::Joined(4)) && got.contains(&Event::Up(4)),
            "node {}: {got:?}",
            n.pid()
        );
    }
    // Every node holds the same records.
    let records = s[0].members();
    assert_eq!(present(&records), [1, 2, 3, 4]);
    for n in s.iter().chain([&joiner]) {
        assert_eq!(n.members(), records, "node {}", n.pid());
    }
    // A broadcast reaches it; it reaches the others.
    s[1].outbox()
        .send(Envelope::new(BROADCAST, 2, 22))
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, joiner.inbox().recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.pid, got.msg), (2, 22));
    joiner.outbox().send(Envelope::new(1, 3, 33)).await.unwrap();
    for (pid, msg) in [(2, 22), (4, 33)] {
        let got = tokio::time::timeout(WAIT, s[0].inbox().recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((got.pid, got.msg), (pid, msg));
    }
    let _ = tokio::time::timeout(WAIT, s[2].inbox().recv())
        .await
        .unwrap();

    // Node 1 removes it: every member tells Left, and so does node 4 about itself.
    let mut at4 = joiner.events();
    s[0].remove_peer(4).unwrap();
    assert_eq!(s[0].remove_peer(4), Err(MembershipError::NotAMember(4)));
    assert_eq!(s[0].remove_peer(1), Err(MembershipError::Itself(1)));
    settle().await;
    for (n, ev) in s.iter().zip(events.iter_mut()) {
        assert_eq!(told(ev), [Event::Left(4)], "node {}", n.pid());
        assert_eq!(n.current_peers().len(), 2);
    }
    assert!(told(&mut at4).contains(&Event::Left(4)));
    // Messages to it are for an unknown peer again; its own are from an unknown sender.
    s[1].outbox().send(Envelope::new(4, 4, 44)).await.unwrap();
    assert_eq!(
        s[1].stats().peers[&4]
            .dropped_to
            .get(DropReason::UnknownPeer),
        1
    );
    let before = s[2].stats().dropped_incoming.get(DropReason::UnknownSender);
    joiner.outbox().send(Envelope::new(3, 5, 55)).await.unwrap();
    settle().await;
    assert_eq!(
        s[2].stats().dropped_incoming.get(DropReason::UnknownSender),
        before + 1
    );
    // Its counters stay.
    assert_eq!(s[0].stats().peers[&4].delivered, 1);
    let _ = four;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_member_leaves_and_concurrent_changes_end_the_same_everywhere() {
    let (net, _four, s, _joiner) = cluster();
    for n in &s {
        n.wait_for_peers_up(WAIT).await.unwrap();
    }
    // Concurrent: nodes 1 and 2 add 4 at two addresses, each before hearing the other:
    // the same epoch, so the higher origin (node 2) wins, everywhere.
    net.partition(&[1], &[2]);
    s[0].add_peer(4, "127.0.0.1:17404").unwrap();
    s[1].add_peer(4, "127.0.0.1:27404").unwrap();
    net.heal();
    settle().await;
    let records = s[0].members();
    for n in &s {
        assert_eq!(n.members(), records, "node {}", n.pid());
    }
    let four = records.iter().find(|m| m.pid == 4).unwrap();
    assert_eq!(
        (four.address.as_str(), four.epoch, four.origin),
        ("127.0.0.1:27404", 1, 2)
    );
    // Then node 3 removes it (a later epoch): absent everywhere.
    s[2].remove_peer(4).unwrap();
    settle().await;
    for n in &s {
        assert_eq!(present(&n.members()), [1, 2, 3], "node {}", n.pid());
    }

    // Node 3 leaves: the others let it go, and it learns it.
    let mut ev1 = s[0].events();
    s[2].leave(WAIT).await.unwrap();
    settle().await;
    assert_eq!(told(&mut ev1), [Event::Left(3)]);
    assert_eq!(s[0].current_peers(), [2]);
    assert_eq!(s[1].current_peers(), [1]);
    // Bad changes are refused with a clear error.
    let e = s[0].add_peer(5, "nowhere").unwrap_err();
    assert_eq!(
        e.to_string(),
        "address \"nowhere\" is not host:port (e.g. 127.0.0.1:7001 or [::1]:7001)"
    );
    assert!(matches!(
        s[0].add_peer(-3, "127.0.0.1:1"),
        Err(MembershipError::BadPid(-3))
    ));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_restarted_node_comes_back_with_the_membership_it_knew() {
    let (net, _four, mut s, joiner) = cluster();
    joiner.join(WAIT).await.unwrap();
    s[0].remove_peer(3).unwrap();
    settle().await;
    let known = s[1].members();
    assert_eq!(present(&known), [1, 2, 4]);
    // Node 2 restarts with its three-node config, but with the records it kept.
    let three = s[1].config().clone();
    let old = s.remove(1);
    net.crash(2);
    drop(old);
    net.restart(2).unwrap();
    let back: Server<u32> = ServerBuilder::new(2, three)
        .members(known.clone())
        .build(net.transport(2).unwrap())
        .unwrap();
    assert_eq!(back.current_peers(), [1, 4]);
    assert_eq!(back.members(), known);
    back.wait_for_peers_up(WAIT).await.unwrap();
    back.outbox().send(Envelope::new(4, 1, 9)).await.unwrap();
    assert_eq!(back.stats().peers[&4].sent, 1);
    assert_eq!(back.stats().dropped_outgoing.total(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn with_a_key_a_node_without_it_cannot_join() {
    let key = |b: u8| Some(cluster_core::ClusterKey::from_bytes([b; 32]));
    let three = Config::local(3, 17500).unwrap().with_cluster_key(key(7));
    let four = Config::local(4, 17500).unwrap();
    let net = MemNetwork::new(&three, 5);
    net.add_node(4).unwrap();
    let s: Vec<Server<u32>> = (1..=3)
        .map(|p| Server::with_transport(p, three.clone(), net.transport(p).unwrap()).unwrap())
        .collect();
    for n in &s {
        n.wait_for_peers_up(WAIT).await.unwrap();
    }
    // Under another key: refused, counted, and nothing changes.
    let stranger: Server<u32> = Server::with_transport(
        4,
        four.clone().with_cluster_key(key(8)),
        net.transport(4).unwrap(),
    )
    .unwrap();
    let e = stranger.join(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(e.missing, [1, 2, 3]);
    for n in &s {
        assert_eq!(present(&n.members()), [1, 2, 3]);
        assert!(n.stats().dropped_incoming.get(DropReason::Unauthenticated) > 0);
    }
    stranger.shutdown().await;
    // Under the key: let in.
    net.restart(4).unwrap();
    let member: Server<u32> =
        Server::with_transport(4, four.with_cluster_key(key(7)), net.transport(4).unwrap())
            .unwrap();
    member.join(WAIT).await.unwrap();
    settle().await;
    for n in &s {
        assert_eq!(present(&n.members()), [1, 2, 3, 4]);
    }
}

/// A member that was down while a node joined (the joiner's `join` gave up on it) drops the
/// new node's frames as `unknown_sender`: it learns of the join from the new node's
/// automatic requests, once it is back.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_member_that_missed_a_join_learns_it_from_the_new_node() {
    let (net, _four, mut s, joiner) = cluster();
    for n in &s {
        n.wait_for_peers_up(WAIT).await.unwrap();
    }
    let three = s[2].config().clone();
    let down = s.remove(2);
    net.crash(3);
    drop(down);
    let e = joiner.join(Duration::from_secs(3)).await.unwrap_err();
    assert_eq!(e.missing, [3]);
    // Node 3 comes back with only its config: it never heard of node 4.
    net.restart(3).unwrap();
    let back: Server<u32> = Server::with_transport(3, three, net.transport(3).unwrap()).unwrap();
    assert_eq!(back.current_peers(), [1, 2]);
    back.wait_for_peers_up(WAIT).await.unwrap();
    settle().await;
    assert_eq!(back.current_peers(), [1, 2, 4]);
    joiner.wait_for_peers_up(WAIT).await.unwrap();
    assert_eq!(back.members(), s[0].members());
}

/// After a node joined, a member leaves: the new node hears of it too (every member
/// holds the same records).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_member_leaves_after_a_join_and_the_new_node_hears_it() {
    let five = Config::local(5, 17700).unwrap();
    let six = Config::local(6, 17700).unwrap();
    let net = MemNetwork::new(&five, 9);
    net.add_node(6).unwrap();
    let s: Vec<Server<u32>> = (1..=5)
        .map(|p| Server::with_transport(p, five.clone(), net.transport(p).unwrap()).unwrap())
        .collect();
    for n in &s {
        n.wait_for_peers_up(WAIT).await.unwrap();
    }
    let joiner: Server<u32> = Server::with_transport(6, six, net.transport(6).unwrap()).unwrap();
    joiner.join(WAIT).await.unwrap();
    s[0].leave(WAIT).await.unwrap();
    settle().await;
    let records = s[1].members();
    assert_eq!(present(&records), [2, 3, 4, 5, 6]);
    assert_eq!(joiner.members(), records);
}
