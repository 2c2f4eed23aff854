//! Membership at run time: which pids are in the cluster, and how changes spread
//! ([`Server::add_peer`](crate::Server::add_peer),
//! [`Server::remove_peer`](crate::Server::remove_peer), [`Server::join`](crate::Server::join),
//! [`Server::leave`](crate::Server::leave)).
//!
//! # The rule (this is not consensus)
//!
//! Every node keeps a table of *records*, one per pid ever a member: its address, whether
//! it is in the cluster now, and the *stamp* of the change that set it — an epoch and the
//! pid of the node that made the change. The config's peers start with stamp `(0, 0)`. A
//! node making a change stamps it one epoch above the highest it has seen, applies it, and
//! sends it to every member; a node that applies a change it had not seen sends it on to
//! every member too, and two nodes that find each other [`Up`](crate::Event::Up) exchange
//! their tables. A record is replaced only by one with a higher stamp, compared as
//! `(epoch, origin pid)`: the same rule on every node, so all nodes that have exchanged
//! what they know hold the same table, whatever the order the changes arrived in. Two
//! concurrent changes to one pid are both kept by nobody: the one with the higher stamp
//! wins everywhere (the other is lost, not merged). Nothing waits for a majority, nothing
//! is acknowledged: a node cut off from the others while changes are made learns them when
//! it is up with any node that has them.
//!
//! # Joining and leaving
//!
//! A node that is not yet a member is unknown to the members: its frames are dropped as
//! `unknown_sender`. It asks to join ([`Server::join`](crate::Server::join)) with a *join
//! request*: a membership frame whose only record is itself, present, at its address. A
//! member that accepts it makes the change itself (stamped by that member) and spreads
//! it. With a cluster key, only a request sealed under the key is accepted: a node
//! without the key cannot join. Without a key, anyone who can reach a member can join
//! (and, likewise, any frame can claim any pid: see C10). A leave request is the same
//! with the record absent.
//!
//! # Messages in flight during a change
//!
//! Once a peer is removed at a node: messages to it are dropped as `unknown_peer` (those
//! its transport still held are discarded and counted with the same reason), its frames
//! are dropped as `unknown_sender`, and its counters stay in [`Stats`](crate::Stats). A
//! peer added at a node is reachable once its connection is up, like any peer; messages to
//! it before that are `unreachable`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::Pid;

/// One pid's membership record, as every node holds it (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The pid.
    pub pid: Pid,
    /// Its address, `host:port`.
    pub address: String,
    /// Whether it is in the cluster (`false`: it left or was removed).
    pub present: bool,
    /// The epoch of the change that set this record (0: the config).
    pub epoch: u64,
    /// The pid of the node that made that change (0 for the config).
    pub origin: Pid,
}

impl Member {
    fn stamp(&self) -> (u64, Pid) {
        (self.epoch, self.origin)
    }
}

/// What applying a record changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// The pid is a member now, and was not before.
    Joined,
    /// The pid was a member, and is not now.
    Left,
    /// Still a member, at another address.
    Moved,
    /// The record is newer, but the membership is the same.
    Same,
}

/// The membership table (see the [module docs](self)): the config's records, and over
/// them those changed since. Cheap to clone until changes pile up (the config's peers are
/// shared).
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    /// The config's peers, present, stamped `(0, 0)`, unless `changed` has a record.
    base: Option<crate::Config>,
    /// Records set by changes.
    changed: BTreeMap<Pid, Member>,
    /// The highest epoch seen.
    epoch: u64,
}

impl Table {
    /// The config's peers, present, stamped `(0, 0)`.
    pub(crate) fn from_config(config: &crate::Config) -> Self {
        Self {
            base: Some(config.clone()),
            changed: BTreeMap::new(),
            epoch: 0,
        }
    }

    fn base_record(&self, pid: Pid) -> Option<Member> {
        let p = self.base.as_ref()?.peer(pid)?;
        Some(Member {
            pid,
            address: p.address.clone(),
            present: true,
            epoch: 0,
            origin: 0,
        })
    }

