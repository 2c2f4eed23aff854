//! The measurements, on the sending side: [`run`] and what it runs.

use std::time::{Duration, Instant};

use cluster_core::{BROADCAST, Config, Envelope, Options, Pid, Server};
use cluster_zmq::Backend;

use crate::child::{Job, Role};
use crate::error::failed;
use crate::process::{ChildProcess, expect_all, finish_all, spawn_all, while_alive};
use crate::received::Received;
use crate::{
    BenchError, BenchOptions, BenchReport, BroadcastFigures, ChildCommand, Figures, PHASE_DEADLINE,
    Progress, Security, bare, mem,
};

/// Messages the throughput sender hands over between two yields to the runtime.
const YIELD_EVERY: u64 = 64;
/// How often the end marker of a stream is repeated while a receiver has not reported.
const END_MARKER_EVERY: Duration = Duration::from_millis(20);
/// Round trips done before measuring.
pub(crate) const WARMUP: u64 = 1000;

/// Runs every measurement and returns the figures. Starts the other processes with
/// `child` (see the crate docs). Must be called inside a tokio runtime; dropping the
/// future kills the child processes.
pub async fn run(child: &ChildCommand, options: &BenchOptions) -> Result<BenchReport, BenchError> {
    run_with_progress(child, options, &mut |_| {}).await
}

/// [`run`], calling `progress` before each measurement.
pub async fn run_with_progress(
    child: &ChildCommand,
    options: &BenchOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<BenchReport, BenchError> {
    options.check()?;
    let bench = Bench { child, o: options };
    let rounds = options.rounds.max(1);
    let k = options.broadcast_peers;
    let per_round = 4 + if k > 0 { 2 } else { 0 } + if options.mem { 2 } else { 0 };
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
    let mut mems = Vec::new();
    // Alternate, so that a load change on the machine hits both sides alike.
    for round in 1..=rounds {
        announce(round, "bare throughput");
        let bare_tp = bench.bare_throughput().await?;
        announce(round, "cluster throughput");
        let cluster_tp = bench.cluster_throughput().await?;
        announce(round, "bare round trip");
        let bare_rtt = bench.bare_round_trips().await?;
        announce(round, "cluster round trip");
        let cluster_rtt = bench.cluster_round_trips().await?;
        bare.push(bare_rtt.figures(bare_tp));
        cluster.push(cluster_rtt.figures(cluster_tp));
        if k > 0 {
            announce(round, &format!("bare broadcast to {k} peers"));
            let b = bench.bare_broadcast().await?;
            announce(round, &format!("cluster broadcast to {k} peers"));
            let c = bench.cluster_broadcast().await?;
            broadcasts.push(BroadcastFigures {
                peers: k,
                bare: b.0,
                cluster: c.0,
                cluster_delivered: c.1,
                bare_delivered: b.1,
            });
        }
        if options.mem {
            announce(round, "in-memory throughput");
            let tp = mem::mem_throughput(options).await?;
            announce(round, "in-memory round trip");
            let rtt = mem::mem_round_trips(options).await?;
            mems.push(rtt.figures(tp));
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
        options: options.clone(),
        bare: median(&bare),
        cluster: median(&cluster),
        round_ratios,
        broadcast,
        mem: (!mems.is_empty()).then(|| median(&mems)),
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
        rtt_p90: mid(rounds.iter().map(|r| r.rtt_p90).collect()),
        rtt_p99: mid(rounds.iter().map(|r| r.rtt_p99).collect()),
        rtt_p999: mid(rounds.iter().map(|r| r.rtt_p999).collect()),
    }
}

/// Waits for `f` at most [`PHASE_DEADLINE`].
pub(crate) async fn within<T>(
    what: &str,
    f: impl Future<Output = Result<T, BenchError>>,
) -> Result<T, BenchError> {
    tokio::time::timeout(PHASE_DEADLINE, f)
        .await
        .map_err(|_| failed(format!("{what}: not done within {PHASE_DEADLINE:?}")))?
}

/// A round-trip distribution: percentiles of one run's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rtt {
    pub(crate) p50: Duration,
    pub(crate) p90: Duration,
    pub(crate) p99: Duration,
    pub(crate) p999: Duration,
}

impl Rtt {
    /// One round's figures: this distribution beside `(throughput, delivered)`.
    pub(crate) fn figures(self, (throughput, delivered): (f64, u64)) -> Figures {
        Figures {
            throughput,
            delivered,
            rtt_p50: self.p50,
            rtt_p90: self.p90,
            rtt_p99: self.p99,
            rtt_p999: self.p999,
        }
    }
}

/// The sample at rank `round((n - 1) × q)` of the sorted samples, for q = 0.5, 0.9, 0.99
/// and 0.999. Of 10,000 samples, p999 is the one at index 9989: 10 samples lie above it.
pub(crate) fn percentiles(mut samples: Vec<Duration>) -> Rtt {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).copied().unwrap_or_default()
    };
    Rtt {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
    }
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

