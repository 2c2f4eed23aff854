use std::path::Path;

use cluster_catalog::{CatalogError, NodeCatalog, PeerCatalog};
use cluster_core::{Config, Options};

use super::open_err;

/// A catalog as a node leaves it: imported, a few incarnations, flushed, closed.
fn used_catalog(dir: &Path) {
    let c = PeerCatalog::open(dir).unwrap();
    c.import(&Config::local(50, 7000).unwrap()).unwrap();
    for _ in 0..3 {
        c.begin_incarnation().unwrap();
    }
    c.flush().unwrap();
}

#[test]
fn a_file_is_not_a_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("catalog");
    std::fs::write(&file, "hello").unwrap();
    let e = open_err(&file);
    assert!(matches!(e, CatalogError::NotACatalog { .. }), "{e:?}");
    assert!(e.to_string().contains("it is a file"), "{e}");

    let below = file.join("sub");
    let e = open_err(&below);
    assert!(matches!(e, CatalogError::NotACatalog { .. }), "{e:?}");
}

#[test]
fn a_directory_of_other_files_is_not_a_catalog_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    std::fs::create_dir(dir.path().join("photos")).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, CatalogError::NotACatalog { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("notes.txt") && msg.contains("new or empty directory"),
        "{msg}"
    );
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["notes.txt", "photos"], "nothing was created");
}

#[test]
fn a_sled_database_of_something_else_is_not_a_catalog() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert("user", "data").unwrap();
        db.flush().unwrap();
    }
    let e = open_err(dir.path());
    assert!(matches!(e, CatalogError::NotACatalog { .. }), "{e:?}");
    assert!(e.to_string().contains("written by something else"), "{e}");
}

fn damage(path: &Path, how: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    match how {
        "flip every byte" => bytes.iter_mut().for_each(|b| *b ^= 0x5a),
        "truncate to half" => bytes.truncate(n / 2),
        "overwrite the middle" => bytes[n / 4..n / 2].iter_mut().for_each(|b| *b = 0xff),
        "empty" => bytes.clear(),
        other => panic!("unknown damage {other}"),
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn corrupt_catalogs_are_a_clear_error() {
    let cases = [
        ("db", "flip every byte"),
        ("db", "truncate to half"),
        ("db", "overwrite the middle"),
        ("db", "empty"),
        ("conf", "flip every byte"),
        ("conf", "truncate to half"),
        ("conf", "overwrite the middle"),
        ("CATALOG", "flip every byte"),
        ("CATALOG", "truncate to half"),
    ];
    for (file, how) in cases {
        let dir = tempfile::tempdir().unwrap();
        used_catalog(dir.path());
        damage(&dir.path().join(file), how);
        let e = match PeerCatalog::open(dir.path()) {
            Ok(c) => panic!("{file}, {how}: opened, with {} records", c.len()),
            Err(e) => e,
        };
        let msg = e.to_string();
        assert!(
            matches!(e, CatalogError::Corrupt { .. }),
            "{file}, {how}: {e:?}"
        );
        assert!(
            msg.contains(&dir.path().display().to_string())
                && msg.contains("move the directory aside"),
            "{file}, {how}: {msg}"
        );
    }
}

#[test]
fn a_catalog_open_twice_in_one_process_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let first = PeerCatalog::open(dir.path()).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, CatalogError::Locked { .. }), "{e:?}");
    assert!(e.to_string().contains("own catalog_dir"), "{e}");
    drop(first);
    PeerCatalog::open(dir.path()).unwrap();
}

#[test]
fn a_catalog_belongs_to_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        catalog_dir: Some(dir.path().to_path_buf()),
        ..Options::default()
    };
    let config = Config::from_peers([(1, "h:1"), (2, "h:2")], options).unwrap();
    drop(NodeCatalog::open(1, &config).unwrap());
    let e = NodeCatalog::open(2, &config).unwrap_err();
    assert!(
        matches!(
            e,
            CatalogError::WrongOwner {
                owner: 1,
                pid: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("belongs to node 1, not to node 2"),
        "{e}"
    );
    let e = NodeCatalog::open(3, &config).unwrap_err();
    assert!(matches!(e, CatalogError::Config(_)), "{e:?}");
}

#[test]
fn showing_a_missing_catalog_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent");
    let e = PeerCatalog::open_existing(&absent).unwrap_err();
    assert!(matches!(e, CatalogError::Missing { .. }), "{e:?}");
    assert!(!absent.exists());
    let e = PeerCatalog::open_existing(dir.path()).unwrap_err();
    assert!(matches!(e, CatalogError::Missing { .. }), "{e:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    used_catalog(dir.path());
    assert_eq!(PeerCatalog::open_existing(dir.path()).unwrap().len(), 50);
}
