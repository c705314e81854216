//! Scenario tests of the state machine, one rule each, driven through `apply` as the raft
//! driver would: a [`Fleet`] numbers the entries and moves the proposer's clock.
//!
//! They read as small stories: make groups, register hosts, change what hosts report, ask for
//! slots, and check the answers and the group views. The property test (`proptest.rs`) covers
//! random sequences; these pin down each rule and each error's wording and code.

use super::*;
use hotdeploy_common::config::MaxUnavailable;
use tonic::Code;

const OPERATOR: &str = "operator/alice";
const DEPLOY: &str = "deploy";

struct Fleet {
    sm: StateMachine,
    index: u64,
    now: u64,
}

fn report(health: Health, rotation: Rotation) -> Report {
    Report {
        health,
        rotation,
        release: if health == Health::Unprovisioned {
            String::new()
        } else {
            "v1".to_string()
        },
        phase: "idle".to_string(),
    }
}

fn healthy() -> Report {
    report(Health::Healthy, Rotation::InRotation)
}

fn budget(text: &str) -> MaxUnavailable {
    MaxUnavailable::parse(text).unwrap()
}

fn write(client: &str, seq: u64) -> Option<WriteId> {
    Some(WriteId {
        client_id: client.to_string(),
        seq,
    })
}

fn slot_of(response: Response) -> Slot {
    match response {
        Ok(Answer::Slot(slot)) => slot,
        other => panic!("expected a slot, got {other:?}"),
    }
}

impl Fleet {
    fn new() -> Self {
        Self {
            sm: StateMachine::new(),
            index: 0,
            now: 1_700_000_000_000,
        }
    }

    /// Applies one entry; each entry is one second after the previous.
    fn apply(&mut self, actor: &str, write: Option<WriteId>, command: Command) -> Response {
        self.index += 1;
        self.now += 1000;
        self.sm
            .apply(self.index, Proposal::new(write, self.now, actor, command))
    }

    fn leader(&mut self, command: Command) -> Response {
        self.apply("leader", None, command)
    }

    fn operator(&mut self, command: Command) -> Response {
        self.apply(OPERATOR, None, command)
    }

    fn set_group(&mut self, name: &str, max: &str, allow_zero: Option<bool>) -> Response {
        self.operator(Command::SetGroupPolicy {
            group: name.to_string(),
            max_unavailable: Some(budget(max)),
            allow_zero_available: allow_zero,
        })
    }

    fn group(&mut self, name: &str, max: &str) {
        self.set_group(name, max, None).unwrap();
    }

    fn register(&mut self, host: &str, groups: &[&str], report: Report) -> Response {
        self.apply(
            &format!("agent/{host}"),
            None,
            Command::Register {
                host: host.to_string(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                address: format!("{host}:7001"),
                report,
            },
        )
    }

    fn join(&mut self, host: &str, groups: &[&str]) {
        self.register(host, groups, healthy()).unwrap();
    }

    fn acquire_for(&mut self, host: &str, purpose: &str) -> Response {
        self.apply(
            &format!("agent/{host}"),
            None,
            Command::Acquire {
                host: host.to_string(),
                purpose: purpose.to_string(),
                reason: "test".to_string(),
                rollout: "r1".to_string(),
                phase: None,
            },
        )
    }

    fn acquire(&mut self, host: &str) -> Response {
        self.acquire_for(host, DEPLOY)
    }

    fn grant(&mut self, host: &str) -> u64 {
        slot_of(self.acquire(host)).token
    }

    fn release(&mut self, host: &str, token: u64) -> Response {
        self.leader(Command::Release {
            host: host.to_string(),
            token,
        })
    }

    fn phase(&mut self, host: &str, token: u64, phase: &str) -> Response {
        self.leader(Command::ReportPhase {
            host: host.to_string(),
            token,
            phase: phase.to_string(),
        })
    }

    fn update(&mut self, host: &str, health: Health, rotation: Rotation) {
        self.leader(Command::UpdateReport {
            host: host.to_string(),
            report: report(health, rotation),
        })
        .unwrap();
    }

    fn unreachable(&mut self, host: &str) {
        self.leader(Command::MarkUnreachable {
            host: host.to_string(),
        })
        .unwrap();
    }

    fn reachable(&mut self, host: &str, report: Report) {
        self.leader(Command::MarkReachable {
            host: host.to_string(),
            report,
        })
        .unwrap();
    }

    fn remove(&mut self, host: &str, force: bool) -> Response {
        self.operator(Command::RemoveHost {
            host: host.to_string(),
            force,
        })
    }

    fn view(&self, group: &str) -> GroupView {
        self.sm.group_view(group).unwrap()
    }

    /// The state as it was, with the applied index moved to the current entry: what a refused
    /// command must leave behind.
    fn unchanged(&self, before: &StateMachine) -> StateMachine {
        let mut expected = before.clone();
        expected.skip(self.index);
        expected
    }

    /// A group `web` with `n` healthy hosts `web-1`..`web-n`.
    fn web(max: &str, n: usize) -> Self {
        let mut f = Self::new();
        f.group("web", max);
        for i in 1..=n {
            f.join(&format!("web-{i}"), &["web"]);
        }
        f
    }
}

// ---- budgets ----

#[test]
fn integer_budget_limits_concurrent_slots() {
    let mut f = Fleet::web("2", 5);
    f.grant("web-1");
    f.grant("web-2");
    let err = f.acquire("web-3").unwrap_err();
    assert_eq!(
        err,
        StateError::OverBudget {
            host: "web-3".into(),
            group: "web".into(),
            budget: 2,
            unavailable: vec!["web-1".into(), "web-2".into()],
        }
    );
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.is_retryable());
    assert!(err.to_string().contains("budget of 2"), "{err}");
    let v = f.view("web");
    assert_eq!((v.size, v.budget, v.unavailable), (5, 2, 2));
    assert_eq!(v.holders, vec!["web-1", "web-2"]);
}

