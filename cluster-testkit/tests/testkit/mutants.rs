//! Every clause of the contract (C1–C9), and the peer events' match with the faults (EV),
//! has mutants (or, where the router now absorbs the
//! fault, a test that it does) — transports or routers broken on
//! purpose — that random scenarios find when judged by that clause's oracle function alone,
//! and shrink to at most 8 ops; the healthy transport passes the same shrunk scenario. The
//! table in `cluster_testkit::mutants` lists them. A checker that cannot fail is a defect,
//! and so is one that fails on a correct transport.

use cluster_core::ClusterKey;
use cluster_core::DropReason;
use cluster_testkit::Event;
use cluster_testkit::conformance::{self, Setup, SuiteOptions, check_scenario};
use cluster_testkit::mutants::MutantBackend;
use cluster_testkit::mutants::Mutation;
use cluster_testkit::oracle::{self, Analysis, Invariant, Violation};
use cluster_testkit::{ClusterUnderTest, SimError};
use cluster_testkit::{Op, Scenario};

use crate::{mem, mutant};

/// Scenarios a search may run: the searches below find their mutant well within it (with
/// the fixed seed), and stop at the first failure.
const CASES: u32 = 256;

/// Random scenarios (fixed seed), judged by `invariant` only, must find `mutation` and
/// shrink it to at most 8 ops; `check` (that clause's function) must flag the shrunk
/// scenario on the mutant, and the whole oracle nothing on the healthy transport. Returns
/// the shrunk scenario and what `check` said.
fn found_by_random_search(
    mutation: Mutation,
    invariant: Invariant,
    check: fn(&Analysis) -> Vec<Violation>,
) -> (Scenario, Vec<Violation>) {
    let mut options = SuiteOptions::new(CASES).with_seed(2024);
    options.max_ops = 24;
    options.invariant = Some(invariant);
    let failure = conformance::check_scenarios(&mutant(mutation), &options).expect_err(&format!(
        "random scenarios judged by {invariant} missed the {mutation:?} mutant"
    ));
    let sc = failure.scenario.clone().expect("a shrunk scenario");
    assert!(
        sc.ops.len() <= 8,
        "{mutation:?}: shrinking left {} ops:\n{failure}",
        sc.ops.len()
    );
    assert!(
        !failure.violations.is_empty()
            && failure.violations.iter().all(|v| v.invariant == invariant),
        "{failure}"
    );
    let (_, history) = check_scenario(&mutant(mutation), &sc).unwrap();
    let found = check(&Analysis::new(&history));
    assert!(
        !found.is_empty(),
        "{invariant}'s function misses the {mutation:?} mutant on the shrunk\n{sc}"
    );
    assert!(found.iter().all(|v| v.invariant == invariant), "{found:?}");
    let (healthy, _) = check_scenario(&mem, &sc).unwrap();
    assert!(
        healthy.is_ok(),
        "the healthy transport fails the shrunk scenario:\n{sc}\n{healthy}"
    );
    eprintln!(
        "{mutation:?} found by {invariant}, shrunk to {} ops: {}",
        sc.ops.len(),
        sc.to_rust()
    );
    (sc, found)
}

fn says(found: &[Violation], words: &str) -> bool {
    found.iter().any(|v| v.message.contains(words))
}

/// Random scenarios judged by `held` alone find nothing on `mutation`: the router absorbs
/// the fault that used to break that clause. The clause that does find the mutant (its
/// [`Mutation::breaks`]) must see drops counted under `reason` in the shrunk scenario.
fn absorbed_by_the_router(
    mutation: Mutation,
    held: Invariant,
    check: fn(&Analysis) -> Vec<Violation>,
    reason: DropReason,
) -> Vec<Violation> {
    let mut options = SuiteOptions::new(CASES).with_seed(2024);
    options.max_ops = 24;
    options.invariant = Some(held);
    if let Err(failure) = conformance::check_scenarios(&mutant(mutation), &options) {
        panic!("the router no longer absorbs the {mutation:?} mutant for {held}:\n{failure}");
    }
    let (sc, found) = found_by_random_search(mutation, mutation.breaks(), check);
    let (_, history) = check_scenario(&mutant(mutation), &sc).unwrap();
    let counted: u64 = history
        .iter()
        .filter_map(|r| match &r.event {
            Event::Stats {
                dropped_incoming, ..
            } => dropped_incoming.get(&reason).copied(),
            _ => None,
        })
        .sum();
    assert!(
        counted > 0,
        "{mutation:?}: nothing counted as {reason} in\n{sc}"
    );
    found
}

#[test]
fn router_absorbs_misroute() {
    absorbed_by_the_router(
        Mutation::Misroute,
        Invariant::C1Routing,
        oracle::check_c5_delivery,
        DropReason::Malformed,
    );
}

#[test]
fn c1_finds_broadcast_to_sender() {
    let (_, found) = found_by_random_search(
        Mutation::BroadcastToSender,
        Invariant::C1Routing,
        oracle::check_c1_routing,
    );
    assert!(
        says(&found, "addressed to BROADCAST was delivered to"),
        "{found:?}"
    );
}

