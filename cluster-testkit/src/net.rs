//! Fixtures for tests on real sockets and real processes, written once: free loopback ports,
//! quick options, configs on loopback, waiting on a condition with a generous deadline.
//! The test suites of `cluster-zmq`, `cluster-catalog` and the `cluster` command use these.

use std::time::{Duration, Instant};

use cluster_core::{Config, ConfigError, Options, Pid};

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

/// Waits until `cond` holds, polling every 10 ms, for at most `deadline`.
pub async fn wait_until(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), TimedOut> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() >= deadline {
            return Err(TimedOut {
                what: what.to_owned(),
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Like [`wait_until`], for code outside a runtime (the calling thread sleeps).
pub fn wait_until_blocking(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), TimedOut> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() >= deadline {
            return Err(TimedOut {
                what: what.to_owned(),
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
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
