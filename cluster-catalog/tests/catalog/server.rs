//! The catalog under a running server, on the in-memory transport.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use cluster_catalog::{NodeCatalog, PeerCatalog, PeerRecord, PeerStatus, Recorder, catalog_dir};
use cluster_core::{Config, Envelope, Options, Pid, Server};
use cluster_mem::MemNetwork;
use cluster_testkit::net::{self, DEADLINE};

/// Three nodes whose catalogs live in `dir/<pid>`.
fn config(dir: &Path) -> Config {
    let options = Options {
        catalog_dir: Some(dir.join("{pid}")),
        ..Options::default()
    };
    Config::from_peers(
        [
            (1, "127.0.0.1:7001"),
            (2, "127.0.0.1:7002"),
            (3, "127.0.0.1:7003"),
        ],
        options,
    )
    .unwrap()
}

/// Starts `pid` the way the facade does: catalog attached in one call.
fn start(pid: Pid, config: &Config, net: &MemNetwork) -> Server<String> {
    let builder =
        cluster_catalog::attach(pid, config, Server::<String>::builder(pid, config.clone()))
            .unwrap();
    builder.build(net.transport(pid).unwrap()).unwrap()
}

/// Waits for `cond`, polling, for at most [`DEADLINE`]; fails the test otherwise.
async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    net::wait_until(what, DEADLINE, cond).await.unwrap();
}

async fn exchange(from: &Server<String>, to: &mut Server<String>, text: &str) {
    let id = from.next_msg_id();
    from.outbox()
        .send(Envelope::new(to.pid(), id, text.to_owned()))
        .await
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, to.inbox().recv())
        .await
        .expect("delivery")
        .unwrap();
    assert_eq!(got, Envelope::new(from.pid(), id, text.to_owned()));
}

#[test]
fn the_default_catalog_dir_is_per_pid_and_next_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    std::fs::write(
        &file,
        r#"{"peers":[{"pid":1,"address":"a:1"},{"pid":2,"address":"a:2"}]}"#,
    )
    .unwrap();
    let loaded = Config::load(&file).unwrap();
    assert_eq!(
        catalog_dir(2, &loaded),
        dir.path().join(".cluster/catalog-2")
    );
    let in_code = Config::local(2, 7000).unwrap();
    assert_eq!(catalog_dir(1, &in_code), Path::new(".cluster/catalog-1"));
    let c = config(Path::new("/var/lib/cl"));
    assert_eq!(catalog_dir(3, &c), Path::new("/var/lib/cl/3"));
}

/// Every start is a new incarnation, which the server uses: peers accept the restarted
/// node's messages, and no message id repeats across restarts and pids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_give_new_incarnations_and_unique_message_ids() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let net = MemNetwork::new(&config, 1);
    let mut two = start(2, &config, &net);
    let three = start(3, &config, &net);
    let mut ids = HashSet::new();
    let mut draw = |server: &Server<String>, n: usize| {
        for _ in 0..n {
            let id = server.next_msg_id();
            assert!(
                ids.insert(id),
                "message id {id:#x} of pid {} repeats",
                server.pid()
            );
        }
    };
    draw(&two, 1000);
    draw(&three, 1000);

    const RESTARTS: u32 = 60;
    let mut last = 0;
    for start_no in 1..=RESTARTS {
        if start_no > 1 {
            net.restart(1);
        }
        let one = start(1, &config, &net);
        // Floored by the clock (seconds since 2025), and above the last start's.
        assert!(
            one.incarnation() > last.max(365 * 24 * 3600),
            "start {start_no}"
        );
        last = one.incarnation();
        draw(&one, 500);
        // Pid 2 has seen every earlier incarnation of 1: it must accept this one.
        exchange(&one, &mut two, &format!("start {start_no}")).await;
        one.shutdown().await;
    }
    let stats = two.stats();
    assert_eq!(stats.peers[&1].delivered, u64::from(RESTARTS));
    assert_eq!(stats.peers[&1].incarnation, Some(last));
    assert_eq!(stats.dropped_incoming.total(), 0);

    // Other pids restart too, and their ids stay clear of pid 1's.
    three.shutdown().await;
    for _ in 0..5 {
        net.restart(3);
        let three = start(3, &config, &net);
        draw(&three, 1000);
        three.shutdown().await;
    }
    two.shutdown().await;
    assert_eq!(ids.len(), 2000 + RESTARTS as usize * 500 + 5000);
    let one = PeerCatalog::open(dir.path().join("1")).unwrap();
    assert_eq!(one.incarnation().unwrap(), Some(last));
}

fn snapshot(c: &PeerCatalog) -> BTreeMap<Pid, PeerRecord> {
    c.list().unwrap().into_iter().map(|r| (r.pid, r)).collect()
}