#[test]
fn percentage_budget_rounds_down_and_is_at_least_one() {
    let mut f = Fleet::web("25%", 2);
    assert_eq!(f.view("web").budget, 1, "25% of 2 rounds to 0, raised to 1");
    for i in 3..=7 {
        f.join(&format!("web-{i}"), &["web"]);
    }
    assert_eq!(f.view("web").budget, 1, "25% of 7 is 1.75, rounded down");
    f.join("web-8", &["web"]);
    assert_eq!(f.view("web").budget, 2, "25% of 8");
    f.grant("web-1");
    f.grant("web-2");
    assert!(matches!(
        f.acquire("web-3"),
        Err(StateError::OverBudget { budget: 2, .. })
    ));
    assert_eq!(f.view("web").max_unavailable.to_string(), "25%");
}

#[test]
fn unprovisioned_hosts_are_not_counted_until_they_hold_a_slot() {
    let mut f = Fleet::web("50%", 2);
    f.register(
        "new-1",
        &["web"],
        report(Health::Unprovisioned, Rotation::OutOfRotation),
    )
    .unwrap();
    f.register(
        "new-2",
        &["web"],
        report(Health::Unprovisioned, Rotation::InRotation),
    )
    .unwrap();
    let v = f.view("web");
    assert_eq!((v.size, v.budget, v.unavailable), (2, 1, 0));

    // An unprovisioned host is charged for a slot like any other (it joins size and the
    // unavailable set), so with web-1 holding one there is no room for it.
    f.grant("web-1");
    assert!(matches!(
        f.acquire("new-1"),
        Err(StateError::OverBudget { budget: 1, .. })
    ));
    let t1 = f.sm.host("web-1").unwrap().slot.unwrap();
    f.release("web-1", t1).unwrap();
    // It removes no available host: the zero-available rule does not apply to it.
    f.grant("new-1");
    let v = f.view("web");
    assert_eq!((v.size, v.budget, v.unavailable), (3, 1, 1));
    assert_eq!(v.holders, vec!["new-1"]);
    assert!(matches!(
        f.acquire("web-2"),
        Err(StateError::OverBudget { .. })
    ));
}

#[test]
fn an_unprovisioned_holder_that_turns_healthy_keeps_the_group_within_budget() {
    let mut f = Fleet::web("1", 3);
    f.register(
        "new-1",
        &["web"],
        report(Health::Unprovisioned, Rotation::OutOfRotation),
    )
    .unwrap();
    let token = f.grant("new-1");
    // While it holds the slot, nobody else gets one.
    assert!(matches!(
        f.acquire("web-1"),
        Err(StateError::OverBudget { .. })
    ));
    // Its first deploy passes verify: it reports healthy and in rotation while holding.
    f.update("new-1", Health::Healthy, Rotation::InRotation);
    let v = f.view("web");
    assert_eq!((v.size, v.budget, v.unavailable), (4, 1, 1));
    assert!(v.unavailable <= v.budget);
    f.release("new-1", token).unwrap();
    f.grant("web-1");
}

#[test]
fn unreachable_unhealthy_and_not_in_rotation_hosts_use_budget() {
    let mut f = Fleet::web("1", 4);
    f.unreachable("web-1");
    assert!(matches!(
        f.acquire("web-2"),
        Err(StateError::OverBudget { .. })
    ));
    f.reachable("web-1", healthy());
    f.update("web-1", Health::Unhealthy, Rotation::InRotation);
    assert!(matches!(
        f.acquire("web-2"),
        Err(StateError::OverBudget { .. })
    ));
    f.update("web-1", Health::Healthy, Rotation::Draining);
    assert!(matches!(
        f.acquire("web-2"),
        Err(StateError::OverBudget { .. })
    ));
    f.update("web-1", Health::Healthy, Rotation::OutOfRotation);
    assert!(matches!(
        f.acquire("web-2"),
        Err(StateError::OverBudget { .. })
    ));
    f.update("web-1", Health::Healthy, Rotation::InRotation);
    f.grant("web-2");
}

#[test]
fn a_host_down_for_several_reasons_counts_once() {
    let mut f = Fleet::web("2", 4);
    f.update("web-1", Health::Unhealthy, Rotation::Draining);
    f.unreachable("web-1");
    assert_eq!(f.view("web").unavailable, 1);
    f.grant("web-2");
    assert_eq!(f.view("web").unavailable, 2);
}

#[test]
fn mark_reachable_carries_the_latest_report() {
    let mut f = Fleet::web("1", 3);
    f.unreachable("web-1");
    f.reachable("web-1", report(Health::Unhealthy, Rotation::OutOfRotation));
    let h = f.sm.host("web-1").unwrap();
    assert_eq!(h.reachability, Reachability::Reachable);
    assert_eq!(h.health, Health::Unhealthy);
    assert_eq!(f.view("web").unavailable, 1, "reconnecting hides nothing");
}

#[test]
fn grant_is_atomic_across_groups() {
    let mut f = Fleet::new();
    f.group("front", "1");
    f.group("eu", "1");
    f.join("web-1", &["front", "eu"]);
    f.join("web-2", &["front"]);
    f.join("web-3", &["eu"]);
    f.join("web-4", &["eu"]);
    f.grant("web-3");
    let before = f.sm.clone();
    let err = f.acquire("web-1").unwrap_err();
    assert!(
        matches!(&err, StateError::OverBudget { group, .. } if group == "eu"),
        "{err:?}"
    );
    assert_eq!(
        f.sm,
        f.unchanged(&before),
        "nothing granted in `front` either"
    );
    assert_eq!(f.view("front").unavailable, 0);
    assert_eq!(f.sm.host("web-1").unwrap().slot, None);
}

