//! Membership at run time, on the transport itself (`Transport::add_peer`,
//! `Transport::remove_peer`): nodes 1 and 2 start with a config that lists only them, node 3
//! with the full one; 1 and 2 add 3 while running, and remove it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_core::wire::{self, Frame, Header};
use cluster_core::{Config, DropReason, Options, Pid, Transport, TransportEvent};
use cluster_testkit::net::{self, DEADLINE};
use cluster_zmq::{Backend, ZmqTransport};

on_every_backend!(
    a_joined_peer_is_connected_and_frames_flow_both_ways,
    adding_a_peer_again_changes_nothing_elsewhere_moves_it_and_bad_ones_are_errors,
    a_removed_peer_is_unknown_and_its_frames_are_not_handed_up,
    what_was_queued_for_a_removed_peer_is_discarded_and_reported,
    servers_let_a_node_join_and_leave_over_real_sockets,
);

/// Nodes 1 and 2 bound with a config of pids 1 and 2 only, node 3 with the full one (pids
/// 1 to 3), on fresh ports, each connected to the peers its config lists: `(full config,
/// [node 1, node 2, node 3])`.
async fn trio(backend: Backend, options: Options) -> (Config, [ZmqTransport; 3]) {
    let (full, nodes) = net::bind_local(3, options, async |full| {
        let first_two = full
            .peers()
            .iter()
            .filter(|p| p.pid != 3)
            .map(|p| (p.pid, p.address.clone()));
        let first_two = Config::from_peers(first_two, full.options().clone()).unwrap();
        let a = cluster_zmq::bind_with(backend, 1, &first_two).await?;
        let b = cluster_zmq::bind_with(backend, 2, &first_two).await?;
        let c = cluster_zmq::bind_with(backend, 3, full).await?;
        Ok([a, b, c])
    })
    .await
    .unwrap();
    // Every connection a config names is up: what a test sees next is its own doing.
    let [a, b, c] = &nodes;
    wait_connected(a, &[2]).await;
    wait_connected(b, &[1]).await;
    wait_connected(c, &[1, 2]).await;
    (full, nodes)
}

fn address(config: &Config, pid: Pid) -> String {
    config.peer(pid).unwrap().address.clone()
}

/// A message frame from `from` to `to` carrying `text`.
fn frame(from: Pid, to: Pid, msg_id: i64, text: &str) -> Bytes {
    wire::encode(&Header::new(from, to, 0, msg_id), text).unwrap()
}

/// Waits until `t`'s connection set holds every pid of `peers`.
async fn wait_connected(t: &ZmqTransport, peers: &[Pid]) {
    let mut rx = t.connected();
    let all = rx.wait_for(|s| peers.iter().all(|p| s.contains(p)));
    assert!(
        tokio::time::timeout(DEADLINE, all).await.is_ok(),
        "not connected to {peers:?}: {:?}",
        t.connected().borrow()
    );
}

/// The next event `t` hands up.
async fn next_event(t: &ZmqTransport) -> TransportEvent {
    let take = async {
        loop {
            assert!(t.readable().await, "transport closed");
            let mut events = Vec::new();
            if t.try_recv_many(&mut events, 1) == 1 {
                return events.remove(0);
            }
        }
    };
    tokio::time::timeout(DEADLINE, take)
        .await
        .expect("no event within the deadline")
}

/// The next frame `t` hands up, decoded (reports of dropped frames are skipped).
async fn next_frame(t: &ZmqTransport) -> (Pid, String) {
    loop {
        if let TransportEvent::Frame(bytes) = next_event(t).await {
            let frame = Frame::decode(bytes).unwrap();
            return (frame.header.sender, frame.message::<String>().unwrap());
        }
    }
}

/// Sends `text` from `from` (pid `from_pid`) to `to_pid` and checks that `to` hands it up.
async fn exchange(from: &ZmqTransport, from_pid: Pid, to: &ZmqTransport, to_pid: Pid, text: &str) {
    assert_eq!(from.send(to_pid, frame(from_pid, to_pid, 1, text)), Ok(()));
    assert_eq!(next_frame(to).await, (from_pid, text.to_owned()));
}

async fn shutdown_all(nodes: [ZmqTransport; 3]) {
    for t in nodes {
        t.shutdown(Duration::from_millis(100)).await;
    }
}