/// A recorder writes peers' status from connection changes and last seen and incarnation
/// from delivered messages, while the server runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorder_follows_status_last_seen_and_incarnations() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let net = MemNetwork::new(&config, 2);
    let catalog = NodeCatalog::open(1, &config).unwrap();
    assert_eq!(catalog.import_report().added, [1, 2, 3]);
    let mut one = Server::<String>::builder(1, config.clone())
        .incarnation(catalog.incarnation())
        .build(net.transport(1).unwrap())
        .unwrap();
    let recorder = Recorder::spawn(catalog, one.monitor(), Duration::from_millis(10));
    let record = |pid: Pid| {
        recorder
            .with_catalog(|c| c.get(pid).unwrap().unwrap())
            .unwrap()
    };

    wait_until("2 and 3 are up", || {
        record(2).status == PeerStatus::Up && record(3).status == PeerStatus::Up
    })
    .await;
    assert!(
        record(2).last_seen.is_some(),
        "a connection coming up is a sighting"
    );
    assert_eq!(record(2).incarnation, None, "no frame from 2 yet");

    // Start 2 with its own catalog and hear from it.
    let two = start(2, &config, &net);
    let first_two = two.incarnation();
    // Backdate the sighting of 2 (the recorder writes only on change, and 2 is quiet), so a
    // new sighting shows even within the same millisecond.
    let long_ago = std::time::UNIX_EPOCH + Duration::from_secs(1);
    recorder
        .with_catalog(|c| {
            c.update(2, |r| {
                let mut r = r?;
                r.last_seen = Some(long_ago);
                Some(r)
            })
        })
        .unwrap()
        .unwrap();
    let seen_before = Some(long_ago);
    exchange(&two, &mut one, "hello").await;
    wait_until("2's incarnation is recorded", || {
        record(2).incarnation == Some(first_two)
    })
    .await;
    assert!(
        record(2).last_seen > seen_before,
        "a delivered message is a sighting"
    );

    net.crash(3);
    wait_until("3 is down", || record(3).status == PeerStatus::Down).await;

    // 2 restarts as a newer incarnation.
    two.shutdown().await;
    net.restart(2);
    let two = start(2, &config, &net);
    assert!(two.incarnation() > first_two);
    exchange(&two, &mut one, "again").await;
    wait_until("2's new incarnation is recorded", || {
        record(2).incarnation == Some(two.incarnation())
    })
    .await;

    recorder.record_now().unwrap();
    let live = recorder.with_catalog(snapshot).unwrap();
    drop(recorder); // final record, flush, close
    let reopened = snapshot(&PeerCatalog::open(dir.path().join("1")).unwrap());
    for pid in [2, 3] {
        assert_eq!(reopened[&pid], live[&pid], "pid {pid} after reopening");
    }
    assert_eq!(
        reopened[&1].status,
        PeerStatus::Down,
        "a stopped node records itself down"
    );
    two.shutdown().await;
    one.shutdown().await;
}

/// Stop a node whose catalog is attached, reopen its catalog: same data; restart the node:
/// history and application metadata are kept, the incarnation moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_leaves_its_catalog_on_disk_and_a_restart_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let net = MemNetwork::new(&config, 3);
    let mut one = start(1, &config, &net);
    let two = start(2, &config, &net);
    let three = start(3, &config, &net);
    let first_one = one.incarnation();
    let incarnations = BTreeMap::from([(2, two.incarnation()), (3, three.incarnation())]);
    exchange(&two, &mut one, "from 2").await;
    exchange(&three, &mut one, "from 3").await;
    one.shutdown().await;
    // Once shutdown returns the catalog is flushed and closed: it reopens at once.
    let path = dir.path().join("1");
    let first = snapshot(&PeerCatalog::open(&path).unwrap());
    assert_eq!(first.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
    for pid in [2, 3] {
        let r = &first[&pid];
        assert_eq!(
            (r.status, r.incarnation),
            (PeerStatus::Up, Some(incarnations[&pid])),
            "{r:?}"
        );
        assert!(r.last_seen.is_some(), "{r:?}");
    }
    assert_eq!(
        (first[&1].status, first[&1].incarnation),
        (PeerStatus::Down, Some(first_one))
    );
    assert_eq!(
        snapshot(&PeerCatalog::open(&path).unwrap()),
        first,
        "reopening changes nothing"
    );

    // An application annotates a peer while the node is down.
    {
        let c = PeerCatalog::open(&path).unwrap();
        c.update(3, |r| {
            let mut r = r?;
            r.metadata.insert("zone".into(), "b".into());
            Some(r)
        })
        .unwrap();
        c.flush().unwrap();
    }

    net.crash(3);
    net.restart(1);
    let one = start(1, &config, &net);
    assert!(one.incarnation() > first_one);
    let second_one = one.incarnation();
    one.shutdown().await;
    let second = snapshot(&PeerCatalog::open(&path).unwrap());
    assert_eq!(second[&3].metadata["zone"], "b");
    assert_eq!(
        second[&3].status,
        PeerStatus::Down,
        "3 was crashed during the second run"
    );
    assert_eq!(
        second[&3].incarnation,
        Some(incarnations[&3]),
        "the newest incarnation seen is kept"
    );
    assert_eq!(second[&3].last_seen, first[&3].last_seen);
    assert_eq!(second[&1].incarnation, Some(second_one));
    two.shutdown().await;
    three.shutdown().await;
}

/// Membership at run time survives a restart: the recorder keeps the records, and a node
/// restarted with its old config comes back with the current membership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_comes_back_with_the_membership_it_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let net = MemNetwork::new(&config, 4);
    net.add_node(4).unwrap();
    let one = start(1, &config, &net);
    let two = start(2, &config, &net);
    let three = start(3, &config, &net);
    one.add_peer(4, "127.0.0.1:7004").unwrap();
    two.remove_peer(3).unwrap();
    wait_until("the changes to reach node 1", || {
        let present: Vec<Pid> = one
            .members()
            .iter()
            .filter(|m| m.present)
            .map(|m| m.pid)
            .collect();
        present == [1, 2, 4]
    })
    .await;
    let known = one.members();
    one.shutdown().await;
    two.shutdown().await;
    three.shutdown().await;
    // On disk.
    let catalog = PeerCatalog::open(dir.path().join("1")).unwrap();
    assert_eq!(catalog.membership().unwrap(), known);
    assert!(
        catalog.get(4).unwrap().is_some(),
        "a record for the peer that joined"
    );
    drop(catalog);
    // Restarted with the same three-node config: the recorded membership, not the config's.
    net.restart(1).unwrap();
    let again = start(1, &config, &net);
    assert_eq!(again.members(), known);
    assert_eq!(again.current_peers(), [2, 4]);
    again.shutdown().await;
}
