//! The `libzmq` backend: the `zmq` crate over the bundled libzmq.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cluster_core::{
    Config, DropReason, Options, PeerSet, Pid, Transport, TransportError, TransportEvent, wire,
};
use tokio::sync::watch;

use std::os::fd::{AsRawFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::endpoints::{self, Endpoints};
use crate::link_stats::{Counters, LinkStats};
use crate::liveness::{Peers, Status};

/// Distinguishes the inproc endpoints of transports living in one process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Fastest and slowest reconnection attempts to a peer that went away.
const RECONNECT_IVL: Duration = Duration::from_millis(100);
const RECONNECT_IVL_MAX: Duration = Duration::from_millis(1000);

/// A [`Transport`] over libzmq: one PULL socket bound on the node's address, one PUSH socket
/// per peer (see the crate docs for why, and for the socket options).
pub struct LibzmqTransport {
    pid: Pid,
    /// Distinguishes the inproc endpoints of this transport from those of others.
    id: u64,
    /// Numbers the PUSH sockets' monitor endpoints, so that a pid added back after its
    /// removal never meets its old monitor's endpoint.
    next_monitor: AtomicU64,
    options: Options,
    /// Every peer, configured or added, with its PUSH socket behind its own lock (libzmq
    /// sockets are not thread-safe; the transport is shared by every sending task). `None`
    /// once `remove_peer`, `shutdown` or `Drop` took it to close it.
    peers: Arc<Peers<Push>>,
    /// The monitors of PUSH sockets opened since the monitor thread last looked: it takes
    /// them over when woken (`Teardown::wake`).
    adopt: Adopt,
    /// The PULL socket and its readiness, read by the server's task directly. Shared
    /// (`Arc`) so that `readable` can await the readiness without holding this lock;
    /// `None` once `shutdown` or `Drop` took it.
    pull: Mutex<Option<Arc<PullSide>>>,
    stats: LinkStats,
    teardown: Mutex<Option<Teardown>>,
    /// Caps the inbound connections (see `guard`); stops when dropped.
    guard: Option<crate::guard::Guard>,
}

/// The PUSH socket to one peer.
type Push = Mutex<Option<zmq::Socket>>;

/// Monitors handed to the monitor thread, with the status each one keeps current.
type Adopt = Arc<Mutex<Vec<(Arc<Status>, zmq::Socket)>>>;

impl std::fmt::Debug for LibzmqTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibzmqTransport")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// The inbound side: the PULL socket and its notification descriptor.
struct PullSide {
    /// The `ZMQ_FD` of `socket`, registered with the tokio reactor, so that a frame wakes
    /// the server's task with no thread in between. Declared before `socket`: deregistered
    /// first when the last holder drops this.
    ready: AsyncFd<ZmqFd>,
    socket: Mutex<zmq::Socket>,
    /// Received frames are copied out of libzmq's messages into this slab, so that small
    /// frames cost no allocation each (see `RECV_SLAB`).
    slab: Mutex<BytesMut>,
}

/// The receive slab's size: frames of up to [`RECV_SLAB_FRAME_MAX`] bytes are cut from it,
/// and it is reused in place once every frame cut from it was dropped, or allocated anew.
const RECV_SLAB: usize = 64 * 1024;
/// Larger frames get an allocation of their own.
const RECV_SLAB_FRAME_MAX: usize = 512;

impl PullSide {
    fn socket(&self) -> MutexGuard<'_, zmq::Socket> {
        // A panic while holding this lock cannot leave the socket inconsistent: every call
        // into libzmq under it is a single non-blocking operation.
        self.socket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a message can be taken now. `Err` once the socket failed for good (its
    /// context is terminating).
    fn has_message(&self) -> zmq::Result<bool> {
        self.socket()
            .get_events()
            .map(|events| events.contains(zmq::POLLIN))
    }
}

/// Locks one of the transport's slots; a panic while holding it leaves nothing half-done
/// (each critical section is one non-blocking libzmq call or a `take`).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What must be released, in order, when the transport stops: the socket-owning threads are
/// told to stop and joined, then the PUSH sockets close (lingering), then the context ends.
struct Teardown {
    /// Wakes each socket-owning thread, which then looks at `stopping`.
    wakes: Vec<zmq::Socket>,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    ctx: zmq::Context,
}

impl Teardown {
    fn signal(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Wakes the socket-owning threads: to stop, or to take over new monitors.
    fn wake(&self) {
        for wake in &self.wakes {
            // A full pipe holds wake-ups the thread has not read yet: one is enough.
            let _ = wake.send(&b"wake"[..], zmq::DONTWAIT);
        }
    }

    /// Blocking: joins the threads, closes `pull` and `outs` (each PUSH lingers at most its
    /// `ZMQ_LINGER`) and terminates the context, which frees the port.
    /// If a concurrent `readable` still holds the PULL side, the socket closes when that
    /// call ends: terminating the context wakes it (`ZMQ_FD` is signalled, `ZMQ_EVENTS`
    /// fails with `ETERM`), and it returns `false`.
    fn finish(self, pull: Option<Arc<PullSide>>, outs: Vec<zmq::Socket>) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a libzmq socket thread panicked");
            }
        }
        drop(pull);
        drop(outs);
        drop(self.wakes);
        drop(self.ctx);
    }
}

