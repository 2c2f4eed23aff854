//! A failure replays exactly from its printed seed, and a seed replays a whole run byte for
//! byte, in this process or another.

use std::process::Command;

use cluster_core::BROADCAST;
use cluster_testkit::conformance::{self, SuiteOptions};
use cluster_testkit::mutants::Mutation;
use cluster_testkit::{MemCluster, Op, Scenario, run_scenario};

use crate::mutant;

/// Same seed, same shrunk scenario, same violations, same history (byte for byte).
#[test]
fn a_seed_replays_the_same_failure_and_history() {
    let dir = std::env::temp_dir().join(format!("cluster-testkit-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = || {
        let mut options = SuiteOptions::new(128).with_seed(31337);
        options.history_dir = Some(dir.clone());
        let failure = conformance::check_scenarios(&mutant(Mutation::Reorder), &options)
            .expect_err("the reorder mutant must be caught");
        let history = std::fs::read_to_string(failure.history_file.as_ref().unwrap()).unwrap();
        (failure, history)
    };
    let (a, history_a) = run();
    let (b, history_b) = run();
    assert_eq!(a.scenario, b.scenario);
    assert_eq!(a.violations, b.violations);
    assert_eq!(history_a, history_b);
    assert!(a.to_string().contains("CLUSTER_SEED=31337"), "{a}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Not run on its own: the child of the test below. Fails, printing its seed.
#[test]
#[ignore = "run by cluster_seed_from_the_environment_replays_a_failure"]
fn failing_child() {
    // The random part only: the directed cases would catch the mutant whatever the seed.
    let options = SuiteOptions::new(64);
    if let Err(failure) = conformance::check_scenarios(&mutant(Mutation::Duplicate), &options) {
        panic!("{failure}");
    }
}

/// The failure report of a run started with `CLUSTER_SEED=<seed>`, as a user would see it.
fn failure_report(seed: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "replay::failing_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("CLUSTER_SEED", seed)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the child must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let start = stderr
        .find("conformance failure")
        .unwrap_or_else(|| panic!("no failure report in:\n{stderr}"));
    let end = stderr[start..]
        .find("--test conformance`")
        .map_or(stderr.len(), |e| start + e);
    stderr[start..end].to_string()
}

/// `CLUSTER_SEED=<seed> cargo test …` replays a failing run exactly, in a new process.
#[test]
fn cluster_seed_from_the_environment_replays_a_failure() {
    let first = failure_report("4242");
    let again = failure_report("4242");
    assert_eq!(first, again);
    assert!(first.contains("smallest failing scenario"), "{first}");
    assert!(first.contains("CLUSTER_SEED=4242"), "{first}");
    let other = failure_report("4243");
    assert!(other.contains("CLUSTER_SEED=4243"), "{other}");
}

/// Where the child below writes its history.
const HISTORY_OUT: &str = "CLUSTER_TESTKIT_HISTORY_OUT";
/// The seed of the cross-process replay.
const SEED: u64 = 20_240_611;

/// The line where two histories part, for a readable failure (histories are long).
pub(crate) fn first_difference(a: &str, b: &str) -> String {
    match a.lines().zip(b.lines()).position(|(x, y)| x != y) {
        Some(i) => format!(
            "line {}:\n  {}\n  {}",
            i + 1,
            a.lines().nth(i).unwrap_or_default(),
            b.lines().nth(i).unwrap_or_default()
        ),
        None => format!("{} lines against {}", a.lines().count(), b.lines().count()),
    }
}

/// One seeded run of gossiping node logic under random faults, then a scenario in which
/// every node broadcasts while others crash and restart, as JSON lines: every send, routed
/// copy, arrival, delivery, drop and fault, and every incarnation's counters.
fn whole_history(seed: u64) -> String {
    let rt = cluster_testkit::faults::runtime().unwrap();
    let (result, mut history) = rt.block_on(crate::faults::gossip_run(seed, None));
    result.unwrap();
    let send = |from, payload: &[u8]| Op::Send {
        from,
        to: BROADCAST,
        payload: payload.to_vec(),
    };
    let enqueue = |from, to, payload: &[u8]| Op::Enqueue {
        from,
        to,
        payload: payload.to_vec(),
    };
    let scenario = Scenario {
        nodes: 4,
        seed,
        ops: vec![
            send(1, b"one"),
            send(2, b"two"),
            enqueue(3, BROADCAST, b"three"),
            enqueue(4, 1, b"four"),
            Op::Settle,
            enqueue(1, BROADCAST, b"in flight"),
            Op::Crash(3),
            Op::Cut(2, 4),
            send(4, b"four again"),
            Op::Restart(3),
            Op::Settle,
        ],
    };
    let rt = cluster_testkit::faults::runtime().unwrap();
    let records = rt
        .block_on(async {
            let config = cluster_core::Config::local(4, 7000).unwrap();
            run_scenario(Box::new(MemCluster::new(&config, seed)), &scenario).await
        })
        .unwrap();
    history.push_str(&cluster_testkit::to_json_lines(&records));
    history
}

/// Not run on its own: the child of the test below. Writes the history of [`SEED`].
#[test]
#[ignore = "run by one_seed_gives_the_same_history_byte_for_byte_in_another_process"]
fn history_child() {
    let path = std::env::var(HISTORY_OUT).expect("run by the test below");
    std::fs::write(path, whole_history(SEED)).unwrap();
}

/// The same seed, the same history, byte for byte: twice here, and once in a new process
/// (other hash seeds, other addresses, another tokio runtime seed).
#[test]
fn one_seed_gives_the_same_history_byte_for_byte_in_another_process() {
    let here = whole_history(SEED);
    let again = whole_history(SEED);
    assert!(here == again, "{}", first_difference(&here, &again));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("child.jsonl");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["replay::history_child", "--exact", "--ignored"])
        .env(HISTORY_OUT, &path)
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "the child failed:\n{}",
        String::from_utf8_lossy(&child.stdout)
    );
    let there = std::fs::read_to_string(&path).unwrap();
    assert!(here == there, "{}", first_difference(&here, &there));
    // What was compared: a history with it all in it.
    let records = cluster_testkit::from_json_lines(&here).unwrap();
    for event in ["arrived", "routed", "crash", "start", "stats"] {
        assert!(
            here.contains(&format!(r#""event":"{event}""#)),
            "no {event} in the history"
        );
    }
    for pid in 1..=4 {
        assert!(
            records.iter().any(|r| matches!(
                r.event,
                cluster_testkit::Event::Arrived { at, .. } if at == pid
            )),
            "nothing arrived at {pid}"
        );
    }
    assert!(records.len() > 500, "{} records", records.len());
    let other = whole_history(SEED + 1);
    assert!(here != other, "another seed, another history");
}

/// Not run on its own: prints the case count a suite would run, as the test below sets it.
#[test]
#[ignore = "run by cluster_cases_from_the_environment_sets_the_case_count"]
fn cases_child() {
    println!("cases={}", SuiteOptions::new(256).cases);
}

/// `CLUSTER_CASES=<n>` reaches every suite built with `SuiteOptions::new` (the in-memory
/// and ZeroMQ conformance runs among them), whatever its default.
#[test]
fn cluster_cases_from_the_environment_sets_the_case_count() {
    let cases = |value: Option<&str>| {
        let mut child = Command::new(std::env::current_exe().unwrap());
        child.args(["replay::cases_child", "--exact", "--ignored", "--nocapture"]);
        child.env_remove("CLUSTER_CASES");
        if let Some(v) = value {
            child.env("CLUSTER_CASES", v);
        }
        let out = child.output().unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("cases=").map(String::from))
            .unwrap_or_else(|| panic!("no count in:\n{stdout}"))
    };
    assert_eq!(cases(None), "256");
    assert_eq!(cases(Some("10000")), "10000");
    assert_eq!(cases(Some("7")), "7");
}
