//! The dead-peer benchmark (`cluster bench --dead-peer`): one node sends at full rate to
//! three peers, each a child process; one peer is killed (`SIGKILL`) at a sixth of the run,
//! another stopped (`SIGSTOP`) at a third. It measures what the two failures cost the
//! peer that stays healthy (deliveries per second in each phase), what the sender dropped
//! and why, and the sender's resident set size once per sample interval.
//!
//! The sender is node 1 in the benchmark's own process, as in [`crate::run_rss`]: its
//! memory is then the process's own (`/proc/<pid>/status` of this process), its counters
//! are read directly from its [`Server`](cluster_core::Server) at every phase boundary, and
//! the signals to the peers come from the process that owns them. What else the process
//! holds (one reader task per child, the samples) is a few kilobytes and does not grow
//! with the traffic. The sender uses the library as an application would: it hands every
//! message to the outbox (`send().await`, which waits for room up to `send_timeout` when
//! a connected peer's queue is full, then drops, counts and stalls that peer), lets the
//! runtime run other tasks every [`YIELD_EVERY`] messages, and leaves what a peer cannot
//! take to the library.

use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use cluster_core::{BROADCAST, DropCounts, DropReason, Envelope, MsgIds, Outbox, Pid, Stats};
use cluster_zmq::Backend;
use tokio::io::{BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio::task::JoinHandle;

use crate::child::{Job, Role, number, ready_node};
use crate::error::failed;
use crate::measure::{addresses, bench_config, node};
use crate::options::{compiled_in, not_compiled_in};
use crate::process::{expect_all, spawn_all};
use crate::rss::signal;
use crate::{BenchError, ChildCommand, PHASE_DEADLINE, RuntimeFlavor, Security};

/// Messages the sender hands to the outbox between two yields to the runtime.
pub const YIELD_EVERY: u64 = 64;

/// The longest run [`run_dead_peer`] accepts (the CLI's limit too).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(3600);

/// The peers' pids: the first is killed, the second stopped, the third stays healthy.
pub const DEAD_PEER_PIDS: [Pid; 3] = [2, 3, 4];

/// How the sender addresses its messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Fanout {
    /// Each message to one peer, the three in turn (dead ones included, as an application
    /// that has not noticed would).
    #[default]
    RoundRobin,
    /// Each message to every peer ([`BROADCAST`]): three copies.
    Broadcast,
}

impl Fanout {
    /// `round-robin` or `broadcast`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round-robin",
            Self::Broadcast => "broadcast",
        }
    }
}

impl fmt::Display for Fanout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the dead-peer benchmark runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadPeerOptions {
    /// The backend under test (compiled in).
    pub backend: Backend,
    /// The whole run: the first peer is killed at a sixth of it, the second stopped at a
    /// third.
    pub duration: Duration,
    /// Payload bytes per message.
    pub payload: usize,
    /// [`Options::peer_queue`](cluster_core::Options::peer_queue) of every node.
    pub peer_queue: usize,
    /// Round robin or broadcast.
    pub fanout: Fanout,
    /// What protects the frames.
    pub security: Security,
    /// The tokio runtime of the child processes (the caller builds the sender's).
    pub runtime: RuntimeFlavor,
}

impl Default for DeadPeerOptions {
    fn default() -> Self {
        Self {
            backend: Backend::default(),
            duration: Duration::from_secs(60),
            payload: 64,
            peer_queue: 16 * 1024,
            fanout: Fanout::default(),
            security: Security::None,
            runtime: RuntimeFlavor::default(),
        }
    }
}

impl DeadPeerOptions {
    /// When the first peer is killed: a sixth of the run.
    pub fn kill_at(&self) -> Duration {
        self.duration / 6
    }

    /// When the second peer is stopped: a third of the run.
    pub fn stop_at(&self) -> Duration {
        self.duration / 3
    }

    /// How often the peers report their counts and the sender's RSS is sampled: once a
    /// second, or a sixtieth of a run shorter than a minute (at least 100 ms), so that a
    /// short run still has samples in every phase.
    pub fn sample_interval(&self) -> Duration {
        (self.duration / 60).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}

/// What happens to a peer during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fate {
    /// Killed (`SIGKILL`) at [`DeadPeerOptions::kill_at`].
    Killed,
    /// Stopped (`SIGSTOP`) at [`DeadPeerOptions::stop_at`], continued and killed at the end.
    Stopped,
    /// Receives to the end.
    Healthy,
}