fn zmq_err(what: &str, e: zmq::Error) -> TransportError {
    TransportError::Other(format!("{what}: {e}"))
}

fn ipv6(endpoint: &str) -> bool {
    endpoint.contains('[')
}

/// A handshake bounded by the heartbeat timeout, on every socket.
fn set_common_options(s: &zmq::Socket, o: &Options, endpoint: &str) -> zmq::Result<()> {
    s.set_ipv6(ipv6(endpoint))?;
    s.set_handshake_ivl(millis_i32(o.heartbeat_timeout))
}

/// Heartbeats on outbound sockets, so that a silent cut closes the connection on both ends:
/// this end stops hearing PONGs, and the far end, told our TTL in every PING, stops hearing
/// PINGs. Inbound (PULL) sockets send no heartbeats of their own: libzmq 4.3.4 aborts
/// (`!_io_error`, stream_engine_base.cpp:331) when a heartbeat timer fires on a connection
/// whose input was stopped by a full RCVHWM and that then failed, as happens to a node that
/// was frozen (SIGSTOP, a long pause) while its peers gave it up. The TTL timer that the
/// peers' PINGs set up closes silent inbound connections instead.
fn set_heartbeat_options(s: &zmq::Socket, o: &Options) -> zmq::Result<()> {
    s.set_heartbeat_ivl(millis_i32(o.heartbeat_interval))?;
    s.set_heartbeat_timeout(millis_i32(o.heartbeat_timeout))?;
    s.set_heartbeat_ttl(millis_i32(heartbeat_ttl(o)))
}