pub(crate) fn addresses(n: usize) -> Result<Vec<String>, BenchError> {
    Ok(free_ports(n)?
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect())
}

pub(crate) fn payload_text(payload: usize) -> String {
    "x".repeat(payload)
}

/// Nodes 1, 2, … at `addresses`, in that order.
pub(crate) fn bench_config<A: AsRef<str>>(
    addresses: &[A],
    peer_queue: usize,
    security: Security,
) -> Result<Config, BenchError> {
    let options = Options {
        peer_queue,
        encrypt: security.encrypt(),
        mac: security.mac(),
        ..Options::default()
    };
    Ok(
        Config::from_peers((1..).zip(addresses.iter().map(AsRef::as_ref)), options)
            .map_err(failed)?
            .with_cluster_key(security.key()),
    )
}

/// Node `pid` of `config` over the transport of `backend`.
pub(crate) async fn node(
    backend: Backend,
    pid: Pid,
    config: &Config,
) -> Result<Server<String>, BenchError> {
    let transport = cluster_zmq::bind_with(backend, pid, config)
        .await
        .map_err(failed)?;
    // Every measurement is a new cluster on new ports whose nodes never restart, so their
    // first incarnation is the only one: no catalog (nor the clock) is needed to number it.
    Server::<String>::builder(pid, config.clone())
        .incarnation(1)
        .build(transport)
        .map_err(failed)
}

/// One run: how to start a child, and what to measure.
struct Bench<'a> {
    child: &'a ChildCommand,
    o: &'a BenchOptions,
}

