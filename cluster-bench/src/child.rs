//! The child processes' side: the roles a child plays, the words that name them on its
//! command line, and [`run_child`], which plays one.

use std::str::FromStr;
use std::time::Instant;

use cluster_core::{Envelope, Pid, Server};
use cluster_zmq::Backend;

use crate::error::failed;
use crate::measure::{bench_config, node, within};
use crate::received::Received;
use crate::{BenchError, PHASE_DEADLINE, RuntimeFlavor, Security, bare};

/// What one child process is asked to do: its words are
/// `<backend> <runtime> <role> <arguments>…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    pub(crate) backend: Backend,
    pub(crate) runtime: RuntimeFlavor,
    pub(crate) security: Security,
    pub(crate) role: Role,
}

/// The part a child plays in one measurement. Every role says `ready` on stdout once it
/// can receive; the receiving ones then print one [`Received`] line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// `bare-pull <endpoint> <messages>`: a bare PULL, bound, counting `messages`.
    BarePull { endpoint: String, messages: u64 },
    /// `bare-rep <endpoint> <requests>`: a bare REP, bound, answering `requests`.
    BareRep { endpoint: String, requests: u64 },
    /// `cluster-recv <pid> <peer_queue> <address>…`: node `pid` of the nodes at these
    /// addresses (pids 1, 2, … in order), counting what node 1 sends until the end marker.
    ClusterRecv {
        pid: Pid,
        peer_queue: usize,
        addresses: Vec<String>,
    },
    /// `cluster-echo <pid> <peer_queue> <address>…`: node `pid`, returning every message
    /// to node 1 until the end marker.
    ClusterEcho {
        pid: Pid,
        peer_queue: usize,
        addresses: Vec<String>,
    },
    /// `rss-sink <message_size> <address>…`: node 2 of the memory benchmark, receiving
    /// until it is stopped and killed.
    RssSink {
        message_size: usize,
        addresses: Vec<String>,
    },
    /// `dead-peer-sink <pid> <peer_queue> <interval_ms> <limit_ms> <address>…`: node `pid`
    /// of the dead-peer benchmark, printing its count every `interval_ms` until it is
    /// killed (or `limit_ms` has passed).
    DeadPeerSink {
        pid: Pid,
        peer_queue: usize,
        interval_ms: u64,
        limit_ms: u64,
        addresses: Vec<String>,
    },
}

impl Job {
    /// The words of this job's command line, after the [`crate::ChildCommand`]'s prefix.
    pub(crate) fn to_words(&self) -> Vec<String> {
        let mut words = vec![
            self.backend.as_str().to_owned(),
            self.runtime.as_str().to_owned(),
            self.security.as_str().to_owned(),
        ];
        match &self.role {
            Role::BarePull { endpoint, messages } => {
                words.extend(["bare-pull".into(), endpoint.clone(), messages.to_string()]);
            }
            Role::BareRep { endpoint, requests } => {
                words.extend(["bare-rep".into(), endpoint.clone(), requests.to_string()]);
            }
            Role::ClusterRecv {
                pid,
                peer_queue,
                addresses,
            } => {
                words.extend([
                    "cluster-recv".into(),
                    pid.to_string(),
                    peer_queue.to_string(),
                ]);
                words.extend(addresses.iter().cloned());
            }
            Role::ClusterEcho {
                pid,
                peer_queue,
                addresses,
            } => {
                words.extend([
                    "cluster-echo".into(),
                    pid.to_string(),
                    peer_queue.to_string(),
                ]);
                words.extend(addresses.iter().cloned());
            }
            Role::RssSink {
                message_size,
                addresses,
            } => {
                words.extend(["rss-sink".into(), message_size.to_string()]);
                words.extend(addresses.iter().cloned());
            }
            Role::DeadPeerSink {
                pid,
                peer_queue,
                interval_ms,
                limit_ms,
                addresses,
            } => {
                words.extend([
                    "dead-peer-sink".into(),
                    pid.to_string(),
                    peer_queue.to_string(),
                    interval_ms.to_string(),
                    limit_ms.to_string(),
                ]);
                words.extend(addresses.iter().cloned());
            }
        }
        words
    }

