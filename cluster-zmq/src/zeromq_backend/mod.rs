//! The `zeromq` backend: the pure-Rust `zeromq` crate, plus the reconnection, bounds and
//! heartbeats it lacks (see the crate docs).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cluster_core::{
    Config, DropReason, Options, PeerSet, Pid, Transport, TransportError, TransportEvent, wire,
};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zeromq::util::PeerIdentity;
use zeromq::{
    DealerSocket, Endpoint, Host, MultiPeerBackend, RouterSocket, Socket, SocketEvent,
    SocketOptions, SocketRecv, SocketSend, ZmqMessage,
};

mod control;
mod inbound;

use self::control::Control;
use self::inbound::{BATCH, Inbound};
use crate::endpoints::{self, Endpoints};
use crate::guard::Activity;
use crate::link_stats::{Counters, LinkStats};
use crate::liveness::{Peers, Status};

/// Fuzzing only: decodes `bytes` as a control frame of this backend (heartbeat,
/// acknowledgement) and asserts that one that decodes encodes back to the same bytes.
/// Returns whether it decoded. Never panics on any input (that is what is fuzzed).
#[doc(hidden)]
pub fn fuzz_control_frame(bytes: &[u8]) -> bool {
    control::fuzz_decode(bytes)
}

/// Fastest and slowest reconnection attempts to a peer that went away.
const RECONNECT_IVL: Duration = Duration::from_millis(100);
const RECONNECT_IVL_MAX: Duration = Duration::from_millis(1000);

/// `None` while running; `Some(deadline)` once shutdown began: flush until the deadline.
type StopSignal = watch::Receiver<Option<Instant>>;

/// A [`Transport`] over the pure-Rust `zeromq` crate: one ROUTER bound on the node's
/// address, one DEALER per peer, each owned by its own task (see the crate docs).
pub struct ZeromqTransport {
    pid: Pid,
    options: Options,
    limits: Limits,
    /// Every peer, configured or added, with the bounded queue of its task.
    peers: Arc<Peers<Queue>>,
    inbound: Inbound,
    /// Where the peers' tasks report what they discarded.
    events: mpsc::Sender<Vec<TransportEvent>>,
    /// The runtime the transport was bound in, where the tasks of added peers run.
    runtime: tokio::runtime::Handle,
    stats: LinkStats,
    stop: watch::Sender<Option<Instant>>,
    /// The receiver task; taken by `shutdown`.
    receiver: Mutex<Option<JoinHandle<()>>>,
    /// The peers' tasks (those of removed peers until they ended); taken by `shutdown`.
    senders: Mutex<Vec<JoinHandle<()>>>,
    /// Caps the inbound connections and closes idle ones (see `guard`); stops when dropped.
    guard: Option<crate::guard::Guard>,
}

/// What the transport keeps of one peer's task: its bounded queue, and the signal that
/// ends the task (the peer was removed, or moved to another address), with the reason
/// to report what was still queued with.
struct Queue {
    frames: mpsc::Sender<Bytes>,
    end: watch::Sender<Option<DropReason>>,
}

impl std::fmt::Debug for ZeromqTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZeromqTransport")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// Timings and bounds of one transport, from the config's options.
#[derive(Debug, Clone, Copy)]
struct Limits {
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    /// Unacknowledged frames a sender keeps in flight on one connection.
    window: u64,
    /// The largest frame a peer may announce (see [`socket_options`]).
    max_frame: usize,
    /// What a peer's task may spend sending the control frames still queued when its
    /// peer is removed (as shutdown may spend flushing).
    linger: Duration,
}

impl Limits {
    fn new(o: &Options) -> Self {
        Self {
            heartbeat_interval: o.heartbeat_interval,
            heartbeat_timeout: o.heartbeat_timeout,
            window: u64::try_from(o.peer_queue).unwrap_or(u64::MAX).max(1),
            max_frame: o.max_message_size.saturating_add(64 * 1024),
            linger: o.linger,
        }
    }

    /// The receiver acknowledges every quarter window, so a sender rarely waits.
    fn ack_every(&self) -> u64 {
        (self.window / 4).max(1)
    }
}

