//! Cluster configuration: who the peers are, where they listen, and the tunable bounds.
//!
//! Two file formats parse to the same [`Config`]:
//!
//! * the canonical form, one JSON object:
//!   `{"peers":[{"pid":1,"address":"127.0.0.1:7001"}, …], "inbox_capacity": 8192, …}`
//!   where every key besides `peers` and `groups` is an [`Options`] field, and the optional
//!   `"groups": {"name": [pid, …], …}` names lists of pids for multicast (see
//!   [`Config::groups`]);
//! * the Go package's own file, a stream (or an array) of objects with string values:
//!   `{"ID":"0","IP":"127.0.0.1","Port":"8081"}`.
//!
//! Validation is strict and every error names the file, the entry and the problem.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::envelope::Pid;
use crate::group::{self, GroupError};
use crate::key::ClusterKey;

/// The largest pid a config may hold. Message ids pack the pid into 16 bits (see
/// [`crate::Server::next_msg_id`]), which keeps ids unique across the cluster.
pub const MAX_PID: Pid = 0xFFFF;

/// The largest queue bound a config may set: every queue is allocated on demand, but a bound
/// must still bound something.
pub const MAX_QUEUE: usize = 1 << 24;

/// The largest `max_message_size` a config may set (1 GiB).
pub const MAX_MESSAGE_SIZE: usize = 1 << 30;

/// The largest byte bound a queue may be given (`peer_queue_bytes`, `inbox_bytes`): 64 GiB.
pub const MAX_QUEUE_BYTES: usize = 1 << 36;

/// The longest linger or heartbeat setting (one hour; libzmq takes milliseconds as `i32`).
const MAX_TIMING: Duration = Duration::from_secs(3600);

/// One peer of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's pid.
    pub pid: Pid,
    /// `host:port` the peer listens on (IPv6 hosts in brackets: `[::1]:7001`).
    pub address: String,
}

impl PeerConfig {
    /// The host part of [`PeerConfig::address`] (without IPv6 brackets).
    pub fn host(&self) -> &str {
        split_host_port(&self.address).map_or("", |(h, _)| h)
    }

    /// The port part of [`PeerConfig::address`].
    pub fn port(&self) -> u16 {
        split_host_port(&self.address).map_or(0, |(_, p)| p)
    }
}

/// Tunable bounds and timings. Every field has a default; in the canonical config file each
/// may appear at the top level beside `peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Envelopes the inbox holds before arriving ones are dropped (`backpressure`).
    pub inbox_capacity: usize,
    /// Unused since sends route in the sender's task (there is no outbox queue any more);
    /// still accepted in config files, so that older ones keep loading.
    pub outbox_capacity: usize,
    /// Frames queued for one peer before further ones are dropped (`backpressure`).
    /// The ZeroMQ transport uses it as the send and receive high-water mark. libzmq hands
    /// room below the mark back to a non-blocking sender in half-mark steps, so a small
    /// mark starves a fast sender: the default, 16384, measured well (cluster-zmq bench).
    pub peer_queue: usize,
    /// Largest frame, header included, that is sent or accepted (`too_large`).
    pub max_message_size: usize,
    /// How long `shutdown` may spend flushing frames to live peers.
    pub linger: Duration,
    /// `"send_timeout_ms"`: how long [`Outbox::send`](crate::Outbox::send) waits for room
    /// when a connected peer's queue (or window of unacknowledged frames) is full, before
    /// the message is dropped as `backpressure`. A peer that made a send wait that long is
    /// *stalled*: later sends to it are dropped at once, without waiting, until one is
    /// accepted again. Zero: never wait (every send behaves as `try_send`).
    pub send_timeout: Duration,
    /// Interval of transport heartbeats (real networks only).
    pub heartbeat_interval: Duration,
    /// Silence after which a connected peer is declared unreachable (real networks only).
    pub heartbeat_timeout: Duration,
    /// Directory of this node's peer catalog, where `{pid}` stands for the node's pid
    /// (relative paths are taken from the config file's directory). `None`: the default
    /// `.cluster/catalog-<pid>` beside the config file. Nodes sharing a machine need
    /// distinct directories, so a set value should contain `{pid}`.
    pub catalog_dir: Option<PathBuf>,
    /// `"key_file"`: the file holding the cluster key, 64 hexadecimal digits (relative
    /// paths are taken from the config file's directory). See [`Config::cluster_key`].
    pub key_file: Option<PathBuf>,
    /// `"key_env"`: the name of the environment variable holding the cluster key, 64
    /// hexadecimal digits. At most one of `key_file` and `key_env`.
    pub key_env: Option<String>,
    /// `"encrypt"`: with a cluster key, encrypt every frame's payload as well as
    /// authenticating it (XChaCha20-Poly1305 instead of a keyed-BLAKE3 tag). Needs a key.
    /// Every node of a cluster must agree: an encrypting node refuses tagged-only frames,
    /// and a node with a key but without `"encrypt"` refuses encrypted ones
    /// (`unauthenticated`).
    pub encrypt: bool,
    /// `"mac"`: the tag of MAC mode (a key, no `"encrypt"`): `"blake3"` (the default,
    /// keyed BLAKE3, 256-bit tags) or `"siphash-2-4"` (SipHash-2-4 under a 128-bit key
    /// derived from the cluster key, 128-bit tags: about five times cheaper on 64 B
    /// frames, with a smaller security margin; see the README's Security section). Every
    /// node of a cluster must agree: a tag of the other kind does not check
    /// (`unauthenticated`). Needs a key, and means nothing with `"encrypt"`.
    pub mac: MacAlgorithm,
    /// `"peer_queue_bytes"`: bytes of frames to one peer that the transport accepted and
    /// the peer has not yet acknowledged; a frame that would exceed it is dropped
    /// (`backpressure`). At least `max_message_size`.
    pub peer_queue_bytes: usize,
    /// `"inbox_bytes"`: payload bytes the inbox holds before arriving messages are dropped
    /// (`backpressure`), beside `inbox_capacity`. At least `max_message_size`.
    pub inbox_bytes: usize,
    /// `"max_inbound_connections"`: inbound connections a node keeps open at once; more
    /// are closed at once and counted. `None`: four times the cluster size.
    pub max_inbound_connections: Option<usize>,
    /// `"idle_connection_timeout_ms"`: an inbound connection that has delivered no valid
    /// frame for this long is closed and counted (real networks only).
    pub idle_connection_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            inbox_capacity: 8192,
            outbox_capacity: 8192,
            peer_queue: 16384,
            max_message_size: 1 << 20,
            linger: Duration::from_millis(500),
            send_timeout: Duration::from_millis(1000),
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_millis(2000),
            catalog_dir: None,
            key_file: None,
            key_env: None,
            encrypt: false,
            mac: MacAlgorithm::Blake3,
            peer_queue_bytes: 64 << 20,
            inbox_bytes: 64 << 20,
            max_inbound_connections: None,
            idle_connection_timeout: Duration::from_secs(10),
        }
    }
}