impl Fate {
    /// `killed`, `stopped` or `healthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Killed => "killed",
            Self::Stopped => "stopped",
            Self::Healthy => "healthy",
        }
    }
}

/// One phase of the run, in time since the sender started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    /// `before kill`, `killed, before stop`, `after stop`.
    pub name: &'static str,
    /// Its start.
    pub start: Duration,
    /// Its end.
    pub end: Duration,
}

impl Phase {
    fn seconds(&self) -> f64 {
        self.end.saturating_sub(self.start).as_secs_f64()
    }
}

/// What one peer received.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerFigures {
    /// Its node pid.
    pub pid: Pid,
    /// Its process id.
    pub process_id: u32,
    /// What was done to it.
    pub fate: Fate,
    /// Deliveries per second in each phase (from its counts, interpolated at the phase
    /// boundaries).
    pub rates: [f64; 3],
    /// The lowest rate between two consecutive reports that both fall within each phase
    /// (a sample interval apart): how deep a passing dip went. NaN where a phase holds
    /// fewer than two reports.
    pub slowest: [f64; 3],
    /// Messages it had received at its last report before the end.
    pub received: u64,
    /// Its reports: (time since the sender started, messages received so far).
    pub series: Vec<(Duration, u64)>,
}

/// What the dead-peer benchmark measured.
#[derive(Debug, Clone)]
pub struct DeadPeerReport {
    /// What ran.
    pub options: DeadPeerOptions,
    /// The three phases: before the kill, between the kill and the stop, after the stop.
    pub phases: [Phase; 3],
    /// The peers, in pid order.
    pub peers: Vec<PeerFigures>,
    /// Messages handed to the outbox (a broadcast counts once).
    pub sent: u64,
    /// The sender's counters at the end.
    pub stats: Stats,
    /// The sender's outgoing drops within each phase, by reason.
    pub phase_drops: [DropCounts; 3],
    /// The sender's RSS (bytes), sampled every [`DeadPeerOptions::sample_interval`]:
    /// (time since the sender started, bytes).
    pub rss: Vec<(Duration, u64)>,
}

impl DeadPeerReport {
    /// Deliveries per second to the peers that stay healthy, in each phase.
    pub fn healthy_rates(&self) -> [f64; 3] {
        let mut sum = [0.0; 3];
        for p in self.peers.iter().filter(|p| p.fate == Fate::Healthy) {
            for (s, r) in sum.iter_mut().zip(p.rates) {
                *s += r;
            }
        }
        sum
    }

    /// The lowest [`PeerFigures::slowest`] of the peers that stay healthy, in each phase.
    pub fn healthy_slowest(&self) -> [f64; 3] {
        let mut low = [f64::NAN; 3];
        for p in self.peers.iter().filter(|p| p.fate == Fate::Healthy) {
            for (l, r) in low.iter_mut().zip(p.slowest) {
                *l = l.min(r);
            }
        }
        low
    }

    /// The change of [`DeadPeerReport::healthy_slowest`] in `phase` against the mean rate
    /// of the first phase ([`DeadPeerReport::healthy_rates`]), in percent.
    pub fn slowest_change_percent(&self, phase: usize) -> f64 {
        match (
            self.healthy_rates().first(),
            self.healthy_slowest().get(phase),
        ) {
            (Some(&first), Some(&r)) if first > 0.0 => (r / first - 1.0) * 100.0,
            _ => f64::NAN,
        }
    }

    /// The change of [`DeadPeerReport::healthy_rates`] in `phase` against the first phase,
    /// in percent (negative: a drop); NaN when the first phase delivered nothing.
    pub fn change_percent(&self, phase: usize) -> f64 {
        let rates = self.healthy_rates();
        match (rates.first(), rates.get(phase)) {
            (Some(&first), Some(&r)) if first > 0.0 => (r / first - 1.0) * 100.0,
            _ => f64::NAN,
        }
    }

    /// Whether the healthy peers' throughput dropped by at most 10% after each failure.
    pub fn throughput_target_met(&self) -> bool {
        (1..3).all(|p| self.change_percent(p) >= -10.0)
    }