#[test]
fn a_slot_covers_every_group_of_its_host() {
    let mut f = Fleet::new();
    f.group("front", "1");
    f.group("eu", "1");
    f.join("web-1", &["front", "eu"]);
    for h in ["web-2", "web-3"] {
        f.join(h, &["front", "eu"]);
    }
    let slot = slot_of(f.acquire("web-1"));
    assert_eq!(slot.groups, vec!["eu", "front"]);
    assert!(
        matches!(f.acquire("web-2"), Err(StateError::OverBudget { group, .. }) if group == "eu")
    );
    assert_eq!(f.view("front").holders, vec!["web-1"]);
}

// ---- zero available ----

#[test]
fn a_grant_may_not_leave_a_group_with_none_available() {
    let mut f = Fleet::web("2", 2);
    f.grant("web-1");
    let err = f.acquire("web-2").unwrap_err();
    assert_eq!(
        err,
        StateError::ZeroAvailable {
            host: "web-2".into(),
            group: "web".into(),
            unavailable: vec!["web-1".into()],
        }
    );
    assert!(err.is_retryable());
    assert_eq!(err.code(), Code::ResourceExhausted);
    f.set_group("web", "2", Some(true)).unwrap();
    f.grant("web-2");
}

#[test]
fn a_group_of_one_host_cannot_be_deployed_without_allow_zero_available() {
    let mut f = Fleet::web("1", 1);
    let err = f.acquire("web-1").unwrap_err();
    assert_eq!(
        err,
        StateError::LoneHost {
            host: "web-1".into(),
            group: "web".into()
        }
    );
    assert!(!err.is_retryable(), "a rollout to it must fail at once");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.to_string().contains("--allow-zero-available true"),
        "{err}"
    );
    f.set_group("web", "1", Some(true)).unwrap();
    f.grant("web-1");
}

#[test]
fn an_already_down_host_is_repaired_without_extra_budget() {
    let mut f = Fleet::web("1", 3);
    f.update("web-1", Health::Unhealthy, Rotation::OutOfRotation);
    let slot = slot_of(f.acquire("web-1"));
    assert_eq!(f.view("web").unavailable, 1, "no extra budget spent");
    assert!(matches!(
        f.acquire("web-2"),
        Err(StateError::OverBudget { .. })
    ));
    f.release("web-1", slot.token).unwrap();

    // All down: repairing one of them is never refused for leaving zero available.
    let mut f = Fleet::web("2", 2);
    f.update("web-1", Health::Unhealthy, Rotation::InRotation);
    f.unreachable("web-2");
    f.grant("web-1");
}

// ---- one slot per host, tokens ----

#[test]
fn acquire_is_reentrant_for_the_same_purpose() {
    let mut f = Fleet::web("1", 3);
    let first = slot_of(f.acquire("web-1"));
    let again = slot_of(f.acquire("web-1"));
    assert_eq!(first, again, "same slot, same token");
    assert_eq!(f.sm.slots().len(), 1);
    assert_eq!(f.sm.check_grant("web-1", DEPLOY), Ok(()));
}

#[test]
fn a_different_purpose_is_refused_naming_the_holders() {
    let mut f = Fleet::web("1", 3);
    let token = f.grant("web-1");
    let err = f.acquire_for("web-1", MAINTENANCE).unwrap_err();
    assert_eq!(
        err,
        StateError::HeldForOtherPurpose {
            host: "web-1".into(),
            holder_purpose: DEPLOY.into(),
            token,
        }
    );
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.to_string().contains("\"deploy\""), "{err}");
    assert_eq!(f.sm.check_grant("web-1", MAINTENANCE), Err(err));
}

#[test]
fn tokens_are_grant_indexes_and_strictly_increase() {
    let mut f = Fleet::web("3", 6);
    let mut last = 0;
    for round in 0..3 {
        for h in ["web-1", "web-2", "web-3"] {
            let token = f.grant(h);
            assert_eq!(token, f.index, "the token is the granting entry's index");
            assert!(token > last, "round {round}: {token} after {last}");
            last = token;
        }
        for h in ["web-1", "web-2", "web-3"] {
            let token = f.sm.host(h).unwrap().slot.unwrap();
            f.release(h, token).unwrap();
        }
    }
}

// ---- release and fencing ----

#[test]
fn release_and_report_phase_need_the_current_token() {
    let mut f = Fleet::web("1", 3);
    let token = f.grant("web-1");
    let stale = StateError::StaleToken {
        host: "web-1".into(),
        given: token - 1,
        current: Some(token),
    };
    assert_eq!(f.release("web-1", token - 1), Err(stale.clone()));
    assert_eq!(f.phase("web-1", token - 1, "draining"), Err(stale.clone()));
    assert_eq!(stale.code(), Code::FailedPrecondition);

    f.phase("web-1", token, "draining").unwrap();
    assert_eq!(f.sm.slots()[0].phase, "draining");
    assert_eq!(f.sm.host("web-1").unwrap().phase, "draining");

    assert_eq!(f.release("web-1", token), Ok(Answer::Released { token }));
    let gone = StateError::StaleToken {
        host: "web-1".into(),
        given: token,
        current: None,
    };
    assert_eq!(f.release("web-1", token), Err(gone.clone()));
    assert_eq!(f.phase("web-1", token, "swapped"), Err(gone.clone()));
    assert!(gone.to_string().contains("holds no slot"), "{gone}");
}

