//! The in-memory measurement: the cluster over `cluster-mem`'s [`MemNetwork`], in the
//! benchmarking process itself, on one current-thread tokio runtime (one core).

use std::time::{Duration, Instant};

use cluster_core::{Config, Envelope, Options, Server};
use cluster_mem::MemNetwork;

use crate::error::failed;
use crate::measure::{Rtt, WARMUP, payload_text, percentiles, timed_round_trips};
use crate::{BenchError, BenchOptions, PHASE_DEADLINE, Security};

/// Messages in flight at most in the in-memory throughput run: the sender sends this many
/// (fewer for large payloads: a window holds at most 16 MiB of payload), then the
/// receiver takes them. Every queue holds four windows, in messages and in bytes, so
/// nothing is dropped (the in-memory transport loses nothing by itself).
pub const MEM_WINDOW: u64 = 2048;

/// Payload bytes in flight at most in a window: a window of large messages is shorter.
const WINDOW_BYTES: usize = 16 << 20;

/// Bytes a frame carries beyond its payload, at most: header, encoding, trailer.
const FRAME_OVERHEAD: usize = 1024;

/// How long the throughput receiver waits for the rest of a window before it gives up
/// (only if something was dropped after all: the run then reports fewer deliveries).
/// Generous: a starved machine must not look like a loss.
const STALL: Duration = PHASE_DEADLINE;

/// The window of `payload`-byte messages: [`MEM_WINDOW`], or fewer so that a window holds
/// at most [`WINDOW_BYTES`] of payload (at least one message).
fn window(payload: usize) -> u64 {
    let fits = WINDOW_BYTES / payload.max(1);
    u64::try_from(fits.clamp(1, MEM_WINDOW as usize)).unwrap_or(1)
}

/// The two nodes' config: queues of four windows, in messages and in bytes, frames large
/// enough for `payload`, and the frames' protection of `security`.
fn mem_config(security: Security, payload: usize) -> Result<Config, BenchError> {
    let capacity = 4 * MEM_WINDOW as usize;
    let defaults = Options::default();
    let frame = payload.saturating_add(FRAME_OVERHEAD);
    let max_message_size = frame
        .max(defaults.max_message_size)
        .min(cluster_core::MAX_MESSAGE_SIZE);
    let window_bytes = usize::try_from(window(payload))
        .unwrap_or(1)
        .saturating_mul(frame);
    let bytes = window_bytes
        .saturating_mul(4)
        .max(max_message_size)
        .max(defaults.peer_queue_bytes)
        .min(cluster_core::MAX_QUEUE_BYTES);
    let options = Options {
        peer_queue: capacity,
        inbox_capacity: capacity,
        outbox_capacity: capacity,
        max_message_size,
        peer_queue_bytes: bytes,
        inbox_bytes: bytes,
        encrypt: security.encrypt(),
        mac: security.mac(),
        ..defaults
    };
    // The addresses are never used: the in-memory network routes by pid.
    Config::local(2, 7000)
        .map_err(failed)?
        .with_cluster_key(security.key())
        .with_options(options)
        .map_err(failed)
}

/// Nodes 1 and 2 of a fresh in-memory network.
fn nodes(config: &Config) -> Result<(Server<String>, Server<String>), BenchError> {
    let net = MemNetwork::new(config, 0);
    let node = |pid| -> Result<Server<String>, BenchError> {
        Server::<String>::builder(pid, config.clone())
            .incarnation(1)
            .build(net.transport(pid).map_err(failed)?)
            .map_err(failed)
    };
    Ok((node(1)?, node(2)?))
}

/// Runs `f` on a new current-thread runtime of its own, on a blocking thread of the
/// caller's runtime, whatever that runtime's flavor: the measurement gets one core.
async fn on_one_core<T, F>(f: impl FnOnce() -> F + Send + 'static) -> Result<T, BenchError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, BenchError>>,
{
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(failed)?;
        runtime.block_on(f())
    })
    .await
    .map_err(failed)?
}

/// P2P throughput end to end, Server outbox → inbox: `(messages per second, delivered)`.
pub(crate) async fn mem_throughput(o: &BenchOptions) -> Result<(f64, u64), BenchError> {
    let (messages, payload, security) = (o.messages, o.payload, o.security);
    on_one_core(move || throughput(messages, payload, security)).await
}

