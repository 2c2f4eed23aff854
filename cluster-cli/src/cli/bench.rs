//! `cluster bench`: the ZeroMQ benchmarks (P2P throughput, broadcast to k peers, round trip
//! p50/p90/p99/p999), each beside the bare library measured in the same run, as a table with
//! ratios; and the cluster over the in-memory transport, in this process on one core.

use std::io::Write;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use cluster_bench::{
    self as bench, Backend, BenchOptions, BenchReport, ChildCommand, Progress, RuntimeFlavor,
    Security,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
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
    /// Run the cluster with a cluster key: every frame carries a keyed-BLAKE3 MAC, checked
    /// on arrival (the bare library's frames carry none), to measure what it costs. The
    /// same as `--security mac`.
    #[arg(long, conflicts_with = "security")]
    mac: bool,
    /// What protects the cluster's frames: `none`, `mac` (a cluster key: a keyed-BLAKE3
    /// tag on every frame), `siphash` (a cluster key and "mac": "siphash-2-4": a
    /// SipHash-2-4 tag on every frame) or `aead` (a cluster key and "encrypt": every payload
    /// encrypted with XChaCha20-Poly1305, every header authenticated). The bare library's
    /// frames carry nothing: the ratio shows what the protection costs.
    #[arg(long, default_value = "none")]
    security: String,
    /// Skip the in-memory measurement (the cluster over the in-memory transport, in this
    /// process on one current-thread runtime: P2P throughput and round trips).
    #[arg(long)]
    no_mem: bool,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Instead of the throughput and latency benchmarks, the memory one: stream
    /// `--rss-message-size` messages to a stopped (SIGSTOP) peer for `--rss-seconds` and
    /// report the sender's peak RSS against its configured byte bounds.
    #[arg(long)]
    rss: bool,
    /// Seconds of the memory benchmark.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    rss_seconds: u64,
    /// Payload bytes per message of the memory benchmark.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..=(1 << 29)))]
    rss_message_size: u64,
    /// Instead of the other benchmarks, a dead peer under full load: send `--payload`
    /// messages at full rate to 3 peers (separate processes), kill one at 1/6 of
    /// `--dead-peer-seconds`, stop (SIGSTOP) another at 1/3, and report the healthy peer's
    /// throughput in each phase, the sender's drops by reason and its RSS once a second.
    #[arg(long, conflicts_with = "rss")]
    dead_peer: bool,
    /// Seconds of the dead-peer benchmark.
    #[arg(long, default_value_t = 60, requires = "dead_peer", value_parser = clap::value_parser!(u64).range(1..=3600))]
    dead_peer_seconds: u64,
    /// The dead-peer benchmark broadcasts every message instead of sending round robin.
    #[arg(long, requires = "dead_peer")]
    dead_peer_broadcast: bool,
}

/// The hidden subcommand that runs a child process of `cluster bench`.
pub(crate) const CHILD_SUBCOMMAND: &str = "bench-child";

#[derive(Debug, Args)]
pub(crate) struct BenchChildArgs {
    /// The role's words, as `cluster bench` wrote them.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    words: Vec<String>,
}

