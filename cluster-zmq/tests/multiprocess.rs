//! Nodes as child processes (the `cluster-zmq-node` binary): kill -9 one mid-stream, check
//! that messages to it are dropped and counted while the others are unaffected, restart it,
//! and check that traffic resumes and nothing sent while it was down arrives. And freeze one
//! (SIGSTOP): the others keep getting every message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_core::{Config, DropReason, Envelope, Pid};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// A node in a child process. Killed (SIGKILL, by pid) when dropped, even if the test fails.
struct NodeProcess {
    pid: Pid,
    child: Child,
    stdin: ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
}

impl NodeProcess {
    async fn spawn(config: &std::path::Path, pid: Pid, incarnation: u32) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cluster-zmq-node"))
            .arg(config)
            .arg(pid.to_string())
            .arg(incarnation.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let node = Self {
            pid,
            child,
            stdin,
            lines,
        };
        node.wait_line("ready", |l| l.starts_with("ready")).await;
        node
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Texts of the messages received, in order.
    fn received(&self) -> Vec<String> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("recv "))
            .filter_map(|l| l.splitn(3, ' ').nth(2).map(str::to_owned))
            .collect()
    }

    async fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) {
        self.wait_line_after(0, what, pred).await;
    }

    /// Waits for a line matching `pred` among those after the first `skip`.
    async fn wait_line_after(&self, skip: usize, what: &str, pred: impl Fn(&str) -> bool) {
        let pid = self.pid;
        wait_until(&format!("node {pid}: {what}"), || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .skip(skip)
                .any(|l| pred(l))
        })
        .await;
    }

    async fn command(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// SIGSTOP or SIGCONT, by pid.
    fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap();
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// SIGKILL, by pid.
    async fn kill9(&mut self) {
        self.child.kill().await.unwrap();
    }

    async fn quit(mut self) {
        self.command("quit").await;
        if tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .is_err()
        {
            self.kill9().await;
        }
    }
}

