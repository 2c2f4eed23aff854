//! Fixtures for tests on real sockets and real processes, written once: loopback ports that
//! no other socket is handed meanwhile, quick options, configs on loopback (bound with a
//! retry when a port was taken anyway), waiting on a condition with a generous deadline, a
//! shaping TCP relay ([`Relay`]: latency, jitter, bandwidth, silent cuts and stalls), and
//! child processes driven line by line that die with the test ([`Process`]).
//! The test suites of `cluster-zmq`, `cluster-catalog` and the `cluster` command use these.
//!
//! # Ports
//!
//! A config names every node's port before any node binds it, so ports are chosen first
//! and bound later. Choosing by binding port 0 and releasing it races: the kernel hands the
//! same ephemeral port to the next `bind(0)` or outgoing connection of any process (the
//! peers' own connections included) until the node binds it. So ports are drawn at random
//! *below* the kernel's ephemeral range, where the kernel never hands one out by itself, and
//! each is checked (bound) before it is returned; [`ReservedPorts`] keeps them bound until
//! the node that owns one is about to bind it; [`bind_local`] binds a whole cluster and, if
//! a port was taken anyway (by another test drawing the same number), starts over with
//! fresh ports.

mod process;
mod relay;

use std::net::TcpListener;
use std::time::{Duration, Instant};

pub use process::{Finished, Process, ProcessError};
pub use relay::{Mode, Relay, RelayStats, Shape};

use cluster_core::{
    Config, ConfigError, Envelope, Inbox, Options, Pid, ServerMonitor, TransportError,
};
use rand::Rng;

/// How long a test waits for a condition on real sockets before it fails. Generous: loaded
/// CI machines are slow, and tests wait on conditions, never on this.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Lowest port handed out: well above the well-known and usual service ports.
const LOWEST_PORT: u16 = 10_000;

/// The kernel's ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range` on Linux;
/// elsewhere, or if unreadable, the union of Linux's and IANA's defaults).
fn ephemeral_range() -> (u16, u16) {
    let read = || -> Option<(u16, u16)> {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
        let mut it = text.split_whitespace().map(|w| w.parse::<u16>().ok());
        Some((it.next()??, it.next()??))
    };
    read().unwrap_or((32_768, 65_535))
}

/// Ports on 127.0.0.1, held (bound, not listening for anyone) until released: see the
/// module docs. Dropping it releases those still held.
#[derive(Debug)]
pub struct ReservedPorts {
    held: Vec<(u16, Option<TcpListener>)>,
}

impl ReservedPorts {
    /// `n` distinct free ports outside the ephemeral range, each held by a bound socket.
    pub fn new(n: usize) -> std::io::Result<Self> {
        let (low, high) = ephemeral_range();
        let mut held: Vec<(u16, Option<TcpListener>)> = Vec::with_capacity(n);
        // Below the ephemeral range if it leaves room, else above it, else (a kernel that
        // hands out nearly every port) port 0.
        let range = if low > LOWEST_PORT + 1_000 {
            Some(LOWEST_PORT..low)
        } else if high < 64_000 {
            Some(high + 1..u16::MAX)
        } else {
            None
        };
        let mut rng = rand::rng();
        let mut tries = 0;
        while held.len() < n {
            tries += 1;
            let port = match &range {
                Some(r) if tries <= 100 * (n + 10) => rng.random_range(r.clone()),
                _ => 0,
            };
            let listener = match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => l,
                // Taken: draw another.
                Err(_) if port != 0 => continue,
                Err(e) => return Err(e),
            };
            let port = listener.local_addr()?.port();
            held.push((port, Some(listener)));
        }
        Ok(Self { held })
    }

    /// The ports, in the order they were drawn.
    pub fn ports(&self) -> Vec<u16> {
        self.held.iter().map(|(p, _)| *p).collect()
    }

    /// Lets go of `port`, for its node to bind it right away. `false` if it was not held.
    pub fn release(&mut self, port: u16) -> bool {
        self.held
            .iter_mut()
            .find(|(p, _)| *p == port)
            .and_then(|(_, l)| l.take())
            .is_some()
    }

    /// Lets go of every port.
    pub fn release_all(&mut self) {
        for (_, l) in &mut self.held {
            l.take();
        }
    }
}