/// Socket options of every socket of this backend: frames are limited to the frame limit
/// plus room for the ZeroMQ framing and a slack of 64 KiB (so that a frame just above the
/// limit still reaches the server, which counts it as `too_large`), and a frame header
/// announcing more fails its connection before anything is reserved (the `zeromq` crate
/// as patched in `vendor/zeromq`).
fn socket_options(limits: &Limits) -> SocketOptions {
    let mut options = SocketOptions::default();
    options.max_frame_size(limits.max_frame);
    options
}

impl ZeromqTransport {
    /// Binds node `pid`'s address from `config` and starts connecting to every other peer.
    /// Must be called inside a tokio runtime.
    pub async fn bind(pid: Pid, config: &Config) -> Result<Self, TransportError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            TransportError::Other(
                "the zeromq transport must be created inside a tokio runtime".into(),
            )
        })?;
        let endpoints = Endpoints::of(pid, config)?;
        let limits = Limits::new(config.options());
        let mut router = RouterSocket::with_options(socket_options(&limits));
        let monitor = router.monitor();
        router
            .bind(&endpoints.own)
            .await
            .map_err(|e| endpoints.bind_error(e))?;

        let stats = LinkStats::default();
        let activity = Activity::default();
        let guard = crate::guard::start_or_warn(
            crate::guard::Limits {
                port: crate::guard::port_of(&endpoints.address),
                cap: crate::guard::cap_for(config.options(), endpoints.peers.len()),
                idle: Some(crate::guard::Limits::idle_timeout(
                    config.options().idle_connection_timeout,
                    config.options().heartbeat_interval,
                )),
                kernel_activity: false,
            },
            activity.clone(),
            &stats,
        );
        let (stop, stop_rx) = watch::channel(None);
        let (tx, inbound) = Inbound::channel();
        let receiver = tokio::spawn(
            Receiver {
                backend: router.backend(),
                router,
                monitor,
                activity,
                addresses: HashMap::new(),
                tx: tx.clone(),
                stop: stop_rx.clone(),
                counters: Arc::clone(&stats.counters),
                limits,
                conns: HashMap::new(),
            }
            .run(),
        );

        let transport = Self {
            pid,
            options: config.options().clone(),
            limits,
            peers: Peers::new(pid),
            inbound,
            events: tx,
            runtime,
            stats,
            stop,
            receiver: Mutex::new(Some(receiver)),
            senders: Mutex::new(Vec::with_capacity(endpoints.peers.len())),
            guard,
        };
        for (peer, address) in &endpoints.peers {
            transport.connect(*peer, address)?;
        }
        Ok(transport)
    }

    /// Makes `pid` at `address` (checked) a peer, with a task of its own connecting to it.
    /// `false` if it was a peer at that address already.
    fn connect(&self, pid: Pid, address: &str) -> Result<bool, TransportError> {
        let added = self.peers.add(pid, address, |status| {
            // Its task would stop at once: say so rather than add a peer that never comes up.
            if self.stop.borrow().is_some() {
                return Err(TransportError::Unavailable {
                    pid,
                    reason: "cannot add it: the transport is shut down".into(),
                });
            }
            let (frames, rx) = mpsc::channel(self.options.peer_queue.max(1));
            let (end, end_rx) = watch::channel(None);
            let link = Link {
                status,
                endpoint: endpoints::tcp(address),
                rx,
                peers: Arc::clone(&self.peers),
                events: self.events.clone(),
                stop: self.stop.subscribe(),
                end: end_rx,
                limits: self.limits,
            };
            let mut senders = lock(&self.senders);
            // Bounded under churn: the tasks of removed peers are let go once they ended.
            senders.retain(|task| !task.is_finished());
            senders.push(self.runtime.spawn(link.run()));
            Ok(Queue { frames, end })
        })?;
        let Some(added) = added else {
            return Ok(false);
        };
        if let Some(old) = added.replaced {
            // Moved: the task to its old address ends; what it held was for an address
            // that no longer reaches the peer.
            old.link.end.send_replace(Some(DropReason::Unreachable));
        }
        Ok(true)
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
}