/// The tag of MAC-mode frames ([`Options::mac`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MacAlgorithm {
    /// Keyed BLAKE3 under the cluster key: 256-bit tags.
    #[default]
    Blake3,
    /// SipHash-2-4 under a 128-bit key derived from the cluster key: 128-bit tags.
    SipHash24,
}

impl MacAlgorithm {
    /// The name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Blake3 => "blake3",
            Self::SipHash24 => "siphash-2-4",
        }
    }

    /// The algorithm named `name` in the config file, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Blake3, Self::SipHash24]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

impl std::fmt::Display for MacAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Options {
    /// The inbound connection cap: [`Options::max_inbound_connections`], else four times
    /// the cluster size `nodes`.
    pub fn inbound_connection_cap(&self, nodes: usize) -> usize {
        self.max_inbound_connections
            .unwrap_or_else(|| nodes.saturating_mul(4))
            .max(1)
    }
}

/// A validated cluster configuration: at least one peer, unique non-negative pids, sorted by pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Shared by clones: a simulated cluster of N nodes holds one copy, not N.
    peers: std::sync::Arc<Vec<PeerConfig>>,
    options: Options,
    origin: String,
    /// The cluster key, read from `key_file` or `key_env` when the config was loaded.
    key: Option<ClusterKey>,
    /// Multicast groups: name → members, ascending, each once, all configured.
    groups: BTreeMap<String, Vec<Pid>>,
}

/// What is wrong with a config; see [`ConfigError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigProblem {
    /// The file could not be read.
    Unreadable(String),
    /// The text is not JSON.
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The JSON is neither of the two accepted shapes.
    Shape(String),
    /// A field the format does not have.
    UnknownField(String),
    /// A required field is absent.
    MissingField(String),
    /// A field has the wrong type or an unusable value.
    BadValue {
        /// The field.
        field: String,
        /// Why it is unusable.
        problem: String,
    },
    /// The same pid appears twice.
    DuplicatePid {
        /// The pid.
        pid: Pid,
        /// Entry (0-based) where it first appeared.
        first_entry: usize,
    },
    /// A pid below zero.
    NegativePid(i64),
    /// A pid above [`MAX_PID`].
    PidTooLarge(i64),
    /// An address that is not `host:port`.
    BadAddress(String),
    /// The peer list is empty.
    NoPeers,
    /// The pid a server was started with is not in the config.
    OwnPidAbsent(Pid),
    /// The cluster key (`key_file` or `key_env`) is missing, unreadable or malformed.
    BadKey(String),
    /// A multicast group of `"groups"` is unusable (empty name, unknown member).
    BadGroup(GroupError),
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable(e) => write!(f, "cannot read the file: {e}"),
            Self::Syntax {
                line,
                column,
                message,
            } => write!(f, "line {line}, column {column}: invalid JSON: {message}"),
            Self::Shape(s) => write!(f, "{s}"),
            Self::UnknownField(k) => write!(f, "unknown field \"{k}\""),
            Self::MissingField(k) => write!(f, "missing field \"{k}\""),
            Self::BadValue { field, problem } => write!(f, "field \"{field}\": {problem}"),
            Self::DuplicatePid { pid, first_entry } => {
                write!(f, "duplicate pid {pid} (first at entry {first_entry})")
            }
            Self::NegativePid(p) => write!(f, "pid {p} is negative"),
            Self::PidTooLarge(p) => write!(f, "pid {p} is above the maximum {MAX_PID}"),
            Self::BadAddress(a) => write!(
                f,
                "address \"{a}\" is not host:port (e.g. 127.0.0.1:7001 or [::1]:7001)"
            ),
            Self::NoPeers => write!(f, "the peer list is empty"),
            Self::OwnPidAbsent(p) => write!(f, "pid {p} is not one of the configured peers"),
            Self::BadKey(problem) => write!(f, "cluster key: {problem}"),
            Self::BadGroup(e) => write!(f, "{e}"),
        }
    }
}

