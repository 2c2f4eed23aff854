//! Fixtures shared by the network tests: free loopback ports, configs, nodes, waiting.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use cluster_core::{Config, Envelope, Options, Pid, Server};

/// Generous: loaded CI machines are slow, and tests wait on conditions, not on this.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// `n` distinct free loopback ports, found by binding port 0 (all held at once, so they
/// differ, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Options for tests: quick heartbeats so that silent cuts are detected in well under a second.
pub fn test_options() -> Options {
    Options {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(600),
        linger: Duration::from_millis(200),
        ..Options::default()
    }
}

/// Pids `1..=n` on free loopback ports.
pub fn local_config(n: usize) -> Config {
    let ports = free_ports(n);
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, port)| (i as Pid + 1, format!("127.0.0.1:{port}")));
    Config::from_peers(peers, test_options()).unwrap()
}

pub async fn start(pid: Pid, config: &Config) -> Server<String> {
    start_as(pid, config, 0).await
}

pub async fn start_as(pid: Pid, config: &Config, incarnation: u32) -> Server<String> {
    let transport = cluster_zmq::bind(pid, config).await.unwrap();
    Server::<String>::builder(pid, config.clone())
        .incarnation(incarnation)
        .build(transport)
        .unwrap()
}

/// Waits until `cond` holds, polling every 10 ms, for at most `DEADLINE`.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `pid` sees every peer in `peers` connected.
pub async fn wait_connected(server: &Server<String>, peers: &[Pid]) {
    let mut rx = server.monitor().connection_changes();
    let ok = tokio::time::timeout(
        DEADLINE,
        rx.wait_for(|s| peers.iter().all(|p| s.contains(p))),
    )
    .await;
    assert!(
        matches!(ok, Ok(Ok(_))),
        "node {} never connected to {peers:?}",
        server.pid()
    );
}

/// Receives the next envelope within the deadline.
pub async fn next(server: &mut Server<String>) -> Envelope<String> {
    match tokio::time::timeout(DEADLINE, server.inbox().recv()).await {
        Ok(Some(env)) => env,
        Ok(None) => panic!("inbox of {} closed", server.pid()),
        Err(_) => panic!("node {} received nothing within {DEADLINE:?}", server.pid()),
    }
}

/// Sends `text` to `to`, then sends marker messages until one is received, and returns
/// every text received on `to`'s side before the marker (other markers left out; marker
/// texts must start with "marker"). Proves that nothing else is on the
/// way (FIFO per pair: anything sent before the marker arrives before it).
pub async fn drain_until_marker(
    from: &Server<String>,
    to: &mut Server<String>,
    marker: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    let outbox = from.outbox();
    let start = std::time::Instant::now();
    loop {
        assert!(start.elapsed() < DEADLINE, "marker {marker} never arrived");
        outbox
            .send(Envelope::new(to.pid(), 0, marker.to_string()))
            .await
            .unwrap();
        let wait = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                env = to.inbox().recv() => {
                    let env = env.unwrap();
                    if env.msg == marker {
                        return seen;
                    }
                    if !env.msg.starts_with("marker") {
                        seen.push(env.msg);
                    }
                }
                _ = &mut wait => break,
            }
        }
    }
}
