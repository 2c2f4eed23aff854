//! Deliberately broken transports and routers, to prove that every check of the oracle can
//! fail.
//!
//! A [`MutantBackend`] is a [`MemCluster`] broken in one way ([`Mutation`]). Most mutations
//! break the transports: they duplicate, reorder, corrupt, misroute, invent or silently lose
//! frames, deliver what had to be dropped (after a restart, across a partition, after a fault
//! hit it in flight), hold frames behind an unreachable peer, queue without bound, give the
//! wrong reason for a drop, die on hostile bytes, forget their incarnation on restart, drop a
//! healthy peer from their connection set for a moment, or hide a peer's restart.
//! The others break the server's own router, through the test-only
//! `ServerBuilder::router_fault` of `cluster-core` (feature `fault-injection`, which this
//! crate turns on): a broadcast to its sender, no self-delivery, an uncounted `unknown_peer`,
//! stale frames accepted, hostile bytes uncounted.
//!
//! # Which check catches which mutant
//!
//! Each row is a test in `tests/testkit/mutants.rs` that finds the mutant by random search
//! (the scenario generator of [`scenario`](crate::scenario), judged by that clause's oracle
//! function only), shrinks it to at most 8 ops, shows the function flagging the shrunk
//! scenario on the mutant, and the healthy transport passing the same scenario. Each test
//! fails if its oracle function is made to report nothing.
//!
//! | clause | mutant ([`Mutation`]) | broken | oracle function | test |
//! |---|---|---|---|---|
//! | C1 routing | `BroadcastToSender` | router | [`check_c1_routing`] | `c1_finds_broadcast_to_sender` |
//! | C1 routing | `NoSelfDelivery` | router | [`check_c1_routing`] | `c1_finds_no_self_delivery` |
//! | C1 routing | `UncountedUnknownPeer` | router | [`check_c1_routing`] | `c1_finds_uncounted_unknown_peer` |
//! | C2 integrity | `Corrupt` | transport | [`check_c2_integrity`] | `c2_finds_corrupt` |
//! | C4 drop on unreachable | `DeliverAfterRestart` | transport | [`check_c4_drop_on_unreachable`] | `c4_finds_deliver_after_restart` |
//! | C4 drop on unreachable | `CrossPartition` | transport | [`check_c4_drop_on_unreachable`] | `c4_finds_cross_partition` |
//! | C4 in-flight discard | `KeepInFlight` | transport | [`check_c4_drop_on_unreachable`] | `c4_finds_keep_in_flight` |
//! | C4 stale incarnation | `StaleIncarnation` | transport + router | [`check_c4_drop_on_unreachable`] | `c4_finds_stale_incarnation` |
//! | C5 delivery | `LoseHealthy` | transport | [`check_c5_delivery`] | `c5_finds_lose_healthy` |
//! | C6 isolation | `StallBehindUnreachable` | transport | [`check_c6_isolation`] | `c6_finds_stall_behind_unreachable` |
//! | C6 bounded queues | `Unbounded` | transport | [`check_c6_isolation`] | `c6_finds_unbounded` |
//! | C7 nothing silent | `LoseHealthy` | transport | [`check_c7_accounting`] | `c7_finds_silent_loss` |
//! | C5 delivery (C1 held by the router) | `Misroute` | transport | [`check_c5_delivery`] | `router_absorbs_misroute` |
//! | C5 delivery (C3 held by the router) | `Reorder` | transport | [`check_c5_delivery`] | `router_absorbs_reorder` |
//! | C7 nothing silent (C2 held by the router) | `Duplicate` | transport | [`check_c7_accounting`] | `router_absorbs_duplicate` |
//! | C7 nothing silent (C2 held by the router) | `Phantom` | transport | [`check_c7_accounting`] | `router_absorbs_phantom` |
//! | C7 right reason | `WrongReason` | transport | [`check_c7_accounting`] | `c7_finds_wrong_reason` |
//! | C8 restart | `ForgetIncarnation` | transport | [`check_c8_restart`] | `c8_finds_forget_incarnation` |
//! | C9 hostile input | `HostileCrash` | transport | [`check_c9_hostile_input`] | `c9_finds_hostile_crash` |
//! | C9 hostile input | `HostileUncounted` | router | [`check_c9_hostile_input`] | `c9_finds_hostile_uncounted` |
//! | EV peer events: no `Down` without a fault | `SpuriousDown` | transport | [`check_events`] | `events_finds_spurious_down` |
//! | EV peer events: `Restarted` once per restart | `HideRestart` | transport | [`check_events`] | `events_finds_hidden_restart` |
//! | C5 delivery to a node that joined | `ForgetJoined` | transport | [`check_c5_delivery`] | `c5_finds_forget_joined` |
//!
//! Since the wire format v2, the router itself absorbs four transport faults that used to
//! break C1–C3: every frame names its receiver and carries a sequence number per (sender
//! incarnation → receiver), so a misrouted frame is dropped (`malformed`), and a duplicate,
//! a phantom (a copy under another message id) or a frame overtaken by a later one is
//! dropped as `replayed`. The clause they broke now holds on these mutants (each test checks
//! that its random search finds nothing), and the damage shows elsewhere: a message that
//! never reached its receiver (C5), or a drop for a frame nobody sent (C7, exact count). Each
//! test also checks that the shrunk scenario's drops are counted under the router's reason.
//!
//! C10 (membership you can trust): at keyed nodes, the transports that forge frames
//! (`Phantom`, `Corrupt`) are refused by the tag (`unauthenticated`) and the one that
//! replays them (`Duplicate`) by the replay guard (`replayed`); nothing forged is delivered
//! (`at_keyed_nodes_forging_and_replaying_transports_are_refused`). The scenarios' hostile
//! bytes include a version-1 frame (`unsupported_version`) and a frame tagged under the
//! wrong key (`unauthenticated`), judged by [`check_c9_hostile_input`]; the whole
//! conformance suite also runs with a cluster key (`cluster-mem`'s
//! `mem_transport_with_a_cluster_key_keeps_the_contract`). The oracle does not yet model
//! incarnations moving only on authenticated frames; the router's unit tests in
//! `cluster-core` check that.
//!
//! [`check_c1_routing`]: crate::oracle::check_c1_routing
//! [`check_c2_integrity`]: crate::oracle::check_c2_integrity
//! [`check_c3_fifo`]: crate::oracle::check_c3_fifo
//! [`check_c4_drop_on_unreachable`]: crate::oracle::check_c4_drop_on_unreachable
//! [`check_c5_delivery`]: crate::oracle::check_c5_delivery
//! [`check_c6_isolation`]: crate::oracle::check_c6_isolation
//! [`check_c7_accounting`]: crate::oracle::check_c7_accounting
//! [`check_c8_restart`]: crate::oracle::check_c8_restart
//! [`check_c9_hostile_input`]: crate::oracle::check_c9_hostile_input
//! [`check_events`]: crate::oracle::check_events

