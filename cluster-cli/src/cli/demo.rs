//! `cluster demo`: the nodes of a config as separate processes on real ZeroMQ, with a crash
//! and a restart, and a table of what happened to every message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use cluster::{Config, Pid};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::Failure;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// The cluster's config file (at least 3 nodes, addresses on this machine).
    #[arg(long, value_name = "FILE", default_value = "config.json")]
    config: PathBuf,
    /// Messages per node in each phase.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    messages: u64,
    /// Run the nodes with a fresh random cluster key: every frame carries a MAC (keyed
    /// BLAKE3), and frames without a valid one are dropped (`unauthenticated`). A key in
    /// the config itself (`key_file`, `key_env`) is used without this flag too.
    #[arg(long)]
    key: bool,
}

/// How long any one phase may take before the demo gives up.
const PHASE_DEADLINE: Duration = Duration::from_secs(15);

struct Node {
    pid: Pid,
    child: Child,
    stdin: ChildStdin,
    events: mpsc::Receiver<Value>,
    /// Every peer event the node printed (its event stream), as it came.
    peer_events: Arc<Mutex<Vec<Value>>>,
}

impl Node {
    async fn spawn(pid: Pid, config: &Path, wait: Duration) -> anyhow::Result<Self> {
        Self::spawn_as("node", pid, config, wait).await
    }

    /// `cluster <subcommand>` (`node`, or `join`) for node `pid`.
    async fn spawn_as(
        subcommand: &str,
        pid: Pid,
        config: &Path,
        wait: Duration,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the cluster binary")?;
        let mut child = Command::new(exe)
            .args([
                subcommand,
                "--json",
                "--quiet",
                "--pid",
                &pid.to_string(),
                "--wait",
                &wait.as_secs().to_string(),
                "--config",
            ])
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Every child dies with the demo, whatever way the demo ends.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {pid}"))?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, events) = mpsc::channel(64);
        let peer_events = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&peer_events);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if v["event"] == "peer" {
                            log.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(v.clone());
                        }
                        if tx.send(v).await.is_err() {
                            break;
                        }
                    }
                    Err(_) => tracing::warn!(pid, "unexpected output from node: {line}"),
                }
            }
        });
        Ok(Self {
            pid,
            child,
            stdin,
            events,
            peer_events,
        })
    }

    /// Whether the node told `kind` (`up`, `down`, `joined`, …) about `about`.
    fn told(&self, kind: &str, about: Pid) -> bool {
        self.peer_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|e| e["kind"] == kind && e["pid"] == about)
    }

    /// The node's event stream so far, one line per event, timed from `since`.
    fn event_stream(&self, since: SystemTime) -> Vec<String> {
        let since_ms = since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.peer_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|e| {
                let at = e["at_ms"].as_u64().unwrap_or(0).saturating_sub(since_ms);
                let incarnation = e["incarnation"]
                    .as_u64()
                    .map(|i| format!(" (incarnation {i})"))
                    .unwrap_or_default();
                format!(
                    "[{:5.1}s] {} {}{incarnation}",
                    at as f64 / 1000.0,
                    e["kind"].as_str().unwrap_or("?"),
                    e["pid"]
                )
            })
            .collect()
    }

    fn os_pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn command(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .with_context(|| format!("node {} stopped taking commands", self.pid))
    }

    /// The next event named `name`, skipping others.
    async fn expect(&mut self, name: &str) -> anyhow::Result<Value> {
        let pid = self.pid;
        let wait = async {
            while let Some(v) = self.events.recv().await {
                if v["event"] == name {
                    return Ok(v);
                }
            }
            Err(anyhow!(
                "node {pid} exited while the demo waited for \"{name}\""
            ))
        };
        tokio::time::timeout(PHASE_DEADLINE, wait)
            .await
            .map_err(|_| {
                anyhow!("node {pid} did not report \"{name}\" within {PHASE_DEADLINE:?}")
            })?
    }

    async fn stats(&mut self) -> anyhow::Result<Value> {
        self.command("stats").await?;
        self.expect("stats").await
    }

    async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("kill -9")
    }
}

struct Demo {
    start: Instant,
    /// The same moment by the wall clock (node events carry wall-clock times).
    wall_start: SystemTime,
    config_path: PathBuf,
    /// How long a node waits for its peers: the nodes start one after the other, so the
    /// first waits for the last (10 s, and a quarter second more per node).
    connect_wait: Duration,
    nodes: BTreeMap<Pid, Node>,
    /// Whether the nodes' config has a cluster key (each node must say it runs with it).
    keyed: bool,
}

