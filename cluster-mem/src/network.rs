use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cluster_core::{
    Config, DropCounts, DropReason, Incarnation, PeerSet, Pid, Transport, TransportError,
    TransportEvent, wire,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, watch};

/// A simulated network of the pids of one config. Cheap to clone; clones share the network.
#[derive(Clone)]
pub struct MemNetwork {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNetwork")
            .field("seed", &self.shared.seed)
            .finish_non_exhaustive()
    }
}

/// Counters of the network itself: frames it accepted and later discarded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames lost after being accepted: in flight to or from a crashed node (`unreachable`),
    /// or on a link when it was cut (`partitioned`).
    pub discarded: DropCounts,
}

struct Shared {
    seed: u64,
    queue_capacity: usize,
    state: Mutex<State>,
}

struct State {
    nodes: BTreeMap<Pid, Node>,
    /// Ordered pairs `(from, to)` whose frames are dropped. (B-trees, not hash maps:
    /// nothing about a run may depend on a per-process hash seed.)
    blocked: BTreeSet<(Pid, Pid)>,
    /// Ordered pairs `(from, to)` where `from` removed `to` from its members (membership
    /// at run time): frames refused as `unknown_peer`.
    removed: BTreeSet<(Pid, Pid)>,
    loss: BTreeMap<(Pid, Pid), (f64, StdRng)>,
    stats: NetStats,
}

struct Node {
    incarnation: Incarnation,
    up: bool,
    taken: bool,
    slot: Arc<Slot>,
    connected: watch::Sender<PeerSet>,
}

/// A node's receive queue. Replaced at each restart, so a crashed incarnation's transport
/// never sees a later incarnation's frames.
struct Slot {
    queue: Mutex<VecDeque<(Pid, Bytes)>>,
    /// Control frames (the greetings behind peer events), in a lane of their own of at
    /// most [`CONTROL_QUEUE`], so that they never take a message's room.
    control: Mutex<VecDeque<(Pid, Bytes)>>,
    /// Wakes the node's receiving side when its queue stops being empty.
    notify: Notify,
    /// Wakes senders waiting for room when the queue stops being full (or the node goes).
    room: Notify,
    alive: AtomicBool,
}

impl Slot {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            control: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            room: Notify::new(),
            alive: AtomicBool::new(true),
        })
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<(Pid, Bytes)>> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn control(&self) -> MutexGuard<'_, VecDeque<(Pid, Bytes)>> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues control frame `frame` from `from`, if its lane has room.
    fn push_control(&self, from: Pid, frame: Bytes) -> Result<(), DropReason> {
        let mut control = self.control();
        if control.len() >= CONTROL_QUEUE {
            return Err(DropReason::Backpressure);
        }
        control.push_back((from, frame));
        drop(control);
        self.notify.notify_waiters();
        Ok(())
    }
}

/// Control frames a node's lane holds at most (they are few: a greeting per peer per
/// heartbeat interval, and only until the peer answers). Beyond, one is refused, and sent
/// again at the next interval.
const CONTROL_QUEUE: usize = 64;

/// The sender recorded in a receive queue for injected bytes: no node of any config (pids
/// are non-negative), so no crash or cut of a node purges them.
const OUTSIDE: Pid = Pid::MIN;

