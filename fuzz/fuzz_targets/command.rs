//! `command`: arbitrary bytes as raft log entries, decoded and applied to the coordinator's state
//! machine.
//!
//! Input: up to 16 entries separated by `\n`. The machine starts from a small seeded fleet (two
//! groups, five hosts, one slot held), so that decoded commands meet real state. For each entry
//! that decodes, beyond "no panic":
//! - the proposal re-encodes to itself;
//! - a refused command without a client write leaves the state as it was, bar the applied index
//!   (the machine's own rule: check everything first, change things last);
//! - the state's snapshot restores (which checks the machine's invariants) to an equal state.
//!
//! Entries that do not decode are skipped here, to carry on with the rest of the input (the raft
//! driver stops the node on one instead).

#![no_main]

use hotdeploy_common::config::MaxUnavailable;
use hotdeploy_coordinator::state::{
    Command, GroupSeed, Health, Proposal, Report, Rotation, StateMachine,
};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const MAX_ENTRIES: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mut sm = seeded().clone();
    let mut index = sm.applied_index();
    for entry in data.split(|b| *b == b'\n').take(MAX_ENTRIES) {
        index += 1;
        let Ok(proposal) = Proposal::decode(entry) else {
            sm.skip(index);
            continue;
        };
        assert_eq!(
            Proposal::decode(&proposal.encode()).as_ref(),
            Ok(&proposal),
            "re-encoding changed the proposal"
        );
        let internal = proposal.write.is_none();
        let before = sm.clone();
        let response = sm.apply(index, proposal);
        if let Err(e) = &response {
            let _ = (e.to_string(), e.code(), e.is_retryable());
            if internal {
                let mut unchanged = before;
                unchanged.skip(index);
                assert_eq!(unchanged, sm, "refused with {e:?} but changed the state");
            }
        }
        let snapshot = sm.snapshot().expect("the state serializes");
        let restored = StateMachine::restore(&snapshot).expect("the snapshot restores");
        assert_eq!(restored, sm, "the snapshot restored differently");
    }
});

/// The fleet every input starts from: groups `web` (1 unavailable) and `db` (50%), hosts
/// web-1..3 and db-1..2 healthy and in rotation, web-1 holding a deploy slot.
fn seeded() -> &'static StateMachine {
    static SEEDED: OnceLock<StateMachine> = OnceLock::new();
    SEEDED.get_or_init(|| {
        let report = || Report {
            health: Health::Healthy,
            rotation: Rotation::InRotation,
            release: "v1".into(),
            phase: "idle".into(),
        };
        let register = |host: &str, groups: &[&str]| Command::Register {
            host: host.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            address: format!("{host}:7401"),
            report: report(),
        };
        let seed = |name: &str, budget: &str| GroupSeed {
            name: name.into(),
            max_unavailable: MaxUnavailable::parse(budget).expect("budget"),
            allow_zero_available: false,
        };
        let log = [
            Command::SeedGroups {
                groups: vec![seed("web", "1"), seed("db", "50%")],
            },
            register("web-1", &["web"]),
            register("web-2", &["web"]),
            register("web-3", &["web", "db"]),
            register("db-1", &["db"]),
            register("db-2", &["db"]),
            Command::Acquire {
                host: "web-1".into(),
                purpose: "deploy".into(),
                reason: "v2".into(),
                rollout: "r1".into(),
            },
        ];
        let mut sm = StateMachine::new();
        for (i, command) in log.into_iter().enumerate() {
            let p = Proposal::new(None, 1_700_000_000_000, "leader", command);
            sm.apply(i as u64 + 1, p).expect("seed entry applies");
        }
        sm
    })
}