#[test]
fn a_forced_release_fences_the_old_holder() {
    let mut f = Fleet::web("1", 3);
    let token = f.grant("web-1");
    assert_eq!(
        f.operator(Command::ForceRelease {
            host: "web-1".into()
        }),
        Ok(Answer::Released { token })
    );
    assert!(matches!(
        f.phase("web-1", token, "swapped"),
        Err(StateError::StaleToken { current: None, .. })
    ));
    assert!(matches!(
        f.release("web-1", token),
        Err(StateError::StaleToken { .. })
    ));
    let next = f.grant("web-1");
    assert!(next > token);
    assert!(matches!(
        f.phase("web-1", token, "swapped"),
        Err(StateError::StaleToken { current: Some(t), .. }) if t == next
    ));
    let event = f.sm.audit().last().unwrap();
    assert_eq!(
        (event.action.as_str(), event.actor.as_str()),
        ("force_release", OPERATOR)
    );
    assert!(
        event.detail.contains(&format!("slot {token}")),
        "{}",
        event.detail
    );

    f.release("web-1", next).unwrap();
    assert_eq!(
        f.operator(Command::ForceRelease {
            host: "web-1".into()
        }),
        Err(StateError::NoSlot {
            host: "web-1".into()
        })
    );
}

#[test]
fn removing_a_host_requires_it_unreachable_unless_forced() {
    let mut f = Fleet::web("1", 3);
    let token = f.grant("web-1");
    let before = f.sm.clone();
    let err = f.remove("web-1", false).unwrap_err();
    assert_eq!(
        err,
        StateError::HostReachable {
            host: "web-1".into()
        }
    );
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(f.sm, f.unchanged(&before));

    f.unreachable("web-1");
    f.remove("web-1", false).unwrap();
    assert!(f.sm.host("web-1").is_none());
    assert!(f.sm.slots().is_empty(), "removal frees the slot");
    assert!(matches!(
        f.release("web-1", token),
        Err(StateError::UnknownHost { .. })
    ));
    let v = f.view("web");
    assert_eq!((v.size, v.unavailable), (2, 0));

    f.remove("web-2", true).unwrap();
    assert_eq!(f.view("web").size, 1);
    let actions: Vec<&str> = f.sm.audit().map(|e| e.action.as_str()).collect();
    assert_eq!(actions.iter().filter(|a| **a == "remove_host").count(), 2);
    assert_eq!(f.remove("nope", true).unwrap_err().code(), Code::NotFound);
}

// ---- registration ----

#[test]
fn registration_needs_known_groups() {
    let mut f = Fleet::new();
    f.group("web", "1");
    f.group("db", "1");
    let before = f.sm.clone();
    let err = f.register("web-1", &[], healthy()).unwrap_err();
    assert_eq!(
        err,
        StateError::NoGroups {
            host: "web-1".into()
        }
    );
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = f
        .register("web-1", &["web", "api", "cache"], healthy())
        .unwrap_err();
    assert_eq!(
        err,
        StateError::RegisterUnknownGroups {
            host: "web-1".into(),
            unknown: vec!["api".into(), "cache".into()],
            known: vec!["db".into(), "web".into()],
        }
    );
    assert_eq!(err.code(), Code::FailedPrecondition);
    let msg = err.to_string();
    assert!(
        msg.contains("api, cache") && msg.contains("db, web"),
        "{msg}"
    );
    assert_eq!(f.sm, f.unchanged(&before));
}

#[test]
fn registration_refuses_bad_names() {
    let mut f = Fleet::new();
    f.group("web", "1");
    let before = f.sm.clone();
    let err = f.register("Web_1", &["web"], healthy()).unwrap_err();
    assert!(matches!(&err, StateError::InvalidName { kind, .. } if kind == "host"));
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut bad_release = healthy();
    bad_release.release = "../etc".into();
    let err = f.register("web-1", &["web"], bad_release).unwrap_err();
    assert!(matches!(&err, StateError::InvalidName { kind, .. } if kind == "release"));
    assert_eq!(f.sm, f.unchanged(&before));
}

#[test]
fn reregistering_updates_the_host_but_not_its_groups_while_it_holds_a_slot() {
    let mut f = Fleet::new();
    f.group("web", "1");
    f.group("eu", "1");
    f.join("web-1", &["web"]);
    f.join("web-2", &["web", "eu"]);
    f.join("web-3", &["web", "eu"]);
    let registered = f.sm.host("web-1").unwrap().registered_at_ms;
    let token = f.grant("web-1");

    let before = f.sm.clone();
    let err = f.register("web-1", &["web", "eu"], healthy()).unwrap_err();
    assert!(matches!(err, StateError::GroupsChangeWhileHolding { token: t, .. } if t == token));
    assert_eq!(f.sm, f.unchanged(&before));

    // Same groups (in any order, repeated): allowed, and it updates the rest.
    f.unreachable("web-1");
    f.register(
        "web-1",
        &["web", "web"],
        report(Health::Unhealthy, Rotation::Draining),
    )
    .unwrap();
    let h = f.sm.host("web-1").unwrap();
    assert_eq!(h.reachability, Reachability::Reachable);
    assert_eq!(h.health, Health::Unhealthy);
    assert_eq!(h.slot, Some(token), "re-registering keeps the slot");
    assert_eq!(h.registered_at_ms, registered);

    f.release("web-1", token).unwrap();
    f.register("web-1", &["eu", "web"], healthy()).unwrap();
    assert_eq!(f.sm.host("web-1").unwrap().groups, vec!["eu", "web"]);
    assert_eq!(f.view("eu").size, 3);
    f.register("web-1", &["eu"], healthy()).unwrap();
    assert_eq!(f.view("web").size, 2);
}

// ---- groups ----