impl Bench<'_> {
    fn job(&self, role: Role) -> Job {
        Job {
            backend: self.o.backend,
            runtime: self.o.runtime,
            security: self.o.security,
            role,
        }
    }

    fn spawn(&self, role: Role) -> Result<ChildProcess, BenchError> {
        ChildProcess::spawn(self.child, &self.job(role))
    }

    /// The bare stream: one child PULL per endpoint, every message pushed to each of them.
    async fn bare_stream(&self, endpoints: &[String]) -> Result<Vec<Received>, BenchError> {
        let o = self.o;
        let mut children = spawn_all(
            self.child,
            endpoints.iter().map(|endpoint| {
                self.job(Role::BarePull {
                    endpoint: endpoint.clone(),
                    messages: o.messages,
                })
            }),
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

    async fn bare_throughput(&self) -> Result<(f64, u64), BenchError> {
        let received = self.bare_stream(&tcp_endpoints(1)?).await?;
        Ok(Received::aggregate(&received))
    }

    async fn bare_broadcast(&self) -> Result<(f64, u64), BenchError> {
        let received = self
            .bare_stream(&tcp_endpoints(self.o.broadcast_peers)?)
            .await?;
        Ok(Received::aggregate(&received))
    }

    async fn bare_round_trips(&self) -> Result<Rtt, BenchError> {
        let o = self.o;
        let endpoints = tcp_endpoints(1)?;
        let endpoint = endpoints.first().ok_or_else(|| failed("no free port"))?;
        let total = WARMUP + o.round_trips;
        let mut child = self.spawn(Role::BareRep {
            endpoint: endpoint.clone(),
            requests: total,
        })?;
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

    /// The cluster stream: node 1 here, one receiving node per child (pids 2, 3, …), node 1
    /// sending every message to `to` (node 2, or everyone).
    async fn cluster_stream(&self, receivers: usize, to: Pid) -> Result<Vec<Received>, BenchError> {
        let o = self.o;
        let addrs = addresses(receivers + 1)?;
        let config = bench_config(&addrs, o.peer_queue, o.security)?;
        let mut children = spawn_all(
            self.child,
            (2..=receivers + 1)
                .map(|pid| {
                    Ok(self.job(Role::ClusterRecv {
                        pid: Pid::try_from(pid).map_err(failed)?,
                        peer_queue: o.peer_queue,
                        addresses: addrs.clone(),
                    }))
                })
                .collect::<Result<Vec<_>, BenchError>>()?,
        )?;
        let server = node(o.backend, 1, &config).await?;
        server
            .wait_for_peers(PHASE_DEADLINE)
            .await
            .map_err(failed)?;
        expect_all(&mut children, "ready").await?;
        let out = server.outbox();
        let text = payload_text(o.payload);
        // A send to a peer whose queue is full waits for room (up to `send_timeout`), as a
        // bare PUSH blocks at its high-water mark: no pacing needed, nothing dropped.
        for i in 0..o.messages {
            out.send(Envelope::new(to, i as i64, text.clone()))
                .await
                .map_err(failed)?;
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                // The server's task and the transport share this runtime.
                tokio::task::yield_now().await;
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

    async fn cluster_throughput(&self) -> Result<(f64, u64), BenchError> {
        let received = self.cluster_stream(1, 2).await?;
        let one = received.first().ok_or_else(|| failed("no receiver"))?;
        Ok(one.rate())
    }

    async fn cluster_broadcast(&self) -> Result<(f64, u64), BenchError> {
        let received = self
            .cluster_stream(self.o.broadcast_peers, BROADCAST)
            .await?;
        Ok(Received::aggregate(&received))
    }

    async fn cluster_round_trips(&self) -> Result<Rtt, BenchError> {
        let o = self.o;
        let addrs = addresses(2)?;
        let config = bench_config(&addrs, o.peer_queue, o.security)?;
        let mut child = self.spawn(Role::ClusterEcho {
            pid: 2,
            peer_queue: o.peer_queue,
            addresses: addrs.clone(),
        })?;
        let mut server = node(o.backend, 1, &config).await?;
        server
            .wait_for_peers(PHASE_DEADLINE)
            .await
            .map_err(failed)?;
        child.expect("ready").await?;
        let out = server.outbox();
        let text = payload_text(o.payload);
        let total = WARMUP + o.round_trips;
        let round_trips = timed_round_trips(&mut server, total, &text, "round trip");
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
}

/// Sends `total` messages of `text` to node 2 one at a time, each after the echo of the one
/// before has come back to `server` (envelopes with other ids are skipped), and returns
/// the time of each round trip. Each wait is bounded ([`PHASE_DEADLINE`]); `what` names
/// the measurement in the error.
pub(crate) async fn timed_round_trips(
    server: &mut Server<String>,
    total: u64,
    text: &str,
    what: &str,
) -> Result<Vec<Duration>, BenchError> {
    let out = server.outbox();
    let mut samples = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for i in 0..total {
        let t = Instant::now();
        out.send(Envelope::new(2, i as i64, text.to_owned()))
            .await
            .map_err(failed)?;
        loop {
            let env = tokio::time::timeout(PHASE_DEADLINE, server.inbox().recv())
                .await
                .map_err(|_| failed(format!("{what} timed out")))?
                .ok_or_else(|| failed("inbox closed"))?;
            if env.msg_id == i as i64 {
                break;
            }
        }
        samples.push(t.elapsed());
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_BROADCAST_PEERS;

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
    fn a_backend_not_compiled_in_is_refused_by_feature() {
        for backend in Backend::ALL {
            let options = BenchOptions {
                backend,
                ..BenchOptions::default()
            };
            match options.check() {
                Ok(()) => assert!(crate::options::compiled_in(backend)),
                Err(e) => assert!(
                    e.to_string().contains(&format!("--features {backend}")),
                    "{e}"
                ),
            }
        }
    }

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(mid(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(mid(Vec::<u64>::new()), 0);
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let rtt = percentiles(samples);
        assert_eq!(
            (rtt.p50, rtt.p90, rtt.p99, rtt.p999),
            (
                Duration::from_micros(51),
                Duration::from_micros(90),
                Duration::from_micros(99),
                Duration::from_micros(100)
            )
        );
        // With the default 10,000 round trips, p999 has 10 samples above it.
        let samples: Vec<Duration> = (1..=10_000).map(Duration::from_micros).collect();
        let rtt = percentiles(samples);
        assert_eq!(rtt.p999, Duration::from_micros(9990));
        assert!(rtt.p50 <= rtt.p90 && rtt.p90 <= rtt.p99 && rtt.p99 <= rtt.p999);
    }

    #[test]
    fn the_run_future_can_be_spawned() {
        fn is_send<T: Send>(_: &T) {}
        let child = ChildCommand::new("cluster", ["bench-child"]);
        let options = BenchOptions::default();
        let run = run(&child, &options);
        is_send(&run);
    }
}
