//! The connection guard: caps the inbound connections of a node and closes idle ones, for
//! both ZeroMQ libraries, without standing in the data path.
//!
//! Neither library lets its user close one accepted connection, nor cap them. The guard
//! does it from the side: a thread of its own looks, every [`Limits::period`], at the
//! process's open descriptors, keeps those that are TCP connections accepted on the node's
//! port (local port = the node's, a peer address), and shuts down (`shutdown(2)`, both
//! directions) the ones it must close; the library then sees the connection end and
//! releases it as it would any closed connection. Frames never pass through the guard: it
//! costs no copy and no hop.
//!
//! A descriptor of the library is reached through `pidfd_getfd(2)` on the process itself
//! (Linux ≥ 5.6): the guard gets a duplicate of its own, checks what it is (the local port,
//! and the peer address it expects) before it acts, and only ever shuts a connection down
//! (the library's descriptor stays the library's to close). A descriptor that was closed
//! and reused meanwhile is therefore never mistaken for the one meant.
//!
//! What it closes, each counted in [`LinkStats`](crate::LinkStats):
//!
//! * **idle**: a connection that showed no activity for `idle_connection_timeout`, since it
//!   was first seen or since its last activity as the backend reports it ([`Activity`]);
//!   `idle_closed`. A backend that cannot tell activity per connection reports none, and
//!   the guard then closes nothing for idleness (see the crate docs for the libzmq case);
//! * **over the cap**: when more than `inbound_connection_cap` connections are open, the
//!   newest ones that never showed activity are closed first, then the newest of the others;
//!   `refused_over_cap`.

use std::collections::HashMap;
use std::net::SocketAddr;
#[cfg(target_os = "linux")]
use std::net::{Shutdown, TcpStream};
#[cfg(target_os = "linux")]
use std::os::fd::OwnedFd;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[cfg(target_os = "linux")]
use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

use crate::link_stats::Counters;

/// The bounds the guard keeps, from the config's options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The node's own port: connections accepted on it are the guarded ones.
    pub(crate) port: u16,
    /// Inbound connections open at once.
    pub(crate) cap: usize,
    /// Longest time without activity; `None`: never closed for idleness.
    pub(crate) idle: Option<Duration>,
}

impl Limits {
    /// How often the guard looks: a tenth of the idle timeout, between 50 ms and 1 s (the cap
    /// is kept within the same period).
    fn period(&self) -> Duration {
        self.idle
            .map_or(Duration::from_millis(100), |i| i / 10)
            .clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// The last activity of each inbound connection, by peer address, as the backend saw it
/// (the `zeromq` backend: a message of any kind, heartbeats included, on that connection).
/// Written by the backend, read by the guard. Entries the guard no longer sees open are
/// removed by it, so the map holds at most the open connections plus those the backend
/// added since the last look.
#[derive(Debug, Default, Clone)]
pub(crate) struct Activity(Arc<Mutex<HashMap<SocketAddr, Instant>>>);

impl Activity {
    /// Records activity of the connection from `peer` now.
    #[cfg_attr(not(feature = "zeromq"), allow(dead_code))]
    pub(crate) fn touch(&self, peer: SocketAddr) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(peer, Instant::now());
        }
    }

    fn last(&self, peer: &SocketAddr) -> Option<Instant> {
        self.0.lock().ok()?.get(peer).copied()
    }

    fn retain(&self, open: &HashMap<SocketAddr, RawFd>) {
        if let Ok(mut map) = self.0.lock() {
            map.retain(|peer, _| open.contains_key(peer));
        }
    }
}

/// Starts the guard of a transport whose counters are `stats`; a node left unguarded (no
/// pidfd support) says so in the log.
pub(crate) fn start_or_warn(
    limits: Limits,
    activity: Activity,
    stats: &crate::LinkStats,
) -> Option<Guard> {
    match Guard::start(limits, activity, Arc::clone(&stats.counters)) {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(
                port = limits.port,
                "inbound connections are not guarded (no cap, no idle timeout): {e}"
            );
            None
        }
    }
}

/// The port of a `host:port` address (0 if there is none).
pub(crate) fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// The running guard thread; stops when dropped.
pub(crate) struct Guard {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // Wakes within one period; it holds nothing the caller waits for.
            if t.join().is_err() {
                tracing::error!("the connection guard thread panicked");
            }
        }
    }
}

