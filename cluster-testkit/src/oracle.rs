//! The oracle: from a finished [`History`](crate::History), decides for every message copy
//! whether it must be delivered, must be dropped, or may go either way, and checks the
//! contract C1–C9 (stated in `cluster-core`'s crate docs), one invariant per function.
//!
//! Exact runs (simulation) have no "may" except on lossy links: arrivals are held until the
//! harness settles, so a copy routed on a healthy link must be delivered unless a fault on
//! its link comes before the next settle, in which case it must be dropped. Exact runs also
//! know each node's receive-queue bound ([`Event::QueueBound`]): the oracle counts the
//! frames queued for every node, so a copy routed to a full queue must be refused as
//! `backpressure`, and one accepted beyond the bound breaks C6. Hostile bytes put on a
//! node's port ([`Event::Injected`]) must be dropped under the reason their kind calls for
//! (C9). Windowed runs (real sockets) say "may" for a copy routed within the window of a
//! fault on its link.
//!
//! Beyond the delivery contract, the oracle judges the peer events the nodes told
//! ([`Event::PeerEvent`], see `cluster_core::events`) against the faults the harness
//! injected ([`check_events`]).
//!
//! | invariant | function | what it checks |
//! |---|---|---|
//! | C1 | [`check_c1_routing`] | each copy to its addressee only; broadcasts to every other pid once; self to self; unknown pids counted |
//! | C2 | [`check_c2_integrity`] | no phantom, no corruption, no duplicate |
//! | C3 | [`check_c3_fifo`] | per ordered pair, deliveries in send order |
//! | C4 | [`check_c4_drop_on_unreachable`] | what had to be dropped is never delivered, not later either; nothing of an older incarnation after a newer one |
//! | C5 | [`check_c5_delivery`] | what had to be delivered was, to the incarnation it was sent to |
//! | C6 | [`check_c6_isolation`] | nothing held back behind an unreachable peer; queues within their bound; no stall |
//! | C7 | [`check_c7_accounting`] | sent = delivered + dropped; drops under the right reason |
//! | C8 | [`check_c8_restart`] | incarnations increase; a restarted node's messages flow |
//! | C9 | [`check_c9_hostile_input`] | hostile bytes dropped and counted under their reason; the node keeps serving |
//! | EV | [`check_events`] | peer events match the faults: no `Down` without a fault on the link, `Restarted` once per restart that the node could tell, never for an incarnation that did not start or for the first one the node heard |

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use cluster_core::{BROADCAST, DropReason, Incarnation, MsgId, Pid};

use crate::history::{Event, PeerChange, Record};
use crate::scenario::{FORGED_MSG_ID, HostileBytes};

/// The clauses of the contract that the oracle checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invariant {
    /// C1: routing — to the addressed peer only, broadcast to all others once, self to
    /// self, unknown pids counted.
    C1Routing,
    /// C2: no phantoms, no duplicates, no corruption.
    C2Integrity,
    /// C3: FIFO per ordered pair.
    C3Fifo,
    /// C4: what is sent while unreachable is never delivered, not later either; no frame of
    /// an older incarnation after a newer one.
    C4DropOnUnreachable,
    /// C5: delivered when healthy.
    C5Delivery,
    /// C6: isolation — nothing held up behind an unreachable peer; no stall.
    C6Isolation,
    /// C7: nothing silent — sent = delivered + dropped, plausible drop reasons.
    C7Accounting,
    /// C8: restart — incarnations increase; a restarted node's messages flow.
    C8Restart,
    /// C9: hostile input — bytes that are not a peer's frame are dropped and counted under
    /// the right reason, nothing is delivered from them, and the node keeps serving.
    C9HostileInput,
    /// EV: peer events match the faults — no `Down` for a peer whose link no fault
    /// touched, `Restarted` exactly once per restart a node heard of, and only for an
    /// incarnation that started and is not the first the node could hear.
    Events,
    /// MB: membership at run time — each node's `Joined`/`Left` events match the changes
    /// its server made, and once changes have spread (the final settle, on a healthy
    /// network), every running member holds the same membership records.
    Membership,
}

impl Invariant {
    /// Every invariant, in order.
    pub const ALL: [Invariant; 11] = [
        Invariant::C1Routing,
        Invariant::C2Integrity,
        Invariant::C3Fifo,
        Invariant::C4DropOnUnreachable,
        Invariant::C5Delivery,
        Invariant::C6Isolation,
        Invariant::C7Accounting,
        Invariant::C8Restart,
        Invariant::C9HostileInput,
        Invariant::Events,
        Invariant::Membership,
    ];

    /// The short code, `C1` … `C9`, `EV`.
    pub fn code(self) -> &'static str {
        match self {
            Invariant::C1Routing => "C1",
            Invariant::C2Integrity => "C2",
            Invariant::C3Fifo => "C3",
            Invariant::C4DropOnUnreachable => "C4",
            Invariant::C5Delivery => "C5",
            Invariant::C6Isolation => "C6",
            Invariant::C7Accounting => "C7",
            Invariant::C8Restart => "C8",
            Invariant::C9HostileInput => "C9",
            Invariant::Events => "EV",
            Invariant::Membership => "MB",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Invariant::C1Routing => "routing",
            Invariant::C2Integrity => "no phantoms, duplicates or corruption",
            Invariant::C3Fifo => "FIFO per pair",
            Invariant::C4DropOnUnreachable => "drop on unreachable",
            Invariant::C5Delivery => "delivery when healthy",
            Invariant::C6Isolation => "isolation",
            Invariant::C7Accounting => "nothing silent",
            Invariant::C8Restart => "restart",
            Invariant::C9HostileInput => "hostile input",
            Invariant::Events => "peer events match the faults",
            Invariant::Membership => "membership changes spread",
        };
        write!(f, "{} {name}", self.code())
    }
}

/// One broken promise, pointing at the history record that shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which clause.
    pub invariant: Invariant,
    /// The record (`seq`) that shows it, if one does.
    pub seq: Option<u64>,
    /// What happened, in words.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "[{}] at #{seq}: {}", self.invariant, self.message),
            None => write!(f, "[{}] {}", self.invariant, self.message),
        }
    }
}

/// What the oracle decided a message copy must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Must be delivered.
    Deliver,
    /// Must be dropped (and never delivered later).
    Drop,
    /// May go either way (lossy link, or near a fault on real networks).
    Either,
}

/// One copy of a message to one remote destination, as routed by its sender's server, with
/// the oracle's decision on its fate.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageCopy {
    /// `seq` of the `routed` record.
    pub routed_seq: u64,
    /// Sender.
    pub from: Pid,
    /// Sender's incarnation.
    pub incarnation: Incarnation,
    /// Destination.
    pub to: Pid,
    /// The destination's incarnation when routed (`None`: down).
    pub to_incarnation: Option<Incarnation>,
    /// Message id.
    pub msg_id: MsgId,
    /// What the transport said at send.
    pub refused: Option<DropReason>,
    /// Frames already queued for the destination when routed (exact runs that know the
    /// queue bound; `None` otherwise).
    pub queued: Option<u64>,
    /// The destination's receive queue was at its bound when routed: the copy must be
    /// refused as `backpressure`.
    pub queue_full: bool,
    /// The link's state when routed.
    pub link: LinkView,
    /// The oracle's decision.
    pub expect: Expect,
    /// Why, in words.
    pub because: &'static str,
    /// `seq` of the first delivery, if any.
    pub delivered_seq: Option<u64>,
    /// The incarnation of the destination it was delivered to.
    pub delivered_to: Option<Incarnation>,
    /// `seq` of the first settle after routing.
    pub next_settle: Option<u64>,
}

/// A `send` record: what the user handed to `from`'s server, before any routing.
#[derive(Debug, Clone)]
struct SentMessage {
    seq: u64,
    from: Pid,
    incarnation: Incarnation,
    to: Pid,
    payload: serde_json::Value,
}

/// Hostile bytes put on a node's port.
#[derive(Debug, Clone)]
struct Injection {
    seq: u64,
    to: Pid,
    at_incarnation: Incarnation,
    bytes: HostileBytes,
}

/// A frame the receiving server dropped on arrival.
#[derive(Debug, Clone)]
struct ArrivalDrop {
    seq: u64,
    at: Pid,
    at_incarnation: Incarnation,
    from: Option<Pid>,
    msg_id: Option<MsgId>,
    reason: DropReason,
}

#[derive(Debug, Clone)]
struct Delivery {
    seq: u64,
    at: Pid,
    at_incarnation: Incarnation,
    from: Pid,
    msg_id: MsgId,
    payload: serde_json::Value,
}

#[derive(Debug, Clone, Default)]
struct NetState {
    up: BTreeMap<Pid, Option<Incarnation>>,
    blocked: HashSet<(Pid, Pid)>,
    loss: HashMap<(Pid, Pid), f64>,
}

/// The state of a copy's link when it was routed, as the harness's model knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkView {
    /// The sender was up, as the incarnation that sent the copy.
    pub sender_current: bool,
    /// The destination's incarnation, if it was up.
    pub to_incarnation: Option<Incarnation>,
    /// The link was cut (a cut or a partition).
    pub blocked: bool,
    /// The link's loss probability.
    pub loss: f64,
}

impl NetState {
    fn view(&self, from: Pid, incarnation: Incarnation, to: Pid) -> LinkView {
        LinkView {
            sender_current: self.up.get(&from).copied().flatten() == Some(incarnation),
            to_incarnation: self.up.get(&to).copied().flatten(),
            blocked: self.blocked.contains(&(from, to)),
            loss: self.loss.get(&(from, to)).copied().unwrap_or(0.0),
        }
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Start { pid, incarnation } => {
                self.up.insert(*pid, Some(*incarnation));
            }
            Event::Crash { pid } => {
                self.up.insert(*pid, None);
            }
            Event::Partition { a, b } => {
                for &x in a {
                    for &y in b {
                        if x != y {
                            self.blocked.insert((x, y));
                            self.blocked.insert((y, x));
                        }
                    }
                }
            }
            Event::Cut { from, to } if from != to => {
                self.blocked.insert((*from, *to));
            }
            Event::Heal => {
                self.blocked.clear();
                self.loss.clear();
            }
            Event::SetLoss { from, to, p } => {
                let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
                if p == 0.0 {
                    self.loss.remove(&(*from, *to));
                } else {
                    self.loss.insert((*from, *to), p);
                }
            }
            _ => {}
        }
    }
}

/// The frames queued for each node in an exact run, as the simulated network holds them: in
/// when a copy is accepted or hostile bytes are injected; out when one arrives, is discarded
/// by a fault, or the node crashes or (re)starts with an empty queue. Frames the harness hands
/// straight to a server (`raw`) never queue, and arrive before any that do.
#[derive(Debug, Default)]
struct QueueModel {
    queued: HashMap<Pid, u64>,
    raw_pending: HashMap<Pid, u64>,
}

impl QueueModel {
    fn len(&self, pid: Pid) -> u64 {
        self.queued.get(&pid).copied().unwrap_or(0)
    }

