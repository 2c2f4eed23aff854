//! `cluster node --metrics ADDR`, read over real HTTP: its counters equal what its `stats`
//! command prints; `cluster members --node ADDR` shows its peers' status, incarnation and
//! last seen while it runs, and `cluster members --config --pid` the same from its catalog
//! once it has stopped.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use cluster::zmq::Backend;
use cluster_testkit::net::{self, DEADLINE, Finished, Process};
use serde_json::Value;

use crate::node::{Node, TestConfig, wait_until};

/// Nodes 1 (serving metrics) and 2 as `cluster node` children; node 3 never starts. On
/// fresh ports until none was taken meanwhile by another test.
async fn start(backend: Backend) -> (TestConfig, u16, Node, Node) {
    for _ in 0..net::BIND_ATTEMPTS {
        let config = TestConfig::new(r#""heartbeat_interval_ms":200"#);
        let port = net::free_ports(1).unwrap()[0];
        let address = format!("127.0.0.1:{port}");
        let one = Node::try_spawn_with(backend, &config.path, 1, &["--metrics", &address]).await;
        let two = Node::try_spawn(backend, &config.path, 2).await;
        match (one, two) {
            (Ok(one), Ok(two)) => {
                assert_eq!(one.events()[0]["metrics"], address.as_str());
                return (config, port, one, two);
            }
            (Err(e), _) | (_, Err(e))
                if e.contains("cannot serve metrics") || e.contains("cannot listen on") => {}
            (Err(e), _) | (_, Err(e)) => panic!("starting nodes 1 and 2: {e}"),
        }
    }
    panic!("no free ports after {} attempts", net::BIND_ATTEMPTS);
}

/// The samples by name and labels (`name{k="v",…}`, labels sorted), from our own reading of
/// the text, independent of `cluster::metrics`'s parser.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let series = match series.split_once('{') {
                Some((name, labels)) => {
                    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                    labels.sort_unstable();
                    format!("{name}{{{}}}", labels.join(","))
                }
                None => series.to_owned(),
            };
            (series, value.parse().unwrap())
        })
        .collect()
}

/// What differs between the served samples and a `stats` event of the same node.
fn differences(served: &BTreeMap<String, f64>, stats: &Value) -> Vec<String> {
    let n = |v: &Value| v.as_u64().unwrap_or(0) as f64;
    // `stats` prints the drops of both directions together, by reason.
    let mut dropped: BTreeMap<String, f64> = BTreeMap::new();
    for (series, v) in served {
        if let Some(labels) = series.strip_prefix("cluster_messages_dropped_total{") {
            let reason = labels.split("reason=\"").nth(1).unwrap();
            *dropped
                .entry(reason.split('"').next().unwrap().into())
                .or_default() += v;
        }
    }
    assert_eq!(dropped.len(), 12, "every reason is served: {dropped:?}");
    let mut want: Vec<(String, f64)> = vec![
        ("cluster_messages_sent_total".into(), n(&stats["sent"])),
        (
            "cluster_messages_delivered_total".into(),
            n(&stats["delivered"]),
        ),
        (
            "cluster_messages_lost_in_transit_total".into(),
            n(&stats["lost_in_transit"]),
        ),
        (
            "cluster_messages_unconfirmed_total".into(),
            n(&stats["unconfirmed"]),
        ),
        (
            "cluster_connected_peers".into(),
            stats["connected"].as_array().unwrap().len() as f64,
        ),
    ];
    for (peer, p) in stats["peers"].as_object().unwrap() {
        let label = format!("{{peer=\"{peer}\"}}");
        for (metric, field) in [
            ("cluster_peer_messages_sent_total", "sent"),
            ("cluster_peer_messages_delivered_total", "delivered"),
            (
                "cluster_peer_messages_lost_in_transit_total",
                "lost_in_transit",
            ),
            ("cluster_peer_messages_unconfirmed_total", "unconfirmed"),
            ("cluster_peer_unacknowledged_frames", "unacknowledged"),
        ] {
            want.push((format!("{metric}{label}"), n(&p[field])));
        }
        for (direction, field) in [("outgoing", "dropped_to"), ("incoming", "dropped_from")] {
            for reason in ["unknown_peer", "unreachable", "backpressure", "malformed"] {
                want.push((
                    format!(
                        "cluster_peer_messages_dropped_total{{direction=\"{direction}\",peer=\"{peer}\",reason=\"{reason}\"}}"
                    ),
                    n(&p[field][reason]),
                ));
            }
        }
    }
    let mut diff: Vec<String> = want
        .into_iter()
        .filter_map(|(series, want)| {
            let got = served.get(&series).copied().unwrap_or(0.0);
            (got != want).then(|| format!("{series}: served {got}, stats {want}"))
        })
        .collect();
    for (reason, got) in dropped {
        let want = n(&stats["dropped"][&reason]);
        if got != want {
            diff.push(format!("dropped {reason}: served {got}, stats {want}"));
        }
    }
    diff
}

/// `cluster members <args> --json`, to its end.
async fn members(args: &[&str]) -> Finished {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cluster"));
        command.arg("members").args(&args).arg("--json");
        Process::run("cluster members", &mut command, "").unwrap()
    })
    .await
    .unwrap()
}