impl Guard {
    /// Elsewhere than on Linux there is no guard (no `pidfd_getfd`).
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn start(
        _limits: Limits,
        _activity: Activity,
        _counters: Arc<Counters>,
    ) -> std::io::Result<Self> {
        Err(std::io::Error::other(
            "the connection guard needs Linux (pidfd_getfd)",
        ))
    }

    /// Starts guarding the connections accepted on `limits.port`. An error (no `pidfd`
    /// support: a kernel before 5.6, or a sandbox refusing it) leaves the node unguarded;
    /// the caller logs it.
    #[cfg(target_os = "linux")]
    pub(crate) fn start(
        limits: Limits,
        activity: Activity,
        counters: Arc<Counters>,
    ) -> std::io::Result<Self> {
        let pidfd = pidfd_open(getpid(), PidfdFlags::empty()).map_err(std::io::Error::from)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("cluster-guard-{}", limits.port))
            .spawn(move || {
                let mut sweeper = Sweeper {
                    pidfd,
                    limits,
                    activity,
                    counters,
                    first_seen: HashMap::new(),
                };
                let period = limits.period();
                while !stopping.load(Ordering::Relaxed) {
                    sweeper.sweep(Instant::now());
                    // Sleep in short steps so that dropping the guard never waits long.
                    let until = Instant::now() + period;
                    while !stopping.load(Ordering::Relaxed) && Instant::now() < until {
                        std::thread::sleep(period.min(Duration::from_millis(50)));
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

#[cfg(target_os = "linux")]
struct Sweeper {
    pidfd: OwnedFd,
    limits: Limits,
    activity: Activity,
    counters: Arc<Counters>,
    /// When the guard first saw each open connection, by peer address.
    first_seen: HashMap<SocketAddr, Instant>,
}

#[cfg(target_os = "linux")]
impl Sweeper {
    /// A duplicate of descriptor `fd` of this process, as a TCP stream, if it is a
    /// connection accepted on the guarded port.
    fn inbound(&self, fd: RawFd) -> Option<(TcpStream, SocketAddr)> {
        let dup = pidfd_getfd(&self.pidfd, fd, PidfdGetfdFlags::empty()).ok()?;
        let stream = TcpStream::from(dup);
        if stream.local_addr().ok()?.port() != self.limits.port {
            return None;
        }
        let peer = stream.peer_addr().ok()?;
        Some((stream, peer))
    }

    /// The inbound connections open now, by peer address.
    fn open(&self) -> HashMap<SocketAddr, RawFd> {
        let mut open = HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return open;
        };
        for entry in dir.flatten() {
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
            let fd = entry.file_name().to_str().and_then(|n| n.parse().ok());
            if let (true, Some(fd)) = (is_socket, fd)
                && let Some((_, peer)) = self.inbound(fd)
            {
                open.insert(peer, fd);
            }
        }
        open
    }

    /// Shuts down the connection from `peer` on descriptor `fd`, if it still is that.
    fn close(&self, fd: RawFd, peer: SocketAddr) -> bool {
        match self.inbound(fd) {
            Some((stream, p)) if p == peer => stream.shutdown(Shutdown::Both).is_ok(),
            _ => false,
        }
    }

    fn sweep(&mut self, now: Instant) {
        let open = self.open();
        self.first_seen.retain(|peer, _| open.contains_key(peer));
        self.activity.retain(&open);
        // (last activity or first sight, whether it ever showed activity, peer, fd)
        let mut conns: Vec<(Instant, bool, SocketAddr, RawFd)> = open
            .iter()
            .map(|(&peer, &fd)| {
                let seen = *self.first_seen.entry(peer).or_insert(now);
                match self.activity.last(&peer) {
                    Some(t) => (t.max(seen), true, peer, fd),
                    None => (seen, false, peer, fd),
                }
            })
            .collect();
        if let Some(idle) = self.limits.idle {
            conns.retain(|&(last, _, peer, fd)| {
                if now.saturating_duration_since(last) <= idle {
                    return true;
                }
                if self.close(fd, peer) {
                    self.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                }
                false
            });
        }
        if conns.len() > self.limits.cap {
            // Keep those that showed activity, then the oldest.
            conns.sort_by_key(|&(last, active, ..)| {
                let age = now.saturating_duration_since(last);
                (
                    std::cmp::Reverse(active),
                    if active { age } else { Duration::MAX - age },
                )
            });
            for &(_, _, peer, fd) in conns.get(self.limits.cap..).unwrap_or_default() {
                if self.close(fd, peer) {
                    self.counters
                        .refused_over_cap
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
