//! Benchmarks of the backend in use against the bare library, in one run, between two
//! processes on loopback:
//!
//! * **throughput** — one node streams `messages` messages of a `payload`-byte string to a
//!   node in a child process; the bare baseline is a PUSH → PULL of the same crate, with
//!   the same number of `payload`-byte messages;
//! * **round trip** — one message to the child and back, `round_trips` times, one at a
//!   time; the bare baseline is a REQ → REP of the same crate. p50 and p99.
//!
//! Rates are measured at the receiver, from its first message to its last. Cluster
//! throughput counts delivered messages only (shown beside it). A transport never blocks on
//! a peer, so the sending side does its own flow control, as an application would: every
//! 64 messages it lets the server's task run and looks at its `backpressure` drop count;
//! while it keeps growing the sender pauses, 20 µs doubling up to 2 ms, and relaxes when it
//! stops growing.
//! The child process runs a current-thread tokio runtime; [`run`] uses the caller's.
//!
//! The second process is the current executable, started again with the environment
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
//! Run it with `cargo run --release -p cluster-zmq --example bench` (libzmq) or
//! `cargo run --release -p cluster-zmq --no-default-features --features zeromq --example bench`.

use std::fmt;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use cluster_core::{Config, DropReason, Envelope, Options, Pid, Server};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The environment variable that makes [`child_main`] run a benchmark role.
pub const CHILD_ENV: &str = "CLUSTER_ZMQ_BENCH_CHILD";

/// Longest a benchmark phase may take before it is abandoned.
const PHASE_DEADLINE: Duration = Duration::from_secs(120);
/// Messages between two looks at the backpressure counter, in the throughput run.
const PACING_EVERY: u64 = 64;
/// How long the throughput sender pauses when its peer's queue overflowed.
const PACING_PAUSE: Duration = Duration::from_micros(20);
/// The longest such pause.
const PACING_PAUSE_MAX: Duration = Duration::from_millis(2);
/// Round trips done before measuring.
const WARMUP: u64 = 1000;

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOptions {
    /// Messages per throughput run.
    pub messages: u64,
    /// Measured round trips per latency run.
    pub round_trips: u64,
    /// Payload bytes per message.
    pub payload: usize,
    /// Measurements of each kind, alternating bare and cluster; the report gives medians.
    pub rounds: usize,
    /// [`Options::peer_queue`] of both nodes (the libzmq high-water marks).
    pub peer_queue: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            messages: 1_000_000,
            round_trips: 10_000,
            payload: 64,
            rounds: 5,
            peer_queue: 16 * 1024,
        }
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
        Ok(())
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
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Child(e) => write!(f, "benchmark child process: {e}"),
            Self::Failed(e) => write!(f, "benchmark: {e}"),
        }
    }
}

impl std::error::Error for BenchError {}

fn failed(e: impl fmt::Display) -> BenchError {
    BenchError::Failed(e.to_string())
}