async fn throughput(
    messages: u64,
    payload: usize,
    security: Security,
) -> Result<(f64, u64), BenchError> {
    let (a, mut b) = nodes(&mem_config(security, payload)?)?;
    let out = a.outbox();
    let text = payload_text(payload);
    let mut sent = 0;
    let mut delivered = 0;
    let started = Instant::now();
    while sent < messages {
        let window = window(payload).min(messages - sent);
        for i in 0..window {
            out.send(Envelope::new(2, (sent + i) as i64, text.clone()))
                .await
                .map_err(failed)?;
        }
        sent += window;
        let mut got = 0;
        let inbox = b.inbox();
        let whole = tokio::time::timeout(STALL, async {
            while got < window {
                if inbox.recv().await.is_none() {
                    return false;
                }
                got += 1;
            }
            true
        })
        .await;
        delivered += got;
        if !matches!(whole, Ok(true)) {
            tracing::warn!(
                "in-memory throughput: {got} of a window of {window} delivered; stopped after {sent} messages"
            );
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let dropped = a.stats().dropped().total() + b.stats().dropped().total();
    tracing::info!("in-memory stream: {delivered} delivered, {dropped} dropped");
    a.shutdown().await;
    b.shutdown().await;
    Ok((delivered as f64 / elapsed, delivered))
}

/// Round trips between nodes 1 and 2 on the same runtime, one at a time: node 2 echoes
/// from a task of its own, as the ZeroMQ run's child does.
pub(crate) async fn mem_round_trips(o: &BenchOptions) -> Result<Rtt, BenchError> {
    let (round_trips, payload, security) = (o.round_trips, o.payload, o.security);
    on_one_core(move || round_trips_on(round_trips, payload, security)).await
}

async fn round_trips_on(
    round_trips: u64,
    payload: usize,
    security: Security,
) -> Result<Rtt, BenchError> {
    let (mut a, mut b) = nodes(&mem_config(security, payload)?)?;
    let echo = tokio::spawn(async move {
        let out = b.outbox();
        while let Some(env) = b.inbox().recv().await {
            if env.msg_id < 0
                || out
                    .send(Envelope::new(1, env.msg_id, env.msg))
                    .await
                    .is_err()
            {
                break;
            }
        }
        b.shutdown().await;
    });
    let out = a.outbox();
    let text = payload_text(payload);
    let total = WARMUP + round_trips;
    let samples = timed_round_trips(&mut a, total, &text, "in-memory round trip").await?;
    out.send(Envelope::new(2, -1, String::new()))
        .await
        .map_err(failed)?;
    tokio::time::timeout(PHASE_DEADLINE, echo)
        .await
        .map_err(|_| failed("in-memory echo did not stop"))?
        .map_err(failed)?;
    a.shutdown().await;
    Ok(percentiles(
        samples.into_iter().skip(WARMUP as usize).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(security: Security) -> BenchOptions {
        BenchOptions {
            messages: 5000,
            round_trips: 200,
            security,
            ..BenchOptions::default()
        }
    }

    /// Nothing is lost in memory, also across windows and a last partial window; the
    /// percentiles are ordered. Timings are not judged.
    #[test]
    fn in_memory_delivers_everything_and_orders_its_percentiles() -> Result<(), BenchError> {
        // Multi-thread on purpose: the measurement makes its own current-thread runtime.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(failed)?;
        for security in [Security::None, Security::SipHash, Security::Aead] {
            let o = small(security);
            let (rate, delivered) = runtime.block_on(mem_throughput(&o))?;
            assert_eq!(delivered, o.messages, "{security}");
            assert!(rate > 0.0, "{security}");
            let rtt = runtime.block_on(mem_round_trips(&o))?;
            assert!(
                Duration::ZERO < rtt.p50
                    && rtt.p50 <= rtt.p90
                    && rtt.p90 <= rtt.p99
                    && rtt.p99 <= rtt.p999,
                "{security}: {rtt:?}"
            );
        }
        // Large payloads: shorter windows and byte bounds that hold them, so still
        // nothing is dropped (with the default 64 MiB bounds, 2,048 messages of 1 MB were).
        let large = BenchOptions {
            // 100 MB: more than the default byte bounds would let through at once.
            messages: 100,
            round_trips: 3,
            payload: 1_000_000,
            ..BenchOptions::default()
        };
        let (_, delivered) = runtime.block_on(mem_throughput(&large))?;
        assert_eq!(delivered, large.messages);
        assert_eq!(window(1_000_000), 16);
        assert_eq!(window(64), MEM_WINDOW);
        assert_eq!(window(usize::MAX), 1);
        Ok(())
    }
}