fn link_seed(seed: u64, from: Pid, to: Pid) -> u64 {
    // splitmix64 of the seed and the link, so each link has its own reproducible stream.
    let mut z = seed
        ^ (u64::from(from as u32) << 32 | u64::from(to as u32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl MemNetwork {
    /// A network of every pid in `config`, all up at incarnation 1 (a real node's first, as a
    /// fresh peer catalog gives it). Each node's receive
    /// queue holds `peer_queue × (number of peers)` frames.
    pub fn new(config: &Config, seed: u64) -> Self {
        let peers = config.peers().len().saturating_sub(1).max(1);
        let capacity = config.options().peer_queue.saturating_mul(peers);
        Self::with_queue_capacity(config, seed, capacity)
    }

    /// Like [`MemNetwork::new`] with an explicit receive queue bound per node.
    pub fn with_queue_capacity(config: &Config, seed: u64, queue_capacity: usize) -> Self {
        let nodes = config
            .pids()
            .map(|pid| {
                let node = Node {
                    incarnation: 1,
                    up: true,
                    taken: false,
                    slot: Slot::new(),
                    connected: watch::Sender::new(PeerSet::new()),
                };
                (pid, node)
            })
            .collect();
        let state = State {
            nodes,
            blocked: BTreeSet::new(),
            removed: BTreeSet::new(),
            loss: BTreeMap::new(),
            stats: NetStats::default(),
        };
        state.publish_connectivity();
        Self {
            shared: Arc::new(Shared {
                seed,
                queue_capacity: queue_capacity.max(1),
                state: Mutex::new(state),
            }),
        }
    }

    /// Adds node `pid` to the network, up at incarnation 1 with no transport taken yet: a
    /// node that joins the cluster at run time (see `Server::join`). An error if the
    /// network has it already.
    pub fn add_node(&self, pid: Pid) -> Result<(), TransportError> {
        let mut state = self.state();
        if state.nodes.contains_key(&pid) {
            return Err(TransportError::Unavailable {
                pid,
                reason: "the network has this pid already".into(),
            });
        }
        state.nodes.insert(
            pid,
            Node {
                incarnation: 1,
                up: true,
                taken: false,
                slot: Slot::new(),
                connected: watch::Sender::new(PeerSet::new()),
            },
        );
        state.publish_connectivity();
        Ok(())
    }

    /// The seed the network's randomness derives from.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }

    /// The transport of `pid`'s current incarnation. Each incarnation's transport can be
    /// taken once. When it is shut down or dropped, the node is down, as after a crash
    /// (except that frames it sent stay in flight); a node that is down must be restarted
    /// ([`MemNetwork::restart`]) before it gets a new transport.
    pub fn transport(&self, pid: Pid) -> Result<MemTransport, TransportError> {
        let mut state = self.state();
        let unavailable = |reason: String| TransportError::Unavailable { pid, reason };
        let node = state
            .nodes
            .get_mut(&pid)
            .ok_or_else(|| unavailable("not in the network's config".into()))?;
        if !node.up {
            return Err(unavailable("the node is crashed; restart it first".into()));
        }
        if node.taken {
            return Err(unavailable(format!(
                "the transport of incarnation {} was already taken",
                node.incarnation
            )));
        }
        node.taken = true;
        Ok(MemTransport {
            pid,
            incarnation: node.incarnation,
            shared: Arc::clone(&self.shared),
            slot: Arc::clone(&node.slot),
            connected: node.connected.subscribe(),
        })
    }

    /// The current incarnation of `pid`.
    pub fn incarnation(&self, pid: Pid) -> Option<Incarnation> {
        self.state().nodes.get(&pid).map(|n| n.incarnation)
    }

    /// Whether `pid` is up.
    pub fn is_up(&self, pid: Pid) -> bool {
        self.state().nodes.get(&pid).is_some_and(|n| n.up)
    }

    /// Crashes `pid`: its transport closes, and frames queued for it or sent by it and not
    /// yet received are lost. No effect on an unknown or already crashed pid.
    pub fn crash(&self, pid: Pid) {
        let mut state = self.state();
        if state.take_down(pid, None) {
            state.purge(|from, _| from == pid, DropReason::Unreachable);
            state.publish_connectivity();
        }
    }

    /// Brings `pid` back as a new incarnation (crashing it first if it is up) and returns
    /// that incarnation. Take its new transport with [`MemNetwork::transport`].
    pub fn restart(&self, pid: Pid) -> Option<Incarnation> {
        self.crash(pid);
        let mut state = self.state();
        // A new incarnation starts with a new transport: no peer removed by the old one.
        state.removed.retain(|(from, _)| *from != pid);
        let node = state.nodes.get_mut(&pid)?;
        node.incarnation = node.incarnation.wrapping_add(1);
        node.up = true;
        node.taken = false;
        node.slot = Slot::new();
        let incarnation = node.incarnation;
        state.publish_connectivity();
        Some(incarnation)
    }

    /// Cuts every link between group `a` and group `b`, both ways.
    pub fn partition(&self, a: &[Pid], b: &[Pid]) {
        let mut state = self.state();
        for &x in a {
            for &y in b {
                if x != y {
                    state.blocked.insert((x, y));
                    state.blocked.insert((y, x));
                }
            }
        }
        state.purge_blocked();
        state.publish_connectivity();
    }

    /// Cuts the one-way link `from → to`.
    pub fn cut(&self, from: Pid, to: Pid) {
        let mut state = self.state();
        if from != to {
            state.blocked.insert((from, to));
        }
        state.purge_blocked();
        state.publish_connectivity();
    }

    /// Removes every cut and partition, and every loss setting.
    pub fn heal(&self) {
        let mut state = self.state();
        state.blocked.clear();
        state.loss.clear();
        state.publish_connectivity();
    }

    /// Drops each frame on `from → to` with probability `p` (clamped to 0..=1).
    pub fn set_loss(&self, from: Pid, to: Pid, p: f64) {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        let seed = link_seed(self.shared.seed, from, to);
        let mut state = self.state();
        if p == 0.0 {
            state.loss.remove(&(from, to));
        } else {
            let entry = state
                .loss
                .entry((from, to))
                .or_insert_with(|| (0.0, StdRng::seed_from_u64(seed)));
            entry.0 = p;
        }
    }

    /// Puts `bytes` into `to`'s receive queue as if they had arrived on its port from outside
    /// the cluster: hostile input, for tests (contract C9). They are taken like any arrival:
    /// they count against the queue bound and in [`MemNetwork::in_flight`], and are lost
    /// (counted as `unreachable`) if `to` crashes before receiving them; no cut or partition
    /// touches them. Refused with `unreachable` if `to` is down or unknown, and with
    /// `backpressure` if its queue is full.
    pub fn inject(&self, to: Pid, bytes: Bytes) -> Result<(), DropReason> {
        let state = self.state();
        let dest = match state.nodes.get(&to) {
            Some(n) if n.up => &n.slot,
            _ => return Err(DropReason::Unreachable),
        };
        let mut q = dest.queue();
        if q.len() >= self.shared.queue_capacity {
            return Err(DropReason::Backpressure);
        }
        let was_empty = q.is_empty();
        q.push_back((OUTSIDE, bytes));
        drop(q);
        if was_empty {
            dest.notify.notify_waiters();
        }
        Ok(())
    }

    /// The network's own counters.
    pub fn stats(&self) -> NetStats {
        self.state().stats
    }

    /// Messages accepted by the network and not yet received, over all nodes (control
    /// frames, such as the greetings behind peer events, are not counted: see
    /// [`control_in_flight`](Self::control_in_flight)).
    pub fn in_flight(&self) -> usize {
        self.state()
            .nodes
            .values()
            .map(|n| n.slot.queue().len())
            .sum()
    }

    /// Control frames (greetings, acknowledgements, membership changes) accepted by the
    /// network and not yet received, over all running nodes.
    pub fn control_in_flight(&self) -> usize {
        self.state()
            .nodes
            .values()
            .filter(|n| n.up)
            .map(|n| n.slot.control().len())
            .sum()
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Marks `pid` down and discards what is queued for it. With `only`, only if that slot
    /// is still the node's current one (a stale transport must not take down a newer
    /// incarnation). Returns whether the node went down.
    fn take_down(&mut self, pid: Pid, only: Option<&Arc<Slot>>) -> bool {
        let Some(node) = self.nodes.get_mut(&pid).filter(|n| n.up) else {
            return false;
        };
        if only.is_some_and(|slot| !Arc::ptr_eq(slot, &node.slot)) {
            return false;
        }
        node.up = false;
        node.slot.alive.store(false, Ordering::SeqCst);
        let lost = {
            let mut q = node.slot.queue();
            let n = q.len();
            q.clear();
            n
        };
        // Control frames carry no message: not counted.
        node.slot.control().clear();
        node.slot.notify.notify_waiters();
        node.slot.room.notify_waiters();
        self.stats
            .discarded
            .add(DropReason::Unreachable, lost as u64);
        true
    }

    fn purge(&mut self, doomed: impl FnMut(Pid, Pid) -> bool, reason: DropReason) {
        self.purge_some(doomed, reason, true);
    }

    /// [`State::purge`]; control frames too only with `controls`.
    fn purge_some(
        &mut self,
        mut doomed: impl FnMut(Pid, Pid) -> bool,
        reason: DropReason,
        controls: bool,
    ) {
        let mut lost = 0u64;
        for (&to, node) in &self.nodes {
            let mut q = node.slot.queue();
            let before = q.len();
            q.retain(|(from, _)| !doomed(*from, to));
            let purged = before - q.len();
            drop(q);
            if purged > 0 {
                // Room for senders waiting on this queue.
                node.slot.room.notify_waiters();
            }
            lost += purged as u64;
            if controls {
                // Control frames carry no message: not counted.
                node.slot.control().retain(|(from, _)| !doomed(*from, to));
            }
        }
        self.stats.discarded.add(reason, lost);
    }

    fn purge_blocked(&mut self) {
        let blocked = std::mem::take(&mut self.blocked);
        self.purge(
            |from, to| blocked.contains(&(from, to)),
            DropReason::Partitioned,
        );
        self.blocked = blocked;
    }

    /// Recomputes every node's connected set: peers that are up and reachable from it.
    fn publish_connectivity(&self) {
        let up: Vec<Pid> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.up)
            .map(|(p, _)| *p)
            .collect();
        // A node that is down sees nothing more: its last view stays as it was, as a dead
        // process's would (a stopping server's recorder must not note its peers down).
        for (&pid, node) in self.nodes.iter().filter(|(_, n)| n.up) {
            let set: PeerSet = up
                .iter()
                .copied()
                .filter(|&p| p != pid && !self.blocked.contains(&(pid, p)))
                .collect();
            node.connected.send_if_modified(|cur| {
                let changed = *cur != set;
                *cur = set;
                changed
            });
        }
    }
}

/// A destination queue held locked by [`MemTransport::send_many`] while frames go to it.
struct OpenQueue<'a> {
    to: Pid,
    slot: &'a Slot,
    queue: MutexGuard<'a, VecDeque<(Pid, Bytes)>>,
    /// Whether a frame went into the queue while it was empty.
    wake: bool,
}

impl OpenQueue<'_> {
    fn close(self) {
        let Self {
            slot, queue, wake, ..
        } = self;
        drop(queue);
        // The receiver sleeps only after finding its queue empty under the lock.
        if wake {
            slot.notify.notify_waiters();
        }
    }
}

/// One node's end of a [`MemNetwork`].
pub struct MemTransport {
    pid: Pid,
    incarnation: Incarnation,
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    connected: watch::Receiver<PeerSet>,
}

impl std::fmt::Debug for MemTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemTransport")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl MemTransport {
    /// The pid this transport belongs to.
    pub fn pid(&self) -> Pid {
        self.pid
    }
}

