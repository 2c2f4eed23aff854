//! Deliberately broken transports, to prove that every check of the oracle can fail.
//!
//! A [`MutantBackend`] is a [`MemCluster`] whose transports misbehave in one way
//! ([`Mutation`]): they duplicate, reorder, corrupt, misroute or silently lose frames,
//! deliver what should have been dropped (after a restart, across a partition), hold frames
//! behind an unreachable peer, or forget their incarnation on restart. Each is caught by the
//! conformance suite; the test kit's own tests show which invariant catches which.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cluster_core::wire::Frame;
use cluster_core::{
    Config, DropCounts, DropReason, PeerSet, Pid, Transport, TransportError, TransportEvent,
};
use futures::FutureExt;
use tokio::sync::{mpsc, watch};

use crate::under_test::{Capabilities, ClusterUnderTest, MemCluster, Started};

/// One way to break the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// Sends every third accepted frame twice (breaks C2).
    Duplicate,
    /// Hands up two queued frames of the same sender in swapped order (breaks C3).
    Reorder,
    /// Flips the last byte of every other frame (breaks C2: corruption).
    Corrupt,
    /// Sends frames for a peer to the next pid instead (breaks C1).
    Misroute,
    /// Accepts every third frame and throws it away, silently (breaks C5 and C7).
    LoseHealthy,
    /// Keeps frames for a down peer, claims success, and delivers them once the peer has
    /// restarted — what ZeroMQ does by default (breaks C4).
    DeliverAfterRestart,
    /// Delivers frames across a cut or partition, claiming success (breaks C4).
    CrossPartition,
    /// After a refusal, holds every later frame of the sender, to any peer, until the
    /// refusing peer is reachable again: head-of-line blocking (breaks C6).
    StallBehindUnreachable,
    /// Restarts a node as incarnation 0, as a node that lost its catalog would (breaks C8).
    ForgetIncarnation,
}

impl Mutation {
    /// Every mutation.
    pub const ALL: [Mutation; 9] = [
        Mutation::Duplicate,
        Mutation::Reorder,
        Mutation::Corrupt,
        Mutation::Misroute,
        Mutation::LoseHealthy,
        Mutation::DeliverAfterRestart,
        Mutation::CrossPartition,
        Mutation::StallBehindUnreachable,
        Mutation::ForgetIncarnation,
    ];

    /// A kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Mutation::Duplicate => "duplicate",
            Mutation::Reorder => "reorder",
            Mutation::Corrupt => "corrupt",
            Mutation::Misroute => "misroute",
            Mutation::LoseHealthy => "lose-healthy",
            Mutation::DeliverAfterRestart => "deliver-after-restart",
            Mutation::CrossPartition => "cross-partition",
            Mutation::StallBehindUnreachable => "stall-behind-unreachable",
            Mutation::ForgetIncarnation => "forget-incarnation",
        }
    }
}

/// State shared by a mutant cluster's transports: a back door into each node's current
/// transport (how a mutant delivers what the network refused), and frames held back.
#[derive(Default)]
struct Shared {
    backdoor: BTreeMap<Pid, mpsc::UnboundedSender<Bytes>>,
    /// Frames refused for a down peer, by destination (DeliverAfterRestart).
    kept: BTreeMap<Pid, Vec<Bytes>>,
    /// Per sender: the peer it is stalled behind, and the frames held meanwhile.
    stalled: BTreeMap<Pid, (Pid, VecDeque<(Pid, Bytes)>)>,
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A [`MemCluster`] whose transports are broken by one [`Mutation`].
pub struct MutantBackend {
    inner: MemCluster,
    mutation: Mutation,
    shared: SharedRef,
}

impl std::fmt::Debug for MutantBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutantBackend")
            .field("mutation", &self.mutation)
            .finish_non_exhaustive()
    }
}

impl MutantBackend {
    /// A memory network of `config`'s pids, broken by `mutation`.
    pub fn new(config: &Config, seed: u64, mutation: Mutation) -> Self {
        Self {
            inner: MemCluster::new(config, seed),
            mutation,
            shared: SharedRef::default(),
        }
    }

    fn wrap(&self, pid: Pid, started: Started) -> Started {
        let (tx, backdoor) = mpsc::unbounded_channel();
        lock(&self.shared).backdoor.insert(pid, tx);
        let pids = self.inner.config().pids().collect();
        Started {
            transport: Box::new(MutantTransport {
                pid,
                inner: started.transport,
                mutation: self.mutation,
                shared: Arc::clone(&self.shared),
                backdoor,
                pids,
                count: 0,
                held: None,
            }),
            incarnation: if self.mutation == Mutation::ForgetIncarnation {
                0
            } else {
                started.incarnation
            },
        }
    }

    /// Delivers what a mutation kept back, now that `pid` is back or links healed.
    fn release(&self) {
        let mut shared = lock(&self.shared);
        let Shared {
            backdoor,
            kept,
            stalled,
        } = &mut *shared;
        let net = self.inner.network();
        for (to, frames) in kept.iter_mut() {
            if net.is_up(*to)
                && let Some(door) = backdoor.get(to)
            {
                for f in frames.drain(..) {
                    let _ = door.send(f);
                }
            }
        }
        stalled.retain(|_, (blocker, held)| {
            if !net.is_up(*blocker) {
                return true;
            }
            for (to, f) in held.drain(..) {
                if let Some(door) = backdoor.get(&to) {
                    let _ = door.send(f);
                }
            }
            false
        });
    }
}

