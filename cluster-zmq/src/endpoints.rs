//! Where a node listens and whom it connects to, from its config: the one place both
//! backends turn a config into ZeroMQ endpoints and a bind failure into an error.

use std::fmt::Display;

use cluster_core::{Config, Options, Pid, TransportError};

/// The endpoints of node `pid`: its own (to bind) and each peer's (to connect to).
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    /// This node's configured address (`host:port`), for errors.
    pub(crate) address: String,
    /// `tcp://` + this node's address.
    pub(crate) own: String,
    /// Every other pid of the config, ascending, with its address (`host:port`).
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
            .map(|p| (p.pid, p.address.clone()))
            .collect();
        Ok(Self {
            own: format!("tcp://{address}"),
            address,
            peers,
        })
    }

    /// The error for a failed bind of this node's own address.
    pub(crate) fn bind_error(&self, reason: impl Display) -> TransportError {
        TransportError::Bind {
            address: self.address.clone(),
            reason: reason.to_string(),
        }
    }
}

/// The ZeroMQ endpoint of a peer at `address` (`host:port`).
pub(crate) fn tcp(address: &str) -> String {
    format!("tcp://{address}")
}

/// Checks a peer added at run time as the config checks its entries (a pid in range, an
/// address that is `host:port`), with an error naming the pid and the problem.
pub(crate) fn check_added(pid: Pid, address: &str) -> Result<(), TransportError> {
    Config::from_peers([(pid, address)], Options::default())
        .map(drop)
        .map_err(|e| TransportError::Unavailable {
            pid,
            reason: format!("cannot add it: {}", e.problem),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_listens_on_its_address_and_connects_to_the_others() {
        let config = Config::local(3, 7200).unwrap();
        let e = Endpoints::of(2, &config).unwrap();
        assert_eq!(e.own, format!("tcp://{}", e.address));
        let pids: Vec<Pid> = e.peers.iter().map(|(pid, _)| *pid).collect();
        assert_eq!(pids, [1, 3]);
        assert_eq!(e.peers[1].1, config.peer(3).unwrap().address);
        assert_eq!(tcp(&e.peers[1].1), format!("tcp://{}", e.peers[1].1));
        let err = e.bind_error("in use").to_string();
        assert!(err.contains(&e.address) && err.contains("in use"), "{err}");
        assert!(matches!(
            Endpoints::of(9, &config),
            Err(TransportError::Unavailable { pid: 9, .. })
        ));
    }

    #[test]
    fn an_added_peer_is_checked_like_a_config_entry() {
        for ok in ["127.0.0.1:7001", "[::1]:7001", "node-3.example:9"] {
            check_added(3, ok).unwrap();
        }
        for bad in [
            "x",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "::1:80",
            "",
        ] {
            let e = check_added(3, bad).unwrap_err().to_string();
            assert!(
                e.contains("pid 3") && e.contains(&format!("\"{bad}\" is not host:port")),
                "{e}"
            );
        }
        let e = check_added(-1, "127.0.0.1:7001").unwrap_err().to_string();
        assert!(e.contains("negative"), "{e}");
    }
}
