//! A fixed-size run of the in-memory end-to-end throughput benchmark, for profilers and
//! instruction counters (the criterion bench `throughput` is the measurement of record).
//! Run: `cargo run --release -p cluster-mem --example mem_throughput -- 2000000`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use cluster_core::{Config, Envelope, Options, Server};
use cluster_mem::MemNetwork;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Payload(#[serde(with = "serde_bytes")] Vec<u8>);

const WINDOW: u64 = 2048;

fn main() -> anyhow::Result<()> {
    let n: u64 = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|_| anyhow::anyhow!("usage: mem_throughput [COUNT]"))?,
        None => 2_000_000,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let options = Options {
        peer_queue: 4 * WINDOW as usize,
        inbox_capacity: 4 * WINDOW as usize,
        outbox_capacity: 4 * WINDOW as usize,
        ..Options::default()
    };
    let config = Config::local(2, 7000)?.with_options(options)?;
    let net = MemNetwork::new(&config, 0);
    rt.block_on(async {
        let a = Server::<Payload>::with_transport(1, config.clone(), net.transport(1)?)?;
        let mut b = Server::<Payload>::with_transport(2, config.clone(), net.transport(2)?)?;
        let outbox = a.outbox();
        let start = Instant::now();
        let mut sent = 0;
        while sent < n {
            let chunk = WINDOW.min(n - sent);
            for i in 0..chunk {
                let msg = Payload(vec![(i % 251) as u8; 64]);
                outbox
                    .send(Envelope::new(2, (sent + i) as i64, msg))
                    .await?;
            }
            for _ in 0..chunk {
                b.inbox()
                    .recv()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("inbox closed"))?;
            }
            sent += chunk;
        }
        let secs = start.elapsed().as_secs_f64();
        let dropped = a.stats().dropped().total() + b.stats().dropped().total();
        println!(
            "{n} messages of 64 B in {secs:.3} s: {:.2} M msg/s, {dropped} dropped",
            n as f64 / secs / 1e6
        );
        anyhow::Ok(())
    })
}
