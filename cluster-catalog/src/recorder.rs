//! [`Recorder`]: keeps a running server's catalog current.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use cluster_core::{Incarnation, Pid, ServerMonitor};
use tokio::sync::oneshot;

use crate::catalog::{PeerCatalog, own_record_update};
use crate::error::CatalogError;
use crate::node::NodeCatalog;
use crate::record::{PeerStatus, seen_between};

/// How often a recorder polls the server's counters and flushes the catalog, by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Records what a server observes into its catalog: each peer's status (from connection
/// changes, at once), last seen (a connection came up, or messages from the peer were
/// delivered) and newest incarnation (polled every interval). Writes run on tokio's blocking
/// pool; the catalog is flushed after every interval in which something changed.
///
/// Dropping the recorder stops it, records the final state, flushes and closes the
/// catalog — synchronously, so that once a server that owns it (through
/// [`ServerBuilder::attach_with`](cluster_core::ServerBuilder::attach_with)) has finished
/// `shutdown`, the catalog is on disk and its directory can be reopened.
pub struct Recorder {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("pid", &self.shared.pid)
            .finish_non_exhaustive()
    }
}

struct Shared {
    pid: Pid,
    monitor: ServerMonitor,
    /// `None` once the recorder has stopped and closed the catalog.
    state: Mutex<Option<State>>,
}

struct State {
    node: NodeCatalog,
    /// What was last written for each peer.
    written: BTreeMap<Pid, Written>,
    /// The membership records last written (or read at start).
    members: Vec<cluster_core::Member>,
}

#[derive(Default)]
struct Written {
    delivered: u64,
    status: Option<PeerStatus>,
    incarnation: Option<Incarnation>,
}

impl Recorder {
    /// Starts recording `monitor`'s server into `catalog`, polling every `interval`.
    ///
    /// Called inside a tokio runtime (as [`ServerBuilder::build`](cluster_core::ServerBuilder::build)
    /// runs `attach_with` hooks); outside one no task can run, so only the final state is
    /// recorded when the recorder is dropped (and a warning is logged).
    pub fn spawn(catalog: NodeCatalog, monitor: ServerMonitor, interval: Duration) -> Self {
        let written = catalog
            .catalog()
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let w = Written {
                    delivered: 0,
                    status: None,
                    incarnation: r.incarnation,
                };
                (r.pid, w)
            })
            .collect();
        let members = catalog.catalog().membership().unwrap_or_default();
        let shared = Arc::new(Shared {
            pid: catalog.pid(),
            monitor,
            state: Mutex::new(Some(State {
                node: catalog,
                written,
                members,
            })),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(run(
                    Arc::clone(&shared),
                    stop_rx,
                    interval.max(Duration::from_millis(1)),
                ));
            }
            Err(_) => tracing::warn!(
                pid = shared.pid,
                "peer catalog recorder started outside a tokio runtime: it records only at stop"
            ),
        }
        Self {
            shared,
            stop: Some(stop_tx),
        }
    }

    /// Runs `f` on the catalog (blocking while a write is in progress); `None` once stopped.
    pub fn with_catalog<R>(&self, f: impl FnOnce(&PeerCatalog) -> R) -> Option<R> {
        self.shared.lock().as_ref().map(|s| f(s.node.catalog()))
    }

    /// Records what the server observed since the last poll and flushes, now (blocking).
    pub fn record_now(&self) -> Result<(), CatalogError> {
        self.shared.sync(SystemTime::now(), false).map(|_| ())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // Dropping the sender stops the task at its next wake-up.
        self.stop.take();
        let state = self.shared.lock().take();
        if let Some(mut state) = state
            && let Err(e) = self.shared.sync_state(&mut state, SystemTime::now(), true)
        {
            tracing::warn!(
                pid = self.shared.pid,
                "peer catalog: final record failed: {e}"
            );
        }
        // `state` (if any) has dropped here, closing the database.
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<State>> {
        // A panic during a write leaves sled consistent; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records and flushes; `Ok(false)` once the recorder has stopped.
    fn sync(&self, now: SystemTime, last: bool) -> Result<bool, CatalogError> {
        let mut guard = self.lock();
        match guard.as_mut() {
            Some(state) => self.sync_state(state, now, last).map(|_| true),
            None => Ok(false),
        }
    }

    fn sync_state(
        &self,
        state: &mut State,
        now: SystemTime,
        last: bool,
    ) -> Result<(), CatalogError> {
        let stats = self.monitor.stats();
        let connected: BTreeSet<Pid> = self.monitor.connected_peers().into_iter().collect();
        let catalog = state.node.catalog();
        let mut dirty = false;
        // Membership changed at run time: the records, so that a restart starts from them,
        // and a peer record for each member that joined.
        let members = self.monitor.members();
        if members != state.members && members.iter().any(|m| m.epoch > 0) {
            catalog.set_membership(&members)?;
            for m in members.iter().filter(|m| m.present && m.pid != self.pid) {
                if catalog.get(m.pid)?.is_none() {
                    catalog.upsert(&crate::record::PeerRecord::new(m.pid, m.address.clone()))?;
                }
            }
            state.members = members;
            dirty = true;
        }
        for (&pid, peer) in stats.peers.iter().filter(|(p, _)| **p != self.pid) {
            let w = state.written.entry(pid).or_default();
            let status = if connected.contains(&pid) {
                PeerStatus::Up
            } else {
                PeerStatus::Down
            };
            let seen = seen_between(
                w.status == Some(PeerStatus::Up),
                w.delivered,
                status == PeerStatus::Up,
                peer.delivered,
            );
            let newer = peer.incarnation.is_some() && peer.incarnation != w.incarnation;
            // With the status unchanged, the peer was seen only if messages from it were
            // delivered since.
            if w.status == Some(status) && !seen && !newer {
                continue;
            }
            catalog.update(pid, |r| {
                let mut r = r?;
                r.status = status;
                if seen {
                    r.last_seen = Some(now);
                }
                if newer {
                    r.incarnation = peer.incarnation;
                }
                Some(r)
            })?;
            w.status = Some(status);
            w.delivered = peer.delivered;
            if newer {
                w.incarnation = peer.incarnation;
            }
            dirty = true;
        }
        if last {
            let incarnation = state.node.incarnation();
            catalog.update(self.pid, |r| {
                own_record_update(r, incarnation, PeerStatus::Down, now)
            })?;
            dirty = true;
        }
        if dirty {
            catalog.flush()?;
        }
        Ok(())
    }
}

async fn run(shared: Arc<Shared>, mut stop: oneshot::Receiver<()>, interval: Duration) {
    let mut changes = shared.monitor.connection_changes();
    let mut changes_open = true;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {}
            changed = changes.changed(), if changes_open => {
                changes_open = changed.is_ok();
            }
        }
        let s = Arc::clone(&shared);
        match tokio::task::spawn_blocking(move || s.sync(SystemTime::now(), false)).await {
            Ok(Ok(true)) => failures = 0,
            Ok(Ok(false)) | Err(_) => break,
            Ok(Err(e)) => {
                failures += 1;
                // Log the first failure and then every hundredth, not every tick.
                if failures % 100 == 1 {
                    tracing::warn!(
                        pid = shared.pid,
                        failures,
                        "peer catalog: recording failed: {e}"
                    );
                }
            }
        }
    }
}