async fn a_joined_peer_is_connected_and_frames_flow_both_ways(backend: Backend) {
    let (full, [a, b, c]) = trio(backend, net::fast_options()).await;
    let addr3 = address(&full, 3);
    // Before it is added, 3 is no peer of 1's.
    assert_eq!(
        a.send(3, frame(1, 3, 1, "early")),
        Err(DropReason::UnknownPeer)
    );
    assert!(!a.connected().borrow().contains(&3));

    a.add_peer(3, &addr3).unwrap();
    b.add_peer(3, &addr3).unwrap();
    wait_connected(&a, &[2, 3]).await;
    wait_connected(&b, &[1, 3]).await;
    wait_connected(&c, &[1, 2]).await;

    exchange(&a, 1, &c, 3, "1 to 3").await;
    exchange(&c, 3, &a, 1, "3 to 1").await;
    exchange(&b, 2, &c, 3, "2 to 3").await;
    exchange(&c, 3, &b, 2, "3 to 2").await;
    // The configured peers are as they were.
    exchange(&a, 1, &b, 2, "1 to 2").await;
    exchange(&b, 2, &a, 1, "2 to 1").await;
    shutdown_all([a, b, c]).await;
}

async fn adding_a_peer_again_changes_nothing_elsewhere_moves_it_and_bad_ones_are_errors(
    backend: Backend,
) {
    let (full, [a, b, c]) = trio(backend, net::fast_options()).await;
    let addr3 = address(&full, 3);
    a.add_peer(3, &addr3).unwrap();
    wait_connected(&a, &[2, 3]).await;
    // Again, and a configured peer at its own address: nothing changes.
    a.add_peer(3, &addr3).unwrap();
    a.add_peer(2, &address(&full, 2)).unwrap();
    assert!(a.connected().borrow().contains(&3));
    // One socket to 3, not two: every frame arrives once, in order.
    for i in 0..10 {
        assert_eq!(a.send(3, frame(1, 3, i, &format!("m{i}"))), Ok(()));
    }
    for i in 0..10 {
        assert_eq!(next_frame(&c).await, (1, format!("m{i}")));
    }
    let mut rest = Vec::new();
    assert_eq!(c.try_recv_many(&mut rest, 16), 0, "{rest:?}");

    let error = |r: Result<(), cluster_core::TransportError>| r.unwrap_err().to_string();
    // Not host:port, as the config says it.
    for bad in [
        "nonsense",
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        "::1:80",
        "",
    ] {
        let e = error(a.add_peer(4, bad));
        assert!(
            e.contains("pid 4") && e.contains(&format!("address \"{bad}\" is not host:port")),
            "{e}"
        );
    }
    assert_eq!(a.send(4, frame(1, 4, 1, "x")), Err(DropReason::UnknownPeer));
    let e = error(a.add_peer(-1, "127.0.0.1:7001"));
    assert!(e.contains("negative"), "{e}");
    // The node itself.
    let e = error(a.add_peer(1, &address(&full, 1)));
    assert!(e.contains("pid 1") && e.contains("own pid"), "{e}");
    let e = error(a.remove_peer(1));
    assert!(e.contains("own pid"), "{e}");
    // Removing a pid that is no peer is no error.
    a.remove_peer(9).unwrap();
    // Nothing above disturbed the peers it has.
    exchange(&a, 1, &c, 3, "still 3").await;
    exchange(&a, 1, &b, 2, "still 2").await;

    // Another address for a peer it has: it moved. Nothing listens there (a port held by
    // the test): not connected, and sends are refused as unreachable, not unknown.
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    a.add_peer(3, &elsewhere.local_addr().unwrap().to_string())
        .unwrap();
    assert!(!a.connected().borrow().contains(&3));
    assert_eq!(a.send(3, frame(1, 3, 1, "x")), Err(DropReason::Unreachable));
    // Moved back: connected again, one socket, frames flow. Not on the zeromq backend: there,
    // about 1 run in 10 never connects again (a known bug, not fixed: see the README).
    a.add_peer(3, &addr3).unwrap();
    wait_connected(&a, &[2, 3]).await;
    exchange(&a, 1, &c, 3, "back").await;
    exchange(&c, 3, &a, 1, "from 3").await;

    // After shutdown nothing can be added.
    a.shutdown(Duration::from_millis(100)).await;
    let e = error(a.add_peer(5, "127.0.0.1:7005"));
    assert!(e.contains("shut down"), "{e}");
    shutdown_all([a, b, c]).await;
}