/// The TTL this end puts in its PINGs: how long the far end waits, after the last PING it
/// heard, before it closes the connection. Not before this end gives the connection up
/// itself: it sends a PING every `heartbeat_interval` and gives up when one has gone
/// unanswered for `heartbeat_timeout`, i.e. up to `heartbeat_timeout + heartbeat_interval`
/// after the last PING the far end heard. A TTL of `heartbeat_timeout` alone let the far end
/// close, after a stall shorter than the heartbeat timeout (a delay spike, or its own
/// process starved on a loaded machine: libzmq then runs its expired timers before it reads
/// the PINGs waiting in the socket), a connection this end still held live: the frames on
/// it were lost, and this end, which had detected nothing, reconnected at once.
///
/// libzmq counts the TTL in whole deciseconds (it truncates), at most `u16::MAX` of them,
/// and treats anything below 100 ms as "none": rounded up to a whole 100 ms, at least 100.
fn heartbeat_ttl(o: &Options) -> Duration {
    const DECISECOND: u128 = 100;
    let ms = (o.heartbeat_timeout + o.heartbeat_interval)
        .as_millis()
        .div_ceil(DECISECOND)
        .clamp(1, u128::from(u16::MAX))
        * DECISECOND;
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn hwm(o: &Options) -> i32 {
    i32::try_from(o.peer_queue).unwrap_or(i32::MAX)
}

/// Largest message libzmq accepts before closing the connection: exactly the frame limit,
/// so that nothing larger is ever allocated; the connection that sent it is closed and
/// counted ([`LinkStats::rejected_connections`]).
fn transport_max_size(o: &Options) -> i64 {
    i64::try_from(o.max_message_size).unwrap_or(i64::MAX)
}

/// A PUSH socket to `endpoint` with its options set, and the PAIR reading its monitor
/// (events on `monitor`), connected before the PUSH connects so that no event is missed.
fn open_push(
    ctx: &zmq::Context,
    o: &Options,
    endpoint: &str,
    monitor: &str,
) -> Result<(zmq::Socket, zmq::Socket), TransportError> {
    let push = ctx
        .socket(zmq::PUSH)
        .map_err(|e| zmq_err("push socket", e))?;
    let setup = |s: &zmq::Socket| -> zmq::Result<()> {
        set_common_options(s, o, endpoint)?;
        set_heartbeat_options(s, o)?;
        s.set_immediate(true)?;
        s.set_sndhwm(hwm(o))?;
        s.set_linger(millis_i32(o.linger))?;
        s.set_reconnect_ivl(millis_i32(RECONNECT_IVL))?;
        s.set_reconnect_ivl_max(millis_i32(RECONNECT_IVL_MAX))?;
        s.set_connect_timeout(millis_i32(o.heartbeat_timeout))
    };
    setup(&push).map_err(|e| zmq_err("push socket options", e))?;
    let events = zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw()
        | zmq::SocketEvent::DISCONNECTED.to_raw()
        | zmq::SocketEvent::CLOSED.to_raw()
        | zmq::SocketEvent::MONITOR_STOPPED.to_raw();
    let watching =
        monitor_of(ctx, &push, monitor, events).map_err(|e| zmq_err("push monitor", e))?;
    push.connect(endpoint)
        .map_err(|e| zmq_err(&format!("connect to {endpoint}"), e))?;
    Ok((push, watching))
}

/// Starts monitoring `s` on the inproc endpoint `name` and returns the PAIR reading it.
fn monitor_of(
    ctx: &zmq::Context,
    s: &zmq::Socket,
    name: &str,
    events: u16,
) -> zmq::Result<zmq::Socket> {
    s.monitor(name, i32::from(events))?;
    let m = ctx.socket(zmq::PAIR)?;
    m.connect(name)?;
    Ok(m)
}

impl LibzmqTransport {
    /// Binds node `pid`'s address from `config` and connects to every other peer.
    /// Connections come up asynchronously: see [`cluster_core::Server::wait_for_peers`].
    /// Must be called inside a tokio runtime (the inbound socket is registered with it).
    pub fn bind(pid: Pid, config: &Config) -> Result<Self, TransportError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TransportError::Other(
                "the libzmq transport must be created inside a tokio runtime".into(),
            ));
        }
        let endpoints = Endpoints::of(pid, config)?;
        let o = config.options();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let ctx = zmq::Context::new();
        let own = &endpoints.own;

        let pull = ctx
            .socket(zmq::PULL)
            .map_err(|e| zmq_err("pull socket", e))?;
        let setup = |s: &zmq::Socket| -> zmq::Result<()> {
            set_common_options(s, o, own)?;
            // A connection that does not complete its handshake is idle: closed by libzmq.
            s.set_handshake_ivl(millis_i32(
                o.heartbeat_timeout.min(o.idle_connection_timeout),
            ))?;
            s.set_rcvhwm(hwm(o))?;
            s.set_linger(0)?;
            s.set_maxmsgsize(transport_max_size(o))
        };
        setup(&pull).map_err(|e| zmq_err("pull socket options", e))?;
        pull.bind(own).map_err(|e| endpoints.bind_error(e))?;

        let peers = Peers::new(pid);
        let adopt = Adopt::default();
        let in_events = zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL.to_raw()
            | zmq::SocketEvent::DISCONNECTED.to_raw();
        let pull_monitor = monitor_of(&ctx, &pull, &format!("inproc://cz-{id}-in"), in_events)
            .map_err(|e| zmq_err("pull monitor", e))?;

        let fd = pull
            .get_fd()
            .map_err(|e| zmq_err("pull socket descriptor", e))?;
        // `AsyncFd::register` is the non-deprecated spelling, but it is `unsafe` and this
        // workspace forbids unsafe code. What it asks is upheld: the descriptor belongs to
        // `pull`, which `PullSide` closes only after it dropped `ready`.
        #[allow(deprecated)]
        let pull_ready = AsyncFd::with_interest(ZmqFd(fd), Interest::READABLE)
            .map_err(|e| TransportError::Other(format!("registering the pull socket: {e}")))?;
        let stats = LinkStats::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let mut wakes = Vec::new();
        let mut threads = Vec::new();
        let (wake, woken) = wake_pair(&ctx, &format!("inproc://cz-{id}-wake-mon"))
            .map_err(|e| zmq_err("wake pair", e))?;
        wakes.push(wake);
        let watcher = Watcher {
            node: pid,
            outs: Vec::new(),
            adopt: Arc::clone(&adopt),
            inbound: pull_monitor,
            woken,
            stopping: Arc::clone(&stopping),
            peers: Arc::clone(&peers),
            counters: Arc::clone(&stats.counters),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("zmq-monitor-{pid}"))
                .spawn(move || watcher.run())
                .map_err(|e| TransportError::Other(format!("spawning a thread: {e}")))?,
        );
        let guard = crate::guard::start_or_warn(
            crate::guard::Limits {
                port: crate::guard::port_of(&endpoints.address),
                cap: crate::guard::cap_for(o, endpoints.peers.len()),
                // libzmq says nothing of a connection's activity: the kernel does.
                idle: Some(crate::guard::Limits::idle_timeout(
                    o.idle_connection_timeout,
                    o.heartbeat_interval,
                )),
                kernel_activity: true,
            },
            crate::guard::Activity::default(),
            &stats,
        );
        let transport = Self {
            pid,
            id,
            next_monitor: AtomicU64::new(0),
            options: o.clone(),
            guard,
            peers,
            adopt,
            pull: Mutex::new(Some(Arc::new(PullSide {
                ready: pull_ready,
                socket: Mutex::new(pull),
                slab: Mutex::new(BytesMut::new()),
            }))),
            stats,
            teardown: Mutex::new(Some(Teardown {
                wakes,
                stopping,
                threads,
                ctx,
            })),
        };
        for (peer, address) in &endpoints.peers {
            transport.connect(*peer, address)?;
        }
        Ok(transport)
    }

    /// Makes `pid` at `address` (checked) a peer, with a PUSH socket connecting to it and a
    /// monitor the monitor thread takes over, in place of its socket to another address if
    /// it had one. `false` if it was a peer at that address already.
    fn connect(&self, pid: Pid, address: &str) -> Result<bool, TransportError> {
        let teardown = lock(&self.teardown);
        let Some(teardown) = teardown.as_ref() else {
            return Err(TransportError::Unavailable {
                pid,
                reason: "cannot add it: the transport is shut down".into(),
            });
        };
        let added = self.peers.add(pid, address, |status| {
            let n = self.next_monitor.fetch_add(1, Ordering::Relaxed);
            let monitor = format!("inproc://cz-{}-out-{pid}-{n}", self.id);
            let (push, monitor) = open_push(
                &teardown.ctx,
                &self.options,
                &endpoints::tcp(address),
                &monitor,
            )?;
            lock(&self.adopt).push((status, monitor));
            Ok(Mutex::new(Some(push)))
        })?;
        let Some(added) = added else {
            return Ok(false);
        };
        if let Some(old) = added.replaced {
            // Moved: the socket to its old address goes, as on removal.
            self.close_push(&old.link);
        }
        // The monitor thread takes the new monitor over.
        teardown.wake();
        Ok(true)
    }

    /// Closes the PUSH socket of a peer removed (or moved). What is queued on it gets at
    /// most the linger to leave, as on shutdown: libzmq cannot tell the server's control
    /// frames (the notice of the removal, sent just before) from messages in its queue.
    fn close_push(&self, push: &Push) {
        if let Some(push) = lock(push).take() {
            let _ = push.set_linger(millis_i32(self.options.linger));
            drop(push);
        }
    }

    /// Keeps the guard's cap at what the config's options give for the peers there are now.
    fn update_cap(&self) {
        if let Some(guard) = &self.guard {
            guard.set_cap(crate::guard::cap_for(&self.options, self.peers.len()));
        }
    }

    /// Counters of what this transport refused below the frame level.
    pub fn link_stats(&self) -> LinkStats {
        self.stats.clone()
    }

    /// The PULL side, unless the transport was shut down.
    fn pull_side(&self) -> Option<Arc<PullSide>> {
        lock(&self.pull).clone()
    }

    /// Takes every socket out of the transport (later calls find none) and the teardown,
    /// if it was not taken yet, with the PUSH sockets' linger set to `linger` if given.
    fn take_apart(
        &self,
        linger: Option<Duration>,
    ) -> Option<(Teardown, Option<Arc<PullSide>>, Vec<zmq::Socket>)> {
        let pull = lock(&self.pull).take();
        let teardown = lock(&self.teardown).take()?;
        teardown.signal();
        let outs: Vec<zmq::Socket> = self
            .peers
            .all()
            .iter()
            .filter_map(|p| lock(&p.link).take())
            .collect();
        if let Some(linger) = linger {
            for push in &outs {
                let _ = push.set_linger(millis_i32(linger));
            }
        }
        Some((teardown, pull, outs))
    }
}

