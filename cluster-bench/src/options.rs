//! What to measure ([`BenchOptions`]) and how to start a child process ([`ChildCommand`]).

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use cluster_zmq::Backend;

use crate::BenchError;

/// The most receivers of the broadcast benchmark (one child process each).
pub const MAX_BROADCAST_PEERS: usize = 16;

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOptions {
    /// Messages per throughput run (and per broadcast run). At least 1.
    pub messages: u64,
    /// Measured round trips per latency run.
    pub round_trips: u64,
    /// Payload bytes per message.
    pub payload: usize,
    /// Measurements of each kind, alternating bare and cluster; the report gives medians.
    pub rounds: usize,
    /// [`Options::peer_queue`](cluster_core::Options::peer_queue) of every node (the libzmq
    /// high-water marks).
    pub peer_queue: usize,
    /// The backend under test; it must be compiled into this crate (its cargo feature).
    pub backend: Backend,
    /// Receivers of the broadcast benchmark, `1..=`[`MAX_BROADCAST_PEERS`], one child
    /// process each; 0 skips it.
    pub broadcast_peers: usize,
    /// The tokio runtime of the child processes. [`crate::run`] runs on its caller's
    /// runtime, which should be of the same flavor for a fair comparison.
    pub runtime: RuntimeFlavor,
    /// Whether the cluster's frames carry a MAC under a cluster key (the bare library's
    /// never do): measures what authentication costs.
    pub security: Security,
    /// Whether to measure the cluster over the in-memory transport too, in this process
    /// (P2P throughput and round trips; see the crate docs). On by default.
    pub mem: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            messages: 1_000_000,
            round_trips: 10_000,
            payload: 64,
            rounds: 5,
            peer_queue: 16 * 1024,
            backend: Backend::default(),
            broadcast_peers: 0,
            runtime: RuntimeFlavor::default(),
            security: Security::default(),
            mem: true,
        }
    }
}

impl BenchOptions {
    pub(crate) fn check(&self) -> Result<(), BenchError> {
        if !compiled_in(self.backend) {
            return Err(not_compiled_in(self.backend));
        }
        if self.messages == 0 {
            return Err(BenchError::Options(
                "messages 0: at least 1 message is needed".into(),
            ));
        }
        if self.broadcast_peers > MAX_BROADCAST_PEERS {
            return Err(BenchError::Options(format!(
                "broadcast peers {}: must be 1..={MAX_BROADCAST_PEERS} (or 0 to skip the broadcast benchmark)",
                self.broadcast_peers
            )));
        }
        Ok(())
    }
}

/// Whether this build has the bare library of `backend`. The transport's backend may be
/// compiled in (another crate turned its feature on) while the bench's is not.
pub(crate) fn compiled_in(backend: Backend) -> bool {
    match backend {
        Backend::Libzmq => cfg!(feature = "libzmq"),
        Backend::Zeromq => cfg!(feature = "zeromq"),
    }
}

pub(crate) fn not_compiled_in(backend: Backend) -> BenchError {
    BenchError::Options(format!(
        "backend {backend} is not compiled into cluster-bench: build it with --features {backend}"
    ))
}

/// A tokio runtime flavor, for the child processes ([`BenchOptions::runtime`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RuntimeFlavor {
    /// One thread: the measured path has no hand-over between worker threads.
    #[default]
    CurrentThread,
    /// Two worker threads.
    MultiThread,
}

impl RuntimeFlavor {
    /// `"current-thread"` or `"multi-thread"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CurrentThread => "current-thread",
            Self::MultiThread => "multi-thread",
        }
    }

    /// A builder of a runtime of this flavor, with nothing enabled yet.
    pub fn builder(self) -> tokio::runtime::Builder {
        match self {
            Self::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            Self::MultiThread => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(2);
                builder
            }
        }
    }
}

impl fmt::Display for RuntimeFlavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RuntimeFlavor {
    type Err = BenchError;

    /// `current-thread` or `multi-thread`.
    fn from_str(s: &str) -> Result<Self, BenchError> {
        [Self::CurrentThread, Self::MultiThread]
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                BenchError::Options(format!(
                    "unknown runtime {s:?}: expected current-thread or multi-thread"
                ))
            })
    }
}

/// How to start a child process of the benchmark: `program`, then `args_prefix`, then the
/// words of the child's role, which the program hands to [`crate::run_child`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildCommand {
    /// The executable to run.
    pub program: PathBuf,
    /// Arguments before the role's words, e.g. the subcommand that calls
    /// [`crate::run_child`].
    pub args_prefix: Vec<OsString>,
}

impl ChildCommand {
    /// `program args_prefix… <role words>…`.
    pub fn new(
        program: impl Into<PathBuf>,
        args_prefix: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        Self {
            program: program.into(),
            args_prefix: args_prefix.into_iter().map(Into::into).collect(),
        }
    }
}

/// What protects the cluster's frames in a benchmark ([`BenchOptions::security`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Security {
    /// No cluster key: frames carry no tag.
    #[default]
    None,
    /// A cluster key: every frame carries a keyed-BLAKE3 MAC, checked on arrival.
    Mac,
    /// A cluster key and `"mac": "siphash-2-4"`: every frame carries a SipHash-2-4 MAC.
    SipHash,
    /// A cluster key and `"encrypt"`: every payload is encrypted (XChaCha20-Poly1305) and
    /// every header authenticated.
    Aead,
}

impl Security {
    /// `"none"`, `"mac"`, `"siphash"` or `"aead"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Mac => "mac",
            Self::SipHash => "siphash",
            Self::Aead => "aead",
        }
    }

    /// Whether frames are encrypted (the `"encrypt"` option).
    pub(crate) fn encrypt(self) -> bool {
        self == Self::Aead
    }

    /// The MAC algorithm (the `"mac"` option).
    pub(crate) fn mac(self) -> cluster_core::MacAlgorithm {
        match self {
            Self::SipHash => cluster_core::MacAlgorithm::SipHash24,
            _ => cluster_core::MacAlgorithm::Blake3,
        }
    }

    /// The cluster key of a benchmark's nodes: a fixed one, since what is measured is the
    /// cost of the MAC or the cipher, not the secrecy of the key.
    pub(crate) fn key(self) -> Option<cluster_core::ClusterKey> {
        match self {
            Self::None => None,
            Self::Mac | Self::SipHash | Self::Aead => {
                Some(cluster_core::ClusterKey::from_bytes([0x5A; 32]))
            }
        }
    }
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Security {
    type Err = BenchError;

    /// `none`, `mac`, `siphash` or `aead`.
    fn from_str(s: &str) -> Result<Self, BenchError> {
        [Self::None, Self::Mac, Self::SipHash, Self::Aead]
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                BenchError::Options(format!(
                    "unknown security {s:?}: expected none, mac, siphash or aead"
                ))
            })
    }
}
