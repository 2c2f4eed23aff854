//! The foundation's scenarios on the in-memory transport: the Go package's own tests, and the
//! contract C1–C7 (routing, at-most-once, FIFO, drop on unreachable, isolation, bounded
//! memory, exact accounting), each on a `cluster_testkit::SimCluster`. Where the harness sends,
//! the whole history is judged by the test kit's oracle as well.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bytes;
mod contract;
mod counter;
mod events;
mod flow;
mod go_scenarios;
mod membership;
mod multicast;
mod trust;

use cluster_core::{Config, Message, Options, ServerMonitor};
use cluster_mem::MemNetwork;
use cluster_testkit::{MemCluster, SimCluster, oracle};

/// A simulated cluster of pids `1..=n` with `options`, over a memory network (seed 1) that
/// the test keeps a handle to.
async fn sim<M: Message>(n: usize, options: Options) -> (SimCluster<M>, MemNetwork) {
    let config = Config::local(n, 17000)
        .unwrap()
        .with_options(options)
        .unwrap();
    let net = MemNetwork::new(&config, 1);
    let sim = SimCluster::<M>::builder()
        .seed(1)
        .build_on(Box::new(MemCluster::from_network(net.clone(), &config)))
        .await
        .unwrap();
    (sim, net)
}

/// Settles, and checks the whole history with the oracle (C1–C9, C7 copy by copy).
async fn check<M: Message>(sim: &mut SimCluster<M>) {
    let history = sim.finish().await;
    let verdict = oracle::check(&history);
    assert!(verdict.is_ok(), "{verdict}");
}

/// C7 by the servers' counters (every incarnation's monitor): sent = delivered + dropped +
/// discarded by the network. For runs whose messages the harness did not send itself.
fn assert_counters_add_up(monitors: &[ServerMonitor], net: &MemNetwork) {
    assert_eq!(net.in_flight(), 0, "frames still in flight");
    assert_counters_add_up_with_waiting(monitors, net);
}

/// [`assert_counters_add_up`] where frames may still wait in the network (to a node that
/// does not read its inbox): they are sent, and neither delivered nor dropped yet.
fn assert_counters_add_up_with_waiting(monitors: &[ServerMonitor], net: &MemNetwork) {
    let waiting = net.in_flight() as u64;
    let all: Vec<_> = monitors.iter().map(ServerMonitor::stats).collect();
    let sent: u64 = all.iter().map(|s| s.sent).sum();
    let delivered: u64 = all.iter().map(|s| s.delivered).sum();
    let dropped: u64 = all.iter().map(|s| s.dropped().total()).sum();
    let discarded = net.stats().discarded.total();
    assert_eq!(
        sent,
        delivered + dropped + discarded + waiting,
        "sent {sent} != delivered {delivered} + dropped {dropped} + discarded {discarded} \
         + waiting in the network {waiting}"
    );
}
