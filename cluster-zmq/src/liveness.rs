//! The peers of a transport — configured, or added at run time — and which of them have a
//! live connection, as both backends keep them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cluster_core::{PeerSet, Pid, TransportError, TransportEvent, wire};
use tokio::sync::watch;

/// Whether one peer has a live connection, shared by the table and whatever keeps the
/// connection (libzmq's monitor thread, a `zeromq` peer task).
#[derive(Debug)]
pub(crate) struct Status {
    pid: Pid,
    up: AtomicBool,
    /// Set once, when the peer is removed: from then on nothing publishes it again. A pid
    /// added back gets a status of its own.
    removed: AtomicBool,
}

impl Status {
    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }
}

/// One peer: its status, its `host:port` (as configured or added) and what the backend
/// keeps to reach it (`link`).
pub(crate) struct Peer<L> {
    pub(crate) status: Arc<Status>,
    pub(crate) address: String,
    pub(crate) link: L,
}

/// What adding a peer did: the peer it replaced (the same pid at another address), if any.
pub(crate) struct Added<L> {
    pub(crate) replaced: Option<Arc<Peer<L>>>,
}

/// The peer table: who the peers are (looked up by `send` under a read lock, changed
/// only by membership at run time), which are connected (one flag per peer, and the
/// published set that the server reads through `Transport::connected`), and which were
/// removed (their frames are no longer handed up).
pub(crate) struct Peers<L> {
    /// This node's own pid: never a peer.
    own: Pid,
    table: RwLock<Table<L>>,
    /// Whether `table.removed` is not empty: the receive path skips the lock when none was.
    any_removed: AtomicBool,
    published: watch::Sender<PeerSet>,
}

struct Table<L> {
    /// Ascending by pid.
    current: Vec<Arc<Peer<L>>>,
    /// Pids removed and not added back. At most one entry per pid ever removed (pids are
    /// at most `MAX_PID`).
    removed: BTreeSet<Pid>,
}

impl<L> Table<L> {
    fn position(&self, pid: Pid) -> Result<usize, usize> {
        self.current.binary_search_by_key(&pid, |p| p.status.pid)
    }
}

