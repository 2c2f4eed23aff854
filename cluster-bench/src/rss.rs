//! The memory benchmark: a node streams large messages to a peer that is stopped
//! (`SIGSTOP`, in a child process) and the sender's peak resident set size is compared with
//! the byte bounds of its config. Every queue a frame can wait in on the sender is bounded
//! in bytes (or by count × the frame limit); this measures that the bounds hold as a whole.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cluster_core::{Config, Envelope, Options};
use cluster_zmq::Backend;

use crate::child::{Job, Role};
use crate::error::failed;
use crate::measure::{addresses, node};
use crate::options::{compiled_in, not_compiled_in};
use crate::process::ChildProcess;
use crate::{BenchError, ChildCommand, PHASE_DEADLINE, RuntimeFlavor};

/// What the memory benchmark runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RssOptions {
    /// The backend under test (compiled in).
    pub backend: Backend,
    /// How long the sender streams to the stopped peer.
    pub duration: Duration,
    /// Payload bytes per message (the frame limit is set a little above it).
    pub message_size: usize,
    /// [`Options::peer_queue_bytes`] of both nodes.
    pub peer_queue_bytes: usize,
    /// [`Options::inbox_capacity`] and [`Options::outbox_capacity`] of both nodes (counted
    /// as that many frames of the largest size).
    pub mailbox_capacity: usize,
    /// The tokio runtime of the child process.
    pub runtime: RuntimeFlavor,
}

impl Default for RssOptions {
    fn default() -> Self {
        let o = Options::default();
        Self {
            backend: Backend::default(),
            duration: Duration::from_secs(30),
            message_size: 1 << 20,
            peer_queue_bytes: o.peer_queue_bytes,
            mailbox_capacity: 16,
            runtime: RuntimeFlavor::default(),
        }
    }
}

impl RssOptions {
    /// The frame limit: the payload and room for the header and its encoding.
    pub fn max_message_size(&self) -> usize {
        self.message_size + 4096
    }

    /// The sum of the sender's configured bounds, in bytes: what the one peer may leave
    /// unacknowledged, and inbox and outbox as that many frames of the largest size. (The
    /// peer, stopped, sends nothing: the sender's receive side holds nothing.)
    pub fn bounds(&self) -> u64 {
        let mailboxes = 2 * self.mailbox_capacity * self.max_message_size();
        (self.peer_queue_bytes + mailboxes) as u64
    }

    /// The target: peak RSS ≤ 2 × [`RssOptions::bounds`] + 100 MiB.
    pub fn target(&self) -> u64 {
        2 * self.bounds() + (100 << 20)
    }
}

/// Nodes 1 and 2 at `addresses`, with the byte bounds of `o`.
pub(crate) fn rss_config<A: AsRef<str>>(
    addresses: &[A],
    o: &RssOptions,
) -> Result<Config, BenchError> {
    let options = Options {
        max_message_size: o.max_message_size(),
        peer_queue_bytes: o.peer_queue_bytes,
        inbox_capacity: o.mailbox_capacity,
        outbox_capacity: o.mailbox_capacity,
        ..Options::default()
    };
    Config::from_peers((1..).zip(addresses.iter().map(AsRef::as_ref)), options).map_err(failed)
}

/// What the memory benchmark measured.
#[derive(Debug, Clone)]
pub struct RssReport {
    /// What ran.
    pub options: RssOptions,
    /// The sender's RSS once connected, before streaming.
    pub baseline_rss: u64,
    /// The sender's peak RSS while streaming (sampled every 20 ms, and the kernel's
    /// high-water mark `VmHWM`).
    pub peak_rss: u64,
    /// Messages handed to the outbox.
    pub sent: u64,
    /// Of those, dropped and counted (`backpressure`, `unreachable`).
    pub dropped: u64,
}

