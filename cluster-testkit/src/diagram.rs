//! Space-time diagrams of a run: one column per node, time flowing down, an arrow for each
//! message that arrived, a mark for each drop (with its reason), start, crash, cut and
//! heal — as text for the terminal ([`text`]) and as a self-contained HTML page with an SVG
//! drawing for a browser ([`html`], [`write()`]).
//!
//! Failure reports of the [conformance suite](crate::conformance) and of
//! [`faults`](crate::faults) print the text diagram and write the HTML one beside the
//! history.
//!
//! In the text diagram an arrow is drawn on the row where the message arrived, from the
//! sender's column to the receiver's; in the HTML one it runs from the row where it was
//! sent. Lanes: `│` up, `┆` down. Marks: `▲` start, `╳` crash, `○` send, `×` refused or
//! dropped (the text says why), `╌╌×` lost in flight, `a`/`b` the two sides of a
//! partition, `/` a cut, `~` a lossy link, `┄` heal, `!` a node's logic failed, `?`
//! hostile bytes, `↺` a message to itself.
//!
//! ```
//! use cluster_testkit::{SimCluster, diagram};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), cluster_testkit::SimError> {
//! let mut sim: SimCluster<String> = SimCluster::<String>::builder().nodes(2).seed(1).build().await?;
//! sim.send(1, 2, "hello".to_string()).await?;
//! sim.settle().await;
//! let text = diagram::text(&sim.finish().await);
//! assert!(text.contains("●─────▶"), "{text}");
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use cluster_core::{BROADCAST, DropReason, Incarnation, MsgId, Pid};

use crate::history::{Event, MsgRef, ReasonCounts, Record, from_json_lines};

/// Width of a node's column in the text diagram.
const COLUMN: usize = 6;
/// Where a node's lane sits in its column.
const LANE: usize = 2;
/// The longest payload or summary shown on a row.
const LABEL: usize = 48;
/// Rows drawn in the HTML diagram: the last ones, for very long runs.
const HTML_ROWS: usize = 5000;

/// A mark on a node's lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Start,
    Crash,
    Send,
    Drop,
    SideA,
    SideB,
    Failed,
    Hostile,
    ToItself,
    /// A node told peer events.
    Told,
}

impl Mark {
    fn glyph(self) -> char {
        match self {
            Mark::Start => '▲',
            Mark::Crash => '╳',
            Mark::Send => '○',
            Mark::Drop => '×',
            Mark::SideA => 'a',
            Mark::SideB => 'b',
            Mark::Failed => '!',
            Mark::Hostile => '?',
            Mark::ToItself => '↺',
            Mark::Told => '•',
        }
    }
}

/// How an arrow between two lanes is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// A message that arrived (and was delivered, unless `dropped`).
    Arrived { dropped: bool },
    /// A frame lost in flight.
    Lost,
    /// A one-way cut.
    Cut,
    /// A lossy link.
    Loss,
}

#[derive(Debug, Clone)]
struct Arrow {
    from: usize,
    to: usize,
    line: Line,
    /// The row the message was sent on, if known (the HTML arrow starts there).
    sent_row: Option<usize>,
}

/// One row of the diagram: one event (or a few starts at once).
#[derive(Debug, Clone)]
struct Row {
    at_us: u64,
    seq: u64,
    marks: Vec<(usize, Mark)>,
    arrow: Option<Arrow>,
    /// Whether the row spans every lane (a heal).
    across: bool,
    text: String,
    /// Which lanes are up after this row.
    up: Vec<Option<bool>>,
    /// For the HTML: a class for colour.
    class: &'static str,
}

/// A run laid out as rows, shared by the text and HTML renderings.
struct Layout {
    title: String,
    pids: Vec<Pid>,
    rows: Vec<Row>,
    footer: Vec<String>,
}

fn clip(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= LABEL {
        one_line
    } else {
        let mut s: String = one_line.chars().take(LABEL - 1).collect();
        s.push('…');
        s
    }
}

fn dest(to: Pid) -> String {
    if to == BROADCAST {
        "all".into()
    } else {
        to.to_string()
    }
}

fn reasons(counts: &ReasonCounts) -> String {
    if counts.is_empty() {
        return "0".into();
    }
    let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{r} {n}")).collect();
    parts.join(", ")
}

/// What a frame header says: sender, its incarnation, message id.
type Header = (Pid, Incarnation, MsgId);

/// What the records say about messages, gathered before the rows are laid out.
#[derive(Default)]
struct Messages {
    /// `(from, msg_id)` → the payload of the harness's `Send`, as compact JSON.
    payloads: BTreeMap<(Pid, MsgId), String>,
    /// `(from, incarnation, msg_id)` → the name its first routed copy carried.
    names: BTreeMap<(Pid, Incarnation, MsgId), MsgRef>,
    /// Record index of an arrival → why it was then dropped, and the index of that record.
    dropped_arrivals: BTreeMap<usize, DropReason>,
    /// Indexes of `Dropped` records told on their arrival's row.
    told: BTreeSet<usize>,
}