async fn a_removed_peer_is_unknown_and_its_frames_are_not_handed_up(backend: Backend) {
    let (full, [a, b, c]) = trio(backend, net::fast_options()).await;
    let addr3 = address(&full, 3);
    a.add_peer(3, &addr3).unwrap();
    wait_connected(&a, &[2, 3]).await;
    exchange(&c, 3, &a, 1, "before").await;
    let link = a.link_stats();

    a.remove_peer(3).unwrap();
    // At once: out of the connection set, and unknown to send.
    assert!(!a.connected().borrow().contains(&3));
    assert_eq!(a.send(3, frame(1, 3, 1, "x")), Err(DropReason::UnknownPeer));
    tokio::time::timeout(DEADLINE, a.writable(3))
        .await
        .expect("writable waits on an unknown peer");
    a.remove_peer(3).unwrap();
    // Whatever 3's connection reports later, 3 stays out (it is still connected to 1:
    // node 3 lists 1 and keeps its own connection).
    wait_connected(&c, &[1]).await;

    // Frames from 3 still reach node 1's port, and are not handed up; those from 2 are.
    assert_eq!(c.send(1, frame(3, 1, 2, "after")), Ok(()));
    let began = Instant::now();
    let mut from_2 = false;
    let mut n = 0;
    while link.from_removed_peers() == 0 || !from_2 {
        assert!(
            began.elapsed() < DEADLINE,
            "frame from 3 not seen ({} dropped), frame from 2 seen: {from_2}",
            link.from_removed_peers()
        );
        if !from_2 {
            n += 1;
            assert_eq!(b.send(1, frame(2, 1, n, "from 2")), Ok(()));
        }
        let mut events = Vec::new();
        if tokio::time::timeout(Duration::from_millis(50), a.readable())
            .await
            .is_ok()
        {
            a.try_recv_many(&mut events, 64);
        }
        for event in events {
            let TransportEvent::Frame(bytes) = event else {
                panic!("unexpected {event:?}");
            };
            let frame = Frame::decode(bytes).unwrap();
            assert_eq!(frame.header.sender, 2, "a frame from removed 3 handed up");
            from_2 = true;
        }
    }
    assert_eq!(link.from_removed_peers(), 1);
    // 3 is connected to 2 as before.
    b.add_peer(3, &addr3).unwrap();
    wait_connected(&b, &[1, 3]).await;
    exchange(&c, 3, &b, 2, "to 2").await;

    // Added back: known, connected, and its frames handed up again.
    a.add_peer(3, &addr3).unwrap();
    wait_connected(&a, &[2, 3]).await;
    exchange(&a, 1, &c, 3, "back 1 to 3").await;
    // Skip the frames from 2 still on their way.
    assert_eq!(c.send(1, frame(3, 1, 3, "back 3 to 1")), Ok(()));
    loop {
        let (sender, text) = next_frame(&a).await;
        if sender == 3 {
            assert_eq!(text, "back 3 to 1");
            break;
        }
        assert_eq!((sender, text.as_str()), (2, "from 2"));
    }
    shutdown_all([a, b, c]).await;
}

/// Node 3 takes nothing from its transport, so frames for it pile up in node 1's queue
/// to it until a send is refused (`backpressure`) and no room comes back; then node 1
/// removes it. The `zeromq` backend reports every message still queued as dropped,
/// `unknown_peer`. libzmq discards its queue to a closed socket without saying how much it
/// held, so it reports none (stated in `LibzmqTransport::remove_peer`): there only what
/// follows the removal is checked.
async fn what_was_queued_for_a_removed_peer_is_discarded_and_reported(backend: Backend) {
    const QUEUE: usize = 8;
    // Long timeouts: a stalled link must stay stalled (not given up, which would discard
    // the queue as `unreachable`) for the whole test.
    let options = Options {
        peer_queue: QUEUE,
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(120),
        idle_connection_timeout: Duration::from_secs(120),
        ..net::fast_options()
    };
    let (full, [a, b, c]) = trio(backend, options).await;
    a.add_peer(3, &address(&full, 3)).unwrap();
    wait_connected(&a, &[2, 3]).await;
    // Large frames fill libzmq's queues and the kernel's buffers in a few thousand sends.
    let payload = "x".repeat(4096);
    let began = Instant::now();
    let mut accepted = 0u64;
    loop {
        assert!(
            began.elapsed() < DEADLINE,
            "{accepted} frames accepted, the queue never stayed full"
        );
        match a.send(3, frame(1, 3, accepted as i64, &payload)) {
            Ok(()) => accepted += 1,
            // On `zeromq` the queue is full for good once node 3's side stopped
            // acknowledging (its transport's inbound channel is full): the peer's task
            // then takes nothing more and no room comes back. Until then it may be only
            // behind. (libzmq's `writable` cannot tell: it wakes within a millisecond.)
            Err(DropReason::Backpressure) => {
                if backend == Backend::Libzmq
                    || tokio::time::timeout(Duration::from_secs(1), a.writable(3))
                        .await
                        .is_err()
                {
                    break;
                }
            }
            Err(other) => panic!("refused as {other:?} after {accepted}"),
        }
        // Let node 1's side move what it can before the next send.
        tokio::task::yield_now().await;
    }

    a.remove_peer(3).unwrap();
    assert_eq!(
        a.send(3, frame(1, 3, 0, "after")),
        Err(DropReason::UnknownPeer)
    );
    if backend == Backend::Zeromq {
        match next_event(&a).await {
            TransportEvent::Dropped {
                peer: 3,
                reason: DropReason::UnknownPeer,
                count,
            } => {
                // The queue was full: it held its capacity, all messages.
                assert_eq!(count, QUEUE as u64, "{accepted} accepted");
            }
            other => panic!("expected the queued frames reported dropped, got {other:?}"),
        }
    }
    // Nothing else is reported, and the other peer is served as before.
    exchange(&b, 2, &a, 1, "still there").await;
    let mut rest = Vec::new();
    a.try_recv_many(&mut rest, 64);
    assert!(rest.is_empty(), "{rest:?}");
    shutdown_all([a, b, c]).await;
}