/// Rounds of `yield_now` that [`LibzmqTransport::writable`] spends looking for room before
/// it sleeps: room usually comes back within microseconds (the peer's I/O thread reads the
/// pipe below its low-water mark), and a millisecond of sleep would idle a fast link.
const WRITABLE_SPINS: u32 = 8;

/// The notification descriptor of a libzmq socket (owned by the socket, not by this).
struct ZmqFd(RawFd);

impl AsRawFd for ZmqFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A bound PAIR (kept by the transport) and its connected twin (given to a thread).
fn wake_pair(ctx: &zmq::Context, name: &str) -> zmq::Result<(zmq::Socket, zmq::Socket)> {
    let wake = ctx.socket(zmq::PAIR)?;
    wake.set_linger(0)?;
    wake.bind(name)?;
    let woken = ctx.socket(zmq::PAIR)?;
    woken.set_linger(0)?;
    woken.connect(name)?;
    Ok((wake, woken))
}

/// Owns the monitor sockets: keeps the connection set current from libzmq's events.
struct Watcher {
    /// This node's pid (for the log).
    node: Pid,
    /// The monitor of each PUSH socket, with the status it keeps current; that of a
    /// socket closed (its peer removed or moved) until its last event.
    outs: Vec<(Arc<Status>, zmq::Socket)>,
    /// Monitors of PUSH sockets opened since the last look.
    adopt: Adopt,
    /// The monitor of the PULL socket.
    inbound: zmq::Socket,
    /// Wake-ups: to stop (then `stopping` is set), or to take over new monitors.
    woken: zmq::Socket,
    stopping: Arc<AtomicBool>,
    peers: Arc<Peers<Push>>,
    counters: Arc<Counters>,
}

