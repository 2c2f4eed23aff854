//! Scenarios: sequences of operations on a cluster, their proptest strategies, and running
//! one against a backend.

use std::fmt;
use std::ops::RangeInclusive;

use bytes::{BufMut, Bytes, BytesMut};
use cluster_core::seal::Sealer;
use cluster_core::{BROADCAST, ClusterKey, Config, DropReason, Incarnation, MsgId, Pid, wire};
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union};
use serde::{Deserialize, Serialize};

use crate::history::Record;
use crate::sim::{SimCluster, SimError};
use crate::under_test::{Capabilities, ClusterUnderTest};

/// One step of a scenario. Pids are those of the config (`1..=n` in generated scenarios).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `from` sends `payload` to `to`: a pid, itself, [`BROADCAST`] or an unknown pid.
    /// Skipped if `from` is down.
    Send {
        /// The sender.
        from: Pid,
        /// The destination.
        to: Pid,
        /// The message.
        payload: Vec<u8>,
    },
    /// Like `Send`, but never waiting for room (`try_send`): a full queue to the destination
    /// is a counted `backpressure` drop. Skipped if `from` is down.
    Enqueue {
        /// The sender.
        from: Pid,
        /// The destination.
        to: Pid,
        /// The message.
        payload: Vec<u8>,
    },
    /// Crash a node (no effect if it is down).
    Crash(Pid),
    /// Restart a node as a new incarnation (crashing it first if up).
    Restart(Pid),
    /// Cut every link between the two groups, both ways.
    Partition(Vec<Pid>, Vec<Pid>),
    /// Cut the one-way link `from → to`.
    Cut(Pid, Pid),
    /// Remove every cut, partition and loss.
    Heal,
    /// Lose frames on `from → to` with probability `p`.
    SetLoss(Pid, Pid, f64),
    /// Let the network deliver everything in flight and go quiet.
    Settle,
    /// Hostile bytes arrive on `to`'s port from outside the cluster (contract C9). Skipped
    /// if `to` is down, and on backends that cannot put bytes on a port
    /// ([`Capabilities::inject`]).
    Hostile {
        /// The receiving node.
        to: Pid,
        /// What arrives.
        bytes: HostileBytes,
    },
    /// Node `pid`, in no member's config, joins the running cluster
    /// ([`SimCluster::join`]): generated scenarios use the pid above the config's (the one
    /// their sends call "unknown" until it joins). Skipped if `pid` ran already (a pid of
    /// the config, or one that joined or left), and on backends without
    /// [`Capabilities::membership`].
    Join(Pid),
    /// Member `pid` asks to leave, and is then stopped for good ([`SimCluster::leave`]).
    /// Skipped unless `pid` is up and a member, and more than two members would be left:
    /// membership never drops below two.
    Leave(Pid),
}

/// The message id in every forged header: no node draws a negative id
/// ([`MsgIds`](cluster_core::MsgIds)), so a delivery with it came from hostile bytes.
pub const FORGED_MSG_ID: MsgId = -1;

/// Hostile bytes that a scenario puts on a node's port (contract C9), each with the reason
/// the node must count it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostileBytes {
    /// Bytes that are not a frame at all (`malformed`).
    Garbage,
    /// A frame cut short inside its header (`malformed`).
    Truncated,
    /// A frame of a known peer, one byte over `max_message_size` (`too_large`).
    Oversized,
    /// A well-formed frame whose header claims a sender outside the config
    /// (`unknown_sender`).
    UnknownSender,
    /// A frame whose header claims a known peer (as a newer incarnation than any, so never
    /// stale) but whose payload does not decode (`malformed`); at a keyed node, signed
    /// with the cluster key, as a member holding the key could.
    BadPayload,
    /// A well-formed frame of wire format version 1, from an older build
    /// (`unsupported_version`).
    VersionOne,
    /// A well-formed frame of a known peer, tagged under a key other than the cluster's:
    /// another cluster's frame, or a forger's (`unauthenticated`, keyed or not: a node
    /// without a key cannot check a tag, so it trusts no keyed frame). Needs a peer to
    /// claim: in a cluster of one it claims the node itself and is counted
    /// `unknown_sender` instead (scenarios have two nodes or more by default).
    WrongKey,
}

impl HostileBytes {
    /// Every kind.
    pub const ALL: [HostileBytes; 7] = [
        HostileBytes::Garbage,
        HostileBytes::Truncated,
        HostileBytes::Oversized,
        HostileBytes::UnknownSender,
        HostileBytes::BadPayload,
        HostileBytes::VersionOne,
        HostileBytes::WrongKey,
    ];