impl Messages {
    fn gather(records: &[Record]) -> Self {
        let mut m = Messages::default();
        // Per node, the last arrival not yet paired with a drop, by its header.
        let mut last_arrival: BTreeMap<Pid, (usize, Option<Header>)> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            match &r.event {
                Event::Send {
                    from,
                    msg_id,
                    payload,
                    ..
                } => {
                    m.payloads.insert((*from, *msg_id), payload.to_string());
                }
                Event::Routed {
                    from,
                    incarnation,
                    msg_id,
                    ..
                } => {
                    if let Some(name) = r.msg {
                        m.names
                            .entry((*from, *incarnation, *msg_id))
                            .or_insert(name);
                    }
                }
                Event::Arrived {
                    at,
                    from,
                    incarnation,
                    msg_id,
                    ..
                } => {
                    let header = match (from, incarnation, msg_id) {
                        (Some(f), Some(inc), Some(id)) => Some((*f, *inc, *id)),
                        _ => None,
                    };
                    last_arrival.insert(*at, (i, header));
                }
                Event::Dropped {
                    at,
                    from,
                    incarnation,
                    msg_id,
                    reason,
                    ..
                } => {
                    let header = match (from, incarnation, msg_id) {
                        (Some(f), Some(inc), Some(id)) => Some((*f, *inc, *id)),
                        _ => None,
                    };
                    if let Some((arrival, h)) = last_arrival.get(at).copied()
                        && h == header
                    {
                        last_arrival.remove(at);
                        m.dropped_arrivals.insert(arrival, *reason);
                        m.told.insert(i);
                    }
                }
                _ => {}
            }
        }
        m
    }

    /// How a message is called on a row: its name, else its id.
    fn label(
        &self,
        msg: Option<MsgRef>,
        from: Pid,
        incarnation: Option<Incarnation>,
        id: MsgId,
    ) -> String {
        msg.or_else(|| incarnation.and_then(|inc| self.names.get(&(from, inc, id)).copied()))
            .map_or_else(|| id_text(id), |n| n.to_string())
    }

    /// What a message says: the summary, else the payload the harness sent, if known.
    fn content(&self, r: &Record, from: Pid, id: MsgId) -> Option<String> {
        r.summary
            .clone()
            .or_else(|| self.payloads.get(&(from, id)).cloned())
            .map(|s| clip(&s))
    }
}

/// A message id as the diagram shows it: the library's ids (pid, incarnation and counter
/// in one number) read best in hex.
fn id_text(id: MsgId) -> String {
    if (0..=0xFFFF).contains(&id) {
        format!("id {id}")
    } else {
        format!("id {id:#x}")
    }
}

fn with_content(mut text: String, content: Option<String>) -> String {
    if let Some(c) = content {
        text.push_str(": ");
        text.push_str(&c);
    }
    text
}

