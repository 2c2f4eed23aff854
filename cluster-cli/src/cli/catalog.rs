//! `cluster catalog show`.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use cluster::catalog::{PeerCatalog, PeerRecord, catalog_dir};
use cluster::{Config, Pid};

use super::Failure;

#[derive(Debug, Subcommand)]
pub(crate) enum CatalogCommand {
    /// Print a catalog: one row per peer (needs the node stopped: a running node holds its
    /// catalog's lock).
    Show(ShowArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["config", "path"])))]
pub(crate) struct ShowArgs {
    /// The cluster's config file; with --pid, shows that node's catalog (its `catalog_dir`,
    /// or the default `.cluster/catalog-<pid>` next to the config file).
    #[arg(long, value_name = "FILE", requires = "pid")]
    config: Option<PathBuf>,
    /// The node whose catalog to show (with --config).
    #[arg(long, requires = "config")]
    pid: Option<Pid>,
    /// A catalog directory to show.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "pid"])]
    path: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(command: CatalogCommand) -> Result<(), Failure> {
    match command {
        CatalogCommand::Show(args) => show(args),
    }
}

/// The catalog directory that `--path`, or `--config` with `--pid`, name.
pub(super) fn catalog_path(
    path: Option<&PathBuf>,
    config: Option<&PathBuf>,
    pid: Option<Pid>,
) -> Result<PathBuf, Failure> {
    match (path, config, pid) {
        (Some(path), _, _) => Ok(path.clone()),
        (None, Some(file), Some(pid)) => {
            let config = Config::load(file).map_err(Failure::usage)?;
            config.check_member(pid).map_err(Failure::usage)?;
            Ok(catalog_dir(pid, &config))
        }
        // clap's argument groups make this unreachable; say so rather than panic.
        _ => Err(Failure::usage(anyhow::anyhow!(
            "give --path DIR, or --config FILE with --pid PID"
        ))),
    }
}

fn show(args: ShowArgs) -> Result<(), Failure> {
    let path = catalog_path(args.path.as_ref(), args.config.as_ref(), args.pid)?;
    let catalog = PeerCatalog::open_existing(&path)?;
    let view = View {
        path: path.display().to_string(),
        owner: catalog.owner()?,
        incarnation: catalog.incarnation()?,
        peers: catalog.list()?,
    };
    drop(catalog);
    super::print(|out| {
        if args.json {
            write_json(out, &view)
        } else {
            write_table(out, &view)
        }
    })
}

struct View {
    path: String,
    owner: Option<Pid>,
    incarnation: Option<u32>,
    peers: Vec<PeerRecord>,
}

pub(super) fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn write_table(out: &mut impl Write, view: &View) -> io::Result<()> {
    writeln!(
        out,
        "catalog {}: node {}, incarnation {}, {} peers",
        view.path,
        or_dash(view.owner),
        or_dash(view.incarnation),
        view.peers.len()
    )?;
    let mut table = super::plain_table(
        [
            "PID",
            "ADDRESS",
            "STATUS",
            "INCARNATION",
            "LAST SEEN (UTC)",
            "METADATA",
        ],
        &[],
    );
    for r in &view.peers {
        let metadata: Vec<String> = r.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        table.add_row([
            r.pid.to_string(),
            r.address.clone(),
            r.status.to_string(),
            or_dash(r.incarnation),
            r.last_seen.map_or_else(|| "-".to_owned(), rfc3339),
            if metadata.is_empty() {
                "-".to_owned()
            } else {
                metadata.join(" ")
            },
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
                "address": r.address,
                "status": r.status.as_str(),
                "incarnation": r.incarnation,
                "last_seen": r.last_seen.map(rfc3339),
                "last_seen_ms": r.last_seen.map(millis),
                "metadata": r.metadata,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "path": view.path,
        "owner": view.owner,
        "incarnation": view.incarnation,
        "peers": peers,
    });
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)
}

pub(super) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `2026-11-26T08:01:02.123Z`.
pub(super) fn rfc3339(t: SystemTime) -> String {
    let ms = millis(t);
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_144_062_123);
        assert_eq!(rfc3339(t), "2025-11-26T08:01:02.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
