//! A `cluster node --json` child process, the in-process node 1, and a config in a
//! temporary directory for each test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::zmq::Backend;
use cluster::{Pid, Server};
pub(crate) use cluster_testkit::net::expect::{
    connected as wait_connected, next, until as wait_until,
};
use cluster_testkit::net::{self, DEADLINE, Process};
use serde_json::Value;

/// A config of pids 1, 2, 3 on free loopback ports, with `options` (JSON members), in a
/// temporary directory of its own (the nodes' catalogs go beside it).
pub(crate) struct TestConfig {
    pub(crate) path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestConfig {
    pub(crate) fn new(options: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Outside the kernel's ephemeral range: no other socket is handed these meanwhile.
        let peers: Vec<String> = net::free_ports(3)
            .unwrap()
            .iter()
            .zip(1..)
            .map(|(port, pid)| format!(r#"{{"pid":{pid},"address":"127.0.0.1:{port}"}}"#))
            .collect();
        // A cluster key beside the config, for the options that name it
        // (`"key_file":"cluster.key"`).
        std::fs::write(dir.path().join("cluster.key"), "5a".repeat(32)).unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            format!(r#"{{"peers":[{}],{options}}}"#, peers.join(",")),
        )
        .unwrap();
        Self { path, _dir: dir }
    }
}

/// Nodes 2 and 3 as `cluster node` children and node 1 in this process, on a fresh
/// [`TestConfig`] with `options`. If a port was taken between the draw and a node's bind
/// (another test drew the same one), everything starts over on fresh ports.
pub(crate) async fn start_three(
    backend: Backend,
    options: &str,
) -> (TestConfig, Server<String>, Node, Node) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let config = TestConfig::new(options);
        let started = async {
            let b = Node::try_spawn(backend, &config.path, 2).await?;
            let c = Node::try_spawn(backend, &config.path, 3).await?;
            let a = cluster::new_with(backend, 1, &config.path)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((a, b, c))
        };
        match started.await {
            Ok((a, b, c)) => return (config, a, b, c),
            Err(e) if e.contains("cannot listen on") && attempt < net::BIND_ATTEMPTS => {}
            Err(e) => panic!("starting nodes 1 to 3: {e}"),
        }
    }
}

/// `cluster node --json` in a child process, killed (SIGKILL) if the test ends first.
pub(crate) struct Node {
    pub(crate) pid: Pid,
    /// The incarnation its `ready` event announced.
    pub(crate) incarnation: cluster::Incarnation,
    process: Process,
}

impl Node {
    /// Starts node `pid` and waits until it is ready (bound, catalog opened).
    pub(crate) async fn spawn(backend: Backend, config: &Path, pid: Pid) -> Self {
        Self::try_spawn(backend, config, pid).await.unwrap()
    }

    /// Like [`spawn`](Self::spawn); the error quotes the child's output (e.g. a port in use).
    pub(crate) async fn try_spawn(
        backend: Backend,
        config: &Path,
        pid: Pid,
    ) -> Result<Self, String> {
        Self::try_spawn_with(backend, config, pid, &[]).await
    }

    /// Like [`try_spawn`](Self::try_spawn), with more arguments for `cluster node`.
    pub(crate) async fn try_spawn_with(
        backend: Backend,
        config: &Path,
        pid: Pid,
        more: &[&str],
    ) -> Result<Self, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cluster"));
        command
            .args(["node", "--json", "--backend", backend.as_str()])
            .args(["--pid", &pid.to_string(), "--config"])
            .arg(config)
            .args(more);
        let mut process = Process::spawn(format!("node {pid}"), &mut command).unwrap();
        let ready = process
            .wait_line("its ready event", |l| event(l)["event"] == "ready")
            .await
            .map_err(|e| e.to_string())?;
        let ready = event(&ready);
        assert_eq!(ready["pid"], pid, "{ready}");
        assert_eq!(ready["backend"], backend.as_str(), "{ready}");
        let incarnation = u32::try_from(ready["incarnation"].as_u64().unwrap()).unwrap();
        Ok(Self {
            pid,
            incarnation,
            process,
        })
    }

    /// Every event printed so far.
    pub(crate) fn events(&self) -> Vec<Value> {
        self.process.lines().iter().map(|l| event(l)).collect()
    }

    /// The texts of the messages received so far, in order (with their senders).
    pub(crate) fn received_from(&self) -> Vec<(Pid, String)> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "message")
            .map(|e| {
                let from = Pid::try_from(e["from"].as_i64().unwrap()).unwrap();
                (from, e["text"].as_str().unwrap().to_owned())
            })
            .collect()
    }

    /// The texts of the messages received so far from node 1, in order.
    pub(crate) fn received(&self) -> Vec<String> {
        self.received_from()
            .into_iter()
            .filter(|(from, _)| *from == 1)
            .map(|(_, text)| text)
            .collect()
    }

    /// Waits for an event matching `pred` after the last one waited for.
    pub(crate) async fn wait_event(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let line = self
            .process
            .wait_line(what, |l| pred(&event(l)))
            .await
            .unwrap();
        event(&line)
    }

    /// Sends one line of the stdin protocol (`<pid> <text>`, `peers`, `quit`, ...).
    pub(crate) fn command(&mut self, line: &str) {
        self.process.send_line(line).unwrap();
    }

    /// Waits until the node reports every peer in `peers` connected (asking with `peers`).
    pub(crate) async fn wait_peers(&mut self, peers: &[Pid]) {
        let began = Instant::now();
        loop {
            self.command("peers");
            let e = self
                .wait_event("its connected peers", |e| e["event"] == "peers")
                .await;
            let connected: Vec<i64> = e["connected"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_i64().unwrap())
                .collect();
            if peers.iter().all(|p| connected.contains(&i64::from(*p))) {
                return;
            }
            assert!(
                began.elapsed() < DEADLINE,
                "node {}: connected to {connected:?}, not to all of {peers:?}",
                self.pid
            );
            // Ask again a little later.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Forgets the events printed so far: later waits see only new ones.
    pub(crate) fn skip_seen(&mut self) {
        self.process.skip_seen();
    }

    /// SIGKILL, by pid.
    pub(crate) fn kill(&mut self) {
        self.process.kill().unwrap();
    }

    /// SIGSTOP, by pid.
    pub(crate) fn stop(&mut self) {
        self.process.stop().unwrap();
    }

    /// SIGCONT, by pid.
    pub(crate) fn cont(&mut self) {
        self.process.cont().unwrap();
    }

    /// Asks it to quit and waits until it has exited cleanly; returns its final stats.
    pub(crate) async fn quit(mut self) -> Value {
        self.command("quit");
        let status = self.process.wait_exit().await.unwrap();
        assert!(
            status.success(),
            "node {} exited with {status}: {}",
            self.pid,
            self.process.stderr_text()
        );
        let events = self.events();
        assert_eq!(events.last().unwrap()["event"], "stopped");
        events
            .iter()
            .rev()
            .find(|e| e["event"] == "stats")
            .unwrap()
            .clone()
    }
}

/// A line of `cluster node --json` as JSON (`null` if it is not JSON).
fn event(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or(Value::Null)
}
