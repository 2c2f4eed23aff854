//! The conformance suite on real sockets (loopback), for both ZeroMQ backends. Needs the
//! `zmq` feature: `cargo test -p cluster-testkit --features zmq --test zmq`.
//! Fewer scenarios than in simulation (each one takes real time); `CLUSTER_CASES` raises
//! them, `CLUSTER_SEED` replays a run.
#![cfg(feature = "zmq")]

use cluster_testkit::conformance::{self, Setup, SuiteOptions};
use cluster_testkit::zmq::ZmqCluster;
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

#[test]
fn libzmq_transport_keeps_the_contract() {
    let report = conformance::check(zmq(Backend::Libzmq), options());
    assert!(
        report.judged.0 > 0 && report.judged.1 > 0,
        "{:?}",
        report.judged
    );
}

#[test]
fn zeromq_transport_keeps_the_contract() {
    let report = conformance::check(zmq(Backend::Zeromq), options());
    assert!(
        report.judged.0 > 0 && report.judged.1 > 0,
        "{:?}",
        report.judged
    );
}
