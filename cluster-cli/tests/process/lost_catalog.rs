//! A node whose catalog is lost restarts newer than before, so its peers deliver its
//! messages at once — with a cluster key, where nothing else would ever let them forget
//! the incarnation they saw.

use cluster::Envelope;
use cluster::zmq::Backend;

use crate::node::{Node, next, start_three, wait_until};

on_both_backends!(a_node_that_lost_its_catalog_is_heard_again);

async fn a_node_that_lost_its_catalog_is_heard_again(backend: Backend) {
    let (config, mut a, b, mut c) = start_three(
        backend,
        r#""heartbeat_interval_ms":100,"heartbeat_timeout_ms":600,"linger_ms":200,"key_file":"cluster.key""#,
    )
    .await;
    assert!(a.config().cluster_key().is_some());
    c.wait_peers(&[1]).await;
    c.command("1 before");
    let env = next(&mut a).await;
    assert_eq!((env.pid, env.msg.as_str()), (3, "before"));
    let old = c.incarnation;
    assert_eq!(a.stats().peers[&3].incarnation, Some(old));

    // Kill node 3 and lose its catalog, as a container without a volume would.
    c.kill();
    let dir = config.path.parent().unwrap().join(".cluster/catalog-3");
    assert!(dir.is_dir(), "{}", dir.display());
    std::fs::remove_dir_all(&dir).unwrap();
    // The floor is the clock in seconds: a restart within the second of the last start
    // would get the same incarnation (see NodeCatalog::open).
    wait_until("the clock to pass node 3's last start", || {
        cluster::clock_incarnation() > old
    })
    .await;

    let mut c = Node::spawn(backend, &config.path, 3).await;
    assert!(c.incarnation > old, "{} after {old}", c.incarnation);
    c.wait_peers(&[1]).await;
    c.command("1 after");
    let env = next(&mut a).await;
    assert_eq!(env, Envelope::new(3, env.msg_id, "after".to_string()));
    let s = a.stats();
    assert_eq!(s.peers[&3].incarnation, Some(c.incarnation));
    assert_eq!(s.dropped_incoming.total(), 0, "{s:?}");
    c.quit().await;
    b.quit().await;
    a.shutdown().await;
}