    /// The snake-case name, as in the history.
    pub fn name(self) -> &'static str {
        match self {
            HostileBytes::Garbage => "garbage",
            HostileBytes::Truncated => "truncated",
            HostileBytes::Oversized => "oversized",
            HostileBytes::UnknownSender => "unknown_sender",
            HostileBytes::BadPayload => "bad_payload",
            HostileBytes::VersionOne => "version_one",
            HostileBytes::WrongKey => "wrong_key",
        }
    }

    /// The reason the receiving node must count these bytes under.
    pub fn reason(self) -> DropReason {
        match self {
            HostileBytes::Garbage | HostileBytes::Truncated | HostileBytes::BadPayload => {
                DropReason::Malformed
            }
            HostileBytes::Oversized => DropReason::TooLarge,
            HostileBytes::UnknownSender => DropReason::UnknownSender,
            HostileBytes::VersionOne => DropReason::UnsupportedVersion,
            HostileBytes::WrongKey => DropReason::Unauthenticated,
        }
    }

    /// The bytes, for node `to` of `config`. Forged headers carry [`FORGED_MSG_ID`] and
    /// claim the first pid other than `to` (in a cluster of one, where there is none, a
    /// bad payload comes with a header cut short instead: malformed all the same).
    pub fn bytes(self, to: Pid, config: &Config) -> Bytes {
        self.forge(to, config, &config.pids().collect::<Vec<_>>())
    }

    /// [`bytes`](Self::bytes), claiming a pid of `members` (those that left are
    /// `unknown_sender` now; those that joined are members). The outsider a forged header
    /// claims is far above the config's pids, clear of the pid a scenario's `Join` adds.
    pub(crate) fn forge(self, to: Pid, config: &Config, members: &[Pid]) -> Bytes {
        let peer = members.iter().copied().find(|p| *p != to);
        let outsider = config
            .pids()
            .max()
            .unwrap_or(0)
            .saturating_add(1000)
            .min(cluster_core::MAX_PID);
        let header = |sender: Pid, incarnation: Incarnation| {
            let header = wire::Header::new(sender, to, incarnation, FORGED_MSG_ID);
            // Encoding `()` cannot fail; were it to, empty bytes are malformed too.
            wire::encode(&header, &())
                .map(|frame| frame.slice(..wire::HEADER_LEN.min(frame.len())))
                .unwrap_or_default()
        };
        let cut = |frame: Bytes| frame.slice(..frame.len() / 2);
        match (self, peer) {
            (HostileBytes::Garbage, _) => Bytes::from_static(b"\x00 not a frame"),
            (HostileBytes::Truncated, _) | (HostileBytes::BadPayload, None) => {
                cut(header(peer.unwrap_or(to), 0))
            }
            (HostileBytes::Oversized, _) => {
                let mut frame = BytesMut::from(&header(peer.unwrap_or(to), 0)[..]);
                let size = config.options().max_message_size.saturating_add(1);
                frame.resize(size.max(frame.len()), 0);
                frame.freeze()
            }
            (HostileBytes::UnknownSender, _) => {
                let header = wire::Header::new(outsider, to, 0, FORGED_MSG_ID);
                wire::encode(&header, &()).unwrap_or_default()
            }
            (HostileBytes::WrongKey, _) => {
                let mut wrong = [0xEE; cluster_core::KEY_LEN];
                if config.cluster_key() == Some(&ClusterKey::from_bytes(wrong)) {
                    wrong = [0xDD; cluster_core::KEY_LEN];
                }
                // Sealed in the node's own mode (either MAC, or encrypted), under the wrong key.
                let mut sealer =
                    Sealer::for_options(Some(ClusterKey::from_bytes(wrong)), config.options());
                let header =
                    sealer.mark(wire::Header::new(peer.unwrap_or(to), to, 1, FORGED_MSG_ID));
                let mut encoder = wire::Encoder::new();
                // Encoding `()` cannot fail; were it to, the empty payload is malformed,
                // and the missing tag makes it unauthenticated all the same.
                let _ = encoder.serialize(&());
                encoder.frame(&header, |covered| sealer.seal(covered))
            }
            (HostileBytes::VersionOne, _) => {
                // The version-1 layout: magic, version, sender, incarnation, msg id, payload.
                let mut frame = BytesMut::new();
                frame.put_u8(wire::MAGIC);
                frame.put_u8(1);
                frame.put_i32_le(peer.unwrap_or(to));
                frame.put_u32_le(Incarnation::MAX);
                frame.put_i64_le(FORGED_MSG_ID);
                // MessagePack nil: a payload that decodes as `()`.
                frame.put_u8(0xC0);
                frame.freeze()
            }
            (HostileBytes::BadPayload, Some(peer)) => {
                // At a keyed node, sealed as a member would (tagged, or encrypted): the
                // payload, not the tag, is what this case is about.
                let mut sealer =
                    Sealer::for_options(config.cluster_key().cloned(), config.options());
                let header =
                    sealer.mark(wire::Header::new(peer, to, Incarnation::MAX, FORGED_MSG_ID));
                let mut frame = BytesMut::from(&header.to_bytes()[..]);
                // 0xC1 is the one byte MessagePack never uses.
                frame.put_u8(0xC1);
                if header.keyed {
                    let trailer = sealer.seal(&mut frame);
                    frame.extend_from_slice(&trailer);
                }
                frame.freeze()
            }
        }
    }
}

