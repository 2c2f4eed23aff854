//! The `cluster` command: the demo end to end (it exercises the whole stack: processes,
//! ZeroMQ, catalogs, kill -9 and restart), the node's stdin protocol, and bad arguments.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster_testkit::net::{self, Finished as Output, Process};

fn cluster() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cluster"))
}

/// Runs `cmd` with `input` on stdin, and returns what it printed; fails the test (killing
/// it) if it runs longer than `deadline`.
fn run(mut cmd: Command, input: &str, deadline: Duration) -> Output {
    Process::spawn("cluster", &mut cmd)
        .unwrap()
        .with_deadline(deadline)
        .finish(input)
        .unwrap()
}

/// A config of `n` nodes on free loopback ports, in `dir`.
fn config(dir: &Path, n: usize) -> PathBuf {
    let peers: Vec<String> = net::free_ports(n)
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, port)| format!(r#"{{"pid":{},"address":"127.0.0.1:{port}"}}"#, i + 1))
        .collect();
    let path = dir.join("config.json");
    std::fs::write(&path, format!(r#"{{"peers":[{}]}}"#, peers.join(","))).unwrap();
    path
}

const DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn the_demo_runs_end_to_end() {
    demo_runs_end_to_end(false);
}

#[test]
fn the_demo_runs_end_to_end_with_a_cluster_key() {
    demo_runs_end_to_end(true);
}

/// The user's own key, named in their config relative to it, with the config named by a
/// relative path: the demo's nodes (whose config lives elsewhere) must find the key and say
/// they run with it.
#[test]
fn the_demo_uses_the_key_file_of_the_users_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 3);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replacen('{', r#"{"key_file":"keys/cluster.key","#, 1),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::write(dir.path().join("keys/cluster.key"), "ab".repeat(32)).unwrap();
    // A relative config path: the demo's nodes run elsewhere, with their own config.
    let mut cmd = cluster();
    cmd.current_dir(dir.path())
        .args(["demo", "--messages", "20", "--config", "config.json"]);
    let out = run(cmd, "", DEADLINE);
    assert!(
        out.status.success(),
        "demo failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout
            .contains("every frame carries a MAC under the cluster key"),
        "{}",
        out.stdout
    );
}

fn demo_runs_end_to_end(key: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 4);
    let mut cmd = cluster();
    cmd.args(["demo", "--messages", "50", "--config"]).arg(&cfg);
    if key {
        cmd.arg("--key");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = run(cmd, "", DEADLINE);
    assert!(status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert_eq!(
        stdout.contains("every frame carries a MAC under the cluster key"),
        key,
        "{stdout}"
    );
    for expected in [
        "all nodes connected to all peers",
        "every node delivered 150 (3 peers × 50)",
        "kill -9 node 4",
        "all 300 messages to node 4 dropped and counted as unreachable",
        "node 4 rejoined as incarnation ",
        "node 4 delivered exactly the 150 messages sent after it came back",
        "all nodes stopped cleanly",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // The table, parsed: every number is what the demo's phases imply for 4 nodes and 50
    // messages (k = 3 survivors). A survivor sent 3×50 broadcast copies, 50 in the ring, 50
    // to node 4 and 3×50 broadcast copies while it was down, and 50 after: 450; it
    // delivered 150 + 50 + 2×50 = 300; 100 (its 50 + its broadcast copy of 50) were dropped
    // as unreachable. Node 4's row is its second incarnation: 150 delivered, nothing sent.
    let header = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("node"))
        .unwrap_or_else(|| panic!("no table in:\n{stdout}"));
    let names: Vec<&str> = header
        .split_whitespace()
        .filter(|w| *w != "dropped:")
        .collect();
    let rows: Vec<Vec<u64>> = stdout
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| {
            l.split_whitespace()
                .take(names.len())
                .map(|w| w.parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    // Incarnations are floored by the clock (seconds since 2025; nodes starting in
    // different seconds differ); node 4's restart is newer than the first starts.
    let first_inc = rows.iter().map(|r| r[1]).min().unwrap_or(0);
    assert!(first_inc > 365 * 24 * 3600, "{stdout}");
    for row in &rows {
        let col = |name: &str| row[names.iter().position(|n| *n == name).unwrap()];
        let expected: [(&str, u64); 5] = if col("node") == 4 {
            assert!(col("inc") > first_inc, "{stdout}");
            [
                ("inc", col("inc")),
                ("sent", 0),
                ("delivered", 150),
                ("unreachable", 0),
                ("unconfirmed", 0),
            ]
        } else {
            // What node 4 had received and not yet acknowledged when it was killed is
            // counted unconfirmed (at most what was sent to it before: 3×50 broadcast
            // copies and 50 in the ring).
            assert!(col("unconfirmed") <= 200, "{stdout}");
            assert!(
                col("inc") >= first_inc && col("inc") <= first_inc + 60,
                "{stdout}"
            );
            [
                ("inc", col("inc")),
                ("sent", 450),
                ("delivered", 300),
                ("unreachable", 100),
                ("node", col("node")),
            ]
        };
        for (name, want) in expected {
            assert_eq!(col(name), want, "column {name} of {row:?} in:\n{stdout}");
        }
        for other in [
            "backpressure",
            "unknown_peer",
            "malformed",
            "stale_incarnation",
            "too_large",
            "replayed",
            "unauthenticated",
        ] {
            assert_eq!(col(other), 0, "column {other} of {row:?} in:\n{stdout}");
        }
    }
}

#[test]
fn a_node_follows_its_stdin() {
    for backend in ["libzmq", "zeromq"] {
        node_follows_its_stdin(backend);
    }
}

fn node_follows_its_stdin(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1);
    let mut cmd = cluster();
    cmd.args([
        "node",
        "--json",
        "--backend",
        backend,
        "--pid",
        "1",
        "--config",
    ])
    .arg(&cfg);
    // To itself, to an unknown pid, a burst, a bad line, then stats; EOF stops it once the
    // burst has been sent.
    let input = "1 hello me\n7 nobody\nburst 1 3\nnonsense here\nstats\n";
    let Output {
        status,
        stdout,
        stderr,
    } = run(cmd, input, DEADLINE);
    assert!(status.success(), "{backend}: {stdout}\n{stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"ready"));
    assert_eq!(events[0]["backend"], backend, "{}", events[0]);
    // The first start: the clock's floor (seconds since 2025), not 1.
    let incarnation = events[0]["incarnation"].as_u64().unwrap();
    assert!(incarnation > 365 * 24 * 3600, "{}", events[0]);
    assert_eq!(kinds.last(), Some(&"stopped"));
    let messages: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["hello me", "burst 0", "burst 1", "burst 2"]);
    // The last stats are printed after shutdown, when every queued send has been routed.
    let stats = events.iter().rev().find(|e| e["event"] == "stats").unwrap();
    assert_eq!(stats["delivered"], 4);
    assert_eq!(stats["dropped"]["unknown_peer"], 1);
    assert!(
        stderr.contains("\"nonsense\" is neither a pid nor *"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_and_configs_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 3);
    let missing = dir.path().join("missing.json");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"peers":[{"pid":1,"address":"nowhere"}]}"#).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["bogus".into()], "unrecognized subcommand"),
        (
            vec!["node".into(), "--pid".into(), "x".into()],
            "invalid value 'x'",
        ),
        (
            vec![
                "node".into(),
                "--pid".into(),
                "9".into(),
                "--config".into(),
                cfg.display().to_string(),
            ],
            "pid 9 is not one of the configured peers",
        ),
        (
            vec![
                "node".into(),
                "--backend".into(),
                "nanomsg".into(),
                "--pid".into(),
                "1".into(),
                "--config".into(),
                cfg.display().to_string(),
            ],
            "unknown backend \"nanomsg\"",
        ),
        (
            vec![
                "demo".into(),
                "--config".into(),
                missing.display().to_string(),
            ],
            "missing.json: cannot read the file",
        ),
        (
            vec![
                "node".into(),
                "--pid".into(),
                "1".into(),
                "--config".into(),
                bad.display().to_string(),
            ],
            "address \"nowhere\" is not host:port",
        ),
        (
            vec![
                "demo".into(),
                "--messages".into(),
                "0".into(),
                "--config".into(),
                cfg.display().to_string(),
            ],
            "0 is not in 1..=100000",
        ),
        (
            vec![
                "node".into(),
                "--pid".into(),
                "1".into(),
                "--config".into(),
                cfg.display().to_string(),
                "--metrics".into(),
                "nowhere".into(),
            ],
            "invalid value 'nowhere' for '--metrics <ADDR>'",
        ),
        (
            vec!["members".into()],
            "the following required arguments were not provided",
        ),
        (
            vec!["members".into(), "--node".into(), "nowhere".into()],
            "--node nowhere: not host:port",
        ),
        (
            vec![
                "members".into(),
                "--config".into(),
                cfg.display().to_string(),
                "--pid".into(),
                "9".into(),
            ],
            "pid 9 is not one of the configured peers",
        ),
    ];
    for (args, expected) in cases {
        let mut cmd = cluster();
        cmd.args(&args);
        let Output {
            status,
            stdout,
            stderr,
        } = run(cmd, "", DEADLINE);
        assert_eq!(status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
    }
}

/// A metrics address that cannot be served is refused before the node starts: no
/// incarnation begun, no catalog written.
#[test]
fn a_busy_metrics_port_is_a_usage_error_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1);
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = squatter.local_addr().unwrap().to_string();
    let mut cmd = cluster();
    cmd.args(["node", "--pid", "1", "--metrics", &busy, "--config"])
        .arg(&cfg);
    let Output { status, stderr, .. } = run(cmd, "", DEADLINE);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("--metrics {busy}: cannot serve metrics there")),
        "{stderr}"
    );
    assert!(
        !dir.path().join(".cluster").exists(),
        "a catalog was written"
    );
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        format!(r#"{{"peers":[{{"pid":1,"address":"127.0.0.1:{port}"}}]}}"#),
    )
    .unwrap();
    let mut cmd = cluster();
    cmd.args(["node", "--pid", "1", "--config"]).arg(&path);
    let Output { status, stderr, .. } = run(cmd, "", DEADLINE);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