#[async_trait]
impl Transport for MemTransport {
    fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        let mut state = self.shared.state();
        // Checked under the network's lock, which `crash` holds while it purges: a crashed
        // incarnation's frames can never slip in after the purge.
        if !self.slot.alive.load(Ordering::Acquire) {
            return Err(DropReason::Unreachable);
        }
        if !state.removed.is_empty() && state.removed.contains(&(self.pid, to)) {
            return Err(DropReason::UnknownPeer);
        }
        if !state.blocked.is_empty() && state.blocked.contains(&(self.pid, to)) {
            return Err(DropReason::Partitioned);
        }
        if !state.loss.is_empty()
            && let Some((p, rng)) = state.loss.get_mut(&(self.pid, to))
            && rng.random::<f64>() < *p
        {
            return Err(DropReason::Injected);
        }
        let dest = match state.nodes.get(&to) {
            Some(n) if n.up => &n.slot,
            _ => return Err(DropReason::Unreachable),
        };
        if wire::is_control(&frame) {
            return dest.push_control(self.pid, frame);
        }
        let mut q = dest.queue();
        if q.len() >= self.shared.queue_capacity {
            return Err(DropReason::Backpressure);
        }
        let was_empty = q.is_empty();
        q.push_back((self.pid, frame));
        drop(q);
        // The receiver sleeps only after finding its queue empty under the lock, so a wake-up
        // is needed only when this frame made the queue non-empty.
        if was_empty {
            dest.notify.notify_waiters();
        }
        Ok(())
    }

    fn send_many(&self, frames: &mut Vec<(Pid, Bytes)>, refused: &mut dyn FnMut(Pid, DropReason)) {
        if frames.is_empty() {
            return;
        }
        // The same checks as `send`, frame by frame, but under one lock of the network for
        // the whole batch, and one lock of a destination's queue per run of frames to it.
        let pid = self.pid;
        let capacity = self.shared.queue_capacity;
        let mut state = self.shared.state();
        if !self.slot.alive.load(Ordering::Acquire) {
            for (to, _) in frames.drain(..) {
                refused(to, DropReason::Unreachable);
            }
            return;
        }
        let State {
            nodes,
            blocked,
            removed,
            loss,
            ..
        } = &mut *state;
        let mut open: Option<OpenQueue<'_>> = None;
        for (to, frame) in frames.drain(..) {
            if !removed.is_empty() && removed.contains(&(pid, to)) {
                refused(to, DropReason::UnknownPeer);
                continue;
            }
            if !blocked.is_empty() && blocked.contains(&(pid, to)) {
                refused(to, DropReason::Partitioned);
                continue;
            }
            if !loss.is_empty()
                && let Some((p, rng)) = loss.get_mut(&(pid, to))
                && rng.random::<f64>() < *p
            {
                refused(to, DropReason::Injected);
                continue;
            }
            let queue = match open.take() {
                Some(q) if q.to == to => open.insert(q),
                other => {
                    if let Some(q) = other {
                        q.close();
                    }
                    match nodes.get(&to) {
                        Some(n) if n.up => open.insert(OpenQueue {
                            to,
                            slot: &n.slot,
                            queue: n.slot.queue(),
                            wake: false,
                        }),
                        _ => {
                            refused(to, DropReason::Unreachable);
                            continue;
                        }
                    }
                }
            };
            if wire::is_control(&frame) {
                if let Err(reason) = queue.slot.push_control(pid, frame) {
                    refused(to, reason);
                }
                continue;
            }
            if queue.queue.len() >= capacity {
                refused(to, DropReason::Backpressure);
                continue;
            }
            queue.wake |= queue.queue.is_empty();
            queue.queue.push_back((pid, frame));
        }
        if let Some(q) = open {
            q.close();
        }
    }

    async fn writable(&self, to: Pid) {
        let dest = {
            let state = self.shared.state();
            match state.nodes.get(&to) {
                Some(n) if n.up => Arc::clone(&n.slot),
                _ => return,
            }
        };
        let room = dest.room.notified();
        tokio::pin!(room);
        // Registered before the check, so that room made after it wakes this waiter.
        room.as_mut().enable();
        if dest.queue().len() < self.shared.queue_capacity || !dest.alive.load(Ordering::Acquire) {
            return;
        }
        room.await;
    }

    async fn readable(&self) -> bool {
        loop {
            // Registered before the checks, so that a frame queued between them and the
            // wait still wakes it. Every waiter is woken (the reader and the node's task
            // may both wait: see `cluster_core::Transport`).
            let notified = self.slot.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.slot.alive.load(Ordering::Acquire) {
                return false;
            }
            if !self.slot.queue().is_empty() || !self.slot.control().is_empty() {
                return true;
            }
            notified.await;
        }
    }

    fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
        if !self.slot.alive.load(Ordering::Acquire) {
            return 0;
        }
        let controls = {
            let mut control = self.slot.control();
            let n = control.len().min(max);
            events.extend(control.drain(..n).map(|(_, f)| TransportEvent::Frame(f)));
            n
        };
        let mut queue = self.slot.queue();
        let was_full = queue.len() >= self.shared.queue_capacity;
        let n = queue.len().min(max - controls);
        events.extend(queue.drain(..n).map(|(_, f)| TransportEvent::Frame(f)));
        drop(queue);
        if was_full && n > 0 {
            self.slot.room.notify_waiters();
        }
        controls + n
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        self.connected.clone()
    }

    async fn shutdown(&self, _linger: Duration) {
        // Frames sent were put into peers' queues at send time: nothing to flush.
        self.leave();
    }

    /// The network counts starts, as a peer catalog does: incarnation 1 at first, one more
    /// per restart.
    fn incarnation(&self) -> Option<Incarnation> {
        Some(self.incarnation)
    }

    /// The network must have `pid` (see [`MemNetwork::add_node`]); the address is not used.
    fn add_peer(&self, pid: Pid, _address: &str) -> Result<(), TransportError> {
        let mut state = self.shared.state();
        if !state.nodes.contains_key(&pid) {
            return Err(TransportError::Unavailable {
                pid,
                reason: "not in the network (MemNetwork::add_node first)".into(),
            });
        }
        state.removed.remove(&(self.pid, pid));
        Ok(())
    }

    /// Frames to `pid` are refused as `unknown_peer` from now on; those still queued for
    /// it are discarded (counted by the network as `unknown_peer`).
    fn remove_peer(&self, pid: Pid) -> Result<(), TransportError> {
        let mut state = self.shared.state();
        state.removed.insert((self.pid, pid));
        let me = self.pid;
        // Control frames stay: the notice of its removal is among them.
        state.purge_some(
            |from, to| from == me && to == pid,
            DropReason::UnknownPeer,
            false,
        );
        Ok(())
    }
}

