//! Scale benchmark: a simulated cluster of N nodes (default 1,000) where each
//! node broadcasts once — N × (N − 1) deliveries (999,000 for 1,000 nodes). Target: < 5 s.
//!
//! ```text
//! cargo run --release -p cluster-testkit --example scale          # 1,000 nodes
//! cargo run --release -p cluster-testkit --example scale -- 2000  # another size
//! ```
//!
//! It runs the real `Server` of every node (routing, encoding once per broadcast, decoding,
//! counters) over the in-memory network, in one current-thread runtime, with history
//! recording off. It prints each phase's time and the delivery rate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use cluster_core::{BROADCAST, Config, Options};
use cluster_testkit::SimCluster;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t0 = Instant::now();
        let peers = (1..=n).map(|i| (i as i32, format!("127.0.0.1:{}", 10_000 + i)));
        let options = Options {
            // Each node receives N - 1 messages that nobody reads until the end.
            inbox_capacity: n.max(16),
            ..Options::default()
        };
        let config = Config::from_peers(peers, options).unwrap();
        let mut sim = SimCluster::<u64>::builder()
            .config(config)
            .seed(1)
            .record(false)
            .build()
            .await
            .unwrap();
        let built = t0.elapsed();

        let t1 = Instant::now();
        for pid in sim.pids() {
            sim.send(pid, BROADCAST, u64::from(pid.unsigned_abs()))
                .await
                .unwrap();
        }
        let routed = t1.elapsed();
        let quiet = sim.settle().await;
        let total = t1.elapsed();

        let mut delivered = 0usize;
        for pid in sim.pids() {
            delivered += sim.take_received(pid).len();
        }
        let expected = n * (n - 1);
        println!("nodes:            {n}");
        println!(
            "deliveries:       {delivered} (expected {expected}){}",
            if quiet { "" } else { "  NOT QUIET" }
        );
        println!("start {n} servers: {:>8.3} s", built.as_secs_f64());
        println!("broadcast+route:  {:>8.3} s", routed.as_secs_f64());
        println!(
            "deliver (settle): {:>8.3} s",
            (total - routed).as_secs_f64()
        );
        println!(
            "broadcasts → all delivered: {:.3} s ({:.2} M deliveries/s)",
            total.as_secs_f64(),
            delivered as f64 / total.as_secs_f64() / 1e6
        );
        println!(
            "end to end incl. start:     {:.3} s",
            (built + total).as_secs_f64()
        );
        println!(
            "limits: per frame, the in-memory network's send path (one global lock and a map \
             lookup) and the receiver's decode and inbox push; at start, every node's per-peer \
             counters: N² = {} cells",
            n * n
        );
        assert_eq!(delivered, expected, "lost deliveries");
    });
}