#[test]
fn lowering_a_budget_revokes_nothing() {
    let mut f = Fleet::web("2", 4);
    let t1 = f.grant("web-1");
    let t2 = f.grant("web-2");
    f.set_group("web", "1", None).unwrap();
    let v = f.view("web");
    assert_eq!((v.budget, v.unavailable), (1, 2));
    assert_eq!(v.holders, vec!["web-1", "web-2"]);
    assert!(matches!(
        f.acquire("web-3"),
        Err(StateError::OverBudget { .. })
    ));
    // Even a holder's own repair needs the group back under budget.
    f.release("web-1", t1).unwrap();
    assert!(matches!(
        f.acquire("web-3"),
        Err(StateError::OverBudget { .. })
    ));
    f.release("web-2", t2).unwrap();
    f.grant("web-3");
}

#[test]
fn bad_group_policies_are_refused_and_change_nothing() {
    let mut f = Fleet::web("2", 3);
    let before = f.sm.clone();
    let err = f.set_group("Web", "1", None).unwrap_err();
    assert!(matches!(&err, StateError::InvalidName { kind, .. } if kind == "group"));
    for bad in [
        MaxUnavailable::Count(0),
        MaxUnavailable::Percent(0),
        MaxUnavailable::Percent(101),
    ] {
        let err = f
            .operator(Command::SetGroupPolicy {
                group: "web".into(),
                max_unavailable: Some(bad),
                allow_zero_available: Some(true),
            })
            .unwrap_err();
        assert!(
            matches!(err, StateError::InvalidBudget { .. }),
            "{bad}: {err:?}"
        );
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    let err = f
        .operator(Command::SetGroupPolicy {
            group: "db".into(),
            max_unavailable: None,
            allow_zero_available: Some(true),
        })
        .unwrap_err();
    assert_eq!(err, StateError::UnknownGroup { group: "db".into() });
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(f.sm, f.unchanged(&before));
    assert_eq!(f.sm.audit().count(), before.audit().count());
}

#[test]
fn set_group_policy_creates_then_changes_given_fields_and_is_audited() {
    let mut f = Fleet::new();
    let created = f.set_group("web", "25%", None).unwrap();
    let Answer::Group(v) = created else {
        panic!("{created:?}")
    };
    assert_eq!((v.name.as_str(), v.allow_zero_available), ("web", false));
    f.operator(Command::SetGroupPolicy {
        group: "web".into(),
        max_unavailable: None,
        allow_zero_available: Some(true),
    })
    .unwrap();
    let v = f.view("web");
    assert_eq!(v.max_unavailable, budget("25%"), "kept");
    assert!(v.allow_zero_available);
    let details: Vec<String> = f.sm.audit().map(|e| e.detail.clone()).collect();
    assert_eq!(
        details,
        vec![
            "group web created: max_unavailable 25%, allow_zero_available false",
            "group web: allow_zero_available false -> true",
        ]
    );
}

#[test]
fn seeding_applies_only_to_a_new_cluster() {
    let mut f = Fleet::new();
    let seed = |name: &str, max: &str| GroupSeed {
        name: name.into(),
        max_unavailable: budget(max),
        allow_zero_available: false,
    };
    f.leader(Command::SeedGroups {
        groups: vec![seed("web", "1"), seed("db", "10%")],
    })
    .unwrap();
    assert_eq!(
        f.sm.group_views()
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>(),
        vec!["db", "web"]
    );
    f.set_group("web", "3", None).unwrap();
    // A restart re-proposes the config's seed: it must not undo `groups set`.
    f.leader(Command::SeedGroups {
        groups: vec![seed("web", "1"), seed("api", "1")],
    })
    .unwrap();
    assert_eq!(f.view("web").max_unavailable, budget("3"));
    assert!(f.sm.group_view("api").is_none());
}

// ---- sessions ----

#[test]
fn a_repeated_write_gets_its_first_answer_without_reapplying() {
    let mut f = Fleet::web("1", 3);
    let acquire = Command::Acquire {
        host: "web-1".into(),
        purpose: DEPLOY.into(),
        reason: "r".into(),
        rollout: "".into(),
        phase: None,
    };
    let first = f.apply("agent/web-1", write("web-1", 1), acquire.clone());
    let token = slot_of(first.clone()).token;
    // While the slot is held, the retry gets the first answer back, and nothing is applied.
    let before = f.sm.clone();
    assert_eq!(
        f.apply("agent/web-1", write("web-1", 1), acquire.clone()),
        first
    );
    assert_eq!(f.sm.slots(), before.slots());
    f.apply(
        "agent/web-1",
        write("web-1", 2),
        Command::Release {
            host: "web-1".into(),
            token,
        },
    )
    .unwrap();
    // The retry of seq 1 after a leader change: no new grant. A grant is answered again only
    // while it is held (see `a_retried_grant_whose_slot_was_freed_is_told_it_is_stale`).
    assert_eq!(
        f.apply("agent/web-1", write("web-1", 1), acquire.clone()),
        Err(StateError::StaleToken {
            host: "web-1".into(),
            given: token,
            current: None,
        })
    );
    assert_eq!(f.sm.host("web-1").unwrap().slot, None);

    // Refusals are answers too: a stale release stays refused, even once the token would fit.
    let stale = Command::Release {
        host: "web-1".into(),
        token: token + 100,
    };
    let refused = f.apply("agent/web-1", write("web-1", 3), stale.clone());
    assert!(matches!(refused, Err(StateError::StaleToken { .. })));
    assert_eq!(f.apply("agent/web-1", write("web-1", 3), stale), refused);
    // A new seq is applied afresh.
    assert!(f
        .apply("agent/web-1", write("web-1", 4), acquire.clone())
        .is_ok());
    let t1 = f.sm.host("web-1").unwrap().slot.unwrap();
    f.release("web-1", t1).unwrap();
    // Another client's seq 1 is its own.
    assert!(f.apply("agent/web-2", write("web-2", 1), acquire).is_ok());
}

fn acquire_with_phase(host: &str, phase: Option<&str>) -> Command {
    Command::Acquire {
        host: host.into(),
        purpose: DEPLOY.into(),
        reason: "r".into(),
        rollout: "".into(),
        phase: phase.map(str::to_owned),
    }
}

/// A grant may carry its holder's first phase: the one entry grants the slot and commits the
/// phase, as a `ReportPhase` of the new token right after it would (command format 6). An
/// agent with no `before_drain` hook asks for `draining`: the grant is then the drain's fence.
#[test]
fn a_grant_with_a_phase_commits_the_phase_in_the_same_entry() {
    let mut f = Fleet::web("1", 3);
    let with = acquire_with_phase("web-1", Some("draining"));
    assert_eq!(with.version(), GRANT_PHASE_VERSION);
    assert_eq!(with.kind(), "Acquire (phase)");
    let without = acquire_with_phase("web-2", None);
    assert_eq!(without.version(), BASE_VERSION);
    assert_eq!(without.kind(), "Acquire");

    let slot = slot_of(f.apply("agent/web-1", write("web-1", 1), with));
    assert_eq!(
        slot.phase, "draining",
        "the answer says the phase went with it"
    );
    assert_eq!(f.sm.slot(slot.token).unwrap().phase, "draining");
    assert_eq!(f.sm.host("web-1").unwrap().phase, "draining");
    assert_eq!(f.index, slot.token, "one entry: the grant's");

    // Without a phase, nothing is committed for the holder.
    f.release("web-1", slot.token).unwrap();
    let plain = slot_of(f.apply("agent/web-2", write("web-2", 1), without));
    assert_eq!(plain.phase, "");
}

/// A retried grant is answered from the client's session only while the host still holds that
/// slot. Once the slot was force-released (or freed by `hosts remove`), the retry is told that
/// its token is stale: an agent that acts on a grant as on the drain's fence must never be
/// handed one it no longer has, and it takes nothing new.
#[test]
fn a_retried_grant_whose_slot_was_freed_is_told_it_is_stale() {
    let mut f = Fleet::web("1", 3);
    let acquire = acquire_with_phase("web-1", Some("draining"));
    let first = f.apply("agent/web-1", write("web-1", 1), acquire.clone());
    let token = slot_of(first.clone()).token;
    assert_eq!(
        f.apply("agent/web-1", write("web-1", 1), acquire.clone()),
        first,
        "held: the first answer"
    );
    f.operator(Command::ForceRelease {
        host: "web-1".into(),
    })
    .unwrap();
    let stale = |current| {
        Err(StateError::StaleToken {
            host: "web-1".into(),
            given: token,
            current,
        })
    };
    assert_eq!(
        f.apply("agent/web-1", write("web-1", 1), acquire.clone()),
        stale(None)
    );
    assert_eq!(
        f.sm.host("web-1").unwrap().slot,
        None,
        "the retry took nothing"
    );
    // Granted again under a new seq: the old retry is still stale, naming the new slot.
    let again = slot_of(f.apply("agent/web-1", write("web-1", 2), acquire.clone())).token;
    assert!(again > token);
    assert_eq!(
        f.apply("agent/web-1", write("web-1", 1), acquire),
        stale(Some(again))
    );
}

#[test]
fn a_retryable_refusal_is_not_remembered() {
    // An AcquireSlot waiting on the leader re-proposes the same (client_id, seq) once the budget
    // fits. Answering it the cached refusal would make it propose again at once, forever.
    let mut f = Fleet::web("1", 3);
    let acquire = Command::Acquire {
        host: "web-1".into(),
        purpose: DEPLOY.into(),
        reason: "r".into(),
        rollout: "".into(),
        phase: None,
    };
    let t2 = f.grant("web-2");
    let refused = f.apply("agent/web-1", write("web-1", 1), acquire.clone());
    assert!(matches!(refused, Err(StateError::OverBudget { .. })));
    // Still full: refused again, judged afresh.
    assert_eq!(
        f.apply("agent/web-1", write("web-1", 1), acquire.clone()),
        refused
    );
    f.release("web-2", t2).unwrap();
    // The budget freed up: the same write is now granted, and that answer is remembered.
    let granted = f.apply("agent/web-1", write("web-1", 1), acquire.clone());
    let slot = slot_of(granted.clone());
    assert_eq!(f.sm.host("web-1").unwrap().slot, Some(slot.token));
    assert_eq!(f.apply("agent/web-1", write("web-1", 1), acquire), granted);
}

#[test]
fn only_the_last_sixteen_seqs_are_remembered() {
    let mut f = Fleet::web("1", 1);
    let touch = || Command::UpdateReport {
        host: "web-1".into(),
        report: healthy(),
    };
    for seq in 1..=20 {
        f.apply("agent/web-1", write("c", seq), touch()).unwrap();
    }
    let err = f.apply("agent/web-1", write("c", 4), touch()).unwrap_err();
    assert_eq!(
        err,
        StateError::SeqTooOld {
            client_id: "c".into(),
            seq: 4,
            oldest: 5,
            window: 16
        }
    );
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        f.apply("agent/web-1", write("c", 5), touch()),
        Ok(Answer::Done)
    );
    // Out of order inside the window is fine: 22 before 21.
    f.apply("agent/web-1", write("c", 22), touch()).unwrap();
    f.apply("agent/web-1", write("c", 21), touch()).unwrap();
}