/// A config that cannot be used, with the file, the entry and the problem.
///
/// Displays as e.g. `config.json: entry 2 (pid 3): address "x" is not host:port …`.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Where the config came from: a file path, or a description.
    pub origin: String,
    /// The 0-based index of the offending peer entry, if the problem is in one.
    pub entry: Option<usize>,
    /// The pid of the offending entry, where known.
    pub pid: Option<Pid>,
    /// What is wrong.
    pub problem: ConfigProblem,
}

crate::report::debug_as_message!(ConfigError);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        match (self.entry, self.pid) {
            (Some(e), Some(p)) => write!(f, "entry {e} (pid {p}): ")?,
            (Some(e), None) => write!(f, "entry {e}: ")?,
            (None, _) => {}
        }
        write!(f, "{}", self.problem)
    }
}

struct Ctx<'a> {
    origin: &'a str,
}

impl Ctx<'_> {
    fn err(&self, entry: Option<usize>, pid: Option<Pid>, problem: ConfigProblem) -> ConfigError {
        ConfigError {
            origin: self.origin.to_owned(),
            entry,
            pid,
            problem,
        }
    }
}

impl Config {
    /// Reads and validates the config file at `path` (either format).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            entry: None,
            pid: None,
            problem: ConfigProblem::Unreadable(e.to_string()),
        })?;
        Self::parse_in(&text, &origin, path.parent())
    }

    /// Parses and validates config text (either format). `origin` names it in errors; a
    /// relative `key_file` is taken from the current directory.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::parse_in(text, origin, None)
    }

    /// Parses like [`Config::parse`], taking a relative `key_file` from `dir`, and reads
    /// the cluster key.
    fn parse_in(text: &str, origin: &str, dir: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = Self::parse_text(text, origin)?;
        let ctx = Ctx { origin };
        let bad_key = |problem: String| ctx.err(None, None, ConfigProblem::BadKey(problem));
        config.key = match (&config.options.key_file, &config.options.key_env) {
            (Some(_), Some(_)) => {
                return Err(bad_key(
                    "both \"key_file\" and \"key_env\" are set: choose one".into(),
                ));
            }
            (Some(file), None) => {
                let path = match dir {
                    Some(dir) if file.is_relative() => dir.join(file),
                    _ => file.clone(),
                };
                Some(ClusterKey::from_file(&path).map_err(bad_key)?)
            }
            (None, Some(var)) => Some(ClusterKey::from_env(var).map_err(bad_key)?),
            (None, None) => None,
        };
        if config.options.encrypt && config.key.is_none() {
            return Err(bad_key(
                "\"encrypt\" is set but no key is: set \"key_file\" or \"key_env\"".into(),
            ));
        }
        if config.options.mac != MacAlgorithm::Blake3 && config.key.is_none() {
            return Err(bad_key(format!(
                "\"mac\" is \"{}\" but no key is: set \"key_file\" or \"key_env\"",
                config.options.mac
            )));
        }
        Ok(config)
    }

    fn parse_text(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let ctx = Ctx { origin };
        let mut values = Vec::new();
        for v in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            match v {
                Ok(v) => values.push(v),
                Err(e) => {
                    return Err(ctx.err(
                        None,
                        None,
                        ConfigProblem::Syntax {
                            line: e.line(),
                            column: e.column(),
                            message: e.to_string(),
                        },
                    ));
                }
            }
        }
        let (peers, options, groups) = match values.as_slice() {
            [Value::Object(obj)] if obj.contains_key("peers") => parse_canonical(&ctx, obj)?,
            [Value::Array(items)] => (parse_go(&ctx, items)?, Options::default(), Vec::new()),
            [] => return Err(ctx.err(None, None, ConfigProblem::NoPeers)),
            items if items.iter().all(Value::is_object) => {
                (parse_go(&ctx, items)?, Options::default(), Vec::new())
            }
            _ => {
                return Err(ctx.err(
                    None,
                    None,
                    ConfigProblem::Shape(
                        "expected {\"peers\":[…]} or a stream of {\"ID\",\"IP\",\"Port\"} objects"
                            .into(),
                    ),
                ));
            }
        };
        let mut config = Self::build(&ctx, peers, options)?;
        for (name, pids) in groups {
            config = config.with_group(name, pids)?;
        }
        Ok(config)
    }

    /// Builds a config from `(pid, address)` pairs, validated like a file.
    pub fn from_peers<A: Into<String>>(
        peers: impl IntoIterator<Item = (Pid, A)>,
        options: Options,
    ) -> Result<Self, ConfigError> {
        let ctx = Ctx { origin: "<config>" };
        let raw = peers
            .into_iter()
            .map(|(pid, a)| (i64::from(pid), a.into()))
            .collect();
        Self::build(&ctx, raw, options)
    }

    /// `n` nodes with pids `1..=n` on `127.0.0.1`, ports `base_port + pid`. For tests and demos.
    pub fn local(n: usize, base_port: u16) -> Result<Self, ConfigError> {
        let peers = (1..=n).map(|i| {
            let pid = Pid::try_from(i).unwrap_or(Pid::MAX);
            let port = u16::try_from(i)
                .ok()
                .and_then(|i| base_port.checked_add(i))
                .unwrap_or(0);
            (pid, format!("127.0.0.1:{port}"))
        });
        Self::from_peers(peers, Options::default())
    }

    fn build(
        ctx: &Ctx<'_>,
        raw: Vec<(i64, String)>,
        options: Options,
    ) -> Result<Self, ConfigError> {
        if raw.is_empty() {
            return Err(ctx.err(None, None, ConfigProblem::NoPeers));
        }
        let mut seen: BTreeMap<Pid, usize> = BTreeMap::new();
        let mut peers = Vec::with_capacity(raw.len());
        for (entry, (pid, address)) in raw.into_iter().enumerate() {
            if pid < 0 {
                return Err(ctx.err(Some(entry), None, ConfigProblem::NegativePid(pid)));
            }
            let pid = match Pid::try_from(pid) {
                Ok(p) if p <= MAX_PID => p,
                _ => return Err(ctx.err(Some(entry), None, ConfigProblem::PidTooLarge(pid))),
            };
            if let Some(first_entry) = seen.insert(pid, entry) {
                return Err(ctx.err(
                    Some(entry),
                    Some(pid),
                    ConfigProblem::DuplicatePid { pid, first_entry },
                ));
            }
            if split_host_port(&address).is_none() {
                return Err(ctx.err(Some(entry), Some(pid), ConfigProblem::BadAddress(address)));
            }
            peers.push(PeerConfig { pid, address });
        }
        peers.sort_by_key(|p| p.pid);
        options.validate().map_err(|p| ctx.err(None, None, p))?;
        Ok(Self {
            peers: std::sync::Arc::new(peers),
            options,
            origin: ctx.origin.to_owned(),
            key: None,
            groups: BTreeMap::new(),
        })
    }

    /// Every peer, ascending by pid.
    pub fn peers(&self) -> &[PeerConfig] {
        &self.peers
    }

    /// Every pid, ascending.
    pub fn pids(&self) -> impl Iterator<Item = Pid> + '_ {
        self.peers.iter().map(|p| p.pid)
    }

    /// The entry of `pid`, if configured.
    pub fn peer(&self, pid: Pid) -> Option<&PeerConfig> {
        self.peers
            .binary_search_by_key(&pid, |p| p.pid)
            .ok()
            .and_then(|i| self.peers.get(i))
    }

    /// Whether `pid` is configured.
    pub fn contains(&self, pid: Pid) -> bool {
        self.peer(pid).is_some()
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The cluster key, if the config names one (`key_file` or `key_env`, read when the
    /// config was parsed) or one was set with [`Config::with_cluster_key`]. With a key,
    /// every frame is authenticated (see `cluster_core::wire`); every node of the cluster
    /// needs the same key.
    pub fn cluster_key(&self) -> Option<&ClusterKey> {
        self.key.as_ref()
    }

    /// This config with `key` as its cluster key (`None`: unkeyed).
    pub fn with_cluster_key(mut self, key: Option<ClusterKey>) -> Self {
        self.key = key;
        self
    }

    /// The multicast groups (the config's `"groups"`, and [`Config::with_group`]): name →
    /// members, ascending, each once. A group is a sender-side name for a list of pids:
    /// a node starts with these, may change its own at run time
    /// ([`Server::set_group`](crate::Server::set_group)), and never tells its peers (see
    /// [`Outbox::multicast`](crate::Outbox::multicast)).
    pub fn groups(&self) -> &BTreeMap<String, Vec<Pid>> {
        &self.groups
    }

    /// This config with the group `name` defined as `pids` (replacing one of that name).
    /// Every pid must be configured; duplicates count once; the name must not be empty.
    pub fn with_group(
        mut self,
        name: impl Into<String>,
        pids: impl IntoIterator<Item = Pid>,
    ) -> Result<Self, ConfigError> {
        let name = name.into();
        let members = group::members(&name, pids, |pid| self.contains(pid)).map_err(|e| {
            let pid = match &e {
                GroupError::UnknownPid { pid, .. } => Some(*pid),
                _ => None,
            };
            ConfigError {
                origin: self.origin.clone(),
                entry: None,
                pid,
                problem: ConfigProblem::BadGroup(e),
            }
        })?;
        self.groups.insert(name, members);
        Ok(self)
    }

    /// Replaces the options, after checking them.
    pub fn with_options(mut self, options: Options) -> Result<Self, ConfigError> {
        options.validate().map_err(|p| ConfigError {
            origin: self.origin.clone(),
            entry: None,
            pid: None,
            problem: p,
        })?;
        self.options = options;
        Ok(self)
    }

    /// Where this config came from (a path, or `<config>`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Checks that `pid` is one of the peers: the error a server reports otherwise.
    pub fn check_member(&self, pid: Pid) -> Result<(), ConfigError> {
        if self.contains(pid) {
            Ok(())
        } else {
            Err(ConfigError {
                origin: self.origin.clone(),
                entry: None,
                pid: None,
                problem: ConfigProblem::OwnPidAbsent(pid),
            })
        }
    }
}

impl Options {
    fn validate(&self) -> Result<(), ConfigProblem> {
        let positive = [
            ("inbox_capacity", self.inbox_capacity),
            ("outbox_capacity", self.outbox_capacity),
            ("peer_queue", self.peer_queue),
        ];
        for (field, v) in positive {
            if v == 0 || v > MAX_QUEUE {
                return Err(ConfigProblem::BadValue {
                    field: field.into(),
                    problem: format!("must be between 1 and {MAX_QUEUE}"),
                });
            }
        }
        if self.max_message_size <= crate::wire::HEADER_LEN
            || self.max_message_size > MAX_MESSAGE_SIZE
        {
            return Err(ConfigProblem::BadValue {
                field: "max_message_size".into(),
                problem: format!(
                    "must be more than {} bytes and at most {MAX_MESSAGE_SIZE}",
                    crate::wire::HEADER_LEN
                ),
            });
        }
        let bytes = [
            ("peer_queue_bytes", self.peer_queue_bytes),
            ("inbox_bytes", self.inbox_bytes),
        ];
        for (field, v) in bytes {
            if v < self.max_message_size || v > MAX_QUEUE_BYTES {
                return Err(ConfigProblem::BadValue {
                    field: field.into(),
                    problem: format!(
                        "must be at least max_message_size ({}) and at most {MAX_QUEUE_BYTES}",
                        self.max_message_size
                    ),
                });
            }
        }
        if self.encrypt && self.mac != MacAlgorithm::Blake3 {
            return Err(ConfigProblem::BadValue {
                field: "mac".into(),
                problem: format!(
                    "is \"{}\", but with \"encrypt\" Poly1305 authenticates every frame: \
                     remove one of the two",
                    self.mac
                ),
            });
        }
        if self.max_inbound_connections == Some(0) {
            return Err(ConfigProblem::BadValue {
                field: "max_inbound_connections".into(),
                problem: "must be at least 1".into(),
            });
        }
        let timings = [
            ("linger_ms", self.linger),
            ("send_timeout_ms", self.send_timeout),
            ("idle_connection_timeout_ms", self.idle_connection_timeout),
            ("heartbeat_interval_ms", self.heartbeat_interval),
            ("heartbeat_timeout_ms", self.heartbeat_timeout),
        ];
        for (field, v) in timings {
            if v > MAX_TIMING {
                return Err(ConfigProblem::BadValue {
                    field: field.into(),
                    problem: format!("must be at most {} ms", MAX_TIMING.as_millis()),
                });
            }
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(ConfigProblem::BadValue {
                field: "heartbeat_timeout_ms".into(),
                problem: "must exceed heartbeat_interval_ms, which must be positive".into(),
            });
        }
        Ok(())
    }
}

/// Splits `host:port`, checking both parts. IPv6 hosts must be bracketed.
pub(crate) fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        inner
    } else if host.parse::<std::net::Ipv4Addr>().is_ok() {
        host
    } else {
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            return None;
        }
        host
    };
    Some((host, port))
}