    /// The smallest and the largest RSS sample.
    pub fn rss_range(&self) -> (u64, u64) {
        let samples = || self.rss.iter().map(|&(_, b)| b);
        (samples().min().unwrap_or(0), samples().max().unwrap_or(0))
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
}

fn per_second(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M/s", x / 1e6)
    } else {
        format!("{:.1} k/s", x / 1e3)
    }
}

impl fmt::Display for DeadPeerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "cluster bench --dead-peer: backend {}, {}-byte payloads, {} to peers {:?} at full rate for {:?}; peer {} killed at {:?}, peer {} stopped at {:?}",
            o.backend,
            o.payload,
            o.fanout,
            DEAD_PEER_PIDS,
            o.duration,
            DEAD_PEER_PIDS[0],
            o.kill_at(),
            DEAD_PEER_PIDS[1],
            o.stop_at(),
        )?;
        let healthy = self.healthy_rates();
        for (i, phase) in self.phases.iter().enumerate() {
            write!(
                f,
                "{:<19} {:>6.1}–{:>6.1} s: healthy peer(s) {}",
                phase.name,
                phase.start.as_secs_f64(),
                phase.end.as_secs_f64(),
                per_second(healthy[i]),
            )?;
            if i > 0 {
                write!(f, " ({:+.1}%)", self.change_percent(i))?;
            }
            write!(
                f,
                ", slowest interval {} ({:+.1}% against the first phase's mean)",
                per_second(self.healthy_slowest()[i]),
                self.slowest_change_percent(i)
            )?;
            let each: Vec<String> = self
                .peers
                .iter()
                .map(|p| format!("{} {}", p.pid, per_second(p.rates[i])))
                .collect();
            writeln!(
                f,
                "; each peer: {}; dropped: {}",
                each.join(", "),
                self.phase_drops[i]
            )?;
        }
        writeln!(
            f,
            "target: healthy peers' throughput drops by at most 10% after each failure: {}",
            if self.throughput_target_met() {
                "met"
            } else {
                "MISSED"
            }
        )?;
        writeln!(
            f,
            "sender: {} messages to the outbox, {} copies sent, dropped {} (total {}), unconfirmed {}",
            self.sent,
            self.stats.sent,
            self.stats.dropped_outgoing,
            self.stats.dropped_outgoing.total(),
            self.stats.unconfirmed
        )?;
        let (min, max) = self.rss_range();
        write!(
            f,
            "sender RSS over {} samples: min {}, max {} (target: flat)",
            self.rss.len(),
            mib(min),
            mib(max)
        )
    }
}

/// `VmRSS` of process `pid`, in bytes (0 where unavailable).
fn vm_rss(pid: u32) -> u64 {
    crate::rss::process_status_bytes(&pid.to_string(), "VmRSS:")
}

/// Nanoseconds since the Unix epoch, now.
fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A peer's report: `count <wall_ns> <received so far>`.
fn tick_line(count: u64) -> String {
    format!("count {} {count}", wall_ns())
}

fn parse_tick(line: &str) -> Option<(u64, u64)> {
    let mut w = line.strip_prefix("count ")?.split(' ');
    let t = number(w.next()?).ok()?;
    let c = number(w.next()?).ok()?;
    Some((t, c))
}

/// A peer of the dead-peer benchmark, in a child process: node `pid`, counting what
/// arrives and printing [`tick_line`] every `interval`, until it is killed (or `limit`
/// has passed, or its stdout is closed).
pub(crate) async fn sink(
    backend: Backend,
    security: Security,
    pid: Pid,
    peer_queue: usize,
    interval: Duration,
    limit: Duration,
    addrs: &[String],
) -> Result<(), BenchError> {
    let mut server = ready_node(backend, security, pid, peer_queue, addrs).await?;
    let mut count = 0u64;
    let mut batch = Vec::with_capacity(256);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let receive = async {
        loop {
            tokio::select! {
                biased;
                _ = tick.tick() => {
                    let mut out = std::io::stdout().lock();
                    if writeln!(out, "{}", tick_line(count)).and_then(|()| out.flush()).is_err() {
                        break;
                    }
                }
                n = server.inbox().recv_many(&mut batch, 256) => {
                    if n == 0 {
                        break;
                    }
                    count += n as u64;
                    batch.clear();
                }
            }
        }
    };
    let _ = tokio::time::timeout(limit, receive).await;
    server.shutdown().await;
    Ok(())
}