impl Demo {
    fn say(&self, text: impl std::fmt::Display) {
        println!("[{:5.1}s] {text}", self.start.elapsed().as_secs_f64());
    }

    fn node(&mut self, pid: Pid) -> anyhow::Result<&mut Node> {
        self.nodes
            .get_mut(&pid)
            .ok_or_else(|| anyhow!("node {pid} is not running"))
    }

    /// Starts `pid` and waits until it reports its incarnation and that its peers connected.
    async fn start_node(&mut self, pid: Pid) -> anyhow::Result<u64> {
        let mut node = Node::spawn(pid, &self.config_path, self.connect_wait).await?;
        let ready = node.expect("ready").await?;
        let incarnation = ready["incarnation"].as_u64().unwrap_or_default();
        if ready["keyed"].as_bool() != Some(self.keyed) {
            bail!(
                "node {pid} runs {}, but the demo's config {} a cluster key",
                if self.keyed {
                    "without a key"
                } else {
                    "with a key"
                },
                if self.keyed { "has" } else { "has no" }
            );
        }
        self.say(format!(
            "  node {pid} up: os pid {}, incarnation {incarnation}, {}",
            node.os_pid(),
            ready["address"].as_str().unwrap_or("?")
        ));
        self.nodes.insert(pid, node);
        Ok(incarnation)
    }

    async fn wait_connected(&mut self, pid: Pid) -> anyhow::Result<()> {
        let deadline = self.connect_wait + PHASE_DEADLINE;
        let node = self.node(pid)?;
        let v = tokio::time::timeout(deadline, async {
            loop {
                match node.events.recv().await {
                    Some(v) if v["event"] == "connected" => return Ok(v),
                    Some(v) if v["event"] == "connect_timeout" => {
                        return Err(anyhow!("node {pid} connected only to {}", v["peers"]));
                    }
                    Some(_) => {}
                    None => return Err(anyhow!("node {pid} exited")),
                }
            }
        })
        .await
        .map_err(|_| anyhow!("node {pid}: peers did not connect"))??;
        drop(v);
        Ok(())
    }

