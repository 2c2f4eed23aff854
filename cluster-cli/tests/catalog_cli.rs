//! `cluster catalog show`, run as a process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use cluster_catalog::{NodeCatalog, PeerCatalog};
use cluster_core::Config;
use cluster_testkit::net::{Finished, Process};

/// Runs `cluster <args>` to its end (killed if it outlives the deadline).
fn cluster(args: &[&str]) -> Finished {
    Process::run(
        "cluster",
        Command::new(env!("CARGO_BIN_EXE_cluster")).args(args),
        "",
    )
    .unwrap()
}

/// A config file of 3 nodes in `dir`, and node 2's catalog in its default place.
fn setup(dir: &Path) -> String {
    let file = dir.join("config.json");
    std::fs::write(
        &file,
        r#"{"peers":[{"pid":1,"address":"127.0.0.1:7001"},{"pid":2,"address":"127.0.0.1:7002"},
                     {"pid":3,"address":"node3.example:7003"}]}"#,
    )
    .unwrap();
    let config = Config::load(&file).unwrap();
    let node = NodeCatalog::open(2, &config).unwrap();
    node.catalog()
        .update(3, |r| {
            let mut r = r?;
            r.metadata.insert("zone".into(), "b".into());
            Some(r)
        })
        .unwrap();
    node.catalog().flush().unwrap();
    file.display().to_string()
}

#[test]
fn show_prints_a_table_by_config_and_pid() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let out = cluster(&["catalog", "show", "--config", &config, "--pid", "2"]);
    let stdout = &out.stdout;
    assert!(out.status.success(), "{stdout} {}", out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    let catalog = dir.path().join(".cluster/catalog-2");
    // The incarnation NodeCatalog::open began: floored by the clock (seconds since 2025).
    let incarnation: u64 = lines[0]
        .strip_prefix(&format!(
            "catalog {}: node 2, incarnation ",
            catalog.display()
        ))
        .and_then(|rest| rest.strip_suffix(", 3 peers"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(incarnation > 365 * 24 * 3600, "{stdout}");
    assert!(lines[1].starts_with("PID  ADDRESS"), "{stdout}");
    assert!(
        lines[2].starts_with("1    127.0.0.1:7001      unknown  -"),
        "{stdout}"
    );
    assert!(
        lines[3].starts_with(&format!("2    127.0.0.1:7002      up       {incarnation} ")),
        "{stdout}"
    );
    assert!(
        lines[4].starts_with("3    node3.example:7003  unknown  -"),
        "{stdout}"
    );
    assert!(lines[4].ends_with("zone=b"), "{stdout}");
    assert_eq!(lines.len(), 5);
}

#[test]
fn show_prints_json_by_path() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let path = dir.path().join(".cluster/catalog-2");
    let out = cluster(&[
        "catalog",
        "show",
        "--path",
        path.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["owner"], 2);
    // NodeCatalog::open floors the first incarnation by the clock (seconds since 2025).
    assert!(
        doc["incarnation"].as_u64().unwrap() > 365 * 24 * 3600,
        "{doc}"
    );
    let peers = doc["peers"].as_array().unwrap();
    let pids: Vec<_> = peers.iter().map(|p| p["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids, [1, 2, 3]);
    assert_eq!(peers[1]["status"], "up");
    assert!(peers[1]["last_seen"].as_str().unwrap().ends_with('Z'));
    assert!(peers[1]["last_seen_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(peers[2]["metadata"]["zone"], "b");
    assert_eq!(peers[0]["incarnation"], serde_json::Value::Null);
}

#[test]
fn bad_arguments_and_bad_configs_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"peers":[{"pid":1,"address":"nowhere"}]}"#).unwrap();
    let bad = bad.display().to_string();
    let cases: [(&[&str], &str); 5] = [
        (&["catalog", "show"], "--config"),
        (&["catalog", "show", "--config", &config], "--pid"),
        (
            &["catalog", "show", "--path", "x", "--pid", "1"],
            "cannot be used",
        ),
        (
            &["catalog", "show", "--config", &bad, "--pid", "1"],
            "is not host:port",
        ),
        (
            &["catalog", "show", "--config", &config, "--pid", "9"],
            "pid 9 is not one of",
        ),
    ];
    for (args, expected) in cases {
        let out = cluster(args);
        let stderr = &out.stderr;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn missing_and_locked_catalogs_exit_1_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent");
    let out = cluster(&["catalog", "show", "--path", absent.to_str().unwrap()]);
    let stderr = &out.stderr;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&absent.display().to_string()), "{stderr}");
    assert!(!absent.exists(), "showing does not create a catalog");

    setup(dir.path());
    let path = dir.path().join(".cluster/catalog-2");
    let held = PeerCatalog::open(&path).unwrap();
    let out = cluster(&["catalog", "show", "--path", path.to_str().unwrap()]);
    let stderr = &out.stderr;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&path.display().to_string()) && stderr.contains("in use"),
        "{stderr}"
    );
    drop(held);
}
