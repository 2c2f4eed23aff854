//! Benchmarks of a ZeroMQ backend against the bare library it is built on, in one run,
//! between processes on loopback:
//!
//! * **throughput** — one node streams `messages` messages of a `payload`-byte string to a
//!   node in a child process; the bare baseline is a PUSH → PULL of the same crate, with
//!   the same number of `payload`-byte messages;
//! * **round trip** — one message to the child and back, `round_trips` times, one at a
//!   time; the bare baseline is a REQ → REP of the same crate. p50 and p99;
//! * **broadcast** (when [`BenchOptions::broadcast_peers`] is `k > 0`) — one node
//!   broadcasts `messages` messages to `k` nodes, each in its own child process (every
//!   message is `k` deliveries); the bare baseline is `k` PUSH sockets in the sending
//!   process, one per child PULL, each message sent on all `k` (the bare side encodes
//!   nothing). Rates are total deliveries per second, from the first delivery at any
//!   receiver to the last at any receiver (the receivers' wall clocks are the machine's).
//!
//! The bare crate is the one of the chosen [`Backend`]: `zmq` (libzmq) or `zeromq`.
//!
//! Rates are measured at the receivers, from the first message to the last. Cluster
//! throughput counts delivered messages only (shown beside it). A transport never blocks on
//! a peer, so the sending side does its own flow control, as an application would: every
//! 64 messages it lets the server's task run and looks at its `backpressure` drop count;
//! while it keeps growing the sender pauses, 20 µs doubling up to 2 ms, and relaxes when it
//! stops growing.
//! The child processes run a current-thread tokio runtime; [`run`] uses the caller's.
//! Every wait on a child or a socket is bounded (two minutes per phase), and the child
//! processes are killed by pid when a measurement fails.
//!
//! The other processes are the current executable, started again with the environment
//! variable [`CHILD_ENV`] set: a program that calls [`run`] must call [`child_main`] first
//! thing in `main`, as the example does:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     if let Some(code) = cluster_zmq::bench::child_main() {
//!         return code;
//!     }
//!     let rt = tokio::runtime::Runtime::new().expect("runtime");
//!     let report = rt.block_on(cluster_zmq::bench::run(&Default::default())).expect("bench");
//!     println!("{report}");
//!     std::process::ExitCode::SUCCESS
//! }
//! ```
//!
//! Run it with `cargo run --release -p cluster-zmq --example bench -- [messages]
//! [--backend libzmq|zeromq] [--broadcast K]` (add `--features zeromq` for both backends,
//! or `--no-default-features --features zeromq` for the pure-Rust one only).

use std::fmt;
use std::process::{ExitCode, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use cluster_core::{BROADCAST, Config, DropReason, Envelope, Options, Pid, Server};
pub use cluster_zmq::Backend;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The environment variable that makes [`child_main`] run a benchmark role.
pub const CHILD_ENV: &str = "CLUSTER_ZMQ_BENCH_CHILD";

/// The most receivers of the broadcast benchmark (one child process each).
pub const MAX_BROADCAST_PEERS: usize = 16;

/// Longest a benchmark phase may take before it is abandoned.
const PHASE_DEADLINE: Duration = Duration::from_secs(120);
/// Messages between two looks at the backpressure counter, in the throughput run.
const PACING_EVERY: u64 = 64;
/// How long the throughput sender pauses when its peer's queue overflowed.
const PACING_PAUSE: Duration = Duration::from_micros(20);
/// The longest such pause.
const PACING_PAUSE_MAX: Duration = Duration::from_millis(2);
/// How often the end marker of a stream is repeated while a receiver has not reported.
const END_MARKER_EVERY: Duration = Duration::from_millis(20);
/// Round trips done before measuring.
const WARMUP: u64 = 1000;

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOptions {
    /// Messages per throughput run (and per broadcast run). At least 1.
    pub messages: u64,
    /// Measured round trips per latency run.
    pub round_trips: u64,
    /// Payload bytes per message.
    pub payload: usize,
    /// Measurements of each kind, alternating bare and cluster; the report gives medians.
    pub rounds: usize,
    /// [`Options::peer_queue`] of every node (the libzmq high-water marks).
    pub peer_queue: usize,
    /// The backend under test; it must be compiled in ([`Backend::available`]).
    pub backend: Backend,
    /// Receivers of the broadcast benchmark, `1..=`[`MAX_BROADCAST_PEERS`], one child
    /// process each; 0 skips it.
    pub broadcast_peers: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            messages: 1_000_000,
            round_trips: 10_000,
            payload: 64,
            rounds: 5,
            peer_queue: 16 * 1024,
            backend: Backend::default(),
            broadcast_peers: 0,
        }
    }
}

impl BenchOptions {
    fn check(&self) -> Result<(), BenchError> {
        if let Err(e) = self.backend.require() {
            return Err(BenchError::Options(e.to_string()));
        }
        if self.messages == 0 {
            return Err(BenchError::Options(
                "messages 0: at least 1 message is needed".into(),
            ));
        }
        if self.broadcast_peers > MAX_BROADCAST_PEERS {
            return Err(BenchError::Options(format!(
                "broadcast peers {}: must be 1..={MAX_BROADCAST_PEERS} (or 0 to skip the broadcast benchmark)",
                self.broadcast_peers
            )));
        }
        Ok(())
    }
}