    /// The job that [`Job::to_words`] wrote.
    pub(crate) fn parse(words: &[impl AsRef<str>]) -> Result<Self, BenchError> {
        let words: Vec<&str> = words.iter().map(AsRef::as_ref).collect();
        let unknown = || {
            BenchError::Child(format!(
                "unknown role {:?}: expected <backend> <runtime> <security> bare-pull|bare-rep|cluster-recv|cluster-echo|rss-sink|dead-peer-sink <arguments>…",
                words.join(" ")
            ))
        };
        let [backend, runtime, security, role @ ..] = words.as_slice() else {
            return Err(unknown());
        };
        let backend: Backend = backend
            .parse()
            .map_err(|e: cluster_zmq::UnknownBackend| BenchError::Child(e.to_string()))?;
        let runtime: RuntimeFlavor = runtime.parse()?;
        let security: Security = security.parse()?;
        let addresses = |addrs: &[&str]| addrs.iter().map(|a| (*a).to_owned()).collect();
        let role = match role {
            ["bare-pull", endpoint, n] => Role::BarePull {
                endpoint: (*endpoint).to_owned(),
                messages: number(n)?,
            },
            ["bare-rep", endpoint, n] => Role::BareRep {
                endpoint: (*endpoint).to_owned(),
                requests: number(n)?,
            },
            ["cluster-recv", pid, queue, addrs @ ..] => Role::ClusterRecv {
                pid: number(pid)?,
                peer_queue: number(queue)?,
                addresses: addresses(addrs),
            },
            ["cluster-echo", pid, queue, addrs @ ..] => Role::ClusterEcho {
                pid: number(pid)?,
                peer_queue: number(queue)?,
                addresses: addresses(addrs),
            },
            ["rss-sink", size, addrs @ ..] => Role::RssSink {
                message_size: number(size)?,
                addresses: addresses(addrs),
            },
            ["dead-peer-sink", pid, queue, interval, limit, addrs @ ..] => Role::DeadPeerSink {
                pid: number(pid)?,
                peer_queue: number(queue)?,
                interval_ms: number(interval)?,
                limit_ms: number(limit)?,
                addresses: addresses(addrs),
            },
            _ => return Err(unknown()),
        };
        Ok(Self {
            backend,
            runtime,
            security,
            role,
        })
    }
}

/// Plays the role that `words` name, in a child process started by [`crate::run`]: `words`
/// are the arguments that followed the [`crate::ChildCommand`]'s prefix. Builds its own
/// tokio runtime (call it outside any runtime), prints the role's lines on stdout and
/// returns when the role is done. The process should exit with failure on an error.
pub fn run_child(words: &[impl AsRef<str>]) -> Result<(), BenchError> {
    let job = Job::parse(words)?;
    let runtime = job
        .runtime
        .builder()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Child(format!("no tokio runtime: {e}")))?;
    runtime.block_on(play(job))
}

async fn play(job: Job) -> Result<(), BenchError> {
    let backend = job.backend;
    let security = job.security;
    match job.role {
        Role::BarePull { endpoint, messages } => bare::pull(backend, &endpoint, messages).await,
        Role::BareRep { endpoint, requests } => bare::rep(backend, &endpoint, requests).await,
        Role::ClusterRecv {
            pid,
            peer_queue,
            addresses,
        } => cluster_recv(backend, security, pid, peer_queue, &addresses).await,
        Role::ClusterEcho {
            pid,
            peer_queue,
            addresses,
        } => cluster_echo(backend, security, pid, peer_queue, &addresses).await,
        Role::RssSink {
            message_size,
            addresses,
        } => rss_sink(backend, message_size, &addresses).await,
        Role::DeadPeerSink {
            pid,
            peer_queue,
            interval_ms,
            limit_ms,
            addresses,
        } => {
            crate::dead_peer::sink(
                backend,
                security,
                pid,
                peer_queue,
                std::time::Duration::from_millis(interval_ms),
                std::time::Duration::from_millis(limit_ms),
                &addresses,
            )
            .await
        }
    }
}

