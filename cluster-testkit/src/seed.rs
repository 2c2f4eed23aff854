//! Seeds and case counts from the environment, so a failing run can be replayed exactly.

/// The variable a run's seed is read from: `CLUSTER_SEED=123 cargo test …` replays run 123.
pub const SEED_VAR: &str = "CLUSTER_SEED";

/// The variable that overrides property-test case counts: `CLUSTER_CASES=5000 cargo test …`.
pub const CASES_VAR: &str = "CLUSTER_CASES";

/// Parses a seed written in decimal or as `0x…` hex.
pub fn parse_seed(text: &str) -> Option<u64> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// The seed in [`SEED_VAR`], if set and valid. An invalid value is reported on stderr and
/// ignored, rather than silently replaced.
pub fn seed_from_env() -> Option<u64> {
    let text = std::env::var(SEED_VAR).ok()?;
    let seed = parse_seed(&text);
    if seed.is_none() {
        eprintln!("cluster-testkit: ignoring {SEED_VAR}={text:?}: not a u64 (decimal or 0x hex)");
    }
    seed
}

/// The seed in [`SEED_VAR`], or a fresh random one.
pub fn seed_or_random() -> u64 {
    seed_from_env().unwrap_or_else(rand::random)
}

/// The case count in [`CASES_VAR`] if set, else `default`.
pub fn cases_or(default: u32) -> u32 {
    std::env::var(CASES_VAR)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(default)
}

/// The line printed when a seeded run fails: the seed and how to replay it.
pub fn replay_hint(seed: u64) -> String {
    format!(
        "seed {seed} — replay exactly with {SEED_VAR}={seed} (e.g. `{SEED_VAR}={seed} cargo test -p <crate> <test name>`)"
    )
}

/// Prints the seed if the thread panics while this guard lives (i.e. a test failed).
#[derive(Debug)]
pub(crate) struct SeedGuard {
    pub(crate) seed: u64,
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster-testkit: failed run: {}", replay_hint(self.seed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed(" 0x2a "), Some(42));
        assert_eq!(parse_seed("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_seed("forty-two"), None);
        assert_eq!(parse_seed("-1"), None);
    }
}
