//! Arguments and dispatch of the `cluster` tool.

mod bench;
mod catalog;
mod demo;
mod node;

use clap::{Parser, Subcommand};

/// Tools for clusters built with the `cluster` library.
#[derive(Debug, Parser)]
#[command(name = "cluster", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the nodes of a config as separate processes on real ZeroMQ over loopback: traffic,
    /// a kill -9, a restart, and a table of what happened to every message.
    Demo(demo::DemoArgs),
    /// Benchmark the ZeroMQ transport against the bare library in the same run: P2P
    /// throughput, broadcast to k peers, round trip p50/p99 (processes on loopback).
    Bench(bench::BenchArgs),
    /// Run one node, driven from stdin: `<pid> <text>`, `* <text>` (broadcast),
    /// `burst <pid|*> <count>`, `stats`, `peers`, `quit`.
    Node(node::NodeArgs),
    /// Inspect a node's peer catalog.
    #[command(subcommand)]
    Catalog(catalog::CatalogCommand),
}

/// A failed command: the error to print and the exit code.
pub(crate) struct Failure {
    pub(crate) error: anyhow::Error,
    pub(crate) code: u8,
}

impl Failure {
    /// Bad arguments or a bad config: exit code 2, like clap's own usage errors.
    fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self {
            error: error.into(),
            code: 2,
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Self {
            error: error.into(),
            code: 1,
        }
    }
}

pub(crate) fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Catalog(command) => catalog::run(command),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Node(args) => node::run(args),
    }
}