    /// Polls every node's stats until `done` holds for all of them.
    async fn wait_until(
        &mut self,
        what: &str,
        done: impl Fn(Pid, &Value) -> bool,
    ) -> anyhow::Result<BTreeMap<Pid, Value>> {
        let deadline = Instant::now() + PHASE_DEADLINE;
        loop {
            let mut all = BTreeMap::new();
            for (pid, node) in &mut self.nodes {
                all.insert(*pid, node.stats().await?);
            }
            if all.iter().all(|(p, s)| done(*p, s)) {
                return Ok(all);
            }
            if Instant::now() > deadline {
                return Err(gave_up(what, &all, |p, s| done(p, s)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Fails unless `actual` equals `expected` on every node: the demo's claims are checked,
/// not just printed (more than expected would be a duplicate or a phantom).
fn exactly(
    all: &BTreeMap<Pid, Value>,
    what: &str,
    expected: impl Fn(Pid) -> u64,
    actual: impl Fn(Pid, &Value) -> u64,
) -> anyhow::Result<()> {
    for (pid, s) in all {
        let (want, got) = (expected(*pid), actual(*pid, s));
        if want != got {
            bail!("node {pid}: {got} messages {what}, expected exactly {want}");
        }
    }
    Ok(())
}

/// The error of a phase that did not finish: what was expected, a line per node that had
/// not got there (its counters and nonzero drops), and where the full stats were written.
fn gave_up(
    what: &str,
    all: &BTreeMap<Pid, Value>,
    done: impl Fn(Pid, &Value) -> bool,
) -> anyhow::Error {
    let mut text = format!(
        "gave up after {PHASE_DEADLINE:?}: expected {what}, but {} of {} nodes did not get there:",
        all.iter().filter(|(p, s)| !done(**p, s)).count(),
        all.len()
    );
    for (pid, s) in all.iter().filter(|(p, s)| !done(**p, s)) {
        let drops = s["dropped"].as_object().map_or_else(String::new, |d| {
            d.iter()
                .map(|(reason, n)| format!("{reason} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        text.push_str(&format!(
            "\n  node {pid}: sent {}, delivered {}, dropped {}",
            count(s, &["sent"]),
            count(s, &["delivered"]),
            if drops.is_empty() {
                "none".into()
            } else {
                drops
            },
        ));
    }
    // Beside the demo's own directory, which is removed when the demo ends.
    let path = std::env::temp_dir().join(format!("cluster-demo-{}-stats.json", std::process::id()));
    match std::fs::write(&path, format!("{:#}\n", json!(all))) {
        Ok(()) => text.push_str(&format!(
            "\nevery node's full stats (per peer, per reason): {}",
            path.display()
        )),
        Err(e) => text.push_str(&format!(
            "\n(could not write the full stats to {}: {e})",
            path.display()
        )),
    }
    text.push_str(
        "\nbackpressure drops mean a queue was full: fewer --messages, or larger \
         inbox_capacity / peer_queue in the config, give the nodes room",
    );
    anyhow!(text)
}

fn connected_to(stats: &Value, peer: Pid) -> bool {
    stats["connected"]
        .as_array()
        .is_some_and(|c| c.iter().any(|p| p.as_i64() == Some(i64::from(peer))))
}

fn count(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, key| &v[*key]).as_u64().unwrap_or(0)
}

/// The config the demo's nodes run with: the user's peers and options (and cluster key, if
/// any), with each node's catalog in the demo's own directory; with `fresh_key`, a new random
/// key written there.
fn demo_config(
    config: &Config,
    config_path: &Path,
    dir: &Path,
    fresh_key: bool,
) -> anyhow::Result<Value> {
    let o = config.options();
    let mut v = json!({
        "peers": config.peers().iter().map(|p| json!({"pid": p.pid, "address": p.address})).collect::<Vec<_>>(),
        "inbox_capacity": o.inbox_capacity,
        "outbox_capacity": o.outbox_capacity,
        "peer_queue": o.peer_queue,
        "max_message_size": o.max_message_size,
        "linger_ms": o.linger.as_millis() as u64,
        "heartbeat_interval_ms": o.heartbeat_interval.as_millis() as u64,
        "heartbeat_timeout_ms": o.heartbeat_timeout.as_millis() as u64,
        "send_timeout_ms": o.send_timeout.as_millis() as u64,
        "idle_connection_timeout_ms": o.idle_connection_timeout.as_millis() as u64,
        "peer_queue_bytes": o.peer_queue_bytes,
        "inbox_bytes": o.inbox_bytes,
        "encrypt": o.encrypt,
        "mac": o.mac.name(),
        "catalog_dir": dir.join("catalog-{pid}").display().to_string(),
    });
    if let Some(cap) = o.max_inbound_connections {
        v["max_inbound_connections"] = json!(cap);
    }
    if fresh_key {
        let path = dir.join("cluster.key");
        std::fs::write(&path, random_key_hex()?)
            .with_context(|| format!("writing {}", path.display()))?;
        v["key_file"] = json!(path.display().to_string());
    } else if let Some(file) = &o.key_file {
        // Relative to the user's config file, as the nodes' config lives elsewhere.
        let base = config_path.parent().unwrap_or(Path::new("."));
        let path = std::path::absolute(base.join(file))
            .with_context(|| format!("locating the key file {}", file.display()))?;
        v["key_file"] = json!(path.display().to_string());
    } else if let Some(var) = &o.key_env {
        v["key_env"] = json!(var);
    }
    Ok(v)
}

/// 32 random bytes from the OS, as the 64 hex digits a key file holds.
fn random_key_hex() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading 32 random bytes from /dev/urandom for the cluster key")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn run(args: DemoArgs) -> Result<(), Failure> {
    let config = Config::load(&args.config).map_err(Failure::usage)?;
    if config.peers().len() < 3 {
        return Err(Failure::usage(anyhow!(
            "{}: the demo needs at least 3 nodes, the config has {}",
            args.config.display(),
            config.peers().len()
        )));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::select! {
            result = demo(&config, &args) => result.map_err(Failure::from),
            _ = tokio::signal::ctrl_c() => {
                // Dropping the demo kills every child (kill_on_drop).
                Err(Failure { error: anyhow!("interrupted; all nodes stopped"), code: 130 })
            }
        }
    })
}

async fn demo(config: &Config, args: &DemoArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("cluster-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_phases(config, args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_phases(config: &Config, args: &DemoArgs, dir: &Path) -> anyhow::Result<()> {
    let config_path = dir.join("config.json");
    let node_config = demo_config(config, &args.config, dir, args.key)?;
    let keyed = node_config.get("key_file").is_some() || node_config.get("key_env").is_some();
    std::fs::write(&config_path, node_config.to_string())
        .with_context(|| format!("writing {}", config_path.display()))?;
    let pids: Vec<Pid> = config.pids().collect();
    let n = pids.len() as u64;
    let m = args.messages;
    let victim = *pids.last().context("no nodes")?;
    let others: Vec<Pid> = pids.iter().copied().filter(|p| *p != victim).collect();
    let mut demo = Demo {
        start: Instant::now(),
        wall_start: SystemTime::now(),
        config_path,
        connect_wait: Duration::from_secs(10) + Duration::from_millis(250) * pids.len() as u32,
        nodes: BTreeMap::new(),
        keyed,
    };

    demo.say(format!(
        "starting {n} nodes of {} as separate processes, ZeroMQ ({}) over loopback",
        args.config.display(),
        cluster::zmq::Backend::default()
    ));
    for &pid in &pids {
        demo.start_node(pid).await?;
    }
    for &pid in &pids {
        demo.wait_connected(pid).await?;
    }
    demo.say("all nodes connected to all peers");
    if keyed {
        let options = config.options();
        demo.say(if options.encrypt {
            "every frame is encrypted and authenticated under the cluster key \
             (XChaCha20-Poly1305)"
                .to_owned()
        } else {
            format!(
                "every frame carries a MAC under the cluster key ({})",
                options.mac
            )
        });
    }

    demo.say(format!("broadcast: every node broadcasts {m} messages"));
    for &pid in &pids {
        demo.node(pid)?
            .command(&format!("burst * {m} hello"))
            .await?;
    }
    let after_broadcast = demo
        .wait_until("every node delivered every broadcast", |_, s| {
            count(s, &["delivered"]) >= (n - 1) * m
        })
        .await?;
    exactly(
        &after_broadcast,
        "delivered after the broadcasts",
        |_| (n - 1) * m,
        |_, s| count(s, &["delivered"]),
    )?;
    demo.say(format!(
        "  every node delivered {} ({} peers × {m})",
        (n - 1) * m,
        n - 1
    ));

    demo.say(format!(
        "peer to peer: node i sends {m} messages to the next node in a ring"
    ));
    for (i, &pid) in pids.iter().enumerate() {
        let next = pids[(i + 1) % pids.len()];
        demo.node(pid)?
            .command(&format!("burst {next} {m} ring"))
            .await?;
    }
    let after_ring = demo
        .wait_until("the ring messages arrived", |_, s| {
            count(s, &["delivered"]) >= n * m
        })
        .await?;
    exactly(
        &after_ring,
        "delivered after the ring",
        |_| n * m,
        |_, s| count(s, &["delivered"]),
    )?;
    demo.say(format!(
        "  every node delivered {m} more from its ring neighbour"
    ));

    let os_pid = demo.node(victim)?.os_pid();
    demo.say(format!("kill -9 node {victim} (os pid {os_pid})"));
    demo.node(victim)?.kill().await?;
    let dead = demo.nodes.remove(&victim);
    drop(dead);
    demo.wait_until("the others notice", |_, s| !connected_to(s, victim))
        .await?;
    demo.say(format!("  nodes {others:?} see node {victim} disconnected"));
    let before: BTreeMap<Pid, Value> = demo.wait_until("stats", |_, _| true).await?;
    demo.say(format!(
        "while node {victim} is down, nodes {others:?} each send {m} to it and broadcast {m}"
    ));
    for &pid in &others {
        demo.node(pid)?
            .command(&format!("burst {victim} {m} lost"))
            .await?;
        demo.node(pid)?
            .command(&format!("burst * {m} carry-on"))
            .await?;
    }
    let k = others.len() as u64;
    let victim_key = victim.to_string();
    let after_down = demo
        .wait_until("the others delivered each other's broadcasts", |pid, s| {
            let b = &before[&pid];
            count(s, &["delivered"]).saturating_sub(count(b, &["delivered"])) >= (k - 1) * m
                && count(s, &["peers", &victim_key, "sent"])
                    .saturating_sub(count(b, &["peers", &victim_key, "sent"]))
                    >= 2 * m
        })
        .await?;
    exactly(
        &after_down,
        "delivered from the others while the victim was down",
        |_| (k - 1) * m,
        |pid, s| count(s, &["delivered"]) - count(&before[&pid], &["delivered"]),
    )?;
    let mut dropped_to_victim = 0;
    for (pid, s) in &after_down {
        let dropped = count(s, &["peers", &victim_key, "dropped_to", "unreachable"]);
        dropped_to_victim += dropped
            - count(
                &before[pid],
                &["peers", &victim_key, "dropped_to", "unreachable"],
            );
    }
    // Sent after the others saw node {victim} down (their monitors said so), every copy to
    // it is refused at once as unreachable: exactly 2m per sender, nothing else.
    if dropped_to_victim != 2 * m * k {
        bail!(
            "expected all {} messages sent to node {victim} while it was down to be dropped \
             as unreachable, but {dropped_to_victim} were; run `cluster node` by hand to look \
             at each node's per-peer counters (`stats`)",
            2 * m * k
        );
    }
    demo.say(format!(
        "  all {dropped_to_victim} messages to node {victim} dropped and counted as unreachable; \
         the others delivered all {} of each other's broadcasts",
        k * (k - 1) * m
    ));

    demo.say(format!("restart node {victim}"));
    let incarnation = demo.start_node(victim).await?;
    demo.wait_connected(victim).await?;
    demo.say(format!(
        "  node {victim} rejoined as incarnation {incarnation}"
    ));
    demo.wait_until("the others reconnect", |pid, s| {
        pid == victim || connected_to(s, victim)
    })
    .await?;
    for &pid in &others {
        demo.node(pid)?
            .command(&format!("burst {victim} {m} welcome-back"))
            .await?;
    }
    demo.wait_until("the restarted node got the new messages", |pid, s| {
        pid != victim || count(s, &["delivered"]) >= k * m
    })
    .await?;
    // A fresh look at every node once the last message has arrived: the table then shows
    // every counter settled (a node polled before the victim may still have been routing).
    let last = demo.wait_until("final stats", |_, _| true).await?;
    let got = count(&last[&victim], &["delivered"]);
    if got != k * m {
        bail!(
            "node {victim} delivered {got} messages after its restart, expected exactly {}: \
             something sent while it was down arrived late",
            k * m
        );
    }
    demo.say(format!(
        "  node {victim} delivered exactly the {got} messages sent after it came back; \
         none of those sent while it was down"
    ));

    println!();
    print_table(&last, victim);
    println!();

    join_and_leave(&mut demo, &node_config, dir, &pids, m).await?;

    let observer = pids[0];
    demo.say(format!(
        "node {observer}'s peer events (`cluster node` prints them as they happen):"
    ));
    let since = demo.wall_start;
    for line in demo.node(observer)?.event_stream(since) {
        println!("    {line}");
    }
    for node in demo.nodes.values_mut() {
        node.command("quit").await?;
    }
    for (pid, mut node) in std::mem::take(&mut demo.nodes) {
        node.expect("stopped").await?;
        let status = tokio::time::timeout(PHASE_DEADLINE, node.child.wait())
            .await
            .map_err(|_| anyhow!("node {pid} did not exit"))??;
        if !status.success() {
            bail!("node {pid} exited with {status}");
        }
    }
    demo.say("all nodes stopped cleanly");
    Ok(())
}

/// A node that is in no member's config joins the running cluster (`cluster join`), gets
/// and sends broadcasts, then leaves: every member must tell `joined`, then `left`.
async fn join_and_leave(
    demo: &mut Demo,
    node_config: &Value,
    dir: &Path,
    pids: &[Pid],
    m: u64,
) -> anyhow::Result<()> {
    let joiner = pids.iter().max().copied().unwrap_or(0) + 1;
    let port = {
        // A free port, released just before the node binds it.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        probe.local_addr().context("finding a free port")?.port()
    };
    let address = format!("127.0.0.1:{port}");
    let mut config = node_config.clone();
    if let Some(peers) = config["peers"].as_array_mut() {
        peers.push(json!({"pid": joiner, "address": address}));
    }
    let path = dir.join("joiner.json");
    std::fs::write(&path, config.to_string())
        .with_context(|| format!("writing {}", path.display()))?;
    demo.say(format!(
        "node {joiner} joins the running cluster (`cluster join`): it is in no member's config"
    ));
    let mut node = Node::spawn_as("join", joiner, &path, demo.connect_wait).await?;
    node.expect("ready").await?;
    let joined = node.expect("joined").await?;
    demo.say(format!("  node {joiner} is up with {}", joined["peers"]));
    demo.nodes.insert(joiner, node);
    let members: Vec<Pid> = pids.to_vec();
    let deadline = Instant::now() + PHASE_DEADLINE;
    while !members.iter().all(|p| {
        demo.nodes
            .get(p)
            .is_some_and(|n| n.told("joined", joiner) && n.told("up", joiner))
    }) {
        if Instant::now() > deadline {
            bail!("not every member told that node {joiner} joined and is up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    demo.say(format!("  every member told: joined {joiner}, up {joiner}"));
    let before = demo.wait_until("stats", |_, _| true).await?;
    let first = pids[0];
    demo.node(first)?
        .command(&format!("burst * {m} to-all"))
        .await?;
    demo.node(joiner)?
        .command(&format!("burst * {m} from-the-new-node"))
        .await?;
    let after = demo
        .wait_until(
            "the broadcasts reached the new node and from it",
            |pid, s| {
                let gained =
                    count(s, &["delivered"]).saturating_sub(count(&before[&pid], &["delivered"]));
                gained
                    >= if pid == first || pid == joiner {
                        m
                    } else {
                        2 * m
                    }
            },
        )
        .await?;
    exactly(
        &after,
        "delivered after node 1's and the new node's broadcasts",
        |pid| {
            if pid == first || pid == joiner {
                m
            } else {
                2 * m
            }
        },
        |pid, s| count(s, &["delivered"]) - count(&before[&pid], &["delivered"]),
    )?;
    demo.say(format!(
        "  node {joiner} delivered node {first}'s {m} broadcasts, and every member its {m}"
    ));
    demo.say(format!("node {joiner} leaves (`leave`)"));
    let mut node = demo.nodes.remove(&joiner).context("the new node is gone")?;
    node.command("leave").await?;
    node.expect("left").await?;
    let deadline = Instant::now() + PHASE_DEADLINE;
    while !members
        .iter()
        .all(|p| demo.nodes.get(p).is_some_and(|n| n.told("left", joiner)))
    {
        if Instant::now() > deadline {
            bail!("not every member told that node {joiner} left");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = tokio::time::timeout(PHASE_DEADLINE, node.child.wait())
        .await
        .map_err(|_| anyhow!("node {joiner} did not exit"))??;
    if !status.success() {
        bail!("node {joiner} exited with {status}");
    }
    demo.say(format!("  every member told: left {joiner}"));
    Ok(())
}

fn print_table(last: &BTreeMap<Pid, Value>, victim: Pid) {
    let reasons = [
        "unreachable",
        "backpressure",
        "unknown_peer",
        "malformed",
        "stale_incarnation",
        "too_large",
        "replayed",
        "unauthenticated",
    ];
    println!(
        "{:>5} {:>10} {:>9} {:>9} {:>11}  dropped: {}",
        "node",
        "inc",
        "sent",
        "delivered",
        "unconfirmed",
        reasons.join(" ")
    );
    for (pid, s) in last {
        // The victim's row is its second incarnation; its first died with kill -9.
        let note = if *pid == victim {
            " (after restart)"
        } else {
            ""
        };
        let drops: Vec<String> = reasons
            .iter()
            .map(|r| format!("{:>w$}", count(s, &["dropped", r]), w = r.len()))
            .collect();
        println!(
            "{pid:>5} {:>10} {:>9} {:>9} {:>11}           {}{note}",
            count(s, &["incarnation"]),
            count(s, &["sent"]),
            count(s, &["delivered"]),
            count(s, &["unconfirmed"]),
            drops.join(" ")
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_phase_that_gives_up_says_what_was_expected_and_names_the_stats_file() {
        let all: BTreeMap<Pid, Value> = [
            (1, json!({"sent": 10, "delivered": 9, "dropped": {}})),
            (
                2,
                json!({"sent": 10, "delivered": 3, "dropped": {"backpressure": 6}}),
            ),
        ]
        .into_iter()
        .collect();
        let e = gave_up("9 deliveries each", &all, |_, s| {
            count(s, &["delivered"]) >= 9
        });
        let text = e.to_string();
        assert!(text.contains("expected 9 deliveries each"), "{text}");
        assert!(text.contains("1 of 2 nodes"), "{text}");
        assert!(
            text.contains("node 2: sent 10, delivered 3, dropped backpressure 6"),
            "{text}"
        );
        assert!(!text.contains("node 1:"), "{text}");
        // A short message; the full stats are in the file it names.
        assert!(text.lines().count() < 8, "{text}");
        let path = text
            .lines()
            .find_map(|l| {
                l.split_once("(per peer, per reason): ")
                    .map(|(_, p)| p.to_owned())
            })
            .unwrap();
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(written["2"]["dropped"]["backpressure"], 6);
        std::fs::remove_file(path).unwrap();
    }
}