#[async_trait]
impl ClusterUnderTest for MutantBackend {
    fn name(&self) -> String {
        format!("mutant-{}", self.mutation.name())
    }

    fn config(&self) -> &Config {
        self.inner.config()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::SIMULATION
    }

    async fn start(&mut self, pid: Pid) -> Result<Started, TransportError> {
        let started = self.inner.start(pid).await?;
        Ok(self.wrap(pid, started))
    }

    async fn crash(&mut self, pid: Pid) {
        lock(&self.shared).backdoor.remove(&pid);
        self.inner.crash(pid).await;
    }

    async fn restart(&mut self, pid: Pid) -> Result<Started, TransportError> {
        let started = self.inner.restart(pid).await?;
        let started = self.wrap(pid, started);
        self.release();
        Ok(started)
    }

    fn partition(&mut self, a: &[Pid], b: &[Pid]) {
        self.inner.partition(a, b);
    }

    fn cut(&mut self, from: Pid, to: Pid) {
        self.inner.cut(from, to);
    }

    fn heal(&mut self) {
        self.inner.heal();
        self.release();
    }

    fn set_loss(&mut self, from: Pid, to: Pid, p: f64) {
        self.inner.set_loss(from, to, p);
    }

    fn in_flight(&self) -> Option<usize> {
        self.inner.in_flight()
    }

    fn discarded(&self) -> DropCounts {
        self.inner.discarded()
    }
}

struct MutantTransport {
    pid: Pid,
    inner: Box<dyn Transport>,
    mutation: Mutation,
    shared: SharedRef,
    backdoor: mpsc::UnboundedReceiver<Bytes>,
    pids: Vec<Pid>,
    count: u64,
    /// Reorder: a frame taken early, to hand up after the next one.
    held: Option<TransportEvent>,
}

fn sender_of(event: &TransportEvent) -> Option<Pid> {
    match event {
        TransportEvent::Frame(b) => Frame::decode(b.clone()).ok().map(|f| f.header.sender),
        TransportEvent::Dropped { .. } => None,
    }
}

impl MutantTransport {
    fn next_pid(&self, to: Pid) -> Pid {
        let others: Vec<Pid> = self
            .pids
            .iter()
            .copied()
            .filter(|p| *p != self.pid)
            .collect();
        match others.iter().position(|p| *p == to) {
            Some(i) if others.len() > 1 => {
                others.get((i + 1) % others.len()).copied().unwrap_or(to)
            }
            _ => to,
        }
    }
}

#[async_trait]
impl Transport for MutantTransport {
    fn send(&mut self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        self.count += 1;
        let n = self.count;
        match self.mutation {
            Mutation::Duplicate => {
                let result = self.inner.send(to, frame.clone());
                if result.is_ok() && n.is_multiple_of(3) {
                    let _ = self.inner.send(to, frame);
                }
                result
            }
            Mutation::Corrupt if n.is_multiple_of(2) => {
                let mut bytes = BytesMut::from(&frame[..]);
                if let Some(last) = bytes.last_mut() {
                    *last ^= 1;
                }
                self.inner.send(to, bytes.freeze())
            }
            Mutation::Misroute => {
                let wrong = self.next_pid(to);
                self.inner.send(wrong, frame)
            }
            Mutation::LoseHealthy if n.is_multiple_of(3) => Ok(()),
            Mutation::DeliverAfterRestart => match self.inner.send(to, frame.clone()) {
                Err(DropReason::Unreachable) => {
                    lock(&self.shared).kept.entry(to).or_default().push(frame);
                    Ok(())
                }
                other => other,
            },
            Mutation::CrossPartition => match self.inner.send(to, frame.clone()) {
                Err(DropReason::Partitioned) => {
                    if let Some(door) = lock(&self.shared).backdoor.get(&to) {
                        let _ = door.send(frame);
                    }
                    Ok(())
                }
                other => other,
            },
            Mutation::StallBehindUnreachable => {
                let mut shared = lock(&self.shared);
                if let Some((_, held)) = shared.stalled.get_mut(&self.pid) {
                    held.push_back((to, frame));
                    return Ok(());
                }
                drop(shared);
                let result = self.inner.send(to, frame);
                if let Err(DropReason::Unreachable | DropReason::Partitioned) = result {
                    lock(&self.shared)
                        .stalled
                        .insert(self.pid, (to, VecDeque::new()));
                }
                result
            }
            _ => self.inner.send(to, frame),
        }
    }

    async fn recv(&mut self) -> Option<TransportEvent> {
        if let Some(event) = self.held.take() {
            return Some(event);
        }
        let event = tokio::select! {
            biased;
            Some(bytes) = self.backdoor.recv() => Some(TransportEvent::Frame(bytes)),
            event = self.inner.recv() => event,
        };
        if self.mutation == Mutation::Reorder
            && let Some(first) = &event
        {
            // Swap with the next frame if it is already queued and from the same sender.
            // The inner `recv` is cancel-safe, so polling it once loses nothing.
            if let Some(Some(second)) = self.inner.recv().now_or_never() {
                if sender_of(first).is_some() && sender_of(first) == sender_of(&second) {
                    self.held = event;
                    return Some(second);
                }
                self.held = Some(second);
            }
        }
        event
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        self.inner.connected()
    }

    async fn shutdown(&mut self, linger: Duration) {
        self.inner.shutdown(linger).await;
    }
}