impl fmt::Display for HostileBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Send { from, to, payload } => {
                let to = if *to == BROADCAST {
                    "BROADCAST".to_string()
                } else if to == from {
                    format!("{to} (itself)")
                } else {
                    to.to_string()
                };
                write!(f, "send {from} → {to} {payload:?}")
            }
            Op::Enqueue { from, to, payload } => {
                write!(
                    f,
                    "enqueue (no wait) {from} → {} {payload:?}",
                    dest_name(*to)
                )
            }
            Op::Crash(p) => write!(f, "crash {p}"),
            Op::Restart(p) => write!(f, "restart {p}"),
            Op::Partition(a, b) => write!(f, "partition {a:?} | {b:?}"),
            Op::Cut(a, b) => write!(f, "cut {a} → {b}"),
            Op::Heal => write!(f, "heal"),
            Op::SetLoss(a, b, p) => write!(f, "set_loss {a} → {b} p={p}"),
            Op::Settle => write!(f, "settle"),
            Op::Hostile { to, bytes } => write!(f, "hostile bytes → {to}: {bytes}"),
            Op::Join(p) => write!(f, "join {p}"),
            Op::Leave(p) => write!(f, "leave {p}"),
        }
    }
}

/// A whole scenario: `nodes` nodes (pids `1..=nodes`), the network seed, and the ops.
/// A final settle is always added when it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Number of nodes.
    pub nodes: usize,
    /// The seed of the simulated network (link loss).
    pub seed: u64,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} nodes (pids 1..={}), network seed {}, {} ops:",
            self.nodes,
            self.nodes,
            self.seed,
            self.ops.len()
        )?;
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(f, "  {:>3}. {op}", i + 1)?;
        }
        write!(f, "  (then a final settle)")
    }
}

impl Scenario {
    /// The scenario as Rust source, to paste into a regression test.
    pub fn to_rust(&self) -> String {
        let ops: Vec<String> = self.ops.iter().map(Op::to_rust).collect();
        format!(
            "Scenario {{ nodes: {}, seed: {}, ops: vec![{}] }}",
            self.nodes,
            self.seed,
            ops.join(", ")
        )
    }
}

impl Op {
    /// The op as Rust source.
    pub fn to_rust(&self) -> String {
        match self {
            Op::Send { from, to, payload } => {
                let to = if *to == BROADCAST {
                    "BROADCAST".to_string()
                } else {
                    to.to_string()
                };
                format!("Op::Send {{ from: {from}, to: {to}, payload: vec!{payload:?} }}")
            }
            Op::Enqueue { from, to, payload } => format!(
                "Op::Enqueue {{ from: {from}, to: {}, payload: vec!{payload:?} }}",
                dest_name(*to)
            ),
            Op::Crash(p) => format!("Op::Crash({p})"),
            Op::Restart(p) => format!("Op::Restart({p})"),
            Op::Partition(a, b) => format!("Op::Partition(vec!{a:?}, vec!{b:?})"),
            Op::Cut(a, b) => format!("Op::Cut({a}, {b})"),
            Op::Heal => "Op::Heal".into(),
            Op::SetLoss(a, b, p) => format!("Op::SetLoss({a}, {b}, {p:?})"),
            Op::Settle => "Op::Settle".into(),
            Op::Hostile { to, bytes } => {
                format!("Op::Hostile {{ to: {to}, bytes: HostileBytes::{bytes:?} }}")
            }
            Op::Join(p) => format!("Op::Join({p})"),
            Op::Leave(p) => format!("Op::Leave({p})"),
        }
    }
}