/// `n` distinct free TCP ports on 127.0.0.1, outside the kernel's ephemeral range (see the
/// module docs), released for the caller to bind. Prefer [`bind_local`] (retries) or
/// [`ReservedPorts`] (held until used).
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    Ok(ReservedPorts::new(n)?.ports())
}

/// Options for tests on real sockets: heartbeats every 100 ms and a 600 ms timeout, so that
/// a silent cut is noticed in well under a second; a short linger.
pub fn fast_options() -> Options {
    Options {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(600),
        linger: Duration::from_millis(200),
        ..Options::default()
    }
}

/// Pids `1..=ports.len()` on the given loopback ports, with `options`.
pub fn config_on(ports: &[u16], options: Options) -> Result<Config, ConfigError> {
    let peers = ports
        .iter()
        .zip(1..)
        .map(|(port, pid): (&u16, Pid)| (pid, format!("127.0.0.1:{port}")));
    Config::from_peers(peers, options)
}

/// Pids `1..=n` on free loopback ports, with `options`. The ports are not held: bind them
/// soon, or use [`bind_local`].
pub fn local_config(n: usize, options: Options) -> Result<Config, LocalConfigError> {
    Ok(config_on(&free_ports(n)?, options)?)
}

/// How many sets of ports [`bind_local`] tries.
pub const BIND_ATTEMPTS: usize = 10;

/// Pids `1..=n` on free loopback ports with `options`, and whatever `bind` builds on that
/// config: it binds the nodes that start now and returns them. If it fails with
/// [`TransportError::Bind`] (a port was taken between the draw and the bind), everything
/// it bound is dropped and it is called again on a config with fresh ports, up to
/// [`BIND_ATTEMPTS`] times. Nodes bound later (a restart) bind their port again: outside
/// the ephemeral range nobody else is handed it meanwhile.
///
/// ```
/// use cluster_testkit::net;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), net::LocalConfigError> {
/// let (config, listeners) = net::bind_local(2, net::fast_options(), async |config| {
///     let bind = |pid| {
///         let address = config.peer(pid).map(|p| p.address.clone()).unwrap_or_default();
///         std::net::TcpListener::bind(&address).map_err(|e| {
///             cluster_core::TransportError::Bind { address, reason: e.to_string() }
///         })
///     };
///     Ok((bind(1)?, bind(2)?))
/// })
/// .await?;
/// assert_eq!(config.pids().count(), 2);
/// # drop(listeners);
/// # Ok(()) }
/// ```
pub async fn bind_local<T>(
    n: usize,
    options: Options,
    mut bind: impl AsyncFnMut(&Config) -> Result<T, TransportError>,
) -> Result<(Config, T), LocalConfigError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut ports = ReservedPorts::new(n)?;
        let config = config_on(&ports.ports(), options.clone())?;
        ports.release_all();
        match bind(&config).await {
            Ok(bound) => return Ok((config, bound)),
            Err(TransportError::Bind { .. }) if attempt < BIND_ATTEMPTS => {}
            Err(e) => return Err(LocalConfigError::Bind(e)),
        }
    }
}

/// [`local_config`] or [`bind_local`] could not find ports, build the config, or bind.
#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    /// No free port could be bound on 127.0.0.1.
    #[error("no free loopback port: {0}")]
    Ports(#[from] std::io::Error),
    /// The config was refused (the options are out of range).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Binding failed for another reason than a port in use, or every attempt found one
    /// taken.
    #[error(transparent)]
    Bind(TransportError),
}

/// A condition did not hold within its deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}")]
pub struct TimedOut {
    /// What was awaited, as the caller named it.
    pub what: String,
    /// How long it waited.
    pub waited: Duration,
}

/// A wait that started now and gives up after `deadline`.
struct Waiting<'a> {
    what: &'a str,
    start: Instant,
    deadline: Duration,
}

impl<'a> Waiting<'a> {
    /// How often a condition is polled.
    const POLL: Duration = Duration::from_millis(10);