/// Runs the benchmarks; their other processes are this executable's `bench-child`.
pub(crate) fn run(args: BenchArgs) -> Result<(), Failure> {
    let backend: Backend = args
        .backend
        .parse()
        .map_err(|e: cluster::zmq::UnknownBackend| Failure::usage(anyhow!(e)))?;
    let as_usize =
        |v: u64| usize::try_from(v).map_err(|_| Failure::usage(anyhow!("{v} is too large")));
    // One thread on both sides by default: the measured path then has no hand-over between
    // worker threads (CLUSTER_ZMQ_BENCH_RT=multi gives both sides two workers).
    let flavor = if std::env::var("CLUSTER_ZMQ_BENCH_RT").is_ok_and(|v| v == "multi") {
        RuntimeFlavor::MultiThread
    } else {
        RuntimeFlavor::CurrentThread
    };
    let options = BenchOptions {
        messages: args.messages,
        round_trips: args.round_trips,
        payload: as_usize(args.payload)?,
        rounds: as_usize(args.rounds)?,
        peer_queue: as_usize(args.peer_queue)?,
        backend,
        broadcast_peers: as_usize(args.broadcast)?,
        runtime: flavor,
        security: if args.mac {
            Security::Mac
        } else {
            args.security
                .parse()
                .map_err(|e: cluster_bench::BenchError| Failure::usage(anyhow!(e)))?
        },
        mem: !args.no_mem,
    };
    let exe = std::env::current_exe().map_err(|e| {
        anyhow!("cannot find this executable to start the benchmark processes: {e}")
    })?;
    let child = ChildCommand::new(exe, [CHILD_SUBCOMMAND]);
    let runtime = flavor.builder().enable_all().build()?;
    if args.dead_peer {
        let o = bench::DeadPeerOptions {
            backend,
            duration: Duration::from_secs(args.dead_peer_seconds),
            payload: options.payload,
            peer_queue: options.peer_queue,
            fanout: if args.dead_peer_broadcast {
                bench::Fanout::Broadcast
            } else {
                bench::Fanout::RoundRobin
            },
            security: options.security,
            runtime: flavor,
        };
        return super::dead_peer::run(&runtime, &child, &o, args.json);
    }
    if args.rss {
        let rss = bench::RssOptions {
            backend,
            duration: Duration::from_secs(args.rss_seconds),
            message_size: as_usize(args.rss_message_size)?,
            runtime: flavor,
            ..bench::RssOptions::default()
        };
        let report = runtime.block_on(async {
            tokio::select! {
                r = bench::run_rss(&child, &rss) => r.map_err(|e| anyhow!(e)),
                _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; benchmark processes stopped")),
            }
        })?;
        let text = if args.json {
            json!({
                "backend": backend.as_str(),
                "message_size": rss.message_size,
                "seconds": args.rss_seconds,
                "bounds_bytes": rss.bounds(),
                "target_bytes": rss.target(),
                "baseline_rss_bytes": report.baseline_rss,
                "peak_rss_bytes": report.peak_rss,
                "within_target": report.within_target(),
                "sent": report.sent,
                "dropped": report.dropped,
            })
            .to_string()
        } else {
            report.to_string()
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}").map_err(|e| Failure::from(anyhow!(e)))?;
        return Ok(());
    }
    let bar = progress_bar();
    let mut progress = {
        let bar = bar.clone();
        move |p: Progress| {
            tracing::info!("{p}");
            let first = bar.length() == Some(0);
            bar.set_length(p.steps as u64);
            bar.set_position(p.step.saturating_sub(1) as u64);
            bar.set_message(p.to_string());
            if first {
                // Shown only now that it has its length and text (it would draw as full).
                bar.set_draw_target(ProgressDrawTarget::stderr());
                bar.enable_steady_tick(Duration::from_millis(120));
            }
        }
    };
    let report = runtime.block_on(async {
        tokio::select! {
            r = bench::run_with_progress(&child, &options, &mut progress) => r.map_err(|e| anyhow!(e)),
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; benchmark processes stopped")),
        }
    });
    // Before anything else is printed, failure included.
    bar.finish_and_clear();
    let report = report?;
    let text = if args.json {
        report_json(&report).to_string()
    } else {
        table(&report)
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| Failure::from(anyhow!(e)))?;
    Ok(())
}

/// Plays one role of a `cluster bench` run (the hidden `bench-child` subcommand).
pub(crate) fn run_child(args: BenchChildArgs) -> Result<(), Failure> {
    Ok(bench::run_child(&args.words)?)
}

/// The steps of the run, hidden until the first step; then drawn on stderr when it is a
/// terminal.
fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{bar:30}] {msg} ({elapsed})") {
        bar.set_style(style.progress_chars("#>."));
    }
    bar
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
    let mut table = super::plain_table(
        ["measure", "bare library", "cluster", "ratio", "target"],
        &[1, 2, 3],
    );
    let times = |x: f64| format!("{x:.2}x");
    table.add_row([
        "P2P throughput".to_owned(),
        rate(r.bare.throughput),
        rate(r.cluster.throughput),
        times(r.throughput_ratio()),
        ">= 0.5x".to_owned(),
    ]);
    if let Some(b) = &r.broadcast {
        table.add_row([
            format!("broadcast to {} peers", b.peers),
            rate(b.bare),
            rate(b.cluster),
            times(b.ratio()),
            "deliveries/s".to_owned(),
        ]);
    }
    let rtts = |f: &bench::Figures| {
        [
            ("p50", f.rtt_p50),
            ("p90", f.rtt_p90),
            ("p99", f.rtt_p99),
            ("p999", f.rtt_p999),
        ]
    };
    for ((q, bare), (_, cluster)) in rtts(&r.bare).into_iter().zip(rtts(&r.cluster)) {
        table.add_row([
            format!("round trip {q}"),
            micros(bare),
            micros(cluster),
            times(ratio(cluster.as_secs_f64(), bare.as_secs_f64())),
            if q == "p50" { "<= 1.25x" } else { "" }.to_owned(),
        ]);
    }
    let mut mem_line = String::new();
    if let Some(m) = &r.mem {
        table.add_row([
            "P2P throughput, in-memory".to_owned(),
            "—".to_owned(),
            rate(m.throughput),
            "—".to_owned(),
            ">= 8 M/s, one core".to_owned(),
        ]);
        for (q, d) in rtts(m) {
            table.add_row([
                format!("round trip {q}, in-memory"),
                "—".to_owned(),
                micros(d),
                "—".to_owned(),
                String::new(),
            ]);
        }
        mem_line = format!(
            "\nin-memory: the cluster over the in-memory transport in this process, one current-thread runtime, windows of {} in flight; delivered {} of {}",
            bench::MEM_WINDOW,
            m.delivered,
            o.messages
        );
    }
    format!(
        "cluster bench: backend {}, frames {}, {}-byte payloads, {} messages, {} round trips, processes on loopback, median of {} rounds\n\
         {}\n\
         delivered in the P2P run: bare {}, cluster {} of {} (the cluster drops and counts what a full queue refuses){}",
        o.backend,
        match o.security {
            Security::None => "without a MAC",
            Security::Mac => "with a MAC",
            Security::SipHash => "with a SipHash-2-4 MAC",
            Security::Aead => "encrypted (XChaCha20-Poly1305)",
        },
        o.payload,
        o.messages,
        o.round_trips,
        o.rounds,
        table.trim_fmt(),
        r.bare.delivered,
        r.cluster.delivered,
        o.messages,
        mem_line
    )
}

