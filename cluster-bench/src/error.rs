//! [`BenchError`].

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A child process could not be started, misbehaved, or (in [`crate::run_child`]) was
    /// given a role it does not know.
    #[error("benchmark child process: {0}")]
    Child(String),
    /// The library under test failed.
    #[error("benchmark: {0}")]
    Failed(String),
    /// The options cannot be run (a backend not compiled in, a peer count out of range…).
    #[error("benchmark options: {0}")]
    Options(String),
}

pub(crate) fn failed(e: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(e.to_string())
}