/// Locks a slot of the transport; a panic while holding it leaves nothing half-done (each
/// critical section is a `take`).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl Transport for ZeromqTransport {
    fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        self.peers
            .with(to, |peer| {
                if !peer.status.is_up() {
                    return Err(DropReason::Unreachable);
                }
                match peer.link.frames.try_send(frame) {
                    Ok(()) => Ok(()),
                    Err(mpsc::error::TrySendError::Full(_)) => Err(DropReason::Backpressure),
                    Err(mpsc::error::TrySendError::Closed(_)) => Err(DropReason::Unreachable),
                }
            })
            .unwrap_or(Err(DropReason::UnknownPeer))
    }

    /// Waits for room in the peer's bounded queue (a permit, released at once), which
    /// its task frees as it sends, or discards when the connection is lost. A peer that is
    /// unknown or not connected has nothing to wait for: the next send says why.
    async fn writable(&self, to: Pid) {
        let Some(peer) = self.peers.get(to) else {
            return;
        };
        if !peer.status.is_up() {
            return;
        }
        // Err: the peer's task is gone (shutdown, removal), and the next send says so.
        drop(peer.link.frames.reserve().await);
    }

    async fn readable(&self) -> bool {
        self.inbound.readable().await
    }

    fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
        let from = events.len();
        self.inbound.try_recv_many(events, max);
        let dropped = self.peers.drop_from_removed(events, from);
        if dropped > 0 {
            self.stats
                .counters
                .from_removed_peers
                .fetch_add(dropped, Ordering::Relaxed);
        }
        events.len() - from
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        self.peers.subscribe()
    }

    async fn shutdown(&self, linger: Duration) {
        let deadline = Instant::now() + linger;
        self.stop.send_replace(Some(deadline));
        // The sender tasks flush to live peers until the deadline, then stop.
        let grace = linger + Duration::from_secs(1);
        let senders = std::mem::take(&mut *lock(&self.senders));
        for task in senders {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline + grace, task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.inbound.close();
        let receiver = lock(&self.receiver).take();
        if let Some(task) = receiver {
            // The receiver unbinds the port before it ends.
            let abort = task.abort_handle();
            if tokio::time::timeout(grace, task).await.is_err() {
                abort.abort();
            }
        }
        self.peers.all_down();
    }

    /// Starts a task connecting to `address`; the peer counts as connected after its
    /// first acknowledgement, as a configured one does. Its inbound connections were never
    /// refused: the ROUTER takes any (the guard's cap grows with the peers). A peer it has
    /// at another address has moved: the task to the old one ends, reporting the messages
    /// it still held as `unreachable`.
    fn add_peer(&self, pid: Pid, address: &str) -> Result<(), TransportError> {
        endpoints::check_added(pid, address)?;
        if self.connect(pid, address)? {
            self.update_cap();
        }
        Ok(())
    }

    /// Tells the peer's task, which discards the messages still queued and reports them as
    /// [`TransportEvent::Dropped`] with [`DropReason::UnknownPeer`], sends the control
    /// frames among them (the server's notice of the removal, sent just before) for at
    /// most the linger, and closes its connection. Frames already written to the
    /// connection are not recalled. Its
    /// frames, told by the sender pid in their header, are no longer handed up
    /// ([`LinkStats::from_removed_peers`]); its own connection to this node's ROUTER stays
    /// open as long as it keeps it.
    fn remove_peer(&self, pid: Pid) -> Result<(), TransportError> {
        let Some(peer) = self.peers.remove(pid)? else {
            return Ok(());
        };
        peer.link.end.send_replace(Some(DropReason::UnknownPeer));
        self.update_cap();
        Ok(())
    }
}

impl Drop for ZeromqTransport {
    fn drop(&mut self) {
        // Dropped without shutdown: every task stops at once on its own.
        self.stop.send_replace(Some(Instant::now()));
        self.inbound.close();
    }
}

/// Resolves once shutdown begins (or the transport is gone).
async fn stopped(stop: &mut StopSignal) -> Instant {
    match stop.wait_for(Option::is_some).await {
        Ok(deadline) => (*deadline).unwrap_or_else(Instant::now),
        Err(_) => Instant::now(),
    }
}

