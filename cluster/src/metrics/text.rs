//! Reading the exported metrics back: the Prometheus text format (enough of it to read what
//! an [`Exporter`](super::Exporter) publishes), and a node's members from it.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use cluster_catalog::{PeerRecord, PeerStatus};
use cluster_core::{Incarnation, Pid};

use super::names::{
    NODE_INCARNATION, NODE_INFO, PEER_INCARNATION, PEER_INFO, PEER_LAST_SEEN, PEER_UP,
};

/// One sample of the Prometheus text format: `name{label="value",…} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value (`NaN` and `±Inf` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// Text that is not what [`parse_text`] or [`members_from_text`] expect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// A line that is not a sample, a comment or blank.
    #[error("line {line}: {problem}: {text:?}")]
    BadLine {
        /// 1-based.
        line: usize,
        /// What is wrong with it.
        problem: &'static str,
        /// The line.
        text: String,
    },
    /// A membership sample whose value or label does not fit.
    #[error("{metric}: {problem}")]
    BadValue {
        /// The metric's name.
        metric: String,
        /// What is wrong.
        problem: String,
    },
    /// None of a cluster node's metrics.
    #[error("no cluster node metrics in the text (no {NODE_INFO} sample)")]
    NotANode,
}

/// Parses the Prometheus text exposition format: one sample a line, `# ` comments (`HELP`,
/// `TYPE`) and blank lines skipped, an optional timestamp after the value ignored.
pub fn parse_text(text: &str) -> Result<Vec<Sample>, TextError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |problem| TextError::BadLine {
            line: i + 1,
            problem,
            text: line.to_owned(),
        };
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| bad("no value"))?;
        let (name, mut rest) = line.split_at(name_end);
        if name.is_empty() {
            return Err(bad("no metric name"));
        }
        let mut labels = BTreeMap::new();
        if let Some(after) = rest.strip_prefix('{') {
            rest = parse_labels(after, &mut labels).ok_or_else(|| bad("bad labels"))?;
        }
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| bad("no value"))?;
        let value = match value {
            "+Inf" | "Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("value is not a number"))?,
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// Parses `key="value",…}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, labels: &mut BTreeMap<String, String>) -> Option<&'a str> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Some(rest);
        }
        let (key, after) = s.split_once('=')?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        let after = after.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (j, c) = chars.next()?;
            match c {
                '"' => break j + 1,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        s = after[end..].trim_start();
        match s.strip_prefix(',') {
            Some(rest) => s = rest,
            None if s.starts_with('}') => {}
            None => return None,
        }
    }
}

/// A node's view of its members, read from its metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// The node's pid.
    pub pid: Pid,
    /// The node's incarnation, if it was published.
    pub incarnation: Option<Incarnation>,
    /// One record per peer (the node itself excluded), by pid: its status (`up` or `down`:
    /// a running node has observed every peer), newest incarnation and last seen as the
    /// node knows them, and its address if published (else empty). No metadata.
    pub peers: Vec<PeerRecord>,
}

/// Reads a node's members from the text its metrics endpoint serves (see [the module
/// docs](super)): `cluster_node_info`, `cluster_node_incarnation`, and per peer
/// `cluster_peer_up`, `cluster_peer_incarnation`, `cluster_peer_last_seen_seconds` and
/// `cluster_peer_info`.
pub fn members_from_text(text: &str) -> Result<Members, TextError> {
    let samples = parse_text(text)?;
    let mut pid = None;
    let mut incarnation = None;
    let mut peers: BTreeMap<Pid, PeerRecord> = BTreeMap::new();
    for s in &samples {
        let bad = |problem: String| TextError::BadValue {
            metric: s.name.clone(),
            problem,
        };
        let peer = || -> Result<Pid, TextError> {
            let label = s.label("peer").ok_or_else(|| bad("no peer label".into()))?;
            label
                .parse()
                .map_err(|_| bad(format!("peer \"{label}\" is not a pid")))
        };
        let whole = |what: &str| -> Result<u32, TextError> {
            if s.value.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&s.value) {
                Ok(s.value as u32)
            } else {
                Err(bad(format!("{what} {} is not a whole number", s.value)))
            }
        };
        match s.name.as_str() {
            NODE_INFO => {
                let label = s.label("pid").ok_or_else(|| bad("no pid label".into()))?;
                pid = Some(
                    label
                        .parse()
                        .map_err(|_| bad(format!("pid \"{label}\" is not a pid")))?,
                );
            }
            NODE_INCARNATION => incarnation = Some(whole("incarnation")?),
            PEER_UP => {
                let pid = peer()?;
                record(&mut peers, pid).status = if s.value == 1.0 {
                    PeerStatus::Up
                } else {
                    PeerStatus::Down
                };
            }
            PEER_INCARNATION => {
                let pid = peer()?;
                record(&mut peers, pid).incarnation = Some(whole("incarnation")?);
            }
            PEER_LAST_SEEN => {
                let pid = peer()?;
                if !(s.value.is_finite() && s.value >= 0.0) {
                    return Err(bad(format!("{} is not a time", s.value)));
                }
                let ms = (s.value * 1000.0).round() as u64;
                record(&mut peers, pid).last_seen = Some(UNIX_EPOCH + Duration::from_millis(ms));
            }
            PEER_INFO => {
                let pid = peer()?;
                if let Some(address) = s.label("address") {
                    address.clone_into(&mut record(&mut peers, pid).address);
                }
            }
            _ => {}
        }
    }
    let pid = pid.ok_or(TextError::NotANode)?;
    peers.remove(&pid);
    Ok(Members {
        pid,
        incarnation,
        peers: peers.into_values().collect(),
    })
}