/// Reads one monitor event (two frames: 6 bytes of event and value, then the endpoint).
fn read_event(m: &zmq::Socket) -> Option<u16> {
    let head = m.recv_msg(zmq::DONTWAIT).ok()?;
    // Drain the rest of the multipart event.
    while m.get_rcvmore().unwrap_or(false) {
        if m.recv_msg(zmq::DONTWAIT).is_err() {
            break;
        }
    }
    let b = head.get(..2)?;
    Some(u16::from_ne_bytes([*b.first()?, *b.get(1)?]))
}

/// The name of a monitor event, for the log.
fn event_name(event: u16) -> &'static str {
    use zmq::SocketEvent as E;
    [
        (E::HANDSHAKE_SUCCEEDED, "handshake succeeded"),
        (E::HANDSHAKE_FAILED_PROTOCOL, "handshake failed (protocol)"),
        (E::HANDSHAKE_FAILED_NO_DETAIL, "handshake failed"),
        (E::DISCONNECTED, "disconnected"),
        (E::CLOSED, "closed"),
        (E::MONITOR_STOPPED, "monitor stopped"),
    ]
    .into_iter()
    .find_map(|(e, name)| (e.to_raw() == event).then_some(name))
    .unwrap_or("other")
}

impl Watcher {
    /// Takes over the monitors of new PUSH sockets.
    fn adopt(&mut self) {
        self.outs.append(&mut lock(&self.adopt));
    }