fn report_json(r: &BenchReport) -> serde_json::Value {
    let o = &r.options;
    let side = |f: &bench::Figures| {
        json!({
            "throughput": f.throughput,
            "delivered": f.delivered,
            "rtt_p50_us": f.rtt_p50.as_secs_f64() * 1e6,
            "rtt_p90_us": f.rtt_p90.as_secs_f64() * 1e6,
            "rtt_p99_us": f.rtt_p99.as_secs_f64() * 1e6,
            "rtt_p999_us": f.rtt_p999.as_secs_f64() * 1e6,
        })
    };
    let rtt_ratio = |q: fn(&bench::Figures) -> Duration| {
        ratio(q(&r.cluster).as_secs_f64(), q(&r.bare).as_secs_f64())
    };
    json!({
        "backend": o.backend.as_str(),
        "options": {
            "messages": o.messages,
            "round_trips": o.round_trips,
            "payload": o.payload,
            "rounds": o.rounds,
            "peer_queue": o.peer_queue,
            "broadcast_peers": o.broadcast_peers,
            "runtime": o.runtime.as_str(),
            "security": o.security.as_str(),
        },
        "bare": side(&r.bare),
        "cluster": side(&r.cluster),
        "ratios": {
            "throughput": r.throughput_ratio(),
            "rtt_p50": r.rtt_p50_ratio(),
            "rtt_p90": rtt_ratio(|f| f.rtt_p90),
            "rtt_p99": r.rtt_p99_ratio(),
            "rtt_p999": rtt_ratio(|f| f.rtt_p999),
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
        // The cluster over the in-memory transport, in this process on one current-thread
        // runtime (no bare baseline); null when skipped (--no-mem).
        "mem": r.mem.as_ref().map(|m| {
            let mut v = side(m);
            v["messages"] = json!(o.messages);
            v["window"] = json!(bench::MEM_WINDOW);
            v["runtime"] = json!("current-thread");
            v
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(base: u64) -> bench::Figures {
        bench::Figures {
            throughput: 1e6,
            delivered: 1000,
            rtt_p50: Duration::from_micros(base),
            rtt_p90: Duration::from_micros(base + 1),
            rtt_p99: Duration::from_micros(base + 2),
            rtt_p999: Duration::from_micros(base + 3),
        }
    }

    fn report(mem: bool) -> BenchReport {
        BenchReport {
            options: BenchOptions {
                messages: 1000,
                mem,
                ..BenchOptions::default()
            },
            bare: figures(10),
            cluster: figures(20),
            round_ratios: vec![(1.0, 2.0)],
            broadcast: None,
            mem: mem.then(|| figures(5)),
        }
    }

    #[test]
    fn the_table_has_every_percentile_and_the_in_memory_rows() {
        let text = table(&report(true));
        for row in [
            "round trip p50",
            "round trip p90",
            "round trip p99",
            "round trip p999",
            "P2P throughput, in-memory",
            "round trip p999, in-memory",
            "delivered 1000 of 1000",
        ] {
            assert!(text.contains(row), "{row:?} missing in\n{text}");
        }
        assert!(!table(&report(false)).contains("in-memory"));
    }

    #[test]
    fn the_json_keeps_its_fields_and_adds_the_new_ones() {
        let v = report_json(&report(true));
        for side in ["bare", "cluster", "mem"] {
            for field in [
                "throughput",
                "delivered",
                "rtt_p50_us",
                "rtt_p90_us",
                "rtt_p99_us",
                "rtt_p999_us",
            ] {
                assert!(v[side][field].is_number(), "{side}.{field}: {v}");
            }
        }
        assert_eq!(v["cluster"]["rtt_p999_us"], 23.0);
        assert_eq!(v["ratios"]["rtt_p50"], 2.0);
        assert_eq!(v["mem"]["messages"], 1000);
        assert!(report_json(&report(false))["mem"].is_null());
    }
}