impl RssReport {
    /// Whether the peak is within [`RssOptions::target`].
    pub fn within_target(&self) -> bool {
        self.peak_rss <= self.options.target()
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
}

impl fmt::Display for RssReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "cluster bench --rss: backend {}, {}-byte messages to a stopped peer for {:?}",
            o.backend, o.message_size, o.duration
        )?;
        writeln!(
            f,
            "bounds: peer_queue_bytes {} + inbox and outbox 2 × {} × {} = {}",
            mib(o.peer_queue_bytes as u64),
            o.mailbox_capacity,
            mib(o.max_message_size() as u64),
            mib(o.bounds())
        )?;
        writeln!(
            f,
            "sender RSS: {} before, peak {}; target ≤ 2 × bounds + 100 MiB = {}: {}",
            mib(self.baseline_rss),
            mib(self.peak_rss),
            mib(o.target()),
            if self.within_target() {
                "met"
            } else {
                "MISSED"
            }
        )?;
        write!(
            f,
            "messages sent {}, dropped and counted {} (the peer never read one)",
            self.sent, self.dropped
        )
    }
}

/// A field of `/proc/self/status`, in bytes (0 where unavailable).
fn status_bytes(field: &str) -> u64 {
    process_status_bytes("self", field)
}

/// A field of `/proc/<process>/status` (`process`: a pid, or `self`), in bytes (0 where
/// unavailable).
pub(crate) fn process_status_bytes(process: &str, field: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{process}/status")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid` with the system's `kill`. Refuses
/// pids 0 and 1: `kill` would signal the whole process group (0) or init (1), never one
/// child of ours.
pub(crate) fn signal(pid: u32, signal: &str) -> Result<(), BenchError> {
    if pid <= 1 {
        return Err(failed(format!(
            "kill -{signal} {pid}: not a child process's pid"
        )));
    }
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .map_err(|e| failed(format!("kill -{signal} {pid}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(format!("kill -{signal} {pid}: {status}")))
    }
}

/// Runs the memory benchmark (Linux: it reads `/proc/self/status`). The peer is a child
/// process started with `child`, as for [`crate::run`].
pub async fn run_rss(child: &ChildCommand, o: &RssOptions) -> Result<RssReport, BenchError> {
    if !compiled_in(o.backend) {
        return Err(not_compiled_in(o.backend));
    }
    let addrs = addresses(2)?;
    let config = rss_config(&addrs, o)?;
    let server = node(o.backend, 1, &config).await?;
    let mut peer = ChildProcess::spawn(
        child,
        &Job {
            backend: o.backend,
            runtime: o.runtime,
            security: crate::Security::None,
            role: Role::RssSink {
                message_size: o.message_size,
                addresses: addrs.clone(),
            },
        },
    )?;
    peer.expect("ready").await?;
    server
        .wait_for_peers(PHASE_DEADLINE)
        .await
        .map_err(failed)?;
    let pid = peer
        .id()
        .ok_or_else(|| BenchError::Child("the peer exited".into()))?;
    signal(pid, "STOP")?;

    let baseline_rss = status_bytes("VmRSS:");
    let peak = Arc::new(AtomicU64::new(baseline_rss));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(status_bytes("VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let payload = "x".repeat(o.message_size);
    let out = server.outbox();
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < o.duration {
        let env = Envelope::new(2, server.next_msg_id(), payload.clone());
        if out.send(env).await.is_err() {
            break;
        }
        sent += 1;
    }
    // Let the server take what is still in the outbox before the count.
    tokio::time::sleep(Duration::from_millis(200)).await;
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let peak_rss = peak.load(Ordering::Relaxed).max(status_bytes("VmHWM:"));
    let stats = server.stats();
    let dropped = stats.dropped_outgoing.total();
    let _ = signal(pid, "CONT");
    drop(peer);
    server.shutdown().await;
    Ok(RssReport {
        options: o.clone(),
        baseline_rss,
        peak_rss,
        sent,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kill -STOP 0` would stop the benchmark's own process group: pids 0 and 1 are
    /// refused before `kill` runs.
    #[test]
    fn signals_go_to_children_only() {
        for pid in [0, 1] {
            let e = signal(pid, "STOP").expect_err("refused");
            assert!(e.to_string().contains("not a child process's pid"), "{e}");
        }
    }
}
