//! The line a receiving child prints when it is done, and the rates computed from it.

use std::time::{Instant, SystemTime};

use crate::BenchError;
use crate::child::number;

/// What a receiving child reports: `result <count> <elapsed_ns> <dropped> <first> <last>`,
/// `first` and `last` being the wall-clock times (ns since the Unix epoch) of its first and
/// last message, so that receivers in different processes can be put on one time line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    count: u64,
    elapsed_ns: u64,
    pub(crate) dropped: u64,
    first_ns: u64,
    last_ns: u64,
}

impl Received {
    /// The line a receiver prints; `span` is the (first, last) arrival, if any.
    pub(crate) fn line(count: u64, span: Option<(Instant, Instant)>, dropped: u64) -> String {
        let (now, wall_now) = (Instant::now(), SystemTime::now());
        let wall_ns = |t: Instant| {
            wall_now
                .checked_sub(now.saturating_duration_since(t))
                .and_then(|w| w.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        };
        let (elapsed, first, last) = span.map_or((0, 0, 0), |(first, last)| {
            let elapsed = u64::try_from(last.duration_since(first).as_nanos()).unwrap_or(u64::MAX);
            (elapsed, wall_ns(first), wall_ns(last))
        });
        format!("result {count} {elapsed} {dropped} {first} {last}")
    }

    pub(crate) fn parse(line: &str) -> Result<Self, BenchError> {
        let mut w = line.split(' ').skip(1);
        let mut next = || number::<u64>(w.next().unwrap_or(""));
        Ok(Self {
            count: next()?,
            elapsed_ns: next()?,
            dropped: next()?,
            first_ns: next()?,
            last_ns: next()?,
        })
    }

    /// One receiver: (msg/s, count), from its first message to its last.
    pub(crate) fn rate(&self) -> (f64, u64) {
        let secs = (self.elapsed_ns as f64 / 1e9).max(1e-9);
        (self.count.saturating_sub(1) as f64 / secs, self.count)
    }

    /// Several receivers together: (deliveries/s, deliveries), from the first delivery at
    /// any of them to the last at any of them.
    pub(crate) fn aggregate(all: &[Received]) -> (f64, u64) {
        let total: u64 = all.iter().map(|r| r.count).sum();
        let active = || all.iter().filter(|r| r.count > 0);
        let span_ns = match (
            active().map(|r| r.first_ns).min(),
            active().map(|r| r.last_ns).max(),
        ) {
            (Some(first), Some(last)) => last.saturating_sub(first),
            _ => 0,
        };
        let secs = (span_ns as f64 / 1e9).max(1e-9);
        (total.saturating_sub(1) as f64 / secs, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_share_one_time_line() {
        let a = Received::parse("result 3 2000 0 1000 3000").ok();
        let b = Received::parse("result 2 1000 1 2000 5000").ok();
        let idle = Received::parse("result 0 0 0 0 0").ok();
        let all: Vec<Received> = [a, b, idle].into_iter().flatten().collect();
        assert_eq!(all.len(), 3);
        let (rate, total) = Received::aggregate(&all);
        assert_eq!(total, 5);
        // 4 intervals over 4 µs.
        assert!((rate - 1e6).abs() < 1e-3, "{rate}");
        assert!(Received::parse("result 1 2").is_err());
    }

    #[test]
    fn a_line_reads_back() {
        // Both arrivals in the past, as they are when a receiver reports.
        let second = std::time::Duration::from_secs(1);
        let t = Instant::now()
            .checked_sub(second)
            .unwrap_or_else(Instant::now);
        let line = Received::line(7, Some((t, t + std::time::Duration::from_micros(3))), 2);
        let r = Received::parse(&line).ok();
        assert_eq!(
            r.map(|r| (r.count, r.elapsed_ns, r.dropped)),
            Some((7, 3000, 2))
        );
        assert_eq!(r.map(|r| r.last_ns - r.first_ns), Some(3000));
    }
}