/// Runs every measurement and returns the figures. Spawns the current executable as the
/// second process (see the module docs). Must be called inside a tokio runtime.
pub async fn run(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    let mut bare = Vec::new();
    let mut cluster = Vec::new();
    // Alternate, so that a load change on the machine hits both sides alike.
    for _ in 0..options.rounds.max(1) {
        let bare_tp = bare_throughput(options).await?;
        let cluster_tp = cluster_throughput(options).await?;
        let bare_rtt = bare_round_trips(options).await?;
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
    Ok(BenchReport {
        backend: crate::BACKEND,
        options: options.clone(),
        bare: median(&bare),
        cluster: median(&cluster),
        round_ratios,
    })
}

/// The median of each figure separately.
fn median(rounds: &[Figures]) -> Figures {
    fn mid<T: Copy + PartialOrd + Default>(mut v: Vec<T>) -> T {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v.get(v.len() / 2).copied().unwrap_or_default()
    }
    Figures {
        throughput: mid(rounds.iter().map(|r| r.throughput).collect()),
        delivered: mid(rounds.iter().map(|r| r.delivered).collect()),
        rtt_p50: mid(rounds.iter().map(|r| r.rtt_p50).collect()),
        rtt_p99: mid(rounds.iter().map(|r| r.rtt_p99).collect()),
    }
}

/// If this process was started by [`run`] as its second process, plays that role and
/// returns the exit code; otherwise returns `None` at once.
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
        match words.as_slice() {
            ["bare-pull", endpoint, n] => bare::pull(endpoint, parse(n)?).await,
            ["bare-rep", endpoint, n] => bare::rep(endpoint, parse(n)?).await,
            ["cluster-recv", a, b, queue] => cluster_recv(a, b, parse(queue)?).await,
            ["cluster-echo", a, b, queue] => cluster_echo(a, b, parse(queue)?).await,
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

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, BenchError> {
    s.parse()
        .map_err(|_| BenchError::Child(format!("not a number: {s}")))
}

/// The second process, killed when dropped.
struct ChildProcess {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ChildProcess {
    fn spawn(role: &str) -> Result<Self, BenchError> {
        let exe = std::env::current_exe().map_err(|e| BenchError::Child(e.to_string()))?;
        let mut child = Command::new(exe)
            .env(CHILD_ENV, role)
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

    /// The next line starting with `prefix`, within the phase deadline.
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

/// `result <count> <elapsed_ns>` → (msg/s, count).
fn rate(line: &str) -> Result<(f64, u64), BenchError> {
    let mut w = line.split(' ').skip(1);
    let count: u64 = parse(w.next().unwrap_or(""))?;
    let ns: u64 = parse(w.next().unwrap_or(""))?;
    let secs = (ns as f64 / 1e9).max(1e-9);
    Ok((count.saturating_sub(1) as f64 / secs, count))
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).copied().unwrap_or_default()
    };
    (at(0.50), at(0.99))
}

fn free_port() -> Result<u16, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(failed)?;
    Ok(l.local_addr().map_err(failed)?.port())
}

fn payload_text(payload: usize) -> String {
    "x".repeat(payload)
}

async fn bare_throughput(o: &BenchOptions) -> Result<(f64, u64), BenchError> {
    let endpoint = format!("tcp://127.0.0.1:{}", free_port()?);
    let mut child = ChildProcess::spawn(&format!("bare-pull {endpoint} {}", o.messages))?;
    child.expect("ready").await?;
    bare::push(&endpoint, o.messages, o.payload).await?;
    let line = child.expect("result").await?;
    child.finish().await;
    rate(&line)
}

async fn bare_round_trips(o: &BenchOptions) -> Result<(Duration, Duration), BenchError> {
    let endpoint = format!("tcp://127.0.0.1:{}", free_port()?);
    let total = WARMUP + o.round_trips;
    let mut child = ChildProcess::spawn(&format!("bare-rep {endpoint} {total}"))?;
    child.expect("ready").await?;
    let samples = bare::req(&endpoint, total, o.payload).await?;
    child.finish().await;
    Ok(percentiles(
        samples.into_iter().skip(WARMUP as usize).collect(),
    ))
}

fn bench_config(a: &str, b: &str, peer_queue: usize) -> Result<Config, BenchError> {
    let options = Options {
        peer_queue,
        ..Options::default()
    };
    Config::from_peers([(1, a), (2, b)], options).map_err(failed)
}

async fn node(pid: Pid, config: &Config) -> Result<Server<String>, BenchError> {
    let transport = crate::bind(pid, config).await.map_err(failed)?;
    Server::with_transport(pid, config.clone(), transport).map_err(failed)
}

async fn cluster_throughput(o: &BenchOptions) -> Result<(f64, u64), BenchError> {
    let (a, b) = (
        format!("127.0.0.1:{}", free_port()?),
        format!("127.0.0.1:{}", free_port()?),
    );
    let config = bench_config(&a, &b, o.peer_queue)?;
    let mut child = ChildProcess::spawn(&format!("cluster-recv {a} {b} {}", o.peer_queue))?;
    let server = node(1, &config).await?;
    server
        .wait_for_peers(PHASE_DEADLINE)
        .await
        .map_err(failed)?;
    child.expect("ready").await?;
    let out = server.outbox();
    let text = payload_text(o.payload);
    // A transport never blocks on a peer (where a bare PUSH blocks at its high-water mark),
    // so flow control is the application's: back off for a moment whenever the peer's queue
    // overflowed, instead of burning the CPU the receiver needs on messages that are dropped.
    let mut overflowed = 0;
    let mut pause = Duration::ZERO;
    for i in 0..o.messages {
        out.send(Envelope::new(2, i as i64, text.clone()))
            .await
            .map_err(failed)?;
        if i % PACING_EVERY == PACING_EVERY - 1 {
            // Let the server's task route what is in the outbox before looking.
            tokio::task::yield_now().await;
            let now = server
                .stats()
                .dropped_outgoing
                .get(DropReason::Backpressure);
            // Back off exponentially while the queue keeps overflowing, relax when it stops.
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
    // The end marker may itself meet a full queue: repeat it until the child reports.
    let mut result = Box::pin(child.expect("result"));
    let line = loop {
        out.send(Envelope::new(2, -1, String::new()))
            .await
            .map_err(failed)?;
        tokio::select! {
            line = &mut result => break line?,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    drop(result);
    let dropped_here = server.stats().dropped_outgoing;
    server.shutdown().await;
    child.finish().await;
    let dropped_there: u64 = line
        .split(' ')
        .nth(3)
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    tracing::info!(
        "cluster throughput run: dropped by the sender: {dropped_here}; by the receiver: {dropped_there}"
    );
    rate(&line)
}

async fn cluster_round_trips(o: &BenchOptions) -> Result<(Duration, Duration), BenchError> {
    let (a, b) = (
        format!("127.0.0.1:{}", free_port()?),
        format!("127.0.0.1:{}", free_port()?),
    );
    let config = bench_config(&a, &b, o.peer_queue)?;
    let mut child = ChildProcess::spawn(&format!("cluster-echo {a} {b} {}", o.peer_queue))?;
    let mut server = node(1, &config).await?;
    server
        .wait_for_peers(PHASE_DEADLINE)
        .await
        .map_err(failed)?;
    child.expect("ready").await?;
    let out = server.outbox();
    let text = payload_text(o.payload);
    let total = WARMUP + o.round_trips;
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
    out.send(Envelope::new(2, -1, String::new()))
        .await
        .map_err(failed)?;
    server.shutdown().await;
    child.finish().await;
    Ok(percentiles(
        samples.into_iter().skip(WARMUP as usize).collect(),
    ))
}

/// Child: node 2, counting until the end marker (msg id -1).
async fn cluster_recv(a: &str, b: &str, peer_queue: usize) -> Result<(), BenchError> {
    let config = bench_config(a, b, peer_queue)?;
    let mut server = node(2, &config).await?;
    server
        .wait_for_peers(PHASE_DEADLINE)
        .await
        .map_err(failed)?;
    println!("ready");
    let mut count = 0u64;
    let mut first = None;
    let mut last = Instant::now();
    while let Some(env) = server.inbox().recv().await {
        if env.msg_id < 0 {
            break;
        }
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        count += 1;
    }
    let elapsed = first.map_or(Duration::ZERO, |f| last.duration_since(f));
    let dropped = server.stats().dropped_incoming.total();
    println!("result {count} {} {dropped}", elapsed.as_nanos());
    server.shutdown().await;
    Ok(())
}

/// Child: node 2, echoing every message to node 1 until the end marker.
async fn cluster_echo(a: &str, b: &str, peer_queue: usize) -> Result<(), BenchError> {
    let config = bench_config(a, b, peer_queue)?;
    let mut server = node(2, &config).await?;
    server
        .wait_for_peers(PHASE_DEADLINE)
        .await
        .map_err(failed)?;
    println!("ready");
    let out = server.outbox();
    while let Some(env) = server.inbox().recv().await {
        if env.msg_id < 0 {
            break;
        }
        out.send(Envelope::new(1, env.msg_id, env.msg))
            .await
            .map_err(failed)?;
    }
    server.shutdown().await;
    Ok(())
}

/// The bare library, no cluster code.
#[cfg(feature = "libzmq")]
mod bare {
    use std::time::{Duration, Instant};

    use super::{BenchError, failed};

    pub(super) async fn push(endpoint: &str, n: u64, payload: usize) -> Result<(), BenchError> {
        let endpoint = endpoint.to_owned();
        blocking(move || {
            let ctx = zmq::Context::new();
            let push = ctx.socket(zmq::PUSH).map_err(failed)?;
            push.set_linger(5000).map_err(failed)?;
            push.connect(&endpoint).map_err(failed)?;
            let body = vec![b'x'; payload];
            for _ in 0..n {
                push.send(&body[..], 0).map_err(failed)?;
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn pull(endpoint: &str, n: u64) -> Result<(), BenchError> {
        let endpoint = endpoint.to_owned();
        blocking(move || {
            let ctx = zmq::Context::new();
            let pull = ctx.socket(zmq::PULL).map_err(failed)?;
            pull.bind(&endpoint).map_err(failed)?;
            println!("ready");
            let mut msg = zmq::Message::new();
            pull.recv(&mut msg, 0).map_err(failed)?;
            let first = Instant::now();
            for _ in 1..n {
                pull.recv(&mut msg, 0).map_err(failed)?;
            }
            println!("result {n} {}", first.elapsed().as_nanos());
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
        blocking(move || {
            let ctx = zmq::Context::new();
            let req = ctx.socket(zmq::REQ).map_err(failed)?;
            req.set_linger(0).map_err(failed)?;
            req.connect(&endpoint).map_err(failed)?;
            let body = vec![b'x'; payload];
            let mut msg = zmq::Message::new();
            let mut samples = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let t = Instant::now();
                req.send(&body[..], 0).map_err(failed)?;
                req.recv(&mut msg, 0).map_err(failed)?;
                samples.push(t.elapsed());
            }
            Ok(samples)
        })
        .await
    }

    pub(super) async fn rep(endpoint: &str, n: u64) -> Result<(), BenchError> {
        let endpoint = endpoint.to_owned();
        blocking(move || {
            let ctx = zmq::Context::new();
            let rep = ctx.socket(zmq::REP).map_err(failed)?;
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

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, BenchError> + Send + 'static,
    ) -> Result<T, BenchError> {
        tokio::task::spawn_blocking(f).await.map_err(failed)?
    }
}

/// The bare library, no cluster code.
#[cfg(all(feature = "zeromq", not(feature = "libzmq")))]
mod bare {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

    use super::{BenchError, failed};

    pub(super) async fn push(endpoint: &str, n: u64, payload: usize) -> Result<(), BenchError> {
        let mut push = zeromq::PushSocket::new();
        push.connect(endpoint).await.map_err(failed)?;
        let body = Bytes::from(vec![b'x'; payload]);
        for _ in 0..n {
            push.send(ZmqMessage::from(body.clone()))
                .await
                .map_err(failed)?;
        }
        // Let the writer drain before the socket goes: the child reports when it has all.
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
        println!("result {n} {}", first.elapsed().as_nanos());
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