    fn run(mut self) {
        let handshake = zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw();
        let stopped = zmq::SocketEvent::MONITOR_STOPPED.to_raw();
        // The monitors that sent their last event.
        let mut done = Vec::new();
        loop {
            self.adopt();
            let readable: Vec<bool> = {
                let mut items: Vec<zmq::PollItem<'_>> = self
                    .outs
                    .iter()
                    .map(|(_, m)| m)
                    .chain([&self.inbound, &self.woken])
                    .map(|s| s.as_poll_item(zmq::POLLIN))
                    .collect();
                match zmq::poll(&mut items, -1) {
                    Ok(_) => {}
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => {
                        tracing::error!("libzmq poll failed: {e}");
                        return;
                    }
                }
                items.iter().map(|i| i.is_readable()).collect()
            };
            if readable.last().copied().unwrap_or(true) {
                while self.woken.recv_msg(zmq::DONTWAIT).is_ok() {}
            }
            if self.stopping.load(Ordering::SeqCst) {
                // Monitors handed over before the stop (a peer added while shutting down)
                // close with the others: the context ends only once every socket is closed.
                self.adopt();
                self.peers.all_down();
                return;
            }
            for (i, (status, m)) in self.outs.iter().enumerate() {
                if !readable.get(i).copied().unwrap_or(false) {
                    continue;
                }
                while let Some(event) = read_event(m) {
                    tracing::debug!(
                        node = self.node,
                        peer = status.pid(),
                        event = event_name(event),
                        "outbound connection"
                    );
                    if event == stopped {
                        done.push(i);
                    }
                    self.peers.set(status, event == handshake);
                }
            }
            // A closed socket's monitor (a peer removed or moved) is read until its last
            // event: libzmq sends monitor events blocking, so one sent to a monitor that
            // nobody reads any more would stall its I/O thread for good.
            for i in done.drain(..).rev() {
                self.outs.remove(i);
            }
            if readable.get(self.outs.len()).copied().unwrap_or(false) {
                let disconnected = zmq::SocketEvent::DISCONNECTED.to_raw();
                while let Some(event) = read_event(&self.inbound) {
                    tracing::debug!(
                        node = self.node,
                        event = event_name(event),
                        "inbound connection"
                    );
                    let counter = if event == disconnected {
                        &self.counters.inbound_closed
                    } else {
                        &self.counters.rejected_connections
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[async_trait]
impl Transport for LibzmqTransport {
    fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        self.peers
            .with(to, |peer| send_on(&peer.status, &peer.link, &frame))
            .unwrap_or(Err(DropReason::UnknownPeer))
    }

    /// Looks for room with `ZMQ_EVENTS` (which also makes libzmq process the I/O thread's
    /// "room again" command, see `send`) for a few rounds of `yield_now`, then sleeps a
    /// millisecond (spurious wake-ups are allowed). libzmq can signal room through the PUSH
    /// socket's `ZMQ_FD`, but registering every PUSH with the reactor is not worth it for a
    /// path taken only under backpressure.
    async fn writable(&self, to: Pid) {
        let Some(peer) = self.peers.get(to) else {
            return;
        };
        for _ in 0..WRITABLE_SPINS {
            if !peer.status.is_up() {
                return;
            }
            let room = match lock(&peer.link).as_ref() {
                Some(push) => push.get_events().map_or(true, |e| e.contains(zmq::POLLOUT)),
                None => true,
            };
            if room {
                return;
            }
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    async fn readable(&self) -> bool {
        let Some(pull) = self.pull_side() else {
            return false;
        };
        loop {
            // ZMQ_FD is edge-triggered and only says "look at ZMQ_EVENTS": check them before
            // every wait (a frame may have arrived since the last edge was consumed), and
            // after every wake-up, forgetting the readiness only when there is nothing to read.
            match pull.has_message() {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => return self.pull_failed(&e),
            }
            let Ok(mut ready) = pull.ready.readable().await else {
                return false;
            };
            match pull.has_message() {
                Ok(true) => {
                    ready.retain_ready();
                    return true;
                }
                Ok(false) => ready.clear_ready(),
                Err(e) => return self.pull_failed(&e),
            }
        }
    }

    fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
        let Some(pull) = self.pull_side() else {
            return 0;
        };
        let socket = pull.socket();
        let mut slab = pull.slab.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        // Frames taken, handed up or not: a flood from a removed peer ends the batch too.
        let mut taken = 0;
        while taken < max {
            let Ok(msg) = socket.recv_msg(zmq::DONTWAIT) else {
                break;
            };
            taken += 1;
            if self.peers.is_from_removed(&msg) {
                if !wire::is_control(&msg) {
                    self.stats
                        .counters
                        .from_removed_peers
                        .fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            let frame = if msg.len() > RECV_SLAB_FRAME_MAX {
                Bytes::copy_from_slice(&msg)
            } else {
                if slab.capacity() < msg.len() {
                    // In place if every frame cut from it was dropped already.
                    slab.reserve(RECV_SLAB);
                }
                slab.extend_from_slice(&msg);
                slab.split().freeze()
            };
            events.push(TransportEvent::Frame(frame));
            n += 1;
        }
        n
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        self.peers.subscribe()
    }

    async fn shutdown(&self, linger: Duration) {
        let Some((teardown, pull, outs)) = self.take_apart(Some(linger)) else {
            return;
        };
        if let Err(e) = tokio::task::spawn_blocking(move || teardown.finish(pull, outs)).await {
            tracing::error!(pid = self.pid, "libzmq teardown failed: {e}");
        }
        self.peers.all_down();
    }

    /// Opens a PUSH socket to `address`; the peer counts as connected once its handshake
    /// succeeded, as a configured one does. Its inbound connections were never refused:
    /// the PULL socket takes any (the guard's cap grows with the peers). A peer it has at
    /// another address has moved: its socket to the old one is closed as on removal.
    fn add_peer(&self, pid: Pid, address: &str) -> Result<(), TransportError> {
        endpoints::check_added(pid, address)?;
        if self.connect(pid, address)? {
            self.update_cap();
        }
        Ok(())
    }

    /// Closes the PUSH socket to `pid`. libzmq cannot tell the server's control frames
    /// (among them the notice of the removal, sent just before) from messages in its
    /// queue, nor say how many it holds: what is queued gets at most the linger to leave,
    /// as on shutdown, the rest is discarded, and no [`TransportEvent::Dropped`] is
    /// reported (as when a connection dies; the server counts what the peer never
    /// acknowledged). Its frames, told by the sender pid in their header, are no longer
    /// handed up ([`LinkStats::from_removed_peers`]); its connection to this node's PULL
    /// socket stays open as long as it keeps it (a PULL socket cannot close one).
    fn remove_peer(&self, pid: Pid) -> Result<(), TransportError> {
        let Some(peer) = self.peers.remove(pid)? else {
            return Ok(());
        };
        self.close_push(&peer.link);
        self.update_cap();
        Ok(())
    }
}

impl Drop for LibzmqTransport {
    fn drop(&mut self) {
        // Dropped without shutdown (e.g. its runtime went away): stop the threads and release
        // everything on a helper thread, so that dropping never blocks for the linger.
        if let Some((teardown, pull, outs)) = self.take_apart(None) {
            let spawned = std::thread::Builder::new()
                .name("zmq-teardown".into())
                .spawn(move || teardown.finish(pull, outs));
            if let Err(e) = spawned {
                tracing::error!("cannot spawn the libzmq teardown thread: {e}");
            }
        }
    }
}

impl LibzmqTransport {
    /// The PULL socket failed (its context is terminating: the transport was shut down
    /// meanwhile): nothing more will arrive.
    fn pull_failed(&self, e: &zmq::Error) -> bool {
        if *e != zmq::Error::ETERM {
            tracing::error!(pid = self.pid, "libzmq pull socket failed: {e}");
        }
        false
    }
}

/// Sends `frame` on `push`, the PUSH socket to the peer of `status` (see `send`).
fn send_on(status: &Status, push: &Push, frame: &[u8]) -> Result<(), DropReason> {
    if !status.is_up() {
        return Err(DropReason::Unreachable);
    }
    let push = lock(push);
    // Taken by shutdown: the transport is closing, nothing reaches the peer anymore.
    let Some(push) = push.as_ref() else {
        return Err(DropReason::Unreachable);
    };
    match push.send(frame, zmq::DONTWAIT) {
        Ok(()) => Ok(()),
        // libzmq learns that its I/O thread freed room below the high-water mark only
        // when it processes its command queue, which a send does at most once per ~1 ms:
        // a full queue would refuse everything for that long. Reading ZMQ_EVENTS
        // processes the commands now; then the send is tried once more.
        Err(zmq::Error::EAGAIN)
            if status.is_up() && push.get_events().is_ok_and(|e| e.contains(zmq::POLLOUT)) =>
        {
            match push.send(frame, zmq::DONTWAIT) {
                Ok(()) => Ok(()),
                Err(zmq::Error::EAGAIN) if status.is_up() => Err(DropReason::Backpressure),
                Err(_) => Err(DropReason::Unreachable),
            }
        }
        // With ZMQ_IMMEDIATE, EAGAIN means either no completed connection (the monitor
        // may not have told us yet) or a full SNDHWM on a live one.
        Err(zmq::Error::EAGAIN) if status.is_up() => Err(DropReason::Backpressure),
        Err(_) => Err(DropReason::Unreachable),
    }
}

/// Milliseconds as the `i32` libzmq wants, saturating.
fn millis_i32(d: std::time::Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_ttl_outlasts_the_senders_own_detection_in_whole_deciseconds() {
        let ttl = |interval, timeout| {
            heartbeat_ttl(&Options {
                heartbeat_interval: Duration::from_millis(interval),
                heartbeat_timeout: Duration::from_millis(timeout),
                ..Options::default()
            })
        };
        assert_eq!(ttl(500, 2000), Duration::from_millis(2500));
        assert_eq!(ttl(100, 600), Duration::from_millis(700));
        // Rounded up, never down below the sender's detection time.
        assert_eq!(ttl(1, 2), Duration::from_millis(100));
        assert_eq!(ttl(30, 2001), Duration::from_millis(2100));
        // Within what libzmq accepts (u16 deciseconds).
        assert_eq!(
            ttl(3_600_000, 3_600_000),
            Duration::from_millis(u64::from(u16::MAX) * 100)
        );
        let s = zmq::Context::new().socket(zmq::PUSH).unwrap();
        set_heartbeat_options(
            &s,
            &Options {
                heartbeat_interval: Duration::from_secs(3600),
                heartbeat_timeout: Duration::from_secs(3600),
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(s.get_heartbeat_ttl().unwrap(), i32::from(u16::MAX) * 100);
    }

    #[test]
    fn binding_outside_a_runtime_is_an_error_not_a_panic() {
        let config = Config::local(1, 40000).unwrap();
        let e = LibzmqTransport::bind(1, &config).unwrap_err();
        assert!(e.to_string().contains("tokio runtime"), "{e}");
    }
}