/// The sender pid of `frame`, if it starts like a cluster frame. A cheap look at the
/// header, not a check: the server checks every frame it is handed.
fn sender_of(frame: &[u8]) -> Option<Pid> {
    match frame {
        [wire::MAGIC, _, _, _, a, b, c, d, ..] => Some(Pid::from_le_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

impl<L> Peers<L> {
    /// A table of node `own` with no peers yet.
    pub(crate) fn new(own: Pid) -> Arc<Self> {
        Arc::new(Self {
            own,
            table: RwLock::new(Table {
                current: Vec::new(),
                removed: BTreeSet::new(),
            }),
            any_removed: AtomicBool::new(false),
            published: watch::Sender::new(PeerSet::new()),
        })
    }

    // A panic while holding the table's lock leaves it whole: every critical section is
    // a lookup, or one insertion or removal in the vector and the set.
    fn read(&self) -> RwLockReadGuard<'_, Table<L>> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table<L>> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds peer `pid` at `address` (already checked), its link made by `make` (under the
    /// table's lock: make it quick). `Ok(None)` if it is a peer at that address already.
    /// A peer at another address has moved: it is replaced (its old status is retired as
    /// on removal, but its frames are still handed up), and returned for the backend to
    /// close its old link. This node's own pid is an error.
    pub(crate) fn add(
        &self,
        pid: Pid,
        address: &str,
        make: impl FnOnce(Arc<Status>) -> Result<L, TransportError>,
    ) -> Result<Option<Added<L>>, TransportError> {
        if pid == self.own {
            return Err(own_pid(pid));
        }
        let mut table = self.write();
        let (at, moved) = match table.position(pid) {
            Ok(i) if table.current.get(i).is_some_and(|p| p.address == address) => {
                return Ok(None);
            }
            Ok(i) => (i, true),
            Err(i) => (i, false),
        };
        let status = Arc::new(Status {
            pid,
            up: AtomicBool::new(false),
            removed: AtomicBool::new(false),
        });
        let peer = Arc::new(Peer {
            link: make(Arc::clone(&status))?,
            status,
            address: address.to_owned(),
        });
        let replaced = if moved {
            let slot = table.current.get_mut(at);
            slot.map(|slot| std::mem::replace(slot, Arc::clone(&peer)))
        } else {
            table.current.insert(at, Arc::clone(&peer));
            None
        };
        if let Some(old) = &replaced {
            self.retire(old, Some(&peer.status));
        }
        table.removed.remove(&pid);
        self.any_removed
            .store(!table.removed.is_empty(), Ordering::SeqCst);
        Ok(Some(Added { replaced }))
    }

    /// Takes `peer` out of the published set for good, unless `successor` (the link that
    /// replaces it, for a peer that moved) is up: its task was spawned before this runs
    /// and may have connected already. Under the set's lock, as in `set`, so the two
    /// cannot interleave: a successor that comes up later publishes the pid itself.
    fn retire(&self, peer: &Peer<L>, successor: Option<&Status>) {
        self.published.send_if_modified(|set| {
            peer.status.removed.store(true, Ordering::SeqCst);
            peer.status.up.store(false, Ordering::SeqCst);
            if successor.is_some_and(Status::is_up) {
                return false;
            }
            set.remove(&peer.status.pid)
        });
    }

    /// Removes peer `pid`: from now on it is unknown to `send`, absent from the published
    /// set (whatever its connection reports later), and its frames are not handed up.
    /// Returns it, for the backend to close its link; `Ok(None)` if it was not a peer. This
    /// node's own pid is an error.
    pub(crate) fn remove(&self, pid: Pid) -> Result<Option<Arc<Peer<L>>>, TransportError> {
        if pid == self.own {
            return Err(TransportError::Unavailable {
                pid,
                reason: "cannot remove it: it is this node's own pid".into(),
            });
        }
        let mut table = self.write();
        let Ok(at) = table.position(pid) else {
            return Ok(None);
        };
        let peer = table.current.remove(at);
        table.removed.insert(pid);
        self.any_removed.store(true, Ordering::SeqCst);
        self.retire(&peer, None);
        Ok(Some(peer))
    }

    /// Calls `f` with peer `pid`, under the table's read lock (keep it short, no await);
    /// `None` if `pid` is not a peer.
    pub(crate) fn with<R>(&self, pid: Pid, f: impl FnOnce(&Peer<L>) -> R) -> Option<R> {
        let table = self.read();
        let peer = table.current.get(table.position(pid).ok()?)?;
        Some(f(peer))
    }

    /// Peer `pid`, if it is one.
    pub(crate) fn get(&self, pid: Pid) -> Option<Arc<Peer<L>>> {
        let table = self.read();
        table.current.get(table.position(pid).ok()?).cloned()
    }

    /// Every peer, ascending by pid.
    pub(crate) fn all(&self) -> Vec<Arc<Peer<L>>> {
        self.read().current.clone()
    }

    /// How many peers there are.
    pub(crate) fn len(&self) -> usize {
        self.read().current.len()
    }

    /// Marks the peer of `status` up or down and republishes the set if it changed; a
    /// removed peer stays out.
    pub(crate) fn set(&self, status: &Status, up: bool) {
        self.published.send_if_modified(|set| {
            // Under the set's lock, as in `remove`: a removed peer's connection may report
            // after its removal, and must not publish it again.
            if status.is_removed() {
                return false;
            }
            status.up.store(up, Ordering::SeqCst);
            if up {
                set.insert(status.pid)
            } else {
                set.remove(&status.pid)
            }
        });
    }

    pub(crate) fn all_down(&self) {
        for peer in self.all() {
            self.set(&peer.status, false);
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<PeerSet> {
        self.published.subscribe()
    }

    /// Whether `frame` names a removed peer as its sender: such frames are not handed up.
    pub(crate) fn is_from_removed(&self, frame: &[u8]) -> bool {
        if !self.any_removed.load(Ordering::SeqCst) {
            return false;
        }
        sender_of(frame).is_some_and(|sender| self.read().removed.contains(&sender))
    }

    /// Drops, from `events[from..]`, the frames [`Peers::is_from_removed`], keeping the
    /// order of the rest; returns how many of them were messages (not control frames).
    #[cfg_attr(not(feature = "zeromq"), allow(dead_code))]
    pub(crate) fn drop_from_removed(&self, events: &mut Vec<TransportEvent>, from: usize) -> u64 {
        if !self.any_removed.load(Ordering::SeqCst) {
            return 0;
        }
        let mut messages = 0;
        let mut kept = from;
        for i in from..events.len() {
            let drop = match events.get(i) {
                Some(TransportEvent::Frame(frame)) if self.is_from_removed(frame) => {
                    messages += u64::from(!wire::is_control(frame));
                    true
                }
                _ => false,
            };
            if !drop {
                events.swap(kept, i);
                kept += 1;
            }
        }
        events.truncate(kept);
        messages
    }
}

/// The error for adding this node's own pid.
fn own_pid(pid: Pid) -> TransportError {
    TransportError::Unavailable {
        pid,
        reason: "cannot add it as a peer: it is this node's own pid".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cluster_core::wire::{Destination, Header};

    fn table() -> Arc<Peers<()>> {
        let peers = Peers::new(1);
        for pid in [3, 2] {
            peers
                .add(pid, &format!("127.0.0.1:{pid}"), |_| Ok(()))
                .unwrap();
        }
        peers
    }

    fn frame(sender: Pid, destination: Destination) -> Bytes {
        let header = Header {
            destination,
            ..Header::new(sender, 1, 0, 7)
        };
        wire::encode(&header, "x").unwrap()
    }

    #[test]
    fn peers_are_kept_in_order_and_adding_one_again_changes_nothing() {
        let peers = table();
        let pids: Vec<Pid> = peers.all().iter().map(|p| p.status.pid()).collect();
        assert_eq!(pids, [2, 3]);
        assert!(peers.add(2, "127.0.0.1:2", |_| Ok(())).unwrap().is_none());
        let e = peers.add(1, "127.0.0.1:1", |_| Ok(())).err().unwrap();
        assert!(e.to_string().contains("own pid"), "{e}");
        assert!(peers.remove(1).is_err());
        assert!(peers.remove(9).unwrap().is_none());
        assert_eq!(peers.len(), 2);
    }

    #[test]
    fn a_removed_peer_is_never_published_again_but_one_added_back_is() {
        let peers = table();
        let set = peers.subscribe();
        let old = peers.get(3).unwrap();
        peers.set(&old.status, true);
        assert!(set.borrow().contains(&3));
        peers.remove(3).unwrap().unwrap();
        assert!(!set.borrow().contains(&3));
        assert!(peers.get(3).is_none());
        // The old connection's late news.
        peers.set(&old.status, true);
        assert!(!set.borrow().contains(&3));
        peers.add(3, "127.0.0.1:3", |_| Ok(())).unwrap().unwrap();
        peers.set(&peers.get(3).unwrap().status, true);
        peers.set(&old.status, false);
        assert!(set.borrow().contains(&3));
    }

    #[test]
    fn a_peer_added_at_another_address_has_moved_and_its_old_link_is_retired() {
        let peers = table();
        let set = peers.subscribe();
        let old = peers.get(2).unwrap();
        peers.set(&old.status, true);
        let added = peers.add(2, "127.0.0.1:9", |_| Ok(())).unwrap().unwrap();
        assert!(Arc::ptr_eq(&added.replaced.unwrap(), &old));
        assert!(old.status.is_removed() && !set.borrow().contains(&2));
        assert_eq!(peers.get(2).unwrap().address, "127.0.0.1:9");
        assert_eq!(peers.len(), 2);
        // Moved, not removed: its frames are still handed up.
        assert!(!peers.is_from_removed(&frame(2, Destination::Peer)));
        peers.set(&old.status, true);
        assert!(!set.borrow().contains(&2));
        peers.set(&peers.get(2).unwrap().status, true);
        assert!(set.borrow().contains(&2));
    }

    /// The link of a moved peer is spawned before its old one is retired, and may connect
    /// in between (on a loaded machine): retiring the old one must not unpublish the pid
    /// the new one just published (the new link would never publish it again).
    #[test]
    fn a_moved_peer_whose_new_link_connects_at_once_stays_published() {
        let peers = table();
        let set = peers.subscribe();
        let old = peers.get(2).unwrap();
        peers.set(&old.status, true);
        let added = peers
            .add(2, "127.0.0.1:9", |status| {
                peers.set(&status, true);
                Ok(())
            })
            .unwrap()
            .unwrap();
        assert!(added.replaced.unwrap().status.is_removed());
        assert!(set.borrow().contains(&2), "{:?}", set.borrow());
        peers.set(&old.status, false);
        assert!(set.borrow().contains(&2));
        peers.set(&peers.get(2).unwrap().status, false);
        assert!(!set.borrow().contains(&2));
    }

    #[test]
    fn frames_from_a_removed_peer_are_dropped_and_only_messages_counted() {
        let peers = table();
        let mut events = vec![
            TransportEvent::Frame(frame(3, Destination::Peer)),
            TransportEvent::Frame(frame(2, Destination::Peer)),
        ];
        assert_eq!(peers.drop_from_removed(&mut events, 0), 0);
        assert_eq!(events.len(), 2);
        peers.remove(3).unwrap();
        let dropped = TransportEvent::Dropped {
            peer: 3,
            reason: cluster_core::DropReason::UnknownPeer,
            count: 1,
        };
        let mut events = vec![
            TransportEvent::Frame(frame(3, Destination::Peer)),
            TransportEvent::Frame(frame(3, Destination::Peer)),
            TransportEvent::Frame(frame(2, Destination::Peer)),
            TransportEvent::Frame(frame(3, Destination::Hello)),
            dropped.clone(),
            TransportEvent::Frame(Bytes::from_static(b"garbage")),
            TransportEvent::Frame(frame(3, Destination::Broadcast)),
        ];
        assert_eq!(peers.drop_from_removed(&mut events, 1), 2);
        assert_eq!(
            events,
            [
                TransportEvent::Frame(frame(3, Destination::Peer)),
                TransportEvent::Frame(frame(2, Destination::Peer)),
                dropped,
                TransportEvent::Frame(Bytes::from_static(b"garbage")),
            ]
        );
        peers.add(3, "127.0.0.1:3", |_| Ok(())).unwrap();
        assert!(!peers.is_from_removed(&frame(3, Destination::Peer)));
    }
}
