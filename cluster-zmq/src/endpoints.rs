//! Where a node listens and whom it connects to, from its config: the one place both
//! backends turn a config into ZeroMQ endpoints and a bind failure into an error.

use std::fmt::Display;

use cluster_core::{Config, Pid, TransportError};

/// The endpoints of node `pid`: its own (to bind) and each peer's (to connect to).
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    /// This node's configured address (`host:port`), for errors.
    pub(crate) address: String,
    /// `tcp://` + this node's address.
    pub(crate) own: String,
    /// Every other pid of the config, ascending, with its `tcp://` endpoint.
    pub(crate) peers: Vec<(Pid, String)>,
}

impl Endpoints {
    /// The endpoints of node `pid` of `config`; a pid that is not in it is
    /// [`TransportError::Unavailable`].
    pub(crate) fn of(pid: Pid, config: &Config) -> Result<Self, TransportError> {
        config
            .check_member(pid)
            .map_err(|e| TransportError::Unavailable {
                pid,
                reason: e.to_string(),
            })?;
        let address = config
            .peer(pid)
            .map(|p| p.address.clone())
            .unwrap_or_default();
        let peers = config
            .peers()
            .iter()
            .filter(|p| p.pid != pid)
            .map(|p| (p.pid, format!("tcp://{}", p.address)))
            .collect();
        Ok(Self {
            own: format!("tcp://{address}"),
            address,
            peers,
        })
    }

    /// The peers' pids, ascending.
    pub(crate) fn peer_pids(&self) -> Vec<Pid> {
        self.peers.iter().map(|(pid, _)| *pid).collect()
    }

    /// The error for a failed bind of this node's own address.
    pub(crate) fn bind_error(&self, reason: impl Display) -> TransportError {
        TransportError::Bind {
            address: self.address.clone(),
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_listens_on_its_address_and_connects_to_the_others() {
        let config = Config::local(3, 7200).unwrap();
        let e = Endpoints::of(2, &config).unwrap();
        assert_eq!(e.own, format!("tcp://{}", e.address));
        assert_eq!(e.peer_pids(), [1, 3]);
        assert!(e.peers.iter().all(|(_, ep)| ep.starts_with("tcp://")));
        let err = e.bind_error("in use").to_string();
        assert!(err.contains(&e.address) && err.contains("in use"), "{err}");
        assert!(matches!(
            Endpoints::of(9, &config),
            Err(TransportError::Unavailable { pid: 9, .. })
        ));
    }
}
