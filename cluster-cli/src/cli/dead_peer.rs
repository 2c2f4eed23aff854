//! `cluster bench --dead-peer`: a dead peer under full load, as text or JSON.

use std::io::Write;

use anyhow::anyhow;
use cluster_bench::{self as bench, ChildCommand, DeadPeerOptions, DeadPeerReport};
use serde_json::json;
use tokio::runtime::Runtime;

use super::Failure;

/// Runs the benchmark on `runtime` (the sender's) and prints its report.
pub(super) fn run(
    runtime: &Runtime,
    child: &ChildCommand,
    o: &DeadPeerOptions,
    as_json: bool,
) -> Result<(), Failure> {
    tracing::info!(
        "dead peer under full load: {:?}, peer killed at {:?}, another stopped at {:?}",
        o.duration,
        o.kill_at(),
        o.stop_at()
    );
    let report = runtime.block_on(async {
        tokio::select! {
            r = bench::run_dead_peer(child, o) => r.map_err(|e| anyhow!(e)),
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; benchmark processes stopped")),
        }
    })?;
    let text = if as_json {
        report_json(&report).to_string()
    } else {
        report.to_string()
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| Failure::from(anyhow!(e)))?;
    Ok(())
}

fn report_json(r: &DeadPeerReport) -> serde_json::Value {
    let o = &r.options;
    let secs = |d: std::time::Duration| d.as_secs_f64();
    let drops = |d: &cluster::DropCounts| {
        d.nonzero()
            .map(|(reason, n)| (reason.as_str().to_owned(), json!(n)))
            .collect::<serde_json::Map<_, _>>()
    };
    let healthy = r.healthy_rates();
    let slowest = r.healthy_slowest();
    // NaN (no figure) is written as null.
    let number = |x: f64| x.is_finite().then_some(x);
    let (rss_min, rss_max) = r.rss_range();
    json!({
        "backend": o.backend.as_str(),
        "options": {
            "seconds": secs(o.duration),
            "payload": o.payload,
            "peer_queue": o.peer_queue,
            "fanout": o.fanout.as_str(),
            "security": o.security.as_str(),
            "runtime": o.runtime.as_str(),
            "kill_at_s": secs(o.kill_at()),
            "stop_at_s": secs(o.stop_at()),
            "sample_interval_s": secs(o.sample_interval()),
        },
        "phases": r.phases.iter().enumerate().map(|(i, p)| json!({
            "name": p.name,
            "start_s": secs(p.start),
            "end_s": secs(p.end),
            "healthy_rate": healthy.get(i),
            "healthy_change_percent": if i == 0 { None } else { number(r.change_percent(i)) },
            "healthy_slowest_rate": slowest.get(i).copied().and_then(number),
            "healthy_slowest_change_percent": number(r.slowest_change_percent(i)),
            "dropped": drops(&r.phase_drops[i]),
        })).collect::<Vec<_>>(),
        "throughput_target_met": r.throughput_target_met(),
        "peers": r.peers.iter().map(|p| json!({
            "pid": p.pid,
            "process_id": p.process_id,
            "fate": p.fate.as_str(),
            "rates": p.rates,
            "slowest": p.slowest.map(number),
            "received": p.received,
            "series": p.series.iter().map(|&(t, c)| json!([secs(t), c])).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "sender": {
            "messages": r.sent,
            "copies_sent": r.stats.sent,
            "dropped": drops(&r.stats.dropped_outgoing),
            "dropped_total": r.stats.dropped_outgoing.total(),
            "unconfirmed": r.stats.unconfirmed,
            "lost_in_transit": r.stats.lost_in_transit,
            "rss_min_bytes": rss_min,
            "rss_max_bytes": rss_max,
            "rss": r.rss.iter().map(|&(t, b)| json!([secs(t), b])).collect::<Vec<_>>(),
        },
    })
}
