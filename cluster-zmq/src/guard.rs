//! The connection guard: caps the inbound connections of a node and closes idle ones, for
//! both ZeroMQ libraries, without standing in the data path.
//!
//! Neither library lets its user close one accepted connection, nor cap them. The guard
//! does it from the side: a thread of its own looks, every [`Limits::period`], at the
//! connections the kernel lists on the node's port (`sock_diag`, filtered to the port by
//! the kernel: their socket inodes and when each last received data), finds their
//! descriptors among the process's (`/proc/self/fd`), and shuts down (`shutdown(2)`, both
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
//!   was first seen or since its last activity: as the backend reports it ([`Activity`],
//!   `zeromq`), or as the kernel saw it (the last data received, through `sock_diag`,
//!   libzmq); `idle_closed`;
//! * **over the cap**: when more than `inbound_connection_cap` connections are open, the
//!   newest ones that never showed activity are closed first, then the newest of the others;
//!   `refused_over_cap`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
#[cfg(target_os = "linux")]
use std::net::{Shutdown, TcpStream};
#[cfg(target_os = "linux")]
use std::os::fd::OwnedFd;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// Inbound connections open at once, at first ([`Guard::set_cap`] changes it).
    pub(crate) cap: usize,
    /// Longest time without activity; `None`: never closed for idleness.
    pub(crate) idle: Option<Duration>,
    /// Whether activity is what the kernel saw (the last data received on the connection,
    /// heartbeats included) rather than what the backend reports in [`Activity`].
    pub(crate) kernel_activity: bool,
}

impl Limits {
    /// The idle timeout actually kept: at least two heartbeat intervals, so that a real
    /// peer with nothing to send, whose heartbeats are its activity, is never closed.
    pub(crate) fn idle_timeout(idle: Duration, heartbeat_interval: Duration) -> Duration {
        idle.max(heartbeat_interval.saturating_mul(2))
    }
}

impl Limits {
    /// How often the guard looks: a tenth of the idle timeout, between 50 and 250 ms. The
    /// cap is kept within the same period, so a burst of connections can exceed it for at
    /// most that long (a look costs a few system calls per open socket, and on libzmq two
    /// filtered `sock_diag` dumps).
    fn period(&self) -> Duration {
        self.idle
            .map_or(Duration::from_millis(100), |i| i / 10)
            .clamp(Duration::from_millis(50), Duration::from_millis(250))
    }
}