/// A config's peers, options and groups (name and members, unchecked), as read.
type Canonical = (Vec<(i64, String)>, Options, Vec<(String, Vec<Pid>)>);

fn parse_canonical(ctx: &Ctx<'_>, obj: &Map<String, Value>) -> Result<Canonical, ConfigError> {
    let mut options = Options::default();
    let top = |p| ctx.err(None, None, p);
    let mut peers = Vec::new();
    let mut groups = Vec::new();
    for (key, value) in obj {
        let bad = |problem: &str| {
            top(ConfigProblem::BadValue {
                field: key.clone(),
                problem: problem.into(),
            })
        };
        let as_usize = || {
            value
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| bad("expected a non-negative integer"))
        };
        let as_millis = || {
            value
                .as_u64()
                .map(Duration::from_millis)
                .ok_or_else(|| bad("expected a non-negative integer of milliseconds"))
        };
        match key.as_str() {
            "peers" => {
                let items = value.as_array().ok_or_else(|| bad("expected an array"))?;
                for (entry, item) in items.iter().enumerate() {
                    peers.push(parse_canonical_peer(ctx, entry, item)?);
                }
            }
            "groups" => groups = parse_groups(ctx, value)?,
            "inbox_capacity" => options.inbox_capacity = as_usize()?,
            "outbox_capacity" => options.outbox_capacity = as_usize()?,
            "peer_queue" => options.peer_queue = as_usize()?,
            "max_message_size" => options.max_message_size = as_usize()?,
            "linger_ms" => options.linger = as_millis()?,
            "send_timeout_ms" => options.send_timeout = as_millis()?,
            "heartbeat_interval_ms" => options.heartbeat_interval = as_millis()?,
            "heartbeat_timeout_ms" => options.heartbeat_timeout = as_millis()?,
            "peer_queue_bytes" => options.peer_queue_bytes = as_usize()?,
            "inbox_bytes" => options.inbox_bytes = as_usize()?,
            "max_inbound_connections" => options.max_inbound_connections = Some(as_usize()?),
            "idle_connection_timeout_ms" => options.idle_connection_timeout = as_millis()?,
            "encrypt" => {
                options.encrypt = value
                    .as_bool()
                    .ok_or_else(|| bad("expected true or false"))?;
            }
            "mac" => {
                options.mac = value
                    .as_str()
                    .and_then(MacAlgorithm::from_name)
                    .ok_or_else(|| bad("expected \"blake3\" or \"siphash-2-4\""))?;
            }
            "key_file" => {
                let s = value
                    .as_str()
                    .ok_or_else(|| bad("expected a path string"))?;
                options.key_file = Some(PathBuf::from(s));
            }
            "key_env" => {
                let s = value
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| bad("expected the name of an environment variable"))?;
                options.key_env = Some(s.to_owned());
            }
            "catalog_dir" => {
                let s = value
                    .as_str()
                    .ok_or_else(|| bad("expected a path string"))?;
                options.catalog_dir = Some(PathBuf::from(s));
            }
            other => return Err(top(ConfigProblem::UnknownField(other.to_owned()))),
        }
    }
    Ok((peers, options, groups))
}