use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cluster_core::wire::{self, Frame};
use cluster_core::{
    Config, DropCounts, DropReason, Incarnation, PeerSet, Pid, RouterFault, ServerBuilder,
    Transport, TransportError, TransportEvent,
};
use cluster_mem::MemNetwork;
use tokio::sync::{mpsc, watch};

use crate::oracle::Invariant;
use crate::under_test::{Capabilities, ClusterUnderTest, MemCluster, Started};

/// One way to break the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// Sends every third accepted frame twice (broke C2; the router now drops the copy as
    /// `replayed`, which C7 sees as a drop of a frame nobody sent).
    Duplicate,
    /// Hands up two queued frames of the same sender in swapped order (broke C3; the router
    /// now drops the overtaken frame as `replayed`, a loss C5 sees).
    Reorder,
    /// Flips the last byte of every other frame (breaks C2: corruption).
    Corrupt,
    /// Sends frames for a peer to the next pid instead (broke C1; the frame names its
    /// receiver, so the router there drops it as `malformed`, a loss C5 sees).
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
    /// Frames in flight when their sender crashes, or when a cut or partition hits their
    /// link, are delivered anyway instead of discarded (breaks C4: in-flight discard).
    KeepInFlight,
    /// Frames in flight when their sender crashes reach the receiver late, right after the
    /// first frame of the sender's next incarnation (as queued frames can on real sockets),
    /// and the router accepts them although a newer incarnation was seen (breaks C4).
    StaleIncarnation,
    /// Refusals give the wrong reason: `partitioned` for an unreachable peer and
    /// `unreachable` for a cut link (breaks C7).
    WrongReason,
    /// A frame for a full queue is queued anyway, without bound, instead of being refused
    /// as `backpressure` (breaks C6).
    Unbounded,
    /// Hands up, after every other frame, a copy of it under a message id nobody sent
    /// (broke C2: phantom; it repeats its original's sequence number, so the router drops
    /// it as `replayed`, which C7 sees as a drop of a frame nobody sent).
    Phantom,
    /// Bytes on its port that are not a frame bring the node down, uncounted (breaks C9).
    HostileCrash,
    /// The router drops bytes that are not a known peer's frame without counting them
    /// (breaks C9).
    HostileUncounted,
    /// The router also delivers a broadcast to its sender (breaks C1).
    BroadcastToSender,
    /// The router sends a message for the node itself out through the transport, which it
    /// then drops as a forgery (breaks C1).
    NoSelfDelivery,
    /// The router drops a send to an unknown pid without counting it (breaks C1).
    UncountedUnknownPeer,
    /// Drops a healthy peer from the published connection set for a moment (a few
    /// scheduler turns) when it sends the second message to it: the node tells `Down` with
    /// no fault on the link (breaks EV).
    SpuriousDown,
    /// Hands up a peer's frames, greetings included, as from the first incarnation of it
    /// this transport heard, as a transport that keeps a peer's identity per connection
    /// would: a restart goes untold (breaks EV; the restarted peer's messages, replays to
    /// the router, are lost too).
    HideRestart,
    /// Ignores `add_peer`: refuses (as `unreachable`) every frame to a pid that was not in
    /// the config, as a transport that never connects to a peer added at run time would
    /// (breaks C5: messages to a node that joined are lost).
    ForgetJoined,
}

