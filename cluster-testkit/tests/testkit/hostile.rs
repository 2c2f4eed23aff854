//! Hostile bytes in scenarios (contract C9): the simulated network puts them on a node's
//! port, the history records it, and the node drops each under the reason of its kind.

use cluster_core::DropReason;
use cluster_testkit::conformance::check_scenario;
use cluster_testkit::oracle::{self, Analysis};
use cluster_testkit::{Event, HostileBytes, Op, Scenario};

use crate::mem;

/// Every kind of hostile bytes, then a real message: each is injected and recorded, dropped
/// and counted under its reason, and the node keeps serving. (A full queue refuses them
/// like any frame: see `Event::Injected::refused`.)
#[test]
fn every_kind_of_hostile_bytes_is_dropped_under_its_reason() {
    // A settle after each: the receive queue is small (`SCENARIO_PEER_QUEUE`).
    let mut ops: Vec<Op> = HostileBytes::ALL
        .into_iter()
        .flat_map(|bytes| [Op::Hostile { to: 1, bytes }, Op::Settle])
        .collect();
    ops.push(Op::Send {
        from: 2,
        to: 1,
        payload: b"real".to_vec(),
    });
    let sc = Scenario {
        nodes: 3,
        seed: 5,
        ops,
    };
    let (verdict, history) = check_scenario(&mem, &sc).unwrap();
    assert!(verdict.is_ok(), "{verdict}");
    let injected: Vec<(HostileBytes, Option<DropReason>)> = history
        .iter()
        .filter_map(|r| match &r.event {
            Event::Injected { bytes, refused, .. } => Some((*bytes, *refused)),
            _ => None,
        })
        .collect();
    assert_eq!(
        injected,
        HostileBytes::ALL.map(|bytes| (bytes, None)).to_vec(),
        "every op put its bytes on the port"
    );
    let dropped: Vec<DropReason> = history
        .iter()
        .filter_map(|r| match &r.event {
            Event::Dropped { at: 1, reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        dropped,
        HostileBytes::ALL.map(HostileBytes::reason).to_vec()
    );
    assert!(
        history
            .iter()
            .any(|r| matches!(&r.event, Event::Delivered { at: 1, from: 2, .. }))
    );
    assert!(oracle::check_c9_hostile_input(&Analysis::new(&history)).is_empty());
}

/// Hostile bytes queue like any arrival: a crash of the node before the next settle takes
/// them (counted by the network as `unreachable`), and the oracle does not expect a drop.
#[test]
fn hostile_bytes_are_lost_with_a_crash_before_they_arrive() {
    let sc = Scenario {
        nodes: 2,
        seed: 6,
        ops: vec![
            Op::Hostile {
                to: 2,
                bytes: HostileBytes::Garbage,
            },
            Op::Crash(2),
        ],
    };
    let (verdict, history) = check_scenario(&mem, &sc).unwrap();
    assert!(verdict.is_ok(), "{verdict}");
    assert!(
        !history
            .iter()
            .any(|r| matches!(&r.event, Event::Dropped { .. }))
    );
    let discarded = history.iter().find_map(|r| match &r.event {
        Event::NetDiscarded { discarded } => discarded.get(&DropReason::Unreachable).copied(),
        _ => None,
    });
    assert_eq!(discarded, Some(1));
}
