//! `cluster node`: one node, driven from stdin.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use cluster::zmq::Backend;
use cluster::{BROADCAST, Envelope, Pid, Server, ServerError, Stats};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::Failure;

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// This node's pid (one of the config's peers).
    #[arg(long)]
    pid: Pid,
    /// The cluster's config file.
    #[arg(long, value_name = "FILE", default_value = "config.json")]
    config: PathBuf,
    /// The ZeroMQ backend: libzmq or zeromq. Every node of a cluster must use the same one.
    #[arg(long, default_value_t = Backend::default())]
    backend: Backend,
    /// Print events as JSON lines (for scripts) instead of text.
    #[arg(long)]
    json: bool,
    /// Don't print each received message (count them only; see `stats`).
    #[arg(long)]
    quiet: bool,
    /// How long to wait for every peer to connect before saying so.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    wait: u64,
    /// Serve the node's counters and gauges in Prometheus text format over HTTP at ADDR
    /// (an IP address and port, e.g. 127.0.0.1:9100; any path), updated every second;
    /// `cluster members --node ADDR` reads its peers' status there.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Join a running cluster first: ask the members listed in the config to let this node
    /// in (see `Server::join`), for up to --wait seconds.
    #[arg(long)]
    pub(crate) join: bool,
}

/// What a stdin line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Send { to: Pid, text: String },
    Burst { to: Pid, count: u64, text: String },
    Stats,
    Peers,
    Members,
    Add { pid: Pid, address: String },
    Remove { pid: Pid },
    Leave,
    Quit,
    Empty,
}

const HELP: &str = "commands: <pid> <text> | * <text> | burst <pid|*> <count> [text] | stats | peers | \
     members | add <pid> <host:port> | remove <pid> | leave | quit";

fn parse_target(word: &str) -> Result<Pid, String> {
    if word == "*" {
        return Ok(BROADCAST);
    }
    word.parse()
        .map_err(|_| format!("\"{word}\" is neither a pid nor *; {HELP}"))
}

fn parse_line(line: &str) -> Result<Line, String> {
    let line = line.trim();
    let (head, rest) = line
        .split_once(char::is_whitespace)
        .map_or((line, ""), |(h, r)| (h, r.trim_start()));
    match head {
        "" => Ok(Line::Empty),
        "stats" => Ok(Line::Stats),
        "peers" => Ok(Line::Peers),
        "members" => Ok(Line::Members),
        "leave" => Ok(Line::Leave),
        "add" => {
            let mut words = rest.split_whitespace();
            let pid = words
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("add needs a pid and an address; {HELP}"))?;
            let address = words
                .next()
                .ok_or_else(|| format!("add needs a pid and an address; {HELP}"))?
                .to_owned();
            Ok(Line::Add { pid, address })
        }
        "remove" => {
            let pid = rest
                .trim()
                .parse()
                .map_err(|_| format!("remove needs a pid; {HELP}"))?;
            Ok(Line::Remove { pid })
        }
        "quit" | "exit" => Ok(Line::Quit),
        "help" => Err(HELP.into()),
        "burst" => {
            let mut words = rest.splitn(3, char::is_whitespace);
            let to = parse_target(words.next().unwrap_or_default())?;
            let count = words
                .next()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("burst needs a count; {HELP}"))?;
            let text = words.next().unwrap_or("burst").to_owned();
            Ok(Line::Burst { to, count, text })
        }
        target => Ok(Line::Send {
            to: parse_target(target)?,
            text: rest.to_owned(),
        }),
    }
}

