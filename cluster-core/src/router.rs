//! Routing decisions, written sans-IO: envelopes and frames in, decisions and counters out.
//! The server's task drives it; it holds no socket, clock or runtime, so every transport
//! shares these semantics line for line.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::{BROADCAST, Envelope, Pid};
use crate::stats::{DropReason, StatsCells};
use crate::wire::{self, Header, Incarnation};

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

pub(crate) struct Router {
    pid: Pid,
    incarnation: Incarnation,
    /// Every configured pid, ascending (self included).
    all: Vec<Pid>,
    max_message_size: usize,
    /// Newest incarnation seen from each pid in `all`.
    newest: Vec<Option<Incarnation>>,
    stats: Arc<StatsCells>,
    encoder: wire::Encoder,
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
    ) -> Self {
        let newest = vec![None; all.len()];
        Self {
            pid,
            incarnation,
            all,
            max_message_size,
            newest,
            stats,
            encoder: wire::Encoder::new(),
            #[cfg(feature = "fault-injection")]
            fault: None,
        }
    }

    /// Test-only: this router with `fault` (see [`RouterFault`]).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn with_fault(mut self, fault: Option<RouterFault>) -> Self {
        self.fault = fault;
        self
    }

    /// Routes one outgoing envelope: encodes it once, hands a copy of the frame to `send`
    /// for each remote destination, and returns the envelope if it is for this node itself.
    /// Every copy is counted as sent and, if refused, as dropped with the reason.
    pub(crate) fn outgoing<M: Serialize>(
        &mut self,
        env: Envelope<M>,
        mut send: impl FnMut(Pid, Bytes) -> Result<(), DropReason>,
    ) -> Option<Envelope<M>> {
        let to = env.pid;
        if to == self.pid && !faulty!(self, NoSelfDelivery) {
            self.stats.sent(to);
            return Some(Envelope::new(self.pid, env.msg_id, env.msg));
        }
        let targets: &[Pid] = if to == BROADCAST {
            &self.all
        } else if self.all.binary_search(&to).is_ok() {
            std::slice::from_ref(&to)
        } else {
            if faulty!(self, UncountedUnknownPeer) {
                return None;
            }
            self.stats.sent(to);
            self.stats.dropped_to(to, DropReason::UnknownPeer, 1);
            return None;
        };
        let header = Header {
            sender: self.pid,
            incarnation: self.incarnation,
            msg_id: env.msg_id,
        };
        let frame = match self.encoder.encode(&header, &env.msg) {
            Ok(f) if f.len() <= self.max_message_size => Ok(f),
            Ok(_) => Err(DropReason::TooLarge),
            Err(e) => {
                tracing::warn!(pid = self.pid, msg_id = env.msg_id, "dropping message: {e}");
                Err(DropReason::Malformed)
            }
        };
        if to != BROADCAST {
            self.stats.sent(to);
            if let Err(reason) = frame.and_then(|f| send(to, f)) {
                self.stats.dropped_to(to, reason, 1);
            }
            return None;
        }
        let mut frame = Some(frame);
        let mut remaining = targets.iter().filter(|p| **p != self.pid).count();
        for &peer in targets.iter().filter(|p| **p != self.pid) {
            self.stats.sent(peer);
            remaining -= 1;
            // The last destination takes the frame itself; the others share it (refcount).
            let copy = if remaining == 0 {
                frame.take()
            } else {
                frame.clone()
            };
            let result = match copy {
                Some(Ok(f)) => send(peer, f),
                Some(Err(reason)) => Err(reason),
                None => Err(DropReason::Malformed),
            };
            if let Err(reason) = result {
                self.stats.dropped_to(peer, reason, 1);
            }
        }
        if faulty!(self, BroadcastToSender) {
            self.stats.sent(self.pid);
            return Some(Envelope::new(self.pid, env.msg_id, env.msg));
        }
        None
    }

    /// Counts a frame dropped on arrival before its sender could be trusted.
    fn drop_hostile(&self, reason: DropReason) {
        if !faulty!(self, UncountedHostile) {
            self.stats.dropped_from(None, reason);
        }
    }

    /// Checks one incoming frame. Returns the envelope to deliver, or counts the drop.
    pub(crate) fn incoming<M: DeserializeOwned>(&mut self, bytes: Bytes) -> Option<Envelope<M>> {
        if bytes.len() > self.max_message_size {
            self.drop_hostile(DropReason::TooLarge);
            return None;
        }
        let h = match Header::parse(&bytes) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(pid = self.pid, "dropping malformed frame: {e}");
                self.drop_hostile(DropReason::Malformed);
                return None;
            }
        };
        let Ok(index) = self.all.binary_search(&h.sender) else {
            self.drop_hostile(DropReason::UnknownSender);
            return None;
        };
        if h.sender == self.pid {
            // Our own frames never travel the network: a forgery.
            self.drop_hostile(DropReason::UnknownSender);
            return None;
        }
        let newest = self.newest.get(index).copied().flatten();
        if newest.is_some_and(|n| h.incarnation < n) && !faulty!(self, AcceptStale) {
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
        // Only a frame that decodes may move the newest incarnation: otherwise one garbage
        // frame with a forged high incarnation would silence the real peer.
        if newest.is_none_or(|n| h.incarnation > n) {
            if let Some(slot) = self.newest.get_mut(index) {
                *slot = Some(h.incarnation);
            }
            self.stats.seen_incarnation(h.sender, h.incarnation);
        }
        Some(Envelope::new(h.sender, h.msg_id, msg))
    }

    pub(crate) fn stats(&self) -> &StatsCells {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    fn router(pid: Pid) -> Router {
        let all = vec![1, 2, 3, 4];
        Router::new(pid, 5, all.clone(), 1024, Arc::new(StatsCells::new(all)))
    }

    fn snapshot(r: &Router) -> Stats {
        r.stats().snapshot()
    }

    #[test]
    fn broadcast_encodes_once_and_skips_the_sender() {
        let mut r = router(2);
        let mut sent = Vec::new();
        let local = r.outgoing(Envelope::new(BROADCAST, 9, "hi".to_string()), |to, f| {
            sent.push((to, f));
            Ok(())
        });
        assert!(local.is_none());
        assert_eq!(
            sent.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
        // One encoding shared by every copy: the frames point at the same bytes.
        let ptr = sent[0].1.as_ptr();
        assert!(sent.iter().all(|(_, f)| f.as_ptr() == ptr));
        assert_eq!(snapshot(&r).sent, 3);
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
        assert!(r.incoming::<u8>(Bytes::from_static(b"garbage")).is_none());
        assert_eq!(snapshot(&r).dropped_incoming.total(), 0);
        let mut r = router(2).with_fault(None);
        assert!(r.incoming::<u8>(Bytes::from_static(b"garbage")).is_none());
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
        let env: Envelope<String> = r.incoming(frames[0].clone()).unwrap();
        assert_eq!(env, Envelope::new(3, 11, "a".to_string()));

        let mut newer = Router::new(
            3,
            6,
            vec![1, 2, 3, 4],
            1024,
            Arc::new(StatsCells::new(vec![])),
        );
        newer.outgoing(Envelope::new(1, 12, "b".to_string()), |_, f| {
            frames.push(f);
            Ok(())
        });
        assert!(r.incoming::<String>(frames[1].clone()).is_some());
        // The old incarnation is now stale.
        assert!(r.incoming::<String>(frames[0].clone()).is_none());
        // Unknown sender, own pid, garbage, wrong type, oversized.
        let forged = |sender| {
            wire::encode(
                &Header {
                    sender,
                    incarnation: 0,
                    msg_id: 0,
                },
                "x",
            )
            .unwrap()
        };
        assert!(r.incoming::<String>(forged(77)).is_none());
        assert!(r.incoming::<String>(forged(1)).is_none());
        assert!(
            r.incoming::<String>(Bytes::from_static(b"garbage"))
                .is_none()
        );
        assert!(r.incoming::<u64>(forged(2)).is_none());
        assert!(
            r.incoming::<String>(Bytes::from(vec![0xC1; 5000]))
                .is_none()
        );
        // A forged high incarnation whose payload does not decode changes nothing.
        let garbage_header = wire::encode(
            &Header {
                sender: 3,
                incarnation: u32::MAX,
                msg_id: 0,
            },
            &(),
        )
        .unwrap()
        .slice(..wire::HEADER_LEN);
        assert!(r.incoming::<String>(garbage_header).is_none());
        assert!(r.incoming::<String>(frames[1].clone()).is_some());
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
        assert_eq!(
            s.peers[&3].dropped_from.get(DropReason::StaleIncarnation),
            1
        );
    }
}