impl Mutation {
    /// Every mutation.
    pub const ALL: [Mutation; 22] = [
        Mutation::Duplicate,
        Mutation::Reorder,
        Mutation::Corrupt,
        Mutation::Misroute,
        Mutation::LoseHealthy,
        Mutation::DeliverAfterRestart,
        Mutation::CrossPartition,
        Mutation::StallBehindUnreachable,
        Mutation::ForgetIncarnation,
        Mutation::KeepInFlight,
        Mutation::StaleIncarnation,
        Mutation::WrongReason,
        Mutation::Unbounded,
        Mutation::Phantom,
        Mutation::HostileCrash,
        Mutation::HostileUncounted,
        Mutation::BroadcastToSender,
        Mutation::NoSelfDelivery,
        Mutation::UncountedUnknownPeer,
        Mutation::SpuriousDown,
        Mutation::HideRestart,
        Mutation::ForgetJoined,
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
            Mutation::KeepInFlight => "keep-in-flight",
            Mutation::StaleIncarnation => "stale-incarnation",
            Mutation::WrongReason => "wrong-reason",
            Mutation::Unbounded => "unbounded",
            Mutation::Phantom => "phantom",
            Mutation::HostileCrash => "hostile-crash",
            Mutation::HostileUncounted => "hostile-uncounted",
            Mutation::BroadcastToSender => "broadcast-to-sender",
            Mutation::NoSelfDelivery => "no-self-delivery",
            Mutation::UncountedUnknownPeer => "uncounted-unknown-peer",
            Mutation::SpuriousDown => "spurious-down",
            Mutation::HideRestart => "hide-restart",
            Mutation::ForgetJoined => "forget-joined",
        }
    }

    /// The clause it breaks first (some break more: `LoseHealthy` is silent, so C7 too).
    pub fn breaks(self) -> Invariant {
        match self {
            Mutation::BroadcastToSender
            | Mutation::NoSelfDelivery
            | Mutation::UncountedUnknownPeer => Invariant::C1Routing,
            Mutation::Corrupt => Invariant::C2Integrity,
            Mutation::DeliverAfterRestart
            | Mutation::CrossPartition
            | Mutation::KeepInFlight
            | Mutation::StaleIncarnation => Invariant::C4DropOnUnreachable,
            Mutation::LoseHealthy
            | Mutation::Misroute
            | Mutation::Reorder
            | Mutation::ForgetJoined => Invariant::C5Delivery,
            Mutation::StallBehindUnreachable | Mutation::Unbounded => Invariant::C6Isolation,
            Mutation::WrongReason | Mutation::Duplicate | Mutation::Phantom => {
                Invariant::C7Accounting
            }
            Mutation::ForgetIncarnation => Invariant::C8Restart,
            Mutation::HostileCrash | Mutation::HostileUncounted => Invariant::C9HostileInput,
            Mutation::SpuriousDown | Mutation::HideRestart => Invariant::Events,
        }
    }

    /// The router fault it needs, if it breaks the router.
    fn router_fault(self) -> Option<RouterFault> {
        match self {
            Mutation::StaleIncarnation => Some(RouterFault::AcceptStale),
            Mutation::HostileUncounted => Some(RouterFault::UncountedHostile),
            Mutation::BroadcastToSender => Some(RouterFault::BroadcastToSender),
            Mutation::NoSelfDelivery => Some(RouterFault::NoSelfDelivery),
            Mutation::UncountedUnknownPeer => Some(RouterFault::UncountedUnknownPeer),
            _ => None,
        }
    }

    /// Whether its transports track the frames they have in flight.
    fn tracks_flight(self) -> bool {
        matches!(self, Mutation::KeepInFlight | Mutation::StaleIncarnation)
    }
}

