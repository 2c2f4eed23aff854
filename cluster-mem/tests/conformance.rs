//! The contract (C1–C9, stated in `cluster-core`'s crate docs) checked on the in-memory transport by the test kit's
//! conformance suite: directed cases plus random scenarios judged by the oracle.
//!
//! `CLUSTER_CASES=10000 cargo test --release -p cluster-mem --test conformance` runs more scenarios;
//! a failure prints its seed, and `CLUSTER_SEED=<seed>` replays it exactly.

use cluster_testkit::conformance::{self, Setup, SuiteOptions};
use cluster_testkit::{ClusterUnderTest, MemCluster, SimError, WithCatalogs};

fn mem(setup: &Setup) -> Result<Box<dyn ClusterUnderTest>, SimError> {
    let config = setup.config().map_err(cluster_core::ServerError::from)?;
    Ok(Box::new(MemCluster::new(&config, setup.seed)))
}

/// Nodes with a cluster key and the options `change` makes of the setup's.
fn keyed_with(
    setup: &Setup,
    change: impl Fn(cluster_core::Options) -> cluster_core::Options,
) -> Result<Box<dyn ClusterUnderTest>, SimError> {
    let config = setup
        .config()
        .map_err(cluster_core::ServerError::from)?
        .with_cluster_key(Some(cluster_core::ClusterKey::from_bytes([7; 32])));
    let options = change(config.options().clone());
    let config = config
        .with_options(options)
        .map_err(cluster_core::ServerError::from)?;
    Ok(Box::new(MemCluster::new(&config, setup.seed)))
}

#[test]
fn mem_transport_keeps_the_contract() {
    let report = conformance::check(mem, SuiteOptions::new(256));
    // The oracle must have had something to hold the transport to: copies that had to be
    // delivered and copies that had to be dropped, not only "either way".
    let (must_deliver, must_drop, _) = report.judged;
    assert!(must_deliver > 0 && must_drop > 0, "{:?}", report.judged);
    // Random scenarios, not only the directed case, had nodes join and members leave.
    assert!(
        report.membership.0 > 1 && report.membership.1 > 1,
        "{:?}",
        report.membership
    );
}

/// The same with a cluster key: every frame is tagged and checked (contract C10), and the
/// contract holds as without one. The directed hostile-input case checks that a frame
/// without a tag is counted `unauthenticated`, which proves the key is in force.
#[test]
fn mem_transport_with_a_cluster_key_keeps_the_contract() {
    let keyed = |setup: &Setup| -> Result<Box<dyn ClusterUnderTest>, SimError> {
        let config = setup
            .config()
            .map_err(cluster_core::ServerError::from)?
            .with_cluster_key(Some(cluster_core::ClusterKey::from_bytes([7; 32])));
        Ok(Box::new(MemCluster::new(&config, setup.seed)))
    };
    let report = conformance::check(keyed, SuiteOptions::new(64));
    let (must_deliver, must_drop, _) = report.judged;
    assert!(must_deliver > 0 && must_drop > 0, "{:?}", report.judged);
}

/// The same with `"encrypt"`: every payload is encrypted (XChaCha20-Poly1305) and every
/// header authenticated, and the contract holds as without. The directed hostile case
/// then also expects a MAC-mode frame under the right key counted `unauthenticated`.
#[test]
fn mem_transport_encrypted_keeps_the_contract() {
    let encrypted =
        |setup: &Setup| keyed_with(setup, |o| cluster_core::Options { encrypt: true, ..o });
    let report = conformance::check(encrypted, SuiteOptions::new(64));
    let (must_deliver, must_drop, _) = report.judged;
    assert!(must_deliver > 0 && must_drop > 0, "{:?}", report.judged);
}

/// The same with `"mac": "siphash-2-4"`: every frame carries a SipHash-2-4 tag; the
/// directed hostile case then also expects a BLAKE3-tagged frame under the right key
/// counted `unauthenticated`.
#[test]
fn mem_transport_with_siphash_tags_keeps_the_contract() {
    let siphash = |setup: &Setup| {
        keyed_with(setup, |o| cluster_core::Options {
            mac: cluster_core::MacAlgorithm::SipHash24,
            ..o
        })
    };
    let report = conformance::check(siphash, SuiteOptions::new(64));
    let (must_deliver, must_drop, _) = report.judged;
    assert!(must_deliver > 0 && must_drop > 0, "{:?}", report.judged);
}

/// The same with every node's incarnation kept in a real sled catalog on disk, reopened at
/// each restart (contract C8). Fewer scenarios: each start opens a database.
#[test]
fn mem_transport_with_catalogs_keeps_the_contract() {
    let with_catalogs = |setup: &Setup| -> Result<Box<dyn ClusterUnderTest>, SimError> {
        let config = setup.config().map_err(cluster_core::ServerError::from)?;
        let backend = WithCatalogs::new(MemCluster::new(&config, setup.seed))
            .map_err(|e| SimError::Transport(cluster_core::TransportError::Other(e.to_string())))?;
        Ok(Box::new(backend))
    };
    let mut options = SuiteOptions::new(24);
    // Long runs (`CLUSTER_CASES`) are for the test above; opening databases is slow.
    options.cases = options.cases.min(200);
    options.max_ops = 24;
    let report = conformance::check(with_catalogs, options);
    assert!(
        report.judged.0 > 0 && report.judged.1 > 0,
        "{:?}",
        report.judged
    );
}
