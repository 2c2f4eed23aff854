//! End-to-end throughput of the in-memory transport through the Server API: node 1 sends
//! 64-byte payloads to node 2 through its outbox; node 2 takes them from its inbox. One
//! current-thread runtime, i.e. one core. Run: `cargo bench -p cluster-mem --bench throughput`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cluster_core::{Config, Envelope, Options, Server};
use cluster_mem::MemNetwork;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Payload(#[serde(with = "serde_bytes")] Vec<u8>);

/// Messages in flight at most: below every queue bound, so nothing is dropped.
const WINDOW: u64 = 2048;

async fn run(n: u64, a: &Server<Payload>, b: &mut Server<Payload>) -> Duration {
    let outbox = a.outbox();
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let chunk = WINDOW.min(n - sent);
        for i in 0..chunk {
            let msg = Payload(vec![(i % 251) as u8; 64]);
            outbox
                .send(Envelope::new(2, (sent + i) as i64, msg))
                .await
                .unwrap();
        }
        for _ in 0..chunk {
            let env = b.inbox().recv().await.unwrap();
            assert_eq!(env.msg.0.len(), 64);
        }
        sent += chunk;
    }
    start.elapsed()
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let options = Options {
        peer_queue: 4 * WINDOW as usize,
        inbox_capacity: 4 * WINDOW as usize,
        outbox_capacity: 4 * WINDOW as usize,
        ..Options::default()
    };
    let config = Config::local(2, 7000)
        .unwrap()
        .with_options(options)
        .unwrap();
    let net = MemNetwork::new(&config, 0);
    let (a, mut b) = rt.block_on(async {
        let a = Server::<Payload>::with_transport(1, config.clone(), net.transport(1).unwrap())
            .unwrap();
        let b = Server::<Payload>::with_transport(2, config.clone(), net.transport(2).unwrap())
            .unwrap();
        (a, b)
    });
    let mut group = c.benchmark_group("mem");
    group.throughput(Throughput::Elements(1));
    group.bench_function("p2p_64B_end_to_end", |bench| {
        bench.iter_custom(|iters| rt.block_on(run(iters, &a, &mut b)));
    });
    group.finish();
    let dropped = a.stats().dropped().total() + b.stats().dropped().total();
    assert_eq!(
        dropped, 0,
        "the benchmark must not drop: figures would be wrong"
    );
}

criterion_group!(benches, throughput);
criterion_main!(benches);