fn stats_json(pid: Pid, incarnation: u32, s: &Stats, connected: &[Pid]) -> Value {
    let drops = |d: &cluster::DropCounts| {
        Value::Object(
            d.nonzero()
                .map(|(r, n)| (r.as_str().to_owned(), json!(n)))
                .collect(),
        )
    };
    let peers: serde_json::Map<String, Value> = s
        .peers
        .iter()
        .map(|(p, ps)| {
            (
                p.to_string(),
                json!({
                    "sent": ps.sent,
                    "delivered": ps.delivered,
                    "dropped_to": drops(&ps.dropped_to),
                    "dropped_from": drops(&ps.dropped_from),
                    "incarnation": ps.incarnation,
                    "lost_in_transit": ps.lost_in_transit,
                    "unconfirmed": ps.unconfirmed,
                    "unacknowledged": ps.unacknowledged,
                }),
            )
        })
        .collect();
    json!({
        "event": "stats",
        "pid": pid,
        "incarnation": incarnation,
        "sent": s.sent,
        "delivered": s.delivered,
        "dropped": drops(&s.dropped()),
        "lost_in_transit": s.lost_in_transit,
        "unconfirmed": s.unconfirmed,
        "peers": peers,
        "connected": connected,
    })
}

fn stats_text(s: &Stats) -> String {
    let mut text = format!(
        "sent {}  delivered {}  dropped {}\n{:>6} {:>10} {:>10}  dropped to / from",
        s.sent,
        s.delivered,
        s.dropped(),
        "peer",
        "sent",
        "delivered"
    );
    for (pid, p) in &s.peers {
        text.push_str(&format!(
            "\n{pid:>6} {:>10} {:>10}  {} / {}",
            p.sent, p.delivered, p.dropped_to, p.dropped_from
        ));
    }
    text
}

/// Runs the node until stdin closes, `quit`, Ctrl-C or SIGTERM.
/// `cluster leave`: which node, under which config.
#[derive(Debug, clap::Args)]
pub(crate) struct LeaveArgs {
    /// The pid of the node that leaves (it must not be running: this starts it).
    #[arg(long)]
    pid: Pid,
    /// The cluster's config file.
    #[arg(long, value_name = "FILE", default_value = "config.json")]
    config: PathBuf,
    /// The ZeroMQ backend: libzmq or zeromq.
    #[arg(long, default_value_t = Backend::default())]
    backend: Backend,
    /// How long to wait for a member to confirm.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    wait: u64,
}

pub(crate) fn run_leave(args: LeaveArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server: Server<String> =
            match cluster::new_with(args.backend, args.pid, &args.config).await {
                Ok(s) => s,
                Err(e @ ServerError::Config(_)) => return Err(Failure::usage(e)),
                Err(e) => return Err(e.into()),
            };
        let wait = Duration::from_secs(args.wait);
        // Up with the members first, so that the request reaches them.
        let _ = server.wait_for_peers_up(wait).await;
        let result = server.leave(wait).await;
        server.shutdown().await;
        match result {
            Ok(()) => {
                println!("node {} left the cluster", args.pid);
                Ok(())
            }
            Err(e) => Err(Failure {
                error: anyhow::anyhow!("node {} did not hear that it left: {e}", args.pid),
                code: 1,
            }),
        }
    })
}

pub(crate) fn run(args: NodeArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(node(args))
}

/// Where events go: text or JSON lines on stdout. A failed write (e.g. a closed pipe) means
/// nobody is listening any more, and the node stops.
struct Out {
    json: bool,
}

impl Out {
    #[must_use]
    fn emit(&self, text: &str, value: &Value) -> bool {
        let mut out = std::io::stdout().lock();
        let written = if self.json {
            writeln!(out, "{value}")
        } else {
            writeln!(out, "{text}")
        };
        // Scripts read line by line; don't leave events in a buffer.
        written.and_then(|()| out.flush()).is_ok()
    }

    #[must_use]
    fn stats(&self, pid: Pid, incarnation: u32, s: &Stats, connected: &[Pid]) -> bool {
        self.emit(&stats_text(s), &stats_json(pid, incarnation, s, connected))
    }