/// The same through servers (`Server::join`, `Server::leave`, `Server::remove_peer`): node 3
/// joins nodes 1 and 2, which tell `Joined` then `Up`, exchange messages with it both ways
/// (a broadcast included), and tell `Left` once it leaves; messages to it are then
/// `unknown_peer`.
async fn servers_let_a_node_join_and_leave_over_real_sockets(backend: Backend) {
    use cluster_core::{BROADCAST, Envelope, Event, Server};
    let options = net::fast_options();
    let (full, [a, b, c]) = trio(backend, options).await;
    let first_two = Config::from_peers(
        full.peers()
            .iter()
            .filter(|p| p.pid != 3)
            .map(|p| (p.pid, p.address.clone())),
        full.options().clone(),
    )
    .unwrap();
    let start = |pid: Pid, config: &Config, t: ZmqTransport| -> Server<String> {
        Server::<String>::builder(pid, config.clone())
            .incarnation(1)
            .build(t)
            .unwrap()
    };
    let mut one = start(1, &first_two, a);
    let two = start(2, &first_two, b);
    let mut three = start(3, &full, c);
    let mut events = one.events();
    one.wait_for_peers_up(DEADLINE).await.unwrap();
    three.join(DEADLINE).await.unwrap();
    two.wait_for_peers_up(DEADLINE).await.unwrap();
    let mut told = Vec::new();
    while !told.contains(&Event::Up(3)) {
        let e = tokio::time::timeout(DEADLINE, events.recv())
            .await
            .expect("events within the deadline")
            .unwrap()
            .unwrap();
        told.push(e.event);
    }
    assert!(told.contains(&Event::Joined(3)), "{told:?}");
    assert_eq!(one.current_peers(), [2, 3]);
    // Both ways, a broadcast included.
    two.outbox()
        .send(Envelope::new(BROADCAST, 1, "from 2".into()))
        .await
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, three.inbox().recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.pid, got.msg.as_str()), (2, "from 2"));
    three
        .outbox()
        .send(Envelope::new(1, 2, "from 3".into()))
        .await
        .unwrap();
    let mut from = Vec::new();
    while from.len() < 2 {
        let env = tokio::time::timeout(DEADLINE, one.inbox().recv())
            .await
            .unwrap()
            .unwrap();
        from.push((env.pid, env.msg));
    }
    from.sort();
    assert_eq!(from, [(2, "from 2".to_owned()), (3, "from 3".to_owned())]);
    // It leaves: both members let it go.
    three.leave(DEADLINE).await.unwrap();
    while !told.contains(&Event::Left(3)) {
        let e = tokio::time::timeout(DEADLINE, events.recv())
            .await
            .expect("Left within the deadline")
            .unwrap()
            .unwrap();
        told.push(e.event);
    }
    net::wait_until("node 2 to let it go too", DEADLINE, || {
        two.current_peers() == [1]
    })
    .await
    .unwrap();
    one.outbox()
        .send(Envelope::new(3, 3, "gone".into()))
        .await
        .unwrap();
    assert_eq!(
        one.stats().peers[&3]
            .dropped_to
            .get(DropReason::UnknownPeer),
        1
    );
    one.shutdown().await;
    two.shutdown().await;
    three.shutdown().await;
}
