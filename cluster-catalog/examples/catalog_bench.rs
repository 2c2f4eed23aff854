//! Measures the catalog at 10,000 peers: import, flush, reopen, list, and a recorder-like
//! round of status updates. Timings are printed, never asserted.
//!
//! ```text
//! cargo run --release -p cluster-catalog --example catalog_bench [-- PEERS RUNS [DIR]]
//! ```
//!
//! DIR (default: a temporary directory) picks the filesystem the catalog lives on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use cluster_catalog::{PeerCatalog, PeerStatus};
use cluster_core::{Config, Options};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let peers: i32 = args.first().map_or(Ok(10_000), |s| s.parse())?;
    let runs: usize = args.get(1).map_or(Ok(5), |s| s.parse())?;
    let base = args.get(2).map(std::path::PathBuf::from);
    let config = Config::from_peers(
        (0..peers).map(|pid| (pid, format!("10.{}.{}.1:7000", pid / 256, pid % 256))),
        Options::default(),
    )?;
    let names = [
        "import (new catalog)",
        "flush after import",
        "reopen",
        "list",
        "import again (no change)",
        "update status+last_seen of every peer",
        "flush after updates",
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    let mut disk = 0u64;
    for _ in 0..runs {
        let dir = match &base {
            Some(b) => tempfile::tempdir_in(b)?,
            None => tempfile::tempdir()?,
        };
        let path = dir.path().join("catalog");
        let mut times = Vec::new();
        {
            let c = PeerCatalog::open(&path)?;
            let t = Instant::now();
            let report = c.import(&config)?;
            times.push(t.elapsed());
            assert_eq!(report.added.len(), peers as usize);
            let t = Instant::now();
            c.flush()?;
            times.push(t.elapsed());
        }
        let t = Instant::now();
        let c = PeerCatalog::open(&path)?;
        times.push(t.elapsed());
        let t = Instant::now();
        let all = c.list()?;
        times.push(t.elapsed());
        assert_eq!(all.len(), peers as usize);
        let t = Instant::now();
        assert!(c.import(&config)?.is_unchanged());
        times.push(t.elapsed());
        let now = SystemTime::now();
        let t = Instant::now();
        for pid in 0..peers {
            c.update(pid, |r| {
                let mut r = r?;
                r.status = PeerStatus::Up;
                r.last_seen = Some(now);
                Some(r)
            })?;
        }
        times.push(t.elapsed());
        let t = Instant::now();
        c.flush()?;
        times.push(t.elapsed());
        drop(c);
        disk = dir_size(&path);
        for (s, t) in samples.iter_mut().zip(times) {
            s.push(t);
        }
    }
    println!("catalog_bench: {peers} peers, {runs} runs (median, min, max)");
    for (name, s) in names.iter().zip(&mut samples) {
        s.sort();
        println!(
            "  {name:<40} {:>9.2} ms  {:>9.2} ms  {:>9.2} ms",
            ms(s[s.len() / 2]),
            ms(s[0]),
            ms(s[s.len() - 1])
        );
    }
    println!(
        "  on disk after the run: {:.1} MiB",
        disk as f64 / (1 << 20) as f64
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}
