//! Silent partitions and stalls. Node 1 reaches node 2 only through a relay
//! (`cluster_testkit::net::Relay`), which can drop every byte (a silent cut) or stop
//! moving them (a stall), closing nothing. Contract C4 on real networks: the cut is noticed
//! within the detection time (`heartbeat_timeout`, with the slack stated below), everything
//! sent after that is dropped as `unreachable`, and nothing sent during the cut or the
//! stall is delivered after it heals. What a silent cut loses uncounted is bounded too.

use std::time::{Duration, Instant};

use cluster_core::{DropReason, Envelope, Options, PeerStats, Server};
use cluster_testkit::net::{self, DEADLINE, Shape};
use cluster_zmq::Backend;

use crate::nodes::{
    Relayed, drain_until_marker, start_relayed, wait_accounted, wait_connected, wait_until,
};

on_every_backend!(
    a_link_that_breaks_and_comes_back_at_once_counts_what_it_lost,
    a_silent_cut_is_detected_in_time_and_nothing_sent_in_it_arrives_after_it_heals,
    a_stall_longer_than_the_heartbeat_timeout_delivers_nothing_late,
);

/// `peer_queue`: the high-water marks (libzmq), and the unacknowledged window (zeromq).
const WINDOW: usize = 16;

/// How much later than `heartbeat_timeout` a silent cut may be noticed. By design up to one
/// `heartbeat_interval` later: the timeout runs from the first ping left unanswered, sent
/// up to one interval after the cut (libzmq), or from the last acknowledgement, checked
/// every interval (zeromq). On top of that, this much for timers and threads on a loaded
/// machine. Measured with both cores busy (two busy loops), heartbeats every 100 ms and a
/// 600 ms timeout: libzmq 697–709 ms, zeromq 599–698 ms (the test prints it).
const SCHEDULING_SLACK: Duration = Duration::from_millis(500);

fn options() -> Options {
    Options {
        peer_queue: WINDOW,
        ..net::fast_options()
    }
}

/// Nodes 1 and 2, connected, node 1 → node 2 through a relay; nothing on the way.
async fn pair(backend: Backend) -> (Relayed, Server<String>, Server<String>) {
    let (relayed, nodes) =
        start_relayed(backend, 2, options(), Shape::INSTANT, |pid| pid == 2).await;
    let [a, mut b] = <[_; 2]>::try_from(nodes).ok().unwrap();
    a.wait_for_peers(DEADLINE).await.unwrap();
    assert!(
        drain_until_marker(&a, &mut b, "marker-before")
            .await
            .is_empty()
    );
    // A second marker may still be on its way: counters are compared from here on, once
    // node 2 has acknowledged everything.
    wait_accounted(&a, &b).await;
    wait_until("node 2 to acknowledge what it got", || {
        to_2(&a).unacknowledged == 0
    })
    .await;
    (relayed, a, b)
}

fn to_2(a: &Server<String>) -> PeerStats {
    a.stats().peers[&2]
}