fn record(peers: &mut BTreeMap<Pid, PeerRecord>, pid: Pid) -> &mut PeerRecord {
    peers.entry(pid).or_insert_with(|| PeerRecord::new(pid, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP cluster_peer_up 1 while the peer is connected, else 0.
# TYPE cluster_peer_up gauge
cluster_peer_up{peer="2"} 1
cluster_peer_up{peer="3"} 0

cluster_peer_incarnation{peer="2"} 28512345
cluster_peer_last_seen_seconds{peer="2"} 1764144062.123
cluster_peer_info{peer="3",address="127.0.0.1:7003"} 1
cluster_node_info{pid="1"} 1
cluster_node_incarnation 7
cluster_messages_dropped_total{direction="outgoing",reason="unknown_peer"} 3 1700000000000
odd{a="x \"y\" \\ z\n", b = "" } NaN
"#;

    #[test]
    fn samples_parse_with_labels_escapes_and_timestamps() {
        let samples = parse_text(TEXT).unwrap();
        assert_eq!(samples.len(), 9);
        assert_eq!(samples[0].name, "cluster_peer_up");
        assert_eq!(samples[0].label("peer"), Some("2"));
        assert_eq!(samples[0].value, 1.0);
        let dropped = &samples[7];
        assert_eq!(dropped.label("reason"), Some("unknown_peer"));
        assert_eq!(dropped.value, 3.0);
        let odd = &samples[8];
        assert_eq!(odd.label("a"), Some("x \"y\" \\ z\n"));
        assert_eq!(odd.label("b"), Some(""));
        assert!(odd.value.is_nan());
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, problem) in [
            ("cluster_peer_up", "no value"),
            ("cluster_peer_up{peer=\"2\"}", "no value"),
            ("cluster_peer_up{peer=2} 1", "bad labels"),
            ("cluster_peer_up{peer=\"2\" 1", "bad labels"),
            ("cluster_peer_up one", "value is not a number"),
            ("{peer=\"2\"} 1", "no metric name"),
        ] {
            let e = parse_text(&format!("# ok\n{text}\n")).unwrap_err();
            assert_eq!(
                e,
                TextError::BadLine {
                    line: 2,
                    problem,
                    text: text.into()
                },
                "{text}"
            );
        }
    }

    #[test]
    fn members_read_back() {
        let m = members_from_text(TEXT).unwrap();
        assert_eq!((m.pid, m.incarnation), (1, Some(7)));
        assert_eq!(m.peers.len(), 2);
        let two = &m.peers[0];
        assert_eq!(two.pid, 2);
        assert_eq!(two.status, PeerStatus::Up);
        assert_eq!(two.incarnation, Some(28_512_345));
        assert_eq!(
            two.last_seen,
            Some(UNIX_EPOCH + Duration::from_millis(1_764_144_062_123))
        );
        let three = &m.peers[1];
        assert_eq!(
            (three.status, three.incarnation, three.last_seen),
            (PeerStatus::Down, None, None)
        );
        assert_eq!(three.address, "127.0.0.1:7003");
    }

    #[test]
    fn members_need_a_node_and_sound_values() {
        assert_eq!(
            members_from_text("up 1\n").unwrap_err(),
            TextError::NotANode
        );
        let e =
            members_from_text("cluster_node_info{pid=\"1\"} 1\ncluster_peer_up 1\n").unwrap_err();
        assert_eq!(e.to_string(), "cluster_peer_up: no peer label");
        let e = members_from_text(
            "cluster_node_info{pid=\"1\"} 1\ncluster_peer_incarnation{peer=\"2\"} 1.5\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cluster_peer_incarnation: incarnation 1.5 is not a whole number"
        );
    }
}
