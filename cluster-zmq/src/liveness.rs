//! Which peers have a live connection, as both backends keep it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cluster_core::{DropReason, PeerSet, Pid};
use tokio::sync::watch;

/// Which peers have a live connection: one flag per peer (read by `send` without locking)
/// and the published set (read by the server through `Transport::connected`).
pub(crate) struct Liveness {
    pids: Vec<Pid>,
    flags: Vec<AtomicBool>,
    published: watch::Sender<PeerSet>,
}

impl Liveness {
    pub(crate) fn new(pids: Vec<Pid>) -> Arc<Self> {
        let flags = pids.iter().map(|_| AtomicBool::new(false)).collect();
        Arc::new(Self {
            pids,
            flags,
            published: watch::Sender::new(PeerSet::new()),
        })
    }

    pub(crate) fn index(&self, pid: Pid) -> Option<usize> {
        self.pids.binary_search(&pid).ok()
    }

    /// The pid of peer `index` (-1 if there is none). For libzmq's connection log.
    #[cfg_attr(not(feature = "libzmq"), allow(dead_code))]
    pub(crate) fn pid_at(&self, index: usize) -> Pid {
        self.pids.get(index).copied().unwrap_or(-1)
    }

    /// The index of `to` if it may be sent to now: `unknown_peer` for a pid not in the
    /// config, `unreachable` for a peer without a live connection.
    pub(crate) fn check(&self, to: Pid) -> Result<usize, DropReason> {
        let index = self.index(to).ok_or(DropReason::UnknownPeer)?;
        if self.is_up(index) {
            Ok(index)
        } else {
            Err(DropReason::Unreachable)
        }
    }

    pub(crate) fn is_up(&self, index: usize) -> bool {
        self.flags
            .get(index)
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Marks peer `index` up or down and republishes the set if it changed.
    pub(crate) fn set(&self, index: usize, up: bool) {
        let Some(flag) = self.flags.get(index) else {
            return;
        };
        flag.store(up, Ordering::SeqCst);
        let Some(&pid) = self.pids.get(index) else {
            return;
        };
        self.published.send_if_modified(|set| {
            if up {
                set.insert(pid)
            } else {
                set.remove(&pid)
            }
        });
    }

    pub(crate) fn all_down(&self) {
        for i in 0..self.flags.len() {
            self.set(i, false);
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<PeerSet> {
        self.published.subscribe()
    }
}