impl MemTransport {
    /// The node stops: like a crash for what is addressed to it (peers see it down, frames
    /// queued for it are discarded and counted), but what it sent stays in flight.
    fn leave(&self) {
        let mut state = self.shared.state();
        if state.take_down(self.pid, Some(&self.slot)) {
            state.publish_connectivity();
        }
    }
}

impl Drop for MemTransport {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[test]
    fn send_many_refuses_like_send_and_keeps_order() {
        let config = Config::local(4, 7000).unwrap();
        let net = MemNetwork::with_queue_capacity(&config, 1, 3);
        let t1 = net.transport(1).unwrap();
        let t2 = net.transport(2).unwrap();
        net.crash(3);
        net.cut(1, 4);
        let mut frames = vec![
            (2, frame(1)),
            (3, frame(2)),
            (2, frame(3)),
            (4, frame(4)),
            (9, frame(5)),
            (2, frame(6)),
            (2, frame(7)),
        ];
        let mut refused = Vec::new();
        t1.send_many(&mut frames, &mut |to, reason| refused.push((to, reason)));
        assert!(frames.is_empty());
        assert_eq!(
            refused,
            vec![
                (3, DropReason::Unreachable),
                (4, DropReason::Partitioned),
                (9, DropReason::Unreachable),
                (2, DropReason::Backpressure),
            ]
        );
        let mut events = Vec::new();
        assert_eq!(t2.try_recv_many(&mut events, 2), 2);
        assert_eq!(t2.try_recv_many(&mut events, 10), 1);
        assert_eq!(
            events,
            [1, 3, 6].map(|n| TransportEvent::Frame(frame(n))).to_vec()
        );
        // A crashed sender sends nothing.
        net.crash(1);
        let mut frames = vec![(2, frame(8))];
        let mut refused = Vec::new();
        t1.send_many(&mut frames, &mut |to, reason| refused.push((to, reason)));
        assert_eq!(refused, vec![(2, DropReason::Unreachable)]);
        assert_eq!(net.in_flight(), 0);
    }