/// `"groups": {"name": [pid, …], …}`, shapes checked; members are checked once the peers
/// are known ([`Config::with_group`]).
fn parse_groups(ctx: &Ctx<'_>, value: &Value) -> Result<Vec<(String, Vec<Pid>)>, ConfigError> {
    let bad = |field: String, problem: String| {
        ctx.err(None, None, ConfigProblem::BadValue { field, problem })
    };
    let obj = value.as_object().ok_or_else(|| {
        bad(
            "groups".into(),
            "expected an object {\"name\": [pid, …], …}".into(),
        )
    })?;
    let mut groups = Vec::with_capacity(obj.len());
    for (name, members) in obj {
        let field = || format!("groups.{name}");
        let items = members.as_array().ok_or_else(|| {
            bad(
                field(),
                format!("expected an array of pids, found {members}"),
            )
        })?;
        let mut pids = Vec::with_capacity(items.len());
        for item in items {
            let pid = item
                .as_i64()
                .ok_or_else(|| bad(field(), format!("expected integer pids, found {item}")))?;
            let pid = Pid::try_from(pid).map_err(|_| {
                bad(
                    field(),
                    format!("pid {pid} is not one of the configured peers"),
                )
            })?;
            pids.push(pid);
        }
        groups.push((name.clone(), pids));
    }
    Ok(groups)
}