    /// The membership records, one line each.
    #[must_use]
    fn members(&self, records: &[cluster::Member]) -> bool {
        let text = records
            .iter()
            .map(|m| {
                format!(
                    "{} {} {} (epoch {}, by {})",
                    m.pid,
                    m.address,
                    if m.present { "member" } else { "left" },
                    m.epoch,
                    m.origin
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        self.emit(
            &text,
            &json!({"event": "members", "members": records.iter().map(|m| json!({
                "pid": m.pid, "address": m.address, "present": m.present,
                "epoch": m.epoch, "origin": m.origin,
            })).collect::<Vec<_>>()}),
        )
    }

    /// What a leave came to.
    #[must_use]
    fn left(&self, result: &Result<(), cluster::WaitTimeout>) -> bool {
        match result {
            Ok(()) => self.emit("left the cluster", &json!({"event": "left"})),
            Err(e) => self.emit(
                &format!("leave: {e}"),
                &json!({"event": "leave_timeout", "peers": e.missing}),
            ),
        }
    }

    /// A peer event: `peer up 2`, `peer down 2`, `peer restarted 2 (incarnation 5)`.
    #[must_use]
    fn peer_event(&self, e: &cluster::PeerEvent) -> bool {
        let at_ms =
            e.at.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
        let (kind, incarnation) = match e.event {
            cluster::Event::Up(_) => ("up", None),
            cluster::Event::Down(_) => ("down", None),
            cluster::Event::Restarted { incarnation, .. } => ("restarted", Some(incarnation)),
            cluster::Event::Joined(_) => ("joined", None),
            cluster::Event::Left(_) => ("left", None),
            _ => ("other", None),
        };
        self.emit(
            &format!("peer {}", e.event),
            &json!({
                "event": "peer",
                "kind": kind,
                "pid": e.event.pid(),
                "incarnation": incarnation,
                "at_ms": at_ms,
            }),
        )
    }

    #[must_use]
    fn message(&self, env: &Envelope<String>) -> bool {
        self.emit(
            &format!("[from {} #{}] {}", env.pid, env.msg_id, env.msg),
            &json!({"event": "message", "from": env.pid, "msg_id": env.msg_id, "text": env.msg}),
        )
    }
}

/// A `burst` being sent, a chunk per turn of the loop, so that the node keeps reading its
/// inbox and its signals meanwhile.
struct Burst {
    to: Pid,
    sent: u64,
    count: u64,
    text: String,
}

/// Envelopes a burst puts into the outbox per turn.
const BURST_CHUNK: usize = 64;

/// Installs the Prometheus recorder with its HTTP listener on `address`. Before the node
/// starts, so that an address that cannot be served begins no incarnation.
fn serve_metrics(address: SocketAddr) -> Result<(), Failure> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(address)
        .install()
        .map_err(|e| {
            Failure::usage(anyhow::anyhow!(
                "--metrics {address}: cannot serve metrics there: {e}"
            ))
        })
}

async fn node(args: NodeArgs) -> Result<(), Failure> {
    let started = match args.metrics {
        Some(address) => {
            serve_metrics(address)?;
            cluster::new_with_metrics(args.backend, args.pid, &args.config).await
        }
        None => cluster::new_with(args.backend, args.pid, &args.config).await,
    };
    let mut server: Server<String> = match started {
        Ok(s) => s,
        Err(e @ ServerError::Config(_)) => return Err(Failure::usage(e)),
        Err(e) => return Err(e.into()),
    };
    let out = Out { json: args.json };
    let pid = server.pid();
    let incarnation = server.incarnation();
    let address = server
        .config()
        .peer(pid)
        .map(|p| p.address.clone())
        .unwrap_or_default();
    let metrics_note = args
        .metrics
        .map(|a| format!("; metrics on http://{a}/metrics"))
        .unwrap_or_default();
    let mut listening = out.emit(
        &format!(
            "node {pid} (incarnation {incarnation}) listening on {address} ({}); peers {:?}{metrics_note}. {HELP}",
            args.backend,
            server.peers()
        ),
        &json!({
            "event": "ready",
            "pid": pid,
            "incarnation": incarnation,
            "address": address,
            "backend": args.backend.as_str(),
            "keyed": server.config().cluster_key().is_some(),
            "metrics": args.metrics.map(|a| a.to_string()),
        }),
    );

    let monitor = server.monitor();
    // Peer events, printed as they happen.
    let mut events = server.events();
    let mut events_open = true;
    let wait = Duration::from_secs(args.wait);
    if args.join {
        let result = server.join(wait).await;
        let up = server.up_peers();
        let told = match result {
            Ok(()) => out.emit(
                &format!("joined the cluster: up with {up:?}"),
                &json!({"event": "joined", "peers": up}),
            ),
            Err(e) => out.emit(
                &format!("join: {e}"),
                &json!({"event": "join_timeout", "missing": e.missing}),
            ),
        };
        listening = listening && told;
    }
    let mut connected = {
        let mut changes = monitor.connection_changes();
        let peers = server.peers().to_vec();
        tokio::spawn(async move {
            let all = |set: &cluster::PeerSet| peers.iter().all(|p| set.contains(p));
            tokio::time::timeout(wait, changes.wait_for(all))
                .await
                .is_ok()
        })
    };
    let mut connected_reported = false;
    let outbox = server.outbox();
    let mut bursts: VecDeque<Burst> = VecDeque::new();
    let mut stdin_open = true;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Runs until stdin closes (after finishing its bursts), `quit`, a signal, or stdout closes.
    while listening && (stdin_open || !bursts.is_empty()) {
        tokio::select! {
            done = &mut connected, if !connected_reported => {
                connected_reported = true;
                let peers = monitor.connected_peers();
                listening = match done {
                    Ok(true) => out.emit(
                        &format!("all peers connected: {peers:?}"),
                        &json!({"event": "connected", "peers": peers}),
                    ),
                    _ => out.emit(
                        &format!("after {}s, connected to {peers:?} only", args.wait),
                        &json!({"event": "connect_timeout", "peers": peers}),
                    ),
                };
            }
            event = events.recv(), if events_open => {
                listening = match event {
                    Some(Ok(e)) => out.peer_event(&e),
                    Some(Err(lagged)) => out.emit(
                        &format!("peer events: {lagged}"),
                        &json!({"event": "events_lagged", "lost": lagged.0}),
                    ),
                    None => {
                        events_open = false;
                        true
                    }
                };
            }
            env = server.inbox().recv() => {
                let Some(env) = env else { break };
                if !args.quiet {
                    listening = out.message(&env);
                }
            }
            () = std::future::ready(()), if !bursts.is_empty() => {
                // A chunk per turn, so that the inbox is read between chunks. A send to a
                // full peer waits for room (up to `send_timeout`).
                if let Some(burst) = bursts.front_mut() {
                    let left = burst.count - burst.sent;
                    for _ in 0..left.min(BURST_CHUNK as u64) {
                        let msg = format!("{} {}", burst.text, burst.sent);
                        let env = Envelope::new(burst.to, server.next_msg_id(), msg);
                        if outbox.send(env).await.is_err() {
                            listening = false;
                            break;
                        }
                        burst.sent += 1;
                    }
                    if burst.sent == burst.count {
                        let count = burst.count;
                        bursts.pop_front();
                        listening = out.emit(
                            &format!("queued {count} messages"),
                            &json!({"event": "queued", "count": count}),
                        );
                    }
                }
            }
            line = lines.next_line(), if stdin_open => {
                let line = match line {
                    Ok(Some(line)) => line,
                    Ok(None) => {
                        stdin_open = false;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("stdin: {e}");
                        stdin_open = false;
                        continue;
                    }
                };
                match parse_line(&line) {
                    Ok(Line::Empty) => {}
                    Ok(Line::Quit) => break,
                    Ok(Line::Stats) => {
                        listening = out.stats(pid, incarnation, &monitor.stats(), &monitor.connected_peers());
                    }
                    Ok(Line::Peers) => {
                        let peers = monitor.connected_peers();
                        listening = out.emit(
                            &format!("connected: {peers:?}"),
                            &json!({"event": "peers", "connected": peers}),
                        );
                    }
                    Ok(Line::Members) => {
                        listening = out.members(&server.members());
                    }
                    Ok(Line::Add { pid: peer, address }) => match server.add_peer(peer, &address) {
                        Ok(()) => {
                            listening = out.emit(
                                &format!("membership: added {peer} at {address}"),
                                &json!({"event": "added", "pid": peer, "address": address}),
                            );
                        }
                        Err(e) => eprintln!("add {peer}: {e}"),
                    },
                    Ok(Line::Remove { pid: peer }) => match server.remove_peer(peer) {
                        Ok(()) => {
                            listening = out.emit(
                                &format!("membership: removed {peer}"),
                                &json!({"event": "removed", "pid": peer}),
                            );
                        }
                        Err(e) => eprintln!("remove {peer}: {e}"),
                    },
                    Ok(Line::Leave) => {
                        let result = server.leave(wait).await;
                        let _ = out.left(&result);
                        break;
                    }
                    Ok(Line::Send { to, text }) => {
                        let id = server.next_msg_id();
                        if outbox.send(Envelope::new(to, id, text)).await.is_err() {
                            break;
                        }
                    }
                    Ok(Line::Burst { to, count, text }) => {
                        bursts.push_back(Burst { to, sent: 0, count, text });
                    }
                    Err(problem) => eprintln!("{problem}"),
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    server.stop().await;
    // Messages that arrived before the stop and were not printed yet.
    while let Ok(env) = server.inbox().try_recv() {
        if !args.quiet && !out.message(&env) {
            break;
        }
    }
    // The final counters, now that everything queued has been routed. If stdout is gone
    // there is nobody to tell.
    let _ = out.stats(pid, incarnation, &monitor.stats(), &[])
        && out.emit(
            &format!("node {pid} stopped"),
            &json!({"event": "stopped", "pid": pid}),
        );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_lines_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_line("add 7 127.0.0.1:7007"),
            Ok(Line::Add {
                pid: 7,
                address: "127.0.0.1:7007".into()
            })
        );
        assert_eq!(parse_line("remove 7"), Ok(Line::Remove { pid: 7 }));
        assert_eq!(parse_line("members"), Ok(Line::Members));
        assert_eq!(parse_line("leave"), Ok(Line::Leave));
        assert!(
            parse_line("add 7")
                .unwrap_err()
                .starts_with("add needs a pid and an address")
        );
        assert!(
            parse_line("add x 1:2")
                .unwrap_err()
                .starts_with("add needs a pid")
        );
        assert!(
            parse_line("remove")
                .unwrap_err()
                .starts_with("remove needs a pid")
        );
    }

    #[test]
    fn lines_parse() {
        assert_eq!(
            parse_line("3 hello there"),
            Ok(Line::Send {
                to: 3,
                text: "hello there".into()
            })
        );
        assert_eq!(
            parse_line("* hi"),
            Ok(Line::Send {
                to: BROADCAST,
                text: "hi".into()
            })
        );
        assert_eq!(
            parse_line("burst * 10 x y"),
            Ok(Line::Burst {
                to: BROADCAST,
                count: 10,
                text: "x y".into()
            })
        );
        assert_eq!(parse_line("  stats "), Ok(Line::Stats));
        assert_eq!(parse_line(""), Ok(Line::Empty));
        assert!(parse_line("x hello").unwrap_err().contains("neither a pid"));
        assert!(parse_line("burst 3").unwrap_err().contains("count"));
        assert!(parse_line("burst 3 many").is_err());
    }
}