    fn take_one(counts: &mut HashMap<Pid, u64>, pid: Pid) -> bool {
        match counts.get_mut(&pid) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Start { pid, .. } | Event::Crash { pid } => {
                self.queued.remove(pid);
                self.raw_pending.remove(pid);
            }
            Event::Routed {
                to, refused: None, ..
            }
            | Event::Injected {
                to, refused: None, ..
            } => *self.queued.entry(*to).or_default() += 1,
            Event::Raw { to, .. } => *self.raw_pending.entry(*to).or_default() += 1,
            Event::Arrived { at, .. } => {
                // A raw frame, if one is pending, else a queued one.
                let _ = Self::take_one(&mut self.raw_pending, *at)
                    || Self::take_one(&mut self.queued, *at);
            }
            Event::Discarded { to, .. } => {
                Self::take_one(&mut self.queued, *to);
            }
            _ => {}
        }
    }
}

/// A fault that discards frames in flight on a link (crash of either end, cut, partition).
fn discards(event: &Event, from: Pid, to: Pid) -> bool {
    match event {
        Event::Crash { pid } => *pid == from || *pid == to,
        Event::Cut { from: f, to: t } => *f == from && *t == to,
        Event::Partition { a, b } => {
            (a.contains(&from) && b.contains(&to)) || (b.contains(&from) && a.contains(&to))
        }
        _ => false,
    }
}

/// Any change of a link's state (for the "may" window of real networks).
fn touches(event: &Event, from: Pid, to: Pid) -> bool {
    match event {
        Event::Start { pid, .. } => *pid == from || *pid == to,
        Event::Heal => true,
        Event::SetLoss { from: f, to: t, .. } => *f == from && *t == to,
        _ => discards(event, from, to),
    }
}

/// The facts the checks share, computed once from the history.
#[derive(Debug, Clone)]
pub struct Analysis {
    pids: BTreeSet<Pid>,
    window_us: Option<u64>,
    sends: HashMap<(Pid, MsgId), SentMessage>,
    send_order: Vec<(Pid, MsgId)>,
    /// Remote copies, in routing order.
    pub copies: Vec<MessageCopy>,
    routed: HashMap<(Pid, MsgId), Vec<u64>>,
    deliveries: Vec<Delivery>,
    starts: Vec<(u64, Pid, Incarnation)>,
    settles: Vec<(u64, bool)>,
    stats: Vec<StatsRow>,
    net_discarded: Option<u64>,
    crashed: bool,
    /// `seq` and pid of every crash.
    crashes: Vec<(u64, Pid)>,
    /// Raw frames injected by the harness (they are dropped, but nobody sent them), hostile
    /// bytes included.
    raw: u64,
    /// Each node's receive-queue bound (exact runs).
    queue_bound: Option<u64>,
    /// Hostile bytes the network took.
    injections: Vec<Injection>,
    /// Frames dropped on arrival.
    arrival_drops: Vec<ArrivalDrop>,
    /// Per `(from, to, msg_id)`: frames discarded by the simulated network, and frames the
    /// receiver's server dropped on arrival.
    ended_dropped: HashMap<(Pid, Pid, MsgId), u32>,
    /// Every peer event told, in history order.
    peer_events: Vec<Told>,
    /// Node incarnations whose peer-event subscription lost events.
    events_lost: BTreeSet<(Pid, Incarnation)>,
    /// Every fault and start (crash, start, partition, cut, heal, loss), in history order;
    /// leaves and removals too (they end connections).
    faults: Vec<(u64, u64, Event)>,
    /// Each node incarnation's membership, as its server changed it.
    members: MembershipModel,
    /// The first `Join` or `Leave` of the run, if any.
    first_change: Option<u64>,
    /// Each running node's records at the end (`Members`), with `seq`.
    end_members: Vec<(u64, Pid, Incarnation, Vec<cluster_core::Member>)>,
    /// The network was healthy at the end (no cut, no loss), and no link was lossy after
    /// the first membership change: what the final-agreement check needs.
    healthy_after_changes: bool,
}

/// One membership change at a node: `(seq, at_us, present)`.
type Change = (u64, u64, bool);

/// Each node incarnation's membership, from its config and the changes its server made
/// ([`Event::PeerAdded`], [`Event::PeerRemoved`], recorded in order with its routing).
#[derive(Debug, Clone, Default)]
struct MembershipModel {
    /// The pids of the run's config.
    config: BTreeSet<Pid>,
    /// The pids of the config of each node that joined.
    joined: HashMap<Pid, BTreeSet<Pid>>,
    /// The members a node incarnation started with, when not its config's (a restart
    /// from the records of the incarnation before).
    restored: HashMap<(Pid, Incarnation), BTreeSet<Pid>>,
    /// Per (node, incarnation, peer): `(seq, at_us, present)`, in order.
    changes: HashMap<(Pid, Incarnation, Pid), Vec<Change>>,
}

impl MembershipModel {
    fn initially(&self, at: Pid, inc: Incarnation, peer: Pid) -> bool {
        if let Some(members) = self.restored.get(&(at, inc)) {
            return members.contains(&peer);
        }
        self.joined
            .get(&at)
            .map_or(self.config.contains(&peer), |c| c.contains(&peer))
    }

    /// Whether `at` (as `inc`) counted `peer` a member just before record `seq`.
    fn member_at(&self, at: Pid, inc: Incarnation, peer: Pid, seq: u64) -> bool {
        self.changes
            .get(&(at, inc, peer))
            .and_then(|c| c.iter().rev().find(|(s, _, _)| *s < seq))
            .map_or_else(|| self.initially(at, inc, peer), |(_, _, present)| *present)
    }

    /// Whether `at` (as `inc`) changed `peer`'s membership between records `from` and `to`.
    fn changed_between(&self, at: Pid, inc: Incarnation, peer: Pid, from: u64, to: u64) -> bool {
        self.changes
            .get(&(at, inc, peer))
            .is_some_and(|c| c.iter().any(|(s, _, _)| *s > from && *s < to))
    }

    /// Whether `at` (as `inc`) changed `peer`'s membership within `w` µs of `t`.
    fn changed_near(&self, at: Pid, inc: Incarnation, peer: Pid, t: u64, w: u64) -> bool {
        self.changes.get(&(at, inc, peer)).is_some_and(|c| {
            c.iter()
                .any(|(_, us, _)| us.saturating_add(w) >= t && *us <= t.saturating_add(w))
        })
    }
}

/// A peer event a node told.
#[derive(Debug, Clone)]
struct Told {
    seq: u64,
    at_us: u64,
    at: Pid,
    at_incarnation: Incarnation,
    change: PeerChange,
}

#[derive(Debug, Clone)]
struct StatsRow {
    pid: Pid,
    incarnation: Incarnation,
    sent: u64,
    delivered: u64,
    dropped: u64,
    unknown_peer: u64,
    /// `unknown_sender` among the incoming drops.
    unknown_sender: u64,
    /// Real networks: lost in transit (sequence gaps), unconfirmed, and still awaiting
    /// acknowledgement at the end.
    lost_in_transit: u64,
    unconfirmed: u64,
    unacknowledged: u64,
}

/// The oracle's result: every copy's classification and every violation found.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Every remote copy with its decision.
    pub copies: Vec<MessageCopy>,
    /// Every violation, grouped by invariant in order.
    pub violations: Vec<Violation>,
}

impl Verdict {
    /// Whether nothing was violated.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The invariants that were violated.
    pub fn violated(&self) -> BTreeSet<Invariant> {
        self.violations.iter().map(|v| v.invariant).collect()
    }