/// The receiving side of one inbound connection, keyed by the ROUTER's routing id.
struct Conn {
    received: u64,
    acked: u64,
    last: Instant,
    /// Silent for longer than the heartbeat timeout: its sender has given it up.
    stale: bool,
    /// When the guard was last told of this connection's activity.
    touched: Instant,
}

/// Owns the ROUTER socket: hands frames to the server, answers pings, acknowledges.
struct Receiver {
    router: RouterSocket,
    /// The socket's own handle, to close one connection (a client that does not read).
    backend: Arc<dyn MultiPeerBackend>,
    /// The socket's events: which peer address each routing id has.
    monitor: futures::channel::mpsc::Receiver<SocketEvent>,
    /// What the guard learns of each connection's activity.
    activity: Activity,
    /// The peer address of each connection, by routing id.
    addresses: HashMap<Bytes, std::net::SocketAddr>,
    tx: mpsc::Sender<Vec<TransportEvent>>,
    stop: StopSignal,
    counters: Arc<Counters>,
    limits: Limits,
    conns: HashMap<Bytes, Conn>,
}

impl Receiver {
    async fn run(mut self) {
        let mut stop = self.stop.clone();
        let mut batch = Vec::with_capacity(BATCH);
        'outer: loop {
            let first = tokio::select! {
                _ = stopped(&mut stop) => break,
                Some(event) = self.monitor.next() => {
                    self.on_event(event);
                    continue;
                }
                m = self.router.recv() => m,
            };
            let mut next = Some(first);
            // Take what is ready now, up to a batch, before waking the server.
            while let Some(m) = next.take() {
                match m {
                    Ok(m) => {
                        if self.on_message(m, &mut batch).await.is_err() {
                            break 'outer;
                        }
                    }
                    Err(e) => {
                        tracing::debug!("zeromq router recv: {e}");
                        // Never spin on a socket in a bad state.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                if batch.len() >= BATCH {
                    break;
                }
                next = tokio::select! {
                    biased;
                    m = self.router.recv() => Some(m),
                    () = std::future::ready(()) => None,
                };
            }
            if !batch.is_empty() {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if self.tx.send(full).await.is_err() {
                    break;
                }
            }
        }
        let errors = self.router.close().await;
        for e in errors {
            tracing::debug!("zeromq router close: {e}");
        }
    }

    /// A socket event: learns the peer address of a new connection, forgets a closed one.
    fn on_event(&mut self, event: SocketEvent) {
        match event {
            SocketEvent::Accepted(Endpoint::Tcp(host, port), id) => {
                let ip = match host {
                    Host::Ipv4(ip) => std::net::IpAddr::V4(ip),
                    Host::Ipv6(ip) => std::net::IpAddr::V6(ip),
                    Host::Domain(_) => return,
                };
                let address = std::net::SocketAddr::new(ip, port);
                // A completed handshake is activity.
                self.activity.touch(address);
                if self.addresses.len() >= MAX_CONNS {
                    // Disconnections the monitor did not report (its queue was full): keep
                    // the connections heard from recently.
                    let conns = &self.conns;
                    self.addresses.retain(|id, _| conns.contains_key(id));
                }
                if self.addresses.len() < MAX_CONNS {
                    self.addresses.insert(Bytes::from(id), address);
                }
            }
            SocketEvent::Disconnected(id) => {
                let id = Bytes::from(id);
                self.addresses.remove(&id);
                self.conns.remove(&id);
            }
            _ => {}
        }
    }

    /// Closes the connection `id` (a client that does not read its acknowledgements).
    fn close(&mut self, id: &Bytes) {
        self.counters.slow_readers.fetch_add(1, Ordering::Relaxed);
        if let Ok(peer) = PeerIdentity::try_from(id.clone()) {
            self.backend.peer_disconnected(&peer);
        }
        self.conns.remove(id);
        // The crate's writer to it may be stuck in a write that never ends, holding the
        // socket open: the guard shuts it down.
        if let Some(address) = self.addresses.remove(id) {
            self.activity.condemn(address);
        }
    }

