//! Peer records and their on-disk encoding.
//!
//! A stored value is one version byte followed by the record in MessagePack (rmp-serde, with
//! field names), so fields can be added in a compatible way and an incompatible change gets
//! a new version byte that older builds refuse clearly instead of misreading.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_core::{Incarnation, Pid};
use serde::{Deserialize, Serialize};

/// The format version this build writes, and the only one it reads.
pub const FORMAT_VERSION: u8 = 1;

/// What this node last observed about a peer's reachability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerStatus {
    /// Connected when last observed.
    Up,
    /// Not connected when last observed.
    Down,
    /// Never observed (e.g. just imported from the config).
    #[default]
    Unknown,
}

impl PeerStatus {
    /// `up`, `down` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for PeerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the catalog keeps about one peer.
///
/// `pid` and `address` come from the config (which is authoritative for them); the other
/// fields are history this node accumulated and keeps across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer's pid.
    pub pid: Pid,
    /// `host:port`, as in the config.
    pub address: String,
    /// The newest incarnation of the peer seen in one of its frames.
    pub incarnation: Option<Incarnation>,
    /// Reachability when last observed.
    pub status: PeerStatus,
    /// When the peer was last known alive (a connection came up, or a message from it was
    /// delivered). Stored with millisecond precision.
    pub last_seen: Option<SystemTime>,
    /// Free-form metadata, for applications.
    pub metadata: BTreeMap<String, String>,
}

/// Whether a peer was seen alive between two observations of it: the rule for
/// [`PeerRecord::last_seen`]. It was if its connection came up (up now, and not up at the
/// earlier observation) or if messages from it were delivered since. The
/// [`Recorder`](crate::Recorder) writes `last_seen` by this rule, and `cluster`'s metrics
/// exporter publishes it by the same rule, so that a running node's metrics and its catalog
/// tell the same time.
///
/// `was_up` and `delivered_before` are the earlier observation (not up and 0 before the
/// first one); `up` and `delivered` are the later one: whether the peer's connection is up,
/// and how many messages from it have been delivered here in all.
pub fn seen_between(was_up: bool, delivered_before: u64, up: bool, delivered: u64) -> bool {
    (up && !was_up) || delivered > delivered_before
}

impl PeerRecord {
    /// A record with no history: status unknown, never seen, no metadata.
    pub fn new(pid: Pid, address: impl Into<String>) -> Self {
        Self {
            pid,
            address: address.into(),
            incarnation: None,
            status: PeerStatus::Unknown,
            last_seen: None,
            metadata: BTreeMap::new(),
        }
    }
}

/// The stored shape of a [`PeerRecord`], version 1.
#[derive(Serialize, Deserialize)]
struct PeerRecordV1 {
    pid: Pid,
    address: String,
    incarnation: Option<Incarnation>,
    status: PeerStatus,
    /// Milliseconds since the Unix epoch.
    last_seen_ms: Option<u64>,
    metadata: BTreeMap<String, String>,
}

/// The stored shape of this node's own state, version 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    /// The pid that owns this catalog, once a node has opened it as its own.
    pub(crate) owner: Option<Pid>,
    /// This node's current incarnation; `None` before the first start.
    pub(crate) incarnation: Option<Incarnation>,
}

/// Why stored bytes did not decode.
#[derive(Debug)]
pub(crate) enum DecodeError {
    UnknownVersion(u8),
    Bad(String),
}

pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn encode_versioned<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // Writing plain structs of strings, integers and maps to a Vec cannot fail.
    if let Err(e) = rmp_serde::encode::write_named(&mut out, value) {
        tracing::error!("cannot encode a catalog record: {e}");
    }
    out
}

fn decode_versioned<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Bad("empty value".into())),
        Some((&FORMAT_VERSION, body)) => {
            rmp_serde::from_slice(body).map_err(|e| DecodeError::Bad(e.to_string()))
        }
        Some((&v, _)) => Err(DecodeError::UnknownVersion(v)),
    }
}

pub(crate) fn encode_peer(r: &PeerRecord) -> Vec<u8> {
    encode_versioned(&PeerRecordV1 {
        pid: r.pid,
        address: r.address.clone(),
        incarnation: r.incarnation,
        status: r.status,
        last_seen_ms: r.last_seen.map(millis),
        metadata: r.metadata.clone(),
    })
}

pub(crate) fn decode_peer(bytes: &[u8]) -> Result<PeerRecord, DecodeError> {
    let v: PeerRecordV1 = decode_versioned(bytes)?;
    Ok(PeerRecord {
        pid: v.pid,
        address: v.address,
        incarnation: v.incarnation,
        status: v.status,
        last_seen: v.last_seen_ms.map(from_millis),
        metadata: v.metadata,
    })
}

pub(crate) fn encode_node(r: &NodeRecord) -> Vec<u8> {
    encode_versioned(r)
}

pub(crate) fn decode_node(bytes: &[u8]) -> Result<NodeRecord, DecodeError> {
    decode_versioned(bytes)
}

/// Membership records (membership at run time), versioned like the other records.
pub(crate) fn encode_members(r: &[cluster_core::Member]) -> Vec<u8> {
    encode_versioned(&r)
}

pub(crate) fn decode_members(bytes: &[u8]) -> Result<Vec<cluster_core::Member>, DecodeError> {
    decode_versioned(bytes)
}

/// Keys order like pids: big-endian with the sign bit flipped.
pub(crate) fn peer_key(pid: Pid) -> [u8; 4] {
    ((pid as u32) ^ 0x8000_0000).to_be_bytes()
}

pub(crate) fn pid_of_key(key: &[u8]) -> Option<Pid> {
    let bytes: [u8; 4] = key.try_into().ok()?;
    Some((u32::from_be_bytes(bytes) ^ 0x8000_0000) as Pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_millisecond_precision() {
        let mut r = PeerRecord::new(7, "127.0.0.1:7007");
        r.incarnation = Some(3);
        r.status = PeerStatus::Up;
        r.last_seen = Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        r.metadata.insert("zone".into(), "a".into());
        let bytes = encode_peer(&r);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode_peer(&bytes).unwrap(), r);
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        let mut bytes = encode_peer(&PeerRecord::new(1, "a:1"));
        bytes[0] = 9;
        assert!(matches!(
            decode_peer(&bytes),
            Err(DecodeError::UnknownVersion(9))
        ));
        assert!(matches!(decode_peer(&[]), Err(DecodeError::Bad(_))));
        assert!(matches!(
            decode_peer(&[FORMAT_VERSION, 0xc1, 0x00]),
            Err(DecodeError::Bad(_))
        ));
    }

    #[test]
    fn keys_sort_like_pids() {
        let pids = [i32::MIN, -1, 0, 1, 255, 256, 65535, i32::MAX];
        let keys: Vec<_> = pids.iter().map(|p| peer_key(*p)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for (p, k) in pids.iter().zip(&keys) {
            assert_eq!(pid_of_key(k), Some(*p));
        }
        assert_eq!(pid_of_key(&[1, 2]), None);
    }
}
