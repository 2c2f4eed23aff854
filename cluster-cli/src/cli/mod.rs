//! Arguments and dispatch of the `cluster` tool.

mod bench;
mod catalog;
mod dead_peer;
mod demo;
mod members;
mod node;

use std::io::{self, StdoutLock, Write};

use clap::{Parser, Subcommand};
use comfy_table::{CellAlignment, Table};

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
    /// Run one node that joins a running cluster first (`cluster node --join`): it asks the
    /// members its config lists to let it in, then runs like `cluster node`. Its config
    /// lists the members it knows and itself; the members' configs need not list it.
    Join(node::NodeArgs),
    /// Take a stopped node out of the cluster: start it, ask the members to let it go,
    /// stop. Exit code 1 if no member confirmed within --wait.
    Leave(node::LeaveArgs),
    /// Inspect a node's peer catalog.
    #[command(subcommand)]
    Catalog(catalog::CatalogCommand),
    /// Each peer's status, incarnation and last seen: from a running node's metrics
    /// endpoint (`--node ADDR`, the address of its `--metrics`), or from a stopped node's
    /// catalog (`--config FILE --pid PID`, or `--path DIR`).
    Members(members::MembersArgs),
    /// One of the processes that `cluster bench` starts: plays the role its words name.
    #[command(name = bench::CHILD_SUBCOMMAND, hide = true)]
    BenchChild(bench::BenchChildArgs),
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
        Command::BenchChild(args) => bench::run_child(args),
        Command::Demo(args) => demo::run(args),
        Command::Members(args) => members::run(args),
        Command::Node(args) => node::run(args),
        Command::Join(mut args) => {
            args.join = true;
            node::run(args)
        }
        Command::Leave(args) => node::run_leave(args),
    }
}

/// Writes a command's output to stdout with `write`, and flushes it. A closed pipe (`| head`)
/// is not a failure: the reader took what it wanted and left.
fn print(write: impl FnOnce(&mut StdoutLock<'static>) -> io::Result<()>) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing to stdout").into())
        }
        _ => Ok(()),
    }
}

/// A borderless table, columns two spaces apart: plain text that reads the same in a
/// terminal, a pipe or a file. `right` are the columns aligned right (numbers).
fn plain_table<const N: usize>(header: [&str; N], right: &[usize]) -> Table {
    let mut table = Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(header);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i + 1 == N { 0 } else { 2 }));
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}
