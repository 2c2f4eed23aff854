//! [`Relay`]: a userspace TCP relay on loopback that shapes a link (latency, jitter,
//! bandwidth) and breaks it (a silent cut, or a hold that stalls it), closing nothing.
//!
//! The kernel here has no netem; a relay in the test process does the same for one link:
//! a node is configured with the relay's address in place of its peer's, and every
//! connection it opens is forwarded to the peer over a connection of the relay's own.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How a [`Relay`] delays what it forwards, in each direction.
///
/// A chunk read at time `t` leaves the relay when the link has sent everything before it
/// (at `bandwidth` bytes a second) plus `latency` ± a uniform `jitter`, but never before
/// the chunk read before it: a TCP stream is never reordered, so jitter only bunches bytes
/// up, as on a real path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    /// One-way delay.
    pub latency: Duration,
    /// Each chunk's delay varies uniformly within `latency ± jitter` (clamped at zero).
    pub jitter: Duration,
    /// Bytes a second each way; `None`: unlimited.
    pub bandwidth: Option<u64>,
}

impl Shape {
    /// No delay, no limit: a plain relay.
    pub const INSTANT: Shape = Shape {
        latency: Duration::ZERO,
        jitter: Duration::ZERO,
        bandwidth: None,
    };

    /// A wide-area link: `latency ± jitter` one way, unlimited bandwidth.
    pub fn wan(latency: Duration, jitter: Duration) -> Self {
        Shape {
            latency,
            jitter,
            bandwidth: None,
        }
    }
}

/// What a [`Relay`] does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards them, shaped.
    Forward,
    /// Reads and discards every byte (those already read and not yet sent too), closing
    /// nothing: a silent partition, which only heartbeats can notice.
    Cut,
    /// Stops reading and sending, keeping what it holds: the link stalls (a frozen router,
    /// a long delay spike); the senders' kernel buffers fill up. Back to
    /// [`Forward`](Mode::Forward), everything held goes on, in order.
    Hold,
}

/// Counters of a relay, over all its connections and both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStats {
    /// Connections accepted (and forwarded to the target).
    pub connections: u64,
    /// Bytes written to the far side.
    pub forwarded: u64,
    /// Bytes discarded because the relay was [cut](Mode::Cut).
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

/// What every connection of a relay shares with the relay's handle.
#[derive(Debug)]
struct Control {
    mode: watch::Sender<Mode>,
    /// Bumped by [`Relay::reset`]: every connection open then is closed.
    resets: watch::Sender<u64>,
    shape: Mutex<Shape>,
    counters: Counters,
    seed: u64,
}