/// Throughput and round-trip figures of one side (bare library or cluster): medians over
/// the rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// Messages per second, delivered.
    pub throughput: f64,
    /// Messages delivered in the throughput run.
    pub delivered: u64,
    /// Round trip, median.
    pub rtt_p50: Duration,
    /// Round trip, 99th percentile.
    pub rtt_p99: Duration,
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

/// The result of [`run`].
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// `"libzmq"` or `"zeromq"`.
    pub backend: &'static str,
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
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "backend {}: {} messages of {} bytes, {} round trips, peer_queue {}, 2 processes on loopback, median of {} rounds",
            self.backend, o.messages, o.payload, o.round_trips, o.peer_queue, o.rounds
        )?;
        for (name, x) in [("bare   ", &self.bare), ("cluster", &self.cluster)] {
            writeln!(
                f,
                "  {name}  throughput {:>10.0} msg/s ({} delivered)   round trip p50 {:>7.1} µs  p99 {:>7.1} µs",
                x.throughput,
                x.delivered,
                x.rtt_p50.as_secs_f64() * 1e6,
                x.rtt_p99.as_secs_f64() * 1e6
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
        Ok(())
    }
}

/// A measurement about to start, reported by [`run_with_progress`].
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

/// Why a benchmark could not run.
#[derive(Debug)]
#[non_exhaustive]
pub enum BenchError {
    /// The child process could not be started or misbehaved.
    Child(String),
    /// The library under test failed.
    Failed(String),
    /// The options cannot be run (a backend not compiled in, a peer count out of range…).
    Options(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Child(e) => write!(f, "benchmark child process: {e}"),
            Self::Failed(e) => write!(f, "benchmark: {e}"),
            Self::Options(e) => write!(f, "benchmark options: {e}"),
        }
    }
}

impl std::error::Error for BenchError {}

fn failed(e: impl fmt::Display) -> BenchError {
    BenchError::Failed(e.to_string())
}

/// Runs every measurement and returns the figures. Spawns the current executable as the
/// other processes (see the module docs). Must be called inside a tokio runtime.
pub async fn run(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    run_with_progress(options, &mut |_| {}).await
}

/// [`run`], calling `progress` before each measurement.
pub async fn run_with_progress(
    options: &BenchOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<BenchReport, BenchError> {
    options.check()?;
    let rounds = options.rounds.max(1);
    let k = options.broadcast_peers;
    let per_round = if k > 0 { 6 } else { 4 };
    let steps = rounds * per_round;
    let mut step = 0;
    let mut announce = |round: usize, what: &str| {
        step += 1;
        progress(Progress {
            step,
            steps,
            what: format!("round {round}/{rounds}: {what}"),
        });
    };
    let mut bare = Vec::new();
    let mut cluster = Vec::new();
    let mut broadcasts = Vec::new();
    // Alternate, so that a load change on the machine hits both sides alike.
    for round in 1..=rounds {
        announce(round, "bare throughput");
        let bare_tp = bare_throughput(options).await?;
        announce(round, "cluster throughput");
        let cluster_tp = cluster_throughput(options).await?;
        announce(round, "bare round trip");
        let bare_rtt = bare_round_trips(options).await?;
        announce(round, "cluster round trip");
        let cluster_rtt = cluster_round_trips(options).await?;
        bare.push(Figures {
            throughput: bare_tp.0,
            delivered: bare_tp.1,
            rtt_p50: bare_rtt.0,
            rtt_p99: bare_rtt.1,
        });
        cluster.push(Figures {
            throughput: cluster_tp.0,
            delivered: cluster_tp.1,
            rtt_p50: cluster_rtt.0,
            rtt_p99: cluster_rtt.1,
        });
        if k > 0 {
            announce(round, &format!("bare broadcast to {k} peers"));
            let b = bare_broadcast(options).await?;
            announce(round, &format!("cluster broadcast to {k} peers"));
            let c = cluster_broadcast(options).await?;
            broadcasts.push(BroadcastFigures {
                peers: k,
                bare: b.0,
                cluster: c.0,
                cluster_delivered: c.1,
                bare_delivered: b.1,
            });
        }
    }
    let round_ratios = bare
        .iter()
        .zip(&cluster)
        .map(|(b, c)| {
            (
                c.throughput / b.throughput,
                c.rtt_p50.as_secs_f64() / b.rtt_p50.as_secs_f64(),
            )
        })
        .collect();
    let broadcast = (!broadcasts.is_empty()).then(|| BroadcastFigures {
        peers: k,
        bare: mid(broadcasts.iter().map(|r| r.bare).collect()),
        cluster: mid(broadcasts.iter().map(|r| r.cluster).collect()),
        cluster_delivered: mid(broadcasts.iter().map(|r| r.cluster_delivered).collect()),
        bare_delivered: mid(broadcasts.iter().map(|r| r.bare_delivered).collect()),
    });
    Ok(BenchReport {
        backend: options.backend.as_str(),
        options: options.clone(),
        bare: median(&bare),
        cluster: median(&cluster),
        round_ratios,
        broadcast,
    })
}

fn mid<T: Copy + PartialOrd + Default>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The median of each figure separately.
fn median(rounds: &[Figures]) -> Figures {
    Figures {
        throughput: mid(rounds.iter().map(|r| r.throughput).collect()),
        delivered: mid(rounds.iter().map(|r| r.delivered).collect()),
        rtt_p50: mid(rounds.iter().map(|r| r.rtt_p50).collect()),
        rtt_p99: mid(rounds.iter().map(|r| r.rtt_p99).collect()),
    }
}

/// If this process was started by [`run`] as one of its other processes, plays that role
/// and returns the exit code; otherwise returns `None` at once.
///
/// A role is `<backend> <role> <arguments>`: `bare-pull <endpoint> <n>`,
/// `bare-rep <endpoint> <n>`, `cluster-recv <pid> <peer_queue> <address>…` and
/// `cluster-echo <pid> <peer_queue> <address>…` (the addresses of pids 1, 2, …).
pub fn child_main() -> Option<ExitCode> {
    let role = std::env::var(CHILD_ENV).ok()?;
    let runtime = match runtime_builder().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench child: no runtime: {e}");
            return Some(ExitCode::FAILURE);
        }
    };
    let words: Vec<&str> = role.split(' ').collect();
    let result = runtime.block_on(async {
        let Some((backend, words)) = words.split_first() else {
            return Err(BenchError::Child(format!("empty role {role:?}")));
        };
        let backend: Backend = backend
            .parse()
            .map_err(|e: cluster_zmq::UnknownBackend| BenchError::Child(e.to_string()))?;
        match words {
            ["bare-pull", endpoint, n] => bare::pull(backend, endpoint, parse(n)?).await,
            ["bare-rep", endpoint, n] => bare::rep(backend, endpoint, parse(n)?).await,
            ["cluster-recv", pid, queue, addrs @ ..] => {
                cluster_recv(backend, parse(pid)?, parse(queue)?, addrs).await
            }
            ["cluster-echo", pid, queue, addrs @ ..] => {
                cluster_echo(backend, parse(pid)?, parse(queue)?, addrs).await
            }
            _ => Err(BenchError::Child(format!("unknown role {role:?}"))),
        }
    });
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench child: {e}");
            ExitCode::FAILURE
        }
    })
}