#[test]
fn c1_finds_no_self_delivery() {
    let (_, found) = found_by_random_search(
        Mutation::NoSelfDelivery,
        Invariant::C1Routing,
        oracle::check_c1_routing,
    );
    assert!(says(&found, "to itself was not delivered"), "{found:?}");
}

#[test]
fn c1_finds_uncounted_unknown_peer() {
    let (_, found) = found_by_random_search(
        Mutation::UncountedUnknownPeer,
        Invariant::C1Routing,
        oracle::check_c1_routing,
    );
    assert!(says(&found, "unknown_peer counts 0"), "{found:?}");
}

/// The duplicate is dropped as `replayed`, never delivered twice (C2 holds); C7 sees a
/// drop for a frame nobody sent.
#[test]
fn router_absorbs_duplicate() {
    absorbed_by_the_router(
        Mutation::Duplicate,
        Invariant::C2Integrity,
        oracle::check_c7_accounting,
        DropReason::Replayed,
    );
}

#[test]
fn c2_finds_corrupt() {
    let (_, found) = found_by_random_search(
        Mutation::Corrupt,
        Invariant::C2Integrity,
        oracle::check_c2_integrity,
    );
    assert!(says(&found, "corrupted"), "{found:?}");
}

#[test]
fn router_absorbs_phantom() {
    absorbed_by_the_router(
        Mutation::Phantom,
        Invariant::C2Integrity,
        oracle::check_c7_accounting,
        DropReason::Replayed,
    );
}

/// The overtaken frame is dropped as `replayed`: order holds (C3), the message is lost (C5).
#[test]
fn router_absorbs_reorder() {
    absorbed_by_the_router(
        Mutation::Reorder,
        Invariant::C3Fifo,
        oracle::check_c5_delivery,
        DropReason::Replayed,
    );
}

#[test]
fn c4_finds_deliver_after_restart() {
    found_by_random_search(
        Mutation::DeliverAfterRestart,
        Invariant::C4DropOnUnreachable,
        oracle::check_c4_drop_on_unreachable,
    );
}

#[test]
fn c4_finds_cross_partition() {
    found_by_random_search(
        Mutation::CrossPartition,
        Invariant::C4DropOnUnreachable,
        oracle::check_c4_drop_on_unreachable,
    );
}

/// A frame a crash or a cut hit in flight is delivered anyway.
#[test]
fn c4_finds_keep_in_flight() {
    let (_, found) = found_by_random_search(
        Mutation::KeepInFlight,
        Invariant::C4DropOnUnreachable,
        oracle::check_c4_drop_on_unreachable,
    );
    assert!(
        says(&found, "a fault on its link came before it could arrive"),
        "{found:?}"
    );
}

/// A frame of an older incarnation is delivered after one of the newer: the stale rule
/// itself speaks, not only the in-flight one.
#[test]
fn c4_finds_stale_incarnation() {
    let (sc, found) = found_by_random_search(
        Mutation::StaleIncarnation,
        Invariant::C4DropOnUnreachable,
        oracle::check_c4_drop_on_unreachable,
    );
    assert!(says(&found, "after one from incarnation"), "{found:?}");
    assert!(sc.ops.iter().any(|op| matches!(op, Op::Restart(_))), "{sc}");
}

#[test]
fn c5_finds_lose_healthy() {
    found_by_random_search(
        Mutation::LoseHealthy,
        Invariant::C5Delivery,
        oracle::check_c5_delivery,
    );
}

#[test]
fn c6_finds_stall_behind_unreachable() {
    found_by_random_search(
        Mutation::StallBehindUnreachable,
        Invariant::C6Isolation,
        oracle::check_c6_isolation,
    );
}

/// Overflow queued without bound instead of a counted backpressure drop.
#[test]
fn c6_finds_unbounded() {
    let (_, found) = found_by_random_search(
        Mutation::Unbounded,
        Invariant::C6Isolation,
        oracle::check_c6_isolation,
    );
    assert!(says(&found, "already queued"), "{found:?}");
}

#[test]
fn c7_finds_silent_loss() {
    found_by_random_search(
        Mutation::LoseHealthy,
        Invariant::C7Accounting,
        oracle::check_c7_accounting,
    );
}

/// Drops counted under the wrong reason (not the silent loss C5 catches too).
#[test]
fn c7_finds_wrong_reason() {
    let (_, found) = found_by_random_search(
        Mutation::WrongReason,
        Invariant::C7Accounting,
        oracle::check_c7_accounting,
    );
    assert!(says(&found, "was refused as"), "{found:?}");
}

#[test]
fn c8_finds_forget_incarnation() {
    found_by_random_search(
        Mutation::ForgetIncarnation,
        Invariant::C8Restart,
        oracle::check_c8_restart,
    );
}

