//! Every invariant of the oracle is shown to fail on a transport broken on purpose, and to
//! pass on the same scenario over the healthy transport: a checker that cannot fail is a
//! defect, and so is one that fails on a correct transport.

use cluster_core::BROADCAST;
use cluster_testkit::conformance::{self, SuiteOptions, check_scenario};
use cluster_testkit::mutants::Mutation;
use cluster_testkit::oracle::{self, Analysis, Invariant, Violation};
use cluster_testkit::{Op, Scenario};

use crate::{mem, mutant};

fn send(from: i32, to: i32, payload: &[u8]) -> Op {
    Op::Send {
        from,
        to,
        payload: payload.to_vec(),
    }
}

fn scenario(nodes: usize, ops: Vec<Op>) -> Scenario {
    Scenario {
        nodes,
        seed: 9,
        ops,
    }
}

/// Runs `sc` on the mutant and on the healthy backend. `check` (one invariant's function)
/// must report a violation on the mutant, and the whole oracle nothing on the healthy one.
fn assert_caught(
    mutation: Mutation,
    sc: &Scenario,
    invariant: Invariant,
    check: fn(&Analysis) -> Vec<Violation>,
) {
    let (verdict, history) = check_scenario(&mutant(mutation), sc).unwrap();
    let found = check(&Analysis::new(&history));
    assert!(
        !found.is_empty(),
        "{invariant} did not catch the {mutation:?} mutant on\n{sc}\nverdict: {verdict}"
    );
    assert!(found.iter().all(|v| v.invariant == invariant));
    assert!(verdict.violated().contains(&invariant));
    let (healthy, _) = check_scenario(&mem, sc).unwrap();
    assert!(
        healthy.is_ok(),
        "the healthy transport fails the same scenario:\n{sc}\n{healthy}"
    );
}

#[test]
fn c1_catches_a_transport_that_misroutes() {
    let sc = scenario(3, vec![send(1, 2, b"to two"), Op::Settle]);
    assert_caught(
        Mutation::Misroute,
        &sc,
        Invariant::C1Routing,
        oracle::check_c1_routing,
    );
}

#[test]
fn c2_catches_a_transport_that_duplicates() {
    let sc = scenario(
        2,
        vec![
            send(1, 2, b"a"),
            send(1, 2, b"b"),
            send(1, 2, b"c"),
            Op::Settle,
        ],
    );
    assert_caught(
        Mutation::Duplicate,
        &sc,
        Invariant::C2Integrity,
        oracle::check_c2_integrity,
    );
}

#[test]
fn c2_catches_a_transport_that_corrupts() {
    let sc = scenario(2, vec![send(1, 2, b"abc"), send(1, 2, b"abc"), Op::Settle]);
    assert_caught(
        Mutation::Corrupt,
        &sc,
        Invariant::C2Integrity,
        oracle::check_c2_integrity,
    );
}

#[test]
fn c3_catches_a_transport_that_reorders() {
    let sc = scenario(
        2,
        vec![send(1, 2, b"first"), send(1, 2, b"second"), Op::Settle],
    );
    assert_caught(
        Mutation::Reorder,
        &sc,
        Invariant::C3Fifo,
        oracle::check_c3_fifo,
    );
}

#[test]
fn c4_catches_delivery_after_a_restart() {
    let sc = scenario(
        2,
        vec![
            Op::Crash(2),
            send(1, 2, b"sent while 2 was down"),
            Op::Restart(2),
            Op::Settle,
        ],
    );
    assert_caught(
        Mutation::DeliverAfterRestart,
        &sc,
        Invariant::C4DropOnUnreachable,
        oracle::check_c4_drop_on_unreachable,
    );
}

#[test]
fn c4_catches_delivery_across_a_partition() {
    let sc = scenario(
        3,
        vec![
            Op::Partition(vec![1], vec![2, 3]),
            send(1, BROADCAST, b"across"),
            Op::Settle,
        ],
    );
    assert_caught(
        Mutation::CrossPartition,
        &sc,
        Invariant::C4DropOnUnreachable,
        oracle::check_c4_drop_on_unreachable,
    );
}

#[test]
fn c5_catches_loss_on_a_healthy_link() {
    let sc = scenario(
        2,
        vec![
            send(1, 2, b"a"),
            send(1, 2, b"b"),
            send(1, 2, b"c"),
            Op::Settle,
        ],
    );
    assert_caught(
        Mutation::LoseHealthy,
        &sc,
        Invariant::C5Delivery,
        oracle::check_c5_delivery,
    );
}

#[test]
fn c6_catches_sends_held_behind_an_unreachable_peer() {
    let sc = scenario(
        3,
        vec![
            Op::Crash(3),
            send(1, 3, b"refused"),
            send(1, 2, b"must not wait for 3"),
            Op::Settle,
            Op::Restart(3),
            Op::Settle,
        ],
    );
    assert_caught(
        Mutation::StallBehindUnreachable,
        &sc,
        Invariant::C6Isolation,
        oracle::check_c6_isolation,
    );
}

#[test]
fn c7_catches_silent_loss() {
    let sc = scenario(
        2,
        vec![
            send(1, 2, b"a"),
            send(1, 2, b"b"),
            send(1, 2, b"c"),
            Op::Settle,
        ],
    );
    assert_caught(
        Mutation::LoseHealthy,
        &sc,
        Invariant::C7Accounting,
        oracle::check_c7_accounting,
    );
}

#[test]
fn c8_catches_a_restart_that_forgets_its_incarnation() {
    let sc = scenario(2, vec![Op::Restart(2), send(2, 1, b"back"), Op::Settle]);
    assert_caught(
        Mutation::ForgetIncarnation,
        &sc,
        Invariant::C8Restart,
        oracle::check_c8_restart,
    );
}

/// The random part of the suite finds every mutant on its own, and shrinks the failure to
/// a handful of ops.
#[test]
fn random_scenarios_find_and_shrink_every_mutant() {
    for mutation in Mutation::ALL {
        let mut options = SuiteOptions::new(256).with_seed(2024);
        options.max_ops = 24;
        let failure = conformance::check_scenarios(&mutant(mutation), &options)
            .expect_err(&format!("random scenarios missed the {mutation:?} mutant"));
        let sc = failure.scenario.as_ref().expect("a shrunk scenario");
        assert!(
            sc.ops.len() <= 8,
            "{mutation:?}: shrinking left {} ops:\n{failure}",
            sc.ops.len()
        );
        assert!(!failure.violations.is_empty(), "{failure}");
    }
}

/// The healthy transport passes the same random scenarios the mutants fail.
#[test]
fn the_healthy_transport_passes_the_same_scenarios() {
    let options = SuiteOptions::new(256).with_seed(2024);
    conformance::check_scenarios(&mem, &options).unwrap();
}