/// The runtime flavor of the child: current-thread unless `CLUSTER_ZMQ_BENCH_RT=multi`.
fn runtime_builder() -> tokio::runtime::Builder {
    if std::env::var("CLUSTER_ZMQ_BENCH_RT").is_ok_and(|v| v == "multi") {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
}

fn parse<T: FromStr>(s: &str) -> Result<T, BenchError> {
    s.parse()
        .map_err(|_| BenchError::Child(format!("not a number: {s}")))
}

/// Waits for `f` at most [`PHASE_DEADLINE`].
async fn within<T>(
    what: &str,
    f: impl Future<Output = Result<T, BenchError>>,
) -> Result<T, BenchError> {
    tokio::time::timeout(PHASE_DEADLINE, f)
        .await
        .map_err(|_| failed(format!("{what}: not done within {PHASE_DEADLINE:?}")))?
}

/// A child process, killed (by its pid, through tokio's `kill_on_drop`) when dropped.
struct ChildProcess {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ChildProcess {
    fn spawn(backend: Backend, role: &str) -> Result<Self, BenchError> {
        let exe = std::env::current_exe().map_err(|e| BenchError::Child(e.to_string()))?;
        let mut child = Command::new(exe)
            .env(CHILD_ENV, format!("{backend} {role}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Child(format!("spawn: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Child("no stdout".into()))?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next line starting with `prefix`, within the phase deadline. Cancel-safe: a
    /// line is only consumed in the poll that returns it (`Lines::next_line`).
    async fn expect(&mut self, prefix: &str) -> Result<String, BenchError> {
        let wait = async {
            loop {
                match self.lines.next_line().await {
                    Ok(Some(line)) if line.starts_with(prefix) => return Ok(line),
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        return Err(BenchError::Child(format!(
                            "exited before saying {prefix:?}"
                        )));
                    }
                    Err(e) => return Err(BenchError::Child(e.to_string())),
                }
            }
        };
        tokio::time::timeout(PHASE_DEADLINE, wait)
            .await
            .map_err(|_| BenchError::Child(format!("no {prefix:?} within {PHASE_DEADLINE:?}")))?
    }

    async fn finish(mut self) {
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Starts one child process per role; on any failure the ones started are killed.
fn spawn_all(
    backend: Backend,
    roles: impl IntoIterator<Item = String>,
) -> Result<Vec<ChildProcess>, BenchError> {
    roles
        .into_iter()
        .map(|role| ChildProcess::spawn(backend, &role))
        .collect()
}

async fn expect_all(
    children: &mut [ChildProcess],
    prefix: &str,
) -> Result<Vec<String>, BenchError> {
    let mut lines = Vec::with_capacity(children.len());
    for child in children {
        lines.push(child.expect(prefix).await?);
    }
    Ok(lines)
}

async fn finish_all(children: Vec<ChildProcess>) {
    for child in children {
        child.finish().await;
    }
}

/// Runs `work` while watching `children`: if one of them fails or is killed first, gives
/// `work` up at once (a child that exits successfully has done its part).
async fn while_alive<T>(
    children: &mut [ChildProcess],
    work: impl Future<Output = Result<T, BenchError>>,
) -> Result<T, BenchError> {
    let failure = async {
        loop {
            for child in children.iter_mut() {
                if let Ok(Some(status)) = child.child.try_wait()
                    && !status.success()
                {
                    return status;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        result = work => result,
        status = failure => Err(BenchError::Child(format!("exited during the run: {status}"))),
    }
}

/// What a receiving child reports: `result <count> <elapsed_ns> <dropped> <first> <last>`,
/// `first` and `last` being the wall-clock times (ns since the Unix epoch) of its first and
/// last message, so that receivers in different processes can be put on one time line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Received {
    count: u64,
    elapsed_ns: u64,
    dropped: u64,
    first_ns: u64,
    last_ns: u64,
}

impl Received {
    /// The line a receiver prints; `span` is the (first, last) arrival, if any.
    fn line(count: u64, span: Option<(Instant, Instant)>, dropped: u64) -> String {
        let (now, wall_now) = (Instant::now(), SystemTime::now());
        let wall_ns = |t: Instant| {
            wall_now
                .checked_sub(now.saturating_duration_since(t))
                .and_then(|w| w.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        };
        let (elapsed, first, last) = span.map_or((0, 0, 0), |(first, last)| {
            let elapsed = u64::try_from(last.duration_since(first).as_nanos()).unwrap_or(u64::MAX);
            (elapsed, wall_ns(first), wall_ns(last))
        });
        format!("result {count} {elapsed} {dropped} {first} {last}")
    }

    fn parse(line: &str) -> Result<Self, BenchError> {
        let mut w = line.split(' ').skip(1);
        let mut next = || parse::<u64>(w.next().unwrap_or(""));
        Ok(Self {
            count: next()?,
            elapsed_ns: next()?,
            dropped: next()?,
            first_ns: next()?,
            last_ns: next()?,
        })
    }

    /// One receiver: (msg/s, count), from its first message to its last.
    fn rate(&self) -> (f64, u64) {
        let secs = (self.elapsed_ns as f64 / 1e9).max(1e-9);
        (self.count.saturating_sub(1) as f64 / secs, self.count)
    }

    /// Several receivers together: (deliveries/s, deliveries), from the first delivery at
    /// any of them to the last at any of them.
    fn aggregate(all: &[Received]) -> (f64, u64) {
        let total: u64 = all.iter().map(|r| r.count).sum();
        let active = || all.iter().filter(|r| r.count > 0);
        let span_ns = match (
            active().map(|r| r.first_ns).min(),
            active().map(|r| r.last_ns).max(),
        ) {
            (Some(first), Some(last)) => last.saturating_sub(first),
            _ => 0,
        };
        let secs = (span_ns as f64 / 1e9).max(1e-9);
        (total.saturating_sub(1) as f64 / secs, total)
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).copied().unwrap_or_default()
    };
    (at(0.50), at(0.99))
}

/// `n` distinct free loopback ports: every listener is held until all are chosen.
fn free_ports(n: usize) -> Result<Vec<u16>, BenchError> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(failed))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr().map_err(failed)?.port()))
        .collect()
}

fn tcp_endpoints(n: usize) -> Result<Vec<String>, BenchError> {
    Ok(free_ports(n)?
        .into_iter()
        .map(|p| format!("tcp://127.0.0.1:{p}"))
        .collect())
}

fn addresses(n: usize) -> Result<Vec<String>, BenchError> {
    Ok(free_ports(n)?
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect())
}

fn payload_text(payload: usize) -> String {
    "x".repeat(payload)
}

/// The bare stream: one child PULL per endpoint, every message pushed to each of them.
async fn bare_stream(o: &BenchOptions, endpoints: &[String]) -> Result<Vec<Received>, BenchError> {
    let mut children = spawn_all(
        o.backend,
        endpoints
            .iter()
            .map(|e| format!("bare-pull {e} {}", o.messages)),
    )?;
    expect_all(&mut children, "ready").await?;
    while_alive(
        &mut children,
        bare::push(o.backend, endpoints, o.messages, o.payload),
    )
    .await?;
    let lines = expect_all(&mut children, "result").await?;
    finish_all(children).await;
    lines.iter().map(|l| Received::parse(l)).collect()
}

async fn bare_throughput(o: &BenchOptions) -> Result<(f64, u64), BenchError> {
    let received = bare_stream(o, &tcp_endpoints(1)?).await?;
    Ok(Received::aggregate(&received))
}

async fn bare_broadcast(o: &BenchOptions) -> Result<(f64, u64), BenchError> {
    let received = bare_stream(o, &tcp_endpoints(o.broadcast_peers)?).await?;
    Ok(Received::aggregate(&received))
}

async fn bare_round_trips(o: &BenchOptions) -> Result<(Duration, Duration), BenchError> {
    let endpoints = tcp_endpoints(1)?;
    let endpoint = endpoints.first().ok_or_else(|| failed("no free port"))?;
    let total = WARMUP + o.round_trips;
    let mut child = ChildProcess::spawn(o.backend, &format!("bare-rep {endpoint} {total}"))?;
    child.expect("ready").await?;
    let samples = while_alive(
        std::slice::from_mut(&mut child),
        bare::req(o.backend, endpoint, total, o.payload),
    )
    .await?;
    child.finish().await;
    Ok(percentiles(
        samples.into_iter().skip(WARMUP as usize).collect(),
    ))
}

/// Nodes 1, 2, … at `addresses`, in that order.
fn bench_config<A: AsRef<str>>(addresses: &[A], peer_queue: usize) -> Result<Config, BenchError> {
    let options = Options {
        peer_queue,
        ..Options::default()
    };
    Config::from_peers((1..).zip(addresses.iter().map(AsRef::as_ref)), options).map_err(failed)
}

/// Node `pid` of `config` over the transport of `backend`.
async fn node(backend: Backend, pid: Pid, config: &Config) -> Result<Server<String>, BenchError> {
    let transport = cluster_zmq::bind_with(backend, pid, config)
        .await
        .map_err(failed)?;
    Server::with_transport(pid, config.clone(), transport).map_err(failed)
}

/// The cluster stream: node 1 here, one receiving node per child (pids 2, 3, …), node 1
/// sending every message to `to` (node 2, or everyone).
async fn cluster_stream(
    o: &BenchOptions,
    receivers: usize,
    to: Pid,
) -> Result<Vec<Received>, BenchError> {
    let addrs = addresses(receivers + 1)?;
    let config = bench_config(&addrs, o.peer_queue)?;
    let all = addrs.join(" ");
    let mut children = spawn_all(
        o.backend,
        (2..=receivers + 1).map(|pid| format!("cluster-recv {pid} {} {all}", o.peer_queue)),
    )?;
    let server = node(o.backend, 1, &config).await?;
    server
        .wait_for_peers(PHASE_DEADLINE)
        .await
        .map_err(failed)?;
    expect_all(&mut children, "ready").await?;
    let out = server.outbox();
    let text = payload_text(o.payload);
    // A transport never blocks on a peer (where a bare PUSH blocks at its high-water mark),
    // so flow control is the application's: back off for a moment whenever a peer's queue
    // overflowed, instead of burning the CPU the receivers need on messages that are dropped.
    let mut overflowed = 0;
    let mut pause = Duration::ZERO;
    for i in 0..o.messages {
        out.send(Envelope::new(to, i as i64, text.clone()))
            .await
            .map_err(failed)?;
        if i % PACING_EVERY == PACING_EVERY - 1 {
            // Let the server's task route what is in the outbox before looking.
            tokio::task::yield_now().await;
            let now = server
                .stats()
                .dropped_outgoing
                .get(DropReason::Backpressure);
            // Back off exponentially while a queue keeps overflowing, relax when it stops.
            pause = if now > overflowed {
                (pause * 2).clamp(PACING_PAUSE, PACING_PAUSE_MAX)
            } else {
                pause / 2
            };
            overflowed = now;
            if pause >= PACING_PAUSE {
                // Blocks this (sending) thread briefly: a tokio sleep has a 1 ms grain.
                std::thread::sleep(pause);
            }
        }
    }
    // The end marker may itself meet a full queue: repeat it until every child reports.
    let started = Instant::now();
    let mut results: Vec<Option<Received>> = vec![None; children.len()];
    while results.iter().any(Option::is_none) {
        if started.elapsed() > PHASE_DEADLINE {
            return Err(BenchError::Child(format!(
                "no \"result\" from every receiver within {PHASE_DEADLINE:?}"
            )));
        }
        out.send(Envelope::new(to, -1, String::new()))
            .await
            .map_err(failed)?;
        let pending = results.iter().filter(|r| r.is_none()).count();
        let slice = END_MARKER_EVERY / u32::try_from(pending.max(1)).unwrap_or(u32::MAX);
        for (child, slot) in children.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                // `expect` is cancel-safe: a timeout here loses no line.
                if let Ok(line) = tokio::time::timeout(slice, child.expect("result")).await {
                    *slot = Some(Received::parse(&line?)?);
                }
            }
        }
    }
    let dropped_here = server.stats().dropped_outgoing;
    server.shutdown().await;
    finish_all(children).await;
    let results: Vec<Received> = results.into_iter().flatten().collect();
    let dropped_there: u64 = results.iter().map(|r| r.dropped).sum();
    tracing::info!(
        "cluster stream to {receivers} receiver(s): dropped by the sender: {dropped_here}; by the receivers: {dropped_there}"
    );
    Ok(results)
}

async fn cluster_throughput(o: &BenchOptions) -> Result<(f64, u64), BenchError> {
    let received = cluster_stream(o, 1, 2).await?;
    let one = received.first().ok_or_else(|| failed("no receiver"))?;
    Ok(one.rate())
}

async fn cluster_broadcast(o: &BenchOptions) -> Result<(f64, u64), BenchError> {
    let received = cluster_stream(o, o.broadcast_peers, BROADCAST).await?;
    Ok(Received::aggregate(&received))
}

async fn cluster_round_trips(o: &BenchOptions) -> Result<(Duration, Duration), BenchError> {
    let addrs = addresses(2)?;
    let config = bench_config(&addrs, o.peer_queue)?;
    let mut child = ChildProcess::spawn(
        o.backend,
        &format!("cluster-echo 2 {} {}", o.peer_queue, addrs.join(" ")),
    )?;
    let mut server = node(o.backend, 1, &config).await?;
    server
        .wait_for_peers(PHASE_DEADLINE)
        .await
        .map_err(failed)?;
    child.expect("ready").await?;
    let out = server.outbox();
    let text = payload_text(o.payload);
    let total = WARMUP + o.round_trips;
    let round_trips = async {
        let mut samples = Vec::with_capacity(total as usize);
        for i in 0..total {
            let t = Instant::now();
            out.send(Envelope::new(2, i as i64, text.clone()))
                .await
                .map_err(failed)?;
            loop {
                let env = tokio::time::timeout(PHASE_DEADLINE, server.inbox().recv())
                    .await
                    .map_err(|_| failed("round trip timed out"))?
                    .ok_or_else(|| failed("inbox closed"))?;
                if env.msg_id == i as i64 {
                    break;
                }
            }
            samples.push(t.elapsed());
        }
        Ok(samples)
    };
    let samples = while_alive(std::slice::from_mut(&mut child), round_trips).await?;
    out.send(Envelope::new(2, -1, String::new()))
        .await
        .map_err(failed)?;
    server.shutdown().await;
    child.finish().await;
    Ok(percentiles(
        samples.into_iter().skip(WARMUP as usize).collect(),
    ))
}

/// Child: node `pid`, counting what node 1 sends until the end marker (msg id -1).
async fn cluster_recv(
    backend: Backend,
    pid: Pid,
    peer_queue: usize,
    addrs: &[&str],
) -> Result<(), BenchError> {
    let config = bench_config(addrs, peer_queue)?;
    let mut server = node(backend, pid, &config).await?;
    server
        .wait_for_peers(PHASE_DEADLINE)
        .await
        .map_err(failed)?;
    println!("ready");
    let mut count = 0u64;
    let mut first = None;
    let mut last = Instant::now();
    let receive = async {
        while let Some(env) = server.inbox().recv().await {
            if env.msg_id < 0 {
                break;
            }
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            count += 1;
        }
    };
    // The sender repeats its end marker; if it is gone, report what arrived.
    let _ = tokio::time::timeout(PHASE_DEADLINE, receive).await;
    let dropped = server.stats().dropped_incoming.total();
    println!(
        "{}",
        Received::line(count, first.map(|f| (f, last)), dropped)
    );
    server.shutdown().await;
    Ok(())
}

/// Child: node `pid`, echoing every message to node 1 until the end marker.
async fn cluster_echo(
    backend: Backend,
    pid: Pid,
    peer_queue: usize,
    addrs: &[&str],
) -> Result<(), BenchError> {
    let config = bench_config(addrs, peer_queue)?;
    let mut server = node(backend, pid, &config).await?;
    server
        .wait_for_peers(PHASE_DEADLINE)
        .await
        .map_err(failed)?;
    println!("ready");
    let out = server.outbox();
    let echo = async {
        while let Some(env) = server.inbox().recv().await {
            if env.msg_id < 0 {
                break;
            }
            out.send(Envelope::new(1, env.msg_id, env.msg))
                .await
                .map_err(failed)?;
        }
        Ok(())
    };
    let result = within("echo", echo).await;
    server.shutdown().await;
    result
}

/// The bare libraries, no cluster code: the crate of the chosen backend.
mod bare {
    use std::time::Duration;

    use super::{Backend, BenchError, within};

    /// Connects one PUSH per endpoint and sends `n` messages of `payload` bytes on each,
    /// message by message.
    pub(super) async fn push(
        backend: Backend,
        endpoints: &[String],
        n: u64,
        payload: usize,
    ) -> Result<(), BenchError> {
        match backend {
            #[cfg(feature = "libzmq")]
            Backend::Libzmq => within("push", with_libzmq::push(endpoints, n, payload)).await,
            #[cfg(feature = "zeromq")]
            Backend::Zeromq => within("push", with_zeromq::push(endpoints, n, payload)).await,
            #[cfg(not(all(feature = "libzmq", feature = "zeromq")))]
            other => Err(BenchError::Options(other.not_compiled_in())),
        }
    }

    /// Binds a PULL, says `ready`, receives `n` messages and prints its result line.
    pub(super) async fn pull(backend: Backend, endpoint: &str, n: u64) -> Result<(), BenchError> {
        match backend {
            #[cfg(feature = "libzmq")]
            Backend::Libzmq => within("pull", with_libzmq::pull(endpoint, n)).await,
            #[cfg(feature = "zeromq")]
            Backend::Zeromq => within("pull", with_zeromq::pull(endpoint, n)).await,
            #[cfg(not(all(feature = "libzmq", feature = "zeromq")))]
            other => Err(BenchError::Options(other.not_compiled_in())),
        }
    }

    /// `n` round trips of `payload` bytes through a REQ, timed one by one.
    pub(super) async fn req(
        backend: Backend,
        endpoint: &str,
        n: u64,
        payload: usize,
    ) -> Result<Vec<Duration>, BenchError> {
        match backend {
            #[cfg(feature = "libzmq")]
            Backend::Libzmq => within("req", with_libzmq::req(endpoint, n, payload)).await,
            #[cfg(feature = "zeromq")]
            Backend::Zeromq => within("req", with_zeromq::req(endpoint, n, payload)).await,
            #[cfg(not(all(feature = "libzmq", feature = "zeromq")))]
            other => Err(BenchError::Options(other.not_compiled_in())),
        }
    }

    /// Binds a REP, says `ready` and answers `n` requests.
    pub(super) async fn rep(backend: Backend, endpoint: &str, n: u64) -> Result<(), BenchError> {
        match backend {
            #[cfg(feature = "libzmq")]
            Backend::Libzmq => within("rep", with_libzmq::rep(endpoint, n)).await,
            #[cfg(feature = "zeromq")]
            Backend::Zeromq => within("rep", with_zeromq::rep(endpoint, n)).await,
            #[cfg(not(all(feature = "libzmq", feature = "zeromq")))]
            other => Err(BenchError::Options(other.not_compiled_in())),
        }
    }

    /// The `zmq` crate. Its calls block, so they run on the blocking pool, where they cannot
    /// be cancelled: the sending side's sockets time out every [`POLL_MS`] and look whether
    /// their caller gave up (its future was dropped) or the phase deadline passed; the
    /// children's sockets time out at the phase deadline.
    #[cfg(feature = "libzmq")]
    mod with_libzmq {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};

        use super::super::{BenchError, PHASE_DEADLINE, Received, failed};

        /// How long a sending-side call blocks before looking whether to give up.
        const POLL_MS: i32 = 100;

        fn socket(
            ctx: &zmq::Context,
            kind: zmq::SocketType,
            timeout_ms: i32,
        ) -> Result<zmq::Socket, BenchError> {
            let socket = ctx.socket(kind).map_err(failed)?;
            socket.set_sndtimeo(timeout_ms).map_err(failed)?;
            socket.set_rcvtimeo(timeout_ms).map_err(failed)?;
            Ok(socket)
        }

        fn phase_timeout_ms() -> i32 {
            i32::try_from(PHASE_DEADLINE.as_millis()).unwrap_or(i32::MAX)
        }

        /// Repeats `op` while it times out, until the caller gives up or the deadline passes.
        fn retry<T>(
            abandoned: &AtomicBool,
            deadline: Instant,
            mut op: impl FnMut() -> Result<T, zmq::Error>,
        ) -> Result<T, BenchError> {
            loop {
                match op() {
                    Err(zmq::Error::EAGAIN) => {
                        if abandoned.load(Ordering::Relaxed) {
                            return Err(failed("abandoned"));
                        }
                        if Instant::now() >= deadline {
                            return Err(failed(format!("not done within {PHASE_DEADLINE:?}")));
                        }
                    }
                    result => return result.map_err(failed),
                }
            }
        }

        pub(super) async fn push(
            endpoints: &[String],
            n: u64,
            payload: usize,
        ) -> Result<(), BenchError> {
            let endpoints = endpoints.to_vec();
            blocking(move |abandoned| {
                let deadline = Instant::now() + PHASE_DEADLINE;
                let ctx = zmq::Context::new();
                let pushes = endpoints
                    .iter()
                    .map(|endpoint| {
                        let push = socket(&ctx, zmq::PUSH, POLL_MS)?;
                        push.set_linger(5000).map_err(failed)?;
                        push.connect(endpoint).map_err(failed)?;
                        Ok(push)
                    })
                    .collect::<Result<Vec<_>, BenchError>>()?;
                let body = vec![b'x'; payload];
                let send_all = || {
                    for _ in 0..n {
                        for push in &pushes {
                            retry(abandoned, deadline, || push.send(&body[..], 0))?;
                        }
                    }
                    Ok(())
                };
                let result = send_all();
                if result.is_err() {
                    // Nothing left to flush to a receiver that is gone: close at once.
                    for push in &pushes {
                        let _ = push.set_linger(0);
                    }
                }
                result
            })
            .await
        }

        pub(super) async fn pull(endpoint: &str, n: u64) -> Result<(), BenchError> {
            let endpoint = endpoint.to_owned();
            blocking(move |_| {
                let ctx = zmq::Context::new();
                let pull = socket(&ctx, zmq::PULL, phase_timeout_ms())?;
                pull.bind(&endpoint).map_err(failed)?;
                println!("ready");
                let mut msg = zmq::Message::new();
                pull.recv(&mut msg, 0).map_err(failed)?;
                let first = Instant::now();
                for _ in 1..n {
                    pull.recv(&mut msg, 0).map_err(failed)?;
                }
                println!("{}", Received::line(n, Some((first, Instant::now())), 0));
                Ok(())
            })
            .await
        }

        pub(super) async fn req(
            endpoint: &str,
            n: u64,
            payload: usize,
        ) -> Result<Vec<Duration>, BenchError> {
            let endpoint = endpoint.to_owned();
            blocking(move |abandoned| {
                let deadline = Instant::now() + PHASE_DEADLINE;
                let ctx = zmq::Context::new();
                let req = socket(&ctx, zmq::REQ, POLL_MS)?;
                req.set_linger(0).map_err(failed)?;
                req.connect(&endpoint).map_err(failed)?;
                let body = vec![b'x'; payload];
                let mut msg = zmq::Message::new();
                let mut samples = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let t = Instant::now();
                    retry(abandoned, deadline, || req.send(&body[..], 0))?;
                    retry(abandoned, deadline, || req.recv(&mut msg, 0))?;
                    samples.push(t.elapsed());
                }
                Ok(samples)
            })
            .await
        }

        pub(super) async fn rep(endpoint: &str, n: u64) -> Result<(), BenchError> {
            let endpoint = endpoint.to_owned();
            blocking(move |_| {
                let ctx = zmq::Context::new();
                let rep = socket(&ctx, zmq::REP, phase_timeout_ms())?;
                rep.set_linger(0).map_err(failed)?;
                rep.bind(&endpoint).map_err(failed)?;
                println!("ready");
                let mut msg = zmq::Message::new();
                for _ in 0..n {
                    rep.recv(&mut msg, 0).map_err(failed)?;
                    rep.send(&msg[..], 0).map_err(failed)?;
                }
                Ok(())
            })
            .await
        }

        /// Set when the future that started a blocking call is dropped.
        struct AbandonOnDrop(Arc<AtomicBool>);

        impl Drop for AbandonOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }

        /// Runs `f` on the blocking pool; `f` is told when its caller has given up.
        async fn blocking<T: Send + 'static>(
            f: impl FnOnce(&AtomicBool) -> Result<T, BenchError> + Send + 'static,
        ) -> Result<T, BenchError> {
            let abandoned = Arc::new(AtomicBool::new(false));
            let _abandon = AbandonOnDrop(Arc::clone(&abandoned));
            tokio::task::spawn_blocking(move || f(&abandoned))
                .await
                .map_err(failed)?
        }
    }

    /// The pure-Rust `zeromq` crate (async: the callers bound every wait).
    #[cfg(feature = "zeromq")]
    mod with_zeromq {
        use std::time::{Duration, Instant};

        use bytes::Bytes;
        use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

        use super::super::{BenchError, Received, failed};

        pub(super) async fn push(
            endpoints: &[String],
            n: u64,
            payload: usize,
        ) -> Result<(), BenchError> {
            let mut pushes = Vec::with_capacity(endpoints.len());
            for endpoint in endpoints {
                let mut push = zeromq::PushSocket::new();
                push.connect(endpoint).await.map_err(failed)?;
                pushes.push(push);
            }
            let body = Bytes::from(vec![b'x'; payload]);
            for _ in 0..n {
                for push in &mut pushes {
                    push.send(ZmqMessage::from(body.clone()))
                        .await
                        .map_err(failed)?;
                }
            }
            // A send returns once its frame is written out; the children report when they
            // have them all.
            Ok(())
        }

        pub(super) async fn pull(endpoint: &str, n: u64) -> Result<(), BenchError> {
            let mut pull = zeromq::PullSocket::new();
            pull.bind(endpoint).await.map_err(failed)?;
            println!("ready");
            pull.recv().await.map_err(failed)?;
            let first = Instant::now();
            for _ in 1..n {
                pull.recv().await.map_err(failed)?;
            }
            println!("{}", Received::line(n, Some((first, Instant::now())), 0));
            Ok(())
        }

        pub(super) async fn req(
            endpoint: &str,
            n: u64,
            payload: usize,
        ) -> Result<Vec<Duration>, BenchError> {
            let mut req = zeromq::ReqSocket::new();
            req.connect(endpoint).await.map_err(failed)?;
            let body = Bytes::from(vec![b'x'; payload]);
            let mut samples = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let t = Instant::now();
                req.send(ZmqMessage::from(body.clone()))
                    .await
                    .map_err(failed)?;
                req.recv().await.map_err(failed)?;
                samples.push(t.elapsed());
            }
            Ok(samples)
        }

        pub(super) async fn rep(endpoint: &str, n: u64) -> Result<(), BenchError> {
            let mut rep = zeromq::RepSocket::new();
            rep.bind(endpoint).await.map_err(failed)?;
            println!("ready");
            for _ in 0..n {
                let m = rep.recv().await.map_err(failed)?;
                rep.send(m).await.map_err(failed)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_out_of_range_are_refused() {
        let too_many = BenchOptions {
            broadcast_peers: MAX_BROADCAST_PEERS + 1,
            ..BenchOptions::default()
        };
        assert!(matches!(too_many.check(), Err(BenchError::Options(_))));
        let none = BenchOptions {
            messages: 0,
            ..BenchOptions::default()
        };
        assert!(matches!(none.check(), Err(BenchError::Options(_))));
        assert!(BenchOptions::default().check().is_ok());
        assert_eq!(BenchOptions::default().broadcast_peers, 0);
    }

    #[test]
    fn receivers_share_one_time_line() {
        let a = Received::parse("result 3 2000 0 1000 3000").ok();
        let b = Received::parse("result 2 1000 1 2000 5000").ok();
        let idle = Received::parse("result 0 0 0 0 0").ok();
        let all: Vec<Received> = [a, b, idle].into_iter().flatten().collect();
        assert_eq!(all.len(), 3);
        let (rate, total) = Received::aggregate(&all);
        assert_eq!(total, 5);
        // 4 intervals over 4 µs.
        assert!((rate - 1e6).abs() < 1e-3, "{rate}");
        assert!(Received::parse("result 1 2").is_err());
    }

    #[test]
    fn the_run_future_can_be_spawned() {
        fn is_send<T: Send>(_: &T) {}
        let options = BenchOptions::default();
        let run = run(&options);
        is_send(&run);
    }
}
