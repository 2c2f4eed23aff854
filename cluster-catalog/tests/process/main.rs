//! Catalog tests that need a second process: a writer killed with SIGKILL mid-write, a
//! catalog held open by another live process, and a directory the node's user cannot write.
//!
//! This binary is its own child: `process child-<role> <dir>` runs a role instead of the
//! tests (`harness = false`, so the roles are plain arguments). Every child is killed by its
//! pid and reaped when the test ends, also when it fails (see [`spawn`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use cluster_catalog::{CatalogError, NodeCatalog, PeerCatalog, PeerRecord};
use cluster_core::{Config, Options};
use cluster_testkit::net::Process;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, role, dir, rest @ ..] = args.as_slice()
        && let Some(role) = role.strip_prefix("child-")
    {
        return child(role, Path::new(dir), rest);
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-'));
    let tests: [(&str, fn()); 3] = [
        (
            "kill_9_mid_write_keeps_every_flushed_record",
            kill_9_mid_write_keeps_every_flushed_record,
        ),
        (
            "a_catalog_held_by_another_process_is_locked",
            a_catalog_held_by_another_process_is_locked,
        ),
        (
            "a_read_only_catalog_is_a_clear_error",
            a_read_only_catalog_is_a_clear_error,
        ),
    ];
    let mut failed = 0;
    for (name, test) in tests {
        if filter.is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        println!("test {name} ...");
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        println!("{failed} failed");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The record the writer child writes for `pid`.
fn record(pid: i32) -> PeerRecord {
    let mut r = PeerRecord::new(pid, format!("node-{pid}.example:7000"));
    r.incarnation = Some(pid as u32);
    r.metadata
        .insert("payload".into(), "x".repeat(200 + (pid % 50) as usize));
    r
}

fn child(role: &str, dir: &Path, rest: &[String]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match role {
        // Opens the catalog, begins an incarnation, then writes records `base..` forever,
        // flushing every 10 and reporting each flush on stdout.
        "writer" => {
            let base: i32 = rest.first().and_then(|s| s.parse().ok()).unwrap_or(0);
            let c = PeerCatalog::open(dir).unwrap();
            let inc = c.begin_incarnation().unwrap();
            writeln!(out, "incarnation {inc}").unwrap();
            out.flush().unwrap();
            for i in 0.. {
                c.upsert(&record(base + i)).unwrap();
                if i % 10 == 9 {
                    c.flush().unwrap();
                    writeln!(out, "flushed {}", base + i).unwrap();
                    out.flush().unwrap();
                }
            }
            ExitCode::SUCCESS
        }
        // Holds the catalog open until killed.
        "holder" => {
            let _c = PeerCatalog::open(dir).unwrap();
            writeln!(out, "ready").unwrap();
            out.flush().unwrap();
            loop {
                std::thread::park();
            }
        }
        // Tries to open; prints the error. Exit 0 = refused as read-only.
        "open" => match PeerCatalog::open(dir) {
            Ok(_) => {
                writeln!(out, "opened").unwrap();
                ExitCode::from(4)
            }
            Err(e) => {
                writeln!(out, "{e}").unwrap();
                ExitCode::from(if matches!(e, CatalogError::ReadOnly { .. }) {
                    0
                } else {
                    3
                })
            }
        },
        other => {
            eprintln!("unknown child role {other}");
            ExitCode::from(2)
        }
    }
}

/// This binary as a child in `role`, on `dir`: killed (SIGKILL, by pid) and reaped when
/// dropped, also when the test fails.
fn spawn(role: &str, dir: &Path, extra: &[&str]) -> Process {
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new(exe);
    command.arg(format!("child-{role}")).arg(dir).args(extra);
    Process::spawn(role, &mut command).unwrap()
}

fn kill_9_mid_write_keeps_every_flushed_record() {
    let dir = tempfile::tempdir().unwrap();
    const ROUNDS: i32 = 5;
    let mut flushed_up_to = Vec::new();
    for round in 0..ROUNDS {
        let base = round * 100_000;
        let mut child = spawn("writer", dir.path(), &[&base.to_string()]);
        assert_eq!(
            child.next_line_blocking().unwrap(),
            format!("incarnation {}", round + 1)
        );
        // Kill at a different point of the write loop each round.
        let target = base + 200 + round * 37;
        let last = loop {
            let line = child.next_line_blocking().unwrap();
            let n: i32 = line.strip_prefix("flushed ").unwrap().parse().unwrap();
            if n >= target {
                break n;
            }
        };
        // Let the child run on for a moment (0 to 2.8 ms), so the kill lands at different
        // points of an upsert or a flush.
        std::thread::sleep(Duration::from_micros(700 * round as u64));
        child.kill().unwrap();
        flushed_up_to.push((base, last));
    }
    let c = PeerCatalog::open(dir.path()).unwrap();
    assert_eq!(c.incarnation().unwrap(), Some(ROUNDS as u32));
    let all = c.list().unwrap(); // every record present decodes
    for (base, last) in flushed_up_to {
        for pid in base..=last {
            assert_eq!(
                c.get(pid).unwrap(),
                Some(record(pid)),
                "flushed record {pid} lost"
            );
        }
        let beyond = all
            .iter()
            .filter(|r| r.pid > last && r.pid < base + 100_000)
            .count();
        println!(
            "  round at {base}: flushed up to {last}, {beyond} records written after it survived"
        );
    }
}

fn a_catalog_held_by_another_process_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_peers(
        [(1, "127.0.0.1:7001"), (2, "127.0.0.1:7002")],
        Options {
            catalog_dir: Some(dir.path().to_path_buf()),
            ..Options::default()
        },
    )
    .unwrap();
    let mut holder = spawn("holder", dir.path(), &[]);
    assert_eq!(holder.next_line_blocking().unwrap(), "ready");
    let e = PeerCatalog::open(dir.path()).unwrap_err();
    assert!(matches!(e, CatalogError::Locked { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(
        msg.contains("another process") && msg.contains("own catalog_dir"),
        "{msg}"
    );
    let e = NodeCatalog::open(1, &config).unwrap_err();
    assert!(matches!(e, CatalogError::Locked { .. }), "{e:?}");

    holder.kill().unwrap();
    let node = NodeCatalog::open(1, &config).expect("the lock dies with its process");
    // The holder began none (it only held the lock); the node's first is floored by the
    // clock (seconds since 2025).
    assert!(
        node.incarnation() > 365 * 24 * 3600,
        "{}",
        node.incarnation()
    );
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let probe = tempfile::NamedTempFile::new().unwrap();
    probe.as_file().metadata().unwrap().uid() == 0
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every file and directory of a catalog, deepest first.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(tree(&path));
        }
        out.push(path);
    }
    out
}

fn a_read_only_catalog_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog");
    drop(PeerCatalog::open(&catalog).unwrap());
    let check = |output: &str| {
        assert!(output.contains(&catalog.display().to_string()), "{output}");
        assert!(
            output.contains("cannot write") && output.contains("writable"),
            "{output}"
        );
    };
    if !is_root() {
        // Read-only for its owner.
        for p in tree(&catalog).into_iter().chain([catalog.clone()]) {
            set_mode(&p, if p.is_dir() { 0o555 } else { 0o444 });
        }
        let result = PeerCatalog::open(&catalog);
        for p in [catalog.clone()].into_iter().chain(tree(&catalog)) {
            set_mode(&p, if p.is_dir() { 0o755 } else { 0o644 });
        }
        let e = result.unwrap_err();
        assert!(matches!(e, CatalogError::ReadOnly { .. }), "{e:?}");
        check(&e.to_string());
        return;
    }
    // Permissions do not bind root, so open it as another user, for whom the root-owned
    // catalog is read-only.
    let Ok(setpriv) = which("setpriv") else {
        println!(
            "  SKIPPED: running as root and `setpriv` is not installed, so no user is available \
             for whom the catalog is read-only"
        );
        return;
    };
    set_mode(dir.path(), 0o755);
    for p in [catalog.clone()].into_iter().chain(tree(&catalog)) {
        set_mode(&p, if p.is_dir() { 0o755 } else { 0o644 });
    }
    let out = Process::run(
        "open as uid 65534",
        Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(std::env::current_exe().unwrap())
            .arg("child-open")
            .arg(&catalog),
        "",
    )
    .unwrap();
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "opening as uid 65534 was not refused as read-only: {stdout} {stderr}"
    );
    check(stdout);
    println!("  as uid 65534: {}", stdout.trim());
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