    /// One multipart message: the routing id, then frames. Err: the server is gone.
    async fn on_message(
        &mut self,
        m: ZmqMessage,
        batch: &mut Vec<TransportEvent>,
    ) -> Result<(), ()> {
        let mut parts = m.into_vecdeque();
        let Some(id) = parts.pop_front() else {
            return Ok(());
        };
        let now = Instant::now();
        let timeout = self.limits.heartbeat_timeout;
        let conn = self.conns.entry(id.clone()).or_insert(Conn {
            received: 0,
            acked: 0,
            last: now,
            stale: false,
            touched: now - TOUCH_EVERY,
        });
        if now.duration_since(conn.touched) >= TOUCH_EVERY
            && let Some(&address) = self.addresses.get(&id)
        {
            conn.touched = now;
            self.activity.touch(address);
        }
        if now.duration_since(conn.last) > timeout {
            conn.stale = true;
        }
        conn.last = now;
        let mut reply = None;
        for part in parts {
            if conn.stale {
                // Messages only: control frames (the transport's, the node's
                // acknowledgements and probes) carry none.
                if control::decode(&part).is_none() && !wire::is_control(&part) {
                    self.counters.stale_frames.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            match control::decode(&part) {
                Some(Control::Ping) => reply = Some(conn.received),
                // Acks travel the other way; one arriving here is noise.
                Some(Control::Ack(_)) => {}
                None => {
                    conn.received += 1;
                    batch.push(TransportEvent::Frame(part));
                }
            }
        }
        if conn.received - conn.acked >= self.limits.ack_every() {
            reply = Some(conn.received);
        }
        if let Some(n) = reply {
            conn.acked = n;
            if !batch.is_empty() {
                // Hand the frames over before acknowledging them.
                let full = std::mem::replace(batch, Vec::with_capacity(BATCH));
                self.tx.send(full).await.map_err(|_| ())?;
            }
            let mut ack = ZmqMessage::from(id.clone());
            ack.push_back(control::encode(Control::Ack(n)));
            // Never wait on one client: an ack that cannot be queued at once means the
            // connection's write queue is full (its client does not read). Close it.
            match tokio::time::timeout(ACK_WAIT, self.router.send(ack)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("zeromq ack: {e}"),
                Err(_) => self.close(&id),
            }
        }
        if self.conns.len() > MAX_CONNS {
            // Forget connections silent for long (bounded memory under connection churn).
            self.conns
                .retain(|_, c| now.duration_since(c.last) <= timeout * 4);
            if self.conns.len() > MAX_CONNS / 2 {
                // Still crowded (a flood of fresh connections): keep the most recently heard
                // half, so the map stays bounded and this pass runs rarely.
                let mut lasts: Vec<_> = self.conns.values().map(|c| c.last).collect();
                lasts.sort_unstable();
                if let Some(&cutoff) = lasts.get(lasts.len() - MAX_CONNS / 2) {
                    self.conns.retain(|_, c| c.last >= cutoff);
                }
            }
        }
        Ok(())
    }
}

/// Inbound connections the receiver keeps state for, at most.
const MAX_CONNS: usize = 4096;

/// Longest wait to queue one acknowledgement (see `Receiver::on_message`). The crate
/// queues up to 100,000 messages to a client before a send waits; a wait this long means
/// that queue is full, not a moment's contention on the crate's peer map (which would
/// close a real peer): each stalled client costs the receive path this once, then is closed.
const ACK_WAIT: Duration = Duration::from_millis(20);

/// How often a connection's activity is passed on to the guard, at most.
const TOUCH_EVERY: Duration = Duration::from_millis(50);

/// Owns the way to one peer: its bounded queue and, while connected, its DEALER socket.
struct Link {
    status: Arc<Status>,
    endpoint: String,
    rx: mpsc::Receiver<Bytes>,
    peers: Arc<Peers<Queue>>,
    events: mpsc::Sender<Vec<TransportEvent>>,
    stop: StopSignal,
    /// Set when the peer is removed or moved, with the reason to report what was queued.
    end: watch::Receiver<Option<DropReason>>,
    limits: Limits,
}

/// Why a connection ended.
enum Ended {
    /// Shutdown: flushed what it could.
    Stopped,
    /// The peer was removed or moved (the reason to report what is queued with); the
    /// connection's sending half, for the control frames still queued.
    Removed(DropReason, zeromq::DealerSendHalf),
    /// The peer is gone or cut off; these frames, taken from the queue, were not sent.
    Dead(u64),
}

/// Resolves once the peer is removed or moved (or the transport, which holds the signal,
/// is gone), with the reason to report what was queued with.
async fn ended(end: &mut watch::Receiver<Option<DropReason>>) -> DropReason {
    match end.wait_for(Option::is_some).await {
        Ok(reason) => (*reason).unwrap_or(DropReason::UnknownPeer),
        Err(_) => DropReason::UnknownPeer,
    }
}

impl Link {
    async fn run(mut self) {
        let mut backoff = RECONNECT_IVL;
        loop {
            // Whatever is queued now was accepted while the peer was going away: discard it.
            self.discard(0, DropReason::Unreachable).await;
            if self.stop.borrow().is_some() {
                return;
            }
            let (mut stop, mut end) = (self.stop.clone(), self.end.clone());
            let connected = tokio::select! {
                _ = stopped(&mut stop) => return,
                reason = ended(&mut end) => return self.end_removed(reason, None).await,
                c = self.connect() => c,
            };
            match connected {
                Some(dealer) => {
                    backoff = RECONNECT_IVL;
                    // Frames that slipped in while the peer was down are never sent.
                    self.discard(0, DropReason::Unreachable).await;
                    self.peers.set(&self.status, true);
                    let ended = self.serve(dealer).await;
                    self.peers.set(&self.status, false);
                    match ended {
                        Ended::Stopped => return,
                        Ended::Removed(reason, send) => {
                            return self.end_removed(reason, Some(send)).await;
                        }
                        Ended::Dead(lost) => {
                            tracing::debug!(peer = self.status.pid(), "connection lost");
                            self.discard(lost, DropReason::Unreachable).await;
                        }
                    }
                }
                None => {
                    let (mut stop, mut end) = (self.stop.clone(), self.end.clone());
                    tokio::select! {
                        _ = stopped(&mut stop) => return,
                        reason = ended(&mut end) => return self.end_removed(reason, None).await,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_IVL_MAX);
                }
            }
        }
    }

    /// The peer was removed or moved: nothing more is queued; the messages that were are
    /// discarded and reported with `reason`, the control frames among them (the server's
    /// notice of the removal) sent on the connection, if there is one, for at most the
    /// linger. Then the connection closes (its sending half is dropped, and the receiving
    /// half already was).
    async fn end_removed(mut self, reason: DropReason, send: Option<zeromq::DealerSendHalf>) {
        tracing::debug!(peer = self.status.pid(), ?reason, "link ended");
        self.rx.close();
        // At most the queue's capacity.
        let mut control = Vec::new();
        let mut messages = 0;
        while let Ok(frame) = self.rx.try_recv() {
            if wire::is_control(&frame) {
                control.push(frame);
            } else {
                messages += 1;
            }
        }
        self.discard(messages, reason).await;
        if let Some(mut send) = send {
            let flush = async {
                for frame in control {
                    if send.send(ZmqMessage::from(frame)).await.is_err() {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(self.limits.linger, flush).await;
        }
    }

    /// Drops every queued frame, plus `already` taken ones, and reports them with `reason`.
    async fn discard(&mut self, already: u64, reason: DropReason) {
        let mut n = already;
        while let Ok(frame) = self.rx.try_recv() {
            // Acknowledgements carry no message: not counted as dropped messages.
            n += u64::from(!wire::is_control(&frame));
        }
        if n > 0 {
            let event = TransportEvent::Dropped {
                peer: self.status.pid(),
                reason,
                count: n,
            };
            // Fails only when the transport is gone, and then nobody counts anymore.
            let _ = self.events.send(vec![event]).await;
        }
    }

    /// A fresh DEALER, connected, with one ping answered within the heartbeat timeout.
    async fn connect(&self) -> Option<(zeromq::DealerSendHalf, zeromq::DealerRecvHalf)> {
        let timeout = self.limits.heartbeat_timeout;
        let mut options = socket_options(&self.limits);
        options.connect_timeout(timeout);
        let mut dealer = DealerSocket::with_options(options);
        let attempt = async {
            dealer.connect(&self.endpoint).await.ok()?;
            let (mut send, mut recv) = dealer.split();
            send.send(ZmqMessage::from(control::encode(Control::Ping)))
                .await
                .ok()?;
            loop {
                let m = recv.recv().await.ok()?;
                if m.iter()
                    .any(|p| matches!(control::decode(p), Some(Control::Ack(_))))
                {
                    return Some((send, recv));
                }
            }
        };
        tokio::time::timeout(timeout, attempt).await.ok().flatten()
    }

    /// Moves frames from the queue to the connection until it dies or shutdown begins.
    async fn serve(
        &mut self,
        (mut send, mut recv): (zeromq::DealerSendHalf, zeromq::DealerRecvHalf),
    ) -> Ended {
        let Limits {
            heartbeat_interval,
            heartbeat_timeout,
            window,
            ..
        } = self.limits;
        let mut sent: u64 = 0;
        let mut acked: u64 = 0;
        let mut last_heard = Instant::now();
        let mut tick = tokio::time::interval(heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = Vec::with_capacity(BATCH);
        let mut stop = self.stop.clone();
        let mut end = self.end.clone();
        loop {
            let room = usize::try_from(window.saturating_sub(sent - acked))
                .unwrap_or(usize::MAX)
                .min(BATCH);
            tokio::select! {
                deadline = stopped(&mut stop) => {
                    return self.flush(send, recv, sent, acked, deadline).await;
                }
                reason = ended(&mut end) => return Ended::Removed(reason, send),
                n = self.rx.recv_many(&mut buf, room), if room > 0 => {
                    if n == 0 {
                        return Ended::Stopped;
                    }
                    // Messages (not acknowledgements) of the batch not sent yet.
                    let mut left = buf.iter().filter(|f| !wire::is_control(f)).count() as u64;
                    for frame in buf.drain(..) {
                        let message = !wire::is_control(&frame);
                        let r = tokio::time::timeout(heartbeat_timeout, send.send(ZmqMessage::from(frame))).await;
                        if !matches!(r, Ok(Ok(()))) {
                            // This frame and the rest of the batch never left.
                            return Ended::Dead(left);
                        }
                        left -= u64::from(message);
                        sent += 1;
                    }
                }
                m = recv.recv() => match m {
                    Ok(m) => {
                        for part in m.iter() {
                            if let Some(Control::Ack(n)) = control::decode(part) {
                                acked = acked.max(n.min(sent));
                                last_heard = Instant::now();
                            }
                        }
                    }
                    Err(_) => return Ended::Dead(0),
                },
                _ = tick.tick() => {
                    if last_heard.elapsed() > heartbeat_timeout {
                        return Ended::Dead(0);
                    }
                    let ping = ZmqMessage::from(control::encode(Control::Ping));
                    let r = tokio::time::timeout(heartbeat_timeout, send.send(ping)).await;
                    if !matches!(r, Ok(Ok(()))) {
                        return Ended::Dead(0);
                    }
                }
            }
        }
    }

    /// Shutdown on a live connection: sends what is queued and waits for it to be
    /// acknowledged, until `deadline`. Frames left over are dropped and reported.
    async fn flush(
        &mut self,
        mut send: zeromq::DealerSendHalf,
        mut recv: zeromq::DealerRecvHalf,
        mut sent: u64,
        mut acked: u64,
        deadline: Instant,
    ) -> Ended {
        let work = async {
            while let Ok(frame) = self.rx.try_recv() {
                if send.send(ZmqMessage::from(frame)).await.is_err() {
                    return;
                }
                sent += 1;
            }
            if sent == acked {
                return;
            }
            // Ask for an acknowledgement of everything sent.
            if send
                .send(ZmqMessage::from(control::encode(Control::Ping)))
                .await
                .is_err()
            {
                return;
            }
            while acked < sent {
                match recv.recv().await {
                    Ok(m) => {
                        for part in m.iter() {
                            if let Some(Control::Ack(n)) = control::decode(part) {
                                acked = acked.max(n);
                            }
                        }
                    }
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline, work).await;
        self.rx.close();
        self.discard(0, DropReason::Unreachable).await;
        Ended::Stopped
    }
}