#[test]
fn bench_reports_both_sides_as_json() {
    let mut cmd = cluster();
    cmd.env("RUST_LOG", "info");
    cmd.args([
        "bench",
        "--json",
        "--messages",
        "2000",
        "--round-trips",
        "200",
        "--rounds",
        "1",
        "--broadcast",
        "2",
    ]);
    let Output {
        status,
        stdout,
        stderr,
    } = run(cmd, "", DEADLINE);
    assert!(status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["backend"], "libzmq");
    for side in ["bare", "cluster"] {
        assert!(
            report[side]["throughput"].as_f64().unwrap() > 0.0,
            "{report}"
        );
        assert!(
            report[side]["rtt_p50_us"].as_f64().unwrap() > 0.0,
            "{report}"
        );
        assert!(report[side]["delivered"].as_u64().unwrap() > 0, "{report}");
    }
    // The round-trip distribution, on every side: ordered percentiles (never timings).
    for side in ["bare", "cluster", "mem"] {
        let q = |name: &str| {
            report[side][name]
                .as_f64()
                .unwrap_or_else(|| panic!("{side}.{name} missing: {report}"))
        };
        let (p50, p90, p99, p999) = (
            q("rtt_p50_us"),
            q("rtt_p90_us"),
            q("rtt_p99_us"),
            q("rtt_p999_us"),
        );
        assert!(
            0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= p999,
            "{side}: {report}"
        );
    }
    for ratio in ["rtt_p50", "rtt_p90", "rtt_p99", "rtt_p999"] {
        assert!(
            report["ratios"][ratio].as_f64().unwrap() > 0.0,
            "{ratio}: {report}"
        );
    }
    // In memory nothing is lost: every message is delivered.
    let mem = &report["mem"];
    assert_eq!(mem["messages"], 2000, "{report}");
    assert_eq!(mem["delivered"], 2000, "{report}");
    assert!(mem["throughput"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(mem["runtime"], "current-thread", "{report}");
    assert_eq!(report["broadcast"]["peers"], 2);
    assert!(report["ratios"]["throughput"].as_f64().unwrap() > 0.0);
    // Stderr is a pipe here: no progress bar is drawn, but every step is logged at info.
    assert!(
        stderr.contains("[6/8] round 1/1: cluster broadcast"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[8/8] round 1/1: in-memory round trip"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\r'),
        "a progress bar was drawn: {stderr:?}"
    );
}

/// A short run of the dead-peer benchmark: its report has every part, the healthy peer
/// received, and no peer process is left behind. Timings and ratios are not judged here.
#[test]
fn bench_dead_peer_reports_its_phases_and_leaves_nothing_behind() {
    let mut cmd = cluster();
    cmd.args([
        "bench",
        "--dead-peer",
        "--dead-peer-seconds",
        "3",
        "--payload",
        "16",
        "--json",
    ]);
    let Output {
        status,
        stdout,
        stderr,
    } = run(cmd, "", DEADLINE);
    assert!(status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["backend"], "libzmq", "{report}");
    let phases = report["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["before kill", "killed, before stop", "after stop"],
        "{report}"
    );
    for p in phases {
        assert!(
            p["end_s"].as_f64().unwrap() >= p["start_s"].as_f64().unwrap(),
            "{report}"
        );
        assert!(p["healthy_rate"].as_f64().is_some(), "{report}");
        assert!(p["dropped"].is_object(), "{report}");
    }
    let peers = report["peers"].as_array().unwrap();
    let fates: Vec<&str> = peers.iter().map(|p| p["fate"].as_str().unwrap()).collect();
    assert_eq!(fates, ["killed", "stopped", "healthy"], "{report}");
    assert!(peers[2]["received"].as_u64().unwrap() > 0, "{report}");
    assert!(
        !peers[2]["series"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let sender = &report["sender"];
    assert!(sender["messages"].as_u64().unwrap() > 0, "{report}");
    assert!(sender["dropped"].is_object(), "{report}");
    let rss = sender["rss"].as_array().unwrap();
    assert!(!rss.is_empty(), "{report}");
    assert!(sender["rss_min_bytes"].as_u64().unwrap() > 0, "{report}");
    assert!(
        sender["rss_max_bytes"].as_u64().unwrap() >= sender["rss_min_bytes"].as_u64().unwrap(),
        "{report}"
    );
    // Every peer's process is gone (a reused pid would run something else).
    for p in peers {
        let pid = p["process_id"].as_u64().unwrap();
        assert!(pid > 0, "{report}");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains("dead-peer-sink"),
            "peer process {pid} ({}) is still there",
            p["fate"]
        );
    }
}

#[test]
fn bench_on_zeromq_without_the_in_memory_run() {
    let mut cmd = cluster();
    cmd.args([
        "bench",
        "--json",
        "--backend",
        "zeromq",
        "--no-mem",
        "--messages",
        "2000",
        "--round-trips",
        "200",
        "--rounds",
        "1",
        "--broadcast",
        "0",
    ]);
    let Output {
        status,
        stdout,
        stderr,
    } = run(cmd, "", DEADLINE);
    assert!(status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["backend"], "zeromq");
    assert!(report["mem"].is_null(), "{report}");
    assert!(report["broadcast"].is_null(), "{report}");
    for side in ["bare", "cluster"] {
        let q = |name: &str| report[side][name].as_f64().unwrap();
        assert!(
            0.0 < q("rtt_p50_us")
                && q("rtt_p50_us") <= q("rtt_p90_us")
                && q("rtt_p90_us") <= q("rtt_p99_us")
                && q("rtt_p99_us") <= q("rtt_p999_us"),
            "{side}: {report}"
        );
    }
}

#[test]
fn bench_refuses_bad_options() {
    for (args, expected) in [
        (vec!["bench", "--backend", "foo"], "unknown backend \"foo\""),
        (vec!["bench", "--broadcast", "17"], "17 is not in 0..=16"),
        (vec!["bench", "--payload", "0"], "0 is not in 1..=1000000"),
    ] {
        let mut cmd = cluster();
        cmd.args(&args);
        let Output { status, stderr, .. } = run(cmd, "", DEADLINE);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
    }
}