/// A frame held by a mutant: from, to, and the bytes.
type HeldFrame = (Pid, Pid, Bytes);

/// State shared by a mutant cluster's transports: a back door into each node's current
/// transport (how a mutant delivers what the network refused or discarded), and frames held
/// back.
#[derive(Default)]
struct Shared {
    backdoor: BTreeMap<Pid, mpsc::UnboundedSender<Bytes>>,
    /// Frames refused for a down peer, by destination (DeliverAfterRestart).
    kept: BTreeMap<Pid, Vec<Bytes>>,
    /// Per sender: the peer it is stalled behind, and the frames held meanwhile.
    stalled: BTreeMap<Pid, (Pid, VecDeque<(Pid, Bytes)>)>,
    /// Frames the network accepted and that have not arrived (KeepInFlight,
    /// StaleIncarnation).
    flying: Vec<HeldFrame>,
    /// Frames of crashed senders, with the incarnation that sent them, waiting for that
    /// sender's next incarnation to reach their destination (StaleIncarnation).
    stale: Vec<(Incarnation, HeldFrame)>,
}

impl Shared {
    /// Takes the frames in flight on the links `doomed` selects out of `flying`.
    fn take_flying(&mut self, doomed: impl Fn(Pid, Pid) -> bool) -> Vec<HeldFrame> {
        let (taken, kept) = std::mem::take(&mut self.flying)
            .into_iter()
            .partition(|(from, to, _)| doomed(*from, *to));
        self.flying = kept;
        taken
    }

