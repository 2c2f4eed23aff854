use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_catalog::{CatalogError, PeerCatalog, PeerRecord, PeerStatus, Readdressed};
use cluster_core::{Config, Options};

fn record(pid: i32) -> PeerRecord {
    let mut r = PeerRecord::new(pid, format!("10.0.0.{pid}:7000"));
    r.incarnation = Some(pid as u32 * 10);
    r.status = PeerStatus::Down;
    r.last_seen = Some(UNIX_EPOCH + Duration::from_millis(1_000_000 + pid as u64));
    r.metadata.insert("rack".into(), format!("r{pid}"));
    r
}

#[test]
fn get_list_upsert_update_remove() {
    let c = PeerCatalog::temporary().unwrap();
    assert!(c.is_empty());
    for pid in [5, 1, 300, 0, 2] {
        assert_eq!(c.upsert(&record(pid)).unwrap(), None);
    }
    let pids: Vec<_> = c.list().unwrap().iter().map(|r| r.pid).collect();
    assert_eq!(pids, [0, 1, 2, 5, 300], "list is ordered by pid");
    assert_eq!(c.get(5).unwrap(), Some(record(5)));
    assert_eq!(c.get(6).unwrap(), None);

    let mut changed = record(5);
    changed.status = PeerStatus::Up;
    assert_eq!(c.upsert(&changed).unwrap(), Some(record(5)));
    assert_eq!(c.get(5).unwrap().unwrap().status, PeerStatus::Up);

    let updated = c
        .update(2, |r| {
            let mut r = r.unwrap();
            r.metadata.insert("role".into(), "leader".into());
            r.pid = 99; // ignored: the record stays under pid 2
            Some(r)
        })
        .unwrap()
        .unwrap();
    assert_eq!(updated.pid, 2);
    assert_eq!(c.get(2).unwrap().unwrap().metadata["role"], "leader");
    assert_eq!(c.get(99).unwrap(), None);

    assert_eq!(c.remove(1).unwrap(), Some(record(1)));
    assert_eq!(c.remove(1).unwrap(), None);
    assert_eq!(c.update(3, |r| r).unwrap(), None);
    assert_eq!(c.len(), 4);
}

#[test]
fn records_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let written: Vec<_> = (1..=20).map(record).collect();
    {
        let c = PeerCatalog::open(dir.path()).unwrap();
        for r in &written {
            c.upsert(r).unwrap();
        }
        c.remove(7).unwrap();
        c.flush().unwrap();
    }
    let c = PeerCatalog::open(dir.path()).unwrap();
    let expected: Vec<_> = written.into_iter().filter(|r| r.pid != 7).collect();
    assert_eq!(c.list().unwrap(), expected);
}

#[test]
fn incarnations_increase_durably_from_one() {
    let dir = tempfile::tempdir().unwrap();
    for expected in 1..=5 {
        let c = PeerCatalog::open(dir.path()).unwrap();
        assert_eq!(
            c.incarnation().unwrap(),
            (expected > 1).then(|| expected - 1)
        );
        assert_eq!(c.begin_incarnation().unwrap(), expected);
        // No flush here: begin_incarnation must have made it durable itself.
    }
}

#[test]
fn import_reconciles_membership_and_addresses_and_keeps_history() {
    let c = PeerCatalog::temporary().unwrap();
    let first = Config::from_peers(
        [(1, "h1:7001"), (2, "h2:7002"), (3, "h3:7003")],
        Options::default(),
    )
    .unwrap();
    let report = c.import(&first).unwrap();
    assert_eq!(report.added, [1, 2, 3]);
    assert!(report.readdressed.is_empty() && report.removed.is_empty());
    let fresh = c.get(2).unwrap().unwrap();
    assert_eq!(fresh, PeerRecord::new(2, "h2:7002"));

    // History accumulates.
    let seen = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for pid in [2, 3] {
        c.update(pid, |r| {
            let mut r = r.unwrap();
            r.incarnation = Some(4);
            r.status = PeerStatus::Up;
            r.last_seen = Some(seen);
            r.metadata.insert("k".into(), "v".into());
            Some(r)
        })
        .unwrap();
    }

    // Pid 1 leaves, 2 moves, 3 stays, 4 joins.
    let second = Config::from_peers(
        [(2, "h2-new:7002"), (3, "h3:7003"), (4, "h4:7004")],
        Options::default(),
    )
    .unwrap();
    let report = c.import(&second).unwrap();
    assert_eq!(report.added, [4]);
    assert_eq!(
        report.readdressed,
        [Readdressed {
            pid: 2,
            old: "h2:7002".into(),
            new: "h2-new:7002".into()
        }]
    );
    assert_eq!(report.removed, [PeerRecord::new(1, "h1:7001")]);
    assert_eq!(report.unchanged, [3]);
    assert!(!report.is_unchanged());
    assert_eq!(
        report.to_string(),
        "1 added, 1 readdressed, 1 removed, 1 unchanged; pid 2: h2:7002 -> h2-new:7002; \
         pid 1 removed (was h1:7001)"
    );

    let pids: Vec<_> = c.list().unwrap().iter().map(|r| r.pid).collect();
    assert_eq!(pids, [2, 3, 4]);
    let two = c.get(2).unwrap().unwrap();
    assert_eq!(two.address, "h2-new:7002", "the config's address wins");
    assert_eq!(
        (
            two.incarnation,
            two.status,
            two.last_seen,
            two.metadata["k"].as_str()
        ),
        (Some(4), PeerStatus::Up, Some(seen), "v"),
        "history is kept"
    );
    assert!(c.import(&second).unwrap().is_unchanged());
}

