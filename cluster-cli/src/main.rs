//! The `cluster` command-line tool.
//!
//! ```text
//! cluster demo                                          # the README's main job
//! cluster node --pid 1 --config config.json             # one node, driven from stdin
//! cluster node --pid 1 --metrics 127.0.0.1:9100         # ... serving Prometheus metrics
//! cluster members --node 127.0.0.1:9100                 # a running node's peers, from its metrics
//! cluster members --config config.json --pid 1          # a stopped node's peers, from its catalog
//! cluster bench --json                                  # ZeroMQ against the bare library
//! cluster catalog show --config config.json --pid 3     # node 3's catalog, as a table
//! cluster catalog show --path .cluster/catalog-3 --json # any catalog directory, as JSON
//! ```
//!
//! Exit codes: 0 success, 1 failure (e.g. a corrupt or locked catalog), 2 bad arguments or a
//! bad config.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Logs go to stderr; RUST_LOG picks the level (default: warnings).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}