/// The last activity of each inbound connection, by peer address, as the backend saw it
/// (the `zeromq` backend: a message of any kind, heartbeats included, on that connection).
/// Written by the backend, read by the guard. Entries the guard no longer sees open are
/// removed by it, so the map holds at most the open connections plus those the backend
/// added since the last look.
#[derive(Debug, Default, Clone)]
pub(crate) struct Activity {
    last: Arc<Mutex<HashMap<SocketAddr, Instant>>>,
    /// Connections the backend gave up (a client that does not read), to be shut down at
    /// the next look: the library's own writer may be stuck writing to it and would keep
    /// the socket open.
    condemned: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Activity {
    /// Asks the guard to shut down the connection from `peer` (already counted by the
    /// caller). Bounded: at most the cap's worth are kept between two looks.
    #[cfg_attr(not(feature = "zeromq"), allow(dead_code))]
    pub(crate) fn condemn(&self, peer: SocketAddr) {
        if let Ok(mut c) = self.condemned.lock()
            && c.len() < CONDEMNED_MAX
        {
            c.push(peer);
        }
    }

    fn take_condemned(&self) -> Vec<SocketAddr> {
        self.condemned
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }

    /// Records activity of the connection from `peer` now.
    #[cfg_attr(not(feature = "zeromq"), allow(dead_code))]
    pub(crate) fn touch(&self, peer: SocketAddr) {
        if let Ok(mut map) = self.last.lock() {
            map.insert(peer, Instant::now());
        }
    }

    fn last(&self, peer: &SocketAddr) -> Option<Instant> {
        self.last.lock().ok()?.get(peer).copied()
    }

    fn retain(&self, open: &HashMap<SocketAddr, RawFd>) {
        if let Ok(mut map) = self.last.lock() {
            map.retain(|peer, _| open.contains_key(peer));
        }
    }
}

/// Condemned connections kept between two looks of the guard, at most.
const CONDEMNED_MAX: usize = 4096;

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

/// The cap on inbound connections of a node with `peers` peers besides itself, configured
/// or added at run time: what the config's options give for that cluster size.
pub(crate) fn cap_for(options: &cluster_core::Options, peers: usize) -> usize {
    options.inbound_connection_cap(peers.saturating_add(1))
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
    /// The cap kept from the next look on.
    cap: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Guard {
    /// Keeps `cap` inbound connections open at most from the next look on (peers were
    /// added or removed at run time).
    pub(crate) fn set_cap(&self, cap: usize) {
        self.cap.store(cap.max(1), Ordering::Relaxed);
    }
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
        let cap = Arc::new(AtomicUsize::new(limits.cap));
        let capped = Arc::clone(&cap);
        let thread = std::thread::Builder::new()
            .name(format!("cluster-guard-{}", limits.port))
            .spawn(move || {
                let mut sweeper = Sweeper {
                    pidfd,
                    limits,
                    cap: capped,
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
            cap,
            thread: Some(thread),
        })
    }
}

#[cfg(target_os = "linux")]
struct Sweeper {
    pidfd: OwnedFd,
    limits: Limits,
    /// The cap now (`limits.cap` at first; see [`Guard::set_cap`]).
    cap: Arc<AtomicUsize>,
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

    /// The inbound connections open now, by peer address. `sockets`: the inodes of the
    /// sockets on the guarded port, as the kernel listed them, if it did: only those
    /// descriptors are looked at closely (a process may hold many other sockets).
    fn open(&self, sockets: Option<&HashSet<u64>>) -> HashMap<SocketAddr, RawFd> {
        let mut open = HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return open;
        };
        for entry in dir.flatten() {
            // "socket:[inode]"
            let Some(inode) = std::fs::read_link(entry.path()).ok().and_then(|t| {
                let t = t.to_string_lossy().into_owned();
                t.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            }) else {
                continue;
            };
            if sockets.is_some_and(|s| !s.contains(&inode)) {
                continue;
            }
            let fd = entry.file_name().to_str().and_then(|n| n.parse().ok());
            if let Some(fd) = fd
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
        // What the kernel knows of the connections on the port: their sockets' inodes, and
        // when each last received data.
        let listed = match diag::connections(self.limits.port) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::debug!(port = self.limits.port, "sock_diag: {e}");
                None
            }
        };
        let inodes: Option<HashSet<u64>> = listed
            .as_ref()
            .map(|l| l.values().map(|c| c.inode).collect());
        let mut open = self.open(inodes.as_ref());
        for peer in self.activity.take_condemned() {
            if let Some(fd) = open.remove(&peer) {
                self.close(fd, peer);
            }
        }
        self.first_seen.retain(|peer, _| open.contains_key(peer));
        self.activity.retain(&open);
        let kernel = listed.filter(|_| self.limits.kernel_activity);
        // (last activity or first sight, whether it ever showed activity, peer, fd)
        let mut conns: Vec<(Instant, bool, SocketAddr, RawFd)> = open
            .iter()
            .map(|(&peer, &fd)| {
                let seen = *self.first_seen.entry(peer).or_insert(now);
                if let Some(kernel) = &kernel {
                    // Every connection has a time of last data (its setup, at first): it
                    // tells idleness, not which connection showed activity.
                    let last = kernel.get(&peer).and_then(|c| now.checked_sub(c.ago));
                    return (last.map_or(seen, |t| t.max(seen)), false, peer, fd);
                }
                match self.activity.last(&peer) {
                    Some(t) => (t.max(seen), true, peer, fd),
                    None => (seen, false, peer, fd),
                }
            })
            .collect();
        let idle = match (self.limits.kernel_activity, &kernel) {
            // No word from the kernel this time: close nothing for idleness.
            (true, None) => None,
            _ => self.limits.idle,
        };
        if let Some(idle) = idle {
            conns.retain(|&(last, _, peer, fd)| {
                if now.saturating_duration_since(last) <= idle {
                    return true;
                }
                if self.close(fd, peer) {
                    self.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        port = self.limits.port,
                        %peer,
                        idle_ms = now.saturating_duration_since(last).as_millis() as u64,
                        "closed an idle inbound connection"
                    );
                }
                false
            });
        }
        let cap = self.cap.load(Ordering::Relaxed);
        if conns.len() > cap {
            // Keep those that showed activity, then the oldest.
            conns.sort_by_key(|&(last, active, ..)| {
                let age = now.saturating_duration_since(last);
                (
                    std::cmp::Reverse(active),
                    if active { age } else { Duration::MAX - age },
                )
            });
            for &(_, _, peer, fd) in conns.get(cap..).unwrap_or_default() {
                if self.close(fd, peer) {
                    self.counters
                        .refused_over_cap
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        port = self.limits.port,
                        %peer,
                        "closed an inbound connection over the cap"
                    );
                }
            }
        }
    }
}

