//! `cluster node`: one node, driven from stdin.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use cluster_core::{BROADCAST, Envelope, Pid, Server, ServerError, Stats};
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
    /// Print events as JSON lines (for scripts) instead of text.
    #[arg(long)]
    json: bool,
    /// Don't print each received message (count them only; see `stats`).
    #[arg(long)]
    quiet: bool,
    /// How long to wait for every peer to connect before saying so.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    wait: u64,
}

/// What a stdin line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Send { to: Pid, text: String },
    Burst { to: Pid, count: u64, text: String },
    Stats,
    Peers,
    Quit,
    Empty,
}

const HELP: &str =
    "commands: <pid> <text> | * <text> | burst <pid|*> <count> [text] | stats | peers | quit";

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
    let drops = |d: &cluster_core::DropCounts| {
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
        "peers": peers,
        "connected": connected,
    })
}

fn print_stats_text(s: &Stats) {
    println!(
        "sent {}  delivered {}  dropped {}",
        s.sent,
        s.delivered,
        s.dropped()
    );
    println!(
        "{:>6} {:>10} {:>10}  dropped to / from",
        "peer", "sent", "delivered"
    );
    for (pid, p) in &s.peers {
        println!(
            "{pid:>6} {:>10} {:>10}  {} / {}",
            p.sent, p.delivered, p.dropped_to, p.dropped_from
        );
    }
}

/// Runs the node until stdin closes, `quit`, Ctrl-C or SIGTERM.
pub(crate) fn run(args: NodeArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(node(args))
}

async fn node(args: NodeArgs) -> Result<(), Failure> {
    let mut server: Server<String> = match cluster::new(args.pid, &args.config).await {
        Ok(s) => s,
        Err(e @ ServerError::Config(_)) => return Err(Failure::usage(e)),
        Err(e) => return Err(e.into()),
    };
    let pid = server.pid();
    let incarnation = server.incarnation();
    let address = server
        .config()
        .peer(pid)
        .map(|p| p.address.clone())
        .unwrap_or_default();
    let emit = |text: String, value: Value| {
        if args.json {
            println!("{value}");
        } else {
            println!("{text}");
        }
        // Scripts read line by line; don't leave events in a buffer.
        let _ = std::io::stdout().flush();
    };
    emit(
        format!(
            "node {pid} (incarnation {incarnation}) listening on {address}; peers {:?}. {HELP}",
            server.peers()
        ),
        json!({"event": "ready", "pid": pid, "incarnation": incarnation, "address": address}),
    );

    let monitor = server.monitor();
    let wait = Duration::from_secs(args.wait);
    let mut connected = {
        let mut changes = monitor.connection_changes();
        let peers = server.peers().to_vec();
        tokio::spawn(async move {
            let all = |set: &cluster_core::PeerSet| peers.iter().all(|p| set.contains(p));
            tokio::time::timeout(wait, changes.wait_for(all))
                .await
                .is_ok()
        })
    };
    let mut connected_reported = false;
    let outbox = server.outbox();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            done = &mut connected, if !connected_reported => {
                connected_reported = true;
                let peers = monitor.connected_peers();
                match done {
                    Ok(true) => emit(
                        format!("all peers connected: {peers:?}"),
                        json!({"event": "connected", "peers": peers}),
                    ),
                    _ => emit(
                        format!("after {}s, connected to {peers:?} only", args.wait),
                        json!({"event": "connect_timeout", "peers": peers}),
                    ),
                }
            }
            env = server.inbox().recv() => {
                let Some(env) = env else { break };
                if !args.quiet {
                    emit(
                        format!("[from {} #{}] {}", env.pid, env.msg_id, env.msg),
                        json!({"event": "message", "from": env.pid, "msg_id": env.msg_id, "text": env.msg}),
                    );
                }
            }
            line = lines.next_line() => {
                let line = match line {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("stdin: {e}");
                        break;
                    }
                };
                match parse_line(&line) {
                    Ok(Line::Empty) => {}
                    Ok(Line::Quit) => break,
                    Ok(Line::Stats) => {
                        let s = monitor.stats();
                        if args.json {
                            emit(String::new(), stats_json(pid, incarnation, &s, &monitor.connected_peers()));
                        } else {
                            print_stats_text(&s);
                        }
                    }
                    Ok(Line::Peers) => {
                        let peers = monitor.connected_peers();
                        emit(format!("connected: {peers:?}"), json!({"event": "peers", "connected": peers}));
                    }
                    Ok(Line::Send { to, text }) => {
                        let id = server.next_msg_id();
                        if outbox.send(Envelope::new(to, id, text)).await.is_err() {
                            break;
                        }
                    }
                    Ok(Line::Burst { to, count, text }) => {
                        for i in 0..count {
                            let id = server.next_msg_id();
                            if outbox.send(Envelope::new(to, id, format!("{text} {i}"))).await.is_err() {
                                break;
                            }
                        }
                        emit(format!("queued {count} messages"), json!({"event": "queued", "count": count}));
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
        if !args.quiet {
            emit(
                format!("[from {} #{}] {}", env.pid, env.msg_id, env.msg),
                json!({"event": "message", "from": env.pid, "msg_id": env.msg_id, "text": env.msg}),
            );
        }
    }
    // The final counters, now that everything queued has been routed.
    let s = monitor.stats();
    if args.json {
        emit(String::new(), stats_json(pid, incarnation, &s, &[]));
    } else {
        print_stats_text(&s);
    }
    emit(
        format!("node {pid} stopped"),
        json!({"event": "stopped", "pid": pid}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
