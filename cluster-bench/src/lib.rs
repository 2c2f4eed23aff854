//! Benchmarks of the ZeroMQ transport (`cluster-zmq`) against the bare library it is built
//! on, measured in the same run, between processes on loopback. Its front end is the
//! `cluster` binary: `cluster bench` runs it and prints a table (or JSON); the figures it
//! produced, each with its command, are in the README.
//!
//! What it measures, each side by side with the bare crate of the chosen [`Backend`] (`zmq`
//! for libzmq, or `zeromq`):
//!
//! * **throughput** — one node streams [`BenchOptions::messages`] messages of a
//!   [`BenchOptions::payload`]-byte string to a node in a child process; the bare baseline
//!   is a PUSH → PULL of the same crate, with as many messages of the same size;
//! * **round trip** — one message to the child and back, [`BenchOptions::round_trips`]
//!   times, one at a time: p50, p90, p99 and p999 (with the default 10,000 round trips,
//!   p999 is the sample that 10 samples lie above, so one stall of the machine moves it);
//!   the bare baseline is a REQ → REP;
//! * **broadcast** (when [`BenchOptions::broadcast_peers`] is `k > 0`) — one node
//!   broadcasts every message to `k` nodes, each in its own child process (every message is
//!   `k` deliveries); the bare baseline is `k` PUSH sockets in the sending process, one per
//!   child PULL, each message sent on all `k` (the bare side encodes nothing). Rates are
//!   total deliveries per second, from the first delivery at any receiver to the last at
//!   any receiver (the receivers' wall clocks are the machine's).
//!
//! * **in memory** (when [`BenchOptions::mem`]) — the cluster alone, over `cluster-mem`'s
//!   `MemNetwork`, in the benchmarking process itself on one current-thread tokio runtime
//!   of its own (one core), whatever the runtime of the caller: node 1 sends
//!   [`BenchOptions::messages`] messages of [`BenchOptions::payload`] bytes to node 2,
//!   Server outbox → inbox, in windows of [`MEM_WINDOW`] in flight (the in-memory transport
//!   loses nothing and every queue holds four windows, so everything is delivered: the
//!   report counts it); and [`BenchOptions::round_trips`] round trips between the two
//!   nodes, node 2 echoing from a task of its own on the same runtime. There is no bare
//!   baseline.
//!
//! * **memory** ([`run_rss`], `cluster bench --rss`) — one node streams large messages
//!   (1 MiB by default) for 30 s to a peer whose process is stopped (`SIGSTOP`); the report
//!   gives the sender's peak resident set size beside the sum of its configured byte bounds
//!   (target: peak ≤ 2 × bounds + 100 MiB).
//! * **a dead peer under full load** ([`run_dead_peer`], `cluster bench --dead-peer`) —
//!   one node sends at full rate to three peers, each in its own child process; one is
//!   killed (`SIGKILL`) at a sixth of the run, another stopped (`SIGSTOP`) at a third. The
//!   report gives the healthy peer's deliveries per second in each phase (target: no drop
//!   beyond 10%), the sender's drops by reason, and its RSS sampled once a second (target:
//!   flat).
//!
//! Rates are measured at the receivers, from the first message to the last. Cluster
//! throughput counts delivered messages only (the count is reported beside it). A transport
//! never blocks on a peer, so the sending side does its own flow control, as an application
//! would: every few dozen messages it lets the server's task run and looks at its
//! `backpressure` drop count, pausing (with exponential back-off) while that keeps growing.
//! Each measurement runs [`BenchOptions::rounds`] times, alternating bare and cluster so
//! that a change of load on the machine hits both sides alike; the report gives medians.
//!
//! # Child processes
//!
//! The other ends run in child processes, started with the [`ChildCommand`] given to
//! [`run`]: its program and argument prefix, followed by the words of one role. The program
//! must hand those words to [`run_child`] and exit with failure if it returns an error.
//! `cluster` does this with a hidden subcommand, `cluster bench-child <words>…`. Every wait
//! on a child or a socket is bounded (two minutes per phase), and the children are killed
//! by their pid when a measurement fails or is abandoned (its future dropped).
//!
//! # Example
//!
//! A program that is both the benchmark and its own child processes:
//!
//! ```no_run
//! use cluster_bench::{BenchOptions, ChildCommand};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let args: Vec<String> = std::env::args().skip(1).collect();
//!     if args.first().map(String::as_str) == Some("bench-child") {
//!         // One of the child processes started below: play the role its words name.
//!         return Ok(cluster_bench::run_child(&args[1..])?);
//!     }
//!     let child = ChildCommand::new(std::env::current_exe()?, ["bench-child"]);
//!     let options = BenchOptions { messages: 100_000, ..BenchOptions::default() };
//!     let runtime = tokio::runtime::Runtime::new()?;
//!     let report = runtime.block_on(cluster_bench::run(&child, &options))?;
//!     println!("{report}");
//!     Ok(())
//! }
//! ```
//!
//! # Features
//!
//! `libzmq` and `zeromq` (both default) compile in the bare library of that backend and the
//! transport's backend of the same name; options naming a backend that is not compiled in
//! are refused with an error that names the feature.

mod bare;
mod child;
mod dead_peer;
mod error;
mod measure;
mod mem;
mod options;
mod process;
mod received;
mod report;
mod rss;

pub use child::run_child;
pub use cluster_zmq::Backend;
pub use dead_peer::{
    DEAD_PEER_PIDS, DeadPeerOptions, DeadPeerReport, Fanout, Fate, PeerFigures, Phase, YIELD_EVERY,
    run_dead_peer,
};
pub use error::BenchError;
pub use measure::{run, run_with_progress};
pub use mem::MEM_WINDOW;
pub use options::{BenchOptions, ChildCommand, MAX_BROADCAST_PEERS, RuntimeFlavor, Security};
pub use report::{BenchReport, BroadcastFigures, Figures, Progress};
pub use rss::{RssOptions, RssReport, run_rss};

use std::time::Duration;

/// Longest a benchmark phase may take before it is abandoned.
const PHASE_DEADLINE: Duration = Duration::from_secs(120);
