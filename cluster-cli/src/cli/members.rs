//! `cluster members`: a node's peers (status, incarnation, last seen), from a running node's
//! metrics endpoint or from a stopped node's catalog.
//!
//! A running node holds its catalog's lock, so nothing else can read the catalog while it
//! runs; what it knows is published instead, as the membership gauges of its `--metrics`
//! endpoint, which follow the catalog's own rules (see `cluster::metrics`). Both sources give
//! the same table.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use cluster::catalog::{CatalogError, PeerCatalog, PeerRecord};
use cluster::{Incarnation, Pid};

use super::Failure;
use super::catalog::{catalog_path, millis, or_dash, rfc3339};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["node", "config", "path"])))]
pub(crate) struct MembersArgs {
    /// A running node's metrics address: the ADDR of its `cluster node --metrics ADDR`
    /// (host:port).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["config", "pid", "path"])]
    node: Option<String>,
    /// The cluster's config file; with --pid, that (stopped) node's catalog.
    #[arg(long, value_name = "FILE", requires = "pid")]
    config: Option<PathBuf>,
    /// The stopped node whose catalog to read (with --config).
    #[arg(long, requires = "config")]
    pid: Option<Pid>,
    /// A stopped node's catalog directory.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "pid"])]
    path: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// How long to wait for a node's metrics endpoint to accept, and then to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// More than any node's metrics (a few hundred bytes a peer): a bound on what is read.
const MAX_RESPONSE: u64 = 64 << 20;

/// What a node knows of its peers, and where that came from.
struct View {
    /// `metrics` or `catalog`.
    source: &'static str,
    /// The URL or the catalog directory.
    from: String,
    pid: Option<Pid>,
    incarnation: Option<Incarnation>,
    peers: Vec<PeerRecord>,
}

pub(crate) fn run(args: MembersArgs) -> Result<(), Failure> {
    let view = match &args.node {
        Some(address) => from_node(address)?,
        None => from_catalog(&args)?,
    };
    super::print(|out| {
        if args.json {
            write_json(out, &view)
        } else {
            write_table(out, &view)
        }
    })
}

fn from_node(address: &str) -> Result<View, Failure> {
    let text = fetch_metrics(address)?;
    let members = cluster::metrics::members_from_text(&text)
        .with_context(|| format!("--node {address}: the metrics there are not a cluster node's"))?;
    Ok(View {
        source: "metrics",
        from: format!("http://{address}/metrics"),
        pid: Some(members.pid),
        incarnation: members.incarnation,
        peers: members.peers,
    })
}

/// `GET /metrics` from `address` (HTTP/1.0, so the body ends with the connection).
fn fetch_metrics(address: &str) -> Result<String, Failure> {
    let targets: Vec<_> = address
        .to_socket_addrs()
        .map_err(|e| Failure::usage(anyhow::anyhow!("--node {address}: not host:port: {e}")))?
        .collect();
    let mut last_error = None;
    let mut stream = None;
    for target in &targets {
        match TcpStream::connect_timeout(target, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let Some(mut stream) = stream else {
        let why = last_error.map_or_else(|| "no address".to_owned(), |e| e.to_string());
        return Err(anyhow::anyhow!(
            "--node {address}: cannot connect: {why}; is a node running with --metrics {address}?"
        )
        .into());
    };
    let response = get_metrics(&mut stream, address)
        .with_context(|| format!("--node {address}: reading the metrics"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("--node {address}: not an HTTP response"))?;
    let status = head.lines().next().unwrap_or_default();
    let ok = status
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code == "200");
    if !status.starts_with("HTTP/") || !ok {
        return Err(anyhow::anyhow!("--node {address}: the endpoint answered \"{status}\"").into());
    }
    if head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:"))
    {
        return Err(anyhow::anyhow!(
            "--node {address}: the endpoint sent an encoded body to an HTTP/1.0 request"
        )
        .into());
    }
    Ok(body.to_owned())
}

/// Sends the request and reads the whole response (the server closes the connection).
fn get_metrics(stream: &mut TcpStream, address: &str) -> io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {address}\r\nAccept: text/plain\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut response)?;
    Ok(response)
}

fn from_catalog(args: &MembersArgs) -> Result<View, Failure> {
    let path = catalog_path(args.path.as_ref(), args.config.as_ref(), args.pid)?;
    let catalog = match PeerCatalog::open_existing(&path) {
        Ok(c) => c,
        Err(e @ CatalogError::Locked { .. }) => {
            return Err(anyhow::Error::new(e)
                .context(
                    "the node is probably running: ask it instead, with \
                     `cluster members --node ADDR` (the address of its --metrics)",
                )
                .into());
        }
        Err(e) => return Err(e.into()),
    };
    let owner = catalog.owner()?;
    let view = View {
        source: "catalog",
        from: path.display().to_string(),
        pid: owner,
        incarnation: catalog.incarnation()?,
        peers: catalog
            .list()?
            .into_iter()
            .filter(|r| Some(r.pid) != owner)
            .collect(),
    };
    Ok(view)
}

fn write_table(out: &mut impl Write, view: &View) -> io::Result<()> {
    writeln!(
        out,
        "node {}, incarnation {}, {} peers (from {} {})",
        or_dash(view.pid),
        or_dash(view.incarnation),
        view.peers.len(),
        view.source,
        view.from
    )?;
    let mut table = super::plain_table(
        ["PID", "ADDRESS", "STATUS", "INCARNATION", "LAST SEEN (UTC)"],
        &[],
    );
    for r in &view.peers {
        table.add_row([
            r.pid.to_string(),
            or_dash(Some(&r.address).filter(|a| !a.is_empty())),
            r.status.to_string(),
            or_dash(r.incarnation),
            r.last_seen.map_or_else(|| "-".to_owned(), rfc3339),
        ]);
    }
    writeln!(out, "{}", table.trim_fmt())
}

fn write_json(out: &mut impl Write, view: &View) -> io::Result<()> {
    let peers: Vec<serde_json::Value> = view
        .peers
        .iter()
        .map(|r| {
            serde_json::json!({
                "pid": r.pid,
                "address": Some(&r.address).filter(|a| !a.is_empty()),
                "status": r.status.as_str(),
                "incarnation": r.incarnation,
                "last_seen": r.last_seen.map(rfc3339),
                "last_seen_ms": r.last_seen.map(millis),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "source": view.source,
        "from": view.from,
        "pid": view.pid,
        "incarnation": view.incarnation,
        "peers": peers,
    });
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)
}
