//! Names for the messages of a simulated run: [`Namer`] sits between a node's recording
//! probe and its transport, and tells the history which message each frame carries
//! ([`MsgRef`]: sender, incarnation, sequence) and, given a summary function, what it says.
//!
//! The sender numbers the messages it hands to its transport; the copies of a broadcast are
//! one message: each copy has its own header (receiver, sequence number) but the same
//! payload, and the router hands them over one after the other in ascending receiver
//! order, so a broadcast copy to a higher pid than the last one, with the same message id
//! and payload, is another copy of the same message. The receiver learns the name from
//! the frame itself: in one process the bytes a node receives are the very bytes its peer
//! sent (the in-memory network moves them, it does not copy them), so a table keyed by
//! their address gives the name back. A backend that copies frames (real sockets, a mutant
//! that corrupts them) leaves arrivals unnamed, with their summary still decoded; on real
//! sockets the table is not kept at all (nothing would ever be found in it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cluster_core::wire::{Destination, Frame, Header};
use cluster_core::{
    DropReason, Incarnation, PeerSet, Pid, Transport, TransportError, TransportEvent,
};
use tokio::sync::watch;

use crate::history::{History, MsgRef, MsgTag, TagFor};

/// A one-line summary of a frame's payload, if it decodes as the cluster's message type.
pub(crate) type Summarize = Arc<dyn Fn(&[u8]) -> Option<String> + Send + Sync>;

/// Frames accepted by a transport and not yet arrived, by the address of their bytes.
#[derive(Default)]
pub(crate) struct Names {
    in_flight: Mutex<BTreeMap<usize, InFlight>>,
}

struct InFlight {
    /// Held so that the address cannot be reused by another frame while this one is named.
    bytes: Bytes,
    tag: MsgTag,
    copies: u32,
}

impl Names {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<usize, InFlight>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn accepted(&self, frame: &Bytes, tag: &MsgTag) {
        let mut in_flight = self.lock();
        let entry = in_flight
            .entry(frame.as_ptr() as usize)
            .or_insert_with(|| InFlight {
                bytes: frame.clone(),
                tag: tag.clone(),
                copies: 0,
            });
        entry.copies += 1;
    }

    fn arrived(&self, frame: &Bytes) -> Option<MsgTag> {
        let mut in_flight = self.lock();
        let key = frame.as_ptr() as usize;
        let entry = in_flight.get_mut(&key)?;
        if entry.bytes.len() != frame.len() {
            return None;
        }
        let tag = entry.tag.clone();
        entry.copies = entry.copies.saturating_sub(1);
        if entry.copies == 0 {
            in_flight.remove(&key);
        }
        Some(tag)
    }
}

/// Whether `b` is the next copy of the broadcast whose previous copy was `a` (see the
/// module docs).
fn next_copy(a: &Bytes, b: &Bytes) -> bool {
    let (Ok(ha), Ok(hb)) = (Frame::decode(a.clone()), Frame::decode(b.clone())) else {
        return false;
    };
    let (x, y) = (ha.header, hb.header);
    x.destination == Destination::Broadcast
        && y.destination == Destination::Broadcast
        && (x.sender, x.incarnation, x.msg_id) == (y.sender, y.incarnation, y.msg_id)
        && y.to > x.to
        && ha.payload() == hb.payload()
}

/// Names the frames of one node incarnation: see the module docs.
pub(crate) struct Namer {
    pid: Pid,
    incarnation: Incarnation,
    inner: Box<dyn Transport>,
    history: History,
    /// Frames in flight by address, when the backend moves frames without copying them.
    names: Option<Arc<Names>>,
    summarize: Option<Summarize>,
    /// What naming sent frames needs, shared by the tasks that send.
    sending: Mutex<Sending>,
}

/// The sending side's numbering.
#[derive(Default)]
struct Sending {
    /// Messages sent so far.
    sent: u64,
    /// The last frame sent and its tag: further copies of it are the same message.
    last: Option<(Bytes, MsgTag)>,
}