async fn members_json(args: &[&str]) -> Value {
    let out = members(args).await;
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        out.stdout,
        out.stderr
    );
    serde_json::from_str(&out.stdout).unwrap()
}

/// The peer `pid` in `cluster members --json` output.
fn peer(view: &Value, pid: u64) -> &Value {
    view["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("no peer {pid} in {view}"))
}

fn catalog_args(config: &Path) -> Vec<String> {
    vec![
        "--config".into(),
        config.display().to_string(),
        "--pid".into(),
        "1".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_its_counters_and_members_over_http() {
    let (config, port, mut one, mut two) = start(Backend::Libzmq).await;
    let address = format!("127.0.0.1:{port}");
    one.wait_peers(&[2]).await;
    two.wait_peers(&[1]).await;

    // Node 1: 20 to node 2, one to itself, one to node 3 (down: unreachable), one to
    // nobody (unknown_peer); node 2: 5 to node 1.
    for line in ["burst 2 20", "1 me", "3 lost", "7 nobody"] {
        one.command(line);
    }
    two.command("burst 1 5");
    wait_until("node 2 to get node 1's 20 messages", || {
        two.received().len() == 20
    })
    .await;
    wait_until("node 1 to get its own and node 2's 5", || {
        one.received_from().len() == 6
    })
    .await;

    // The endpoint agrees with `stats`, within an exporter interval or so.
    let began = Instant::now();
    let stats = loop {
        one.skip_seen();
        one.command("stats");
        let stats = one.wait_event("stats", |e| e["event"] == "stats").await;
        let text = tokio::task::spawn_blocking(move || net::scrape(port))
            .await
            .unwrap()
            .unwrap();
        let diff = differences(&samples(&text), &stats);
        if diff.is_empty() {
            break stats;
        }
        assert!(
            began.elapsed() < DEADLINE,
            "the endpoint never agreed with stats {stats}:\n{}",
            diff.join("\n")
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(stats["sent"], 23, "{stats}");
    assert_eq!(stats["delivered"], 6, "{stats}");
    assert_eq!(stats["dropped"]["unknown_peer"], 1, "{stats}");
    assert_eq!(
        stats["peers"]["3"]["dropped_to"]["unreachable"], 1,
        "{stats}"
    );

    // A running node's members, from its endpoint.
    let view = members_json(&["--node", &address]).await;
    assert_eq!(view["source"], "metrics", "{view}");
    assert_eq!(view["pid"], 1, "{view}");
    assert_eq!(view["incarnation"], one.incarnation, "{view}");
    assert_eq!(view["peers"].as_array().unwrap().len(), 2, "{view}");
    let two_running = peer(&view, 2).clone();
    assert_eq!(two_running["status"], "up", "{view}");
    assert_eq!(two_running["incarnation"], two.incarnation, "{view}");
    assert!(two_running["last_seen_ms"].as_u64().is_some(), "{view}");
    assert_eq!(
        two_running["address"],
        config_address(&config.path, 2),
        "{view}"
    );
    let three = peer(&view, 3);
    assert_eq!(three["status"], "down", "{view}");
    assert_eq!(three["last_seen"], Value::Null, "{view}");
    // Its catalog is locked meanwhile; the error says where to ask instead.
    let args = catalog_args(&config.path);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let locked = members(&args).await;
    assert_eq!(locked.status.code(), Some(1), "{}", locked.stderr);
    assert!(locked.stderr.contains("--node ADDR"), "{}", locked.stderr);

    // Node 2 stops: node 1 sees it down, and still knows when it last saw it.
    two.quit().await;
    let began = Instant::now();
    loop {
        let view = members_json(&["--node", &address]).await;
        if peer(&view, 2)["status"] == "down" {
            assert_eq!(peer(&view, 2)["incarnation"], two_running["incarnation"]);
            assert!(
                peer(&view, 2)["last_seen_ms"].as_u64() >= two_running["last_seen_ms"].as_u64()
            );
            break;
        }
        assert!(
            began.elapsed() < DEADLINE,
            "node 2 never shown down: {view}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Node 1 stops: its endpoint is gone, and its catalog tells the same.
    let one_incarnation = one.incarnation;
    one.quit().await;
    let gone = members(&["--node", &address]).await;
    assert_eq!(gone.status.code(), Some(1), "{}", gone.stderr);
    assert!(
        gone.stderr
            .contains(&format!("--node {address}: cannot connect")),
        "{}",
        gone.stderr
    );
    let view = members_json(&args).await;
    assert_eq!(view["source"], "catalog", "{view}");
    assert_eq!(view["pid"], 1, "{view}");
    assert_eq!(view["incarnation"], one_incarnation, "{view}");
    let two_stopped = peer(&view, 2);
    assert_eq!(two_stopped["status"], "down", "{view}");
    assert_eq!(
        two_stopped["incarnation"], two_running["incarnation"],
        "{view}"
    );
    assert_eq!(two_stopped["address"], two_running["address"], "{view}");
    assert!(two_stopped["last_seen_ms"].as_u64().is_some(), "{view}");
    assert_eq!(peer(&view, 3)["status"], "down", "{view}");
    assert_eq!(peer(&view, 3)["incarnation"], Value::Null, "{view}");
}

/// The address of `pid` in the config file at `path`.
fn config_address(path: &Path, pid: u64) -> String {
    let config: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned()
}
