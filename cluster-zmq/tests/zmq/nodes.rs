//! Helpers these tests share: nodes on a backend, receiving, and proving that nothing else
//! is on the way. Ports, options and waiting come from `cluster_testkit::net`.

use std::time::{Duration, Instant};

use cluster_core::{Config, Envelope, Options, Pid, Server};
use cluster_testkit::net::{self, DEADLINE};
use cluster_zmq::Backend;

/// Pids `1..=n` on free loopback ports, with quick heartbeats.
pub(crate) fn local_config(n: usize) -> Config {
    net::local_config(n, net::fast_options()).unwrap()
}

/// Pids `1..=ports.len()` on the given loopback ports, with `options`.
pub(crate) fn config_on(ports: &[u16], options: Options) -> Config {
    let peers = ports
        .iter()
        .zip(1..)
        .map(|(port, pid): (&u16, Pid)| (pid, format!("127.0.0.1:{port}")));
    Config::from_peers(peers, options).unwrap()
}

/// Waits until `cond` holds, within [`DEADLINE`]; fails the test otherwise.
pub(crate) async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    net::wait_until(what, DEADLINE, cond).await.unwrap();
}

pub(crate) async fn start(backend: Backend, pid: Pid, config: &Config) -> Server<String> {
    start_as(backend, pid, config, 0).await
}

pub(crate) async fn start_as(
    backend: Backend,
    pid: Pid,
    config: &Config,
    incarnation: u32,
) -> Server<String> {
    let transport = cluster_zmq::bind_with(backend, pid, config).await.unwrap();
    assert_eq!(transport.backend(), backend);
    Server::<String>::builder(pid, config.clone())
        .incarnation(incarnation)
        .build(transport)
        .unwrap()
}

/// Waits until `server` sees every peer in `peers` connected.
pub(crate) async fn wait_connected(server: &Server<String>, peers: &[Pid]) {
    net::wait_connected(&server.monitor(), peers, DEADLINE)
        .await
        .unwrap();
}

/// Receives the next envelope within the deadline.
pub(crate) async fn next(server: &mut Server<String>) -> Envelope<String> {
    let pid = server.pid();
    net::recv_within(pid, server.inbox(), DEADLINE)
        .await
        .unwrap()
}

/// Sends marker messages from `from` to `to` until one is received, and returns
/// every text received on `to`'s side before the marker (other markers left out; marker
/// texts must start with "marker"). Proves that nothing else is on the way (FIFO per pair:
/// anything sent before the marker arrives before it).
pub(crate) async fn drain_until_marker(
    from: &Server<String>,
    to: &mut Server<String>,
    marker: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    let outbox = from.outbox();
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < DEADLINE, "marker {marker} never arrived");
        outbox
            .send(Envelope::new(to.pid(), 0, marker.to_string()))
            .await
            .unwrap();
        // Resend the marker every 100 ms: one sent before the link was up may be dropped.
        let resend = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(resend);
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
                _ = &mut resend => break,
            }
        }
    }
}
