//! `cluster bench`: the ZeroMQ benchmarks (P2P throughput, broadcast to k peers, round trip
//! p50/p99), each beside the bare library measured in the same run, as a table with ratios.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use cluster_bench::{self as bench, Backend, BenchOptions, BenchReport, Progress};
use serde_json::json;

use super::Failure;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Messages per throughput run (P2P and broadcast).
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    messages: u64,
    /// Measured round trips per latency run.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    round_trips: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    payload: u64,
    /// Rounds of each measurement, alternating bare and cluster; the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    rounds: u64,
    /// Peers of the broadcast benchmark, each a separate process (0: skip it).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=16))]
    broadcast: u64,
    /// The ZeroMQ backend: libzmq, or zeromq (needs the `zeromq` cargo feature).
    #[arg(long, default_value_t = Backend::default().as_str().to_owned())]
    backend: String,
    /// The nodes' per-peer queue bound (the libzmq high-water marks).
    #[arg(long, default_value_t = 16_384, value_parser = clap::value_parser!(u64).range(1..=(cluster::MAX_QUEUE as u64)))]
    peer_queue: u64,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmarks. The second processes are this executable again (see `main`).
pub(crate) fn run(args: BenchArgs) -> Result<(), Failure> {
    let backend: Backend = args
        .backend
        .parse()
        .map_err(|e: cluster::zmq::UnknownBackend| Failure::usage(anyhow!(e)))?;
    let as_usize =
        |v: u64| usize::try_from(v).map_err(|_| Failure::usage(anyhow!("{v} is too large")));
    let options = BenchOptions {
        messages: args.messages,
        round_trips: args.round_trips,
        payload: as_usize(args.payload)?,
        rounds: as_usize(args.rounds)?,
        peer_queue: as_usize(args.peer_queue)?,
        backend,
        broadcast_peers: as_usize(args.broadcast)?,
    };
    // One thread, as in the second processes: the measured path then has no hand-over
    // between worker threads (set CLUSTER_ZMQ_BENCH_RT=multi for two workers on both sides).
    let runtime = if std::env::var("CLUSTER_ZMQ_BENCH_RT").is_ok_and(|v| v == "multi") {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    };
    let interactive = std::io::stderr().is_terminal();
    let mut progress = move |p: Progress| show_progress(&p, interactive);
    let report = runtime
        .block_on(async {
            tokio::select! {
                r = bench::run_with_progress(&options, &mut progress) => r.map_err(|e| anyhow!(e)),
                _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; benchmark processes stopped")),
            }
        })
        .map_err(Failure::from)?;
    if interactive {
        eprintln!();
    }
    let text = if args.json {
        report_json(&report).to_string()
    } else {
        table(&report)
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| Failure::from(anyhow!(e)))?;
    Ok(())
}

fn show_progress(p: &Progress, interactive: bool) {
    const WIDTH: usize = 30;
    let done = (p.step.saturating_sub(1) * WIDTH) / p.steps.max(1);
    let bar: String = "#".repeat(done) + &".".repeat(WIDTH - done.min(WIDTH));
    if interactive {
        eprint!("\r\x1b[2K[{bar}] {}/{} {}", p.step, p.steps, p.what);
    } else {
        eprintln!("[{bar}] {}/{} {}", p.step, p.steps, p.what);
    }
    let _ = std::io::stderr().flush();
}

fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M/s", x / 1e6)
    } else {
        format!("{:.0} k/s", x / 1e3)
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ratio(cluster: f64, bare: f64) -> f64 {
    if bare > 0.0 { cluster / bare } else { f64::NAN }
}

fn table(r: &BenchReport) -> String {
    let o = &r.options;
    let mut rows = vec![
        format!(
            "cluster bench: backend {}, {}-byte payloads, {} messages, {} round trips, processes on loopback, median of {} rounds",
            r.backend, o.payload, o.messages, o.round_trips, o.rounds
        ),
        format!(
            "{:<22} {:>14} {:>14} {:>7}  {}",
            "measure", "bare library", "cluster", "ratio", "target"
        ),
        format!(
            "{:<22} {:>14} {:>14} {:>6.2}x  {}",
            "P2P throughput",
            rate(r.bare.throughput),
            rate(r.cluster.throughput),
            r.throughput_ratio(),
            ">= 0.5x"
        ),
    ];
    if let Some(b) = &r.broadcast {
        rows.push(format!(
            "{:<22} {:>14} {:>14} {:>6.2}x  {}",
            format!("broadcast to {} peers", b.peers),
            rate(b.bare),
            rate(b.cluster),
            b.ratio(),
            "deliveries/s"
        ));
    }
    rows.push(format!(
        "{:<22} {:>14} {:>14} {:>6.2}x  {}",
        "round trip p50",
        micros(r.bare.rtt_p50),
        micros(r.cluster.rtt_p50),
        r.rtt_p50_ratio(),
        "<= 1.25x"
    ));
    rows.push(format!(
        "{:<22} {:>14} {:>14} {:>6.2}x",
        "round trip p99",
        micros(r.bare.rtt_p99),
        micros(r.cluster.rtt_p99),
        ratio(
            r.cluster.rtt_p99.as_secs_f64(),
            r.bare.rtt_p99.as_secs_f64()
        )
    ));
    rows.push(format!(
        "delivered in the P2P run: bare {}, cluster {} of {} (the cluster drops and counts what a full queue refuses)",
        r.bare.delivered, r.cluster.delivered, o.messages
    ));
    rows.join("\n")
}

fn report_json(r: &BenchReport) -> serde_json::Value {
    let o = &r.options;
    let side = |f: &bench::Figures| {
        json!({
            "throughput": f.throughput,
            "delivered": f.delivered,
            "rtt_p50_us": f.rtt_p50.as_secs_f64() * 1e6,
            "rtt_p99_us": f.rtt_p99.as_secs_f64() * 1e6,
        })
    };
    json!({
        "backend": r.backend,
        "options": {
            "messages": o.messages,
            "round_trips": o.round_trips,
            "payload": o.payload,
            "rounds": o.rounds,
            "peer_queue": o.peer_queue,
            "broadcast_peers": o.broadcast_peers,
        },
        "bare": side(&r.bare),
        "cluster": side(&r.cluster),
        "ratios": {
            "throughput": r.throughput_ratio(),
            "rtt_p50": r.rtt_p50_ratio(),
            "broadcast": r.broadcast.as_ref().map(|b| b.ratio()),
        },
        "broadcast": r.broadcast.as_ref().map(|b| json!({
            "peers": b.peers,
            "bare": b.bare,
            "cluster": b.cluster,
            "bare_delivered": b.bare_delivered,
            "cluster_delivered": b.cluster_delivered,
        })),
        "round_ratios": r.round_ratios,
    })
}
