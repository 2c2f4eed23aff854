//! The test kit's own tests: mutants are caught, replays are exact, the simulator works.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod diagram;
mod faults;
mod hostile;
mod mutants;
mod replay;
mod sim;

use cluster_testkit::conformance::{Factory, Setup};
use cluster_testkit::mutants::{MutantBackend, Mutation};
use cluster_testkit::{ClusterUnderTest, MemCluster, SimError};

fn config(setup: &Setup) -> Result<cluster_core::Config, SimError> {
    Ok(setup.config().map_err(cluster_core::ServerError::from)?)
}

/// The healthy in-memory backend.
pub(crate) fn mem(setup: &Setup) -> Result<Box<dyn ClusterUnderTest>, SimError> {
    Ok(Box::new(MemCluster::new(&config(setup)?, setup.seed)))
}

/// A backend broken by `mutation`.
pub(crate) fn mutant(mutation: Mutation) -> impl Factory {
    move |setup: &Setup| -> Result<Box<dyn ClusterUnderTest>, SimError> {
        Ok(Box::new(MutantBackend::new(
            &config(setup)?,
            setup.seed,
            mutation,
        )))
    }
}