/// Sends `text` at full rate until `stop` is set; returns how many messages it handed to
/// the outbox.
async fn send_at_full_rate(
    out: Outbox<String>,
    ids: MsgIds,
    fanout: Fanout,
    text: String,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut sent = 0u64;
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..YIELD_EVERY {
            let to = match fanout {
                Fanout::Broadcast => BROADCAST,
                Fanout::RoundRobin => {
                    turn = (turn + 1) % DEAD_PEER_PIDS.len();
                    DEAD_PEER_PIDS.get(turn).copied().unwrap_or(BROADCAST)
                }
            };
            if out
                .send(Envelope::new(to, ids.next(), text.clone()))
                .await
                .is_err()
            {
                return sent;
            }
            sent += 1;
        }
        // Never starve the runtime: the server's task, the transport and the timers share
        // it (one thread by default).
        tokio::task::yield_now().await;
    }
    sent
}

/// Samples `VmRSS` of this process every `interval` until `done`, on its own thread (the
/// runtime is busy sending).
fn sample_rss(
    started: Instant,
    interval: Duration,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Duration, u64)>> {
    let me = std::process::id();
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        let mut next = started;
        while !done.load(Ordering::Relaxed) {
            samples.push((started.elapsed(), vm_rss(me)));
            next += interval;
            while !done.load(Ordering::Relaxed) && Instant::now() < next {
                std::thread::sleep(
                    next.saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(50)),
                );
            }
        }
        samples
    })
}

/// Reads a child's reports until its stdout closes: (wall-clock ns, received so far).
fn read_ticks(mut lines: Lines<BufReader<ChildStdout>>) -> JoinHandle<Vec<(u64, u64)>> {
    tokio::spawn(async move {
        let mut ticks = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(t) = parse_tick(&line) {
                ticks.push(t);
            }
        }
        ticks
    })
}

/// The count of `series` (sorted by time, from (0, 0)) at `t`, linear between reports and
/// flat after the last.
fn count_at(series: &[(Duration, u64)], t: Duration) -> f64 {
    let mut prev = (Duration::ZERO, 0u64);
    for &(ts, c) in series {
        if ts >= t {
            let span = ts.saturating_sub(prev.0).as_secs_f64();
            if span <= 0.0 {
                return c as f64;
            }
            let part = t.saturating_sub(prev.0).as_secs_f64() / span;
            return prev.1 as f64 + part * (c as f64 - prev.1 as f64);
        }
        prev = (ts, c);
    }
    prev.1 as f64
}

fn rate_in(series: &[(Duration, u64)], phase: &Phase) -> f64 {
    let seconds = phase.seconds();
    if seconds <= 0.0 {
        return 0.0;
    }
    (count_at(series, phase.end) - count_at(series, phase.start)).max(0.0) / seconds
}

fn slowest_in(series: &[(Duration, u64)], phase: &Phase) -> f64 {
    series
        .windows(2)
        .filter_map(|w| match w {
            [(t0, c0), (t1, c1)] if *t0 >= phase.start && *t1 <= phase.end && t1 > t0 => {
                Some(c1.saturating_sub(*c0) as f64 / (*t1 - *t0).as_secs_f64())
            }
            _ => None,
        })
        .fold(f64::NAN, f64::min)
}

fn drops_between(before: &Stats, after: &Stats) -> DropCounts {
    let mut d = DropCounts::default();
    for r in DropReason::ALL {
        d.add(
            r,
            after
                .dropped_outgoing
                .get(r)
                .saturating_sub(before.dropped_outgoing.get(r)),
        );
    }
    d
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Kills `child` (`SIGKILL`) and reaps it, within a bound.
async fn kill(child: &mut Child) -> Result<(), BenchError> {
    let id = child.id();
    match tokio::time::timeout(Duration::from_secs(10), child.kill()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BenchError::Child(format!("cannot kill {id:?}: {e}"))),
        Err(_) => Err(BenchError::Child(format!(
            "{id:?} not gone 10 s after SIGKILL"
        ))),
    }
}

