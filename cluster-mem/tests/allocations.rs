//! Issue 12, item 4: no heap allocation per message on the steady send and receive paths.
//!
//! This test binary counts every allocation (a counting global allocator), sends messages
//! that own no heap memory themselves, and checks that once the node's buffers have grown
//! to the load, sending and receiving allocate nothing per message: what is left is
//! amortized (a slab of frames now and then, a queue growing to a new high), far below
//! one per message. A message type that owns heap memory (a `Vec` payload) allocates when
//! it is built and when it is decoded: that is the message's own cost, not the path's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;

use cluster_core::{Config, Envelope, Options, Server};
use cluster_mem::MemNetwork;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// A 64-byte message that owns no heap memory.
type Msg = (u64, u64, u64, u64, u64, u64, u64, u64);

const WINDOW: u64 = 1024;

/// Sends `rounds` windows of messages from node 1 to node 2 and receives them; returns
/// the allocations counted over the run.
async fn run(a: &Server<Msg>, b: &mut Server<Msg>, rounds: u64) -> u64 {
    let outbox = a.outbox();
    let region = Region::new(GLOBAL);
    for round in 0..rounds {
        for i in 0..WINDOW {
            let id = (round * WINDOW + i) as i64;
            let sent = outbox
                .send(Envelope::new(2, id, (i, 1, 2, 3, 4, 5, 6, 7)))
                .await
                .unwrap();
            assert!(sent.is_sent());
        }
        for i in 0..WINDOW {
            let env = b.inbox().recv().await.unwrap();
            assert_eq!(env.msg.0, i);
        }
    }
    let change = region.change();
    (change.allocations + change.reallocations) as u64
}

#[test]
fn the_steady_path_allocates_nothing_per_message() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let options = Options {
        peer_queue: 4 * WINDOW as usize,
        inbox_capacity: 4 * WINDOW as usize,
        ..Options::default()
    };
    let config = Config::local(2, 7000)
        .unwrap()
        .with_options(options)
        .unwrap();
    let net = MemNetwork::new(&config, 0);
    rt.block_on(async {
        let a =
            Server::<Msg>::with_transport(1, config.clone(), net.transport(1).unwrap()).unwrap();
        let mut b =
            Server::<Msg>::with_transport(2, config.clone(), net.transport(2).unwrap()).unwrap();
        // Warm-up: queues, slabs and batches grow to the load.
        run(&a, &mut b, 20).await;
        const ROUNDS: u64 = 100;
        let allocations = run(&a, &mut b, ROUNDS).await;
        let messages = ROUNDS * WINDOW;
        let per_message = allocations as f64 / messages as f64;
        eprintln!(
            "{allocations} allocations for {messages} messages: {per_message:.4} per message"
        );
        // Amortized costs only: a waiting reader parks once per window (two small boxes
        // for its wait), and a slab of frames is cut now and then. One allocation in a
        // hundred messages at most.
        assert!(
            allocations * 100 <= messages,
            "{allocations} allocations for {messages} messages"
        );
        assert_eq!(a.stats().dropped().total() + b.stats().dropped().total(), 0);
        a.shutdown().await;
        b.shutdown().await;
    });
}
