//! Fixtures for tests on real sockets and real processes, written once: free loopback ports,
//! quick options, configs on loopback, waiting on a condition with a generous deadline, and
//! child processes driven line by line that die with the test ([`Process`]).
//! The test suites of `cluster-zmq`, `cluster-catalog` and the `cluster` command use these.

mod process;

use std::time::{Duration, Instant};

pub use process::{Finished, Process, ProcessError};

use cluster_core::{Config, ConfigError, Envelope, Inbox, Options, Pid, ServerMonitor};

/// How long a test waits for a condition on real sockets before it fails. Generous: loaded
/// CI machines are slow, and tests wait on conditions, never on this.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// `n` distinct free TCP ports on 127.0.0.1, found by binding port 0 (all held at once, so
/// that they differ) and then released for the caller to bind.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
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

/// Pids `1..=n` on free loopback ports, with `options`.
pub fn local_config(n: usize, options: Options) -> Result<Config, LocalConfigError> {
    let ports = free_ports(n)?;
    let peers = ports
        .iter()
        .zip(1..)
        .map(|(port, pid): (&u16, Pid)| (pid, format!("127.0.0.1:{port}")));
    Ok(Config::from_peers(peers, options)?)
}

/// [`local_config`] could not find ports or build the config.
#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    /// No free port could be bound on 127.0.0.1.
    #[error("no free loopback port: {0}")]
    Ports(#[from] std::io::Error),
    /// The config was refused (the options are out of range).
    #[error(transparent)]
    Config(#[from] ConfigError),
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
pub async fn recv_within<M>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_differ_and_configs_use_them() {
        let ports = free_ports(8).unwrap();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 8);
        let config = local_config(3, fast_options()).unwrap();
        assert_eq!(config.pids().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(
            config.options().heartbeat_timeout,
            Duration::from_millis(600)
        );
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