/// Node 2 of the memory benchmark: says `ready` once connected, then takes whatever
/// arrives (it is stopped right away, and killed at the end).
async fn rss_sink(
    backend: Backend,
    message_size: usize,
    addrs: &[String],
) -> Result<(), BenchError> {
    let options = crate::RssOptions {
        message_size,
        ..crate::RssOptions::default()
    };
    let config = crate::rss::rss_config(addrs, &options)?;
    let mut server = node(backend, 2, &config).await?;
    server
        .wait_for_peers(PHASE_DEADLINE)
        .await
        .map_err(failed)?;
    println!("ready");
    let receive = async { while server.inbox().recv().await.is_some() {} };
    let _ = tokio::time::timeout(10 * PHASE_DEADLINE, receive).await;
    server.shutdown().await;
    Ok(())
}

/// A number from a child's command line or result line.
pub(crate) fn number<T: FromStr>(s: &str) -> Result<T, BenchError> {
    s.parse()
        .map_err(|_| BenchError::Child(format!("not a number: {s:?}")))
}

/// Node `pid` of the nodes at `addrs`, connected to every peer, once it has said `ready`.
pub(crate) async fn ready_node(
    backend: Backend,
    security: Security,
    pid: Pid,
    peer_queue: usize,
    addrs: &[String],
) -> Result<Server<String>, BenchError> {
    let config = bench_config(addrs, peer_queue, security)?;
    let server = node(backend, pid, &config).await?;
    server
        .wait_for_peers(PHASE_DEADLINE)
        .await
        .map_err(failed)?;
    println!("ready");
    Ok(server)
}

/// Node `pid`, counting what node 1 sends until the end marker (msg id -1).
async fn cluster_recv(
    backend: Backend,
    security: Security,
    pid: Pid,
    peer_queue: usize,
    addrs: &[String],
) -> Result<(), BenchError> {
    let mut server = ready_node(backend, security, pid, peer_queue, addrs).await?;
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

/// Node `pid`, echoing every message to node 1 until the end marker.
async fn cluster_echo(
    backend: Backend,
    security: Security,
    pid: Pid,
    peer_queue: usize,
    addrs: &[String],
) -> Result<(), BenchError> {
    let mut server = ready_node(backend, security, pid, peer_queue, addrs).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_survive_their_words() {
        let jobs = [
            Role::BarePull {
                endpoint: "tcp://127.0.0.1:5555".into(),
                messages: 2000,
            },
            Role::BareRep {
                endpoint: "tcp://127.0.0.1:5556".into(),
                requests: 1200,
            },
            Role::ClusterRecv {
                pid: 3,
                peer_queue: 16,
                addresses: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            },
            Role::ClusterEcho {
                pid: 2,
                peer_queue: 7,
                addresses: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            },
            Role::DeadPeerSink {
                pid: 4,
                peer_queue: 9,
                interval_ms: 100,
                limit_ms: 180_000,
                addresses: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            },
        ]
        .map(|role| Job {
            backend: Backend::default(),
            runtime: RuntimeFlavor::MultiThread,
            security: Security::Mac,
            role,
        });
        for job in jobs {
            let words = job.to_words();
            assert_eq!(Job::parse(&words).ok(), Some(job), "{words:?}");
        }
    }

    #[test]
    fn bad_words_are_refused_by_name() {
        let b = Backend::default().as_str();
        let rt = "current-thread";
        for (words, expected) in [
            (vec![], "unknown role"),
            (vec![b], "unknown role"),
            (vec!["nanomsg", rt, "none", "bare-rep", "e", "1"], "nanomsg"),
            (vec![b, "threads", "none", "bare-rep", "e", "1"], "threads"),
            (vec![b, rt, "rot13", "bare-rep", "e", "1"], "rot13"),
            (vec![b, rt, "none", "bare-rep", "e"], "unknown role"),
            (vec![b, rt, "mac", "bare-rep", "e", "x"], "\"x\""),
            (vec![b, rt, "none", "fly", "1"], "fly"),
        ] {
            let error = Job::parse(&words).err().map(|e| e.to_string());
            assert!(
                error.as_deref().is_some_and(|e| e.contains(expected)),
                "{words:?}: {error:?}"
            );
        }
    }
}
