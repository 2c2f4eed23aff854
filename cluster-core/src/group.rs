//! Multicast addressing: who a multicast goes to ([`Recipients`]), and the named groups a
//! node expands on its own side ([`GroupError`] when a definition is unusable).
//!
//! A group is a sender-side name for a list of pids. The sending node expands it from its
//! own table (from the config's `"groups"`, changed at run time with
//! [`Server::set_group`](crate::Server::set_group)); the frames carry no group name, so
//! receivers need no definitions, and a change on one node is not propagated to others.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use crate::envelope::Pid;

/// The destinations of a multicast ([`Outbox::multicast`](crate::Outbox::multicast)).
///
/// Converts from a list of pids (`vec![2, 3]`, `[2, 3]`, `&[2, 3][..]`) or a group name
/// (`"replicas"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Recipients {
    /// These pids: each once (duplicates are sent once), this node's own included (that
    /// copy lands in its own inbox), unknown ones dropped and counted as `unknown_peer`.
    Pids(Vec<Pid>),
    /// The members of this node's group of this name, at the time of the send.
    Group(String),
}

impl From<Vec<Pid>> for Recipients {
    fn from(pids: Vec<Pid>) -> Self {
        Self::Pids(pids)
    }
}

impl From<&[Pid]> for Recipients {
    fn from(pids: &[Pid]) -> Self {
        Self::Pids(pids.to_vec())
    }
}

impl<const N: usize> From<[Pid; N]> for Recipients {
    fn from(pids: [Pid; N]) -> Self {
        Self::Pids(pids.to_vec())
    }
}

impl From<&str> for Recipients {
    fn from(name: &str) -> Self {
        Self::Group(name.to_owned())
    }
}

impl From<String> for Recipients {
    fn from(name: String) -> Self {
        Self::Group(name)
    }
}

impl fmt::Display for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pids(pids) => write!(f, "pids {pids:?}"),
            Self::Group(name) => write!(f, "group \"{name}\""),
        }
    }
}

/// A group definition that cannot be used: in the config's `"groups"` (then inside a
/// [`ConfigError`](crate::ConfigError)) or given to
/// [`Server::set_group`](crate::Server::set_group).
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The group's name is empty.
    #[error("a group name must not be empty")]
    EmptyName,
    /// A member is not one of the configured pids.
    #[error("group \"{group}\": pid {pid} is not one of the configured peers")]
    UnknownPid {
        /// The group.
        group: String,
        /// The pid.
        pid: Pid,
    },
}

crate::report::debug_as_message!(GroupError);

/// Checks a group definition against the configured pids (`is_member`): its members,
/// ascending, each once.
pub(crate) fn members(
    name: &str,
    pids: impl IntoIterator<Item = Pid>,
    is_member: impl Fn(Pid) -> bool,
) -> Result<Vec<Pid>, GroupError> {
    if name.is_empty() {
        return Err(GroupError::EmptyName);
    }
    let mut members = Vec::new();
    for pid in pids {
        if !is_member(pid) {
            return Err(GroupError::UnknownPid {
                group: name.to_owned(),
                pid,
            });
        }
        members.push(pid);
    }
    members.sort_unstable();
    members.dedup();
    Ok(members)
}

/// A node's groups, shared by its outboxes (which expand them) and its server (which
/// changes them). Members are checked before they get here.
#[derive(Debug, Clone, Default)]
pub(crate) struct Groups(Arc<RwLock<BTreeMap<String, Arc<[Pid]>>>>);

impl Groups {
    pub(crate) fn new(groups: &BTreeMap<String, Vec<Pid>>) -> Self {
        let table = groups
            .iter()
            .map(|(name, pids)| (name.clone(), Arc::from(pids.as_slice())))
            .collect();
        Self(Arc::new(RwLock::new(table)))
    }

    /// The members of `name`, if it is defined.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<[Pid]>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Defines (or redefines) `name` as `members`.
    pub(crate) fn set(&self, name: String, members: Vec<Pid>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, Arc::from(members));
    }

    /// Forgets `name`; its members, if it was defined.
    pub(crate) fn remove(&self, name: &str) -> Option<Vec<Pid>> {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .map(|pids| pids.to_vec())
    }

    /// Every group and its members.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, Vec<Pid>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, pids)| (name.clone(), pids.to_vec()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_checked_sorted_and_deduplicated() {
        let known = |pid: Pid| (1..=4).contains(&pid);
        assert_eq!(members("g", [3, 1, 3, 2], known), Ok(vec![1, 2, 3]));
        assert_eq!(members("g", [], known), Ok(vec![]));
        assert_eq!(members("", [1], known), Err(GroupError::EmptyName));
        let e = members("raft", [1, 9], known).unwrap_err();
        assert_eq!(
            e,
            GroupError::UnknownPid {
                group: "raft".into(),
                pid: 9
            }
        );
        assert_eq!(
            e.to_string(),
            "group \"raft\": pid 9 is not one of the configured peers"
        );
        assert_eq!(format!("{e:?}"), e.to_string());
    }

    #[test]
    fn recipients_convert_from_lists_and_names() {
        assert_eq!(Recipients::from(vec![2, 3]), Recipients::Pids(vec![2, 3]));
        assert_eq!(Recipients::from([2, 3]), Recipients::Pids(vec![2, 3]));
        assert_eq!(Recipients::from(&[2][..]), Recipients::Pids(vec![2]));
        assert_eq!(Recipients::from("g"), Recipients::Group("g".into()));
        assert_eq!(
            Recipients::from(String::from("g")).to_string(),
            "group \"g\""
        );
        assert_eq!(Recipients::from([1]).to_string(), "pids [1]");
    }

    #[test]
    fn the_table_is_shared_by_its_clones() {
        let groups = Groups::new(&BTreeMap::from([("a".to_owned(), vec![1, 2])]));
        let other = groups.clone();
        assert_eq!(other.get("a").as_deref(), Some(&[1, 2][..]));
        groups.set("b".into(), vec![3]);
        assert_eq!(other.get("b").as_deref(), Some(&[3][..]));
        assert_eq!(other.remove("a"), Some(vec![1, 2]));
        assert_eq!(groups.get("a"), None);
        assert_eq!(groups.remove("a"), None);
        assert_eq!(
            groups.snapshot(),
            BTreeMap::from([("b".to_owned(), vec![3])])
        );
    }
}
