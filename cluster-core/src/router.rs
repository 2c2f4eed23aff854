//! Routing decisions, written sans-IO: envelopes and frames in, decisions and counters out.
//! The sending tasks (through the outbox) and the node's receiving task drive it, under one
//! lock; it holds no socket, clock or runtime, so every transport shares these semantics
//! line for line.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::envelope::{BROADCAST, Envelope, MsgId, Pid};
use crate::events::{Event, EventHub};
use crate::membership::{Applied, Member, Table};
use crate::outbox::SendOutcome;
use crate::seal::Sealer;
use crate::stats::{DropReason, StatsCells};
use crate::wire::{self, Destination, Header, Incarnation, Seq, WireError};

/// Test-only: one deliberate bug in the [`Router`], so that the test kit's mutants can show
/// the contract oracle catching a broken router, not only a broken transport. Exists only
/// with the `fault-injection` feature (which `cluster-testkit` turns on) and is set only
/// through the hidden `ServerBuilder::router_fault`; a server built without it has no fault.
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RouterFault {
    /// A broadcast also lands in the sender's own inbox (breaks C1).
    BroadcastToSender,
    /// A send to the node itself goes out through the transport like a send to a peer, and
    /// comes back as a forgery (breaks C1).
    NoSelfDelivery,
    /// A send to an unknown pid is dropped without being counted (breaks C1).
    UncountedUnknownPeer,
    /// A frame from an older incarnation of a peer is accepted after a newer one (breaks C4).
    AcceptStale,
    /// Bytes that are not a frame of a known peer (too large, no valid header, unknown
    /// sender) are dropped without being counted (breaks C9).
    UncountedHostile,
}

/// Whether the test-only [`RouterFault`] `$fault` is on: always `false` without the
/// `fault-injection` feature, so that normal builds carry no trace of it.
#[cfg(feature = "fault-injection")]
macro_rules! faulty {
    ($router:expr, $fault:ident) => {
        $router.fault == Some(RouterFault::$fault)
    };
}
#[cfg(not(feature = "fault-injection"))]
macro_rules! faulty {
    ($router:expr, $fault:ident) => {
        false
    };
}

/// What a router last accepted from one peer.
#[derive(Debug, Clone, Copy)]
struct Heard {
    incarnation: Incarnation,
    /// The first sequence number accepted from this incarnation.
    first: Seq,
    seq: Seq,
    at: Instant,
}

/// Membership frames kept for a retry, at most.
const MAIL_RETRY: usize = 256;

/// The epoch of an automatic join request (see [`Router::request_unheard`]); an explicit
/// one ([`Router::request_membership`]) has 0.
const AUTOMATIC: u64 = 1;

/// A change the transport must make, for membership (see [`Router::flush_membership`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TransportAction {
    /// Connect to this pid at this address.
    Add(Pid, String),
    /// Disconnect from this pid.
    Remove(Pid),
}

/// What this node knows of a peer's life, for peer events (see [`crate::events`]).
#[derive(Debug, Clone, Copy, Default)]
struct Life {
    /// The newest incarnation of the peer heard from (any authenticated frame).
    incarnation: Option<Incarnation>,
    /// When it was last heard from, on the slow path (see [`Router::heard_from`]).
    at: Option<Instant>,
    /// Heard from `incarnation` since this node's connection to it last came up.
    heard: bool,
    /// `incarnation` said it heard this node: greetings stop.
    confirmed: bool,
    /// This node's transport has a live connection to it.
    outbound: bool,
    /// `Up` was the last of `Up`/`Down` told.
    up: bool,
    /// It greeted this node (not in answer): an answer is due.
    reply: bool,
}

/// Receiving side of acknowledgements, per peer: what this node owes it.
#[derive(Debug, Clone, Copy, Default)]
struct AckDue {
    /// The highest sequence number already acknowledged (of the incarnation in `heard`).
    acked: Seq,
    /// The highest sequence number (of the incarnation in `heard`) whose frame reached its
    /// end here: delivered to the inbox, or dropped and counted. Only that is acknowledged,
    /// so that a full inbox holds its senders back (their windows fill).
    settled: Seq,
    /// Frames and bytes settled since the last acknowledgement.
    frames: usize,
    bytes: usize,
}

/// Where an accepted frame came from, for [`Router::settled`] once it reached its end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    index: usize,
    incarnation: Incarnation,
    seq: Seq,
    /// The frame's length.
    pub(crate) len: usize,
}

/// Sending side of acknowledgements, per peer: frames its transport accepted that the
/// peer has not acknowledged, oldest first.
#[derive(Debug, Default)]
struct Unacked {
    /// The length of each unacknowledged frame, 4 bytes each; their sequence numbers are
    /// consecutive from `first` (the transport numbers only what it accepted).
    frames: VecDeque<u32>,
    /// The sequence number of `frames[0]`.
    first: Seq,
    /// Sum of their lengths.
    bytes: usize,
    /// The peer incarnation whose acknowledgements were last applied.
    incarnation: Option<Incarnation>,
}

impl Unacked {
    /// Adds frame `seq` of `len` bytes (the next after the last one added).
    fn push(&mut self, seq: Seq, len: usize) {
        if self.frames.is_empty() {
            self.first = seq;
        }
        self.frames
            .push_back(u32::try_from(len).unwrap_or(u32::MAX));
        self.bytes += len;
    }

    /// Forgets the frames up to `seq` (acknowledged, or resolved otherwise).
    fn ack_up_to(&mut self, seq: Seq) {
        while self.first <= seq {
            let Some(len) = self.frames.pop_front() else {
                break;
            };
            self.first += 1;
            self.bytes = self.bytes.saturating_sub(len as usize);
        }
    }

    /// Forgets the newest frame (the transport discarded it); `false` if there is none.
    fn pop_newest(&mut self) -> bool {
        match self.frames.pop_back() {
            Some(len) => {
                self.bytes = self.bytes.saturating_sub(len as usize);
                true
            }
            None => false,
        }
    }

    /// Forgets every frame; returns how many there were.
    fn write_off(&mut self) -> u64 {
        let n = self.frames.len() as u64;
        self.frames.clear();
        self.bytes = 0;
        n
    }
}

/// The bounds and timings of acknowledgements (a transport that may lose accepted frames,
/// see [`crate::Transport::may_lose_accepted`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AckOptions {
    /// Unacknowledged frames to one peer, at most (`peer_queue`).
    pub(crate) window_frames: usize,
    /// Unacknowledged bytes to one peer, at most (`peer_queue_bytes`).
    pub(crate) window_bytes: usize,
}

impl AckOptions {
    /// Whether `due` is enough to acknowledge at once: a quarter window, of frames or of
    /// bytes (the sender then still has three quarters to send while it travels).
    fn enough(&self, due: &AckDue) -> bool {
        due.frames >= (self.window_frames / 4).max(1) || due.bytes >= self.window_bytes / 4
    }
}

/// What [`Router::outgoing_checked`] did with an envelope.
pub(crate) enum Routed<M> {
    /// Routed and counted; the envelope if it is for this node itself.
    Done(SendOutcome, Option<Envelope<M>>),
    /// Held back uncounted (see `hold`): the envelope, and what is full.
    Held(Envelope<M>, Full),
}

/// What a held message waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The peer's window of unacknowledged frames: room comes with its acknowledgements.
    Window,
    /// The transport's queue to the peer: room comes as the transport sends.
    Queue,
}

/// Copies of one message handed over and dropped.
#[derive(Default)]
struct Tally {
    sent: usize,
    dropped: usize,
    last_reason: Option<DropReason>,
}

impl Tally {
    fn dropped(&mut self, reason: DropReason) {
        self.dropped += 1;
        self.last_reason = Some(reason);
    }
}

pub(crate) struct Router {
    pid: Pid,
    incarnation: Incarnation,
    /// Every configured pid, ascending (self included).
    all: Vec<Pid>,
    max_message_size: usize,
    /// Per pid in `all`: the sequence number of the next frame to it that the transport
    /// accepts. A refused frame gives its number back, so that a gap the receiver sees is
    /// a frame lost after the transport took it.
    next_seq: Vec<Seq>,
    /// Per pid in `all`: the newest incarnation heard from it, the highest sequence number
    /// heard from that incarnation, and when its last frame was accepted.
    heard: Vec<Option<Heard>>,
    /// `Some` when the transport may lose frames it accepted: receivers then acknowledge
    /// what they got, and what is unacknowledged is bounded and, when its peer goes down,
    /// counted as `unconfirmed`.
    acks: Option<AckOptions>,
    /// Per pid in `all`: what this node still has to acknowledge to it.
    ack_due: Vec<AckDue>,
    /// Per pid in `all`: frames to it not yet acknowledged.
    unacked: Vec<Unacked>,
    /// Some peer is owed an acknowledgement of a quarter window or more.
    ack_ready: bool,
    /// An acknowledgement freed room in a window since [`Router::take_credit`] last asked.
    credited: bool,
    /// Per pid in `all`: whether it was disconnected at the last [`Router::write_off`].
    absent: Vec<bool>,
    /// Per pid in `all`: the sequence number of its oldest unacknowledged frame at the last
    /// [`Router::probe_silent`], if any.
    oldest_unacked: Vec<Option<Seq>>,
    /// Per pid in `all`: the highest sequence number [written off](Router::write_off) and
    /// not yet announced to it (see [`Router::outgoing_checked`]).
    written_off: Vec<Option<Seq>>,
    /// Per pid in `all`: its life, for peer events.
    life: Vec<Life>,
    /// Where peer events go.
    events: Arc<EventHub>,
    /// Some peer is owed a greeting back (see [`Router::greet`]).
    greet_due: bool,
    /// The membership table (see [`crate::membership`]).
    table: Table,
    /// Control frames to send once the caller can (membership), in order.
    mail: Vec<(Pid, Bytes)>,
    /// Membership frames the transport refused, sent again at the next heartbeat (at most
    /// [`MAIL_RETRY`], the oldest dropped first: tables are exchanged when peers come up).
    retry: VecDeque<(Pid, Bytes)>,
    /// Changes the transport must make (membership), in order.
    actions: Vec<TransportAction>,
    /// Frames to removed peers still unacknowledged when they were removed: what the
    /// transport reports discarded is counted as such, the rest as `unconfirmed` at the
    /// next [`Router::write_off`].
    departed: Vec<(Pid, Unacked)>,
    /// Frames control frames (acknowledgements, probes), so that they never disturb the
    /// message `encoder` holds serialized.
    control: wire::Encoder,
    /// Unkeyed only: silence after which a peer's newest incarnation stops counting (the
    /// `heartbeat_timeout`), so that no single frame can lock a peer out for good. See
    /// [`Router::incoming`].
    forget_after: Duration,
    stats: Arc<StatsCells>,
    encoder: wire::Encoder,
    /// Seals every frame sent and opens every frame received, in this node's mode
    /// (unkeyed, MAC or encrypted); a frame of another mode is refused.
    sealer: Sealer,
    #[cfg(feature = "fault-injection")]
    fault: Option<RouterFault>,
}

impl Router {
    pub(crate) fn new(
        pid: Pid,
        incarnation: Incarnation,
        all: Vec<Pid>,
        max_message_size: usize,
        stats: Arc<StatsCells>,
        sealer: Sealer,
        forget_after: Duration,
    ) -> Self {
        let heard = vec![None; all.len()];
        let next_seq = vec![1; all.len()];
        let absent = vec![false; all.len()];
        let oldest_unacked = vec![None; all.len()];
        let written_off = vec![None; all.len()];
        let ack_due = vec![AckDue::default(); all.len()];
        let unacked = all.iter().map(|_| Unacked::default()).collect();
        let life = vec![Life::default(); all.len()];
        Self {
            pid,
            incarnation,
            all,
            max_message_size,
            next_seq,
            heard,
            acks: None,
            ack_due,
            unacked,
            ack_ready: false,
            credited: false,
            absent,
            oldest_unacked,
            written_off,
            life,
            events: Arc::new(EventHub::new()),
            greet_due: false,
            table: Table::default(),
            mail: Vec::new(),
            retry: VecDeque::new(),
            actions: Vec::new(),
            departed: Vec::new(),
            control: wire::Encoder::new(),
            forget_after,
            stats,
            encoder: wire::Encoder::new(),
            sealer,
            #[cfg(feature = "fault-injection")]
            fault: None,
        }
    }

    /// This router with acknowledgements on (see [`Router::acks`]).
    pub(crate) fn with_acks(mut self, acks: Option<AckOptions>) -> Self {
        self.acks = acks;
        self
    }

    /// This router with the membership table `table` (the config's, or one restored).
    pub(crate) fn with_table(mut self, table: Table) -> Self {
        self.events.set_members(table.clone());
        self.table = table;
        self
    }

    /// This router, telling its peer events to `events`.
    pub(crate) fn with_events(mut self, events: Arc<EventHub>) -> Self {
        events.set_members(self.table.clone());
        self.events = events;
        self
    }

