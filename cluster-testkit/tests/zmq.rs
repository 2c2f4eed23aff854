//! The conformance suite on real sockets (loopback), for both ZeroMQ backends, and the
//! mutants that prove its real-socket ("windowed") rules catch transport bugs. Needs the
//! `zmq` feature: `cargo test -p cluster-testkit --features zmq --test zmq`.
//! Fewer scenarios than in simulation (each one takes real time); `CLUSTER_CASES` raises
//! them, `CLUSTER_SEED` replays a run.
#![cfg(feature = "zmq")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cluster_core::DropReason;
use cluster_testkit::conformance::{self, Setup, SuiteOptions};
use cluster_testkit::oracle::Invariant;
use cluster_testkit::zmq::{ZmqCluster, ZmqMutant};
use cluster_testkit::{ClusterUnderTest, SimError, WithCatalogs};
use cluster_zmq::Backend;

/// Real sockets, and each node's incarnation from its sled catalog on disk, as in a real
/// deployment.
fn zmq(backend: Backend) -> impl Fn(&Setup) -> Result<Box<dyn ClusterUnderTest>, SimError> {
    move |setup| {
        let backend = WithCatalogs::new(ZmqCluster::new(setup, backend)?)
            .map_err(|e| SimError::Transport(cluster_core::TransportError::Other(e.to_string())))?;
        Ok(Box::new(backend))
    }
}

fn options() -> SuiteOptions {
    let mut options = SuiteOptions::new(16);
    options.nodes = 2..=4;
    options.max_ops = 16;
    options.max_shrink_iters = 64;
    options
}

// Random scenarios need not send to a node that is down (some seeds never do): copies
// that must be dropped are judged for sure in `mutants_are_caught`, on fixed scenarios.
#[test]
fn libzmq_transport_keeps_the_contract() {
    let report = conformance::check(zmq(Backend::Libzmq), options());
    assert!(report.judged.0 > 0, "{:?}", report.judged);
    // The directed membership case at least: a node joined and a member left, over sockets.
    assert!(
        report.membership.0 > 0 && report.membership.1 > 0,
        "{:?}",
        report.membership
    );
}

#[test]
fn zeromq_transport_keeps_the_contract() {
    let report = conformance::check(zmq(Backend::Zeromq), options());
    assert!(report.judged.0 > 0, "{:?}", report.judged);
    // The directed membership case at least: a node joined and a member left, over sockets.
    assert!(
        report.membership.0 > 0 && report.membership.1 > 0,
        "{:?}",
        report.membership
    );
}

/// With a cluster key: every frame carries a MAC (keyed BLAKE3) and is checked on arrival;
/// the suite's directed hostile case then expects its forgeries counted `unauthenticated`.
/// Fewer scenarios: the unkeyed runs above cover the transport itself.
fn keyed_transport_keeps_the_contract(backend: Backend) {
    let keyed = move |setup: &Setup| -> Result<Box<dyn ClusterUnderTest>, SimError> {
        let key = cluster_core::ClusterKey::from_bytes([0x3C; 32]);
        Ok(Box::new(
            ZmqCluster::new(setup, backend)?.with_cluster_key(Some(key)),
        ))
    };
    let mut options = options();
    options.cases = options.cases.min(8);
    let report = conformance::check(keyed, options);
    assert!(report.judged.0 > 0, "{:?}", report.judged);
}

#[test]
fn libzmq_transport_with_a_cluster_key_keeps_the_contract() {
    keyed_transport_keeps_the_contract(Backend::Libzmq);
}

#[test]
fn zeromq_transport_with_a_cluster_key_keeps_the_contract() {
    keyed_transport_keeps_the_contract(Backend::Zeromq);
}

/// With `"encrypt"`: every payload is encrypted (XChaCha20-Poly1305) and every header
/// authenticated; the directed hostile case then also expects a MAC-mode frame under the
/// right key counted `unauthenticated`. Fewer scenarios, as with a key.
fn encrypted_transport_keeps_the_contract(backend: Backend) {
    let encrypted = move |setup: &Setup| -> Result<Box<dyn ClusterUnderTest>, SimError> {
        let key = cluster_core::ClusterKey::from_bytes([0x5E; 32]);
        Ok(Box::new(
            ZmqCluster::new(setup, backend)?.with_encryption(key)?,
        ))
    };
    let mut options = options();
    options.cases = options.cases.min(8);
    let report = conformance::check(encrypted, options);
    assert!(report.judged.0 > 0, "{:?}", report.judged);
}

#[test]
fn libzmq_transport_encrypted_keeps_the_contract() {
    encrypted_transport_keeps_the_contract(Backend::Libzmq);
}

#[test]
fn zeromq_transport_encrypted_keeps_the_contract() {
    encrypted_transport_keeps_the_contract(Backend::Zeromq);
}

/// Each mutant's scenario: the healthy transport passes it, the mutant is caught on the
/// clause it breaks, by the windowed rules (the history says it is a real-socket run).
fn mutants_are_caught(backend: Backend) {
    for mutant in ZmqMutant::ALL {
        let scenario = mutant.scenario();
        let (healthy, history) =
            conformance::check_scenario(&ZmqCluster::factory(backend), &scenario).unwrap();
        assert!(
            healthy.is_ok(),
            "the healthy {backend} transport fails the scenario of {mutant:?}:\n{scenario}\n{healthy}"
        );
        let (must, must_not, _) = healthy.expectations();
        match mutant {
            // Two sends to a node that is down: judged exactly, whatever the window.
            ZmqMutant::DeliverLate => assert!(must_not >= 2, "{healthy}"),
            // Sends on a healthy link, away from any fault: each must be delivered.
            _ => assert!(must >= 2, "{healthy}"),
        }
        assert!(
            history.iter().any(|r| matches!(
                r.event,
                cluster_testkit::Event::Begin {
                    window_us: Some(_),
                    ..
                }
            )),
            "not judged by the windowed rules"
        );
        let (broken, broken_history) =
            conformance::check_scenario(&ZmqCluster::mutant_factory(backend, mutant), &scenario)
                .unwrap();
        assert!(
            broken.violated().contains(&mutant.breaks()),
            "{mutant:?} on {backend} was not caught as {}:\n{scenario}\n{broken}",
            mutant.breaks()
        );
        if matches!(mutant, ZmqMutant::Reorder | ZmqMutant::Duplicate) {
            // The router absorbs them: order and at-most-once hold, and the frames it
            // refused are counted as replays.
            let held = [Invariant::C2Integrity, Invariant::C3Fifo];
            assert!(
                held.iter().all(|i| !broken.violated().contains(i)),
                "{mutant:?} on {backend}: the router let it through:\n{broken}"
            );
            let replayed: u64 = broken_history
                .iter()
                .filter_map(|r| match &r.event {
                    cluster_testkit::Event::Stats {
                        dropped_incoming, ..
                    } => dropped_incoming.get(&DropReason::Replayed).copied(),
                    _ => None,
                })
                .sum();
            assert!(replayed > 0, "{mutant:?} on {backend}: no replay counted");
        }
        eprintln!(
            "{backend}: {mutant:?} caught as {:?}",
            broken
                .violated()
                .iter()
                .map(|i| i.code())
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn mutants_of_the_libzmq_transport_are_caught() {
    mutants_are_caught(Backend::Libzmq);
}

#[test]
fn mutants_of_the_zeromq_transport_are_caught() {
    mutants_are_caught(Backend::Zeromq);
}