/// Runs the dead-peer benchmark (Linux: it reads `/proc/<pid>/status` and signals the
/// peers). The peers are child processes started with `child`, as for [`crate::run`]; call
/// it on the runtime the sender should run on.
pub async fn run_dead_peer(
    child: &ChildCommand,
    o: &DeadPeerOptions,
) -> Result<DeadPeerReport, BenchError> {
    if !compiled_in(o.backend) {
        return Err(not_compiled_in(o.backend));
    }
    if o.duration.is_zero() || o.duration > MAX_DURATION {
        return Err(failed(format!(
            "a dead-peer run of {:?}: it must be longer than zero and at most {MAX_DURATION:?}",
            o.duration
        )));
    }
    let addrs = addresses(DEAD_PEER_PIDS.len() + 1)?;
    let config = bench_config(&addrs, o.peer_queue, o.security)?;
    let interval = o.sample_interval();
    let mut children = spawn_all(
        child,
        DEAD_PEER_PIDS.map(|pid| Job {
            backend: o.backend,
            runtime: o.runtime,
            security: o.security,
            role: Role::DeadPeerSink {
                pid,
                peer_queue: o.peer_queue,
                interval_ms: u64::try_from(interval.as_millis()).unwrap_or(1000),
                limit_ms: u64::try_from((o.duration + PHASE_DEADLINE).as_millis())
                    .unwrap_or(u64::MAX),
                addresses: addrs.clone(),
            },
        }),
    )?;
    let server = node(o.backend, 1, &config).await?;
    server
        .wait_for_peers(PHASE_DEADLINE)
        .await
        .map_err(failed)?;
    expect_all(&mut children, "ready").await?;
    let (mut procs, readers): (Vec<Child>, Vec<_>) = children
        .into_iter()
        .map(|c| {
            let (child, lines) = c.into_parts();
            (child, read_ticks(lines))
        })
        .unzip();
    let process_ids: Vec<u32> = procs.iter().map(|c| c.id().unwrap_or(0)).collect();
    let [killed, stopped, _] = procs.as_mut_slice() else {
        return Err(failed("three peers expected"));
    };

    let stop = Arc::new(AtomicBool::new(false));
    // Should this future be dropped, the sender and the sampler stop too.
    let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
    let started = Instant::now();
    let started_wall = wall_ns();
    let rss = sample_rss(started, interval, Arc::clone(&stop));
    let mut snapshots = vec![server.stats()];
    let sender = tokio::spawn(send_at_full_rate(
        server.outbox(),
        server.msg_ids(),
        o.fanout,
        "x".repeat(o.payload),
        Arc::clone(&stop),
    ));
    let timeline = async {
        tokio::time::sleep_until((started + o.kill_at()).into()).await;
        kill(killed).await?;
        let killed_at = started.elapsed();
        snapshots.push(server.stats());
        tracing::info!("peer {} killed at {killed_at:?}", DEAD_PEER_PIDS[0]);
        tokio::time::sleep_until((started + o.stop_at()).into()).await;
        // A peer that has exited (reaped or not) is not stopped: the run is not what it
        // claims to measure. Its pid stays ours until it is reaped, below.
        let exited = stopped.try_wait().map_err(failed)?.is_some();
        let pid = stopped
            .id()
            .filter(|_| !exited)
            .ok_or_else(|| failed("the peer to stop had already exited"))?;
        signal(pid, "STOP")?;
        let stopped_at = started.elapsed();
        snapshots.push(server.stats());
        tracing::info!("peer {} stopped at {stopped_at:?}", DEAD_PEER_PIDS[1]);
        tokio::time::sleep_until((started + o.duration).into()).await;
        Ok::<_, BenchError>((killed_at, stopped_at))
    };
    let timeline = timeline.await;
    stop.store(true, Ordering::Relaxed);
    let ended_at = started.elapsed();
    let sent = tokio::time::timeout(PHASE_DEADLINE, sender).await;
    // Let every healthy peer report once more after the end.
    tokio::time::sleep(interval + Duration::from_millis(200)).await;
    snapshots.push(server.stats());
    let rss = rss.join().unwrap_or_default();
    let cutoff = started.elapsed();

    // Nothing is left behind: the stopped peer is continued, every peer killed and reaped.
    let healthy_exit = procs.get_mut(2).and_then(|c| c.try_wait().ok().flatten());
    let mut cleanup = Ok(());
    for (i, proc) in procs.iter_mut().enumerate() {
        if i == 1
            && let Some(id) = proc.id()
        {
            let _ = signal(id, "CONT");
        }
        if let Err(e) = kill(proc).await {
            cleanup = Err(e);
        }
    }
    let mut ticks = Vec::new();
    for reader in readers {
        let t = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .map_err(|_| BenchError::Child("a peer's output did not end".into()))?
            .map_err(failed)?;
        ticks.push(t);
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await;
    let (killed_at, stopped_at) = timeline?;
    cleanup?;
    let sent = sent
        .map_err(|_| failed("the sender did not stop"))?
        .map_err(failed)?;
    if let Some(status) = healthy_exit {
        return Err(BenchError::Child(format!(
            "the healthy peer exited during the run: {status}"
        )));
    }

    let phases = [
        Phase {
            name: "before kill",
            start: Duration::ZERO,
            end: killed_at,
        },
        Phase {
            name: "killed, before stop",
            start: killed_at,
            end: stopped_at,
        },
        Phase {
            name: "after stop",
            start: stopped_at,
            end: ended_at,
        },
    ];
    let cutoff_ns = started_wall.saturating_add(u64::try_from(cutoff.as_nanos()).unwrap_or(0));
    let peers = DEAD_PEER_PIDS
        .iter()
        .zip([Fate::Killed, Fate::Stopped, Fate::Healthy])
        .zip(process_ids)
        .zip(ticks)
        .map(|(((&pid, fate), process_id), ticks)| {
            let series: Vec<(Duration, u64)> = ticks
                .into_iter()
                .filter(|&(t, _)| t <= cutoff_ns)
                .map(|(t, c)| (Duration::from_nanos(t.saturating_sub(started_wall)), c))
                .collect();
            PeerFigures {
                pid,
                process_id,
                fate,
                rates: phases.map(|p| rate_in(&series, &p)),
                slowest: phases.map(|p| slowest_in(&series, &p)),
                received: series.last().map_or(0, |&(_, c)| c),
                series,
            }
        })
        .collect();
    let phase_drops = [0, 1, 2].map(|i| match (snapshots.get(i), snapshots.get(i + 1)) {
        (Some(a), Some(b)) => drops_between(a, b),
        _ => DropCounts::default(),
    });
    Ok(DeadPeerReport {
        options: o.clone(),
        phases,
        peers,
        sent,
        stats: snapshots.pop().unwrap_or_default(),
        phase_drops,
        rss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_interpolated_between_reports() {
        let s = |v: &[(u64, u64)]| -> Vec<(Duration, u64)> {
            v.iter()
                .map(|&(ms, c)| (Duration::from_millis(ms), c))
                .collect()
        };
        let series = s(&[(0, 0), (1000, 100), (2000, 300)]);
        assert!((count_at(&series, Duration::from_millis(500)) - 50.0).abs() < 1e-9);
        assert!((count_at(&series, Duration::from_millis(1500)) - 200.0).abs() < 1e-9);
        // Flat after the last report (a killed peer).
        assert!((count_at(&series, Duration::from_secs(9)) - 300.0).abs() < 1e-9);
        let phase = Phase {
            name: "p",
            start: Duration::from_millis(500),
            end: Duration::from_millis(1500),
        };
        assert!((rate_in(&series, &phase) - 150.0).abs() < 1e-9);
        let all = Phase {
            name: "all",
            start: Duration::ZERO,
            end: Duration::from_secs(2),
        };
        assert!((slowest_in(&series, &all) - 100.0).abs() < 1e-9);
        assert!(slowest_in(&series, &phase).is_nan());
    }

    #[test]
    fn a_tick_reads_back() {
        assert_eq!(parse_tick("count 17 42"), Some((17, 42)));
        assert!(parse_tick(&tick_line(5)).is_some_and(|(_, c)| c == 5));
        assert_eq!(parse_tick("ready"), None);
        assert_eq!(parse_tick("count x 1"), None);
    }

    #[test]
    fn the_timeline_scales_with_the_duration() {
        let o = DeadPeerOptions::default();
        assert_eq!(o.kill_at(), Duration::from_secs(10));
        assert_eq!(o.stop_at(), Duration::from_secs(20));
        assert_eq!(o.sample_interval(), Duration::from_secs(1));
        let short = DeadPeerOptions {
            duration: Duration::from_secs(3),
            ..o
        };
        assert_eq!(short.sample_interval(), Duration::from_millis(100));
    }
}