#[test]
fn idle_sessions_are_forgotten_after_an_hour_of_log_time() {
    let mut f = Fleet::web("1", 3);
    let acquire = Command::Acquire {
        host: "web-1".into(),
        purpose: DEPLOY.into(),
        reason: "".into(),
        rollout: "".into(),
        phase: None,
    };
    let token = slot_of(f.apply("agent/web-1", write("old", 1), acquire.clone())).token;
    f.release("web-1", token).unwrap();
    f.now += 59 * 60 * 1000;
    f.apply("x", write("other", 1), Command::RemoveMember { id: 9 })
        .unwrap();
    assert_eq!(f.sm.session_count(), 2, "not idle for an hour yet");
    f.now += 2 * 60 * 1000;
    f.apply("x", write("other", 2), Command::RemoveMember { id: 9 })
        .unwrap();
    assert_eq!(f.sm.session_count(), 1);
    // Its seq 1 is now a new write.
    let again = slot_of(f.apply("agent/web-1", write("old", 1), acquire));
    assert!(again.token > token);
}

#[test]
fn sessions_are_capped_evicting_the_least_recently_used() {
    let mut f = Fleet::new();
    f.group("web", "1");
    let touch = || Command::UpdateReport {
        host: "ghost".into(),
        report: healthy(),
    };
    // The first client's answer: no such host.
    assert!(f.apply("a", write("client-0", 1), touch()).is_err());
    // All within one second of log time, so that no session is idle.
    for i in 1..=session::MAX_SESSIONS {
        f.index += 1;
        let p = Proposal::new(write(&format!("client-{i}"), 1), f.now, "a", touch());
        let _ = f.sm.apply(f.index, p);
    }
    assert_eq!(f.sm.session_count(), session::MAX_SESSIONS);
    f.join("ghost", &["web"]);
    // client-0 was evicted, so its retry is applied afresh; client-1's is still answered.
    assert_eq!(
        f.apply("a", write("client-0", 1), touch()),
        Ok(Answer::Done)
    );
    assert!(f.apply("a", write("client-2", 1), touch()).is_err());
}