    #[test]
    fn injected_bytes_queue_like_arrivals_and_survive_cuts_not_crashes() {
        let config = Config::local(3, 7000).unwrap();
        let net = MemNetwork::with_queue_capacity(&config, 1, 2);
        let t2 = net.transport(2).unwrap();
        assert_eq!(net.inject(2, frame(1)), Ok(()));
        net.partition(&[1, 3], &[2]);
        assert_eq!(net.inject(2, frame(2)), Ok(()));
        assert_eq!(net.inject(2, frame(3)), Err(DropReason::Backpressure));
        assert_eq!(net.in_flight(), 2);
        let mut events = Vec::new();
        assert_eq!(t2.try_recv_many(&mut events, 1), 1);
        assert_eq!(events, [TransportEvent::Frame(frame(1))]);
        net.crash(2);
        assert_eq!(net.inject(2, frame(4)), Err(DropReason::Unreachable));
        assert_eq!(net.inject(9, frame(5)), Err(DropReason::Unreachable));
        assert_eq!(net.in_flight(), 0);
        assert_eq!(net.stats().discarded.get(DropReason::Unreachable), 1);
        assert_eq!(net.stats().discarded.get(DropReason::Partitioned), 0);
    }

    /// Nodes 1 and 2 on a network of their own, node 2's inbox holding `inbox_capacity`.
    fn two_nodes(
        inbox_capacity: usize,
    ) -> (
        MemNetwork,
        cluster_core::Server<u32>,
        cluster_core::Server<u32>,
    ) {
        use cluster_core::{Options, Server};
        let options = Options {
            inbox_capacity,
            ..Options::default()
        };
        let config = Config::local(2, 7000)
            .unwrap()
            .with_options(options)
            .unwrap();
        let net = MemNetwork::new(&config, 1);
        let a = Server::with_transport(1, config.clone(), net.transport(1).unwrap()).unwrap();
        let b = Server::with_transport(2, config, net.transport(2).unwrap()).unwrap();
        (net, a, b)
    }

