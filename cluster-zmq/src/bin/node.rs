//! `cluster-zmq-node`: one cluster node in its own process, driven by lines on stdin and
//! reporting on stdout. Used by the multi-process tests; handy for trying a cluster by hand.
//!
//! Usage: `cluster-zmq-node <config.json> <pid> [incarnation]`
//!
//! Stdin commands: `send <to> <msg_id> <text>` (to = a pid, or -1 for broadcast),
//! `stats`, `quit`. Stdout: `ready <pid> <backend>`, `connected <pids…>` whenever the
//! connection set changes, `recv <from> <msg_id> <text>` per message, `stats sent=… delivered=…
//! dropped_outgoing=… dropped_incoming=…`, `bye`.

use std::process::ExitCode;

use cluster_core::{Config, Envelope, Pid, Server};
use tokio::io::{AsyncBufReadExt, BufReader};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, pid, incarnation) = match args.as_slice() {
        [path, pid] => (path, pid.parse::<Pid>(), Ok(0)),
        [path, pid, inc] => (path, pid.parse::<Pid>(), inc.parse::<u32>()),
        _ => {
            eprintln!("usage: cluster-zmq-node <config.json> <pid> [incarnation]");
            return ExitCode::from(2);
        }
    };
    let (Ok(pid), Ok(incarnation)) = (pid, incarnation) else {
        eprintln!("pid and incarnation must be integers");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(path, pid, incarnation)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster-zmq-node {pid}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: &str, pid: Pid, incarnation: u32) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(path)?;
    let transport = cluster_zmq::bind(pid, &config).await?;
    let mut server = Server::<String>::builder(pid, config)
        .incarnation(incarnation)
        .build(transport)?;
    println!("ready {pid} {}", cluster_zmq::BACKEND);
    let mut changes = server.monitor().connection_changes();
    print_connected(&mut changes);
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let outbox = server.outbox();
    loop {
        tokio::select! {
            env = server.inbox().recv() => match env {
                Some(env) => println!("recv {} {} {}", env.pid, env.msg_id, env.msg),
                None => break,
            },
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                print_connected(&mut changes);
            }
            line = stdin.next_line() => {
                let Some(line) = line? else { break };
                let mut words = line.splitn(4, ' ');
                match (words.next(), words.next(), words.next(), words.next()) {
                    (Some("send"), Some(to), Some(id), Some(text)) => {
                        let (Ok(to), Ok(id)) = (to.parse(), id.parse()) else {
                            eprintln!("bad send: {line}");
                            continue;
                        };
                        outbox.send(Envelope::new(to, id, text.to_owned())).await?;
                    }
                    (Some("stats"), ..) => {
                        let s = server.stats();
                        println!(
                            "stats sent={} delivered={} dropped_outgoing={} dropped_incoming={}",
                            s.sent, s.delivered, s.dropped_outgoing, s.dropped_incoming
                        );
                    }
                    (Some("quit"), ..) => break,
                    _ => eprintln!("unknown command: {line}"),
                }
            }
        }
    }
    server.shutdown().await;
    println!("bye");
    Ok(())
}

fn print_connected(changes: &mut tokio::sync::watch::Receiver<cluster_core::PeerSet>) {
    let set: Vec<String> = changes
        .borrow_and_update()
        .iter()
        .map(|p| p.to_string())
        .collect();
    println!("connected {}", set.join(" "));
}