    fn new(what: &'a str, deadline: Duration) -> Self {
        Self {
            what,
            start: Instant::now(),
            deadline,
        }
    }

    /// The error to return, once the deadline has passed.
    fn timed_out(&self) -> Option<TimedOut> {
        let waited = self.start.elapsed();
        (waited >= self.deadline).then(|| TimedOut {
            what: self.what.to_owned(),
            waited,
        })
    }
}

/// Waits until `cond` holds, polling every 10 ms, for at most `deadline`.
pub async fn wait_until(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), TimedOut> {
    let waiting = Waiting::new(what, deadline);
    while !cond() {
        if let Some(e) = waiting.timed_out() {
            return Err(e);
        }
        tokio::time::sleep(Waiting::POLL).await;
    }
    Ok(())
}

/// Like [`wait_until`], for code outside a runtime (the calling thread sleeps).
pub fn wait_until_blocking(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), TimedOut> {
    let waiting = Waiting::new(what, deadline);
    while !cond() {
        if let Some(e) = waiting.timed_out() {
            return Err(e);
        }
        std::thread::sleep(Waiting::POLL);
    }
    Ok(())
}

/// Waits until the node watched by `monitor` has a live connection to every pid in `peers`.
pub async fn wait_connected(
    monitor: &ServerMonitor,
    peers: &[Pid],
    deadline: Duration,
) -> Result<(), TimedOut> {
    let waiting = Waiting::new("connections", deadline);
    let mut rx = monitor.connection_changes();
    let all = rx.wait_for(|s| peers.iter().all(|p| s.contains(p)));
    match tokio::time::timeout(deadline, all).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(TimedOut {
            what: format!("node {} to connect to {peers:?}", monitor.pid()),
            waited: waiting.start.elapsed(),
        }),
    }
}

/// The next envelope from `inbox`, within `deadline`; a closed inbox or the deadline is an
/// error naming `pid` (the receiving node).
pub async fn recv_within<M: cluster_core::Message>(
    pid: Pid,
    inbox: &mut Inbox<M>,
    deadline: Duration,
) -> Result<Envelope<M>, TimedOut> {
    let waiting = Waiting::new("", deadline);
    match tokio::time::timeout(deadline, inbox.recv()).await {
        Ok(Some(env)) => Ok(env),
        Ok(None) => Err(TimedOut {
            what: format!("a message on node {pid}, whose inbox closed"),
            waited: waiting.start.elapsed(),
        }),
        Err(_) => Err(TimedOut {
            what: format!("a message on node {pid}"),
            waited: waiting.start.elapsed(),
        }),
    }
}

/// The body of `GET /metrics` from a Prometheus scrape endpoint on `127.0.0.1:port` (a
/// node's metrics), over a plain TCP connection: HTTP/1.0, so that the body ends with the
/// connection and needs no decoding. Blocking, with [`DEADLINE`] to read: from async code,
/// call it on a blocking thread (`tokio::task::spawn_blocking`).
///
/// An answer other than `200`, or a body sent chunked (which HTTP/1.0 does not allow), is
/// an [`InvalidData`](std::io::ErrorKind::InvalidData) error naming the response head.
pub fn scrape(port: u16) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read, Write};

    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let invalid = |what: &str| Error::new(ErrorKind::InvalidData, what.to_owned());
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("not an HTTP response: no end of head"))?;
    if !(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")) {
        return Err(invalid(&format!("not 200 OK: {head}")));
    }
    if head.to_ascii_lowercase().contains("chunked") {
        return Err(invalid(&format!("a chunked body to HTTP/1.0: {head}")));
    }
    Ok(body.to_owned())
}

/// Assertions for tests: the waits above with [`DEADLINE`], failing the test (a panic
/// naming what was awaited) when it passes.
pub mod expect {
    use std::time::Instant;

    use cluster_core::{Envelope, Event, Events, Pid, Server};

    use super::DEADLINE;

    /// Waits until `cond` holds.
    ///
    /// # Panics
    /// When [`DEADLINE`] passes first.
    pub async fn until(what: &str, cond: impl FnMut() -> bool) {
        if let Err(e) = super::wait_until(what, DEADLINE, cond).await {
            panic!("{e}");
        }
    }