    /// A change made by node `me`: stamped one epoch above the highest seen, and applied.
    pub(crate) fn change(
        &mut self,
        me: Pid,
        pid: Pid,
        address: String,
        present: bool,
    ) -> (Member, Option<Applied>) {
        let record = Member {
            pid,
            address,
            present,
            epoch: self.epoch.saturating_add(1),
            origin: me,
        };
        let applied = self.merge(record.clone());
        (record, applied)
    }

    /// Applies `record` if its stamp is higher than the one held for its pid; says what
    /// that changed (`None`: not applied).
    pub(crate) fn merge(&mut self, record: Member) -> Option<Applied> {
        self.epoch = self.epoch.max(record.epoch);
        let before = self.get(record.pid);
        if before.as_ref().is_some_and(|b| b.stamp() >= record.stamp()) {
            return None;
        }
        let applied = match before {
            Some(b) if b.present && record.present && b.address != record.address => Applied::Moved,
            Some(b) if b.present == record.present => Applied::Same,
            None if !record.present => Applied::Same,
            _ if record.present => Applied::Joined,
            _ => Applied::Left,
        };
        self.changed.insert(record.pid, record);
        Some(applied)
    }

    /// The pids in the cluster now, ascending.
    pub(crate) fn present(&self) -> Vec<Pid> {
        self.records()
            .into_iter()
            .filter(|m| m.present)
            .map(|m| m.pid)
            .collect()
    }

    /// The record of `pid`, if any.
    pub(crate) fn get(&self, pid: Pid) -> Option<Member> {
        self.changed
            .get(&pid)
            .cloned()
            .or_else(|| self.base_record(pid))
    }

    /// Every record, by pid.
    pub(crate) fn records(&self) -> Vec<Member> {
        let mut out: BTreeMap<Pid, Member> = self
            .base
            .iter()
            .flat_map(|c| c.pids())
            .filter_map(|pid| self.base_record(pid).map(|m| (pid, m)))
            .collect();
        out.extend(self.changed.iter().map(|(p, m)| (*p, m.clone())));
        out.into_values().collect()
    }

    /// Whether any change was made since the config (so tables are worth exchanging).
    pub(crate) fn changed(&self) -> bool {
        self.epoch > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let config = crate::Config::local(3, 7000).unwrap();
        Table::from_config(&config)
    }

    #[test]
    fn the_higher_stamp_wins_in_any_order() {
        let mut a = table();
        let mut b = table();
        // Concurrent changes to pid 4 at nodes 1 and 2, at the same epoch: node 2's wins.
        let (add, applied) = a.change(1, 4, "127.0.0.1:7004".into(), true);
        assert_eq!(applied, Some(Applied::Joined));
        let (remove, _) = b.change(2, 4, "127.0.0.1:7004".into(), false);
        assert_eq!((add.epoch, remove.epoch), (1, 1));
        assert_eq!(a.merge(remove.clone()), Some(Applied::Left));
        assert_eq!(b.merge(add.clone()), None, "older stamp");
        assert_eq!(a.records(), b.records());
        assert_eq!(a.present(), [1, 2, 3]);
        // A later change wins over both, and the epoch moves past what was seen.
        let (again, applied) = a.change(1, 4, "127.0.0.1:7104".into(), true);
        assert_eq!((again.epoch, applied), (2, Some(Applied::Joined)));
        assert_eq!(b.merge(again), Some(Applied::Joined));
        assert_eq!(a.records(), b.records());
        assert_eq!(
            b.get(4).map(|m| m.address),
            Some("127.0.0.1:7104".to_owned())
        );
        // Seen again: nothing.
        assert_eq!(b.merge(add), None);
        assert_eq!(b.merge(remove), None);
    }

    #[test]
    fn moves_and_config_records() {
        let mut a = table();
        assert!(!a.changed());
        let (_, applied) = a.change(1, 2, "127.0.0.1:9999".into(), true);
        assert_eq!(applied, Some(Applied::Moved));
        assert!(a.changed());
        let (_, applied) = a.change(1, 7, "127.0.0.1:7007".into(), false);
        assert_eq!(
            applied,
            Some(Applied::Same),
            "removing a stranger changes nothing"
        );
        assert_eq!(a.present(), [1, 2, 3]);
    }
}