    fn through_backdoor(&self, frames: Vec<HeldFrame>) {
        for (_, to, frame) in frames {
            if let Some(door) = self.backdoor.get(&to) {
                let _ = door.send(frame);
            }
        }
    }
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A [`MemCluster`] whose transports or routers are broken by one [`Mutation`].
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
        // Only SpuriousDown publishes its own set: the others keep the network's timing.
        let flicker = (self.mutation == Mutation::SpuriousDown)
            .then(|| Flicker::new(started.transport.connected()));
        Started {
            transport: Box::new(MutantTransport {
                pid,
                flicker,
                messages: AtomicU64::new(0),
                inner: started.transport,
                mutation: self.mutation,
                shared: Arc::clone(&self.shared),
                net: self.inner.network().clone(),
                pids,
                count: AtomicU64::new(0),
                receiving: Mutex::new(Receiving {
                    backdoor,
                    door: VecDeque::new(),
                    arrivals: 0,
                    pending: VecDeque::new(),
                    closed: false,
                    first_heard: BTreeMap::new(),
                }),
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
            ..
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

    /// A fault hits the links `doomed` selects: the network discards their frames in flight;
    /// `KeepInFlight` delivers them anyway (through the back door, at the next settle).
    fn links_fail(&self, doomed: impl Fn(Pid, Pid) -> bool) {
        if !self.mutation.tracks_flight() {
            return;
        }
        let mut shared = lock(&self.shared);
        let hit = shared.take_flying(doomed);
        if self.mutation == Mutation::KeepInFlight {
            shared.through_backdoor(hit);
        }
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
        if self.mutation.tracks_flight() {
            let mut shared = lock(&self.shared);
            // What was on its way to the crashed node is lost with it, also for a mutant.
            shared.take_flying(|_, to| to == pid);
            shared.stale.retain(|(_, (_, to, _))| *to != pid);
            let orphans = shared.take_flying(|from, _| from == pid);
            match self.mutation {
                Mutation::KeepInFlight => shared.through_backdoor(orphans),
                _ => {
                    for (from, to, frame) in orphans {
                        let incarnation =
                            Frame::decode(frame.clone()).map_or(0, |f| f.header.incarnation);
                        shared.stale.push((incarnation, (from, to, frame)));
                    }
                }
            }
        }
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
        self.links_fail(|x, y| {
            x != y && ((a.contains(&x) && b.contains(&y)) || (b.contains(&x) && a.contains(&y)))
        });
        self.inner.partition(a, b);
    }

    fn cut(&mut self, from: Pid, to: Pid) {
        self.links_fail(|x, y| x == from && y == to && x != y);
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

    fn control_in_flight(&self) -> Option<usize> {
        self.inner.control_in_flight()
    }

    fn discarded(&self) -> DropCounts {
        self.inner.discarded()
    }

    fn inject(&mut self, to: Pid, bytes: Bytes) -> Option<Result<(), DropReason>> {
        self.inner.inject(to, bytes)
    }

    async fn join_node(
        &mut self,
        pid: Pid,
        members: &[(Pid, String)],
    ) -> Option<Result<(Config, Started), TransportError>> {
        let made = self.inner.join_node(pid, members).await?;
        Some(made.map(|(config, started)| (config, self.wrap(pid, started))))
    }

    fn server_builder(&self, _pid: Pid, builder: ServerBuilder) -> ServerBuilder {
        match self.mutation.router_fault() {
            Some(fault) => builder.router_fault(fault),
            None => builder,
        }
    }
}

struct MutantTransport {
    pid: Pid,
    inner: Box<dyn Transport>,
    mutation: Mutation,
    shared: SharedRef,
    /// The network (HostileCrash takes its own node down through it).
    net: MemNetwork,
    pids: Vec<Pid>,
    /// Frames sent.
    count: AtomicU64,
    /// Message frames sent (control frames not counted).
    messages: AtomicU64,
    /// The connection set this transport publishes, if not the network's (SpuriousDown
    /// hides a peer in it).
    flicker: Option<Arc<Flicker>>,
    receiving: Mutex<Receiving>,
}

/// The connection set a [`MutantTransport`] publishes: the network's, copied by a task of
/// its own, minus a peer it hides for a moment (SpuriousDown).
struct Flicker {
    published: watch::Sender<PeerSet>,
    network: Mutex<watch::Receiver<PeerSet>>,
    hidden: Mutex<Option<Pid>>,
}

/// Scheduler turns a hidden peer stays hidden: long enough for the node's task to see it
/// gone (and tell `Down`).
const HIDDEN_TURNS: usize = 8;

impl Flicker {
    /// Publishes `network`'s set as it changes, from a task that ends with the last
    /// receiver of the published set.
    fn new(network: watch::Receiver<PeerSet>) -> Arc<Self> {
        let flicker = Arc::new(Flicker {
            published: watch::Sender::new(network.borrow().clone()),
            network: Mutex::new(network.clone()),
            hidden: Mutex::new(None),
        });
        let copier = Arc::downgrade(&flicker);
        let mut changes = network;
        tokio::spawn(async move {
            loop {
                let Some(flicker) = copier.upgrade() else {
                    return;
                };
                tokio::select! {
                    biased;
                    () = flicker.published.closed() => return,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
                flicker.publish();
            }
        });
        flicker
    }

    fn publish(&self) {
        let mut set = self
            .network
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .borrow_and_update()
            .clone();
        if let Some(hidden) = *self.hidden.lock().unwrap_or_else(|e| e.into_inner()) {
            set.remove(&hidden);
        }
        self.published.send_if_modified(|cur| {
            let changed = *cur != set;
            *cur = set;
            changed
        });
    }

    /// Hides `peer` for [`HIDDEN_TURNS`] scheduler turns.
    fn hide_for_a_moment(self: &Arc<Self>, peer: Pid) {
        *self.hidden.lock().unwrap_or_else(|e| e.into_inner()) = Some(peer);
        self.publish();
        let flicker = Arc::clone(self);
        tokio::spawn(async move {
            for _ in 0..HIDDEN_TURNS {
                tokio::task::yield_now().await;
            }
            *flicker.hidden.lock().unwrap_or_else(|e| e.into_inner()) = None;
            flicker.publish();
        });
    }
}

/// `bytes` (a frame) with the sender's incarnation in its header replaced by `incarnation`.
fn as_incarnation(bytes: &Bytes, header: &wire::Header, incarnation: Incarnation) -> Bytes {
    let mut rewritten = *header;
    rewritten.incarnation = incarnation;
    let mut out = BytesMut::from(&bytes[..]);
    if let Some(head) = out.get_mut(..wire::HEADER_LEN) {
        head.copy_from_slice(&rewritten.to_bytes());
    }
    out.freeze()
}

/// The receiving half of a [`MutantTransport`].
struct Receiving {
    backdoor: mpsc::UnboundedReceiver<Bytes>,
    /// Frames `readable` took from the back door (a channel cannot be peeked at) and not
    /// handed up yet: handed up right after `pending`, as the back door came first.
    door: VecDeque<Bytes>,
    /// Frames received from the network.
    arrivals: u64,
    /// Events to hand up before any other: a reordered, late or invented frame.
    pending: VecDeque<TransportEvent>,
    /// The node went down on an arrival (HostileCrash): nothing more is handed up.
    closed: bool,
    /// The first incarnation heard of each sender (HideRestart).
    first_heard: BTreeMap<Pid, Incarnation>,
}

/// The header of a message frame (control frames, such as greetings, carry no message: the
/// mutants leave them alone).
fn header_of(event: &TransportEvent) -> Option<wire::Header> {
    match event {
        TransportEvent::Frame(b) => Frame::decode(b.clone())
            .ok()
            .map(|f| f.header)
            .filter(|h| !h.destination.is_control()),
        TransportEvent::Dropped { .. } => None,
    }
}

/// A message-id bit no sender sets (it would take 2^31 ids from one incarnation).
const PHANTOM_BIT: i64 = 1 << 31;

/// `frame` under another message id, which nobody sent.
fn phantom_of(frame: &Bytes) -> Option<Bytes> {
    let header = Frame::decode(frame.clone()).ok()?.header;
    let mut bytes = BytesMut::from(&frame[..]);
    // The message id is the header's last field (see `cluster_core::wire`).
    let id_at = wire::HEADER_LEN.checked_sub(8)?;
    bytes
        .get_mut(id_at..wire::HEADER_LEN)?
        .copy_from_slice(&(header.msg_id | PHANTOM_BIT).to_le_bytes());
    Some(bytes.freeze())
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

    fn receiving(&self) -> MutexGuard<'_, Receiving> {
        self.receiving.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the mutation does with one frame taken from the network: `None` if the node
    /// went down on it.
    fn arrived(&self, receiving: &mut Receiving, bytes: Bytes) -> Option<TransportEvent> {
        receiving.arrivals += 1;
        match self.mutation {
            Mutation::KeepInFlight | Mutation::StaleIncarnation => {
                let mut shared = lock(&self.shared);
                let me = self.pid;
                if let Some(i) = shared
                    .flying
                    .iter()
                    .position(|(_, to, f)| *to == me && *f == bytes)
                {
                    shared.flying.swap_remove(i);
                }
            }
            Mutation::HostileCrash if Frame::decode(bytes.clone()).is_err() => {
                self.net.crash(self.pid);
                return None;
            }
            Mutation::Phantom if !receiving.arrivals.is_multiple_of(2) => {
                if let Some(phantom) = phantom_of(&bytes) {
                    receiving.pending.push_back(TransportEvent::Frame(phantom));
                }
            }
            Mutation::HideRestart => {
                if let Ok(frame) = Frame::decode(bytes.clone())
                    && !frame.header.keyed
                {
                    let h = frame.header;
                    let first = *receiving
                        .first_heard
                        .entry(h.sender)
                        .or_insert(h.incarnation);
                    if first != h.incarnation {
                        return Some(TransportEvent::Frame(as_incarnation(&bytes, &h, first)));
                    }
                }
            }
            _ => {}
        }
        Some(TransportEvent::Frame(bytes))
    }

    /// The next event the network has ready, if any.
    fn take_one(&self) -> Option<TransportEvent> {
        let mut one = Vec::with_capacity(1);
        self.inner.try_recv_many(&mut one, 1);
        one.pop()
    }

    /// StaleIncarnation: once a newer incarnation of a sender reaches this node, its older
    /// incarnation's frames follow.
    fn release_stale(&self, receiving: &mut Receiving, event: &TransportEvent) {
        let Some(header) = header_of(event) else {
            return;
        };
        let mut shared = lock(&self.shared);
        let me = self.pid;
        let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut shared.stale)
            .into_iter()
            .partition(|(incarnation, (from, to, _))| {
                *to == me && *from == header.sender && *incarnation < header.incarnation
            });
        shared.stale = keep;
        receiving.pending.extend(
            late.into_iter()
                .map(|(_, (_, _, frame))| TransportEvent::Frame(frame)),
        );
    }
}

#[async_trait]
impl Transport for MutantTransport {
    fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if self.mutation == Mutation::ForgetJoined && !self.pids.contains(&to) {
            return Err(DropReason::Unreachable);
        }
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
            Mutation::SpuriousDown if to != self.pid && !wire::is_control(&frame) => {
                if self.messages.fetch_add(1, Ordering::Relaxed) + 1 == 2
                    && let Some(flicker) = &self.flicker
                {
                    flicker.hide_for_a_moment(to);
                }
                self.inner.send(to, frame)
            }
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
            Mutation::KeepInFlight | Mutation::StaleIncarnation => {
                let result = self.inner.send(to, frame.clone());
                if result.is_ok() {
                    lock(&self.shared).flying.push((self.pid, to, frame));
                }
                result
            }
            Mutation::WrongReason => match self.inner.send(to, frame) {
                Err(DropReason::Unreachable) => Err(DropReason::Partitioned),
                Err(DropReason::Partitioned) => Err(DropReason::Unreachable),
                other => other,
            },
            Mutation::Unbounded => match self.inner.send(to, frame.clone()) {
                Err(DropReason::Backpressure) => {
                    if let Some(door) = lock(&self.shared).backdoor.get(&to) {
                        let _ = door.send(frame);
                    }
                    Ok(())
                }
                other => other,
            },
            _ => self.inner.send(to, frame),
        }
    }

    async fn writable(&self, to: Pid) {
        self.inner.writable(to).await;
    }

    async fn readable(&self) -> bool {
        let mut inner = self.inner.readable();
        poll_fn(|cx| {
            {
                let mut receiving = self.receiving();
                if receiving.closed {
                    return Poll::Ready(false);
                }
                if !receiving.pending.is_empty() || !receiving.door.is_empty() {
                    return Poll::Ready(true);
                }
                // The back door before the network, as it always came first.
                if let Poll::Ready(Some(bytes)) = receiving.backdoor.poll_recv(cx) {
                    receiving.door.push_back(bytes);
                    return Poll::Ready(true);
                }
            }
            inner.as_mut().poll(cx)
        })
        .await
    }

    /// One event per call, as the mutations were written for (a reorder looks at the one
    /// frame after it, a phantom follows the frame it copies).
    fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
        if max == 0 {
            return 0;
        }
        let mut receiving = self.receiving();
        if receiving.closed {
            return 0;
        }
        if let Some(event) = receiving.pending.pop_front() {
            events.push(event);
            return 1;
        }
        let from_door = match receiving.door.pop_front() {
            Some(bytes) => Some(bytes),
            None => receiving.backdoor.try_recv().ok(),
        };
        let first = match from_door {
            Some(bytes) => TransportEvent::Frame(bytes),
            None => match self.take_one() {
                Some(TransportEvent::Frame(bytes)) => match self.arrived(&mut receiving, bytes) {
                    Some(event) => event,
                    None => {
                        receiving.closed = true;
                        return 0;
                    }
                },
                Some(other) => other,
                None => return 0,
            },
        };
        match self.mutation {
            Mutation::StaleIncarnation => self.release_stale(&mut receiving, &first),
            Mutation::Reorder => {
                // Swap with the next frame if it is already queued and from the same sender.
                if let Some(second) = self.take_one() {
                    let sender = |e: &TransportEvent| header_of(e).map(|h| h.sender);
                    if sender(&first).is_some() && sender(&first) == sender(&second) {
                        receiving.pending.push_back(first);
                        events.push(second);
                        return 1;
                    }
                    receiving.pending.push_back(second);
                }
            }
            _ => {}
        }
        events.push(first);
        1
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        match &self.flicker {
            Some(flicker) => flicker.published.subscribe(),
            None => self.inner.connected(),
        }
    }

    fn may_lose_accepted(&self) -> bool {
        self.inner.may_lose_accepted()
    }

    async fn shutdown(&self, linger: Duration) {
        self.inner.shutdown(linger).await;
    }

    // Membership at run time: the inner transport's to grant (the defaults would refuse).
    fn add_peer(&self, pid: Pid, address: &str) -> Result<(), TransportError> {
        self.inner.add_peer(pid, address)
    }

    fn remove_peer(&self, pid: Pid) -> Result<(), TransportError> {
        self.inner.remove_peer(pid)
    }
}