impl Layout {
    fn new(records: &[Record]) -> Self {
        let mut pids: Vec<Pid> = Vec::new();
        let mut title = String::from("cluster run");
        for r in records {
            if let Event::Begin {
                pids: p,
                seed,
                backend,
                ..
            } = &r.event
            {
                pids = p.clone();
                title = format!("cluster run on `{backend}`, seed {seed}");
                break;
            }
        }
        // Pids that show up without a `Begin` (a partial history) still get a column.
        let mut seen: BTreeSet<Pid> = pids.iter().copied().collect();
        for r in records {
            for p in event_pids(&r.event) {
                if seen.insert(p) {
                    pids.push(p);
                }
            }
        }
        let column: BTreeMap<Pid, usize> = pids.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let messages = Messages::gather(records);
        let mut up: Vec<Option<bool>> = vec![None; pids.len()];
        let mut started: BTreeSet<Pid> = BTreeSet::new();
        let mut rows: Vec<Row> = Vec::new();
        let mut footer = Vec::new();
        // Row of the last send of each message, for the HTML arrows.
        let mut sent_rows: BTreeMap<(Pid, MsgId), usize> = BTreeMap::new();
        let mut named_rows: BTreeMap<MsgRef, usize> = BTreeMap::new();
        // The sends already drawn, so that a routed copy adds no second send row.
        let mut shown_sends: BTreeSet<(Pid, Incarnation, MsgId, Option<MsgRef>)> = BTreeSet::new();
        let col = |p: Pid| column.get(&p).copied();
        let mut i = 0;
        while i < records.len() {
            let r = &records[i];
            let mut row = Row {
                at_us: r.at_us,
                seq: r.seq,
                marks: Vec::new(),
                arrow: None,
                across: false,
                text: String::new(),
                up: Vec::new(),
                class: "event",
            };
            let mut next = i + 1;
            match &r.event {
                Event::Start { .. } => {
                    // Starts at the same instant share a row.
                    let mut parts = Vec::new();
                    let mut j = i;
                    while let Some(Event::Start { pid, incarnation }) =
                        records.get(j).map(|r| &r.event)
                    {
                        if records[j].at_us != r.at_us {
                            break;
                        }
                        if let Some(c) = col(*pid) {
                            row.marks.push((c, Mark::Start));
                            up[c] = Some(true);
                        }
                        let verb = if started.insert(*pid) {
                            "start"
                        } else {
                            "restart"
                        };
                        parts.push((verb, *pid, *incarnation));
                        j += 1;
                    }
                    next = j;
                    let same = parts
                        .iter()
                        .all(|(v, _, inc)| *v == parts[0].0 && *inc == parts[0].2);
                    row.text = if same && parts.len() > 1 {
                        let who: Vec<String> =
                            parts.iter().map(|(_, p, _)| p.to_string()).collect();
                        format!(
                            "{} {} (incarnation {})",
                            parts[0].0,
                            who.join(", "),
                            parts[0].2
                        )
                    } else {
                        let each: Vec<String> = parts
                            .iter()
                            .map(|(v, p, inc)| format!("{v} {p} (incarnation {inc})"))
                            .collect();
                        each.join(", ")
                    };
                    row.class = "start";
                }
                Event::Crash { pid } => {
                    if let Some(c) = col(*pid) {
                        row.marks.push((c, Mark::Crash));
                        up[c] = Some(false);
                    }
                    row.text = format!("crash {pid}");
                    row.class = "crash";
                }
                Event::Partition { a, b } => {
                    row.marks
                        .extend(a.iter().filter_map(|p| col(*p)).map(|c| (c, Mark::SideA)));
                    row.marks
                        .extend(b.iter().filter_map(|p| col(*p)).map(|c| (c, Mark::SideB)));
                    let side = |g: &[Pid]| {
                        g.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(" ")
                    };
                    row.text = format!("partition {} | {}", side(a), side(b));
                    row.class = "fault";
                }
                Event::Cut { from, to } => {
                    if let (Some(a), Some(b)) = (col(*from), col(*to)) {
                        row.arrow = Some(Arrow {
                            from: a,
                            to: b,
                            line: Line::Cut,
                            sent_row: None,
                        });
                    }
                    row.text = format!("cut {from} → {to}");
                    row.class = "fault";
                }
                Event::SetLoss { from, to, p } => {
                    if let (Some(a), Some(b)) = (col(*from), col(*to)) {
                        row.arrow = Some(Arrow {
                            from: a,
                            to: b,
                            line: Line::Loss,
                            sent_row: None,
                        });
                    }
                    row.text = format!("loss {from} → {to}: {:.0}%", p * 100.0);
                    row.class = "fault";
                }
                Event::Heal => {
                    row.across = true;
                    row.text = "heal".into();
                    row.class = "fault";
                }
                Event::Send {
                    from,
                    incarnation,
                    to,
                    msg_id,
                    payload,
                } => {
                    if let Some(c) = col(*from) {
                        row.marks.push((c, Mark::Send));
                    }
                    let label = messages.label(r.msg, *from, Some(*incarnation), *msg_id);
                    let content = r.summary.clone().unwrap_or_else(|| payload.to_string());
                    row.text = format!("{label} {from} → {}: {}", dest(*to), clip(&content));
                    let name = messages.names.get(&(*from, *incarnation, *msg_id)).copied();
                    shown_sends.insert((*from, *incarnation, *msg_id, name));
                    sent_rows.insert((*from, *msg_id), rows.len());
                    if let Some(name) = name {
                        named_rows.insert(name, rows.len());
                    }
                    row.class = "send";
                }
                Event::Routed {
                    from,
                    incarnation,
                    msg_id,
                    ..
                } => {
                    // The copies of one message, routed one after another, share a row.
                    let key = (*from, *incarnation, *msg_id, r.msg);
                    let mut to_all = Vec::new();
                    let mut refused = Vec::new();
                    let mut j = i;
                    while let Some(Event::Routed {
                        from: f,
                        incarnation: inc,
                        to,
                        msg_id: id,
                        refused: why,
                    }) = records.get(j).map(|r| &r.event)
                    {
                        if (*f, *inc, *id, records[j].msg) != key {
                            break;
                        }
                        to_all.push(*to);
                        if let Some(reason) = why {
                            refused.push((*to, *reason));
                        }
                        j += 1;
                    }
                    next = j;
                    let already = !shown_sends.insert(key);
                    if already && refused.is_empty() {
                        i = next;
                        continue;
                    }
                    let label = messages.label(r.msg, *from, Some(*incarnation), *msg_id);
                    if !already {
                        if let Some(c) = col(*from) {
                            row.marks.push((c, Mark::Send));
                        }
                        sent_rows.insert((*from, *msg_id), rows.len());
                        if let Some(name) = r.msg {
                            named_rows.insert(name, rows.len());
                        }
                    }
                    for (to, _) in &refused {
                        if let Some(c) = col(*to) {
                            row.marks.push((c, Mark::Drop));
                        }
                    }
                    let refusals: Vec<String> = refused
                        .iter()
                        .map(|(to, why)| format!("{to} {why}"))
                        .collect();
                    row.text = if already {
                        format!("{label} {from} refused: {}", refusals.join(", "))
                    } else {
                        let tos: Vec<String> = to_all.iter().map(ToString::to_string).collect();
                        let mut t = with_content(
                            format!("{label} {from} → {}", tos.join(" ")),
                            messages.content(r, *from, *msg_id),
                        );
                        if !refusals.is_empty() {
                            let _ = write!(t, "; refused: {}", refusals.join(", "));
                        }
                        t
                    };
                    row.class = if refused.is_empty() { "send" } else { "drop" };
                }
                Event::Arrived {
                    at,
                    from: Some(from),
                    incarnation,
                    msg_id: Some(msg_id),
                    ..
                } => {
                    let dropped = messages.dropped_arrivals.get(&i).copied();
                    if let (Some(a), Some(b)) = (col(*from), col(*at)) {
                        let sent_row = r
                            .msg
                            .and_then(|n| named_rows.get(&n).copied())
                            .or_else(|| sent_rows.get(&(*from, *msg_id)).copied());
                        row.arrow = Some(Arrow {
                            from: a,
                            to: b,
                            line: Line::Arrived {
                                dropped: dropped.is_some(),
                            },
                            sent_row,
                        });
                    }
                    let label = messages.label(r.msg, *from, *incarnation, *msg_id);
                    row.text = with_content(
                        format!("{label} {from} → {at}"),
                        messages.content(r, *from, *msg_id),
                    );
                    if let Some(reason) = dropped {
                        let _ = write!(row.text, " — dropped: {reason}");
                        row.class = "drop";
                    } else {
                        row.class = "deliver";
                    }
                }
                Event::Arrived { at, .. } => {
                    if let Some(c) = col(*at) {
                        row.marks.push((c, Mark::Drop));
                    }
                    row.text = match messages.dropped_arrivals.get(&i) {
                        Some(reason) => {
                            format!("bytes that are not a frame at {at} — dropped: {reason}")
                        }
                        None => format!("bytes that are not a frame at {at}"),
                    };
                    row.class = "drop";
                }
                Event::Dropped {
                    at, from, reason, ..
                } => {
                    if messages.told.contains(&i) {
                        i = next;
                        continue;
                    }
                    if let Some(c) = col(*at) {
                        row.marks.push((c, Mark::Drop));
                    }
                    let who = from.map_or_else(|| "?".to_string(), |f| f.to_string());
                    row.text = format!("from {who} dropped at {at}: {reason}");
                    row.class = "drop";
                }
                Event::Discarded {
                    from,
                    incarnation,
                    to,
                    msg_id,
                    reason,
                } => {
                    if let (Some(a), Some(b)) = (col(*from), col(*to)) {
                        row.arrow = Some(Arrow {
                            from: a,
                            to: b,
                            line: Line::Lost,
                            sent_row: sent_rows.get(&(*from, *msg_id)).copied(),
                        });
                    }
                    let label = messages.label(r.msg, *from, Some(*incarnation), *msg_id);
                    row.text = format!("{label} {from} → {to} lost in flight: {reason}");
                    row.class = "drop";
                }
                Event::TransportDropped {
                    at,
                    peer,
                    reason,
                    count,
                } => {
                    if let Some(c) = col(*at) {
                        row.marks.push((c, Mark::Drop));
                    }
                    row.text =
                        format!("transport of {at} discarded {count} frames for {peer}: {reason}");
                    row.class = "drop";
                }
                Event::Delivered {
                    at, from, payload, ..
                } if at == from => {
                    if let Some(c) = col(*at) {
                        row.marks.push((c, Mark::ToItself));
                    }
                    let content = r.summary.clone().unwrap_or_else(|| payload.to_string());
                    row.text = format!("{at} → itself: {}", clip(&content));
                    row.class = "deliver";
                }
                Event::Raw { to, len } => {
                    if let Some(c) = col(*to) {
                        row.marks.push((c, Mark::Hostile));
                    }
                    row.text = format!("{len} hostile bytes → {to}");
                    row.class = "fault";
                }
                Event::Injected {
                    to,
                    bytes,
                    len,
                    refused,
                    ..
                } => {
                    if let Some(c) = col(*to) {
                        row.marks.push((c, Mark::Hostile));
                    }
                    row.text = format!("hostile bytes → {to}: {bytes} ({len} bytes)");
                    if let Some(reason) = refused {
                        let _ = write!(row.text, ", refused: {reason}");
                    }
                    row.class = "fault";
                }
                Event::NodeFailed {
                    pid,
                    incarnation,
                    panicked,
                    message,
                } => {
                    if let Some(c) = col(*pid) {
                        row.marks.push((c, Mark::Failed));
                    }
                    let what = if *panicked { "PANIC" } else { "FAILED" };
                    row.text = format!(
                        "{what} {pid} (incarnation {incarnation}): {}",
                        clip(message)
                    );
                    row.class = "failed";
                }
                Event::Note { text } => {
                    row.text = format!("note: {}", clip(text));
                }
                Event::PeerEvent { .. } | Event::PeerEventsLost { .. } => {
                    // Events told one after another share a row: `told 1: up 2, up 3; …`.
                    let mut told: Vec<(Pid, Vec<String>)> = Vec::new();
                    let mut j = i;
                    while let Some(r) = records.get(j) {
                        let (at, what) = match &r.event {
                            Event::PeerEvent { at, change, .. } => (*at, change.to_string()),
                            Event::PeerEventsLost { at, lost, .. } => {
                                (*at, format!("{lost} events lost"))
                            }
                            _ => break,
                        };
                        match told.last_mut() {
                            Some((last, list)) if *last == at => list.push(what),
                            _ => told.push((at, vec![what])),
                        }
                        j += 1;
                    }
                    next = j;
                    let mut marked = BTreeSet::new();
                    for (at, _) in &told {
                        if let Some(c) = col(*at).filter(|c| marked.insert(*c)) {
                            row.marks.push((c, Mark::Told));
                        }
                    }
                    let parts: Vec<String> = told
                        .iter()
                        .map(|(at, list)| format!("{at}: {}", list.join(", ")))
                        .collect();
                    row.text = format!("told {}", parts.join("; "));
                }
                Event::Stats {
                    pid,
                    incarnation,
                    sent,
                    delivered,
                    dropped_outgoing,
                    dropped_incoming,
                    ..
                } => {
                    footer.push(format!(
                        "{pid} (incarnation {incarnation}): sent {sent}, delivered {delivered}, \
                         dropped outgoing {}, incoming {}",
                        reasons(dropped_outgoing),
                        reasons(dropped_incoming)
                    ));
                    i = next;
                    continue;
                }
                Event::NetDiscarded { discarded } if !discarded.is_empty() => {
                    footer.push(format!("network discarded {}", reasons(discarded)));
                    i = next;
                    continue;
                }
                // Deliveries are drawn where they arrived; bookkeeping draws nothing.
                _ => {
                    i = next;
                    continue;
                }
            }
            row.up = up.clone();
            rows.push(row);
            i = next;
        }
        Layout {
            title,
            pids,
            rows,
            footer,
        }
    }

