//! P2P throughput and round-trip latency of the backend in use against the bare library,
//! between two processes: `cargo run --release -p cluster-zmq --example bench [messages]`.
//! Add `--no-default-features --features zeromq` for the pure-Rust backend.

use std::process::ExitCode;

use cluster_zmq::bench::{self, BenchOptions};

fn main() -> ExitCode {
    // The second process of the benchmark is this executable again.
    if let Some(code) = bench::child_main() {
        return code;
    }
    let mut options = BenchOptions::default();
    if let Some(n) = std::env::args().nth(1) {
        match n.parse() {
            Ok(n) => options.messages = n,
            Err(_) => {
                eprintln!("usage: bench [messages]");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::run(&options)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