#[test]
fn internal_commands_are_not_deduplicated() {
    let mut f = Fleet::web("1", 3);
    f.unreachable("web-1");
    f.unreachable("web-1");
    assert_eq!(f.sm.session_count(), 0);
}

// ---- audit and members ----

#[test]
fn operator_maintenance_and_membership_are_audited() {
    let mut f = Fleet::web("1", 3);
    f.grant("web-1"); // an agent's deploy: not audited
    let before = f.sm.audit().count();
    f.apply(
        OPERATOR,
        None,
        Command::Acquire {
            host: "web-2".into(),
            purpose: MAINTENANCE.into(),
            reason: "disk swap".into(),
            rollout: "".into(),
            phase: None,
        },
    )
    .unwrap_err(); // over budget: refused, so not audited
    assert_eq!(f.sm.audit().count(), before);
    f.operator(Command::ForceRelease {
        host: "web-1".into(),
    })
    .unwrap();
    f.apply(
        OPERATOR,
        None,
        Command::Acquire {
            host: "web-2".into(),
            purpose: MAINTENANCE.into(),
            reason: "disk swap".into(),
            rollout: "".into(),
            phase: None,
        },
    )
    .unwrap();
    f.leader(Command::SetMember {
        id: 2,
        address: "10.0.0.2:7000".into(),
    })
    .unwrap();
    f.leader(Command::RemoveMember { id: 2 }).unwrap();
    assert!(f.sm.members().is_empty());
    let actions: Vec<String> =
        f.sm.audit()
            .skip(before)
            .map(|e| e.action.clone())
            .collect();
    assert_eq!(
        actions,
        vec![
            "force_release",
            "acquire_maintenance",
            "set_member",
            "remove_member"
        ]
    );
    let e = f.sm.audit().nth(before + 1).unwrap();
    assert_eq!(e.actor, OPERATOR);
    assert!(e.detail.contains("disk swap"), "{}", e.detail);
}

#[test]
fn the_audit_trail_keeps_the_last_thousand_events() {
    let mut f = Fleet::new();
    for i in 0..1005u64 {
        f.leader(Command::SetMember {
            id: i,
            address: format!("10.0.0.1:{i}"),
        })
        .unwrap();
    }
    assert_eq!(f.sm.audit().count(), 1000);
    assert_eq!(
        f.sm.audit().next().unwrap().detail,
        "member 5 at 10.0.0.1:5"
    );
    assert_eq!(f.sm.members().len(), 1005);
}

// ---- log plumbing ----

#[test]
fn an_index_is_applied_once() {
    let mut f = Fleet::web("1", 3);
    let p = Proposal::new(
        None,
        f.now,
        "agent/web-1",
        Command::Acquire {
            host: "web-1".into(),
            purpose: DEPLOY.into(),
            reason: "".into(),
            rollout: "".into(),
            phase: None,
        },
    );
    let before = f.sm.clone();
    let err = f.sm.apply(f.index, p).unwrap_err();
    assert_eq!(
        err,
        StateError::AlreadyApplied {
            index: f.index,
            applied: f.index
        }
    );
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(f.sm, before);
    f.sm.skip(f.index + 5);
    assert_eq!(f.sm.applied_index(), f.index + 5);
}

#[test]
fn snapshots_round_trip_everything() {
    let mut f = Fleet::web("25%", 6);
    f.group("db", "1");
    f.register(
        "db-1",
        &["db"],
        report(Health::Unprovisioned, Rotation::OutOfRotation),
    )
    .unwrap();
    let token = f.grant("web-1");
    f.phase("web-1", token, "draining").unwrap();
    f.unreachable("web-3");
    f.apply(
        "agent/web-2",
        write("web-2", 7),
        Command::UpdateReport {
            host: "web-2".into(),
            report: report(Health::Unhealthy, Rotation::Draining),
        },
    )
    .unwrap();
    f.leader(Command::SetMember {
        id: 1,
        address: "c1:7000".into(),
    })
    .unwrap();

    let restored = StateMachine::restore(&f.sm.snapshot().unwrap()).unwrap();
    assert_eq!(restored, f.sm);
    assert_eq!(restored.applied_index(), f.index);
    assert_eq!(restored.group_views(), f.sm.group_views());
    assert_eq!(restored.audit().count(), f.sm.audit().count());

    // The restored machine continues identically, sessions included.
    let mut a = f.sm.clone();
    let mut b = restored;
    let retry = Proposal::new(
        write("web-2", 7),
        f.now,
        "agent/web-2",
        Command::MarkUnreachable {
            host: "web-2".into(),
        },
    );
    assert_eq!(
        a.apply(f.index + 1, retry.clone()),
        b.apply(f.index + 1, retry)
    );
    assert_eq!(a, b);
    assert_eq!(
        a.host("web-2").unwrap().reachability,
        Reachability::Reachable,
        "deduped"
    );
}