    fn text(&self, last: Option<usize>) -> String {
        let width = self.pids.len() * COLUMN;
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        let mut head = vec![' '; width];
        for (c, p) in self.pids.iter().enumerate() {
            for (k, ch) in p.to_string().chars().enumerate() {
                if let Some(cell) = head.get_mut(c * COLUMN + LANE + k) {
                    *cell = ch;
                }
            }
        }
        let head: String = head.into_iter().collect();
        let _ = writeln!(out, "{:>9} │ {head} │", "time s");
        let _ = writeln!(
            out,
            "{}┼{}┼{}",
            "─".repeat(10),
            "─".repeat(width + 2),
            "─".repeat(24)
        );
        let skip = last.map_or(0, |n| self.rows.len().saturating_sub(n));
        if skip > 0 {
            let _ = writeln!(
                out,
                "{:>9} │ {} │ … {skip} earlier rows",
                "",
                " ".repeat(width)
            );
        }
        for row in &self.rows[skip..] {
            let cells = text_cells(row, self.pids.len());
            let line = format!("{:>9.3} │ {} │ {}", row.at_us as f64 / 1e6, cells, row.text);
            let _ = writeln!(out, "{}", line.trim_end());
        }
        if !self.footer.is_empty() {
            let _ = writeln!(out, "counters:");
            for line in &self.footer {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

/// The pids an event names, for columns of a history without a `Begin` record.
fn event_pids(e: &Event) -> Vec<Pid> {
    match e {
        Event::Start { pid, .. } | Event::Crash { pid } => vec![*pid],
        Event::Routed { from, to, .. } | Event::Discarded { from, to, .. } => {
            vec![*from, *to]
        }
        Event::Arrived { at, from, .. } => std::iter::once(*at).chain(*from).collect(),
        _ => Vec::new(),
    }
    .into_iter()
    .filter(|p| *p != BROADCAST)
    .collect()
}

/// A row's lanes, marks and arrow, as text.
fn text_cells(row: &Row, columns: usize) -> String {
    let width = columns * COLUMN;
    let mut cells = vec![' '; width];
    for (c, state) in row.up.iter().enumerate().take(columns) {
        cells[c * COLUMN + LANE] = match state {
            Some(true) => '│',
            Some(false) => '┆',
            None => ' ',
        };
    }
    if row.across && columns > 0 {
        for cell in cells
            .iter_mut()
            .take((columns - 1) * COLUMN + LANE + 1)
            .skip(LANE)
        {
            *cell = '┄';
        }
    }
    if let Some(arrow) = &row.arrow {
        let (a, b) = (arrow.from * COLUMN + LANE, arrow.to * COLUMN + LANE);
        let (lo, hi) = (a.min(b), a.max(b));
        let shaft = match arrow.line {
            Line::Arrived { .. } => '─',
            Line::Lost => '╌',
            Line::Cut => '╌',
            Line::Loss => '~',
        };
        for cell in cells.iter_mut().take(hi).skip(lo + 1) {
            *cell = shaft;
        }
        let head = match arrow.line {
            Line::Arrived { dropped: true } | Line::Lost => '×',
            _ if b > a => '▶',
            _ if b < a => '◀',
            _ => '↺',
        };
        cells[a] = match arrow.line {
            Line::Arrived { .. } | Line::Lost => '●',
            Line::Cut | Line::Loss => '○',
        };
        cells[b] = head;
        if arrow.line == Line::Cut && hi > lo + 1 {
            cells[(lo + hi) / 2] = '/';
        }
    }
    for (c, mark) in &row.marks {
        if let Some(cell) = cells.get_mut(c * COLUMN + LANE) {
            *cell = mark.glyph();
        }
    }
    cells.into_iter().collect()
}

/// The whole run as a text diagram (see the module docs).
pub fn text(records: &[Record]) -> String {
    Layout::new(records).text(None)
}

/// The last `rows` rows of the text diagram, for a terminal (the counters included).
pub fn text_last(records: &[Record], rows: usize) -> String {
    Layout::new(records).text(Some(rows))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(ch),
        }
    }
    out
}

/// The run as a self-contained HTML page: an SVG space-time diagram (arrows from the row a
/// message was sent on to the row it arrived on; hover for details), then the counters.
pub fn html(records: &[Record]) -> String {
    const LEFT: usize = 80;
    const SPACING: usize = 110;
    const TOP: usize = 50;
    const STEP: usize = 20;
    let layout = Layout::new(records);
    let skip = layout.rows.len().saturating_sub(HTML_ROWS);
    let rows = &layout.rows[skip..];
    let x = |c: usize| LEFT + c * SPACING;
    let y = |r: usize| TOP + r * STEP;
    let text_x = x(layout.pids.len().max(1)) - SPACING / 2;
    let height = y(rows.len()) + STEP;
    let width = text_x + 700;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="12">"#
    );
    svg.push_str(concat!(
        r#"<defs><marker id="head" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="context-stroke"/></marker></defs>"#,
        "\n"
    ));
    for (c, p) in layout.pids.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{p}</text>"#,
            x(c),
            TOP - 25
        );
        // The lane, in runs of one state: solid while up, dashed while down.
        let mut r = 0;
        while r < rows.len() {
            let state = rows[r].up.get(c).copied().flatten();
            let mut end = r;
            while end + 1 < rows.len() && rows[end + 1].up.get(c).copied().flatten() == state {
                end += 1;
            }
            let style = match state {
                Some(true) => r##"stroke="#333" stroke-width="2""##,
                Some(false) => r##"stroke="#aaa" stroke-dasharray="3,4""##,
                None => "",
            };
            if !style.is_empty() {
                let _ = writeln!(
                    svg,
                    r#"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" {style}/>"#,
                    x(c),
                    y(r),
                    y(end + 1)
                );
            }
            r = end + 1;
        }
    }
    for (r, row) in rows.iter().enumerate() {
        let tip = format!(
            "#{} at {:.6} s: {}",
            row.seq,
            row.at_us as f64 / 1e6,
            row.text
        );
        let _ = write!(
            svg,
            r#"<g class="{}"><title>{}</title>"#,
            row.class,
            escape(&tip)
        );
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end" fill="#777">{:.3}</text>"##,
            LEFT - 30,
            y(r) + 4,
            row.at_us as f64 / 1e6
        );
        if row.across {
            let _ = write!(
                svg,
                r##"<line x1="{}" y1="{2}" x2="{}" y2="{2}" stroke="#2a7" stroke-dasharray="2,3"/>"##,
                x(0) - 10,
                x(layout.pids.len().saturating_sub(1)) + 10,
                y(r)
            );
        }
        if let Some(a) = &row.arrow {
            let from_y = a
                .sent_row
                .and_then(|s| s.checked_sub(skip))
                .filter(|s| *s <= r)
                .map_or(y(r), y);
            let (stroke, dash, head) = match a.line {
                Line::Arrived { dropped: false } => ("#1f5fbf", "", r#" marker-end="url(#head)""#),
                Line::Arrived { dropped: true } => ("#c0392b", "", r#" marker-end="url(#head)""#),
                Line::Lost => ("#c0392b", r#" stroke-dasharray="5,4""#, ""),
                Line::Cut => ("#e67e22", r#" stroke-dasharray="2,2""#, ""),
                Line::Loss => ("#e67e22", r#" stroke-dasharray="8,3""#, ""),
            };
            let _ = write!(
                svg,
                r#"<line x1="{}" y1="{from_y}" x2="{}" y2="{}" stroke="{stroke}" stroke-width="1.5"{dash}{head}/>"#,
                x(a.from),
                x(a.to),
                y(r)
            );
            if matches!(a.line, Line::Lost | Line::Arrived { dropped: true }) {
                svg.push_str(&cross(x(a.to), y(r), "#c0392b"));
            }
        }
        for (c, mark) in &row.marks {
            svg.push_str(&svg_mark(*mark, x(*c), y(r)));
        }
        let _ = writeln!(
            svg,
            r#"<text x="{text_x}" y="{}">{}</text></g>"#,
            y(r) + 4,
            escape(&row.text)
        );
    }
    svg.push_str("</svg>\n");
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{0}</title>\n\
         <style>body{{font-family:sans-serif;margin:1em}} g:hover text{{font-weight:bold}} \
         .failed text{{fill:#c0392b}} pre{{background:#f6f6f6;padding:.5em}}</style>\n\
         </head><body>\n<h1>{0}</h1>\n<p>Time flows down; one lane per node (solid: up, \
         dashed: down). Blue arrows: messages, from the row they were sent on to the row they \
         arrived on; red: dropped on arrival (×) or lost in flight (dashed); orange: cuts and \
         lossy links; green: heal. ▲ start, ╳ crash, ○ send, × refused, a/b partition sides, \
         ! node logic failed. Hover a row for its record number and time.</p>\n",
        escape(&layout.title)
    );
    if skip > 0 {
        let _ = writeln!(page, "<p>… {skip} earlier rows not drawn.</p>");
    }
    page.push_str(&svg);
    if !layout.footer.is_empty() {
        let _ = writeln!(
            page,
            "<h2>Counters</h2><pre>{}</pre>",
            escape(&layout.footer.join("\n"))
        );
    }
    page.push_str("</body></html>\n");
    page
}

fn cross(cx: usize, cy: usize, colour: &str) -> String {
    format!(
        r#"<path d="M{} {} l8 8 m0 -8 l-8 8" stroke="{colour}" stroke-width="2"/>"#,
        cx - 4,
        cy - 4
    )
}

fn svg_mark(mark: Mark, cx: usize, cy: usize) -> String {
    match mark {
        Mark::Start => format!(
            r##"<path d="M{} {} l6 10 h-12 z" fill="#2a7"/>"##,
            cx,
            cy - 6
        ),
        Mark::Crash => format!(
            r#"<path d="M{} {} l12 12 m0 -12 l-12 12" stroke="black" stroke-width="3"/>"#,
            cx - 6,
            cy - 6
        ),
        Mark::Send => format!(
            r##"<circle cx="{cx}" cy="{cy}" r="4" fill="white" stroke="#1f5fbf" stroke-width="2"/>"##
        ),
        Mark::Drop => cross(cx, cy, "#c0392b"),
        // Letters on a white disc, so that the lane does not run through them.
        Mark::SideA | Mark::SideB => format!(
            r##"<circle cx="{cx}" cy="{cy}" r="7" fill="white"/><text x="{cx}" y="{}" text-anchor="middle" fill="#e67e22" font-weight="bold">{}</text>"##,
            cy + 4,
            mark.glyph()
        ),
        Mark::Told => format!(r##"<circle cx="{cx}" cy="{cy}" r="3" fill="#8e44ad"/>"##),
        Mark::Failed | Mark::Hostile | Mark::ToItself => format!(
            r##"<circle cx="{cx}" cy="{cy}" r="7" fill="white"/><text x="{cx}" y="{}" text-anchor="middle" fill="#c0392b" font-weight="bold">{}</text>"##,
            cy + 4,
            mark.glyph()
        ),
    }
}

/// Writes [`html`] of the run into `dir`, as `cluster-<backend>-<seed>.html` (from the
/// history's first record), and returns the path.
pub fn write(records: &[Record], dir: &Path) -> io::Result<PathBuf> {
    let name = records
        .iter()
        .find_map(|r| match &r.event {
            Event::Begin { backend, seed, .. } => Some(format!("cluster-{backend}-{seed}")),
            _ => None,
        })
        .unwrap_or_else(|| "cluster-run".into());
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{name}.html"));
    std::fs::write(&path, html(records))?;
    Ok(path)
}

/// For a failure report: the diagram of the history in `json_lines` (the end of it, if
/// long), and the path of its HTML rendering, written beside it (same name, `.html`).
/// Empty if the file cannot be read or parsed.
pub fn report(json_lines: &Path) -> String {
    const ROWS: usize = 60;
    let Ok(text) = std::fs::read_to_string(json_lines) else {
        return String::new();
    };
    let Ok(records) = from_json_lines(&text) else {
        return String::new();
    };
    let mut out = format!("space-time diagram:\n{}", text_last(&records, ROWS));
    let html_path = json_lines.with_extension("html");
    if std::fs::write(&html_path, html(&records)).is_ok() {
        let _ = writeln!(
            out,
            "space-time diagram (open in a browser): {}",
            html_path.display()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;

    fn name(from: Pid, incarnation: Incarnation, seq: u64) -> Option<MsgRef> {
        Some(MsgRef {
            from,
            incarnation,
            seq,
        })
    }

    /// A small run: a broadcast (one copy delivered, one dropped on arrival), a crash, a
    /// refused send, a partition with a frame lost in flight, a heal, a node's failure.
    fn small_history() -> Vec<Record> {
        let h = History::new();
        let at = |us: u64, event: Event, msg: Option<MsgRef>, summary: Option<&str>| {
            let seq = h.push(event);
            (seq, us, msg, summary.map(String::from))
        };
        let routed = |to, refused| Event::Routed {
            from: 1,
            incarnation: 1,
            to,
            msg_id: 7,
            refused,
        };
        let arrived = |at| Event::Arrived {
            at,
            at_incarnation: 1,
            from: Some(1),
            incarnation: Some(1),
            msg_id: Some(7),
        };
        let marks = vec![
            at(
                0,
                Event::Begin {
                    pids: vec![1, 2, 3],
                    seed: 42,
                    backend: "mem".into(),
                    window_us: None,
                },
                None,
                None,
            ),
            at(
                0,
                Event::Start {
                    pid: 1,
                    incarnation: 1,
                },
                None,
                None,
            ),
            at(
                0,
                Event::Start {
                    pid: 2,
                    incarnation: 1,
                },
                None,
                None,
            ),
            at(
                0,
                Event::Start {
                    pid: 3,
                    incarnation: 1,
                },
                None,
                None,
            ),
            at(
                1_000,
                routed(2, None),
                name(1, 1, 1),
                Some("Vote { term: 2 }"),
            ),
            at(
                1_000,
                routed(3, None),
                name(1, 1, 1),
                Some("Vote { term: 2 }"),
            ),
            at(1_500, arrived(2), name(1, 1, 1), Some("Vote { term: 2 }")),
            at(1_500, arrived(3), name(1, 1, 1), Some("Vote { term: 2 }")),
            at(
                1_500,
                Event::Dropped {
                    at: 3,
                    at_incarnation: 1,
                    from: Some(1),
                    incarnation: Some(1),
                    msg_id: Some(7),
                    reason: DropReason::Backpressure,
                },
                name(1, 1, 1),
                None,
            ),
            at(2_000, Event::Crash { pid: 3 }, None, None),
            at(
                2_250,
                Event::Routed {
                    from: 2,
                    incarnation: 1,
                    to: 3,
                    msg_id: 0,
                    refused: Some(DropReason::Unreachable),
                },
                name(2, 1, 1),
                None,
            ),
            at(
                2_500,
                Event::Routed {
                    from: 2,
                    incarnation: 1,
                    to: 1,
                    msg_id: 0,
                    refused: None,
                },
                name(2, 1, 2),
                None,
            ),
            at(
                3_000,
                Event::Partition {
                    a: vec![1],
                    b: vec![2, 3],
                },
                None,
                None,
            ),
            at(
                3_000,
                Event::Discarded {
                    from: 2,
                    incarnation: 1,
                    to: 1,
                    msg_id: 0,
                    reason: DropReason::Partitioned,
                },
                name(2, 1, 2),
                None,
            ),
            at(4_000, Event::Heal, None, None),
            at(
                4_000,
                Event::Start {
                    pid: 3,
                    incarnation: 2,
                },
                None,
                None,
            ),
            at(
                5_000,
                Event::NodeFailed {
                    pid: 2,
                    incarnation: 1,
                    panicked: false,
                    message: "two leaders in term 2".into(),
                },
                None,
                None,
            ),
            at(
                5_000,
                Event::Stats {
                    pid: 1,
                    incarnation: 1,
                    sent: 2,
                    delivered: 0,
                    dropped_outgoing: ReasonCounts::new(),
                    dropped_incoming: ReasonCounts::from([(DropReason::Partitioned, 1)]),
                    lost_in_transit: 0,
                    unconfirmed: 0,
                    unacknowledged: 0,
                },
                None,
                None,
            ),
        ];
        let mut records = h.records();
        for (seq, us, msg, summary) in marks {
            let r = &mut records[seq as usize];
            r.at_us = us;
            r.msg = msg;
            r.summary = summary;
        }
        records
    }

    #[test]
    fn the_text_diagram_of_a_small_run() {
        let expected = "\
cluster run on `mem`, seed 42
   time s │   1     2     3    │
──────────┼────────────────────┼────────────────────────
    0.000 │   ▲     ▲     ▲    │ start 1, 2, 3 (incarnation 1)
    0.001 │   ○     │     │    │ 1.1#1 1 → 2 3: Vote { term: 2 }
    0.002 │   ●─────▶     │    │ 1.1#1 1 → 2: Vote { term: 2 }
    0.002 │   ●───────────×    │ 1.1#1 1 → 3: Vote { term: 2 } — dropped: backpressure
    0.002 │   │     │     ╳    │ crash 3
    0.002 │   │     ○     ×    │ 2.1#1 2 → 3; refused: 3 unreachable
    0.003 │   │     ○     ┆    │ 2.1#2 2 → 1
    0.003 │   a     b     b    │ partition 1 | 2 3
    0.003 │   ×╌╌╌╌╌●     ┆    │ 2.1#2 2 → 1 lost in flight: partitioned
    0.004 │   ┄┄┄┄┄┄┄┄┄┄┄┄┄    │ heal
    0.004 │   │     │     ▲    │ restart 3 (incarnation 2)
    0.005 │   │     !     │    │ FAILED 2 (incarnation 1): two leaders in term 2
counters:
  1 (incarnation 1): sent 2, delivered 0, dropped outgoing 0, incoming partitioned 1
";
        let got = text(&small_history());
        assert_eq!(got, expected, "got:\n{got}");
    }

    /// The end of a long run, with a note of what came before.
    #[test]
    fn text_last_keeps_the_end() {
        let got = text_last(&small_history(), 2);
        assert!(got.contains("… 10 earlier rows"), "{got}");
        assert!(
            got.contains("restart 3") && got.contains("FAILED 2"),
            "{got}"
        );
        assert!(!got.contains("crash 3"), "{got}");
    }

    #[test]
    fn the_html_diagram_is_one_self_contained_page() {
        let page = html(&small_history());
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains("<svg") && page.ends_with("</body></html>\n"));
        // No scripts, styles or images from elsewhere: it opens from a file, offline.
        assert!(!page.contains("src=") && !page.contains("<link") && !page.contains("<script"));
        // The arrow of 1.1#1 runs from the row it was sent on (row 1) to its arrival (row 2).
        assert!(
            page.contains(r#"<line x1="80" y1="70" x2="190" y2="90""#),
            "{page}"
        );
        assert!(page.contains("two leaders in term 2"));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = write(&small_history(), dir.path()).expect("written");
        assert_eq!(
            path.file_name().and_then(|n| n.to_str()),
            Some("cluster-mem-42.html")
        );
        assert_eq!(std::fs::read_to_string(path).ok(), Some(page));
    }
}