    /// Waits until `server` has a live connection to every pid in `peers`.
    ///
    /// # Panics
    /// When [`DEADLINE`] passes first.
    pub async fn connected<M>(server: &Server<M>, peers: &[Pid]) {
        if let Err(e) = super::wait_connected(&server.monitor(), peers, DEADLINE).await {
            panic!("{e}");
        }
    }

    /// The next envelope in `server`'s inbox.
    ///
    /// # Panics
    /// When [`DEADLINE`] passes first, or the inbox closes.
    pub async fn next<M: cluster_core::Message>(server: &mut Server<M>) -> Envelope<M> {
        let pid = server.pid();
        match super::recv_within(pid, server.inbox(), DEADLINE).await {
            Ok(env) => env,
            Err(e) => panic!("{e}"),
        }
    }

    /// The next peer event from `events`, and when it came: the instant it was received
    /// here, for tests that measure how long a peer took to be told.
    ///
    /// # Panics
    /// When [`DEADLINE`] passes first, the subscription ends (the node has stopped), or it
    /// lagged: a test that reads every event must not lose one.
    pub async fn next_event(events: &mut Events) -> (Event, Instant) {
        match tokio::time::timeout(DEADLINE, events.recv()).await {
            Ok(Some(Ok(e))) => (e.event, Instant::now()),
            Ok(Some(Err(lagged))) => panic!("no lag: {lagged}"),
            Ok(None) => panic!("the node runs: its events ended"),
            Err(_) => panic!("an event within the deadline ({DEADLINE:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_differ_lie_outside_the_ephemeral_range_and_configs_use_them() {
        let ports = free_ports(8).unwrap();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 8);
        let (low, high) = ephemeral_range();
        assert!(
            ports.iter().all(|p| !(low..=high).contains(p)),
            "{ports:?} within the ephemeral range {low}-{high}"
        );
        let config = local_config(3, fast_options()).unwrap();
        assert_eq!(config.pids().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(
            config.options().heartbeat_timeout,
            Duration::from_millis(600)
        );
    }

    #[test]
    fn reserved_ports_stay_taken_until_released() {
        let mut reserved = ReservedPorts::new(2).unwrap();
        let [a, b] = reserved.ports()[..] else {
            panic!("two ports")
        };
        assert!(TcpListener::bind(("127.0.0.1", a)).is_err(), "not held");
        assert!(reserved.release(a));
        assert!(!reserved.release(a), "released twice");
        let rebound = TcpListener::bind(("127.0.0.1", a));
        assert!(rebound.is_ok(), "{rebound:?}");
        assert!(TcpListener::bind(("127.0.0.1", b)).is_err());
        drop(reserved);
        assert!(TcpListener::bind(("127.0.0.1", b)).is_ok());
    }

    #[tokio::test]
    async fn bind_local_starts_over_with_fresh_ports_when_one_was_taken() {
        let mut configs: Vec<Config> = Vec::new();
        let (config, n) = bind_local(2, fast_options(), async |config| {
            configs.push(config.clone());
            if configs.len() < 3 {
                return Err(TransportError::Bind {
                    address: "127.0.0.1:1".into(),
                    reason: "Address already in use".into(),
                });
            }
            Ok(configs.len())
        })
        .await
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(&config, configs.last().unwrap());
        assert_ne!(configs[0], configs[1], "the same ports were tried again");
        // Other errors are not retried.
        let mut calls = 0;
        let e = bind_local(2, fast_options(), async |_| -> Result<(), _> {
            calls += 1;
            Err(TransportError::Other("broken".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(e.to_string().contains("broken"), "{e}");
    }

    #[test]
    fn waiting_stops_at_the_condition_or_the_deadline() {
        let mut n = 0;
        wait_until_blocking("three polls", DEADLINE, || {
            n += 1;
            n == 3
        })
        .unwrap();
        assert_eq!(n, 3);
        let e = wait_until_blocking("never", Duration::from_millis(30), || false).unwrap_err();
        assert_eq!(e.what, "never");
        assert!(e.waited >= Duration::from_millis(30));
        assert!(e.to_string().contains("waiting for never"), "{e}");
    }
}