fn dest_name(to: Pid) -> String {
    if to == BROADCAST {
        "BROADCAST".to_string()
    } else {
        to.to_string()
    }
}

fn pid_in(n: usize) -> BoxedStrategy<Pid> {
    let n = Pid::try_from(n.max(1)).unwrap_or(Pid::MAX);
    (1..=n).boxed()
}

/// A strategy for one op on `n` nodes, limited to what `caps` supports.
pub fn op(n: usize, caps: Capabilities) -> BoxedStrategy<Op> {
    let unknown = Pid::try_from(n).unwrap_or(Pid::MAX - 1).saturating_add(1);
    let to = prop_oneof![
        8 => pid_in(n),
        3 => Just(BROADCAST),
        1 => Just(unknown),
    ];
    // A node that joins (the pid above the config's) sends too, once it is up.
    let from = if caps.membership {
        prop_oneof![12 => pid_in(n), 1 => Just(unknown)].boxed()
    } else {
        pid_in(n)
    };
    let send = (
        from,
        to,
        proptest::collection::vec(any::<u8>(), 0..6),
        any::<bool>(),
    )
        .prop_map(|(from, to, payload, wait)| {
            if wait {
                Op::Send { from, to, payload }
            } else {
                Op::Enqueue { from, to, payload }
            }
        })
        .boxed();
    let mut choices: Vec<(u32, BoxedStrategy<Op>)> =
        vec![(20, send), (4, Just(Op::Settle).boxed())];
    if caps.crash_restart {
        choices.push((1, pid_in(n).prop_map(Op::Crash).boxed()));
        choices.push((2, pid_in(n).prop_map(Op::Restart).boxed()));
    }
    if caps.partition {
        let width = n.min(16);
        let part = (0u32..(1 << width))
            .prop_map(move |mask| {
                let (a, b): (Vec<Pid>, Vec<Pid>) = (1..=width)
                    .filter_map(|i| Pid::try_from(i).ok())
                    .partition(|p| mask & (1 << (p - 1)) != 0);
                Op::Partition(a, b)
            })
            .boxed();
        choices.push((1, part));
    }
    if caps.cut {
        choices.push((
            1,
            (pid_in(n), pid_in(n))
                .prop_map(|(a, b)| Op::Cut(a, b))
                .boxed(),
        ));
    }
    if caps.partition || caps.cut || caps.loss {
        choices.push((2, Just(Op::Heal).boxed()));
    }
    if caps.loss {
        let p = prop_oneof![Just(0.0), Just(0.5), Just(1.0)];
        choices.push((
            1,
            (pid_in(n), pid_in(n), p)
                .prop_map(|(a, b, p)| Op::SetLoss(a, b, p))
                .boxed(),
        ));
    }
    if caps.inject {
        let bytes = proptest::sample::select(HostileBytes::ALL.to_vec());
        choices.push((
            1,
            (pid_in(n), bytes)
                .prop_map(|(to, bytes)| Op::Hostile { to, bytes })
                .boxed(),
        ));
    }
    if caps.membership && caps.crash_restart {
        // Rare: a scenario has one change or two, and sends around them.
        choices.push((1, Just(Op::Join(unknown)).boxed()));
        choices.push((1, pid_in(n).prop_map(Op::Leave).boxed()));
    }
    Union::new_weighted(choices).boxed()
}

/// A strategy for whole scenarios: a node count in `nodes`, a network seed, and up to
/// `max_ops` ops. Shrinking removes ops, simplifies them, and lowers the node count.
pub fn scenario(
    nodes: RangeInclusive<usize>,
    max_ops: usize,
    caps: Capabilities,
) -> BoxedStrategy<Scenario> {
    // Ops are drawn for the largest cluster and mapped onto the drawn size, rather than drawn
    // after it (`prop_flat_map`): the tuple then shrinks each part on its own, fast.
    let widest = *nodes.end();
    (
        nodes,
        any::<u64>(),
        proptest::collection::vec(op(widest, caps), 0..=max_ops),
    )
        .prop_map(move |(n, seed, ops)| Scenario {
            nodes: n,
            seed,
            ops: ops.into_iter().map(|o| o.fit(widest, n)).collect(),
        })
        .boxed()
}

