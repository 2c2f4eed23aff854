//! P2P throughput, round-trip latency and (optionally) broadcast throughput of a backend
//! against the bare library, between processes on loopback:
//!
//! `cargo run --release -p cluster-zmq --example bench -- [messages] [--backend libzmq|zeromq] [--broadcast K]`
//!
//! Add `--features zeromq` to have both backends, or `--no-default-features --features
//! zeromq` for the pure-Rust one only. `--broadcast K` adds a broadcast to K peers (1..=16),
//! one child process each. Progress goes to stderr, the report to stdout.

use std::process::ExitCode;

use cluster_zmq::bench::{self, BenchOptions};

const USAGE: &str = "usage: bench [messages] [--backend libzmq|zeromq] [--broadcast K]";

fn main() -> ExitCode {
    // The other processes of the benchmark are this executable again.
    if let Some(code) = bench::child_main() {
        return code;
    }
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
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
    let mut progress = |p: bench::Progress| eprintln!("{p}");
    match runtime.block_on(bench::run_with_progress(&options, &mut progress)) {
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

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<BenchOptions, String> {
    let mut options = BenchOptions::default();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--backend" => options.backend = value()?.parse()?,
            "--broadcast" => {
                let v = value()?;
                options.broadcast_peers = v
                    .parse()
                    .map_err(|_| format!("--broadcast {v:?}: not a number"))?;
            }
            _ if !flag.starts_with('-') => {
                options.messages = arg
                    .parse()
                    .map_err(|_| format!("messages {arg:?}: not a number"))?;
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(options)
}