/// C7 on real sockets when nothing follows a loss: the link breaks, losing the frames on it
/// (the relay closes both connections with the frames unread), and the ends connect again
/// at once, before the sender's write-off can see the peer gone. No later frame shows the
/// receiver the gap; the sender, acknowledged nothing for a heartbeat interval, probes,
/// and the lost frames are counted (`lost_in_transit` at the receiver, or `unconfirmed`
/// or dropped at the sender), none delivered. Before probes, they stayed unacknowledged,
/// counted nowhere.
async fn a_link_that_breaks_and_comes_back_at_once_counts_what_it_lost(backend: Backend) {
    let (relayed, a, mut b) = pair(backend).await;
    let relay = relayed.relay(2);
    let out = a.outbox();
    let (base, base_b) = (to_2(&a), b.stats().peers[&1]);
    relay.hold();
    const LOST: u64 = 3;
    for i in 0..LOST as i64 {
        let sent = out
            .send(Envelope::new(2, i, format!("lost-{i}")))
            .await
            .unwrap();
        assert!(sent.is_sent(), "{sent:?}");
    }
    relay.reset();
    // Accepted frames, once lost, are counted `unconfirmed` or discarded (dropped) by the
    // sender, or `lost_in_transit` by the receiver. Nothing else is sent meanwhile.
    let counted = |a: &Server<String>, b: &Server<String>| {
        let (s, r) = (to_2(a), b.stats().peers[&1]);
        (s.unconfirmed - base.unconfirmed)
            + (s.dropped_to.total() - base.dropped_to.total())
            + (r.lost_in_transit - base_b.lost_in_transit)
    };
    let deadline = Instant::now() + DEADLINE;
    while to_2(&a).unacknowledged != 0 || counted(&a, &b) < LOST {
        assert!(
            Instant::now() < deadline,
            "{backend}: the lost frames were not counted within {DEADLINE:?}: node 1 → 2 {:?}, \
             node 2 from 1 {:?}, node 1 connected to {:?}",
            to_2(&a),
            b.stats().peers[&1],
            a.connected_peers()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (s, r) = (to_2(&a), b.stats().peers[&1]);
    eprintln!(
        "{backend}: lost {LOST}: unconfirmed {}, dropped {:?}, lost in transit {}",
        s.unconfirmed - base.unconfirmed,
        s.dropped_to,
        r.lost_in_transit - base_b.lost_in_transit
    );
    assert_eq!(counted(&a, &b), LOST, "each lost frame counted once");
    assert_eq!(r.delivered, base_b.delivered, "none delivered");
    // The next frames arrive, and show the receiver no gap it has not been told of: frames
    // counted by probes or write-offs are not counted a second time. (Known exception,
    // stated in the README: frames the sender's transport itself discarded (`dropped`,
    // zeromq) keep their sequence numbers, and the next frame shows them as a gap too.)
    let late = drain_until_marker(&a, &mut b, "marker-after").await;
    assert!(late.is_empty(), "delivered after the link broke: {late:?}");
    let (s2, r2) = (to_2(&a), b.stats().peers[&1]);
    let discarded = s.dropped_to.total() - base.dropped_to.total();
    assert_eq!(
        s2.unconfirmed, s.unconfirmed,
        "counted again once later frames arrived"
    );
    assert!(
        r2.lost_in_transit - r.lost_in_transit <= discarded,
        "counted again once later frames arrived: {} more lost in transit, {discarded} discarded",
        r2.lost_in_transit - r.lost_in_transit
    );
    a.shutdown().await;
    b.shutdown().await;
}

async fn a_silent_cut_is_detected_in_time_and_nothing_sent_in_it_arrives_after_it_heals(
    backend: Backend,
) {
    let (relayed, a, mut b) = pair(backend).await;
    let relay = relayed.relay(2);
    let o = options();
    let out = a.outbox();
    let base = to_2(&a);
    let counted = |a: &Server<String>| to_2(a).dropped_to.total() - base.dropped_to.total();

    // Keep sending, one message every 2 ms, until node 1 notices the cut: node 2 leaves
    // its connection set.
    let cut_at = Instant::now();
    relay.cut();
    let mut during = 0u64;
    let detected = loop {
        if !a.connected_peers().contains(&2) {
            break cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < DEADLINE,
            "the silent cut was never detected"
        );
        out.send(Envelope::new(2, during as i64, format!("during-{during}")))
            .await
            .unwrap();
        during += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let bound = o.heartbeat_timeout + o.heartbeat_interval + SCHEDULING_SLACK;
    eprintln!("{backend}: silent cut detected after {detected:?} (bound {bound:?})");
    assert!(
        detected <= bound,
        "silent cut detected after {detected:?}: later than heartbeat_timeout {:?} + \
         heartbeat_interval {:?} + slack {SCHEDULING_SLACK:?}",
        o.heartbeat_timeout,
        o.heartbeat_interval
    );

    // Nothing silent across the cut (C7 on real sockets): every message sent during it is
    // dropped with a reason (refused, or discarded by the transport when it gave the
    // connection up) or, having been accepted and never acknowledged, counted
    // `unconfirmed` once node 2 has been gone for a heartbeat interval. Nothing crossed
    // the cut, so the count is exact.
    wait_until("the frames sent during the cut to be routed", || {
        to_2(&a).sent - base.sent == during
    })
    .await;
    let unconfirmed = |a: &Server<String>| to_2(a).unconfirmed - base.unconfirmed;
    wait_until("every frame sent during the cut to be counted", || {
        counted(&a) + unconfirmed(&a) == during
    })
    .await;
    eprintln!(
        "{backend}: {during} sent during the cut, {} dropped, {} unconfirmed",
        counted(&a),
        unconfirmed(&a)
    );

    // After detection, every message to node 2 is dropped as unreachable, and counted.
    let unreachable = |a: &Server<String>| to_2(a).dropped_to.get(DropReason::Unreachable);
    let (before, before_total) = (unreachable(&a), counted(&a));
    for i in 0..100 {
        out.send(Envelope::new(2, i, format!("after-{i}")))
            .await
            .unwrap();
    }
    wait_until("100 more unreachable drops", || {
        unreachable(&a) == before + 100
    })
    .await;
    assert_eq!(counted(&a), before_total + 100, "{:?}", to_2(&a));

    // Healed: nothing sent during the cut arrives, neither what was sent before its
    // detection (the relay swallowed it) nor after (refused at once).
    relay.heal();
    wait_connected(&a, &[2]).await;
    let late = drain_until_marker(&a, &mut b, "marker-healed").await;
    assert!(late.is_empty(), "delivered after the cut healed: {late:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A stall (the relay stops moving bytes, closing nothing) that outlasts the heartbeat
/// timeout. What was sent after node 1 gave node 2 up is refused and counted, and never
/// arrives. What was already on the wire when the stall began was sent within the
/// detection window, where C4 allows either way; the backends differ there:
///
/// * zeromq: it arrives on the connection node 1 has given up, after a silence longer than
///   the heartbeat timeout, and node 2 discards it as stale ([`LinkStats::stale_frames`]):
///   nothing is delivered late;
/// * libzmq: node 2 closes a silent connection only by the heartbeat TTL, a timer libzmq
///   arms on a ping and cancels on any message: if data came after the last ping before
///   the stall, no timer runs, the connection stays open, and what was on the wire is
///   delivered when the stall ends (in order, once). Measured: every run of this test.
///
/// [`LinkStats::stale_frames`]: cluster_zmq::LinkStats::stale_frames
async fn a_stall_longer_than_the_heartbeat_timeout_delivers_nothing_late(backend: Backend) {
    let (relayed, a, mut b) = pair(backend).await;
    let relay = relayed.relay(2);
    let link = &relayed.links[&2];
    let stale = link.stale_frames();
    let o = options();
    // Three heartbeat timeouts: both ends have been silent for longer than one when it
    // ends (node 2's last frame came at most one interval before the stall began).
    let stall = 3 * o.heartbeat_timeout;
    let out = a.outbox();
    let (base, base_b) = (to_2(&a), b.stats().peers[&1]);

    let began = Instant::now();
    relay.hold();
    // Accepted (the link is still up), written to the socket, and stuck in the relay.
    const HELD: u64 = 4;
    for i in 0..HELD as i64 {
        out.send(Envelope::new(2, i, format!("held-{i}")))
            .await
            .unwrap();
    }
    wait_until("node 1 to give node 2 up", || {
        !a.connected_peers().contains(&2)
    })
    .await;
    // Sent after detection: refused at once, counted, never delivered.
    const AFTER: u64 = 20;
    let unreachable = |a: &Server<String>| to_2(a).dropped_to.get(DropReason::Unreachable);
    let before = unreachable(&a);
    for i in 0..AFTER as i64 {
        out.send(Envelope::new(2, i, format!("after-{i}")))
            .await
            .unwrap();
    }
    wait_until("the messages sent after detection to be dropped", || {
        unreachable(&a) == before + AFTER
    })
    .await;
    // The stall's length is the scenario (a delay spike, a frozen router), not a wait for
    // something to happen: it is over when it is over.
    tokio::time::sleep(stall.saturating_sub(began.elapsed())).await;
    relay.heal();

    wait_connected(&a, &[2]).await;
    let mut late = drain_until_marker(&a, &mut b, "marker-healed").await;
    if backend == Backend::Zeromq {
        // Every held frame reached node 2 on the given-up connection and was discarded.
        wait_until("the held frames to be discarded as stale", || {
            link.stale_frames() - stale >= HELD
        })
        .await;
        assert_eq!(link.stale_frames() - stale, HELD);
    }
    // Anything still on its way arrives before this marker (or never): FIFO.
    late.extend(drain_until_marker(&a, &mut b, "marker-end").await);
    eprintln!(
        "{backend}: after a stall of {stall:?}, delivered late: {late:?}; discarded as stale: {}",
        link.stale_frames() - stale
    );
    assert!(
        late.iter().all(|m| !m.starts_with("after-")),
        "sent after detection, delivered after the stall: {late:?}"
    );
    match backend {
        Backend::Zeromq => assert!(late.is_empty(), "delivered late: {late:?}"),
        _ => {
            let held: Vec<String> = (0..HELD).map(|i| format!("held-{i}")).collect();
            assert!(
                late.is_empty() || late == held,
                "not the held frames, in order, once: {late:?}"
            );
        }
    }
    // Silent loss across the stall: exactly the held frames that were not delivered late
    // (zeromq counts them below the server, as stale frames), nothing else. (Waited for:
    // a marker sent twice may still be on its way.)
    let uncounted = || {
        let (sent, from_1) = (to_2(&a), b.stats().peers[&1]);
        (sent.sent - base.sent) as i64
            - (from_1.delivered - base_b.delivered) as i64
            - (sent.dropped_to.total() - base.dropped_to.total()) as i64
    };
    let expected = (HELD - late.len() as u64) as i64;
    let settled = net::wait_until("the other messages to be accounted for", DEADLINE, || {
        uncounted() == expected
    })
    .await;
    let from_1 = b.stats().peers[&1];
    assert!(
        settled.is_ok(),
        "{} uncounted, expected {expected}: sent {:?}, received {from_1:?}",
        uncounted(),
        to_2(&a)
    );
    assert_eq!(from_1.dropped_from.total(), 0, "{from_1:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A stall shorter than the heartbeat timeout is a delay, not a fault: neither end may give
/// the connection up, and what was sent during the stall is delivered when it ends.
///
/// Node 1 (the sender) gives the connection up when a ping of its own has gone
/// unanswered for `heartbeat_timeout`; it sends one every `heartbeat_interval`, so that is
/// up to `heartbeat_timeout + heartbeat_interval` after the last ping node 2 heard. Node 2
/// must not close the connection earlier than that: it closes on the TTL node 1 puts in its
/// pings, a timer libzmq arms on a ping and cancels on any message. With a TTL of only
/// `heartbeat_timeout`, node 2 closed the connection whenever the stall began later than
/// `heartbeat_timeout - stall` after the last ping: the frames on the wire were lost, and
/// node 1, which had detected nothing, reconnected at once and counted them nowhere
/// (the 64-node demo on a loaded machine: node 2's own process stalled, and libzmq ran
/// its expired timers before it read the pings waiting in the socket).
///
/// The stall here (900 ms with pings every 800 ms and a 1200 ms timeout) catches a TTL
/// of `heartbeat_timeout` in 5 of 8 stalls on average (when the last ping came more
/// than 300 ms before it); the test stalls five times, after waits that move the stall
/// to a different point between two pings each time.
#[cfg(feature = "libzmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shorter_than_the_heartbeat_timeout_loses_nothing() {
    let o = Options {
        heartbeat_interval: Duration::from_millis(800),
        heartbeat_timeout: Duration::from_millis(1200),
        linger: Duration::from_millis(200),
        ..Options::default()
    };
    let stall = Duration::from_millis(900);
    let (relayed, nodes) = start_relayed(Backend::Libzmq, 2, o.clone(), Shape::INSTANT, |pid| {
        pid == 2
    })
    .await;
    let [a, mut b] = <[_; 2]>::try_from(nodes).ok().unwrap();
    a.wait_for_peers(DEADLINE).await.unwrap();
    assert!(drain_until_marker(&a, &mut b, "marker-0").await.is_empty());
    let relay = relayed.relay(2);
    let link = &relayed.links[&2];
    let mut changes = a.monitor().connection_changes();
    changes.borrow_and_update();
    let closed = link.inbound_closed();
    let out = a.outbox();

    for round in 0..5u32 {
        // Longer than an interval since the last message: a ping came after it, so node 2
        // has its TTL timer running when the stall begins, at a point between two pings
        // that moves from round to round.
        let quiet = o.heartbeat_interval + Duration::from_millis(310 * u64::from(round) % 800);
        tokio::time::sleep(quiet).await;
        let began = Instant::now();
        relay.hold();
        let text = format!("held-{round}");
        out.send(Envelope::new(2, i64::from(round), text.clone()))
            .await
            .unwrap();
        // The stall's length is the scenario, not a wait for something to happen.
        tokio::time::sleep(stall.saturating_sub(began.elapsed())).await;
        relay.heal();
        let got = tokio::time::timeout(DEADLINE, b.inbox().recv()).await;
        let gave_up = changes.has_changed().unwrap_or(true);
        assert!(
            matches!(&got, Ok(Some(env)) if env.msg == text),
            "round {round}: after a stall of {stall:?} (heartbeat timeout {:?}), {text} was \
             not delivered: {got:?}; node 2 closed {} inbound connection(s), node 1's \
             connection set changed: {gave_up}; node 1 → 2: {:?}",
            o.heartbeat_timeout,
            link.inbound_closed() - closed,
            to_2(&a)
        );
        assert!(
            !gave_up && link.inbound_closed() == closed,
            "round {round}: a stall of {stall:?}, shorter than the heartbeat timeout {:?}, \
             closed a connection: node 2 closed {} inbound, node 1's connection set changed: \
             {gave_up}",
            o.heartbeat_timeout,
            link.inbound_closed() - closed
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}