fn parse_canonical_peer(
    ctx: &Ctx<'_>,
    entry: usize,
    item: &Value,
) -> Result<(i64, String), ConfigError> {
    let err = |pid: Option<i64>, p| ctx.err(Some(entry), pid.and_then(|p| p.try_into().ok()), p);
    let obj = item.as_object().ok_or_else(|| {
        err(
            None,
            ConfigProblem::Shape("a peer must be an object {\"pid\":…,\"address\":…}".into()),
        )
    })?;
    let pid = match obj.get("pid") {
        None => return Err(err(None, ConfigProblem::MissingField("pid".into()))),
        Some(v) => v.as_i64().ok_or_else(|| {
            err(
                None,
                ConfigProblem::BadValue {
                    field: "pid".into(),
                    problem: format!("expected an integer, found {v}"),
                },
            )
        })?,
    };
    let address = match obj.get("address") {
        None => {
            return Err(err(
                Some(pid),
                ConfigProblem::MissingField("address".into()),
            ));
        }
        Some(v) => v.as_str().ok_or_else(|| {
            err(
                Some(pid),
                ConfigProblem::BadValue {
                    field: "address".into(),
                    problem: format!("expected a \"host:port\" string, found {v}"),
                },
            )
        })?,
    };
    if let Some(k) = obj.keys().find(|k| *k != "pid" && *k != "address") {
        return Err(err(Some(pid), ConfigProblem::UnknownField(k.clone())));
    }
    Ok((pid, address.to_owned()))
}