    /// Counts of copies that had to be delivered, had to be dropped, and could go either way.
    pub fn expectations(&self) -> (usize, usize, usize) {
        let count = |e| self.copies.iter().filter(|c| c.expect == e).count();
        (
            count(Expect::Deliver),
            count(Expect::Drop),
            count(Expect::Either),
        )
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (must, must_not, may) = self.expectations();
        writeln!(
            f,
            "{} copies: {must} must be delivered, {must_not} must be dropped, {may} either way",
            self.copies.len()
        )?;
        if self.violations.is_empty() {
            return write!(f, "no violation");
        }
        const SHOWN: usize = 12;
        for v in self.violations.iter().take(SHOWN) {
            writeln!(f, "  {v}")?;
        }
        if self.violations.len() > SHOWN {
            writeln!(f, "  … and {} more", self.violations.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// Runs every check on a finished history.
pub fn check(records: &[Record]) -> Verdict {
    let a = Analysis::new(records);
    let mut violations = Vec::new();
    violations.extend(check_c1_routing(&a));
    violations.extend(check_c2_integrity(&a));
    violations.extend(check_c3_fifo(&a));
    violations.extend(check_c4_drop_on_unreachable(&a));
    violations.extend(check_c5_delivery(&a));
    violations.extend(check_c6_isolation(&a));
    violations.extend(check_c7_accounting(&a));
    violations.extend(check_c8_restart(&a));
    violations.extend(check_c9_hostile_input(&a));
    violations.extend(check_events(&a));
    violations.extend(check_membership(&a));
    Verdict {
        copies: a.copies,
        violations,
    }
}

impl Analysis {
    /// Replays the history: the network's state at every routing, and each copy's fate.
    pub fn new(records: &[Record]) -> Self {
        let mut a = Analysis {
            pids: BTreeSet::new(),
            window_us: None,
            sends: HashMap::new(),
            send_order: Vec::new(),
            copies: Vec::new(),
            routed: HashMap::new(),
            deliveries: Vec::new(),
            starts: Vec::new(),
            settles: Vec::new(),
            stats: Vec::new(),
            net_discarded: None,
            crashed: false,
            crashes: Vec::new(),
            raw: 0,
            queue_bound: None,
            injections: Vec::new(),
            arrival_drops: Vec::new(),
            ended_dropped: HashMap::new(),
            peer_events: Vec::new(),
            events_lost: BTreeSet::new(),
            faults: Vec::new(),
            members: MembershipModel::default(),
            first_change: None,
            end_members: Vec::new(),
            healthy_after_changes: true,
        };
        let mut state = NetState::default();
        let mut queues = QueueModel::default();
        let mut restoring: HashMap<Pid, BTreeSet<Pid>> = HashMap::new();
        for r in records {
            if a.window_us.is_none() && a.queue_bound.is_some() {
                queues.apply(&r.event);
            }
            match &r.event {
                Event::Begin {
                    pids, window_us, ..
                } => {
                    a.pids = pids.iter().copied().collect();
                    a.members.config = a.pids.clone();
                    a.window_us = *window_us;
                    for p in pids {
                        state.up.insert(*p, None);
                    }
                }
                Event::Start { pid, incarnation } => {
                    a.starts.push((r.seq, *pid, *incarnation));
                    if let Some(members) = restoring.remove(pid) {
                        a.members.restored.insert((*pid, *incarnation), members);
                    }
                }
                Event::Restored { pid, members } => {
                    restoring.insert(*pid, members.iter().copied().collect());
                }
                Event::Join { pid, members } => {
                    // Its frames are a member's, not hostile bytes.
                    a.pids.insert(*pid);
                    a.members
                        .joined
                        .insert(*pid, members.iter().copied().collect());
                    a.first_change.get_or_insert(r.seq);
                    // A link lossy since before the change is lossy after it too.
                    a.healthy_after_changes &= state.loss.values().all(|p| *p <= 0.0);
                }
                Event::Leave { .. } => {
                    a.first_change.get_or_insert(r.seq);
                    a.healthy_after_changes &= state.loss.values().all(|p| *p <= 0.0);
                }
                Event::PeerAdded {
                    at,
                    at_incarnation,
                    peer,
                }
                | Event::PeerRemoved {
                    at,
                    at_incarnation,
                    peer,
                } => {
                    let present = matches!(r.event, Event::PeerAdded { .. });
                    a.members
                        .changes
                        .entry((*at, *at_incarnation, *peer))
                        .or_default()
                        .push((r.seq, r.at_us, present));
                }
                Event::Members {
                    pid,
                    incarnation,
                    records,
                } => a
                    .end_members
                    .push((r.seq, *pid, *incarnation, records.clone())),
                Event::SetLoss { p, .. } if *p > 0.0 && a.first_change.is_some() => {
                    a.healthy_after_changes = false;
                }
                Event::Crash { pid } => {
                    a.crashed = true;
                    a.crashes.push((r.seq, *pid));
                }
                Event::Raw { .. } => a.raw += 1,
                Event::QueueBound { frames } => a.queue_bound = Some(*frames),
                Event::Injected {
                    to,
                    at_incarnation,
                    bytes,
                    refused: None,
                    ..
                } => {
                    a.raw += 1;
                    a.injections.push(Injection {
                        seq: r.seq,
                        to: *to,
                        at_incarnation: *at_incarnation,
                        bytes: *bytes,
                    });
                }
                Event::Discarded {
                    from, to, msg_id, ..
                } => *a.ended_dropped.entry((*from, *to, *msg_id)).or_default() += 1,
                Event::Dropped {
                    at,
                    at_incarnation,
                    from,
                    msg_id,
                    reason,
                    ..
                } => {
                    if let (Some(from), Some(msg_id)) = (from, msg_id) {
                        *a.ended_dropped.entry((*from, *at, *msg_id)).or_default() += 1;
                    }
                    a.arrival_drops.push(ArrivalDrop {
                        seq: r.seq,
                        at: *at,
                        at_incarnation: *at_incarnation,
                        from: *from,
                        msg_id: *msg_id,
                        reason: *reason,
                    });
                }
                Event::Send {
                    from,
                    incarnation,
                    to,
                    msg_id,
                    payload,
                } => {
                    a.send_order.push((*from, *msg_id));
                    a.sends.insert(
                        (*from, *msg_id),
                        SentMessage {
                            seq: r.seq,
                            from: *from,
                            incarnation: *incarnation,
                            to: *to,
                            payload: payload.clone(),
                        },
                    );
                }
                Event::Routed {
                    from,
                    incarnation,
                    to,
                    msg_id,
                    refused,
                } => {
                    // A send that waits for room (C5') tries the transport again: an
                    // earlier attempt refused as `backpressure` was not a drop (the server
                    // counted nothing), only the last attempt is.
                    let retried = a.copies.iter().rposition(|c| {
                        c.from == *from
                            && c.msg_id == *msg_id
                            && c.to == *to
                            && c.refused == Some(DropReason::Backpressure)
                    });
                    if let Some(i) = retried {
                        let earlier = a.copies.remove(i);
                        if let Some(seqs) = a.routed.get_mut(&(*from, *msg_id)) {
                            seqs.retain(|s| *s != earlier.routed_seq);
                        }
                    }
                    a.routed.entry((*from, *msg_id)).or_default().push(r.seq);
                    let view = state.view(*from, *incarnation, *to);
                    // The model has counted this copy already: what was there before it.
                    let queued = a
                        .queue_bound
                        .filter(|_| a.window_us.is_none())
                        .map(|_| queues.len(*to).saturating_sub(u64::from(refused.is_none())));
                    a.copies.push(MessageCopy {
                        routed_seq: r.seq,
                        from: *from,
                        incarnation: *incarnation,
                        to: *to,
                        to_incarnation: view.to_incarnation,
                        msg_id: *msg_id,
                        refused: *refused,
                        queued,
                        queue_full: queued
                            .zip(a.queue_bound)
                            .is_some_and(|(queued, bound)| queued >= bound),
                        link: view,
                        expect: Expect::Either,
                        because: "",
                        delivered_seq: None,
                        delivered_to: None,
                        next_settle: None,
                    });
                }
                Event::Delivered {
                    at,
                    at_incarnation,
                    from,
                    msg_id,
                    payload,
                } => a.deliveries.push(Delivery {
                    seq: r.seq,
                    at: *at,
                    at_incarnation: *at_incarnation,
                    from: *from,
                    msg_id: *msg_id,
                    payload: payload.clone(),
                }),
                Event::Settled { quiet, .. } => a.settles.push((r.seq, *quiet)),
                Event::Stats {
                    pid,
                    incarnation,
                    sent,
                    delivered,
                    dropped_outgoing,
                    dropped_incoming,
                    lost_in_transit,
                    unconfirmed,
                    unacknowledged,
                } => a.stats.push(StatsRow {
                    lost_in_transit: *lost_in_transit,
                    unconfirmed: *unconfirmed,
                    unacknowledged: *unacknowledged,
                    pid: *pid,
                    incarnation: *incarnation,
                    sent: *sent,
                    delivered: *delivered,
                    dropped: dropped_outgoing.values().sum::<u64>()
                        + dropped_incoming.values().sum::<u64>(),
                    unknown_peer: dropped_outgoing
                        .get(&DropReason::UnknownPeer)
                        .copied()
                        .unwrap_or(0),
                    unknown_sender: dropped_incoming
                        .get(&DropReason::UnknownSender)
                        .copied()
                        .unwrap_or(0),
                }),
                Event::NetDiscarded { discarded } => {
                    a.net_discarded = Some(discarded.values().sum());
                }
                Event::PeerEvent {
                    at,
                    at_incarnation,
                    change,
                    ..
                } => a.peer_events.push(Told {
                    seq: r.seq,
                    at_us: r.at_us,
                    at: *at,
                    at_incarnation: *at_incarnation,
                    change: *change,
                }),
                Event::PeerEventsLost {
                    at, at_incarnation, ..
                } => {
                    a.events_lost.insert((*at, *at_incarnation));
                }
                _ => {}
            }
            if matches!(
                r.event,
                Event::Start { .. }
                    | Event::Crash { .. }
                    | Event::Partition { .. }
                    | Event::Cut { .. }
                    | Event::Heal
                    | Event::SetLoss { .. }
                    | Event::Leave { .. }
                    | Event::PeerRemoved { .. }
            ) {
                a.faults.push((r.seq, r.at_us, r.event.clone()));
            }
            state.apply(&r.event);
        }
        if !state.blocked.is_empty() || !state.loss.is_empty() {
            a.healthy_after_changes = false;
        }
        a.decide(records);
        a
    }

    fn decide(&mut self, records: &[Record]) {
        let mut first_delivery: HashMap<(Pid, Pid, MsgId), (u64, Incarnation)> = HashMap::new();
        for d in &self.deliveries {
            first_delivery
                .entry((d.at, d.from, d.msg_id))
                .or_insert((d.seq, d.at_incarnation));
        }
        let settles: Vec<u64> = self.settles.iter().map(|(s, _)| *s).collect();
        let window = self.window_us;
        for copy in &mut self.copies {
            let view = copy.link.clone();
            let next_settle = settles.iter().copied().find(|s| *s > copy.routed_seq);
            copy.next_settle = next_settle;
            if let Some((seq, inc)) = first_delivery.get(&(copy.to, copy.from, copy.msg_id)) {
                copy.delivered_seq = Some(*seq);
                copy.delivered_to = Some(*inc);
            }
            let (expect, because) = if !view.sender_current {
                (Expect::Drop, "the sender was down")
            } else if view.to_incarnation.is_none() {
                (Expect::Drop, "the destination was down")
            } else if view.blocked {
                (Expect::Drop, "the link was cut")
            } else if view.loss >= 1.0 {
                (Expect::Drop, "the link loses everything")
            } else if view.loss > 0.0 {
                (Expect::Either, "the link is lossy")
            } else if copy.queue_full {
                (Expect::Drop, "the destination's receive queue was full")
            } else {
                (Expect::Deliver, "the link was healthy")
            };
            let Some(routed) = records.get(usize::try_from(copy.routed_seq).unwrap_or(usize::MAX))
            else {
                copy.expect = expect;
                copy.because = because;
                continue;
            };
            match window {
                None => {
                    // Exact: arrivals wait for the next settle; a discarding fault on the
                    // link before it drops the copy.
                    let end = next_settle.unwrap_or(u64::MAX);
                    let routed_seq = copy.routed_seq;
                    let (expect, because) =
                        membership_expect(&self.members, copy, expect, because, |at, inc, peer| {
                            self.members.changed_between(at, inc, peer, routed_seq, end)
                        });
                    let hit = records
                        .iter()
                        .skip(usize::try_from(copy.routed_seq).unwrap_or(usize::MAX))
                        .take_while(|r| r.seq < end)
                        .any(|r| discards(&r.event, copy.from, copy.to));
                    (copy.expect, copy.because) = if expect == Expect::Deliver && hit {
                        (
                            Expect::Drop,
                            "a fault on its link came before it could arrive",
                        )
                    } else {
                        (expect, because)
                    };
                }
                Some(w) => {
                    let t = routed.at_us;
                    let (expect, because) =
                        membership_expect(&self.members, copy, expect, because, |at, inc, peer| {
                            self.members.changed_near(at, inc, peer, t, w)
                        });
                    let near = records.iter().any(|r| {
                        if !touches(&r.event, copy.from, copy.to) {
                            return false;
                        }
                        match r.event {
                            // The harness records a (re)start once its connections are up:
                            // only what was routed just before it is in doubt.
                            Event::Start { .. } => r.at_us >= t && r.at_us <= t + w,
                            // A crash is noticed by peers within the window, so what is sent
                            // around it (also to the restarted node) may go either way.
                            _ => r.at_us + w >= t && r.at_us <= t + w,
                        }
                    });
                    let end_down = !view.sender_current || view.to_incarnation.is_none();
                    (copy.expect, copy.because) = if near && !end_down {
                        (
                            Expect::Either,
                            "routed within the window of a fault on its link",
                        )
                    } else {
                        // A node that is down delivers nothing, now or after its restart.
                        (expect, because)
                    };
                }
            }
        }
    }

    /// The members `from` (as `inc`) routes to, certainly and perhaps, for a send recorded
    /// at `seq`: routing happens as the send is made, or (a send that waits for room) by
    /// the next settle, and a change of membership in between leaves the peer in doubt.
    fn routing_members(
        &self,
        from: Pid,
        inc: Incarnation,
        seq: u64,
    ) -> (BTreeSet<Pid>, BTreeSet<Pid>) {
        let end = self
            .settles
            .iter()
            .map(|(s, _)| *s)
            .find(|s| *s > seq)
            .unwrap_or(u64::MAX);
        let mut certain = BTreeSet::new();
        let mut doubtful = BTreeSet::new();
        let candidates: BTreeSet<Pid> = self
            .pids
            .iter()
            .copied()
            .chain(
                self.members
                    .changes
                    .keys()
                    .filter(|(at, i, _)| *at == from && *i == inc)
                    .map(|(_, _, p)| *p),
            )
            .filter(|p| *p != from)
            .collect();
        for p in candidates {
            if self.members.changed_between(from, inc, p, seq, end) {
                doubtful.insert(p);
            } else if self.members.member_at(from, inc, p, seq) {
                certain.insert(p);
            }
        }
        (certain, doubtful)
    }

    fn send_of(&self, from: Pid, msg_id: MsgId) -> Option<&SentMessage> {
        self.sends.get(&(from, msg_id))
    }

    fn first_incarnations(&self) -> HashMap<Pid, Incarnation> {
        let mut first = HashMap::new();
        for (_, pid, inc) in &self.starts {
            first.entry(*pid).or_insert(*inc);
        }
        first
    }
}

/// A copy's expectation once membership is taken into account (see
/// `cluster_core::membership`, "messages in flight during a change"): a receiver that does
/// not count the sender a member drops its frames (`unknown_sender`); a change of either
/// end's view of the other while the copy is on its way (`changed`, judged over the span
/// in which it may arrive) leaves it either way, for the removed peer's frames still held
/// are discarded and what arrived first was delivered.
fn membership_expect(
    members: &MembershipModel,
    copy: &MessageCopy,
    expect: Expect,
    because: &'static str,
    changed: impl Fn(Pid, Incarnation, Pid) -> bool,
) -> (Expect, &'static str) {
    let Some(to_inc) = copy.to_incarnation else {
        return (expect, because);
    };
    if expect == Expect::Drop {
        return (expect, because);
    }
    if changed(copy.to, to_inc, copy.from) || changed(copy.from, copy.incarnation, copy.to) {
        return (
            Expect::Either,
            "a membership change on its link came before it could arrive",
        );
    }
    if !members.member_at(copy.to, to_inc, copy.from, copy.routed_seq) {
        return (
            Expect::Drop,
            "the destination did not count the sender a member",
        );
    }
    (expect, because)
}

fn v(invariant: Invariant, seq: Option<u64>, message: String) -> Violation {
    Violation {
        invariant,
        seq,
        message,
    }
}

/// C1: every delivery is to an addressee; broadcasts are routed to every other pid once;
/// sends to self are delivered to self; unknown pids are counted `unknown_peer`.
pub fn check_c1_routing(a: &Analysis) -> Vec<Violation> {
    let mut out = Vec::new();
    let inv = Invariant::C1Routing;
    for d in &a.deliveries {
        let Some(s) = a.send_of(d.from, d.msg_id) else {
            continue; // a phantom: C2's business
        };
        let ok = s.to == d.at || (s.to == BROADCAST && d.at != s.from);
        if !ok {
            out.push(v(
                inv,
                Some(d.seq),
                format!(
                    "message {} from {} addressed to {} was delivered to {}",
                    d.msg_id,
                    d.from,
                    dest(s.to),
                    d.at
                ),
            ));
        }
    }
    let mut unknown = 0u64;
    let mut maybe_unknown = 0u64;
    for key in &a.send_order {
        let Some(s) = a.sends.get(key) else { continue };
        let (members, doubtful) = a.routing_members(s.from, s.incarnation, s.seq);
        let routed: Vec<Pid> = a
            .routed
            .get(key)
            .map(|seqs| {
                a.copies
                    .iter()
                    .filter(|c| seqs.contains(&c.routed_seq))
                    .map(|c| c.to)
                    .collect()
            })
            .unwrap_or_default();
        // Membership at the sender: the config's, and the changes its server made.
        let expected: Vec<Pid> = if s.to == BROADCAST {
            members.iter().copied().collect()
        } else if s.to != s.from && members.contains(&s.to) {
            vec![s.to]
        } else {
            if s.to != s.from && doubtful.contains(&s.to) {
                maybe_unknown += 1;
            } else if s.to != s.from {
                unknown += 1;
            }
            Vec::new()
        };
        let fits = if doubtful.is_empty() {
            routed == expected
        } else {
            // A peer whose membership changed meanwhile may or may not be routed to.
            let strip = |v: &[Pid]| -> Vec<Pid> {
                v.iter()
                    .copied()
                    .filter(|p| !doubtful.contains(p))
                    .collect()
            };
            let mut seen = BTreeSet::new();
            strip(&routed) == strip(&expected)
                && routed.iter().all(|p| seen.insert(*p))
                && (s.to == BROADCAST || routed.iter().all(|p| *p == s.to))
        };
        if !fits {
            out.push(v(
                inv,
                Some(s.seq),
                format!(
                    "message {} from {} to {} was routed to {routed:?}, expected {expected:?}",
                    key.1,
                    s.from,
                    dest(s.to)
                ),
            ));
        }
        if s.to == s.from
            && !a
                .deliveries
                .iter()
                .any(|d| d.at == s.from && d.from == s.from && d.msg_id == key.1)
        {
            out.push(v(
                inv,
                Some(s.seq),
                format!(
                    "message {} from {} to itself was not delivered to itself",
                    key.1, s.from
                ),
            ));
        }
    }
    if !a.stats.is_empty() {
        let counted: u64 = a.stats.iter().map(|s| s.unknown_peer).sum();
        if counted < unknown || counted > unknown + maybe_unknown {
            let maybe = if maybe_unknown > 0 {
                format!(" (and {maybe_unknown} more whose membership changed meanwhile)")
            } else {
                String::new()
            };
            out.push(v(
                inv,
                None,
                format!(
                    "{unknown} sends to unknown pids{maybe}, but unknown_peer counts {counted}"
                ),
            ));
        }
    }
    out
}

fn dest(to: Pid) -> String {
    if to == BROADCAST {
        "BROADCAST".into()
    } else {
        to.to_string()
    }
}

/// C2: every delivery was sent (no phantom), byte-exact (no corruption), and reaches each
/// destination at most once, across its incarnations (no duplicate).
pub fn check_c2_integrity(a: &Analysis) -> Vec<Violation> {
    let mut out = Vec::new();
    let inv = Invariant::C2Integrity;
    let mut seen: HashSet<(Pid, Pid, MsgId)> = HashSet::new();
    for d in &a.deliveries {
        match a.send_of(d.from, d.msg_id) {
            None => out.push(v(
                inv,
                Some(d.seq),
                format!(
                    "{} received message {} from {} that was never sent (phantom)",
                    d.at, d.msg_id, d.from
                ),
            )),
            Some(s) if s.payload != d.payload => out.push(v(
                inv,
                Some(d.seq),
                format!(
                    "{} received message {} from {} corrupted: sent {}, got {}",
                    d.at, d.msg_id, d.from, s.payload, d.payload
                ),
            )),
            Some(_) => {}
        }
        if !seen.insert((d.at, d.from, d.msg_id)) {
            out.push(v(
                inv,
                Some(d.seq),
                format!(
                    "{} received message {} from {} more than once (duplicate)",
                    d.at, d.msg_id, d.from
                ),
            ));
        }
    }
    out
}

/// C3: per ordered pair (and receiver incarnation), deliveries come in send order.
pub fn check_c3_fifo(a: &Analysis) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut last: HashMap<(Pid, Incarnation, Pid), (u64, MsgId)> = HashMap::new();
    for d in &a.deliveries {
        let Some(s) = a.send_of(d.from, d.msg_id) else {
            continue;
        };
        let key = (d.at, d.at_incarnation, d.from);
        if let Some((prev_seq, prev_id)) = last.get(&key)
            && *prev_seq > s.seq
        {
            out.push(v(
                Invariant::C3Fifo,
                Some(d.seq),
                format!(
                    "{} received message {} from {} after message {prev_id}, which was sent later",
                    d.at, d.msg_id, d.from
                ),
            ));
        }
        let entry = last.entry(key).or_insert((s.seq, d.msg_id));
        if s.seq > entry.0 {
            *entry = (s.seq, d.msg_id);
        }
    }
    out
}

/// C4: a copy that had to be dropped (destination down or cut off when routed, or its link
/// failed before it could arrive) is never delivered, not later either; and no delivery
/// from an older incarnation of a sender once a newer one was delivered.
pub fn check_c4_drop_on_unreachable(a: &Analysis) -> Vec<Violation> {
    let mut out = Vec::new();
    let inv = Invariant::C4DropOnUnreachable;
    // A copy accepted into a full queue is C6's: here, what was unreachable.
    for c in a.copies.iter().filter(|c| !c.queue_full) {
        if c.expect == Expect::Drop
            && let Some(seq) = c.delivered_seq
        {
            out.push(v(
                inv,
                Some(seq),
                format!(
                    "message {} from {} to {} had to be dropped ({} at #{}) but was delivered{}",
                    c.msg_id,
                    c.from,
                    c.to,
                    c.because,
                    c.routed_seq,
                    match (c.to_incarnation, c.delivered_to) {
                        (Some(x), Some(y)) if x != y =>
                            format!(" to incarnation {y} (sent to {x})"),
                        (None, Some(y)) => format!(" to incarnation {y}, after a restart"),
                        _ => String::new(),
                    }
                ),
            ));
        }
    }
    let mut newest: HashMap<(Pid, Incarnation, Pid), Incarnation> = HashMap::new();
    for d in &a.deliveries {
        let Some(s) = a.send_of(d.from, d.msg_id) else {
            continue;
        };
        let n = newest
            .entry((d.at, d.at_incarnation, d.from))
            .or_insert(s.incarnation);
        if s.incarnation < *n {
            out.push(v(
                inv,
                Some(d.seq),
                format!(
                    "{} received message {} from incarnation {} of {} after one from incarnation {n}",
                    d.at, d.msg_id, s.incarnation, d.from
                ),
            ));
        }
        *n = (*n).max(s.incarnation);
    }
    out
}

/// C5: every copy that had to be delivered was delivered, to the incarnation it was sent to.
pub fn check_c5_delivery(a: &Analysis) -> Vec<Violation> {
    let mut out = Vec::new();
    for c in a.copies.iter().filter(|c| c.expect == Expect::Deliver) {
        let problem = match (c.refused, c.delivered_seq) {
            (Some(reason), _) => Some(format!("was refused at send ({reason})")),
            (None, None) => Some("was lost".to_string()),
            (None, Some(_)) if c.delivered_to != c.to_incarnation => {
                Some("was delivered to another incarnation".to_string())
            }
            _ => None,
        };
        if let Some(p) = problem {
            out.push(v(
                Invariant::C5Delivery,
                Some(c.routed_seq),
                format!(
                    "message {} from {} to {} {p}, though {}",
                    c.msg_id, c.from, c.to, c.because
                ),
            ));
        }
    }
    out
}

/// C6: no copy to a healthy peer is held back past the next settle (e.g. behind an
/// unreachable one), every settle became quiet (no stall, no deadlock), and no queue grows
/// past its bound (exact runs): a copy for a full receive queue is refused, not accepted.
pub fn check_c6_isolation(a: &Analysis) -> Vec<Violation> {
    let mut out = Vec::new();
    let inv = Invariant::C6Isolation;
    for c in a
        .copies
        .iter()
        .filter(|c| c.queue_full && c.refused.is_none())
    {
        out.push(v(
            inv,
            Some(c.routed_seq),
            format!(
                "message {} from {} to {} was accepted with {} frames already queued for {}, \
                 its bound: overflow must be a counted backpressure drop, not a longer queue",
                c.msg_id,
                c.from,
                c.to,
                c.queued.unwrap_or(0),
                c.to
            ),
        ));
    }
    for (seq, quiet) in &a.settles {
        if !quiet {
            out.push(v(
                inv,
                Some(*seq),
                "the cluster did not become quiet (stall or deadlock)".into(),
            ));
        }
    }
    for c in a.copies.iter().filter(|c| c.expect == Expect::Deliver) {
        if let (Some(d), Some(s)) = (c.delivered_seq, c.next_settle)
            && d > s
        {
            out.push(v(
                inv,
                Some(d),
                format!(
                    "message {} from {} to {} was held back past the settle at #{s}",
                    c.msg_id, c.from, c.to
                ),
            ));
        }
    }
    out
}

/// C7: sent = delivered + dropped exactly (all incarnations' counters plus the network's
/// discards; raw injected frames count as sent; a frame the receiving router drops as
/// `replayed` counts as a drop, so a network that duplicates frames shows as a surplus of
/// drops; `lost_in_transit` is not a drop — in simulation the sender or the network
/// counted each such loss already); each node's `delivered` matches what its
/// inbox gave; in simulation each copy ends exactly one way (refused, discarded, dropped
/// on arrival, or delivered); and each refusal's reason fits the network's state.
pub fn check_c7_accounting(a: &Analysis) -> Vec<Violation> {
    let mut out = Vec::new();
    let inv = Invariant::C7Accounting;
    if let Some(discarded) = a.net_discarded {
        let sent: u64 = a.stats.iter().map(|s| s.sent).sum::<u64>() + a.raw;
        let delivered: u64 = a.stats.iter().map(|s| s.delivered).sum();
        let sum = |f: fn(&StatsRow) -> u64| a.stats.iter().map(f).sum::<u64>();
        let mut dropped: u64 = sum(|s| s.dropped);
        if a.first_change.is_some() {
            // A node that is not a member (yet, or any more) has its control frames
            // (greetings, acknowledgements, requests) dropped as `unknown_sender` too: they
            // were never sent as messages, and the history does not record them. Only the
            // drops of messages (and hostile bytes) count here.
            let recorded = a
                .arrival_drops
                .iter()
                .filter(|d| d.reason == DropReason::UnknownSender)
                .count() as u64;
            dropped -= sum(|s| s.unknown_sender).saturating_sub(recorded);
        }
        let lost = sum(|s| s.lost_in_transit);
        let unconfirmed = sum(|s| s.unconfirmed);
        let unacknowledged = sum(|s| s.unacknowledged);
        let ended = delivered + dropped + discarded;
        // On a real network (C7 on real sockets) a frame may also end lost in transit (a
        // gap the receiver saw), unconfirmed (never acknowledged by a peer that went down),
        // or still await its acknowledgement when the run ends: nothing may be left beyond
        // those. A frame is counted twice only if it arrived and its acknowledgement was
        // lost with a killed or cut-off peer, so without a kill the sum is exact.
        let counted = ended + lost + unconfirmed;
        let adds_up = if a.window_us.is_none() {
            sent == ended
        } else {
            // A frame still awaiting acknowledgement at the end arrived, or is lost
            // silently at the tail of a stream: it may make up the difference.
            let floor = if a.crashed { ended } else { counted };
            floor <= sent && sent <= counted + unacknowledged
        };
        if !adds_up {
            out.push(v(
                inv,
                None,
                format!(
                    "sent {sent} ≠ delivered {delivered} + dropped {dropped} + discarded by the network {discarded} + lost in transit {lost} + unconfirmed {unconfirmed} (+ up to {unacknowledged} still unacknowledged): {} unaccounted",
                    i128::from(sent) - i128::from(counted)
                ),
            ));
        }
        for s in &a.stats {
            let seen = a
                .deliveries
                .iter()
                .filter(|d| d.at == s.pid && d.at_incarnation == s.incarnation)
                .count() as u64;
            if seen != s.delivered {
                out.push(v(
                    inv,
                    None,
                    format!(
                        "node {} incarnation {} counts {} delivered, its inbox gave {seen}",
                        s.pid, s.incarnation, s.delivered
                    ),
                ));
            }
        }
    }
    if a.window_us.is_none() && a.net_discarded.is_some() {
        // Simulation: each copy ends exactly one way — refused at send, discarded by the
        // network, dropped by the receiver, or delivered.
        let mut delivered: HashMap<(Pid, Pid, MsgId), u32> = HashMap::new();
        for d in &a.deliveries {
            *delivered.entry((d.from, d.at, d.msg_id)).or_default() += 1;
        }
        for c in &a.copies {
            let key = (c.from, c.to, c.msg_id);
            let ends = u32::from(c.refused.is_some())
                + delivered.get(&key).copied().unwrap_or(0)
                + a.ended_dropped.get(&key).copied().unwrap_or(0);
            if ends != 1 {
                out.push(v(
                    inv,
                    Some(c.routed_seq),
                    if ends == 0 {
                        format!(
                            "message {} from {} to {} vanished: neither delivered nor dropped with a reason",
                            c.msg_id, c.from, c.to
                        )
                    } else {
                        format!(
                            "message {} from {} to {} ended {ends} times (delivered or dropped)",
                            c.msg_id, c.from, c.to
                        )
                    },
                ));
            }
        }
    }
    for c in &a.copies {
        let Some(reason) = c.refused else { continue };
        if c.expect == Expect::Either {
            continue;
        }
        let l = &c.link;
        let fits = match reason {
            DropReason::Unreachable => !l.sender_current || l.to_incarnation.is_none(),
            DropReason::Partitioned => l.blocked,
            DropReason::Injected => l.loss > 0.0,
            // Exact runs know the queue: backpressure only when it is full.
            DropReason::Backpressure => c.queued.is_none() || c.queue_full,
            // Reasons of the receiving router: never a transport's refusal.
            DropReason::UnknownPeer
            | DropReason::StaleIncarnation
            | DropReason::UnknownSender
            | DropReason::Replayed
            | DropReason::Unauthenticated
            | DropReason::UnsupportedVersion => false,
            _ => true,
        };
        if !fits {
            out.push(v(
                inv,
                Some(c.routed_seq),
                format!(
                    "message {} from {} to {} was refused as {reason}, but {}",
                    c.msg_id, c.from, c.to, c.because
                ),
            ));
        }
    }
    out
}

/// C8: each restart gives a strictly higher incarnation, and copies to or from a restarted
/// incarnation that had to be delivered were delivered.
pub fn check_c8_restart(a: &Analysis) -> Vec<Violation> {
    let mut out = Vec::new();
    let inv = Invariant::C8Restart;
    let mut last: HashMap<Pid, Incarnation> = HashMap::new();
    for (seq, pid, inc) in &a.starts {
        if let Some(prev) = last.get(pid)
            && inc <= prev
        {
            out.push(v(
                inv,
                Some(*seq),
                format!("node {pid} restarted as incarnation {inc}, not above {prev}"),
            ));
        }
        last.insert(*pid, *inc);
    }
    let first = a.first_incarnations();
    let restarted = |pid: Pid, inc: Option<Incarnation>| {
        inc.is_some_and(|i| first.get(&pid).is_some_and(|f| i != *f))
    };
    for c in a.copies.iter().filter(|c| c.expect == Expect::Deliver) {
        if (restarted(c.from, Some(c.incarnation)) || restarted(c.to, c.to_incarnation))
            && (c.refused.is_some() || c.delivered_to != c.to_incarnation)
        {
            out.push(v(
                inv,
                Some(c.routed_seq),
                format!(
                    "message {} from {} (incarnation {}) to {} (incarnation {}) after a restart was not delivered",
                    c.msg_id,
                    c.from,
                    c.incarnation,
                    c.to,
                    c.to_incarnation.map_or("-".into(), |i| i.to_string())
                ),
            ));
        }
    }
    out
}

/// C9: hostile bytes put on a node's port (exact runs) are dropped and counted under the
/// reason their kind calls for, unless a crash of the node discards them first; nothing is
/// delivered from a forged header; and the node keeps serving: of the copies that had to be
/// delivered to it afterwards, not every one went missing.
pub fn check_c9_hostile_input(a: &Analysis) -> Vec<Violation> {
    let mut out = Vec::new();
    let inv = Invariant::C9HostileInput;
    if a.injections.is_empty() {
        return out;
    }
    let hostile = |d: &ArrivalDrop| {
        d.from.is_none_or(|f| !a.pids.contains(&f)) || d.msg_id == Some(FORGED_MSG_ID)
    };
    let mut matched = vec![false; a.arrival_drops.len()];
    for inj in &a.injections {
        // Arrivals wait for the next settle; without one, the bytes are not judged.
        let Some(settle) = a.settles.iter().map(|(s, _)| *s).find(|s| *s > inj.seq) else {
            continue;
        };
        let lost_in_crash = a
            .crashes
            .iter()
            .any(|(seq, pid)| *pid == inj.to && *seq > inj.seq && *seq < settle);
        if lost_in_crash {
            continue;
        }
        let reason = inj.bytes.reason();
        let candidates = |wanted: Option<DropReason>| {
            a.arrival_drops.iter().enumerate().find(|(i, d)| {
                !matched[*i]
                    && d.seq > inj.seq
                    && d.at == inj.to
                    && d.at_incarnation == inj.at_incarnation
                    && wanted.is_none_or(|r| d.reason == r)
                    && hostile(d)
            })
        };
        if let Some((i, _)) = candidates(Some(reason)) {
            matched[i] = true;
        } else {
            let instead = match candidates(None) {
                Some((_, d)) => format!(" (a drop as {} instead)", d.reason),
                None => " (nothing was counted for them)".to_string(),
            };
            out.push(v(
                inv,
                Some(inj.seq),
                format!(
                    "hostile bytes ({}) put on the port of {} (incarnation {}) were not dropped \
                     and counted as {reason}{instead}",
                    inj.bytes, inj.to, inj.at_incarnation
                ),
            ));
        }
        let due: Vec<&MessageCopy> = a
            .copies
            .iter()
            .filter(|c| {
                c.to == inj.to
                    && c.to_incarnation == Some(inj.at_incarnation)
                    && c.routed_seq > inj.seq
                    && c.expect == Expect::Deliver
            })
            .collect();
        if !due.is_empty() && due.iter().all(|c| c.delivered_seq.is_none()) {
            out.push(v(
                inv,
                Some(inj.seq),
                format!(
                    "{} stopped serving after the hostile bytes ({}) at #{}: none of the {} \
                     messages due to it afterwards was delivered",
                    inj.to,
                    inj.bytes,
                    inj.seq,
                    due.len()
                ),
            ));
        }
    }
    for d in a.deliveries.iter().filter(|d| d.msg_id == FORGED_MSG_ID) {
        out.push(v(
            inv,
            Some(d.seq),
            format!(
                "{} delivered a message from hostile bytes (a forged header claiming {})",
                d.at, d.from
            ),
        ));
    }
    out
}

/// Whether `fault` can take down the connection of node `at` to `peer`: a crash of either,
/// a partition between them, a cut `at → peer` (its transport can no longer reach the
/// peer; a cut the other way is the peer's to notice). On real sockets (`windowed`) a cut
/// either way counts.
fn severs(fault: &Event, at: Pid, peer: Pid, windowed: bool) -> bool {
    match fault {
        Event::Crash { pid } => *pid == at || *pid == peer,
        Event::Partition { a, b } => {
            (a.contains(&at) && b.contains(&peer)) || (b.contains(&at) && a.contains(&peer))
        }
        Event::Cut { from, to } => {
            (*from == at && *to == peer) || (windowed && *from == peer && *to == at)
        }
        // A node that leaves, or is removed at the other end, loses its connections.
        Event::Leave { pid } => *pid == at || *pid == peer,
        Event::PeerRemoved { at: x, peer: y, .. } => {
            (*x == at && *y == peer) || (*x == peer && *y == at)
        }
        _ => false,
    }
}

/// One incarnation's life, in history positions.
#[derive(Debug, Clone, Copy)]
struct Life {
    incarnation: Incarnation,
    /// Where its transport may first have been heard: the crash that made room for it (on
    /// real sockets it speaks before its start is recorded, once its connections are up),
    /// or the run's beginning.
    begin: u64,
    /// Its crash, or `u64::MAX`.
    end: u64,
}

/// Every pid's incarnations, in the order they started.
fn lives(a: &Analysis) -> BTreeMap<Pid, Vec<Life>> {
    let mut lives: BTreeMap<Pid, Vec<Life>> = BTreeMap::new();
    let mut last_crash: HashMap<Pid, u64> = HashMap::new();
    for (seq, _, event) in &a.faults {
        match event {
            Event::Start { pid, incarnation } => lives.entry(*pid).or_default().push(Life {
                incarnation: *incarnation,
                begin: last_crash.get(pid).copied().unwrap_or(0),
                end: u64::MAX,
            }),
            Event::Crash { pid } => {
                if let Some(life) = lives
                    .get_mut(pid)
                    .and_then(|l| l.last_mut())
                    .filter(|l| l.end == u64::MAX)
                {
                    life.end = *seq;
                }
                last_crash.insert(*pid, *seq);
            }
            _ => {}
        }
    }
    lives
}

/// EV: the peer events each node incarnation told ([`Event::PeerEvent`]) match the faults
/// the harness injected.
///
/// * **No spurious `Down`.** A node tells `Down(p)` only for a peer it told `Up(p)`, and
///   only if, since that `Up`, a fault could take down its connection to `p`: a crash of
///   either, a partition between them, or a cut from the node to `p` (loss and a cut the
///   other way close nothing). `Up` and `Down` alternate.
/// * **`Restarted` at most once, and only for a restart.** At most once per (node
///   incarnation, peer, peer incarnation); only for an incarnation of the peer that started,
///   and not before it could exist; never when that incarnation is the only one of the
///   peer the node could have heard (the node began after it started, and it has not
///   crashed since): the first incarnation heard is never a restart.
/// * **`Restarted` exactly once per restart heard.** For every restart of `p` as `i`, a
///   node incarnation that heard an earlier incarnation of `p` (told `Up(p)` or
///   `Restarted` about it, or got a message from it) before the crash that ended it, and
///   then hears `i` — a message from `i` is delivered to it, or (in simulation) it tells
///   `Down(p)` after that crash and then `Up(p)` during `i`'s life — told
///   `Restarted { p, i }` before that. A restart faster than detection may come without a
///   `Down` first: that is allowed, and so is an `Up` before the `Restarted` then (the node
///   may still be up on what it heard from the old incarnation).
///
/// On real sockets (a windowed history) detection takes time and frames of a dead
/// incarnation may still be read after its crash is recorded, so two rules are relaxed
/// where the contract allows it: a `Down` is also justified by a fault on the link up to
/// the window before the `Up` it ends (a late `Up` from a frame sent before the fault), or
/// by a cut either way; and only a delivered message counts as hearing a new incarnation
/// (an `Up` right after a crash may still come from the old one). A node incarnation whose
/// subscription lost events ([`Event::PeerEventsLost`]) is not judged. And a `Down` that
/// no injected fault explains is not judged there at all: a process starved for longer
/// than the heartbeat timeout (a loaded machine) is a cut to its peers, which nothing in
/// the history records; the CI runs of the first version of this check failed on exactly
/// that. In simulation every `Down` must be explained.
pub fn check_events(a: &Analysis) -> Vec<Violation> {
    let mut out = Vec::new();
    let inv = Invariant::Events;
    let windowed = a.window_us;
    let judged = |t: &Told| !a.events_lost.contains(&(t.at, t.at_incarnation));

    // No spurious Down; Up and Down alternate.
    let mut up: HashMap<(Pid, Incarnation, Pid), Option<(u64, u64)>> = HashMap::new();
    for t in a.peer_events.iter().filter(|t| judged(t)) {
        match t.change {
            PeerChange::Up { peer } => {
                let state = up.entry((t.at, t.at_incarnation, peer)).or_default();
                if let Some((seq, _)) = state {
                    out.push(v(
                        inv,
                        Some(t.seq),
                        format!(
                            "{} (incarnation {}) told Up({peer}) while {peer} was up since #{seq}",
                            t.at, t.at_incarnation
                        ),
                    ));
                }
                *state = Some((t.seq, t.at_us));
            }
            PeerChange::Left { peer } => {
                // A peer that left is no longer up, without a `Down`.
                up.remove(&(t.at, t.at_incarnation, peer));
            }
            PeerChange::Down { peer } => {
                let Some((up_seq, up_us)) = up
                    .get_mut(&(t.at, t.at_incarnation, peer))
                    .and_then(Option::take)
                else {
                    out.push(v(
                        inv,
                        Some(t.seq),
                        format!(
                            "{} (incarnation {}) told Down({peer}) for a peer it had not told Up",
                            t.at, t.at_incarnation
                        ),
                    ));
                    continue;
                };
                let justified = a.faults.iter().take_while(|(seq, _, _)| *seq < t.seq).any(
                    |(seq, at_us, fault)| {
                        severs(fault, t.at, peer, windowed.is_some())
                            && (*seq > up_seq || windowed.is_some_and(|w| at_us + w >= up_us))
                    },
                );
                // On real sockets a node starved for longer than the heartbeat timeout (a
                // loaded machine) is, to its peers, a cut that no fault injected: a Down
                // without a fault is judged in simulation only.
                if !justified && windowed.is_none() {
                    out.push(v(
                        inv,
                        Some(t.seq),
                        format!(
                            "{} (incarnation {}) told Down({peer}), but no fault touched its \
                             link to {peer} since it told Up({peer}) at #{up_seq}",
                            t.at, t.at_incarnation
                        ),
                    ));
                }
            }
            _ => {}
        }
    }

    // Restarted: at most once, for an incarnation that started, not the first heard.
    let lives = lives(a);
    let no_lives = Vec::new();
    let lives_of = |pid: Pid| lives.get(&pid).unwrap_or(&no_lives);
    let mut restarted: HashMap<(Pid, Incarnation, Pid, Incarnation), u64> = HashMap::new();
    for t in &a.peer_events {
        let PeerChange::Restarted { peer, incarnation } = t.change else {
            continue;
        };
        let who = format!("{} (incarnation {})", t.at, t.at_incarnation);
        if let Some(first) = restarted.insert((t.at, t.at_incarnation, peer, incarnation), t.seq) {
            out.push(v(
                inv,
                Some(t.seq),
                format!(
                    "{who} told Restarted({peer}, incarnation {incarnation}) again (first at \
                     #{first})"
                ),
            ));
            restarted.insert((t.at, t.at_incarnation, peer, incarnation), first);
            continue;
        }
        if !lives_of(peer)
            .iter()
            .any(|l| l.incarnation == incarnation && l.begin < t.seq)
        {
            out.push(v(
                inv,
                Some(t.seq),
                format!(
                    "{who} told Restarted({peer}, incarnation {incarnation}), but no such \
                     incarnation of {peer} had started"
                ),
            ));
            continue;
        }
        let began = lives_of(t.at)
            .iter()
            .rev()
            .find(|l| l.incarnation == t.at_incarnation && l.begin < t.seq)
            .map_or(0, |l| l.begin);
        let heard_another = lives_of(peer)
            .iter()
            .any(|l| l.incarnation != incarnation && l.begin < t.seq && l.end > began);
        if !heard_another {
            out.push(v(
                inv,
                Some(t.seq),
                format!(
                    "{who} told Restarted({peer}, incarnation {incarnation}), but that is the \
                     only incarnation of {peer} it could have heard: the first heard is no \
                     restart"
                ),
            ));
        }
    }

    // Restarted exactly once per restart heard, before what shows it was heard.
    let observers: BTreeSet<(Pid, Incarnation)> = lives
        .iter()
        .flat_map(|(pid, ls)| ls.iter().map(move |l| (*pid, l.incarnation)))
        .filter(|key| !a.events_lost.contains(key))
        .collect();
    for (&peer, peer_lives) in &lives {
        for life in peer_lives.iter().skip(1) {
            let crash = life.begin;
            let i = life.incarnation;
            for &(at, at_incarnation) in observers.iter().filter(|(at, _)| *at != peer) {
                let mine = |t: &&Told| {
                    t.at == at && t.at_incarnation == at_incarnation && t.change.peer() == peer
                };
                let from_peer = |d: &&Delivery| {
                    d.at == at && d.at_incarnation == at_incarnation && d.from == peer
                };
                let heard_before =
                    a.peer_events.iter().filter(mine).any(|t| {
                        t.seq < crash
                            && matches!(
                                t.change,
                                PeerChange::Up { .. } | PeerChange::Restarted { .. }
                            )
                    }) || a.deliveries.iter().filter(from_peer).any(|d| d.seq < crash);
                if !heard_before {
                    continue;
                }
                let delivered = a
                    .deliveries
                    .iter()
                    .filter(from_peer)
                    .filter(|d| d.seq > crash)
                    .find(|d| {
                        a.send_of(peer, d.msg_id)
                            .is_some_and(|s| s.incarnation == i)
                    })
                    .map(|d| (d.seq, "a message from it was delivered"));
                // An Up shows a frame of `i` only once the node told Down after the crash:
                // one that missed the crash (its connection set changed back before it
                // looked) may still be up on what it heard from the old incarnation.
                let down_after = a
                    .peer_events
                    .iter()
                    .filter(mine)
                    .find(|t| matches!(t.change, PeerChange::Down { .. }) && t.seq > crash)
                    .map(|t| t.seq);
                let told_up = a
                    .peer_events
                    .iter()
                    .filter(mine)
                    .filter(|_| windowed.is_none())
                    .find(|t| {
                        matches!(t.change, PeerChange::Up { .. })
                            && down_after.is_some_and(|down| t.seq > down)
                            && t.seq < life.end
                    })
                    .map(|t| (t.seq, "it told Up after telling Down"));
                let Some((heard, how)) = [delivered, told_up].into_iter().flatten().min() else {
                    continue;
                };
                let told = a.peer_events.iter().filter(mine).any(|t| {
                    t.seq > crash
                        && t.seq < heard
                        && t.change
                            == PeerChange::Restarted {
                                peer,
                                incarnation: i,
                            }
                });
                if !told {
                    out.push(v(
                        inv,
                        Some(heard),
                        format!(
                            "{at} (incarnation {at_incarnation}) heard {peer}'s incarnation {i} \
                             ({how}) without telling Restarted({peer}, incarnation {i}) first, \
                             though it had heard an earlier incarnation of {peer}"
                        ),
                    ));
                }
            }
        }
    }
    out
}

/// MB: membership at run time (see `cluster_core::membership`).
///
/// * **Events match the changes.** For each node incarnation and each other pid, the
///   `Joined` and `Left` it told are the changes its server made to its transport
///   ([`Event::PeerAdded`], [`Event::PeerRemoved`]): one `Joined` per time the pid became
///   a member there, one `Left` per time it stopped being one. (A node incarnation whose
///   subscription lost events is not judged.)
/// * **Agreement once spread.** At the end, after the final settle, every running node
///   that counts itself a member holds the same membership records (pid, address,
///   presence, stamp): what the rule promises once the nodes have exchanged what they
///   know. Judged when the network is healthy at the end and no link was lossy at or after
///   the first `Join` or `Leave` (a lost membership frame is sent again at the next
///   heartbeat, and simulated time does not pass; or when peers find each other up anew).
pub fn check_membership(a: &Analysis) -> Vec<Violation> {
    let mut out = Vec::new();
    let inv = Invariant::Membership;
    let mut told: BTreeMap<(Pid, Incarnation, Pid), (u64, u64, u64)> = BTreeMap::new();
    for t in &a.peer_events {
        let (joined, peer) = match t.change {
            PeerChange::Joined { peer } => (true, peer),
            PeerChange::Left { peer } => (false, peer),
            _ => continue,
        };
        if peer == t.at {
            continue;
        }
        let entry = told.entry((t.at, t.at_incarnation, peer)).or_default();
        if joined {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
        entry.2 = t.seq;
    }
    let mut keys: BTreeSet<(Pid, Incarnation, Pid)> = told.keys().copied().collect();
    keys.extend(a.members.changes.keys().copied());
    for key @ (at, inc, peer) in keys {
        if a.events_lost.contains(&(at, inc)) {
            continue;
        }
        let mut member = a.members.initially(at, inc, peer);
        let (mut joins, mut leaves) = (0u64, 0u64);
        let mut last = None;
        for (seq, _, present) in a.members.changes.get(&key).into_iter().flatten() {
            if *present != member {
                if *present {
                    joins += 1;
                } else {
                    leaves += 1;
                }
                last = Some(*seq);
            }
            member = *present;
        }
        let (j, l, seq) = told.get(&key).copied().unwrap_or_default();
        if (j, l) != (joins, leaves) {
            out.push(v(
                inv,
                Some(if seq > 0 { seq } else { last.unwrap_or(0) }),
                format!(
                    "{at} (incarnation {inc}) told Joined({peer}) {j} times and Left({peer}) {l}                      times, but its server added {peer} {joins} times and removed it {leaves} times"
                ),
            ));
        }
    }
    if a.healthy_after_changes {
        let present = |pid: Pid, records: &[cluster_core::Member]| {
            records.iter().any(|m| m.pid == pid && m.present)
        };
        // Who is up with whom at the end: two nodes up with each other have exchanged
        // their tables (a node drops a non-member's frames, so one that missed a change
        // and hears only from nodes it does not know cannot learn it: not judged).
        let mut up_now: HashSet<(Pid, Incarnation, Pid)> = HashSet::new();
        for t in &a.peer_events {
            match t.change {
                PeerChange::Up { peer } => {
                    up_now.insert((t.at, t.at_incarnation, peer));
                }
                PeerChange::Down { peer } | PeerChange::Left { peer } => {
                    up_now.remove(&(t.at, t.at_incarnation, peer));
                }
                _ => {}
            }
        }
        let running: Vec<_> = a
            .end_members
            .iter()
            .filter(|(_, pid, _, records)| present(*pid, records))
            .collect();
        for (i, (_, first, first_inc, reference)) in running.iter().enumerate() {
            for (seq, pid, inc, records) in running.iter().skip(i + 1) {
                let mutual = up_now.contains(&(*first, *first_inc, *pid))
                    && up_now.contains(&(*pid, *inc, *first));
                if mutual && records != reference {
                    let differ: Vec<Pid> = reference
                        .iter()
                        .chain(records.iter())
                        .map(|m| m.pid)
                        .collect::<BTreeSet<Pid>>()
                        .into_iter()
                        .filter(|p| {
                            reference.iter().find(|m| m.pid == *p)
                                != records.iter().find(|m| m.pid == *p)
                        })
                        .collect();
                    out.push(v(
                        inv,
                        Some(*seq),
                        format!(
                            "after the final settle, {pid} (incarnation {inc}) and {first}                              (incarnation {first_inc}) hold different membership records for                              {differ:?}: {} against {}",
                            show_records(records),
                            show_records(reference)
                        ),
                    ));
                }
            }
        }
    }
    out
}

fn show_records(records: &[cluster_core::Member]) -> String {
    let shown: Vec<String> = records
        .iter()
        .map(|m| {
            format!(
                "{}{}@{}.{}",
                m.pid,
                if m.present { "+" } else { "-" },
                m.epoch,
                m.origin
            )
        })
        .collect();
    format!("[{}]", shown.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ReasonCounts;

    /// Builds a history from `(time in ms, event)`.
    fn history(events: Vec<(u64, Event)>) -> Vec<Record> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, (ms, event))| Record::new(i as u64, ms * 1000, event))
            .collect()
    }

    fn begin(window_ms: Option<u64>) -> Event {
        Event::Begin {
            pids: vec![1, 2, 3],
            seed: 0,
            backend: "synthetic".into(),
            window_us: window_ms.map(|w| w * 1000),
        }
    }

    fn start(pid: Pid, incarnation: Incarnation) -> Event {
        Event::Start { pid, incarnation }
    }

    fn send(from: Pid, to: Pid, msg_id: MsgId) -> Event {
        Event::Send {
            from,
            incarnation: 0,
            to,
            msg_id,
            payload: serde_json::json!([msg_id]),
        }
    }

    fn routed(from: Pid, to: Pid, msg_id: MsgId, refused: Option<DropReason>) -> Event {
        Event::Routed {
            from,
            incarnation: 0,
            to,
            msg_id,
            refused,
        }
    }

    fn delivered(at: Pid, from: Pid, msg_id: MsgId) -> Event {
        Event::Delivered {
            at,
            at_incarnation: 0,
            from,
            msg_id,
            payload: serde_json::json!([msg_id]),
        }
    }

    fn settled() -> Event {
        Event::Settled {
            in_flight: 0,
            quiet: true,
        }
    }

    fn expectations(records: &[Record]) -> Vec<(MsgId, Expect)> {
        Analysis::new(records)
            .copies
            .iter()
            .map(|c| (c.msg_id, c.expect))
            .collect()
    }

    fn told(at: Pid, at_incarnation: Incarnation, change: PeerChange) -> Event {
        Event::PeerEvent {
            at,
            at_incarnation,
            change,
            uptime_us: 0,
        }
    }

    fn events_flagged(h: &[Record]) -> Vec<u64> {
        check_events(&Analysis::new(h))
            .iter()
            .filter_map(|v| v.seq)
            .collect()
    }

    /// Each rule of EV flags what breaks it, and nothing else.
    #[test]
    fn peer_events_are_judged_against_the_faults() {
        use PeerChange::{Down, Restarted, Up};
        let h = history(vec![
            (0, begin(None)),
            (0, start(1, 1)),
            (0, start(2, 1)),
            (0, start(3, 1)),
            (0, told(1, 1, Up { peer: 2 })),
            (0, told(1, 1, Up { peer: 3 })),
            (0, told(3, 1, Up { peer: 2 })),
            // #7: no fault on the link 1 ↔ 3.
            (0, told(1, 1, Down { peer: 3 })),
            (0, Event::Crash { pid: 2 }),
            (0, told(1, 1, Down { peer: 2 })),
            (0, told(3, 1, Down { peer: 2 })),
            (0, start(2, 2)),
            (
                0,
                told(
                    1,
                    1,
                    Restarted {
                        peer: 2,
                        incarnation: 2,
                    },
                ),
            ),
            (0, told(1, 1, Up { peer: 2 })),
            // #14: twice for one restart.
            (
                0,
                told(
                    1,
                    1,
                    Restarted {
                        peer: 2,
                        incarnation: 2,
                    },
                ),
            ),
            // #15: 3 heard 2's first incarnation, and now its second, untold.
            (0, told(3, 1, Up { peer: 2 })),
            // #16: 1's only incarnation is the first that 2's second could hear.
            (
                0,
                told(
                    2,
                    2,
                    Restarted {
                        peer: 1,
                        incarnation: 1,
                    },
                ),
            ),
            // #17: 3 never ran as incarnation 7.
            (
                0,
                told(
                    1,
                    1,
                    Restarted {
                        peer: 3,
                        incarnation: 7,
                    },
                ),
            ),
            // #20: a cut from 3 to 1 closes nothing at 1; from 1 to 3 it does.
            (0, told(1, 1, Up { peer: 3 })),
            (0, Event::Cut { from: 3, to: 1 }),
            (0, told(1, 1, Down { peer: 3 })),
            (0, told(1, 1, Up { peer: 3 })),
            (0, Event::Cut { from: 1, to: 3 }),
            (0, told(1, 1, Down { peer: 3 })),
            // #24: Down for a peer that was not up.
            (0, told(1, 1, Down { peer: 3 })),
            (0, settled()),
        ]);
        assert_eq!(events_flagged(&h), [7, 20, 24, 14, 16, 17, 15]);
        let found = check_events(&Analysis::new(&h));
        assert!(found.iter().all(|v| v.invariant == Invariant::Events));
        assert!(found[0].message.contains("no fault touched"), "{found:?}");
        assert!(found[2].message.contains("had not told Up"), "{found:?}");
        assert!(found[3].message.contains("again"), "{found:?}");
        assert!(found[4].message.contains("only incarnation"), "{found:?}");
        assert!(found[5].message.contains("had started"), "{found:?}");
        assert!(
            found[6].message.contains("without telling Restarted"),
            "{found:?}"
        );
    }

    /// On real sockets a late `Up` (from a frame sent before the crash) may precede the
    /// `Down` the crash causes, and an `Up` alone does not show a new incarnation was heard;
    /// a message delivered from it does.
    #[test]
    fn peer_events_on_real_sockets_allow_for_detection() {
        use PeerChange::{Down, Restarted, Up};
        let events = |window: Option<u64>| {
            history(vec![
                (0, begin(window)),
                (0, start(1, 1)),
                (0, start(2, 1)),
                (0, start(3, 1)),
                (10, told(1, 1, Up { peer: 3 })),
                (1000, Event::Crash { pid: 2 }),
                (1100, told(1, 1, Up { peer: 2 })),
                (1200, told(1, 1, Down { peer: 2 })),
                (1300, start(2, 2)),
                (1400, told(1, 1, Up { peer: 2 })),
                (3000, told(1, 1, Down { peer: 3 })),
                (3100, send(3, 1, 9)),
                (3100, Event::Crash { pid: 3 }),
                (3200, start(3, 2)),
                (3300, send(3, 1, 10)),
                (
                    3400,
                    Event::Delivered {
                        at: 1,
                        at_incarnation: 1,
                        from: 3,
                        msg_id: 10,
                        payload: serde_json::json!([10]),
                    },
                ),
                (3500, settled()),
            ])
        };
        let sent_by = |h: &mut Vec<Record>, seq: usize, incarnation: Incarnation| {
            if let Event::Send {
                incarnation: inc, ..
            } = &mut h[seq].event
            {
                *inc = incarnation;
            }
        };
        let mut exact = events(None);
        sent_by(&mut exact, 14, 2);
        // Exact: the Down at #7 follows an Up after the crash; the Down of 3 at #10 had no
        // fault; 3's second incarnation was heard (#15) without Restarted. (1 had not
        // heard 2 before its crash: its second incarnation is no restart to 1.)
        assert_eq!(events_flagged(&exact), [7, 10, 15]);
        let mut real = events(Some(500));
        sent_by(&mut real, 14, 2);
        // On real sockets a Down no fault explains (#10) is not judged: a starved process
        // is a cut nothing recorded.
        assert_eq!(events_flagged(&real), [15]);
        // Told before the delivery: nothing to say about 3.
        real.insert(
            15,
            Record::new(
                15,
                3_350_000,
                told(
                    1,
                    1,
                    Restarted {
                        peer: 3,
                        incarnation: 2,
                    },
                ),
            ),
        );
        for (i, r) in real.iter_mut().enumerate() {
            r.seq = i as u64;
        }
        assert!(events_flagged(&real).is_empty());
    }

    #[test]
    fn exact_runs_judge_every_copy() {
        let h = history(vec![
            (0, begin(None)),
            (0, start(1, 0)),
            (0, start(2, 0)),
            (0, start(3, 0)),
            (0, send(1, 2, 1)),
            (0, routed(1, 2, 1, None)),
            (0, settled()),
            (0, send(1, 2, 2)),
            (0, routed(1, 2, 2, None)),
            (0, Event::Cut { from: 1, to: 2 }),
            (0, settled()),
            (0, send(1, 2, 3)),
            (0, routed(1, 2, 3, Some(DropReason::Partitioned))),
            (0, Event::Heal),
            (
                0,
                Event::SetLoss {
                    from: 1,
                    to: 3,
                    p: 0.5,
                },
            ),
            (0, send(1, 3, 4)),
            (0, routed(1, 3, 4, None)),
            (0, settled()),
        ]);
        assert_eq!(
            expectations(&h),
            [
                (1, Expect::Deliver),
                (2, Expect::Drop),
                (3, Expect::Drop),
                (4, Expect::Either)
            ]
        );
        // Message 1 was never delivered: C5 (and C6 has nothing to say about it).
        let v = check(&h);
        assert_eq!(v.violated(), BTreeSet::from([Invariant::C5Delivery]));
    }

    #[test]
    fn real_networks_allow_either_way_only_near_a_fault() {
        let h = history(vec![
            (0, begin(Some(500))),
            (0, start(1, 0)),
            (0, start(2, 0)),
            (0, start(3, 0)),
            (100, send(1, 2, 1)),
            (100, routed(1, 2, 1, None)),
            (150, delivered(2, 1, 1)),
            (1000, Event::Crash { pid: 2 }),
            // To a node that is down: never delivered, whatever the transport said.
            (1200, send(1, 2, 2)),
            (1200, routed(1, 2, 2, None)),
            (3100, send(1, 3, 3)),
            (3100, routed(1, 3, 3, None)),
            (3600, start(2, 1)),
            (4200, send(1, 2, 4)),
            (4200, routed(1, 2, 4, None)),
            (5000, Event::Crash { pid: 3 }),
            (5050, start(3, 1)),
            // Just after a crash, to the restarted node: the sender may not know yet.
            (5100, send(1, 3, 5)),
            (5100, routed(1, 3, 5, None)),
            (5200, settled()),
        ]);
        assert_eq!(
            expectations(&h),
            [
                (1, Expect::Deliver),
                (2, Expect::Drop),
                (3, Expect::Deliver),
                (4, Expect::Deliver),
                (5, Expect::Either)
            ]
        );
        let v = check(&h);
        assert!(v.violated().contains(&Invariant::C5Delivery), "{v}");
        let lost: Vec<u64> = check_c5_delivery(&Analysis::new(&h))
            .iter()
            .filter_map(|v| v.seq)
            .collect();
        // Messages 3 (to 3) and 4 (to the restarted 2) were due and never delivered.
        assert_eq!(lost, [11, 14]);
    }

    /// A copy for a full queue must be refused as backpressure, one accepted there breaks
    /// C6, and a backpressure refusal with room in the queue is the wrong reason (C7).
    #[test]
    fn exact_runs_count_every_queue_against_its_bound() {
        let arrived = |at: Pid, from: Pid, msg_id: MsgId| Event::Arrived {
            at,
            at_incarnation: 0,
            from: Some(from),
            incarnation: Some(0),
            msg_id: Some(msg_id),
        };
        let full = Some(DropReason::Backpressure);
        let h = history(vec![
            (0, begin(None)),
            (0, Event::QueueBound { frames: 2 }),
            (0, start(1, 0)),
            (0, start(2, 0)),
            (0, start(3, 0)),
            (0, send(1, 2, 1)),
            (0, routed(1, 2, 1, None)),
            (0, send(1, 2, 2)),
            (0, routed(1, 2, 2, None)),
            (0, send(1, 2, 3)),
            (0, routed(1, 2, 3, full)),
            (0, send(3, 2, 4)),
            (0, routed(3, 2, 4, None)),
            (0, send(1, 3, 5)),
            (0, routed(1, 3, 5, full)),
            (0, arrived(2, 1, 1)),
            (0, delivered(2, 1, 1)),
            (0, send(3, 2, 6)),
            (0, routed(3, 2, 6, full)),
            (0, settled()),
        ]);
        let a = Analysis::new(&h);
        let queued: Vec<(MsgId, Option<u64>, bool)> = a
            .copies
            .iter()
            .map(|c| (c.msg_id, c.queued, c.queue_full))
            .collect();
        assert_eq!(
            queued,
            [
                (1, Some(0), false),
                (2, Some(1), false),
                (3, Some(2), true),
                (4, Some(2), true),
                (5, Some(0), false),
                (6, Some(2), true),
            ]
        );
        assert_eq!(
            expectations(&h),
            [
                (1, Expect::Deliver),
                (2, Expect::Deliver),
                (3, Expect::Drop),
                (4, Expect::Drop),
                (5, Expect::Deliver),
                (6, Expect::Drop),
            ]
        );
        let c6: Vec<Option<u64>> = check_c6_isolation(&a).iter().map(|v| v.seq).collect();
        assert_eq!(c6, [Some(12)], "message 4 was accepted into a full queue");
        let c7 = check_c7_accounting(&a);
        assert_eq!(c7.len(), 1, "{c7:?}");
        assert!(c7[0].message.contains("refused as backpressure"), "{c7:?}");
        assert_eq!(c7[0].seq, Some(14));
    }

    /// Hostile bytes must be dropped under the reason of their kind, unless a crash takes
    /// them first, and nothing may be delivered from a forged header.
    #[test]
    fn hostile_bytes_are_dropped_under_their_reason() {
        let injected = |to: Pid, bytes: HostileBytes| Event::Injected {
            to,
            at_incarnation: 0,
            bytes,
            len: 9,
            refused: None,
        };
        let dropped = |at: Pid, from: Option<Pid>, reason: DropReason| Event::Dropped {
            at,
            at_incarnation: 0,
            from,
            incarnation: from.map(|_| 0),
            msg_id: from.map(|_| FORGED_MSG_ID),
            reason,
        };
        let h = history(vec![
            (0, begin(None)),
            (0, start(1, 0)),
            (0, start(2, 0)),
            (0, start(3, 0)),
            (0, injected(2, HostileBytes::Garbage)),
            (0, injected(3, HostileBytes::UnknownSender)),
            (0, injected(1, HostileBytes::Oversized)),
            (0, Event::Crash { pid: 1 }),
            (0, dropped(2, None, DropReason::Malformed)),
            (0, dropped(3, Some(4), DropReason::Malformed)),
            (
                0,
                Event::Delivered {
                    at: 2,
                    at_incarnation: 0,
                    from: 1,
                    msg_id: FORGED_MSG_ID,
                    payload: serde_json::Value::Null,
                },
            ),
            (0, settled()),
        ]);
        let found = check_c9_hostile_input(&Analysis::new(&h));
        let seqs: Vec<Option<u64>> = found.iter().map(|v| v.seq).collect();
        // The unknown sender counted as malformed; the delivery from a forged header. The
        // oversized bytes went down with node 1.
        assert_eq!(seqs, [Some(5), Some(10)], "{found:?}");
        assert!(found[0].message.contains("a drop as malformed instead"));
    }

    #[test]
    fn accounting_is_exact_in_simulation_and_bounded_after_a_kill_on_real_networks() {
        let real_stats =
            |sent, delivered, [lost, unconfirmed, unacknowledged]: [u64; 3]| Event::Stats {
                pid: 1,
                incarnation: 0,
                sent,
                delivered,
                dropped_outgoing: ReasonCounts::new(),
                dropped_incoming: ReasonCounts::new(),
                lost_in_transit: lost,
                unconfirmed,
                unacknowledged,
            };
        let stats = |sent, delivered| real_stats(sent, delivered, [0; 3]);
        let net = || Event::NetDiscarded {
            discarded: ReasonCounts::new(),
        };
        let run = |window, crash: bool, stats: Event| {
            let mut events = vec![(0, begin(window))];
            if crash {
                events.push((0, Event::Crash { pid: 3 }));
            }
            events.extend([(0, stats), (0, net())]);
            history(events)
        };
        let short = |window| run(window, true, stats(3, 0));
        let c7 = |h: &[Record]| check_c7_accounting(&Analysis::new(h));
        assert_eq!(
            c7(&short(None)).len(),
            1,
            "simulation: 3 sent, none accounted"
        );
        assert_eq!(
            c7(&short(Some(500))).len(),
            1,
            "real: lost with the process, but silently"
        );
        for counts in [[1, 2, 0], [0, 3, 0], [0, 0, 3], [1, 1, 1]] {
            assert!(
                c7(&run(Some(500), true, real_stats(3, 0, counts))).is_empty(),
                "real: lost in transit, unconfirmed or unacknowledged: {counts:?}"
            );
            assert!(
                c7(&run(Some(500), false, real_stats(3, 0, counts))).is_empty(),
                "real, no kill: {counts:?}"
            );
        }
        assert!(
            c7(&run(Some(500), true, real_stats(3, 1, [0, 3, 0]))).len() == 1,
            "with a kill, a delivered frame may also be unconfirmed (its acknowledgement \
             lost), but the deliveries must have been seen"
        );
        assert!(
            !c7(&run(Some(500), false, real_stats(3, 0, [1, 3, 0]))).is_empty(),
            "without a kill, counted twice is a violation"
        );
        let excess = history(vec![
            (0, begin(Some(500))),
            (0, Event::Crash { pid: 3 }),
            (0, stats(1, 2)),
            (0, net()),
        ]);
        assert_eq!(
            c7(&excess).len(),
            2,
            "more delivered than sent, and unseen deliveries"
        );
    }
}