fn write_config(config_text: String) -> (PathBuf, TempDir) {
    let dir = TempDir::new();
    let path = dir.0.join("config.json");
    std::fs::write(&path, config_text).unwrap();
    (path, dir)
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cluster-zmq-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart() {
    let ports = free_ports(3);
    let text = format!(
        r#"{{"peers":[{{"pid":1,"address":"127.0.0.1:{}"}},{{"pid":2,"address":"127.0.0.1:{}"}},{{"pid":3,"address":"127.0.0.1:{}"}}],
            "heartbeat_interval_ms":100,"heartbeat_timeout_ms":600,"linger_ms":200}}"#,
        ports[0], ports[1], ports[2]
    );
    let (path, _dir) = write_config(text);
    let config = Config::load(&path).unwrap();
    let b = NodeProcess::spawn(&path, 2, 0).await;
    let mut c = NodeProcess::spawn(&path, 3, 0).await;
    let mut a = start(1, &config).await;
    a.wait_for_peers(DEADLINE).await.unwrap();

    // A stream to both children; node 3 is killed in the middle of it.
    const N: i64 = 1500;
    const KILL_AT: i64 = 500;
    let out = a.outbox();
    for i in 0..N {
        if i == KILL_AT {
            c.wait_line("some of the stream", |l| l.starts_with("recv 1 "))
                .await;
            c.kill9().await;
        }
        out.send(Envelope::new(2, i, format!("s-{i}")))
            .await
            .unwrap();
        out.send(Envelope::new(3, i, format!("s-{i}")))
            .await
            .unwrap();
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    wait_until("node 1 to see node 3 go", || {
        !a.connected_peers().contains(&3)
    })
    .await;
    wait_until("drops to node 3", || {
        a.stats().peers[&3].dropped_to.get(DropReason::Unreachable) > 0
    })
    .await;

    // Node 2 is unaffected: the whole stream, in order, nothing dropped.
    let want: Vec<String> = (0..N).map(|i| format!("s-{i}")).collect();
    wait_until("node 2 to get the whole stream", || {
        b.received().len() >= N as usize
    })
    .await;
    assert_eq!(b.received(), want);
    assert_eq!(a.stats().peers[&2].dropped_to.total(), 0);

    // While node 3 is down every message to it is dropped and counted.
    let before = a.stats().peers[&3].dropped_to.get(DropReason::Unreachable);
    for i in 0..100 {
        out.send(Envelope::new(3, i, format!("down-{i}")))
            .await
            .unwrap();
    }
    wait_until("100 more drops to node 3", || {
        a.stats().peers[&3].dropped_to.get(DropReason::Unreachable) == before + 100
    })
    .await;

    // Restart it: traffic resumes, and nothing sent before arrives.
    let mut c = NodeProcess::spawn(&path, 3, 1).await;
    wait_connected(&a, &[3]).await;
    let start = std::time::Instant::now();
    let mut k = 0;
    while !c.received().iter().any(|m| m.starts_with("marker")) {
        assert!(
            start.elapsed() < DEADLINE,
            "node 3 never got a marker after restart"
        );
        out.send(Envelope::new(3, k, format!("marker-{k}")))
            .await
            .unwrap();
        k += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..50 {
        out.send(Envelope::new(3, i, format!("after-{i}")))
            .await
            .unwrap();
    }
    wait_until("node 3 to get what was sent after its restart", || {
        c.received()
            .iter()
            .filter(|m| m.starts_with("after-"))
            .count()
            == 50
    })
    .await;
    let got = c.received();
    assert!(
        got.iter()
            .all(|m| m.starts_with("marker-") || m.starts_with("after-")),
        "node 3 got messages from before its restart: {got:?}"
    );
    // And the restarted node reaches node 1, which sees its new incarnation.
    c.wait_line("connected to node 1", |l| {
        l.strip_prefix("connected")
            .is_some_and(|s| s.split_whitespace().any(|p| p == "1"))
    })
    .await;
    c.command("send 1 77 hello-from-3").await;
    let env = next(&mut a).await;
    assert_eq!(env, Envelope::new(3, 77, "hello-from-3".to_string()));
    assert_eq!(a.stats().peers[&3].incarnation, Some(1));

    b.quit().await;
    c.quit().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_never_holds_up_the_others() {
    let ports = free_ports(3);
    let text = format!(
        r#"{{"peers":[{{"pid":1,"address":"127.0.0.1:{}"}},{{"pid":2,"address":"127.0.0.1:{}"}},{{"pid":3,"address":"127.0.0.1:{}"}}],
            "heartbeat_interval_ms":200,"heartbeat_timeout_ms":2000,"linger_ms":200,"peer_queue":8192}}"#,
        ports[0], ports[1], ports[2]
    );
    let (path, _dir) = write_config(text);
    let config = Config::load(&path).unwrap();
    let b = NodeProcess::spawn(&path, 2, 0).await;
    let mut c = NodeProcess::spawn(&path, 3, 0).await;
    let a = start(1, &config).await;
    a.wait_for_peers(DEADLINE).await.unwrap();

    // Node 3 stops reading (and answering heartbeats) but keeps its connection open.
    c.signal("STOP");
    let out = a.outbox();
    let start = std::time::Instant::now();
    let mut sent = 0i64;
    while sent < 5000 || a.stats().peers[&3].dropped_to.total() == 0 {
        assert!(
            start.elapsed() < DEADLINE,
            "node 3's queue never overflowed"
        );
        for _ in 0..20 {
            out.send(Envelope::new(3, sent, format!("s-{sent}")))
                .await
                .unwrap();
            out.send(Envelope::new(2, sent, format!("s-{sent}")))
                .await
                .unwrap();
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Node 2 got everything, in order, while messages to node 3 were dropped (its queue
    // overflowed, or its silence outlasted the heartbeat timeout).
    let want: Vec<String> = (0..sent).map(|i| format!("s-{i}")).collect();
    wait_until("node 2 to get every message (or a drop to it)", || {
        b.received().len() >= sent as usize || a.stats().peers[&2].dropped_to.total() > 0
    })
    .await;
    // Node 2 is far from its own limits (20 messages a millisecond, deep queue): a drop to it
    // could only come from node 3's trouble.
    assert_eq!(
        a.stats().peers[&2].dropped_to.total(),
        0,
        "{:?}",
        a.stats().peers[&2]
    );
    assert_eq!(b.received(), want);
    assert_eq!(a.stats().peers[&2].dropped_to.total(), 0);
    let to3 = a.stats().peers[&3].dropped_to;
    assert!(
        to3.get(DropReason::Backpressure) + to3.get(DropReason::Unreachable) > 0,
        "{to3}"
    );
    // Thawed, node 3 finds its connections given up; it must survive that (libzmq 4.3.4
    // aborted here when inbound sockets sent heartbeats) and come back.
    let seen = c.lines().len();
    c.signal("CONT");
    wait_connected(&a, &[3]).await;
    c.wait_line_after(seen, "its peers again", |l| l == "connected 1 2")
        .await;
    c.command("send 1 9 thawed").await;
    let mut a = a;
    assert_eq!(
        next(&mut a).await,
        Envelope::new(3, 9, "thawed".to_string())
    );
    b.quit().await;
    c.quit().await;
    a.shutdown().await;
}