impl Namer {
    pub(crate) fn new(
        pid: Pid,
        incarnation: Incarnation,
        inner: Box<dyn Transport>,
        history: History,
        names: Option<Arc<Names>>,
        summarize: Option<Summarize>,
    ) -> Self {
        Self {
            pid,
            incarnation,
            inner,
            history,
            names,
            summarize,
            sending: Mutex::new(Sending::default()),
        }
    }

    fn summary(&self, frame: &[u8]) -> Option<String> {
        self.summarize.as_ref().and_then(|s| s(frame))
    }

    /// The name of a frame about to be sent. Taken under the lock until the frame is named,
    /// so that copies of a broadcast sent by one task stay one message.
    fn tag_sent(&self, frame: &Bytes) -> MsgTag {
        let mut sending = self.sending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((last, tag)) = &sending.last
            && next_copy(last, frame)
        {
            let tag = tag.clone();
            sending.last = Some((frame.clone(), tag.clone()));
            return tag;
        }
        sending.sent += 1;
        let tag = MsgTag {
            msg: Some(MsgRef {
                from: self.pid,
                incarnation: self.incarnation,
                seq: sending.sent,
            }),
            summary: self.summary(frame),
        };
        sending.last = Some((frame.clone(), tag.clone()));
        tag
    }

    fn name_arrival(&self, event: &TransportEvent) {
        let TransportEvent::Frame(frame) = event else {
            return;
        };
        if !self.history.is_enabled() || is_control(frame) {
            return;
        }
        let Ok(header) = Header::parse(frame) else {
            return;
        };
        let known = self.names.as_ref().and_then(|names| names.arrived(frame));
        let tag = known.unwrap_or_else(|| MsgTag {
            msg: None,
            summary: self.summary(frame),
        });
        self.history.tag_next(
            self.pid,
            TagFor::Arrived {
                at: self.pid,
                from: header.sender,
                incarnation: header.incarnation,
                msg_id: header.msg_id,
            },
            tag,
        );
    }
}

#[async_trait]
impl Transport for Namer {
    fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        if !self.history.is_enabled() || is_control(&frame) {
            return self.inner.send(to, frame);
        }
        let header = Header::parse(&frame).ok();
        let tag = self.tag_sent(&frame);
        let result = self.inner.send(to, frame.clone());
        if let Some(names) = self.names.as_ref().filter(|_| result.is_ok()) {
            names.accepted(&frame, &tag);
        }
        if let Some(h) = header {
            let wanted = TagFor::Routed {
                from: h.sender,
                to,
                msg_id: h.msg_id,
            };
            self.history.tag_next(h.sender, wanted, tag);
        }
        result
    }

    // `send_many`: the default, frame by frame, so that each is named. (The probe above
    // calls it only when the history is off, which `send` also checks.)

    async fn writable(&self, to: Pid) {
        self.inner.writable(to).await;
    }

    async fn readable(&self) -> bool {
        self.inner.readable().await
    }

    /// Names each event taken, in order: the history pairs a name with the next arrival
    /// recorded at this node (the probe above takes one at a time while recording).
    fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
        let start = events.len();
        let n = self.inner.try_recv_many(events, max);
        for event in events.iter().skip(start) {
            self.name_arrival(event);
        }
        n
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        self.inner.connected()
    }

    fn may_lose_accepted(&self) -> bool {
        self.inner.may_lose_accepted()
    }

    async fn shutdown(&self, linger: Duration) {
        self.inner.shutdown(linger).await;
    }

    fn incarnation(&self) -> Option<Incarnation> {
        self.inner.incarnation()
    }

    // Membership at run time: the inner transport's to grant (the defaults would refuse).
    fn add_peer(&self, pid: Pid, address: &str) -> Result<(), TransportError> {
        self.inner.add_peer(pid, address)
    }

    fn remove_peer(&self, pid: Pid) -> Result<(), TransportError> {
        self.inner.remove_peer(pid)
    }
}

/// Whether `frame` is a control frame (an acknowledgement or a probe), which carries no message: the
/// test kit's wrappers pass it through without recording it.
pub(crate) fn is_control(frame: &[u8]) -> bool {
    Header::parse(frame).is_ok_and(|h| h.destination.is_control())
}