fn parse_go(ctx: &Ctx<'_>, items: &[Value]) -> Result<Vec<(i64, String)>, ConfigError> {
    let mut peers = Vec::with_capacity(items.len());
    for (entry, item) in items.iter().enumerate() {
        let err = |p| ctx.err(Some(entry), None, p);
        let obj = item.as_object().ok_or_else(|| {
            err(ConfigProblem::Shape(
                "expected an object {\"ID\",\"IP\",\"Port\"}".into(),
            ))
        })?;
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "ID" | "IP" | "Port"))
        {
            return Err(err(ConfigProblem::UnknownField(k.clone())));
        }
        // The Go file holds strings; numbers are accepted too.
        let field = |name: &str| -> Result<String, ConfigError> {
            match obj.get(name) {
                None => Err(err(ConfigProblem::MissingField(name.into()))),
                Some(Value::String(s)) => Ok(s.trim().to_owned()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                Some(v) => Err(err(ConfigProblem::BadValue {
                    field: name.into(),
                    problem: format!("expected a string, found {v}"),
                })),
            }
        };
        let id = field("ID")?;
        let pid: i64 = id.parse().map_err(|_| {
            err(ConfigProblem::BadValue {
                field: "ID".into(),
                problem: format!("\"{id}\" is not an integer"),
            })
        })?;
        let ip = field("IP")?;
        let port = field("Port")?;
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip
        };
        peers.push((pid, format!("{host}:{port}")));
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> ConfigError {
        match Config::parse(text, "test.json") {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn canonical_and_go_forms_give_the_same_config() {
        let canonical = r#"{"peers":[{"pid":2,"address":"127.0.0.1:8082"},
                                      {"pid":0,"address":"127.0.0.1:8080"}]}"#;
        let go = r#"{"ID":"0","IP":"127.0.0.1","Port":"8080"}
                    {"ID":"2","IP":"127.0.0.1","Port":"8082"}"#;
        let go_array = r#"[{"ID":"2","IP":"127.0.0.1","Port":"8082"},
                           {"ID":"0","IP":"127.0.0.1","Port":"8080"}]"#;
        let a = Config::parse(canonical, "x").unwrap();
        let b = Config::parse(go, "x").unwrap();
        let c = Config::parse(go_array, "x").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.pids().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(a.peer(2).unwrap().port(), 8082);
        assert_eq!(a.peer(2).unwrap().host(), "127.0.0.1");
    }

    #[test]
    fn options_are_read_and_default() {
        let c = Config::parse(
            r#"{"peers":[{"pid":1,"address":"localhost:7001"}],
                "inbox_capacity":10,"linger_ms":20,"peer_queue":3}"#,
            "x",
        )
        .unwrap();
        assert_eq!(c.options().inbox_capacity, 10);
        assert_eq!(c.options().peer_queue, 3);
        assert_eq!(c.options().linger, Duration::from_millis(20));
        assert_eq!(
            c.options().outbox_capacity,
            Options::default().outbox_capacity
        );
    }

    /// Every bound is accepted at its limit and refused one step past it, naming the field.
    #[test]
    fn each_bound_holds_exactly_at_its_limit() {
        let ok = |o: Options| assert_eq!(o.validate(), Ok(()));
        let refused = |o: Options, field: &str| match o.validate() {
            Err(ConfigProblem::BadValue { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        };
        let d = Options::default;
        ok(Options {
            peer_queue: MAX_QUEUE,
            ..d()
        });
        refused(
            Options {
                peer_queue: MAX_QUEUE + 1,
                ..d()
            },
            "peer_queue",
        );
        let largest = Options {
            max_message_size: MAX_MESSAGE_SIZE,
            peer_queue_bytes: MAX_MESSAGE_SIZE,
            inbox_bytes: MAX_MESSAGE_SIZE,
            ..d()
        };
        ok(largest.clone());
        refused(
            Options {
                max_message_size: MAX_MESSAGE_SIZE + 1,
                ..largest.clone()
            },
            "max_message_size",
        );
        refused(
            Options {
                max_message_size: crate::wire::HEADER_LEN,
                ..d()
            },
            "max_message_size",
        );
        ok(Options {
            max_message_size: crate::wire::HEADER_LEN + 1,
            ..d()
        });
        for field in ["peer_queue_bytes", "inbox_bytes"] {
            let with = |v: usize| {
                let mut o = d();
                match field {
                    "peer_queue_bytes" => o.peer_queue_bytes = v,
                    _ => o.inbox_bytes = v,
                }
                o
            };
            let size = d().max_message_size;
            ok(with(size));
            refused(with(size - 1), field);
            ok(with(MAX_QUEUE_BYTES));
            refused(with(MAX_QUEUE_BYTES + 1), field);
        }
        ok(Options {
            linger: MAX_TIMING,
            ..d()
        });
        refused(
            Options {
                linger: MAX_TIMING + Duration::from_millis(1),
                ..d()
            },
            "linger_ms",
        );
    }

    #[test]
    fn the_repository_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config.json");
        let c = Config::load(path).unwrap();
        assert_eq!(c.pids().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn duplicate_pid_names_both_entries() {
        let e = problem(r#"{"peers":[{"pid":1,"address":"a:1"},{"pid":1,"address":"b:2"}]}"#);
        assert_eq!(e.entry, Some(1));
        assert_eq!(
            e.problem,
            ConfigProblem::DuplicatePid {
                pid: 1,
                first_entry: 0
            }
        );
        assert_eq!(
            e.to_string(),
            "test.json: entry 1 (pid 1): duplicate pid 1 (first at entry 0)"
        );
    }

    #[test]
    fn negative_and_oversized_pids() {
        let e = problem(r#"{"ID":"-3","IP":"127.0.0.1","Port":"1"}"#);
        assert_eq!(e.problem, ConfigProblem::NegativePid(-3));
        assert_eq!(e.entry, Some(0));
        let e = problem(r#"{"peers":[{"pid":70000,"address":"a:1"}]}"#);
        assert_eq!(e.problem, ConfigProblem::PidTooLarge(70000));
    }

    #[test]
    fn bad_addresses() {
        for addr in [
            "x", "host:", ":80", "h:0", "h:70000", "::1:80", "[::1:80", "a b:1", "-a:1",
        ] {
            let text = format!(r#"{{"peers":[{{"pid":4,"address":"{addr}"}}]}}"#);
            let e = problem(&text);
            assert_eq!(e.problem, ConfigProblem::BadAddress(addr.into()), "{addr}");
            assert_eq!(e.pid, Some(4));
            assert!(e.to_string().contains("is not host:port"), "{e}");
        }
        for ok in ["127.0.0.1:1", "[::1]:7001", "node-1.example:9"] {
            let text = format!(r#"{{"peers":[{{"pid":4,"address":"{ok}"}}]}}"#);
            Config::parse(&text, "x").unwrap();
        }
        let e = problem(r#"{"ID":"1","IP":"127.0.0.1","Port":"http"}"#);
        assert_eq!(
            e.problem,
            ConfigProblem::BadAddress("127.0.0.1:http".into())
        );
    }

    #[test]
    fn empty_peer_lists() {
        assert_eq!(problem(r#"{"peers":[]}"#).problem, ConfigProblem::NoPeers);
        assert_eq!(problem("").problem, ConfigProblem::NoPeers);
        assert_eq!(problem("[]").problem, ConfigProblem::NoPeers);
    }

    #[test]
    fn unknown_fields() {
        let e = problem(r#"{"peers":[{"pid":1,"address":"a:1"}],"inbox":3}"#);
        assert_eq!(e.problem, ConfigProblem::UnknownField("inbox".into()));
        let e = problem(r#"{"peers":[{"pid":1,"address":"a:1","port":3}]}"#);
        assert_eq!(e.problem, ConfigProblem::UnknownField("port".into()));
        assert_eq!(e.entry, Some(0));
        let e = problem(r#"{"ID":"1","IP":"127.0.0.1","Port":"1","Host":"x"}"#);
        assert_eq!(e.problem, ConfigProblem::UnknownField("Host".into()));
    }

    #[test]
    fn groups_are_read_checked_and_named_in_errors() {
        let peers = r#""peers":[{"pid":1,"address":"a:1"},{"pid":2,"address":"a:2"},
                                {"pid":3,"address":"a:3"}]"#;
        let c = Config::parse(
            &format!(r#"{{{peers},"groups":{{"odd":[3,1,3],"none":[]}}}}"#),
            "x",
        )
        .unwrap();
        let expected =
            BTreeMap::from([("none".to_owned(), vec![]), ("odd".to_owned(), vec![1, 3])]);
        assert_eq!(c.groups(), &expected);
        assert!(
            Config::parse(&format!("{{{peers}}}"), "x")
                .unwrap()
                .groups()
                .is_empty()
        );
        let e = problem(&format!(r#"{{{peers},"groups":{{"raft":[1,9]}}}}"#));
        assert_eq!(
            e.problem,
            ConfigProblem::BadGroup(GroupError::UnknownPid {
                group: "raft".into(),
                pid: 9
            })
        );
        assert_eq!(e.pid, Some(9));
        assert_eq!(
            e.to_string(),
            "test.json: group \"raft\": pid 9 is not one of the configured peers"
        );
        let e = problem(&format!(r#"{{{peers},"groups":{{"":[1]}}}}"#));
        assert_eq!(e.problem, ConfigProblem::BadGroup(GroupError::EmptyName));
        assert_eq!(e.to_string(), "test.json: a group name must not be empty");
        for (groups, field, says) in [
            (r#"[1,2]"#, "groups", "expected an object"),
            (
                r#"{"g":3}"#,
                "groups.g",
                "expected an array of pids, found 3",
            ),
            (
                r#"{"g":[1,"2"]}"#,
                "groups.g",
                "expected integer pids, found \"2\"",
            ),
            (
                r#"{"g":[4294967296]}"#,
                "groups.g",
                "pid 4294967296 is not one",
            ),
        ] {
            let e = problem(&format!(r#"{{{peers},"groups":{groups}}}"#));
            match &e.problem {
                ConfigProblem::BadValue { field: f, problem } => {
                    assert_eq!(f, field, "{groups}");
                    assert!(problem.contains(says), "{groups}: {e}");
                }
                other => panic!("{groups}: {other:?}"),
            }
            assert!(
                e.to_string().starts_with("test.json: field \"groups"),
                "{e}"
            );
        }
        // In code, the same checks.
        let c = Config::local(3, 7000).unwrap();
        let g = c.clone().with_group("g", [2, 2, 1]).unwrap();
        assert_eq!(g.groups()["g"], [1, 2]);
        let e = c.clone().with_group("g", [0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "<config>: group \"g\": pid 0 is not one of the configured peers"
        );
        assert!(c.with_group("", [1]).is_err());
    }

    #[test]
    fn missing_fields_bad_values_and_syntax() {
        let e = problem(r#"{"peers":[{"address":"a:1"}]}"#);
        assert_eq!(e.problem, ConfigProblem::MissingField("pid".into()));
        let e = problem(r#"{"ID":"one","IP":"127.0.0.1","Port":"1"}"#);
        assert!(matches!(e.problem, ConfigProblem::BadValue { .. }), "{e}");
        for bad in [
            r#""inbox_capacity":0"#,
            r#""peer_queue":99999999999"#,
            r#""outbox_capacity":18446744073709551615"#,
            r#""max_message_size":10"#,
            r#""max_message_size":4294967296"#,
            r#""linger_ms":99999999999"#,
            r#""heartbeat_interval_ms":0"#,
            r#""heartbeat_interval_ms":900,"heartbeat_timeout_ms":800"#,
        ] {
            let text = format!(r#"{{"peers":[{{"pid":1,"address":"a:1"}}],{bad}}}"#);
            let e = problem(&text);
            assert!(
                matches!(e.problem, ConfigProblem::BadValue { .. }),
                "{bad}: {e}"
            );
        }
        let e = problem(r#"{"peers":[{"pid":1,"address":"a:1"}],"inbox_capacity":"big"}"#);
        assert!(e.to_string().contains("inbox_capacity"), "{e}");
        let e = problem("{\"peers\":[\n{\"pid\":1,}]}");
        assert!(
            matches!(e.problem, ConfigProblem::Syntax { line: 2, .. }),
            "{e}"
        );
        let e = problem("42");
        assert!(matches!(e.problem, ConfigProblem::Shape(_)), "{e}");
    }

    #[test]
    fn own_pid_absent_and_unreadable_file() {
        let c = Config::local(3, 7000).unwrap();
        let e = c.check_member(9).unwrap_err();
        assert_eq!(e.problem, ConfigProblem::OwnPidAbsent(9));
        let e = Config::load("/nonexistent/cluster.json").unwrap_err();
        assert!(matches!(e.problem, ConfigProblem::Unreadable(_)));
        assert!(e.to_string().starts_with("/nonexistent/cluster.json: "));
    }

    // The fuzz target `config` (fuzz/) in small: any text, and JSON-shaped text close to a
    // config, gives a config or an error naming the origin, never a panic.
    proptest::proptest! {
        #[test]
        fn any_text_parses_or_names_its_problem(text in ".{0,200}") {
            check_total(&text);
        }

        #[test]
        fn near_configs_parse_or_name_their_problem(
            pids in proptest::collection::vec(-3i64..70_000, 0..5),
            ports in proptest::collection::vec(0u32..70_000, 0..5),
            key in "[a-z_]{1,20}",
            value in "-?[0-9]{1,12}|\"[^\"]{0,12}\"|null|true|\\[\\]",
        ) {
            let peers: Vec<String> = pids
                .iter()
                .zip(ports.iter().chain(std::iter::repeat(&7000)))
                .map(|(pid, port)| format!(r#"{{"pid":{pid},"address":"127.0.0.1:{port}"}}"#))
                .collect();
            let text = format!(r#"{{"peers":[{}],"{key}":{value}}}"#, peers.join(","));
            check_total(&text);
        }
    }

    fn check_total(text: &str) {
        match Config::parse(text, "p.json") {
            Ok(config) => {
                for pid in config.pids() {
                    assert!(config.check_member(pid).is_ok());
                }
            }
            Err(e) => assert!(e.to_string().starts_with("p.json: "), "{e}"),
        }
    }
}