/// Writes `value` under `key` of `tree` directly with sled, as another version would.
fn write_raw(dir: &std::path::Path, tree: &str, key: &[u8], value: &[u8]) {
    // Another test forks children, which hold the just-closed catalog's lock until they exec.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let db = loop {
        match sled::open(dir) {
            Ok(db) => break db,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("retrying: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    };
    db.open_tree(tree).unwrap().insert(key, value).unwrap();
    db.flush().unwrap();
}

#[test]
fn records_of_an_unknown_version_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = PeerCatalog::open(dir.path()).unwrap();
        c.upsert(&record(1)).unwrap();
        c.upsert(&record(2)).unwrap();
        c.flush().unwrap();
    }
    // Pid 2's key is its big-endian bytes with the sign bit flipped (see the crate docs).
    write_raw(dir.path(), "cluster.peers", &[0x80, 0, 0, 2], &[7, 0x80]);
    let c = PeerCatalog::open(dir.path()).unwrap();
    assert_eq!(c.get(1).unwrap(), Some(record(1)));
    for e in [c.get(2).unwrap_err(), c.list().unwrap_err()] {
        assert!(
            matches!(
                e,
                CatalogError::UnknownVersion {
                    version: 7,
                    supported: 1,
                    ..
                }
            ),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("the record of pid 2 has format version 7"),
            "{msg}"
        );
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }
    // A record of the right version that does not decode.
    drop(c);
    write_raw(dir.path(), "cluster.peers", &[0x80, 0, 0, 2], &[1, 0xc1]);
    let e = PeerCatalog::open(dir.path()).unwrap().get(2).unwrap_err();
    assert!(matches!(e, CatalogError::BadRecord { .. }), "{e:?}");
}

#[test]
fn a_catalog_of_an_unknown_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(PeerCatalog::open(dir.path()).unwrap());
    write_raw(dir.path(), "cluster.node", b"format", &[2]);
    let e = super::open_err(dir.path());
    assert!(
        matches!(e, CatalogError::UnknownVersion { version: 2, .. }),
        "{e:?}"
    );
}

/// A dropped catalog must reopen at once (a node restarting in-process), even though sled's
/// background threads, or a child process forked by another thread (which inherits the
/// locked file until it execs), may hold the database file for a moment after the drop.
#[test]
fn a_dropped_catalog_reopens_at_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let spawner = {
        let done = std::sync::Arc::clone(&done);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                // Each child is waited for, so none outlives the test.
                let _ = std::process::Command::new("true").status();
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        catalog_dir: Some(dir.path().to_path_buf()),
        ..Options::default()
    };
    let config = Config::from_peers([(1, "h:1"), (2, "h:2"), (3, "h:3")], options).unwrap();
    for round in 1..=100u32 {
        let node = cluster_catalog::NodeCatalog::open(1, &config)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        node.catalog()
            .update(3, |r| {
                let mut r = r?;
                r.metadata.insert("round".into(), round.to_string());
                Some(r)
            })
            .unwrap();
        node.catalog().flush().unwrap();
        drop(node);
        let c = PeerCatalog::open(dir.path()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(
            c.get(3).unwrap().unwrap().metadata["round"],
            round.to_string()
        );
    }
    done.store(true, Ordering::Relaxed);
    spawner.join().unwrap();
}

/// Tests that need no restart can give a node a temporary catalog.
#[test]
fn a_node_can_run_on_a_temporary_catalog() {
    let config = Config::local(3, 7000).unwrap();
    let node =
        cluster_catalog::NodeCatalog::with_catalog(2, &config, PeerCatalog::temporary().unwrap())
            .unwrap();
    assert_eq!(node.incarnation(), 1);
    assert_eq!(node.catalog().path(), std::path::Path::new("<temporary>"));
    let own = node.catalog().get(2).unwrap().unwrap();
    assert_eq!((own.status, own.incarnation), (PeerStatus::Up, Some(1)));
    assert_eq!(node.catalog().len(), 3);
}
