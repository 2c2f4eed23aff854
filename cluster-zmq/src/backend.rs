//! [`Backend`]: which ZeroMQ library a transport runs on, and [`ZmqTransport`], the one
//! transport type over whichever backend was chosen at run time.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cluster_core::{Config, DropReason, PeerSet, Pid, Transport, TransportError, TransportEvent};
use tokio::sync::watch;

use crate::LinkStats;

/// A ZeroMQ backend: the library a [`ZmqTransport`] runs on. Each is a cargo feature of
/// this crate of the same name; [`Backend::available`] lists those compiled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    /// libzmq through the `zmq` crate (bundled libzmq); feature `libzmq`.
    Libzmq,
    /// The pure-Rust `zeromq` crate; feature `zeromq`.
    Zeromq,
}

impl Backend {
    /// Every backend, compiled in or not, libzmq first.
    pub const ALL: [Backend; 2] = [Backend::Libzmq, Backend::Zeromq];

    /// `"libzmq"` or `"zeromq"`: the backend's name, which is also its cargo feature.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Libzmq => "libzmq",
            Self::Zeromq => "zeromq",
        }
    }

    /// The backends compiled into this build, libzmq first.
    pub fn available() -> Vec<Backend> {
        Self::ALL.into_iter().filter(|b| b.is_available()).collect()
    }

    /// Whether this backend's cargo feature is on in this build.
    pub fn is_available(self) -> bool {
        match self {
            Self::Libzmq => cfg!(feature = "libzmq"),
            Self::Zeromq => cfg!(feature = "zeromq"),
        }
    }

    /// This backend if it is compiled in, else an error naming the cargo feature to turn on.
    pub fn require(self) -> Result<Self, UnknownBackend> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(UnknownBackend(self.not_compiled_in()))
        }
    }

    fn not_compiled_in(self) -> String {
        format!(
            "backend {0} is not compiled in: build with --features {0}",
            self.as_str()
        )
    }
}

impl Default for Backend {
    /// libzmq when it is compiled in, else zeromq (what [`crate::bind`] uses).
    fn default() -> Self {
        if cfg!(feature = "libzmq") {
            Self::Libzmq
        } else {
            Self::Zeromq
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend name that is unknown, or not compiled into this build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownBackend(String);

impl FromStr for Backend {
    type Err = UnknownBackend;

    /// `libzmq` or `zeromq` (any case); a backend that is not compiled in is an error that
    /// says which feature to turn on.
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        let backend = Self::ALL
            .into_iter()
            .find(|b| b.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let compiled: Vec<&str> = Self::available().into_iter().map(Self::as_str).collect();
                UnknownBackend(format!(
                    "unknown backend {s:?}: expected libzmq or zeromq (compiled in: {})",
                    compiled.join(", ")
                ))
            })?;
        backend.require()
    }
}

/// The ZeroMQ transport, over the [`Backend`] it was bound with ([`crate::bind`],
/// [`crate::bind_with`]). Every call goes to that backend's own transport type.
#[non_exhaustive]
pub enum ZmqTransport {
    /// Over libzmq.
    #[cfg(feature = "libzmq")]
    Libzmq(crate::LibzmqTransport),
    /// Over the pure-Rust `zeromq` crate.
    #[cfg(feature = "zeromq")]
    Zeromq(crate::ZeromqTransport),
}

impl fmt::Debug for ZmqTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZmqTransport")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

/// Calls `$body` with `$t` bound to the backend's own transport.
macro_rules! each_backend {
    ($self:expr, $t:ident => $body:expr) => {
        match $self {
            #[cfg(feature = "libzmq")]
            ZmqTransport::Libzmq($t) => $body,
            #[cfg(feature = "zeromq")]
            ZmqTransport::Zeromq($t) => $body,
        }
    };
}

impl ZmqTransport {
    /// Binds node `pid` of `config` on `backend` (see [`crate::bind_with`]).
    pub async fn bind(backend: Backend, pid: Pid, config: &Config) -> Result<Self, TransportError> {
        match backend {
            #[cfg(feature = "libzmq")]
            Backend::Libzmq => Ok(Self::Libzmq(crate::LibzmqTransport::bind(pid, config)?)),
            #[cfg(feature = "zeromq")]
            Backend::Zeromq => Ok(Self::Zeromq(
                crate::ZeromqTransport::bind(pid, config).await?,
            )),
            #[allow(unreachable_patterns)] // reached when a backend's feature is off
            other => Err(TransportError::Other(other.not_compiled_in())),
        }
    }

    /// The backend this transport runs on.
    pub fn backend(&self) -> Backend {
        match self {
            #[cfg(feature = "libzmq")]
            Self::Libzmq(_) => Backend::Libzmq,
            #[cfg(feature = "zeromq")]
            Self::Zeromq(_) => Backend::Zeromq,
        }
    }

    /// Counters below the frame level (see [`LinkStats`]).
    pub fn link_stats(&self) -> LinkStats {
        each_backend!(self, t => t.link_stats())
    }
}

#[async_trait]
impl Transport for ZmqTransport {
    fn send(&self, to: Pid, frame: Bytes) -> Result<(), DropReason> {
        each_backend!(self, t => t.send(to, frame))
    }

    fn send_many(&self, frames: &mut Vec<(Pid, Bytes)>, refused: &mut dyn FnMut(Pid, DropReason)) {
        each_backend!(self, t => t.send_many(frames, refused))
    }

    async fn writable(&self, to: Pid) {
        each_backend!(self, t => t.writable(to).await)
    }

    async fn readable(&self) -> bool {
        each_backend!(self, t => t.readable().await)
    }

    fn try_recv_many(&self, events: &mut Vec<TransportEvent>, max: usize) -> usize {
        each_backend!(self, t => t.try_recv_many(events, max))
    }

    fn connected(&self) -> watch::Receiver<PeerSet> {
        each_backend!(self, t => t.connected())
    }

    async fn shutdown(&self, linger: Duration) {
        each_backend!(self, t => t.shutdown(linger).await)
    }

    /// A peer that dies takes what was in flight to it along: the server acknowledges
    /// and counts `unconfirmed` frames.
    fn may_lose_accepted(&self) -> bool {
        true
    }

    fn add_peer(&self, pid: Pid, address: &str) -> Result<(), TransportError> {
        each_backend!(self, t => t.add_peer(pid, address))
    }

    fn remove_peer(&self, pid: Pid) -> Result<(), TransportError> {
        each_backend!(self, t => t.remove_peer(pid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_say_what_is_expected() {
        for b in Backend::available() {
            assert_eq!(b.as_str().parse::<Backend>(), Ok(b));
            assert_eq!(b.to_string().to_uppercase().parse::<Backend>(), Ok(b));
        }
        let e = "nanomsg".parse::<Backend>().unwrap_err().to_string();
        assert!(
            e.contains("\"nanomsg\"") && e.contains("libzmq or zeromq"),
            "{e}"
        );
        for b in Backend::ALL.into_iter().filter(|b| !b.is_available()) {
            let e = b.as_str().parse::<Backend>().unwrap_err().to_string();
            assert!(e.contains(&format!("--features {b}")), "{e}");
        }
        assert!(Backend::available().contains(&Backend::default()));
    }
}
