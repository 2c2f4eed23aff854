//! The figures: [`BenchReport`], and [`Progress`] while they are measured.

use std::fmt;
use std::time::Duration;

use crate::BenchOptions;

/// Throughput and round-trip figures of one side (bare library, cluster, or the cluster in
/// memory): medians over the rounds, each figure separately. With the default 10,000 round
/// trips, p999 is the sample that 10 samples lie above.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// Messages per second, delivered.
    pub throughput: f64,
    /// Messages delivered in the throughput run.
    pub delivered: u64,
    /// Round trip, median.
    pub rtt_p50: Duration,
    /// Round trip, 90th percentile.
    pub rtt_p90: Duration,
    /// Round trip, 99th percentile.
    pub rtt_p99: Duration,
    /// Round trip, 99.9th percentile.
    pub rtt_p999: Duration,
}

/// The broadcast benchmark's figures: medians over the rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BroadcastFigures {
    /// Receivers, one child process each.
    pub peers: usize,
    /// Bare library: deliveries per second, all receivers together.
    pub bare: f64,
    /// Cluster: deliveries per second, all receivers together.
    pub cluster: f64,
    /// Cluster: deliveries counted by the receivers (of `messages × peers` sent).
    pub cluster_delivered: u64,
    /// Bare library: deliveries counted by the receivers (always `messages × peers`).
    pub bare_delivered: u64,
}

impl BroadcastFigures {
    /// Cluster deliveries per second over bare deliveries per second.
    pub fn ratio(&self) -> f64 {
        self.cluster / self.bare
    }
}

/// The result of [`crate::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// What was measured.
    pub options: BenchOptions,
    /// The bare library: PUSH → PULL and REQ → REP.
    pub bare: Figures,
    /// The cluster: Server → Server over the transport.
    pub cluster: Figures,
    /// Every round's ratios, (throughput, p50 round trip), to judge the noise.
    pub round_ratios: Vec<(f64, f64)>,
    /// The broadcast benchmark, when [`BenchOptions::broadcast_peers`] > 0.
    pub broadcast: Option<BroadcastFigures>,
    /// The cluster over the in-memory transport, in the benchmarking process on one core
    /// (no bare baseline), when [`BenchOptions::mem`]. Its `delivered` is of
    /// [`BenchOptions::messages`] sent.
    pub mem: Option<Figures>,
}

impl BenchReport {
    /// Cluster throughput over bare throughput (target ≥ 0.5).
    pub fn throughput_ratio(&self) -> f64 {
        self.cluster.throughput / self.bare.throughput
    }

    /// Cluster median round trip over bare median round trip (target ≤ 1.25).
    pub fn rtt_p50_ratio(&self) -> f64 {
        self.cluster.rtt_p50.as_secs_f64() / self.bare.rtt_p50.as_secs_f64()
    }

    /// Cluster p99 round trip over bare p99 round trip.
    pub fn rtt_p99_ratio(&self) -> f64 {
        self.cluster.rtt_p99.as_secs_f64() / self.bare.rtt_p99.as_secs_f64()
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "backend {}: {} messages of {} bytes, {} round trips, peer_queue {}, 2 processes on loopback, median of {} rounds",
            o.backend, o.messages, o.payload, o.round_trips, o.peer_queue, o.rounds
        )?;
        for (name, x) in [("bare   ", &self.bare), ("cluster", &self.cluster)] {
            writeln!(
                f,
                "  {name}  throughput {:>10.0} msg/s ({} delivered)   round trip p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs  p999 {:>7.1} µs",
                x.throughput,
                x.delivered,
                us(x.rtt_p50),
                us(x.rtt_p90),
                us(x.rtt_p99),
                us(x.rtt_p999)
            )?;
        }
        writeln!(
            f,
            "  ratios   throughput {:.2}x (target >= 0.5)   p50 round trip {:.2}x (target <= 1.25)",
            self.throughput_ratio(),
            self.rtt_p50_ratio()
        )?;
        write!(f, "  per round (throughput, p50):")?;
        for (t, l) in &self.round_ratios {
            write!(f, " ({t:.2}x, {l:.2}x)")?;
        }
        if let Some(b) = &self.broadcast {
            let sent = o.messages.saturating_mul(b.peers as u64);
            writeln!(f)?;
            writeln!(
                f,
                "broadcast: {} messages to {} peers ({} child processes), {sent} deliveries sent per run",
                o.messages, b.peers, b.peers
            )?;
            writeln!(
                f,
                "  bare     {:>10.0} deliveries/s ({} delivered)",
                b.bare, b.bare_delivered
            )?;
            writeln!(
                f,
                "  cluster  {:>10.0} deliveries/s ({} delivered, {} dropped)",
                b.cluster,
                b.cluster_delivered,
                sent.saturating_sub(b.cluster_delivered)
            )?;
            write!(f, "  ratio    {:.2}x", b.ratio())?;
        }
        if let Some(m) = &self.mem {
            writeln!(f)?;
            writeln!(
                f,
                "in memory (this process, one current-thread runtime, windows of {}):",
                crate::MEM_WINDOW
            )?;
            write!(
                f,
                "  cluster  throughput {:>10.0} msg/s ({} of {} delivered)   round trip p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs  p999 {:>7.1} µs",
                m.throughput,
                m.delivered,
                o.messages,
                us(m.rtt_p50),
                us(m.rtt_p90),
                us(m.rtt_p99),
                us(m.rtt_p999)
            )?;
        }
        Ok(())
    }
}

/// A measurement about to start, reported by [`crate::run_with_progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// This step, counted from 1.
    pub step: usize,
    /// Steps in the whole run.
    pub steps: usize,
    /// What this step measures, e.g. `"round 2/5: cluster throughput"`.
    pub what: String,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}/{}] {}", self.step, self.steps, self.what)
    }
}