    /// A burst into a small inbox fills it, and the rest waits in the network, not
    /// dropped: once read, every message arrives, in order.
    #[tokio::test(flavor = "current_thread")]
    async fn a_burst_into_a_small_inbox_waits_in_the_network_and_arrives_whole() {
        use cluster_core::{Envelope, SendOutcome};
        let (net, a, mut b) = two_nodes(4);
        let outbox = a.outbox();
        for i in 0..10 {
            let outcome = outbox.try_send(Envelope::new(2, i.into(), i)).unwrap();
            assert_eq!(outcome, SendOutcome::Sent);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while b.inbox().len() < 4 && tokio::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(b.inbox().len(), 4, "the inbox holds what it has room for");
        assert_eq!(net.in_flight(), 6, "the rest waits in the network");
        let mut got = Vec::new();
        while got.len() < 10 {
            let env = tokio::time::timeout(Duration::from_secs(10), b.inbox().recv())
                .await
                .unwrap()
                .unwrap();
            got.push(env.msg);
        }
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        let s = b.stats();
        assert_eq!((s.delivered, s.dropped_incoming.total()), (10, 0));
        assert_eq!(a.stats().sent, 10);
    }

    /// Room made by a cut (its frames purged) wakes a sender waiting for it.
    #[tokio::test(flavor = "current_thread")]
    async fn frames_purged_by_a_cut_make_room_for_a_waiting_sender() {
        let config = Config::local(3, 7000).unwrap();
        let net = MemNetwork::with_queue_capacity(&config, 1, 2);
        let (t1, t3) = (net.transport(1).unwrap(), net.transport(3).unwrap());
        let _t2 = net.transport(2).unwrap();
        t1.send(2, frame(1)).unwrap();
        t3.send(2, frame(2)).unwrap();
        assert_eq!(t3.send(2, frame(3)), Err(DropReason::Backpressure));
        let waiting = tokio::spawn(async move {
            t3.writable(2).await;
            t3
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        net.cut(1, 2);
        let t3 = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the cut's purge woke the waiting sender")
            .unwrap();
        assert_eq!(t3.send(2, frame(4)), Ok(()));
    }

    /// An inbox closed while full: the node takes what arrives and drops it as
    /// `unreachable`, and still stops when told to (no spinning task).
    #[tokio::test(flavor = "current_thread")]
    async fn a_closed_full_inbox_drops_what_arrives_and_the_node_still_stops() {
        use cluster_core::Envelope;
        let (_net, a, mut b) = two_nodes(2);
        for i in 0..2 {
            a.outbox()
                .send(Envelope::new(2, i, i as u32))
                .await
                .unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while b.inbox().len() < 2 && tokio::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        b.inbox().close();
        for i in 2..5 {
            a.outbox()
                .send(Envelope::new(2, i, i as u32))
                .await
                .unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while b.stats().dropped_incoming.get(DropReason::Unreachable) < 3
            && tokio::time::Instant::now() < deadline
        {
            tokio::task::yield_now().await;
        }
        assert_eq!(b.stats().dropped_incoming.get(DropReason::Unreachable), 3);
        tokio::time::timeout(Duration::from_secs(10), b.shutdown())
            .await
            .expect("the node stops");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn send_many_wakes_a_waiting_receiver() {
        let config = Config::local(2, 7000).unwrap();
        let net = MemNetwork::new(&config, 1);
        let t1 = net.transport(1).unwrap();
        let t2 = net.transport(2).unwrap();
        let receiver = tokio::spawn(async move {
            let readable = t2.readable().await;
            let mut events = Vec::new();
            t2.try_recv_many(&mut events, 1);
            (readable, events)
        });
        tokio::task::yield_now().await;
        t1.send_many(&mut vec![(2, frame(1)), (2, frame(2))], &mut |_, _| {
            panic!("refused")
        });
        let got = tokio::time::timeout(Duration::from_secs(10), receiver)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (true, vec![TransportEvent::Frame(frame(1))]));
    }
}
