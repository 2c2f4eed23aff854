//! Helpers these tests share: nodes on a backend, receiving, and proving that nothing else
//! is on the way. Ports, options and waiting come from `cluster_testkit::net`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster_core::{Config, Envelope, Options, Pid, Server, TransportError};
pub(crate) use cluster_testkit::net::expect::{
    connected as wait_connected, next, until as wait_until,
};
use cluster_testkit::net::{self, DEADLINE, Relay, Shape};
use cluster_zmq::{Backend, LinkStats};

/// Pids `1..=n` on fresh loopback ports, with quick heartbeats, for nodes started later
/// (outside the ephemeral range nobody else is handed them meanwhile; see `net`).
pub(crate) fn local_config(n: usize) -> Config {
    net::local_config(n, net::fast_options()).unwrap()
}

/// Pids `1..=n` on fresh loopback ports with `options`, and node `pid` started for every
/// pid in `now`, as incarnation 0. If a port was taken meanwhile, everything starts over
/// on fresh ports (`net::bind_local`).
pub(crate) async fn start_on_fresh_ports(
    backend: Backend,
    n: usize,
    options: Options,
    now: &[Pid],
) -> (Config, Vec<Server<String>>) {
    net::bind_local(n, options, async |config| {
        let mut servers = Vec::new();
        for &pid in now {
            servers.push(try_start_as(backend, pid, config, 0).await?);
        }
        Ok(servers)
    })
    .await
    .unwrap()
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
    try_start_as(backend, pid, config, incarnation)
        .await
        .unwrap()
}

/// Binds node `pid` on `backend` and starts its server; a port in use is an error.
pub(crate) async fn try_start_as(
    backend: Backend,
    pid: Pid,
    config: &Config,
    incarnation: u32,
) -> Result<Server<String>, TransportError> {
    Ok(try_start_linked(backend, pid, config, incarnation).await?.0)
}

/// [`try_start_as`], with the transport's own counters.
pub(crate) async fn try_start_linked(
    backend: Backend,
    pid: Pid,
    config: &Config,
    incarnation: u32,
) -> Result<(Server<String>, LinkStats), TransportError> {
    let transport = cluster_zmq::bind_with(backend, pid, config).await?;
    assert_eq!(transport.backend(), backend);
    let link = transport.link_stats();
    let server = Server::<String>::builder(pid, config.clone())
        .incarnation(incarnation)
        .build(transport)
        .unwrap();
    Ok((server, link))
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

/// Nodes `1..=n` on loopback where every connection to a node that `relayed` selects goes
/// through a [`Relay`] of its own, shaped by `shape`: each node's config names such a peer
/// by its relay's address (and itself by its real one).
pub(crate) struct Relayed {
    /// Each node's config, by pid.
    pub(crate) configs: BTreeMap<Pid, Config>,
    /// The relay in front of each relayed node, by pid.
    pub(crate) relays: BTreeMap<Pid, Relay>,
    /// Each node's transport counters, by pid.
    pub(crate) links: BTreeMap<Pid, LinkStats>,
}

impl Relayed {
    pub(crate) fn config(&self, pid: Pid) -> &Config {
        &self.configs[&pid]
    }

    pub(crate) fn relay(&self, pid: Pid) -> &Relay {
        &self.relays[&pid]
    }
}

/// Starts every node of a [`Relayed`] cluster as incarnation 0, on fresh ports (starting
/// over on fresh ones if a port was taken meanwhile).
pub(crate) async fn start_relayed(
    backend: Backend,
    n: usize,
    options: Options,
    shape: Shape,
    relayed: impl Fn(Pid) -> bool,
) -> (Relayed, Vec<Server<String>>) {
    let (_, started) = net::bind_local(n, options, async |direct| {
        let other = |e: std::io::Error| TransportError::Other(format!("relay: {e}"));
        let mut relays = BTreeMap::new();
        for peer in direct.peers() {
            if relayed(peer.pid) {
                let relay = Relay::with_shape(&peer.address, shape, peer.pid as u64)
                    .await
                    .map_err(other)?;
                relays.insert(peer.pid, relay);
            }
        }
        let mut configs = BTreeMap::new();
        let mut links = BTreeMap::new();
        let mut servers = Vec::new();
        for me in direct.pids() {
            let peers = direct.peers().iter().map(|p| match relays.get(&p.pid) {
                Some(relay) if p.pid != me => (p.pid, relay.address().to_owned()),
                _ => (p.pid, p.address.clone()),
            });
            let config = Config::from_peers(peers, direct.options().clone()).unwrap();
            let (server, link) = try_start_linked(backend, me, &config, 0).await?;
            servers.push(server);
            links.insert(me, link);
            configs.insert(me, config);
        }
        Ok((
            Relayed {
                configs,
                relays,
                links,
            },
            servers,
        ))
    })
    .await
    .unwrap();
    started
}

/// Waits until everything `from` was given for `to` has been routed and has ended,
/// delivered or dropped with a reason (on a healthy link, nothing else can happen): e.g.
/// a marker [`drain_until_marker`] sent twice is no longer on its way.
pub(crate) async fn wait_accounted(from: &Server<String>, to: &Server<String>) {
    // Sends are routed in the sender's task: nothing waits to be routed.
    wait_until("every message to be delivered or dropped", || {
        let (sent, got) = (from.stats().peers[&to.pid()], to.stats().peers[&from.pid()]);
        sent.sent == got.delivered + sent.dropped_to.total() + got.dropped_from.total()
    })
    .await;
}