impl Op {
    /// Maps an op drawn for `widest` nodes onto `n` nodes: pids wrap around, an unknown pid
    /// stays unknown, and partition groups keep only pids that exist.
    fn fit(self, widest: usize, n: usize) -> Op {
        let n_pid = Pid::try_from(n.max(1)).unwrap_or(Pid::MAX - 1);
        let widest_pid = Pid::try_from(widest).unwrap_or(Pid::MAX - 1);
        let pid = |p: Pid| -> Pid {
            if p == BROADCAST {
                p
            } else if p > widest_pid || p < 1 {
                n_pid.saturating_add(1)
            } else {
                (p - 1) % n_pid + 1
            }
        };
        let group = |g: Vec<Pid>| -> Vec<Pid> { g.into_iter().filter(|p| *p <= n_pid).collect() };
        match self {
            Op::Send { from, to, payload } => Op::Send {
                from: pid(from),
                to: pid(to),
                payload,
            },
            Op::Enqueue { from, to, payload } => Op::Enqueue {
                from: pid(from),
                to: pid(to),
                payload,
            },
            Op::Crash(p) => Op::Crash(pid(p)),
            Op::Restart(p) => Op::Restart(pid(p)),
            Op::Partition(a, b) => Op::Partition(group(a), group(b)),
            Op::Cut(a, b) => Op::Cut(pid(a), pid(b)),
            Op::SetLoss(a, b, p) => Op::SetLoss(pid(a), pid(b), p),
            Op::Hostile { to, bytes } => Op::Hostile { to: pid(to), bytes },
            Op::Join(p) => Op::Join(pid(p)),
            Op::Leave(p) => Op::Leave(pid(p)),
            other => other,
        }
    }
}

/// Runs `scenario` on `backend` (whose config must have pids `1..=scenario.nodes`) and
/// returns the finished history. Ops the backend does not support are skipped.
pub async fn run_scenario(
    backend: Box<dyn ClusterUnderTest>,
    scenario: &Scenario,
) -> Result<Vec<Record>, SimError> {
    let caps = backend.capabilities();
    let mut sim = SimCluster::<Vec<u8>>::builder()
        .seed(scenario.seed)
        .build_on(backend)
        .await?;
    for op in &scenario.ops {
        apply(&mut sim, caps, op).await?;
    }
    Ok(sim.finish().await)
}

async fn apply(sim: &mut SimCluster<Vec<u8>>, caps: Capabilities, op: &Op) -> Result<(), SimError> {
    match op {
        Op::Send { from, to, payload } if sim.is_up(*from) => {
            sim.send(*from, *to, payload.clone()).await?;
        }
        Op::Enqueue { from, to, payload } if sim.is_up(*from) => {
            sim.enqueue(*from, *to, payload.clone())?;
        }
        Op::Crash(p) if caps.crash_restart => sim.crash(*p).await?,
        // A node that left is gone for good.
        Op::Restart(p) if caps.crash_restart && !sim.has_left(*p) => {
            sim.restart(*p).await?;
        }
        Op::Partition(a, b) if caps.partition => sim.partition(a, b)?,
        Op::Cut(a, b) if caps.cut => sim.cut(*a, *b)?,
        Op::Heal if caps.partition || caps.cut || caps.loss => sim.heal()?,
        Op::SetLoss(a, b, p) if caps.loss => sim.set_loss(*a, *b, *p)?,
        Op::Settle => {
            sim.settle().await;
        }
        Op::Hostile { to, bytes } if caps.inject && sim.is_up(*to) => {
            match sim.inject_hostile(*to, *bytes) {
                // A backend that claims the capability but cannot (a wrapper that does not
                // pass it on) skips the op, as for any unsupported op.
                Ok(()) | Err(SimError::Unsupported { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Op::Join(p) if caps.membership && !sim.knows(*p) => {
            match sim.join(*p, MEMBERSHIP_WAIT).await {
                Ok(_) | Err(SimError::Unsupported { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Op::Leave(p)
            if caps.membership
                && caps.crash_restart
                && sim.is_up(*p)
                && sim.members().contains(p)
                && sim.members().len() > 2 =>
        {
            sim.leave(*p, MEMBERSHIP_WAIT).await?;
        }
        _ => {}
    }
    Ok(())
}

/// How long a scenario's `Join` or `Leave` waits for `join`/`leave` (simulated time in
/// simulation, where the clock is paused; a node cut off from the members waits it out).
pub(crate) const MEMBERSHIP_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
