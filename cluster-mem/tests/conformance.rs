//! The contract (DESIGN.md §4, C1–C9) checked on the in-memory transport by the test kit's
//! conformance suite: directed cases plus random scenarios judged by the oracle.
//!
//! `CLUSTER_CASES=5000 cargo test -p cluster-mem --test conformance` runs more scenarios;
//! a failure prints its seed, and `CLUSTER_SEED=<seed>` replays it exactly.

use cluster_testkit::conformance::{self, Setup, SuiteOptions};
use cluster_testkit::{ClusterUnderTest, MemBackend, SimError};

fn mem(setup: &Setup) -> Result<Box<dyn ClusterUnderTest>, SimError> {
    let config = setup.config().map_err(cluster_core::ServerError::from)?;
    Ok(Box::new(MemBackend::new(&config, setup.seed)))
}

#[test]
fn mem_transport_keeps_the_contract() {
    let report = conformance::check(mem, SuiteOptions::new(256));
    assert!(report.scenarios >= 1);
}