    /// Test-only: this router with `fault` (see [`RouterFault`]).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn with_fault(mut self, fault: Option<RouterFault>) -> Self {
        self.fault = fault;
        self
    }

    /// Routes one outgoing envelope: serializes the message once, frames it for each
    /// remote destination (each copy names its receiver and carries that receiver's next
    /// sequence number), hands each frame to `send`, and returns the envelope if it is for
    /// this node itself. Every copy is counted as sent and, if refused, as dropped with the
    /// reason; a refused copy gives its sequence number back.
    #[cfg(test)]
    pub(crate) fn outgoing<M: Serialize>(
        &mut self,
        env: Envelope<M>,
        send: impl FnMut(Pid, Bytes) -> Result<(), DropReason>,
    ) -> Option<Envelope<M>> {
        match self.outgoing_checked(env, send, |_| true, false) {
            Routed::Done(_, local) => local,
            Routed::Held(..) => None,
        }
    }

    /// [`Router::outgoing`], asking `connected` about a peer whose window of
    /// unacknowledged frames is full: a full window to a connected peer is `backpressure`,
    /// to a peer the transport has no connection to, `unreachable`.
    ///
    /// With `hold`, a message for one peer that meets a full window or a full transport
    /// queue (`backpressure`) to a connected peer is neither counted nor dropped: it comes
    /// back as [`Routed::Held`], for the caller to wait for room and route it again.
    pub(crate) fn outgoing_checked<M: Serialize>(
        &mut self,
        env: Envelope<M>,
        mut send: impl FnMut(Pid, Bytes) -> Result<(), DropReason>,
        connected: impl Fn(Pid) -> bool,
        hold: bool,
    ) -> Routed<M> {
        let to = env.pid;
        if to == self.pid && !faulty!(self, NoSelfDelivery) {
            self.stats.sent(to);
            let local = Envelope::new(self.pid, env.msg_id, env.msg);
            return Routed::Done(SendOutcome::Sent, Some(local));
        }
        let (first, last, destination) = if to == BROADCAST {
            (0, self.all.len(), Destination::Broadcast)
        } else if let Ok(i) = self.all.binary_search(&to) {
            (i, i + 1, Destination::Peer)
        } else {
            let outcome = SendOutcome::Dropped(DropReason::UnknownPeer);
            if faulty!(self, UncountedUnknownPeer) {
                return Routed::Done(outcome, None);
            }
            self.stats.sent(to);
            self.stats.dropped_to(to, DropReason::UnknownPeer, 1);
            return Routed::Done(outcome, None);
        };
        let hold = hold && destination == Destination::Peer;
        let serialized = self.serialize_once(&env.msg, env.msg_id);
        let copies = self.send_copies(
            first..last,
            destination,
            env.msg_id,
            serialized,
            hold,
            &mut send,
            &connected,
        );
        let tally = match copies {
            Ok(tally) => tally,
            Err(full) => return Routed::Held(env, full),
        };
        let outcome = match destination {
            Destination::Broadcast => SendOutcome::Broadcast {
                sent: tally.sent,
                dropped: tally.dropped,
            },
            _ => tally
                .last_reason
                .map_or(SendOutcome::Sent, SendOutcome::Dropped),
        };
        if to == BROADCAST && faulty!(self, BroadcastToSender) {
            self.stats.sent(self.pid);
            let local = Envelope::new(self.pid, env.msg_id, env.msg);
            return Routed::Done(outcome, Some(local));
        }
        Routed::Done(outcome, None)
    }

    /// Routes one multicast to `to`: each pid once (ascending), unknown pids dropped and
    /// counted `unknown_peer`, this node's own pid returned as the envelope for its inbox
    /// (counted sent here, as a send to self is), and the message serialized once for the
    /// rest and framed like a broadcast copy, as [`Destination::Group`], with each
    /// receiver's own sequence number. Like a broadcast it never holds: a copy to a full
    /// peer is dropped and counted. The outcome is a [`SendOutcome::Multicast`].
    pub(crate) fn outgoing_multicast<M: Serialize>(
        &mut self,
        to: &[Pid],
        msg_id: MsgId,
        msg: M,
        mut send: impl FnMut(Pid, Bytes) -> Result<(), DropReason>,
        connected: impl Fn(Pid) -> bool,
    ) -> (SendOutcome, Option<Envelope<M>>) {
        let mut pids = to.to_vec();
        pids.sort_unstable();
        pids.dedup();
        let mut to_self = false;
        let mut unknown = 0;
        let mut indices = Vec::with_capacity(pids.len());
        for pid in pids {
            if pid == self.pid {
                to_self = true;
            } else if let Ok(index) = self.all.binary_search(&pid) {
                indices.push(index);
            } else {
                self.stats.sent(pid);
                self.stats.dropped_to(pid, DropReason::UnknownPeer, 1);
                unknown += 1;
            }
        }
        let mut tally = Tally::default();
        if !indices.is_empty() {
            let serialized = self.serialize_once(&msg, msg_id);
            let copies = self.send_copies(
                indices.into_iter(),
                Destination::Group,
                msg_id,
                serialized,
                false,
                &mut send,
                &connected,
            );
            // Never held: `hold` is off.
            tally = copies.unwrap_or_default();
        }
        let local = to_self.then(|| {
            self.stats.sent(self.pid);
            tally.sent += 1;
            Envelope::new(self.pid, msg_id, msg)
        });
        let outcome = SendOutcome::Multicast {
            sent: tally.sent,
            dropped: tally.dropped + unknown,
        };
        (outcome, local)
    }

    /// Serializes `msg` into the message encoder, once for all its copies: `too_large` if
    /// its frame would exceed `max_message_size`, `malformed` if it does not serialize.
    fn serialize_once<M: Serialize>(&mut self, msg: &M, msg_id: MsgId) -> Result<(), DropReason> {
        let keyed = self.sealer.keyed();
        match self.encoder.serialize(msg) {
            Ok(()) if self.encoder.frame_len(keyed) <= self.max_message_size => Ok(()),
            Ok(()) => Err(DropReason::TooLarge),
            Err(e) => {
                tracing::warn!(pid = self.pid, msg_id, "dropping message: {e}");
                Err(DropReason::Malformed)
            }
        }
    }

    /// Frames the message the encoder holds (`serialized`: its outcome) for the pid at each
    /// of `indices` in `all` and hands each copy to `send`, counting every copy as sent
    /// and, if refused, as dropped with the reason. With `hold`, a full window or queue to
    /// a connected peer stops the routing uncounted and says which is full (meant for a
    /// send to one peer).
    #[allow(clippy::too_many_arguments)] // the parts of one routing decision
    fn send_copies(
        &mut self,
        indices: impl Iterator<Item = usize>,
        destination: Destination,
        msg_id: MsgId,
        serialized: Result<(), DropReason>,
        hold: bool,
        send: &mut impl FnMut(Pid, Bytes) -> Result<(), DropReason>,
        connected: &impl Fn(Pid) -> bool,
    ) -> Result<Tally, Full> {
        let keyed = self.sealer.keyed();
        let mut tally = Tally::default();
        for index in indices {
            let Some(&peer) = self.all.get(index) else {
                continue;
            };
            if peer == self.pid && destination == Destination::Broadcast {
                continue;
            }
            if let Err(reason) = serialized {
                self.stats.sent(peer);
                self.stats.dropped_to(peer, reason, 1);
                tally.dropped(reason);
                continue;
            }
            let Some(&next) = self.next_seq.get(index) else {
                continue;
            };
            let len = self.encoder.frame_len(keyed);
            if let (Some(acks), Some(unacked)) = (self.acks, self.unacked.get(index))
                && (unacked.frames.len() >= acks.window_frames
                    || unacked.bytes + len > acks.window_bytes)
            {
                // The peer has not acknowledged enough of what it was sent: it is slow, or
                // frozen, or gone (then the transport would refuse the frame anyway).
                let reason = if connected(peer) {
                    if hold {
                        return Err(Full::Window);
                    }
                    DropReason::Backpressure
                } else {
                    DropReason::Unreachable
                };
                self.stats.sent(peer);
                self.stats.dropped_to(peer, reason, 1);
                tally.dropped(reason);
                continue;
            }
            if let Some(Some(upto)) = self.written_off.get(index).copied() {
                // Frames up to `upto` were counted `unconfirmed` here: tell the peer before
                // this frame, on the same queue, so that it does not count them again as
                // a gap (`lost_in_transit`) when this one arrives.
                if let Some(notice) = self.control_frame(peer, Destination::Probe, upto, &true)
                    && send(peer, notice).is_ok()
                    && let Some(slot) = self.written_off.get_mut(index)
                {
                    *slot = None;
                }
            }
            let header = self.sealer.mark(Header {
                sender: self.pid,
                to: peer,
                destination,
                incarnation: self.incarnation,
                seq: next,
                msg_id,
                ..Header::default()
            });
            let sealer = &mut self.sealer;
            let frame = self.encoder.frame(&header, |covered| sealer.seal(covered));
            match send(peer, frame) {
                Ok(()) => {
                    self.stats.sent(peer);
                    if self.acks.is_some()
                        && let Some(unacked) = self.unacked.get_mut(index)
                    {
                        unacked.push(next, len);
                        self.stats.unacknowledged(peer, unacked.frames.len());
                    }
                    if let Some(next) = self.next_seq.get_mut(index) {
                        *next += 1;
                    }
                    tally.sent += 1;
                }
                Err(DropReason::Backpressure) if hold => {
                    return Err(Full::Queue);
                }
                Err(reason) => {
                    self.stats.sent(peer);
                    self.stats.dropped_to(peer, reason, 1);
                    tally.dropped(reason);
                }
            }
        }
        Ok(tally)
    }

    /// Counts a frame dropped on arrival before its sender could be trusted.
    fn drop_hostile(&self, reason: DropReason) {
        if !faulty!(self, UncountedHostile) {
            self.stats.dropped_from(None, reason);
        }
    }

    /// Checks one incoming frame, arrived at `now`. Returns the envelope to deliver, or
    /// counts the drop.
    ///
    /// The checks run from the cheapest to the one that moves state, and only a frame that
    /// passed all of them moves a peer's incarnation or sequence state.
    ///
    /// Without a key, the newest incarnation (and highest sequence number) heard from a
    /// peer stops counting once nothing was accepted from it for `forget_after`: a frame
    /// forged with a high incarnation then silences the real peer for that long at most,
    /// and a peer that lost its catalog (and restarts at a lower incarnation) is heard
    /// again once its old incarnation has been silent that long. With a key the rule is
    /// off: it would let a captured frame of an old incarnation be replayed after a
    /// silence, and forged incarnations cannot get in anyway.
    #[cfg(test)]
    pub(crate) fn incoming<M: DeserializeOwned>(
        &mut self,
        bytes: Bytes,
        now: Instant,
    ) -> Option<Envelope<M>> {
        self.incoming_sized(bytes, now).map(|(env, _)| env)
    }

    /// [`Router::incoming`], with the length of the frame the envelope came in; the frame
    /// counts as settled at once (see [`Router::settled`]).
    #[cfg(test)]
    pub(crate) fn incoming_sized<M: DeserializeOwned>(
        &mut self,
        bytes: Bytes,
        now: Instant,
    ) -> Option<(Envelope<M>, usize)> {
        let (env, arrival) = self.incoming_arrival(bytes, now)?;
        self.settled(&arrival);
        Some((env, arrival.len))
    }

    /// Records that an accepted frame reached its end at this node (delivered, or dropped
    /// and counted): acknowledgements cover it from now on.
    pub(crate) fn settled(&mut self, a: &Arrival) {
        let Some(acks) = self.acks else {
            return;
        };
        let current = self
            .heard
            .get(a.index)
            .copied()
            .flatten()
            .is_some_and(|h| h.incarnation == a.incarnation);
        if let (true, Some(due)) = (current, self.ack_due.get_mut(a.index))
            && a.seq > due.settled
        {
            due.settled = a.seq;
            due.frames += 1;
            due.bytes += a.len;
            if acks.enough(due) {
                self.ack_ready = true;
            }
        }
    }

    /// Checks one incoming frame like [`Router::incoming`]; an accepted frame comes with
    /// its [`Arrival`], to be reported [`Router::settled`] once delivered or dropped.
    pub(crate) fn incoming_arrival<M: DeserializeOwned>(
        &mut self,
        bytes: Bytes,
        now: Instant,
    ) -> Option<(Envelope<M>, Arrival)> {
        if bytes.len() > self.max_message_size {
            self.drop_hostile(DropReason::TooLarge);
            return None;
        }
        let h = match Header::parse(&bytes) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(pid = self.pid, "dropping malformed frame: {e}");
                self.drop_hostile(match e {
                    WireError::UnsupportedVersion(_) => DropReason::UnsupportedVersion,
                    _ => DropReason::Malformed,
                });
                return None;
            }
        };
        if h.destination == Destination::Membership {
            // Before the sender check: a node not yet a member asks to join this way.
            self.on_membership(&h, bytes);
            return None;
        }
        let Ok(index) = self.all.binary_search(&h.sender) else {
            self.drop_hostile(DropReason::UnknownSender);
            return None;
        };
        if h.sender == self.pid {
            // Our own frames never travel the network: a forgery.
            self.drop_hostile(DropReason::UnknownSender);
            return None;
        }
        if h.to != self.pid {
            // A copy for another node (its sequence numbers are that node's). A copy of a
            // multicast (`Destination::Group`) is delivered like any other: the sender
            // expanded the group, and this copy names this node.
            tracing::debug!(pid = self.pid, to = h.to, kind = ?h.destination, "dropping misdirected frame");
            self.drop_hostile(DropReason::Malformed);
            return None;
        }
        // Before anything that moves state: only an authenticated frame may move a peer's
        // incarnation or sequence state (or reach the catalog, which learns incarnations
        // from the stats). An unkeyed node cannot check a keyed frame's tag, so it cannot
        // trust it either; nor does a node accept a frame of another keyed mode.
        let Some(bytes) = self.sealer.open(bytes, &h) else {
            tracing::debug!(
                pid = self.pid,
                from = h.sender,
                "dropping unauthenticated frame"
            );
            self.drop_hostile(DropReason::Unauthenticated);
            return None;
        };
        if h.destination == Destination::Ack {
            self.on_ack(index, &h, &bytes);
            return None;
        }
        if h.destination == Destination::Probe {
            self.on_probe(index, &h, &bytes, now);
            return None;
        }
        if h.destination == Destination::Hello {
            self.on_hello(index, &h, &bytes, now);
            return None;
        }
        let mut heard = self.heard.get(index).copied().flatten();
        if !self.sealer.keyed()
            && heard.is_some_and(|p| now.saturating_duration_since(p.at) >= self.forget_after)
        {
            // Forgotten (see above): this frame starts the count afresh.
            heard = None;
        }
        if heard.is_some_and(|p| h.incarnation < p.incarnation) && !faulty!(self, AcceptStale) {
            self.stats
                .dropped_from(Some(h.sender), DropReason::StaleIncarnation);
            return None;
        }
        let msg = match wire::decode_payload::<M>(&bytes) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::debug!(pid = self.pid, from = h.sender, "dropping frame: {e}");
                self.stats
                    .dropped_from(Some(h.sender), DropReason::Malformed);
                return None;
            }
        };
        let now_heard = Heard {
            incarnation: h.incarnation,
            first: h.seq,
            seq: h.seq,
            at: now,
        };
        match heard {
            Some(p) if p.incarnation == h.incarnation => {
                if h.seq <= p.seq {
                    self.stats
                        .dropped_from(Some(h.sender), DropReason::Replayed);
                    return None;
                }
                let gap = h.seq - p.seq - 1;
                if gap > 0 {
                    self.stats.lost_in_transit(h.sender, gap);
                }
                if let Some(slot) = self.heard.get_mut(index) {
                    *slot = Some(Heard {
                        first: p.first,
                        ..now_heard
                    });
                }
            }
            // Only a frame that decodes may move the newest incarnation: otherwise one
            // garbage frame with a forged high incarnation would silence the real peer.
            // The first frame of a new incarnation starts its count: what came before it
            // may have been sent before this node started.
            Some(p) if h.incarnation < p.incarnation => {}
            _ => {
                if let Some(slot) = self.heard.get_mut(index) {
                    *slot = Some(now_heard);
                }
                if let Some(due) = self.ack_due.get_mut(index) {
                    *due = AckDue::default();
                }
                self.stats.seen_incarnation(h.sender, h.incarnation);
            }
        }
        let _ = self.heard_from(index, h.incarnation, now);
        let arrival = Arrival {
            index,
            incarnation: h.incarnation,
            seq: h.seq,
            len: bytes.len(),
        };
        Some((Envelope::new(h.sender, h.msg_id, msg), arrival))
    }

    /// Applies an acknowledgement from the peer at `index` (header `h`, frame `bytes`,
    /// already authenticated): frames it covers stop counting against the peer's window;
    /// frames that an incarnation of the peer newer than the last one to acknowledge did
    /// not receive, and that nobody acknowledged, are counted as `unconfirmed`.
    fn on_ack(&mut self, index: usize, h: &Header, bytes: &[u8]) {
        let Ok((incarnation, first, highest)) =
            wire::decode_payload::<(Incarnation, Seq, Seq)>(bytes)
        else {
            tracing::debug!(
                pid = self.pid,
                from = h.sender,
                "dropping malformed acknowledgement"
            );
            self.drop_hostile(DropReason::Malformed);
            return;
        };
        if self.acks.is_none() || incarnation != self.incarnation {
            // Acknowledges a previous incarnation of this node, or is not expected.
            return;
        }
        let Some(unacked) = self.unacked.get_mut(index) else {
            return;
        };
        if unacked.incarnation.is_some_and(|seen| h.incarnation < seen) {
            // From an incarnation of the peer older than one that acknowledged already.
            return;
        }
        // What this incarnation of the peer did not receive (below the first it did) and
        // nobody acknowledged went to an older one, or was lost. (Nothing more after its
        // first acknowledgement: its `first` stays the same.)
        let before = unacked.frames.len();
        unacked.ack_up_to(first.saturating_sub(1));
        self.stats
            .unconfirmed(h.sender, (before - unacked.frames.len()) as u64);
        unacked.incarnation = Some(h.incarnation);
        unacked.ack_up_to(highest);
        self.stats.unacknowledged(h.sender, unacked.frames.len());
        self.credited = true;
        // An incarnation that acknowledges this one has heard from it and can reach it.
        let _ = self.heard_from(index, h.incarnation, Instant::now());
    }

    /// Applies a probe from the peer at `index` (header `h`, payload `bytes`, already
    /// authenticated): the peer's transport accepted frames up to `h.seq` for this node and
    /// has had no acknowledgement of them for a heartbeat interval; or, when the payload is
    /// `true`, the peer counted the frames up to `h.seq` as `unconfirmed` (it found this
    /// node gone) and tells it before its next frame.
    ///
    /// * From the incarnation heard last: the frames after the highest that arrived, up to
    ///   `h.seq`, did not arrive (a connection that broke and came back loses what it
    ///   carried) and no later frame showed the gap. A probe has them counted
    ///   `lost_in_transit` and covered by the next acknowledgement, once everything that
    ///   arrived has reached its end here (while frames that arrived still wait for the
    ///   inbox, it changes nothing: their acknowledgements will come, and the peer probes
    ///   again). A write-off notice moves past them uncounted: the peer counted them.
    /// * From an incarnation newer than any heard (or from one never heard): nothing it
    ///   sent arrived, so the next acknowledgement names `h.seq + 1` as the first frame
    ///   this node has from it, and the peer counts what came before as `unconfirmed`.
    /// * From an older incarnation: ignored.
    ///
    /// In every case the last acknowledgement is due again, in case it was lost on the way.
    /// Without a key the forgetting rule of [`Router::incoming`] is not applied: a probe
    /// comes from a peer that waits for acknowledgements, not after a silence.
    fn on_probe(&mut self, index: usize, h: &Header, bytes: &[u8], now: Instant) {
        let Ok(written_off) = wire::decode_payload::<bool>(bytes) else {
            self.drop_hostile(DropReason::Malformed);
            return;
        };
        let Some(acks) = self.acks else {
            return;
        };
        let keyed = self.sealer.keyed();
        let forget_after = self.forget_after;
        let (Some(slot), Some(due)) = (self.heard.get_mut(index), self.ack_due.get_mut(index))
        else {
            return;
        };
        match *slot {
            // Without a key, the forgetting rule of `incoming` holds here too: a newer
            // incarnation heard of (maybe forged) but silent for `forget_after` no longer
            // keeps the real peer's probes out, so no single frame holds its window shut.
            Some(p)
                if h.incarnation < p.incarnation
                    && (keyed || now.saturating_duration_since(p.at) < forget_after) =>
            {
                return;
            }
            Some(p) if h.incarnation == p.incarnation => {
                if h.seq.saturating_sub(p.seq) > acks.window_frames as Seq {
                    // More than an honest sender ever has unacknowledged: forged.
                    self.stats.dropped_from(None, DropReason::Malformed);
                    return;
                }
                if h.seq < due.acked && !written_off {
                    // Below what this node acknowledged already: the peer has moved on, so
                    // this is an old probe played again (the peer's own probes name at
                    // least the frames whose acknowledgement it still waits for).
                    self.stats
                        .dropped_from(Some(h.sender), DropReason::Replayed);
                    return;
                }
                let settled = due.settled >= p.seq;
                if h.seq > p.seq && (settled || written_off) {
                    if !written_off {
                        self.stats.lost_in_transit(h.sender, h.seq - p.seq);
                    }
                    *slot = Some(Heard {
                        seq: h.seq,
                        at: now,
                        ..p
                    });
                    if settled {
                        due.settled = h.seq;
                    }
                }
            }
            _ => {
                *slot = Some(Heard {
                    incarnation: h.incarnation,
                    first: h.seq.saturating_add(1),
                    seq: h.seq,
                    at: now,
                });
                *due = AckDue {
                    settled: h.seq,
                    ..AckDue::default()
                };
                self.stats.seen_incarnation(h.sender, h.incarnation);
            }
        }
        due.acked = due.acked.min(due.settled.saturating_sub(1));
        // Not older than the newest heard (those returned above): the peer is alive.
        let _ = self.heard_from(index, h.incarnation, now);
    }

    /// A frame from `incarnation` of the peer at `index` was accepted: for peer events,
    /// the peer can reach this node, and a newer incarnation has restarted. An incarnation
    /// older than the newest heard changes nothing (returns `false`), unless, unkeyed, that
    /// one was silent for `forget_after` (the forgetting rule of [`Router::incoming`]).
    fn heard_from(&mut self, index: usize, incarnation: Incarnation, now: Instant) -> bool {
        let keyed = self.sealer.keyed();
        let forget_after = self.forget_after;
        let Some(life) = self.life.get_mut(index) else {
            return false;
        };
        if life.heard && life.incarnation == Some(incarnation) {
            // The fast path, for every message: nothing new.
            life.at = Some(now);
            return true;
        }
        if let (Some(known), Some(at)) = (life.incarnation, life.at)
            && incarnation < known
            && (keyed || now.saturating_duration_since(at) < forget_after)
        {
            return false;
        }
        let pid = self.all.get(index).copied().unwrap_or_default();
        if life.incarnation.is_some_and(|known| known != incarnation) {
            // A restart (or, unkeyed, a lower incarnation heard once the newer one was
            // forgotten: a node that lost its catalog). It has not heard this node yet.
            life.confirmed = false;
            self.events.emit(Event::Restarted { pid, incarnation });
        }
        life.incarnation = Some(incarnation);
        life.at = Some(now);
        life.heard = true;
        self.update_up(index);
        true
    }

    /// Tells `Up` or `Down` for the peer at `index` if that changed: up is this node's
    /// connection to it live and a frame heard from it since.
    fn update_up(&mut self, index: usize) {
        let (Some(life), Some(&pid)) = (self.life.get_mut(index), self.all.get(index)) else {
            return;
        };
        let up = life.outbound && life.heard;
        if up != life.up {
            life.up = up;
            self.events
                .emit(if up { Event::Up(pid) } else { Event::Down(pid) });
            if up && self.table.changed() {
                // Up with a peer: tell it every change known here (it may have missed some).
                let records = self.table.records();
                self.mail_records(pid, &records);
            }
        }
    }

    /// Applies a greeting from the peer at `index` (header `h`, payload `bytes`, already
    /// authenticated; see [`Destination::Hello`]): the peer's incarnation can reach this
    /// node; unless the greeting is itself an answer, an answer is due (if this node can
    /// reach it), which tells the peer it was heard. From an incarnation older than the
    /// newest heard it is ignored, unless, unkeyed, that one was silent for
    /// `forget_after` (the forgetting rule of [`Router::incoming`]).
    fn on_hello(&mut self, index: usize, h: &Header, bytes: &[u8], now: Instant) {
        let Ok((heard_you, answer)) = wire::decode_payload::<(bool, bool)>(bytes) else {
            self.drop_hostile(DropReason::Malformed);
            return;
        };
        if !self.heard_from(index, h.incarnation, now) {
            return;
        }
        let Some(life) = self.life.get_mut(index) else {
            return;
        };
        if heard_you {
            life.confirmed = true;
        }
        if !answer && life.outbound {
            life.reply = true;
            self.greet_due = true;
        }
    }

    /// This node's connections changed to `connected`: peers newly connected are greeted
    /// (through `send`), peers no longer connected are `Down` if they were `Up`; either way
    /// a peer must be heard from again (a frame after the change) before it is `Up`.
    pub(crate) fn connectivity(
        &mut self,
        connected: &crate::transport::PeerSet,
        mut send: impl FnMut(Pid, Bytes) -> Result<(), DropReason>,
    ) {
        for index in 0..self.all.len() {
            let (Some(&peer), Some(life)) = (self.all.get(index), self.life.get_mut(index)) else {
                continue;
            };
            if peer == self.pid {
                continue;
            }
            let now = connected.contains(&peer);
            if now == life.outbound {
                continue;
            }
            life.outbound = now;
            // Up needs a frame from the peer since this connection came up: what was heard
            // before may be from an incarnation that died meanwhile.
            life.heard = false;
            if now {
                let greeting = (false, false);
                life.reply = false;
                if let Some(frame) = self.control_frame(peer, Destination::Hello, 0, &greeting) {
                    let _ = send(peer, frame);
                }
            } else {
                life.confirmed = false;
                life.reply = false;
            }
            self.update_up(index);
        }
    }

    /// Membership: the table's records.
    pub(crate) fn members(&self) -> Vec<Member> {
        self.table.records()
    }

    /// Membership: a change made at this node (`address` `None`: remove `pid`). Applied
    /// here and mailed to every member. Returns what it changed.
    pub(crate) fn change_membership(&mut self, pid: Pid, address: Option<String>) -> Applied {
        let present = address.is_some();
        let address = address
            .or_else(|| self.table.get(pid).map(|m| m.address.clone()))
            .unwrap_or_default();
        let (record, applied) = self.table.change(self.pid, pid, address, present);
        let applied = applied.unwrap_or(Applied::Same);
        self.apply(&record, applied);
        self.spread(std::slice::from_ref(&record), None);
        if !present && pid != self.pid {
            // The removed node learns it, if it can still be reached.
            self.mail_records(pid, &[record]);
        }
        applied
    }

    /// Every heartbeat: to each peer this node can reach but has not heard since, a join
    /// request marked automatic (`epoch` 1): a peer that missed this node's joining (it
    /// was down, or the notice was lost) drops its frames as `unknown_sender` and would
    /// never hear of it otherwise. A peer that knows this node changes nothing; one that
    /// holds it removed does not add it back (it sends its records instead, so that this
    /// node learns it was removed). Only while this node's own record says it is a member.
    fn request_unheard(&mut self) {
        if !self.table.changed() {
            // Only the config's members: every node knows them.
            return;
        }
        let Some(me) = self.table.get(self.pid).filter(|m| m.present) else {
            return;
        };
        let unheard: Vec<Pid> = self
            .all
            .iter()
            .zip(&self.life)
            .filter(|(p, l)| **p != self.pid && l.outbound && !l.heard)
            .map(|(p, _)| *p)
            .collect();
        let request = [Member {
            epoch: AUTOMATIC,
            origin: self.pid,
            ..me
        }];
        for peer in unheard {
            self.mail_records(peer, &request);
        }
    }

    /// Membership: a request about this node itself (join: present at `address`; leave:
    /// absent), mailed to every pid in `to`, to be made by them.
    pub(crate) fn request_membership(&mut self, to: &[Pid], address: String, present: bool) {
        let request = [Member {
            pid: self.pid,
            address,
            present,
            epoch: 0,
            origin: self.pid,
        }];
        for &peer in to {
            if peer != self.pid {
                self.mail_records(peer, &request);
            }
        }
    }

    /// Makes the transport changes (membership) waiting, then sends the control frames
    /// waiting, in order. Cheap when there are none (every batch calls it).
    pub(crate) fn flush_membership(&mut self, transport: &dyn crate::Transport) {
        if self.actions.is_empty() && self.mail.is_empty() {
            return;
        }
        // Peers added first (frames to them follow), peers removed last (the notice of
        // their removal goes before).
        let actions = std::mem::take(&mut self.actions);
        let (adds, removes): (Vec<_>, Vec<_>) = actions
            .iter()
            .partition(|a| matches!(a, TransportAction::Add(..)));
        let me = self.pid;
        let act = |action: &TransportAction| {
            let (pid, result) = match action {
                TransportAction::Add(pid, address) => (*pid, transport.add_peer(*pid, address)),
                TransportAction::Remove(pid) => (*pid, transport.remove_peer(*pid)),
            };
            if let Err(e) = result {
                tracing::warn!(pid = me, peer = pid, ?action, "membership: {e}");
            }
        };
        adds.into_iter().for_each(act);
        if !actions.is_empty() {
            // A peer added may be connected already (the connection set did not change).
            let connected = transport.connected().borrow().clone();
            self.connectivity(&connected, |to, frame| transport.send(to, frame));
        }
        for (to, frame) in std::mem::take(&mut self.mail) {
            // A refused one is sent again at the next heartbeat.
            if transport.send(to, frame.clone()).is_err() {
                if self.retry.len() >= MAIL_RETRY {
                    self.retry.pop_front();
                }
                self.retry.push_back((to, frame));
            }
        }
        removes.into_iter().for_each(act);
    }

    fn mail_records(&mut self, to: Pid, records: &[Member]) {
        if let Some(frame) = self.control_frame(to, Destination::Membership, 0, &records) {
            self.mail.push((to, frame));
        }
    }

    /// Mails `records` to every member but this node and `except`.
    fn spread(&mut self, records: &[Member], except: Option<Pid>) {
        let to: Vec<Pid> = self
            .all
            .iter()
            .copied()
            .filter(|p| *p != self.pid && Some(*p) != except)
            .collect();
        for peer in to {
            self.mail_records(peer, records);
        }
    }

    /// Makes what `applied` says of `record` true here: routing, counters, the
    /// transport's connections (queued as actions), events.
    fn apply(&mut self, record: &Member, applied: Applied) {
        let pid = record.pid;
        match applied {
            Applied::Same => {}
            _ if pid == self.pid => {
                if applied == Applied::Left {
                    // This node was removed: its peers drop what it sends from now on.
                    self.events.emit(Event::Left(pid));
                }
            }
            Applied::Joined => {
                self.insert_member(pid);
                self.actions
                    .push(TransportAction::Add(pid, record.address.clone()));
                self.events.emit(Event::Joined(pid));
            }
            Applied::Left => {
                self.delete_member(pid);
                self.actions.push(TransportAction::Remove(pid));
                self.events.emit(Event::Left(pid));
            }
            Applied::Moved => {
                // A transport moves a peer it has to the new address.
                self.actions
                    .push(TransportAction::Add(pid, record.address.clone()));
            }
        }
        self.events.set_members(self.table.clone());
    }

    fn insert_member(&mut self, pid: Pid) {
        let Err(i) = self.all.binary_search(&pid) else {
            return;
        };
        self.all.insert(i, pid);
        self.next_seq.insert(i, 1);
        self.heard.insert(i, None);
        self.ack_due.insert(i, AckDue::default());
        self.unacked.insert(i, Unacked::default());
        self.absent.insert(i, false);
        self.oldest_unacked.insert(i, None);
        self.written_off.insert(i, None);
        self.life.insert(i, Life::default());
        self.stats.add_peer(pid);
    }

    fn delete_member(&mut self, pid: Pid) {
        let Ok(i) = self.all.binary_search(&pid) else {
            return;
        };
        self.all.remove(i);
        self.next_seq.remove(i);
        self.heard.remove(i);
        self.ack_due.remove(i);
        let unacked = self.unacked.remove(i);
        if !unacked.frames.is_empty() {
            self.departed.push((pid, unacked));
        }
        self.absent.remove(i);
        self.oldest_unacked.remove(i);
        self.written_off.remove(i);
        let life = self.life.remove(i);
        if life.up {
            self.events.up_removed(pid);
        }
    }

    /// Applies a membership frame (see [`crate::membership`]): from a member, records to
    /// merge (those new here are spread on); from anyone, a request about its sender
    /// itself, made here as a change of this node's. With a key, only a frame sealed
    /// under it counts.
    fn on_membership(&mut self, h: &Header, bytes: Bytes) {
        if h.to != self.pid || h.sender == self.pid {
            self.drop_hostile(DropReason::Malformed);
            return;
        }
        let Some(bytes) = self.sealer.open(bytes, h) else {
            self.drop_hostile(DropReason::Unauthenticated);
            return;
        };
        let Ok(records) = wire::decode_payload::<Vec<Member>>(&bytes) else {
            self.drop_hostile(DropReason::Malformed);
            return;
        };
        let member = self.all.binary_search(&h.sender).is_ok();
        let request = match records.as_slice() {
            [r] if r.pid == h.sender && r.origin == h.sender && r.epoch <= AUTOMATIC => Some(r),
            _ => None,
        };
        if let Some(r) = request {
            let held = self.table.get(r.pid);
            if r.epoch == AUTOMATIC && held.as_ref().is_some_and(|m| !m.present) {
                // It missed its removal: tell it, rather than add it back.
                let records = self.table.records();
                self.mail_records(r.pid, &records);
                return;
            }
            let differs = held.is_none_or(|m| m.present != r.present || m.address != r.address);
            if differs && (r.present || member) {
                if r.present && crate::config::split_host_port(&r.address).is_none() {
                    self.drop_hostile(DropReason::Malformed);
                    return;
                }
                tracing::info!(
                    pid = self.pid,
                    peer = r.pid,
                    join = r.present,
                    "membership request"
                );
                self.change_membership(r.pid, r.present.then(|| r.address.clone()));
            }
            if r.present && self.table.changed() {
                // Whatever it knew: the whole table, so that it learns the members.
                let records = self.table.records();
                self.mail_records(r.pid, &records);
            }
            return;
        }
        if !member {
            self.drop_hostile(DropReason::UnknownSender);
            return;
        }
        let mut new = Vec::new();
        for record in records {
            if record.pid < 0
                || (record.present && crate::config::split_host_port(&record.address).is_none())
            {
                self.drop_hostile(DropReason::Malformed);
                return;
            }
            if let Some(applied) = self.table.merge(record.clone()) {
                self.apply(&record, applied);
                new.push(record);
            }
        }
        if !new.is_empty() {
            self.spread(&new, Some(h.sender));
        }
    }

    /// Greets, through `send`, every peer owed a greeting back, and, with `all` (once per
    /// heartbeat interval), every connected peer that has not said it heard this node: a
    /// lost greeting is sent again.
    pub(crate) fn greet(
        &mut self,
        all: bool,
        mut send: impl FnMut(Pid, Bytes) -> Result<(), DropReason>,
    ) {
        if !all && !std::mem::take(&mut self.greet_due) {
            return;
        }
        if all {
            // Membership frames refused since the last heartbeat: again (mailed in order,
            // before what this call adds).
            let retry: Vec<_> = self.retry.drain(..).collect();
            self.mail.splice(0..0, retry);
            self.request_unheard();
        }
        for index in 0..self.all.len() {
            let (Some(&peer), Some(life)) = (self.all.get(index), self.life.get_mut(index)) else {
                continue;
            };
            let due = life.reply || (all && !life.confirmed);
            if peer == self.pid || !life.outbound || !due {
                continue;
            }
            // An answer when one is due (it is never answered); a greeting otherwise.
            let greeting = (life.heard, std::mem::take(&mut life.reply));
            if let Some(frame) = self.control_frame(peer, Destination::Hello, 0, &greeting) {
                let _ = send(peer, frame);
            }
        }
    }

    /// Acknowledges what arrived from each peer, through `send`: to every peer owed
    /// enough (a quarter of a window) or, with `all`, to every peer owed anything. A
    /// refused acknowledgement is tried again next time.
    pub(crate) fn acknowledge(
        &mut self,
        all: bool,
        mut send: impl FnMut(Pid, Bytes) -> Result<(), DropReason>,
    ) {
        let Some(acks) = self.acks else {
            return;
        };
        if !all && !std::mem::take(&mut self.ack_ready) {
            return;
        }
        for index in 0..self.all.len() {
            let (Some(Some(heard)), Some(due), Some(&peer)) = (
                self.heard.get(index),
                self.ack_due.get(index).copied(),
                self.all.get(index),
            ) else {
                continue;
            };
            let owed = due.settled > due.acked;
            if !owed || !(all || acks.enough(&due)) {
                continue;
            }
            let payload = (heard.incarnation, heard.first, due.settled);
            let Some(frame) = self.control_frame(peer, Destination::Ack, 0, &payload) else {
                continue;
            };
            let acked = due.settled;
            if send(peer, frame).is_ok()
                && let Some(due) = self.ack_due.get_mut(index)
            {
                *due = AckDue {
                    acked,
                    settled: acked,
                    frames: 0,
                    bytes: 0,
                };
            }
        }
    }

    /// Counts as `unconfirmed` the unacknowledged frames to every peer that is not in
    /// `connected` and was not at the previous call either: the transport has had no live
    /// connection to it for a while, so they will not be acknowledged. (The one call of
    /// grace lets the transport report, as discarded, frames it dropped when it noticed.)
    /// Called once per heartbeat interval.
    pub(crate) fn write_off(&mut self, connected: &crate::transport::PeerSet) {
        for (pid, mut unacked) in std::mem::take(&mut self.departed) {
            // Removed: never acknowledged now.
            self.stats.unconfirmed(pid, unacked.write_off());
            self.stats.unacknowledged(pid, 0);
        }
        for (((pid, unacked), was_absent), written_off) in self
            .all
            .iter()
            .zip(self.unacked.iter_mut())
            .zip(self.absent.iter_mut())
            .zip(self.written_off.iter_mut())
        {
            let absent = !connected.contains(pid);
            if absent && *was_absent && !unacked.frames.is_empty() {
                *written_off = Some(unacked.first + unacked.frames.len() as Seq - 1);
                let n = unacked.write_off();
                self.stats.unconfirmed(*pid, n);
                self.stats.unacknowledged(*pid, 0);
            }
            *was_absent = absent;
        }
    }

    /// A control frame (`destination` is [`Destination::Ack`] or [`Destination::Probe`])
    /// to `to`, carrying `seq` and `payload`, sealed like any frame: with a key, a forged
    /// one changes nothing.
    fn control_frame<T: Serialize>(
        &mut self,
        to: Pid,
        destination: Destination,
        seq: Seq,
        payload: &T,
    ) -> Option<Bytes> {
        self.control.serialize(payload).ok()?;
        let header = self.sealer.mark(Header {
            sender: self.pid,
            to,
            destination,
            incarnation: self.incarnation,
            seq,
            ..Header::default()
        });
        let sealer = &mut self.sealer;
        Some(self.control.frame(&header, |covered| sealer.seal(covered)))
    }

    /// Probes, through `send`, every peer in `connected` that has acknowledged nothing
    /// since the previous call while frames to it waited for acknowledgement (see
    /// [`Destination::Probe`] and [`Router::on_probe`]): without it, frames lost on a
    /// connection that broke and came back, with nothing sent after them, would be counted
    /// nowhere, and a lost acknowledgement would hold the peer's window forever. Called
    /// once per heartbeat interval; a refused probe is sent at the next call.
    pub(crate) fn probe_silent(
        &mut self,
        connected: &crate::transport::PeerSet,
        mut send: impl FnMut(Pid, Bytes) -> Result<(), DropReason>,
    ) {
        if self.acks.is_none() {
            return;
        }
        for index in 0..self.all.len() {
            let (Some(&peer), Some(unacked), Some(oldest)) = (
                self.all.get(index),
                self.unacked.get(index),
                self.oldest_unacked.get_mut(index),
            ) else {
                continue;
            };
            let now_oldest = (!unacked.frames.is_empty()).then_some(unacked.first);
            let silent = now_oldest.is_some() && *oldest == now_oldest;
            *oldest = now_oldest;
            if !silent || !connected.contains(&peer) {
                continue;
            }
            let highest = unacked.first + unacked.frames.len() as Seq - 1;
            let Some(frame) = self.control_frame(peer, Destination::Probe, highest, &false) else {
                continue;
            };
            if send(peer, frame).is_ok() {
                tracing::debug!(pid = self.pid, peer, highest, "probed a silent peer");
            }
        }
    }

    /// The transport discarded `count` frames it had accepted for `peer` (the newest
    /// ones): counted as dropped with `reason`, and no longer awaited.
    pub(crate) fn discarded(&mut self, peer: Pid, reason: DropReason, count: u64) {
        self.stats.dropped_to(peer, reason, count);
        let unacked = match self.all.binary_search(&peer) {
            Ok(index) => self.unacked.get_mut(index),
            Err(_) => self
                .departed
                .iter_mut()
                .find(|(p, _)| *p == peer)
                .map(|(_, u)| u),
        };
        if let Some(unacked) = unacked {
            for _ in 0..count {
                if !unacked.pop_newest() {
                    break;
                }
                // Room in the window: senders waiting for it may look again.
                self.credited = true;
            }
            self.stats.unacknowledged(peer, unacked.frames.len());
        }
    }

    /// Frames to any peer that the transport accepted and that are not yet acknowledged.
    #[cfg(test)]
    pub(crate) fn unacked_frames(&self) -> usize {
        self.unacked.iter().map(|u| u.frames.len()).sum()
    }

    /// Whether an acknowledgement freed room in a window since the last call: senders
    /// waiting for room should look again.
    pub(crate) fn take_credit(&mut self) -> bool {
        std::mem::take(&mut self.credited)
    }

    pub(crate) fn stats_arc(&self) -> &Arc<StatsCells> {
        &self.stats
    }

    #[cfg(test)]
    pub(crate) fn stats(&self) -> &StatsCells {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ClusterKey;
    use crate::stats::Stats;

    /// A `forget_after` no test reaches, but the one about it.
    const LONG: Duration = Duration::from_secs(3600);

    fn router(pid: Pid) -> Router {
        let all = vec![1, 2, 3, 4];
        Router::new(
            pid,
            5,
            all.clone(),
            1024,
            Arc::new(StatsCells::new(all)),
            Sealer::None,
            LONG,
        )
    }

    fn snapshot(r: &Router) -> Stats {
        r.stats().snapshot()
    }

    /// A message that counts how often it is serialized.
    struct Counted<'a>(&'a std::cell::Cell<usize>);

    impl Serialize for Counted<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            self.0.set(self.0.get() + 1);
            s.serialize_str("hi")
        }
    }

    #[test]
    fn broadcast_serializes_once_and_skips_the_sender() {
        let mut r = router(2);
        let mut sent = Vec::new();
        let count = std::cell::Cell::new(0);
        let local = r.outgoing(Envelope::new(BROADCAST, 9, Counted(&count)), |to, f| {
            sent.push((to, f));
            Ok(())
        });
        assert!(local.is_none());
        assert_eq!(
            count.get(),
            1,
            "the message is serialized once for all copies"
        );
        assert_eq!(
            sent.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
        // Each copy names its receiver; the payload is the same bytes in each.
        for (to, f) in &sent {
            let frame = wire::Frame::decode(f.clone()).unwrap();
            assert_eq!(frame.header.to, *to);
            assert_eq!(frame.header.destination, Destination::Broadcast);
            assert_eq!(frame.header.seq, 1);
            assert_eq!(frame.message::<String>().unwrap(), "hi");
        }
        assert_eq!(snapshot(&r).sent, 3);
    }

    /// Sequence numbers count the frames each receiver's transport accepted: a refused
    /// frame gives its number back, so a receiver's gap is a loss after acceptance.
    #[test]
    fn sequence_numbers_are_per_receiver_and_refusals_give_theirs_back() {
        let mut r = router(2);
        let mut seqs = Vec::new();
        let mut refuse = false;
        for (to, refused) in [
            (1, false),
            (1, true),
            (1, false),
            (3, false),
            (BROADCAST, false),
        ] {
            refuse = refused;
            r.outgoing(Envelope::new(to, 1, ()), |peer, f| {
                if refuse {
                    return Err(DropReason::Backpressure);
                }
                seqs.push((peer, wire::Frame::decode(f).unwrap().header.seq));
                Ok(())
            });
        }
        assert!(!refuse);
        assert_eq!(seqs, [(1, 1), (1, 2), (3, 1), (1, 3), (3, 2), (4, 1)]);
    }

    fn frame_from(sender: Pid, incarnation: Incarnation, seq: Seq, to: Pid) -> Bytes {
        let h = Header {
            seq,
            ..Header::new(sender, to, incarnation, seq as i64)
        };
        wire::encode(&h, "m").unwrap()
    }

    /// The replay guard: a frame not above the highest sequence number seen from the same
    /// incarnation is dropped as `replayed`; a gap is counted as lost in transit, not as a
    /// drop; a new incarnation starts the count afresh.
    #[test]
    fn replays_are_dropped_and_gaps_counted_as_lost_in_transit() {
        let mut r = router(1);
        let deliver = |r: &mut Router, f: Bytes| r.incoming::<String>(f, Instant::now()).is_some();
        assert!(
            deliver(&mut r, frame_from(3, 5, 4, 1)),
            "the first frame starts the count"
        );
        assert!(!deliver(&mut r, frame_from(3, 5, 4, 1)), "a duplicate");
        assert!(deliver(&mut r, frame_from(3, 5, 5, 1)));
        assert!(
            deliver(&mut r, frame_from(3, 5, 8, 1)),
            "after a gap of two"
        );
        assert!(
            !deliver(&mut r, frame_from(3, 5, 6, 1)),
            "too late: replayed"
        );
        assert!(deliver(&mut r, frame_from(3, 6, 1, 1)), "a new incarnation");
        assert!(
            !deliver(&mut r, frame_from(3, 5, 9, 1)),
            "the old one is stale"
        );
        assert!(
            deliver(&mut r, frame_from(4, 1, 1, 1)),
            "other senders are apart"
        );
        // A copy for another node is refused: its numbers are that node's.
        assert!(!deliver(&mut r, frame_from(3, 6, 2, 2)));
        assert!(deliver(&mut r, frame_from(3, 6, 2, 1)));
        let s = snapshot(&r);
        assert_eq!(s.peers[&3].dropped_from.get(DropReason::Replayed), 2);
        assert_eq!(
            s.peers[&3].dropped_from.get(DropReason::StaleIncarnation),
            1
        );
        assert_eq!(s.dropped_incoming.get(DropReason::Malformed), 1);
        assert_eq!((s.peers[&3].lost_in_transit, s.lost_in_transit), (2, 2));
        assert_eq!(
            s.dropped_incoming.total(),
            4,
            "lost_in_transit is not a drop"
        );
        assert_eq!(s.peers[&3].incarnation, Some(6));
    }

    /// A router that acknowledges, with a window of 4 frames and `bytes` bytes.
    fn acking_router(pid: Pid, incarnation: Incarnation, bytes: usize) -> Router {
        let all = vec![1, 2, 3, 4];
        let stats = Arc::new(StatsCells::new(all.clone()));
        Router::new(pid, incarnation, all, 1024, stats, Sealer::None, LONG).with_acks(Some(
            AckOptions {
                window_frames: 4,
                window_bytes: bytes,
            },
        ))
    }

    /// Sends `n` messages from `from` to `to`, returning the frames the transport took.
    fn send_n(from: &mut Router, to: Pid, n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        for _ in 0..n {
            from.outgoing(Envelope::new(to, 1, "m".to_string()), |_, f| {
                out.push(f);
                Ok(())
            });
        }
        out
    }

    /// What `r` acknowledges now, to whom.
    fn acks_of(r: &mut Router, all: bool) -> Vec<(Pid, Bytes)> {
        let mut out = Vec::new();
        r.acknowledge(all, |to, f| {
            out.push((to, f));
            Ok(())
        });
        out
    }

    /// C6 and C7 on real networks: what a peer has not acknowledged is bounded (frames and
    /// bytes; beyond, `backpressure`), acknowledgements free the window, and what a peer
    /// never acknowledged before going down is counted `unconfirmed`, once.
    #[test]
    fn unacknowledged_frames_are_bounded_and_counted_unconfirmed_when_the_peer_goes() {
        let mut a = acking_router(1, 5, 1 << 20);
        let mut b = acking_router(2, 9, 1 << 20);
        let frames = send_n(&mut a, 2, 6);
        assert_eq!(frames.len(), 4, "a window of 4 frames");
        assert_eq!(
            snapshot(&a).peers[&2]
                .dropped_to
                .get(DropReason::Backpressure),
            2
        );
        for f in &frames[..3] {
            assert!(b.incoming::<String>(f.clone(), Instant::now()).is_some());
        }
        // A quarter of a 4-frame window is one frame: an acknowledgement is due.
        let acks = acks_of(&mut b, false);
        assert_eq!(acks.len(), 1);
        let (to, ack) = acks.into_iter().next().unwrap();
        assert_eq!(to, 1);
        assert!(a.incoming::<String>(ack, Instant::now()).is_none());
        assert_eq!(a.unacked_frames(), 1, "frames 1..=3 acknowledged, 4 not");
        assert!(
            acks_of(&mut b, true).is_empty(),
            "nothing new to acknowledge"
        );
        assert_eq!(send_n(&mut a, 2, 5).len(), 3, "room for three more");
        let connected: crate::transport::PeerSet = [1, 3, 4].into();
        a.write_off(&connected);
        assert_eq!(snapshot(&a).unconfirmed, 0, "one interval of grace");
        a.write_off(&connected);
        let s = snapshot(&a);
        assert_eq!((s.peers[&2].unconfirmed, s.unconfirmed), (4, 4));
        a.write_off(&connected);
        assert_eq!(snapshot(&a).unconfirmed, 4, "counted once");
        assert_eq!(a.unacked_frames(), 0);
        // Acknowledgements are not messages: nothing was delivered or dropped for them.
        let s = snapshot(&a);
        assert_eq!((s.delivered, s.dropped_incoming.total()), (0, 0));
    }

    /// What `r` probes now (see [`Router::probe_silent`]), with `connected` up.
    fn probes_of(r: &mut Router, connected: &[Pid]) -> Vec<(Pid, Bytes)> {
        let connected: crate::transport::PeerSet = connected.iter().copied().collect();
        let mut out = Vec::new();
        r.probe_silent(&connected, |to, f| {
            out.push((to, f));
            Ok(())
        });
        out
    }

    /// Delivers every acknowledgement `from` owes to `to`.
    fn ack_into(from: &mut Router, to: &mut Router) {
        for (_, ack) in acks_of(from, true) {
            assert!(to.incoming::<String>(ack, Instant::now()).is_none());
        }
    }

    /// C7 on real sockets: frames lost on a connection that broke and came back, with no
    /// later frame to show the gap, are counted (`lost_in_transit` at the receiver) once
    /// the sender, acknowledged nothing for an interval, probes; the window is free again.
    #[test]
    fn a_probe_counts_frames_lost_with_nothing_after_them() {
        let mut a = acking_router(1, 5, 1 << 20);
        let mut b = acking_router(2, 9, 1 << 20);
        let frames = send_n(&mut a, 2, 4);
        assert!(
            b.incoming::<String>(frames[0].clone(), Instant::now())
                .is_some()
        );
        ack_into(&mut b, &mut a);
        assert_eq!(a.unacked_frames(), 3, "frames 2..=4 lost on the way");
        assert!(
            probes_of(&mut a, &[2]).is_empty(),
            "the first look only notes the oldest"
        );
        let probes = probes_of(&mut a, &[2]);
        assert_eq!(
            probes.len(),
            1,
            "nothing acknowledged for an interval: probed"
        );
        let (to, probe) = probes.into_iter().next().unwrap();
        assert_eq!(to, 2);
        assert!(crate::wire::is_control(&probe));
        assert!(b.incoming::<String>(probe, Instant::now()).is_none());
        let s = snapshot(&b);
        assert_eq!((s.peers[&1].lost_in_transit, s.delivered), (3, 0));
        assert_eq!(s.dropped_incoming.total(), 0, "a probe is not a message");
        ack_into(&mut b, &mut a);
        assert_eq!(a.unacked_frames(), 0, "the lost frames are settled");
        assert_eq!(snapshot(&a).unconfirmed, 0);
        // The next frame follows on: no gap, no replay.
        let next = send_n(&mut a, 2, 1);
        assert!(
            b.incoming::<String>(next[0].clone(), Instant::now())
                .is_some()
        );
        assert_eq!(snapshot(&b).peers[&1].lost_in_transit, 3);
        assert!(probes_of(&mut a, &[2]).is_empty());
    }

    /// A probe to a peer that is not connected is not sent (its frames are written off
    /// instead); a peer whose acknowledgements move on is not probed; a probe to a peer
    /// whose only loss is its acknowledgement makes it acknowledge again, counting no loss.
    #[test]
    fn probes_go_only_to_silent_connected_peers_and_recover_a_lost_acknowledgement() {
        let mut a = acking_router(1, 5, 1 << 20);
        let mut b = acking_router(2, 9, 1 << 20);
        for f in send_n(&mut a, 2, 2) {
            assert!(b.incoming::<String>(f, Instant::now()).is_some());
        }
        send_n(&mut a, 3, 2);
        assert!(probes_of(&mut a, &[2, 3]).is_empty());
        // Peer 2's acknowledgement is lost on the way; peer 3 is down.
        assert_eq!(acks_of(&mut b, true).len(), 1);
        let probes = probes_of(&mut a, &[2]);
        assert_eq!(probes.iter().map(|(to, _)| *to).collect::<Vec<_>>(), [2]);
        assert!(acks_of(&mut b, true).is_empty(), "acknowledged already");
        for (_, probe) in probes {
            assert!(b.incoming::<String>(probe, Instant::now()).is_none());
        }
        ack_into(&mut b, &mut a);
        assert_eq!(
            a.unacked_frames(),
            2,
            "peer 2's frames confirmed; peer 3's wait"
        );
        assert_eq!(snapshot(&b).peers[&1].lost_in_transit, 0);
        // Acknowledged progress: not probed.
        let frames = send_n(&mut a, 2, 1);
        assert!(probes_of(&mut a, &[2]).is_empty());
        assert!(
            b.incoming::<String>(frames[0].clone(), Instant::now())
                .is_some()
        );
        ack_into(&mut b, &mut a);
        assert!(probes_of(&mut a, &[2]).is_empty());
    }

    /// While frames that arrived wait for the inbox (not settled), a probe changes nothing;
    /// a probe of an incarnation never heard makes the acknowledgement name the first frame
    /// after it, so the sender counts the rest `unconfirmed`; a probe of an older
    /// incarnation is ignored.
    #[test]
    fn probes_wait_for_the_backlog_and_start_a_new_incarnation() {
        let mut a = acking_router(1, 5, 1 << 20);
        let mut b = acking_router(2, 9, 1 << 20);
        let frames = send_n(&mut a, 2, 3);
        let (_, arrival) = b
            .incoming_arrival::<String>(frames[0].clone(), Instant::now())
            .unwrap();
        probes_of(&mut a, &[2]);
        for (_, probe) in probes_of(&mut a, &[2]) {
            assert!(b.incoming::<String>(probe, Instant::now()).is_none());
        }
        assert_eq!(
            snapshot(&b).peers[&1].lost_in_transit,
            0,
            "frame 1 not settled"
        );
        assert!(acks_of(&mut b, true).is_empty());
        b.settled(&arrival);
        for (_, probe) in probes_of(&mut a, &[2]) {
            assert!(b.incoming::<String>(probe, Instant::now()).is_none());
        }
        assert_eq!(snapshot(&b).peers[&1].lost_in_transit, 2);
        ack_into(&mut b, &mut a);
        assert_eq!(a.unacked_frames(), 0);

        // Node 2 restarted (incarnation 10) and lost node 1's frames 4 and 5.
        let mut b = acking_router(2, 10, 1 << 20);
        send_n(&mut a, 2, 2);
        probes_of(&mut a, &[2]);
        let probes = probes_of(&mut a, &[2]);
        let mut older = acking_router(1, 4, 1 << 20);
        older.next_seq[1] = 100;
        send_n(&mut older, 2, 1);
        probes_of(&mut older, &[2]);
        for (_, probe) in probes.into_iter().chain(probes_of(&mut older, &[2])) {
            assert!(b.incoming::<String>(probe, Instant::now()).is_none());
        }
        assert_eq!(snapshot(&b).peers[&1].lost_in_transit, 0);
        ack_into(&mut b, &mut a);
        let s = snapshot(&a);
        assert_eq!((s.peers[&2].unconfirmed, a.unacked_frames()), (2, 0));
        let next = send_n(&mut a, 2, 1);
        assert!(
            b.incoming::<String>(next[0].clone(), Instant::now())
                .is_some()
        );
        assert_eq!(snapshot(&b).peers[&1].lost_in_transit, 0);
    }

    /// Frames written off as `unconfirmed` (the peer was found gone) are announced before
    /// the next frame to the peer, so that the receiver does not count them a second time
    /// as a gap; a notice that meets a refusing transport is sent with a later frame.
    #[test]
    fn frames_written_off_are_not_counted_again_as_lost_in_transit() {
        let mut a = acking_router(1, 5, 1 << 20);
        let mut b = acking_router(2, 9, 1 << 20);
        let first = send_n(&mut a, 2, 1);
        assert!(
            b.incoming::<String>(first[0].clone(), Instant::now())
                .is_some()
        );
        ack_into(&mut b, &mut a);
        send_n(&mut a, 2, 3); // lost on the way
        let gone: crate::transport::PeerSet = [3, 4].into();
        a.write_off(&gone);
        a.write_off(&gone);
        assert_eq!(snapshot(&a).peers[&2].unconfirmed, 3);
        // Back: the first send after carries the notice first, on the same queue.
        a.outgoing(Envelope::new(2, 1, "refused".to_string()), |_, _| {
            Err(DropReason::Unreachable)
        });
        let frames = send_n(&mut a, 2, 1);
        assert_eq!(frames.len(), 2, "the notice, then the message");
        assert!(crate::wire::is_control(&frames[0]));
        assert!(
            b.incoming::<String>(frames[0].clone(), Instant::now())
                .is_none()
        );
        let env = b.incoming::<String>(frames[1].clone(), Instant::now());
        assert!(env.is_some());
        assert_eq!(snapshot(&b).peers[&1].lost_in_transit, 0);
        assert_eq!(send_n(&mut a, 2, 1).len(), 1, "announced once");
        ack_into(&mut b, &mut a);
        assert_eq!(snapshot(&a).peers[&2].unconfirmed, 3, "counted once, there");
    }

    /// A router with a 4-frame window whose unkeyed forgetting rule is `forget`.
    fn forgetting_router(pid: Pid, incarnation: Incarnation, forget: Duration) -> Router {
        let all = vec![1, 2, 3, 4];
        let stats = Arc::new(StatsCells::new(all.clone()));
        Router::new(pid, incarnation, all, 1024, stats, Sealer::None, forget).with_acks(Some(
            AckOptions {
                window_frames: 4,
                window_bytes: 1 << 20,
            },
        ))
    }

    /// C10 without a key: one forged frame (a probe, or a message) claiming pid 1 with the
    /// highest incarnation makes peer 1's frames stale at node 2, so its window fills;
    /// once the forged incarnation has been silent for `forget_after`, peer 1's own probes
    /// get through and its window opens again (found by review: probes ignored the rule).
    #[test]
    fn one_forged_frame_does_not_lock_a_peer_out_for_good() {
        for forge_probe in [false, true] {
            let forget = Duration::from_secs(1);
            let mut a = forgetting_router(1, 5, forget);
            let mut b = forgetting_router(2, 9, forget);
            let t0 = Instant::now();
            for f in send_n(&mut a, 2, 1) {
                assert!(b.incoming::<String>(f, t0).is_some());
            }
            ack_into(&mut b, &mut a);
            assert_eq!(a.unacked_frames(), 0);
            let mut forger = forgetting_router(1, u32::MAX, forget);
            let forged = if forge_probe {
                send_n(&mut forger, 2, 1);
                probes_of(&mut forger, &[2]);
                probes_of(&mut forger, &[2]).pop().unwrap().1
            } else {
                send_n(&mut forger, 2, 1).pop().unwrap()
            };
            let _ = b.incoming::<String>(forged, t0);
            for f in send_n(&mut a, 2, 4) {
                assert!(
                    b.incoming::<String>(f, t0 + Duration::from_millis(100))
                        .is_none()
                );
            }
            probes_of(&mut a, &[2]);
            assert!(send_n(&mut a, 2, 1).is_empty(), "window full");
            for k in 1..=5u64 {
                let t = t0 + Duration::from_secs(10 * k);
                for (_, p) in probes_of(&mut a, &[2]) {
                    assert!(b.incoming::<String>(p, t).is_none());
                }
                for (_, ack) in acks_of(&mut b, true) {
                    let _ = a.incoming::<String>(ack, t);
                }
            }
            assert_eq!(a.unacked_frames(), 0, "forged probe: {forge_probe}");
            let next = send_n(&mut a, 2, 1);
            assert_eq!(next.len(), 1);
            let later = t0 + Duration::from_secs(60);
            assert!(b.incoming::<String>(next[0].clone(), later).is_some());
        }
    }

    /// Without a key, a forged probe of the current incarnation claiming more frames than
    /// any honest window is dropped (`malformed`): it neither inflates `lost_in_transit`
    /// nor makes the real peer's next frames look replayed.
    #[test]
    fn a_probe_beyond_any_window_is_dropped() {
        let mut a = forgetting_router(1, 5, LONG);
        let mut b = forgetting_router(2, 9, LONG);
        let t0 = Instant::now();
        for f in send_n(&mut a, 2, 1) {
            assert!(b.incoming::<String>(f, t0).is_some());
        }
        let mut forger = forgetting_router(1, 5, LONG);
        forger.next_seq[1] = u64::MAX - 1;
        send_n(&mut forger, 2, 1);
        probes_of(&mut forger, &[2]);
        let forged = probes_of(&mut forger, &[2]).pop().unwrap().1;
        assert!(b.incoming::<String>(forged, t0).is_none());
        let s = snapshot(&b);
        assert_eq!(s.peers[&1].lost_in_transit, 0);
        assert_eq!(s.dropped_incoming.get(DropReason::Malformed), 1);
        let next = send_n(&mut a, 2, 1);
        assert!(b.incoming::<String>(next[0].clone(), t0).is_some());
    }

    /// C10: a probe played again after the peer moved on (below what this node has
    /// acknowledged) is dropped as `replayed` and changes nothing.
    #[test]
    fn an_old_probe_played_again_is_dropped_as_replayed() {
        let mut a = acking_router(1, 5, 1 << 20);
        let mut b = acking_router(2, 9, 1 << 20);
        let frames = send_n(&mut a, 2, 2);
        assert!(
            b.incoming::<String>(frames[0].clone(), Instant::now())
                .is_some()
        );
        probes_of(&mut a, &[2]);
        let (_, old) = probes_of(&mut a, &[2]).pop().unwrap();
        assert!(b.incoming::<String>(old.clone(), Instant::now()).is_none());
        ack_into(&mut b, &mut a);
        assert_eq!(a.unacked_frames(), 0);
        for f in send_n(&mut a, 2, 3) {
            assert!(b.incoming::<String>(f, Instant::now()).is_some());
        }
        ack_into(&mut b, &mut a);
        assert!(b.incoming::<String>(old, Instant::now()).is_none());
        let s = snapshot(&b);
        assert_eq!(s.peers[&1].dropped_from.get(DropReason::Replayed), 1);
        assert_eq!(
            s.peers[&1].lost_in_transit, 1,
            "frame 2, counted once by the probe"
        );
        assert!(acks_of(&mut b, true).is_empty(), "nothing due again");
    }

    /// The byte bound: frames fit while their bytes do; an acknowledgement frees them.
    #[test]
    fn the_window_is_bounded_in_bytes_too() {
        let frame_len = send_n(&mut acking_router(1, 5, 1 << 20), 2, 1)[0].len();
        let mut a = acking_router(1, 5, 2 * frame_len);
        let mut b = acking_router(2, 9, 1 << 20);
        let frames = send_n(&mut a, 2, 3);
        assert_eq!(frames.len(), 2);
        for f in frames {
            assert!(b.incoming::<String>(f, Instant::now()).is_some());
        }
        for (_, ack) in acks_of(&mut b, true) {
            assert!(a.incoming::<String>(ack, Instant::now()).is_none());
        }
        assert_eq!(send_n(&mut a, 2, 1).len(), 1);
    }

    /// A peer that restarted between two acknowledgements: what its new incarnation did
    /// not receive (below the first sequence number it acknowledges) is unconfirmed; a
    /// transport's discards are dropped, not unconfirmed; an acknowledgement of an old
    /// incarnation of this node changes nothing.
    #[test]
    fn a_restarted_peer_s_acknowledgement_confirms_only_what_it_received() {
        let mut a = acking_router(1, 5, 1 << 20);
        let frames = send_n(&mut a, 2, 4);
        // Frames 1 and 2 went to an incarnation that died unacknowledged; the new one
        // (incarnation 10) received 3 and 4.
        let mut b = acking_router(2, 10, 1 << 20);
        for f in &frames[2..] {
            assert!(b.incoming::<String>(f.clone(), Instant::now()).is_some());
        }
        let mut old = acking_router(1, 4, 1 << 20);
        for (_, ack) in acks_of(&mut b, true) {
            assert!(
                old.incoming::<String>(ack.clone(), Instant::now())
                    .is_none()
            );
            assert!(a.incoming::<String>(ack, Instant::now()).is_none());
        }
        assert_eq!(snapshot(&old).unconfirmed, 0);
        assert_eq!(old.unacked_frames(), 0);
        assert_eq!(snapshot(&a).peers[&2].unconfirmed, 2);
        assert_eq!(a.unacked_frames(), 0);
        send_n(&mut a, 3, 3);
        a.discarded(3, DropReason::Unreachable, 2);
        assert_eq!(a.unacked_frames(), 1);
        let s = snapshot(&a);
        assert_eq!(s.peers[&3].dropped_to.get(DropReason::Unreachable), 2);
        assert_eq!(s.peers[&3].unconfirmed, 0);
    }

    /// Which acknowledgements apply: those of this node's own incarnation, from the newest
    /// incarnation of the peer; an older one's is ignored, and a peer incarnation's frames
    /// are counted unconfirmed once only.
    #[test]
    fn only_the_newest_peer_incarnation_acknowledges_this_incarnation() {
        let mut a = acking_router(1, 5, 1 << 20);
        let ack = |from_incarnation: Incarnation, of: Incarnation, first: Seq, highest: Seq| {
            let header = Header {
                sender: 2,
                to: 1,
                destination: Destination::Ack,
                incarnation: from_incarnation,
                ..Header::default()
            };
            wire::encode(&header, &(of, first, highest)).unwrap()
        };
        let apply =
            |a: &mut Router, f: Bytes| assert!(a.incoming::<String>(f, Instant::now()).is_none());
        send_n(&mut a, 2, 4);
        // For another incarnation of this node: ignored.
        apply(&mut a, ack(9, 4, 1, 4));
        assert_eq!(a.unacked_frames(), 4);
        // Peer incarnation 9 received 2 and 3 (1 went to an earlier one): 1 unconfirmed.
        apply(&mut a, ack(9, 5, 2, 3));
        assert_eq!((a.unacked_frames(), snapshot(&a).unconfirmed), (1, 1));
        // Again from 9, its later acknowledgements count nothing more.
        apply(&mut a, ack(9, 5, 2, 3));
        assert_eq!((a.unacked_frames(), snapshot(&a).unconfirmed), (1, 1));
        // An older incarnation of the peer (8) acknowledging frame 4: ignored.
        apply(&mut a, ack(8, 5, 1, 4));
        assert_eq!(a.unacked_frames(), 1);
        apply(&mut a, ack(9, 5, 2, 4));
        assert_eq!((a.unacked_frames(), snapshot(&a).unconfirmed), (0, 1));
        assert_eq!(snapshot(&a).peers[&2].unacknowledged, 0);
    }

    /// When acknowledgements go out: at once once a quarter window (of frames or of bytes)
    /// is owed, otherwise only at the interval (`all`), and never twice for the same frames.
    #[test]
    fn acknowledgements_go_out_per_quarter_window_or_at_the_interval() {
        let frame_len = send_n(&mut acking_router(1, 5, 1 << 20), 2, 1)[0].len();
        let acking = |frames, bytes| {
            let all = vec![1, 2, 3, 4];
            let stats = Arc::new(StatsCells::new(all.clone()));
            Router::new(2, 9, all, 1024, stats, Sealer::None, LONG).with_acks(Some(AckOptions {
                window_frames: frames,
                window_bytes: bytes,
            }))
        };
        // A window of 8 frames: due after 2; bytes far off.
        let mut b = acking(8, 1 << 20);
        let mut a = acking_router(1, 5, 1 << 20);
        let frames = send_n(&mut a, 2, 3);
        b.incoming::<String>(frames[0].clone(), Instant::now());
        assert!(
            acks_of(&mut b, false).is_empty(),
            "one frame is under a quarter"
        );
        b.incoming::<String>(frames[1].clone(), Instant::now());
        assert_eq!(acks_of(&mut b, false).len(), 1, "two frames are a quarter");
        b.incoming::<String>(frames[2].clone(), Instant::now());
        assert!(acks_of(&mut b, false).is_empty());
        assert_eq!(
            acks_of(&mut b, true).len(),
            1,
            "the interval acknowledges the rest"
        );
        assert!(acks_of(&mut b, true).is_empty(), "and nothing twice");
        // A window of 4 frames' bytes: due after one frame's bytes, whatever the count.
        let mut b = acking(1000, 4 * frame_len);
        b.incoming::<String>(frames[0].clone(), Instant::now());
        assert_eq!(acks_of(&mut b, false).len(), 1, "a quarter of the bytes");
    }

    /// Acknowledgements are checked like any frame: one that does not decode is counted
    /// as malformed and changes nothing; with a key, a forged one is unauthenticated.
    #[test]
    fn bad_and_forged_acknowledgements_change_nothing() {
        let mut a = acking_router(1, 5, 1 << 20);
        send_n(&mut a, 2, 3);
        let header = Header {
            sender: 2,
            to: 1,
            destination: Destination::Ack,
            incarnation: 9,
            ..Header::default()
        };
        let garbage = wire::encode(&header, "not an acknowledgement").unwrap();
        assert!(a.incoming::<String>(garbage, Instant::now()).is_none());
        let s = snapshot(&a);
        assert_eq!(s.dropped_incoming.get(DropReason::Malformed), 1);
        assert_eq!((a.unacked_frames(), s.unconfirmed), (3, 0));

        let mut keyed = keyed_router(1, 5, 7).with_acks(Some(AckOptions {
            window_frames: 4,
            window_bytes: 1 << 20,
        }));
        sent_by(&mut keyed, 2, "m");
        let forged = wire::encode(&header, &(5u32, 1u64, 1u64)).unwrap();
        assert!(keyed.incoming::<String>(forged, Instant::now()).is_none());
        let s = snapshot(&keyed);
        assert_eq!(s.dropped_incoming.get(DropReason::Unauthenticated), 1);
        assert_eq!(
            keyed.unacked_frames(),
            1,
            "a forged acknowledgement confirms nothing"
        );
    }

    /// Without acknowledgements (exact transports), nothing is bounded or counted here.
    #[test]
    fn without_acknowledgements_there_is_no_window() {
        let mut a = router(1);
        assert_eq!(send_n(&mut a, 2, 100).len(), 100);
        a.write_off(&crate::transport::PeerSet::new());
        a.write_off(&crate::transport::PeerSet::new());
        assert_eq!(snapshot(&a).unconfirmed, 0);
        let mut b = router(2);
        for f in send_n(&mut a, 2, 3) {
            b.incoming::<String>(f, Instant::now());
        }
        assert!(acks_of(&mut b, true).is_empty());
    }

    fn keyed_router(pid: Pid, incarnation: Incarnation, key: u8) -> Router {
        let all = vec![1, 2, 3, 4];
        let stats = Arc::new(StatsCells::new(all.clone()));
        let key = Some(ClusterKey::from_bytes([key; crate::key::KEY_LEN]));
        Router::new(
            pid,
            incarnation,
            all,
            1024,
            stats,
            Sealer::new(key, false),
            LONG,
        )
    }

    fn sent_by(r: &mut Router, to: Pid, msg: &str) -> Bytes {
        let mut out = None;
        r.outgoing(Envelope::new(to, 1, msg.to_string()), |_, f| {
            out = Some(f);
            Ok(())
        });
        out.unwrap()
    }

    /// C10 with a key: forged, altered, other-cluster, unkeyed and replayed frames are
    /// dropped and counted, and none of them moves the sender's incarnation.
    #[test]
    fn with_a_key_only_authentic_frames_count() {
        let mut r = keyed_router(1, 5, 7);
        let mut real = keyed_router(3, 2, 7);
        let mut other_cluster = keyed_router(3, 9, 8);
        let good = sent_by(&mut real, 1, "real");
        let mut altered = good.to_vec();
        let last_payload_byte = altered.len() - wire::TAG_LEN - 1;
        altered[last_payload_byte] ^= 1;
        let mut forged_incarnation = good.to_vec();
        forged_incarnation[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let unkeyed = wire::encode(&Header::new(3, 1, u32::MAX, 0), "forged").unwrap();
        let foreign = sent_by(&mut other_cluster, 1, "elsewhere");
        for bad in [
            Bytes::from(altered),
            Bytes::from(forged_incarnation),
            unkeyed,
            foreign,
        ] {
            assert!(r.incoming::<String>(bad, Instant::now()).is_none());
        }
        assert_eq!(snapshot(&r).peers[&3].incarnation, None, "nothing moved");
        let env: Envelope<String> = r.incoming(good.clone(), Instant::now()).unwrap();
        assert_eq!(env.msg, "real");
        assert!(
            r.incoming::<String>(good, Instant::now()).is_none(),
            "a captured frame replayed"
        );
        let s = snapshot(&r);
        assert_eq!(s.dropped_incoming.get(DropReason::Unauthenticated), 4);
        assert_eq!(s.dropped_incoming.get(DropReason::Replayed), 1);
        assert_eq!(s.peers[&3].incarnation, Some(2));
        // And a keyed frame at an unkeyed node.
        let mut unkeyed_node = router(1);
        let keyed = sent_by(&mut real, 1, "x");
        assert!(
            unkeyed_node
                .incoming::<String>(keyed, Instant::now())
                .is_none()
        );
        let d = snapshot(&unkeyed_node).dropped_incoming;
        assert_eq!(d.get(DropReason::Unauthenticated), 1);
    }

    fn encrypting_router(pid: Pid, incarnation: Incarnation, key: u8) -> Router {
        let all = vec![1, 2, 3, 4];
        let stats = Arc::new(StatsCells::new(all.clone()));
        let key = Some(ClusterKey::from_bytes([key; crate::key::KEY_LEN]));
        Router::new(
            pid,
            incarnation,
            all,
            1024,
            stats,
            Sealer::new(key, true),
            LONG,
        )
    }

    /// C10 encrypted: frames go out encrypted and are delivered; a MAC-only frame, an
    /// unkeyed one, one under another key and an altered ciphertext are `unauthenticated`
    /// and move nothing; a MAC-mode node refuses encrypted frames likewise.
    #[test]
    fn encrypting_nodes_accept_only_encrypted_frames_under_their_key() {
        let mut r = encrypting_router(1, 5, 7);
        let mut real = encrypting_router(3, 2, 7);
        let good = sent_by(&mut real, 1, "secret words");
        assert_eq!(good[2], 3, "keyed and encrypted");
        assert!(!good.windows(6).any(|w| w == b"secret"));
        let mut altered = good.to_vec();
        altered[wire::HEADER_LEN] ^= 1;
        let mac_only = sent_by(&mut keyed_router(3, 9, 7), 1, "mac");
        let unkeyed = sent_by(&mut router(3), 1, "plain");
        let foreign = sent_by(&mut encrypting_router(3, 9, 8), 1, "elsewhere");
        for bad in [Bytes::from(altered), mac_only, unkeyed, foreign] {
            assert!(r.incoming::<String>(bad, Instant::now()).is_none());
        }
        assert_eq!(snapshot(&r).peers[&3].incarnation, None, "nothing moved");
        let env: Envelope<String> = r.incoming(good.clone(), Instant::now()).unwrap();
        assert_eq!(env, Envelope::new(3, 1, "secret words".to_string()));
        assert!(
            r.incoming::<String>(good, Instant::now()).is_none(),
            "replayed"
        );
        let s = snapshot(&r);
        assert_eq!(s.dropped_incoming.get(DropReason::Unauthenticated), 4);
        assert_eq!(s.dropped_incoming.get(DropReason::Replayed), 1);
        assert_eq!(s.peers[&3].incarnation, Some(2));
        // And the other way round: a MAC-mode node and an unkeyed one refuse it.
        for mut other in [keyed_router(1, 5, 7), router(1)] {
            let f = sent_by(&mut real, 1, "x");
            assert!(other.incoming::<String>(f, Instant::now()).is_none());
            let d = snapshot(&other).dropped_incoming;
            assert_eq!(d.get(DropReason::Unauthenticated), 1);
        }
    }

    /// Without a key, one forged frame with a high incarnation silences the real peer for
    /// `forget_after` at most; the same rule lets a peer that lost its catalog (back at a
    /// lower incarnation, its sequence numbers from 1 again) be heard once its old
    /// incarnation has been silent that long. With a key the rule is off.
    #[test]
    fn without_a_key_no_single_frame_locks_a_peer_out_for_good() {
        let quiet = Duration::from_secs(2);
        let all = vec![1, 2, 3];
        let mut r = Router::new(
            1,
            1,
            all.clone(),
            1024,
            Arc::new(StatsCells::new(all)),
            Sealer::None,
            quiet,
        );
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(
            r.incoming::<String>(frame_from(3, 5, 1, 1), at(0))
                .is_some()
        );
        // A forgery: a decodable frame claiming a far newer incarnation of node 3.
        assert!(
            r.incoming::<String>(frame_from(3, u32::MAX, 1, 1), at(100))
                .is_some()
        );
        assert!(
            r.incoming::<String>(frame_from(3, 5, 2, 1), at(1000))
                .is_none(),
            "stale"
        );
        assert!(
            r.incoming::<String>(frame_from(3, 5, 3, 1), at(2100))
                .is_some(),
            "heard again"
        );
        assert!(
            r.incoming::<String>(frame_from(3, 5, 4, 1), at(2200))
                .is_some()
        );
        // Node 3 loses its catalog and restarts at incarnation 1, numbering from 1 again.
        assert!(
            r.incoming::<String>(frame_from(3, 1, 1, 1), at(3000))
                .is_none(),
            "stale"
        );
        assert!(
            r.incoming::<String>(frame_from(3, 1, 2, 1), at(4300))
                .is_some(),
            "heard again"
        );
        assert!(
            r.incoming::<String>(frame_from(3, 1, 2, 1), at(4400))
                .is_none(),
            "replayed"
        );
        let s = snapshot(&r);
        assert_eq!(
            s.peers[&3].dropped_from.get(DropReason::StaleIncarnation),
            2
        );
        assert_eq!(s.peers[&3].dropped_from.get(DropReason::Replayed), 1);
        // With a key, a captured frame of the old incarnation stays refused however long.
        let mut keyed = keyed_router(1, 1, 7);
        let mut old = keyed_router(3, 5, 7);
        let mut new = keyed_router(3, 6, 7);
        let captured = sent_by(&mut old, 1, "old");
        assert!(
            keyed
                .incoming::<String>(sent_by(&mut new, 1, "new"), at(0))
                .is_some()
        );
        assert!(keyed.incoming::<String>(captured, at(3_600_000)).is_none());
    }

    /// A version-1 frame is refused under its own reason; a keyed frame at an unkeyed node
    /// is unauthenticated. (A multicast copy is delivered: see
    /// `multicast_copies_are_delivered_like_peer_frames_and_authenticated_alike`.)
    #[test]
    fn old_versions_and_keyed_frames_are_refused() {
        let mut r = router(1);
        let mut v1 = vec![wire::MAGIC, 1];
        v1.extend_from_slice(&3i32.to_le_bytes());
        v1.extend_from_slice(&7u32.to_le_bytes());
        v1.extend_from_slice(&9i64.to_le_bytes());
        v1.extend_from_slice(b"\xa1m");
        assert!(
            r.incoming::<String>(Bytes::from(v1), Instant::now())
                .is_none()
        );
        let mut keyed = frame_from(3, 1, 1, 1).to_vec();
        keyed[2] = 1;
        keyed.extend_from_slice(&[0; wire::TAG_LEN]);
        assert!(
            r.incoming::<String>(Bytes::from(keyed), Instant::now())
                .is_none()
        );
        let s = snapshot(&r);
        assert_eq!(s.dropped_incoming.get(DropReason::UnsupportedVersion), 1);
        assert_eq!(s.dropped_incoming.get(DropReason::Unauthenticated), 1);
        assert_eq!(s.peers[&3].incarnation, None, "none of them moved anything");
        assert!(
            r.incoming::<String>(frame_from(3, 1, 1, 1), Instant::now())
                .is_some()
        );
    }

    /// What a multicast from `r` hands to the transport: (receiver, frame).
    fn multicast_of<M: Serialize>(
        r: &mut Router,
        to: &[Pid],
        msg: M,
    ) -> (SendOutcome, Option<Envelope<M>>, Vec<(Pid, Bytes)>) {
        let mut sent = Vec::new();
        let (outcome, local) = r.outgoing_multicast(
            to,
            7,
            msg,
            |peer, f| {
                sent.push((peer, f));
                Ok(())
            },
            |_| true,
        );
        (outcome, local, sent)
    }

    /// C1 for a multicast: each listed pid once, ascending; this node's own pid comes back
    /// for its inbox; unknown pids (and `BROADCAST`, which a list does not expand) are
    /// counted `unknown_peer`; the message is serialized once, and each copy is a group
    /// frame naming its receiver.
    #[test]
    fn multicast_serializes_once_and_sends_each_listed_pid_once() {
        let mut r = router(2);
        let count = std::cell::Cell::new(0);
        let (outcome, local, sent) =
            multicast_of(&mut r, &[4, 1, 4, 2, 9, BROADCAST, 1], Counted(&count));
        assert_eq!(count.get(), 1, "serialized once for all copies");
        assert_eq!(sent.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [1, 4]);
        for (to, f) in &sent {
            let frame = wire::Frame::decode(f.clone()).unwrap();
            assert_eq!(frame.header.to, *to);
            assert_eq!(frame.header.sender, 2);
            assert_eq!(frame.header.destination, Destination::Group);
            assert_eq!((frame.header.seq, frame.header.msg_id), (1, 7));
            assert_eq!(frame.message::<String>().unwrap(), "hi");
        }
        let local = local.expect("the sender listed itself");
        assert_eq!((local.pid, local.msg_id), (2, 7));
        assert_eq!(
            outcome,
            SendOutcome::Multicast {
                sent: 3,
                dropped: 2
            }
        );
        let s = snapshot(&r);
        assert_eq!(s.sent, 5, "one per distinct destination");
        assert_eq!(s.dropped_outgoing.get(DropReason::UnknownPeer), 2);
        assert_eq!(
            (s.peers[&1].sent, s.peers[&2].sent, s.peers[&3].sent),
            (1, 1, 0)
        );
        // Nobody listed: nothing serialized, sent or counted.
        let (outcome, local, sent) = multicast_of(&mut r, &[], Counted(&count));
        assert_eq!(count.get(), 1);
        assert!(local.is_none() && sent.is_empty());
        assert_eq!(
            outcome,
            SendOutcome::Multicast {
                sent: 0,
                dropped: 0
            }
        );
        assert!(outcome.is_sent());
        assert_eq!(snapshot(&r).sent, 5);
    }

    /// A multicast copy takes the receiver's next sequence number, as any send does (so
    /// FIFO per pair holds across sends and multicasts); a refused copy gives its number
    /// back and is counted for that peer alone; a multicast never holds, even when asked
    /// to wait elsewhere: a full window is `backpressure` for that copy.
    #[test]
    fn multicast_copies_share_sequence_numbers_and_drops_are_per_peer() {
        let mut r = acking_router(2, 5, 1 << 20);
        let mut seqs = Vec::new();
        let mut record = |peer: Pid, f: Bytes, refuse: Option<Pid>| {
            if Some(peer) == refuse {
                return Err(DropReason::Unreachable);
            }
            let h = wire::Frame::decode(f).unwrap().header;
            seqs.push((peer, h.seq, h.destination));
            Ok(())
        };
        r.outgoing(Envelope::new(1, 1, ()), |p, f| record(p, f, None));
        let (outcome, _) =
            r.outgoing_multicast(&[1, 3], 2, (), |p, f| record(p, f, Some(3)), |_| true);
        assert_eq!(
            outcome,
            SendOutcome::Multicast {
                sent: 1,
                dropped: 1
            }
        );
        r.outgoing(Envelope::new(3, 3, ()), |p, f| record(p, f, None));
        r.outgoing_multicast(&[1, 3], 4, (), |p, f| record(p, f, None), |_| true);
        assert_eq!(
            seqs,
            [
                (1, 1, Destination::Peer),
                (1, 2, Destination::Group),
                (3, 1, Destination::Peer),
                (1, 3, Destination::Group),
                (3, 2, Destination::Group),
            ]
        );
        let s = snapshot(&r);
        assert_eq!(s.peers[&3].dropped_to.get(DropReason::Unreachable), 1);
        assert_eq!(s.peers[&1].dropped_to.total(), 0);
        // One more and peer 1's window (4 frames) is full: the next copy to it is dropped
        // at once, the copy to 4 goes.
        r.outgoing(Envelope::new(1, 5, ()), |_, _| Ok(()));
        let (outcome, _, sent) = multicast_of(&mut r, &[1, 4], ());
        assert_eq!(sent.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [4]);
        assert_eq!(
            outcome,
            SendOutcome::Multicast {
                sent: 1,
                dropped: 1
            }
        );
        let s = snapshot(&r);
        assert_eq!(s.peers[&1].dropped_to.get(DropReason::Backpressure), 1);
        assert_eq!(s.sent, 9);
    }

    /// A message too large (or that does not serialize) is dropped for every remote copy,
    /// counted per peer; the copy to this node itself is not framed, so it still lands.
    #[test]
    fn a_too_large_multicast_is_dropped_per_peer() {
        let mut r = router(1);
        let (outcome, local, sent) = multicast_of(&mut r, &[1, 2, 3], vec![0u8; 2000]);
        assert!(sent.is_empty());
        assert!(local.is_some());
        assert_eq!(
            outcome,
            SendOutcome::Multicast {
                sent: 1,
                dropped: 2
            }
        );
        let s = snapshot(&r);
        assert_eq!(s.peers[&2].dropped_to.get(DropReason::TooLarge), 1);
        assert_eq!(s.peers[&3].dropped_to.get(DropReason::TooLarge), 1);
    }

    /// A receiver delivers a multicast copy like a send to one peer (the envelope names
    /// the sender), with the same checks: with a key, an altered or foreign copy is
    /// `unauthenticated`, a copy played again `replayed`, and the copy for another node
    /// is refused.
    #[test]
    fn multicast_copies_are_delivered_like_peer_frames_and_authenticated_alike() {
        let mut sender = keyed_router(3, 2, 7);
        let (_, _, copies) = multicast_of(&mut sender, &[1, 2], "to both".to_string());
        let copy_for = |pid: Pid| copies.iter().find(|(p, _)| *p == pid).unwrap().1.clone();
        let mut r = keyed_router(1, 5, 7);
        let mut altered = copy_for(1).to_vec();
        let last_payload_byte = altered.len() - wire::TAG_LEN - 1;
        altered[last_payload_byte] ^= 1;
        let (_, _, foreign) =
            multicast_of(&mut keyed_router(3, 2, 8), &[1], "elsewhere".to_string());
        for bad in [Bytes::from(altered), foreign[0].1.clone(), copy_for(2)] {
            assert!(r.incoming::<String>(bad, Instant::now()).is_none());
        }
        assert_eq!(snapshot(&r).peers[&3].incarnation, None, "nothing moved");
        let env: Envelope<String> = r.incoming(copy_for(1), Instant::now()).unwrap();
        assert_eq!(env, Envelope::new(3, 7, "to both".to_string()));
        assert!(
            r.incoming::<String>(copy_for(1), Instant::now()).is_none(),
            "replayed"
        );
        let s = snapshot(&r);
        assert_eq!(s.dropped_incoming.get(DropReason::Unauthenticated), 2);
        assert_eq!(s.dropped_incoming.get(DropReason::Malformed), 1);
        assert_eq!(s.dropped_incoming.get(DropReason::Replayed), 1);
        let mut two = keyed_router(2, 5, 7);
        assert!(
            two.incoming::<String>(copy_for(2), Instant::now())
                .is_some()
        );
        // Unkeyed, a group frame is delivered like any other.
        let mut group = frame_from(3, 1, 1, 1).to_vec();
        group[3] = 2;
        let env: Envelope<String> = router(1)
            .incoming(Bytes::from(group), Instant::now())
            .unwrap();
        assert_eq!(env.pid, 3);
    }

    #[test]
    fn self_unknown_and_refused_sends() {
        let mut r = router(2);
        let local = r.outgoing(Envelope::new(2, 1, 7u8), |_, _| panic!("no network"));
        assert_eq!(local, Some(Envelope::new(2, 1, 7u8)));
        assert!(
            r.outgoing(Envelope::new(9, 2, 7u8), |_, _| panic!())
                .is_none()
        );
        assert!(
            r.outgoing(Envelope::new(-7, 2, 7u8), |_, _| panic!())
                .is_none()
        );
        r.outgoing(Envelope::new(3, 3, 7u8), |_, _| {
            Err(DropReason::Unreachable)
        });
        let s = snapshot(&r);
        assert_eq!(s.sent, 4);
        assert_eq!(s.dropped_outgoing.get(DropReason::UnknownPeer), 2);
        assert_eq!(s.dropped_outgoing.get(DropReason::Unreachable), 1);
        assert_eq!(s.peers[&3].dropped_to.get(DropReason::Unreachable), 1);
    }

    /// The test-only faults change what they say, and only when set.
    #[cfg(feature = "fault-injection")]
    #[test]
    fn router_faults_break_the_router_only_when_set() {
        let local = router(2)
            .with_fault(Some(RouterFault::BroadcastToSender))
            .outgoing(Envelope::new(BROADCAST, 9, 1u8), |_, _| Ok(()));
        assert_eq!(local, Some(Envelope::new(2, 9, 1u8)));
        let mut r = router(2).with_fault(Some(RouterFault::UncountedUnknownPeer));
        r.outgoing(Envelope::new(9, 1, 1u8), |_, _| panic!("no network"));
        assert_eq!(snapshot(&r).sent, 0);
        let mut r = router(2).with_fault(Some(RouterFault::UncountedHostile));
        assert!(
            r.incoming::<u8>(Bytes::from_static(b"garbage"), Instant::now())
                .is_none()
        );
        assert_eq!(snapshot(&r).dropped_incoming.total(), 0);
        let mut r = router(2).with_fault(None);
        assert!(
            r.incoming::<u8>(Bytes::from_static(b"garbage"), Instant::now())
                .is_none()
        );
        assert_eq!(snapshot(&r).dropped_incoming.total(), 1);
    }

    #[test]
    fn too_large_messages_are_dropped_not_sent() {
        let mut r = router(1);
        r.outgoing(Envelope::new(2, 1, vec![0u8; 2000]), |_, _| {
            panic!("too large")
        });
        assert_eq!(snapshot(&r).dropped_outgoing.get(DropReason::TooLarge), 1);
    }

    #[test]
    fn incoming_checks_sender_and_incarnation() {
        let mut sender = router(3);
        let mut frames = Vec::new();
        sender.outgoing(Envelope::new(1, 11, "a".to_string()), |_, f| {
            frames.push(f);
            Ok(())
        });
        let mut r = router(1);
        let env: Envelope<String> = r.incoming(frames[0].clone(), Instant::now()).unwrap();
        assert_eq!(env, Envelope::new(3, 11, "a".to_string()));

        let mut newer = Router::new(
            3,
            6,
            vec![1, 2, 3, 4],
            1024,
            Arc::new(StatsCells::new(vec![])),
            Sealer::None,
            LONG,
        );
        newer.outgoing(Envelope::new(1, 12, "b".to_string()), |_, f| {
            frames.push(f);
            Ok(())
        });
        assert!(
            r.incoming::<String>(frames[1].clone(), Instant::now())
                .is_some()
        );
        // The old incarnation is now stale.
        assert!(
            r.incoming::<String>(frames[0].clone(), Instant::now())
                .is_none()
        );
        // Unknown sender, own pid, garbage, wrong type, oversized.
        let forged = |sender| wire::encode(&Header::new(sender, 1, 0, 0), "x").unwrap();
        assert!(r.incoming::<String>(forged(77), Instant::now()).is_none());
        assert!(r.incoming::<String>(forged(1), Instant::now()).is_none());
        assert!(
            r.incoming::<String>(Bytes::from_static(b"garbage"), Instant::now())
                .is_none()
        );
        assert!(r.incoming::<u64>(forged(2), Instant::now()).is_none());
        assert!(
            r.incoming::<String>(Bytes::from(vec![0xC1; 5000]), Instant::now())
                .is_none()
        );
        // A forged high incarnation whose payload does not decode changes nothing.
        let garbage_header = wire::encode(&Header::new(3, 1, u32::MAX, 0), &())
            .unwrap()
            .slice(..wire::HEADER_LEN);
        assert!(
            r.incoming::<String>(garbage_header, Instant::now())
                .is_none()
        );
        newer.outgoing(Envelope::new(1, 13, "c".to_string()), |_, f| {
            frames.push(f);
            Ok(())
        });
        assert!(
            r.incoming::<String>(frames[2].clone(), Instant::now())
                .is_some()
        );
        // Delivered once, never twice.
        assert!(
            r.incoming::<String>(frames[2].clone(), Instant::now())
                .is_none()
        );
        let s = snapshot(&r);
        assert_eq!(
            s.delivered, 0,
            "the router counts deliveries only via the server"
        );
        let d = s.dropped_incoming;
        assert_eq!(d.get(DropReason::StaleIncarnation), 1);
        assert_eq!(d.get(DropReason::UnknownSender), 2);
        assert_eq!(d.get(DropReason::Malformed), 3);
        assert_eq!(d.get(DropReason::TooLarge), 1);
        assert_eq!(d.get(DropReason::Replayed), 1);
        assert_eq!(
            s.peers[&3].dropped_from.get(DropReason::StaleIncarnation),
            1
        );
    }

    // Peer events (see `crate::events`): greetings, Up, Down, Restarted.

    /// Router `pid` (incarnation `inc`), keyed with `key` if given, and a subscription to
    /// its events.
    fn eventful(pid: Pid, inc: Incarnation, key: Option<u8>) -> (Router, crate::Events) {
        let all = vec![1, 2, 3, 4];
        let key = key.map(|k| ClusterKey::from_bytes([k; crate::key::KEY_LEN]));
        let hub = Arc::new(EventHub::new());
        let events = hub.subscribe();
        let r = Router::new(
            pid,
            inc,
            all.clone(),
            1024,
            Arc::new(StatsCells::new(all)),
            Sealer::new(key, false),
            LONG,
        )
        .with_events(hub);
        (r, events)
    }

    /// The events told so far.
    fn told(events: &mut crate::Events) -> Vec<Event> {
        use futures::FutureExt;
        std::iter::from_fn(|| events.recv().now_or_never().flatten())
            .map(|e| e.unwrap().event)
            .collect()
    }

    /// `r`'s connections become `connected`; the greetings it sends.
    fn connect(r: &mut Router, connected: &[Pid]) -> Vec<(Pid, Bytes)> {
        let mut out = Vec::new();
        r.connectivity(&connected.iter().copied().collect(), |to, f| {
            out.push((to, f));
            Ok(())
        });
        out
    }

    /// The greetings `r` sends now (`all`: the heartbeat's retries too).
    fn greetings(r: &mut Router, all: bool) -> Vec<(Pid, Bytes)> {
        let mut out = Vec::new();
        r.greet(all, |to, f| {
            out.push((to, f));
            Ok(())
        });
        out
    }

    /// Hands `frames` for `r` to it (none is a message).
    fn hand(r: &mut Router, frames: Vec<(Pid, Bytes)>) {
        for (to, f) in frames {
            assert_eq!(to, r.pid);
            assert!(wire::is_control(&f));
            assert!(r.incoming::<u8>(f, Instant::now()).is_none());
        }
    }

    #[tokio::test]
    async fn a_peer_is_up_once_messages_flow_both_ways_and_down_when_the_connection_goes() {
        let (mut a, mut ea) = eventful(1, 1, None);
        let (mut b, mut eb) = eventful(2, 1, None);
        // 1 connects to 2 and greets it: neither is up, 2 cannot answer (no connection).
        let hello = connect(&mut a, &[2]);
        assert_eq!(hello.len(), 1);
        hand(&mut b, hello);
        assert!(told(&mut ea).is_empty() && told(&mut eb).is_empty());
        assert!(
            greetings(&mut b, false).is_empty(),
            "no connection to answer on"
        );
        // 2 connects and greets: not up before it hears 1 over the new connection (what it
        // heard before may be from an incarnation of 1 that died meanwhile).
        let hello = connect(&mut b, &[1]);
        assert!(told(&mut eb).is_empty());
        hand(&mut a, hello);
        assert_eq!(told(&mut ea), [Event::Up(2)]);
        // 1 answers; 2 hears it, is up, and knows it was heard; an answer is not answered.
        hand(&mut b, greetings(&mut a, false));
        assert_eq!(told(&mut eb), [Event::Up(1)]);
        assert!(greetings(&mut b, false).is_empty());
        // 1 does not know yet that 2 heard it (2 greeted before it had): at the heartbeat
        // it greets again, and 2 answers.
        hand(&mut b, greetings(&mut a, true));
        hand(&mut a, greetings(&mut b, false));
        // Both know they were heard: no greeting is repeated.
        assert!(greetings(&mut a, true).is_empty() && greetings(&mut b, true).is_empty());
        // Messages keep a peer up, telling nothing new.
        let f = sent_by(&mut b, 1, "hi");
        assert!(a.incoming::<String>(f, Instant::now()).is_some());
        assert!(told(&mut ea).is_empty());
        // 1's connection to 2 goes: down. It comes back: 2 must be heard again first.
        assert!(connect(&mut a, &[]).is_empty());
        assert_eq!(told(&mut ea), [Event::Down(2)]);
        let hello = connect(&mut a, &[2]);
        assert!(told(&mut ea).is_empty(), "not up before 2 is heard again");
        hand(&mut b, hello);
        // 2 answers at once (its pump greets what is due), and 1 is up again.
        let answer = greetings(&mut b, false);
        assert_eq!(answer.len(), 1);
        assert!(greetings(&mut b, false).is_empty(), "answered once");
        hand(&mut a, answer);
        assert_eq!(told(&mut ea), [Event::Up(2)]);
        assert!(told(&mut eb).is_empty(), "2 saw nothing go");
    }

    #[tokio::test]
    async fn a_lost_greeting_is_sent_again_every_heartbeat_until_the_peer_heard_it() {
        let (mut a, _ea) = eventful(1, 1, None);
        let (mut b, mut eb) = eventful(2, 1, None);
        assert_eq!(connect(&mut b, &[1]).len(), 1, "lost");
        assert_eq!(connect(&mut a, &[2]).len(), 1, "lost");
        assert!(
            greetings(&mut a, false).is_empty(),
            "retries wait for the heartbeat"
        );
        for _ in 0..3 {
            let again = greetings(&mut b, true);
            assert_eq!(again.len(), 1);
            assert_eq!(again[0].0, 1);
        }
        hand(&mut a, greetings(&mut b, true));
        // 1 answers (it had not been heard by 2), 2 is up and stops greeting.
        hand(&mut b, greetings(&mut a, false));
        assert_eq!(told(&mut eb), [Event::Up(1)]);
        assert!(greetings(&mut b, true).is_empty());
    }

    #[tokio::test]
    async fn a_restart_is_told_once_and_an_older_incarnation_changes_nothing() {
        let (mut a, mut ea) = eventful(1, 1, Some(9));
        let (mut b, _) = eventful(2, 4, Some(9));
        connect(&mut a, &[2]);
        hand(&mut a, connect(&mut b, &[1]));
        assert_eq!(told(&mut ea), [Event::Up(2)]);
        let old = sent_by(&mut b, 1, "from 4");
        // 2 restarts as incarnation 5 and greets: a restart, told once, and still up.
        let (mut b5, _) = eventful(2, 5, Some(9));
        let hello = connect(&mut b5, &[1]);
        hand(&mut a, hello.clone());
        assert_eq!(
            told(&mut ea),
            [Event::Restarted {
                pid: 2,
                incarnation: 5
            }]
        );
        let f = sent_by(&mut b5, 1, "from 5");
        assert!(a.incoming::<String>(f, Instant::now()).is_some());
        hand(&mut a, hello);
        assert!(told(&mut ea).is_empty(), "once per incarnation");
        // The old incarnation's frames, and its greetings, change nothing.
        assert!(a.incoming::<String>(old, Instant::now()).is_none());
        hand(&mut a, connect(&mut b, &[]));
        hand(&mut a, connect(&mut b, &[1]));
        assert!(told(&mut ea).is_empty());
        // A greeting under another key is unauthenticated and changes nothing.
        let (mut forger, _) = eventful(2, 9, Some(8));
        hand(&mut a, connect(&mut forger, &[1]));
        assert!(told(&mut ea).is_empty());
        assert_eq!(
            snapshot(&a)
                .dropped_incoming
                .get(DropReason::Unauthenticated),
            1
        );
    }

    #[tokio::test]
    async fn without_a_key_a_forged_greeting_does_not_keep_a_peer_out_for_good() {
        let all = vec![1, 2, 3, 4];
        let hub = Arc::new(EventHub::new());
        let mut ea = hub.subscribe();
        let forget = Duration::from_secs(2);
        let mut a = Router::new(
            1,
            1,
            all.clone(),
            1024,
            Arc::new(StatsCells::new(all)),
            Sealer::None,
            forget,
        )
        .with_events(hub);
        connect(&mut a, &[2]);
        // A forged greeting in 2's name, from a high incarnation.
        let (mut forger, _) = eventful(2, 1000, None);
        hand(&mut a, connect(&mut forger, &[1]));
        let (mut b, _) = eventful(2, 3, None);
        let hello = connect(&mut b, &[1]);
        assert!(
            a.incoming::<u8>(hello.clone()[0].1.clone(), Instant::now())
                .is_none()
        );
        assert_eq!(
            told(&mut ea),
            [Event::Up(2)],
            "the forgery made 2 look up; the real 2, older, is not heard yet"
        );
        // Once the forged incarnation has been silent for `forget_after`, 2 is heard.
        let later = Instant::now() + forget;
        a.incoming::<u8>(hello[0].1.clone(), later);
        assert_eq!(
            told(&mut ea),
            [Event::Restarted {
                pid: 2,
                incarnation: 3
            }]
        );
    }
}