#[test]
fn bad_snapshots_are_refused() {
    assert!(matches!(
        StateMachine::restore(b"garbage"),
        Err(StateError::Decode(_))
    ));
    assert!(StateMachine::restore(b"").is_err());
    let mut f = Fleet::web("1", 2);
    f.grant("web-1");
    let mut json: serde_json::Value = serde_json::from_slice(&f.sm.snapshot().unwrap()).unwrap();
    json["format"] = 99.into();
    let err = StateMachine::restore(&serde_json::to_vec(&json).unwrap()).unwrap_err();
    assert!(err.to_string().contains("format 99"), "{err}");
    // A slot that its host does not know about is an inconsistent state.
    json["format"] = 1.into();
    json["state"]["hosts"]["web-1"]["slot"] = serde_json::Value::Null;
    let err = StateMachine::restore(&serde_json::to_vec(&json).unwrap()).unwrap_err();
    assert!(err.to_string().contains("inconsistent"), "{err}");
}

#[test]
fn proposals_encode_and_decode() {
    let p = Proposal::new(
        write("agent-web-1", 3),
        42,
        "agent/web-1",
        Command::Register {
            host: "web-1".into(),
            groups: vec!["web".into()],
            address: "web-1:7001".into(),
            report: healthy(),
        },
    );
    assert_eq!(Proposal::decode(&p.encode()), Ok(p.clone()));
    let budgeted = Proposal::new(
        None,
        1,
        "operator/bob",
        Command::SetGroupPolicy {
            group: "web".into(),
            max_unavailable: Some(budget("25%")),
            allow_zero_available: None,
        },
    );
    assert_eq!(Proposal::decode(&budgeted.encode()), Ok(budgeted));

    for garbage in [
        &b""[..],
        b"\xff\x00",
        b"{}",
        b"[1,2]",
        b"{\"version\":1}",
        b"{\"version\":0}",
    ] {
        let err = Proposal::decode(garbage).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");
    }
    // A newer format is named, whatever its command.
    let newer = FORMAT_VERSION + 1;
    let mut v2: serde_json::Value = serde_json::from_slice(&p.encode()).unwrap();
    v2["version"] = newer.into();
    v2["command"] = serde_json::json!({"Teleport": {"host": "web-1"}});
    let err = Proposal::decode(&serde_json::to_vec(&v2).unwrap()).unwrap_err();
    assert_eq!(
        err,
        DecodeError::NeedsVersion {
            needs: newer,
            known: FORMAT_VERSION
        }
    );
    assert!(
        err.to_string().contains(&format!("version {newer}")),
        "{err}"
    );
    v2["version"] = 1.into();
    let err = Proposal::decode(&serde_json::to_vec(&v2).unwrap()).unwrap_err();
    assert!(err.to_string().contains("Teleport"), "{err}");
    // Proposals are stamped with their command's version.
    assert_eq!(p.version, p.command.version());
}

#[test]
fn errors_know_their_code_and_retryability() {
    let host = || "web-1".to_string();
    let cases = [
        (
            StateError::UnknownHost { host: host() },
            Code::NotFound,
            false,
        ),
        (
            StateError::NoSlot { host: host() },
            Code::FailedPrecondition,
            false,
        ),
        (StateError::Decode("x".into()), Code::InvalidArgument, false),
        (
            StateError::InvalidBudget {
                group: "web".into(),
                reason: "zero".into(),
            },
            Code::InvalidArgument,
            false,
        ),
    ];
    for (err, code, retry) in cases {
        assert_eq!((err.code(), err.is_retryable()), (code, retry), "{err}");
    }
    let name: StateError = hotdeploy_common::names::check_host("A").unwrap_err().into();
    assert!(
        name.to_string().starts_with("invalid host name \"A\""),
        "{name}"
    );
}

/// The leader's queue of waiting acquires builds a checker after every applied entry: it must
/// count only the groups its waiters are in, not the whole fleet (`hd-bench scale`: with
/// 10,000 hosts, one waiting lock client cost O(hosts) per entry).
#[test]
fn a_grant_checker_counts_only_the_groups_it_is_asked_about() {
    let mut f = Fleet::new();
    for g in 0..20 {
        f.group(&format!("g{g}"), "1");
        for h in 0..20 {
            f.join(&format!("g{g}-h{h}"), &[&format!("g{g}")]);
        }
    }
    f.group("lock", "1");
    f.join("lock-h", &["lock"]);
    f.join("lock-peer", &["lock"]);
    let checker = f.sm.grant_checker();
    assert_eq!(checker.groups_counted(), 0, "nothing asked yet");
    assert_eq!(checker.outlook("lock-h", DEPLOY), Outlook::Grantable);
    assert_eq!(checker.groups_counted(), 1, "only the lock group");
    assert_eq!(checker.outlook("lock-peer", DEPLOY), Outlook::Grantable);
    assert_eq!(checker.outlook("g3-h1", DEPLOY), Outlook::Grantable);
    assert_eq!(checker.groups_counted(), 2, "each group at most once");
    // The same judgement as the machine's own.
    assert!(f.sm.check_grant("g3-h1", DEPLOY).is_ok());
}