/// What the kernel knows of the TCP connections on a port, through the `sock_diag`
/// netlink interface (the one `ss` uses): no descriptor needed, no unsafe code.
#[cfg(target_os = "linux")]
mod diag {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::time::Duration;

    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, netlink};

    const NLMSG_HDR: usize = 16;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;
    const IPPROTO_TCP: u8 = 6;
    /// The request attribute carrying a filter, and its "source port equals" operation.
    const INET_DIAG_REQ_BYTECODE: u16 = 1;
    const INET_DIAG_BC_S_EQ: u8 = 11;
    /// The attribute carrying `struct tcp_info`.
    const INET_DIAG_INFO: u16 = 2;
    /// `struct inet_diag_msg`, and the offset of its `idiag_inode`.
    const DIAG_MSG_LEN: usize = 72;
    const DIAG_INODE: usize = 68;
    /// Offset of `tcpi_last_data_recv` (milliseconds) in `struct tcp_info`.
    const LAST_DATA_RECV: usize = 52;
    /// TCP states asked for: established and close-wait (the client left, the library
    /// has not closed yet).
    const STATES: u32 = (1 << 1) | (1 << 8);
    /// Reads of one dump, at most (each up to 64 KiB of answers).
    const MAX_READS: usize = 4096;

    /// One connection on the port, as the kernel sees it.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Conn {
        /// Its socket's inode (what `/proc/self/fd/N` links to).
        pub(super) inode: u64,
        /// How long ago it last received data.
        pub(super) ago: Duration,
    }

    /// The connections on local port `port`, by peer address.
    pub(super) fn connections(port: u16) -> std::io::Result<HashMap<SocketAddr, Conn>> {
        let mut out = HashMap::new();
        for family in [AF_INET, AF_INET6] {
            dump(family, port, &mut out)?;
        }
        Ok(out)
    }

    fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }

    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    fn dump(family: u8, port: u16, out: &mut HashMap<SocketAddr, Conn>) -> std::io::Result<()> {
        let fd = rustix::net::socket(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            Some(netlink::SOCK_DIAG),
        )?;
        // Header, request, and a filter run by the kernel: only sockets on local `port`
        // (else a node would read every TCP socket of the machine at each look).
        let len = NLMSG_HDR + 56 + 12;
        let mut req = Vec::with_capacity(len);
        req.extend_from_slice(&(len as u32).to_ne_bytes());
        req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&1u32.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        // struct inet_diag_req_v2: family, protocol, extensions wanted, pad, states, and a
        // socket id left empty (a dump of every socket of the family).
        req.extend_from_slice(&[family, IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0]);
        req.extend_from_slice(&STATES.to_ne_bytes());
        req.extend_from_slice(&[0u8; 48]);
        // rtattr INET_DIAG_REQ_BYTECODE: two `inet_diag_bc_op`s (code, yes, no), as `ss`
        // builds for `sport = :port`: "local port equal to" (yes: skip both ops, accept;
        // no: jump past the end, reject), then the port in the second op's `no`.
        req.extend_from_slice(&12u16.to_ne_bytes());
        req.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        req.extend_from_slice(&[INET_DIAG_BC_S_EQ, 8]);
        req.extend_from_slice(&12u16.to_ne_bytes());
        req.extend_from_slice(&[0, 0]);
        req.extend_from_slice(&port.to_ne_bytes());
        rustix::net::send(&fd, &req, SendFlags::empty())?;
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..MAX_READS {
            let (_, n) = rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty())?;
            let data = buf.get(..n.min(buf.len())).unwrap_or_default();
            let mut at = 0;
            while at + NLMSG_HDR <= data.len() {
                let (Some(len), Some(kind)) = (u32_at(data, at), u16_at(data, at + 4)) else {
                    break;
                };
                let len = len as usize;
                let Some(msg) = data.get(at + NLMSG_HDR..at + len.max(NLMSG_HDR)) else {
                    break;
                };
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        return Err(std::io::Error::other("sock_diag refused the dump"));
                    }
                    SOCK_DIAG_BY_FAMILY => {
                        if let Some((peer, conn)) = parse(msg, port) {
                            out.insert(peer, conn);
                        }
                    }
                    _ => {}
                }
                at += len.max(NLMSG_HDR).next_multiple_of(4);
            }
        }
        Ok(())
    }

    /// One `inet_diag_msg` and its attributes: the peer and its time since last data, if
    /// the connection is on local port `port`.
    fn parse(msg: &[u8], port: u16) -> Option<(SocketAddr, Conn)> {
        let family = *msg.first()?;
        let sport = u16::from_be_bytes(msg.get(4..6)?.try_into().ok()?);
        if sport != port {
            return None;
        }
        let dport = u16::from_be_bytes(msg.get(6..8)?.try_into().ok()?);
        let ip = match family {
            AF_INET => {
                let b: [u8; 4] = msg.get(24..28)?.try_into().ok()?;
                IpAddr::V4(Ipv4Addr::from(b))
            }
            AF_INET6 => {
                let b: [u8; 16] = msg.get(24..40)?.try_into().ok()?;
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => return None,
        };
        let mut at = DIAG_MSG_LEN;
        while at + 4 <= msg.len() {
            let len = usize::from(u16_at(msg, at)?);
            let kind = u16_at(msg, at + 2)?;
            if len < 4 {
                return None;
            }
            if kind == INET_DIAG_INFO {
                let info = msg.get(at + 4..at + len)?;
                let ms = u32_at(info, LAST_DATA_RECV)?;
                let inode = u32_at(msg, DIAG_INODE)?;
                return Some((
                    SocketAddr::new(ip, dport),
                    Conn {
                        inode: u64::from(inode),
                        ago: Duration::from_millis(u64::from(ms)),
                    },
                ));
            }
            at += len.next_multiple_of(4);
        }
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::diag;

    #[test]
    fn the_kernel_tells_how_long_ago_a_connection_received_data() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        client.write_all(b"hello").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let seen = diag::connections(port).unwrap();
        let conn = seen.get(&peer).copied();
        assert!(
            conn.is_some_and(
                |c| c.ago >= Duration::from_millis(200) && c.ago < Duration::from_secs(5)
            ),
            "{peer}: {conn:?} in {seen:?}"
        );
        // The inode is the accepted socket's, as /proc/self/fd links to it.
        let link = std::fs::read_link(format!("/proc/self/fd/{}", accepted.as_raw_fd()))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(link, format!("socket:[{}]", conn.unwrap().inode));
        // The client's own end is on another local port: not listed.
        assert!(!seen.contains_key(&listener.local_addr().unwrap()));
    }
}