/// Hostile bytes that bring the node down: neither dropped nor counted.
#[test]
fn c9_finds_hostile_crash() {
    let (sc, found) = found_by_random_search(
        Mutation::HostileCrash,
        Invariant::C9HostileInput,
        oracle::check_c9_hostile_input,
    );
    assert!(says(&found, "were not dropped and counted"), "{found:?}");
    assert!(
        sc.ops.iter().any(|op| matches!(op, Op::Hostile { .. })),
        "{sc}"
    );
}

/// A router that drops hostile bytes without counting them.
#[test]
fn c9_finds_hostile_uncounted() {
    let (_, found) = found_by_random_search(
        Mutation::HostileUncounted,
        Invariant::C9HostileInput,
        oracle::check_c9_hostile_input,
    );
    assert!(says(&found, "nothing was counted for them"), "{found:?}");
}

/// A transport that drops a healthy peer from its connection set for a moment: the node
/// tells `Down` though no fault touched the link.
#[test]
fn events_finds_spurious_down() {
    let (_, found) = found_by_random_search(
        Mutation::SpuriousDown,
        Invariant::Events,
        oracle::check_events,
    );
    assert!(says(&found, "no fault touched its link"), "{found:?}");
}

/// A transport that hands up a restarted peer's frames as from its first incarnation: the
/// node hears the restarted peer without telling `Restarted`.
#[test]
fn events_finds_hidden_restart() {
    let (sc, found) = found_by_random_search(
        Mutation::HideRestart,
        Invariant::Events,
        oracle::check_events,
    );
    assert!(says(&found, "without telling Restarted"), "{found:?}");
    assert!(sc.ops.iter().any(|op| matches!(op, Op::Restart(_))), "{sc}");
}

/// C10 at keyed nodes: a transport that forges frames (`Phantom` rewrites a message id,
/// `Corrupt` flips a byte) is caught by the tag — the forgeries are dropped as
/// `unauthenticated` and nothing forged is delivered — and one that replays them
/// (`Duplicate`) by the replay guard. Random scenarios judged by C2 find nothing; a fixed
/// one shows the drops counted under the reason.
#[test]
fn at_keyed_nodes_forging_and_replaying_transports_are_refused() {
    for (mutation, reason) in [
        (Mutation::Phantom, DropReason::Unauthenticated),
        (Mutation::Corrupt, DropReason::Unauthenticated),
        (Mutation::Duplicate, DropReason::Replayed),
    ] {
        let keyed = move |setup: &Setup| -> Result<Box<dyn ClusterUnderTest>, SimError> {
            let config = crate::config(setup)?
                .with_cluster_key(Some(ClusterKey::from_bytes([9; cluster_core::KEY_LEN])));
            Ok(Box::new(MutantBackend::new(&config, setup.seed, mutation)))
        };
        let mut options = SuiteOptions::new(64).with_seed(2024);
        options.max_ops = 24;
        options.invariant = Some(Invariant::C2Integrity);
        if let Err(failure) = conformance::check_scenarios(&keyed, &options) {
            panic!("{mutation:?} at keyed nodes broke C2:\n{failure}");
        }
        let send = |from, to, byte: u8| Op::Send {
            from,
            to,
            payload: vec![byte],
        };
        let sc = Scenario {
            nodes: 2,
            seed: 1,
            // Settled after each pair, so that the receive queues never fill.
            ops: (1..=6)
                .flat_map(|i| [send(1, 2, i), send(2, 1, i), Op::Settle])
                .collect(),
        };
        let (verdict, history) = check_scenario(&keyed, &sc).unwrap();
        assert!(
            !verdict.violated().contains(&Invariant::C2Integrity),
            "{mutation:?}: {verdict}"
        );
        let counted: u64 = history
            .iter()
            .filter_map(|r| match &r.event {
                Event::Stats {
                    dropped_incoming, ..
                } => dropped_incoming.get(&reason).copied(),
                _ => None,
            })
            .sum();
        assert!(
            counted > 0,
            "{mutation:?}: nothing counted as {reason}:\n{verdict}"
        );
    }
}

/// Every mutation has a row above, under the clause it breaks first.
#[test]
fn every_mutation_breaks_a_clause_of_the_table() {
    let table = include_str!("../../src/mutants.rs");
    for mutation in Mutation::ALL {
        let row = format!("| `{mutation:?}` |");
        assert!(
            table.contains(&row),
            "no row for {mutation:?} in the mutants table"
        );
        let clause = mutation.breaks().code();
        assert!(
            table
                .lines()
                .any(|l| l.contains(&row) && l.contains(&format!("//! | {clause} "))),
            "{mutation:?} breaks {clause}, but its row says otherwise"
        );
    }
}

/// The healthy transport passes the same random scenarios the mutants fail (hostile bytes
/// and overflowing queues included).
#[test]
fn the_healthy_transport_passes_the_same_scenarios() {
    let options = SuiteOptions::new(CASES).with_seed(2024);
    let report = conformance::check_scenarios(&mem, &options).unwrap();
    let (must_deliver, must_drop, _) = report.judged;
    assert!(must_deliver > 0 && must_drop > 0, "{:?}", report.judged);
}