impl Control {
    fn shape(&self) -> Shape {
        *self.shape.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A loopback TCP relay to one target address: bound on a port of its own (port 0, held
/// for its whole life, so it never races anyone for it), it forwards every connection it
/// accepts to the target over a fresh connection, both ways, [shaped](Shape), and can
/// [`cut`](Relay::cut), [`hold`](Relay::hold) and [`heal`](Relay::heal) the link without
/// closing anything. Dropping it closes every connection.
///
/// ```
/// use std::time::Duration;
/// use cluster_testkit::net::{Relay, Shape};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let target = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let shape = Shape::wan(Duration::from_millis(20), Duration::from_millis(5));
/// let relay = Relay::with_shape(&target.local_addr()?.to_string(), shape, 1).await?;
/// let mut client = tokio::net::TcpStream::connect(relay.address()).await?;
/// let (mut server, _) = target.accept().await?;
/// client.write_all(b"hello").await?;
/// let mut got = [0u8; 5];
/// server.read_exact(&mut got).await?; // 15 to 25 ms later
/// assert_eq!(&got, b"hello");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Relay {
    address: String,
    control: Arc<Control>,
    /// The accepting task, which owns every connection's tasks: dropping the relay aborts
    /// them all, closing every connection.
    _tasks: JoinSet<()>,
}

/// Bytes read at once; also the unit the shaping delays.
const CHUNK: usize = 16 * 1024;
/// Chunks in flight inside the relay per direction: past that it stops reading, and TCP's
/// own flow control holds the sender back (memory stays bounded).
const CHUNKS_IN_FLIGHT: usize = 256;

impl Relay {
    /// A relay to `target` (`host:port`) that forwards at once.
    pub async fn start(target: &str) -> io::Result<Self> {
        Self::with_shape(target, Shape::INSTANT, 0).await
    }

    /// A relay to `target` with `shape` each way; `seed` drives the jitter.
    pub async fn with_shape(target: &str, shape: Shape, seed: u64) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let control = Arc::new(Control {
            mode: watch::Sender::new(Mode::Forward),
            resets: watch::Sender::new(0),
            shape: Mutex::new(shape),
            counters: Counters::default(),
            seed,
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(accept(listener, target.to_owned(), Arc::clone(&control)));
        Ok(Self {
            address,
            control,
            _tasks: tasks,
        })
    }

    /// The address to give nodes in place of the target's: `127.0.0.1:<port>`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Discards every byte from now on, both ways, closing nothing (see [`Mode::Cut`]).
    pub fn cut(&self) {
        self.set_mode(Mode::Cut);
    }

    /// Stalls the link, keeping what it holds (see [`Mode::Hold`]).
    pub fn hold(&self) {
        self.set_mode(Mode::Hold);
    }

    /// Forwards again (what was held first, in order).
    pub fn heal(&self) {
        self.set_mode(Mode::Forward);
    }

    /// Closes every connection the relay carries now, both ways, discarding what it holds,
    /// and forwards again: a link that breaks, losing what was on it, and that its ends
    /// connect again (through the relay) as soon as they notice.
    pub fn reset(&self) {
        // Cut first, so that nothing held slips through before the connections close; the
        // accepting task forwards again once it has closed them.
        self.set_mode(Mode::Cut);
        self.control.resets.send_modify(|n| *n += 1);
    }

    /// What the relay does now.
    pub fn mode(&self) -> Mode {
        *self.control.mode.borrow()
    }

    fn set_mode(&self, mode: Mode) {
        self.control.mode.send_replace(mode);
    }

    /// Changes the shaping of chunks read from now on.
    pub fn set_shape(&self, shape: Shape) {
        *self
            .control
            .shape
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = shape;
    }

    /// What it has done so far.
    pub fn stats(&self) -> RelayStats {
        let c = &self.control.counters;
        RelayStats {
            connections: c.connections.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Accepts connections until the relay is dropped (which aborts this task and, with its
/// `JoinSet`, every connection's tasks).
async fn accept(listener: TcpListener, target: String, control: Arc<Control>) {
    let mut conns = JoinSet::new();
    let mut index: u64 = 0;
    let mut resets = control.resets.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connections as they end, so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            Ok(()) = resets.changed() => {
                // Aborted, each task drops its halves: every connection closes, and what
                // the relay held is lost. New connections are forwarded again.
                conns.abort_all();
                control.mode.send_replace(Mode::Forward);
                continue;
            }
        };
        let Ok((down, _)) = accepted else {
            // Out of descriptors, or similar: try again a little later, without spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(up) = TcpStream::connect(&target).await else {
            // The target is not listening: the client sees its connection closed, as it
            // would without the relay.
            continue;
        };
        let _ = down.set_nodelay(true);
        let _ = up.set_nodelay(true);
        control.counters.connections.fetch_add(1, Ordering::Relaxed);
        let (down_read, down_write) = down.into_split();
        let (up_read, up_write) = up.into_split();
        for (way, from, to) in [(0, down_read, up_write), (1, up_read, down_write)] {
            let seed = crate::seed_mix(control.seed, 0, (index * 2 + way) as u32);
            let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
            conns.spawn(read_side(from, tx, Arc::clone(&control), seed));
            conns.spawn(write_side(to, rx, Arc::clone(&control)));
        }
        index += 1;
    }
}

/// A chunk read from one side, and when it may be written to the other.
struct Chunk {
    due: Instant,
    bytes: Vec<u8>,
}

/// When each chunk of one direction leaves: see [`Shape`].
struct Schedule {
    rng: StdRng,
    /// When the link has sent everything read so far (bandwidth).
    link_free: Instant,
    /// When the last chunk leaves (FIFO).
    last_due: Instant,
}

impl Schedule {
    fn new(seed: u64) -> Self {
        let now = Instant::now();
        Self {
            rng: StdRng::seed_from_u64(seed),
            link_free: now,
            last_due: now,
        }
    }

    fn due(&mut self, now: Instant, len: usize, shape: Shape) -> Instant {
        let sent = match shape.bandwidth {
            Some(rate) if rate > 0 => {
                let start = now.max(self.link_free);
                self.link_free = start + Duration::from_secs_f64(len as f64 / rate as f64);
                self.link_free
            }
            _ => now,
        };
        let delay = if shape.jitter.is_zero() {
            shape.latency
        } else {
            let j = shape.jitter.as_secs_f64();
            let d = shape.latency.as_secs_f64() + self.rng.random_range(-j..=j);
            Duration::from_secs_f64(d.max(0.0))
        };
        self.last_due = (sent + delay).max(self.last_due);
        self.last_due
    }
}

/// Waits while the relay holds.
async fn unless_held(mode: &mut watch::Receiver<Mode>) -> Mode {
    match mode.wait_for(|m| *m != Mode::Hold).await {
        Ok(m) => *m,
        // The relay is gone: forward what is left.
        Err(_) => Mode::Forward,
    }
}

/// Reads one side, stamps each chunk with when it may leave, and hands it to the writer.
async fn read_side(
    mut from: OwnedReadHalf,
    tx: mpsc::Sender<Chunk>,
    control: Arc<Control>,
    seed: u64,
) {
    let mut mode = control.mode.subscribe();
    let mut schedule = Schedule::new(seed);
    let mut buf = vec![0u8; CHUNK];
    loop {
        // Held: read nothing, so that the sender's buffers fill as behind a stalled link.
        unless_held(&mut mode).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // A chunk read just as the link stalled waits with it.
        if unless_held(&mut mode).await == Mode::Cut {
            control
                .counters
                .dropped
                .fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        let now = Instant::now();
        let chunk = Chunk {
            due: schedule.due(now, n, control.shape()),
            bytes: buf.get(..n).unwrap_or_default().to_vec(),
        };
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    // Dropping `tx` tells the writer that this side ended: it half-closes the other.
}

/// Writes each chunk to the other side when it is due, unless the relay is cut by then.
async fn write_side(mut to: OwnedWriteHalf, mut rx: mpsc::Receiver<Chunk>, control: Arc<Control>) {
    let mut mode = control.mode.subscribe();
    while let Some(chunk) = rx.recv().await {
        tokio::time::sleep_until(chunk.due).await;
        if unless_held(&mut mode).await == Mode::Cut {
            control
                .counters
                .dropped
                .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
            continue;
        }
        if to.write_all(&chunk.bytes).await.is_err() {
            return;
        }
        control
            .counters
            .forwarded
            .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{DEADLINE, wait_until};

    /// A target listener, a relay to it with `shape`, and a client connected through it
    /// with the target's end of that connection.
    async fn link(shape: Shape) -> (Relay, TcpStream, TcpStream) {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = target.local_addr().unwrap().to_string();
        let relay = Relay::with_shape(&address, shape, 7).await.unwrap();
        let client = TcpStream::connect(relay.address()).await.unwrap();
        let (server, _) = tokio::time::timeout(DEADLINE, target.accept())
            .await
            .unwrap()
            .unwrap();
        (relay, client, server)
    }

    async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        tokio::time::timeout(DEADLINE, s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        got
    }

    /// Only lower bounds on time are checked: the relay never sends a chunk early (sleeps
    /// never end early), whereas how late it is depends on the machine's load.
    #[tokio::test]
    async fn delays_both_ways_and_keeps_the_byte_order_despite_jitter() {
        let shape = Shape::wan(Duration::from_millis(20), Duration::from_millis(5));
        let (relay, mut client, mut server) = link(shape).await;
        let began = std::time::Instant::now();
        client.write_all(b"ping").await.unwrap();
        assert_eq!(read_n(&mut server, 4).await, b"ping");
        server.write_all(b"pong").await.unwrap();
        assert_eq!(read_n(&mut client, 4).await, b"pong");
        // Two one-way trips of at least 15 ms each.
        assert!(
            began.elapsed() >= Duration::from_millis(30),
            "{:?}",
            began.elapsed()
        );

        // Many small writes, each its own chunk with its own jitter: still in order.
        let expected: Vec<u8> = (0..2000u32).flat_map(|i| i.to_le_bytes()).collect();
        let writer = {
            let bytes = expected.clone();
            tokio::spawn(async move {
                for piece in bytes.chunks(4) {
                    client.write_all(piece).await.unwrap();
                    tokio::task::yield_now().await;
                }
                client
            })
        };
        assert_eq!(read_n(&mut server, expected.len()).await, expected);
        drop(writer.await.unwrap());
        assert_eq!(relay.stats().connections, 1);
        assert_eq!(relay.stats().forwarded, 8 + expected.len() as u64);
    }

    #[tokio::test]
    async fn bandwidth_spaces_bytes_out() {
        // 64 KiB at 1 MiB/s: at least 62.5 ms on the wire.
        let shape = Shape {
            bandwidth: Some(1 << 20),
            ..Shape::INSTANT
        };
        let (_relay, mut client, mut server) = link(shape).await;
        let payload = vec![0xA5u8; 64 * 1024];
        let began = std::time::Instant::now();
        let writer = tokio::spawn(async move {
            client.write_all(&payload).await.unwrap();
            client
        });
        let got = read_n(&mut server, 64 * 1024).await;
        assert!(got.iter().all(|b| *b == 0xA5));
        assert!(
            began.elapsed() >= Duration::from_micros(62_500),
            "{:?}",
            began.elapsed()
        );
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_cut_drops_silently_a_hold_keeps_and_heal_resumes_on_the_same_connection() {
        let (relay, mut client, mut server) = link(Shape::INSTANT).await;
        client.write_all(b"a").await.unwrap();
        assert_eq!(read_n(&mut server, 1).await, b"a");

        relay.cut();
        client.write_all(b"lost").await.unwrap();
        wait_until("the relay to drop 4 bytes", DEADLINE, || {
            relay.stats().dropped == 4
        })
        .await
        .unwrap();
        relay.heal();
        // Nothing was closed: the same connection carries on, without the cut bytes.
        client.write_all(b"b").await.unwrap();
        assert_eq!(read_n(&mut server, 1).await, b"b");

        relay.hold();
        assert_eq!(relay.mode(), Mode::Hold);
        client.write_all(b"kept").await.unwrap();
        server.write_all(b"back").await.unwrap();
        // Held: nothing comes through. (A check that can only fail if the relay is broken:
        // a working one never forwards while held, however slow the machine.)
        let mut buf = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(50), server.read(&mut buf)).await;
        assert!(early.is_err(), "read {early:?} through a held relay");
        relay.heal();
        assert_eq!(read_n(&mut server, 4).await, b"kept");
        assert_eq!(read_n(&mut client, 4).await, b"back");
        assert_eq!(relay.stats().dropped, 4);
    }

    #[tokio::test]
    async fn a_closed_side_is_passed_on_and_a_dead_target_refused() {
        let (relay, client, mut server) = link(Shape::INSTANT).await;
        drop(client);
        let mut rest = Vec::new();
        let n = tokio::time::timeout(DEADLINE, server.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "end of stream passed on");
        drop(relay);

        // A target nobody listens on: the relay closes the client's connection.
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = gone.local_addr().unwrap().to_string();
        drop(gone);
        let relay = Relay::start(&address).await.unwrap();
        let mut client = TcpStream::connect(relay.address()).await.unwrap();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(DEADLINE, client.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        assert_eq!(relay.stats().connections, 0);
    }
}
