//! Scenario tests of FleetLock's lock-only hosts, driven through `apply` as the raft driver
//! would: a Zincati host asks for a reboot slot under an id no agent has registered, shares the
//! budget with agent hosts, and gives the slot back.

use super::*;
use hotdeploy_common::config::MaxUnavailable;
use tonic::Code;

struct World {
    sm: StateMachine,
    index: u64,
    now: u64,
}

fn healthy(release: &str) -> Report {
    Report {
        health: Health::Healthy,
        rotation: Rotation::InRotation,
        release: release.to_string(),
        phase: "idle".to_string(),
    }
}

fn slot(r: Response) -> Slot {
    match r {
        Ok(Answer::Slot(s)) => s,
        other => panic!("expected a slot, got {other:?}"),
    }
}

fn refusal(r: Response) -> StateError {
    match r {
        Err(e) => e,
        Ok(a) => panic!("expected a refusal, got {a:?}"),
    }
}

impl World {
    fn new() -> Self {
        Self {
            sm: StateMachine::new(),
            index: 0,
            now: 1_700_000_000_000,
        }
    }

    fn apply(&mut self, actor: &str, command: Command) -> Response {
        self.index += 1;
        self.now += 1000;
        self.sm
            .apply(self.index, Proposal::new(None, self.now, actor, command))
    }

    fn group(&mut self, name: &str, max: &str) {
        self.apply(
            "operator/alice",
            Command::SetGroupPolicy {
                group: name.into(),
                max_unavailable: Some(MaxUnavailable::parse(max).unwrap()),
                allow_zero_available: None,
            },
        )
        .unwrap();
    }

    fn agent(&mut self, host: &str, groups: &[&str]) -> Response {
        self.apply(
            &format!("agent/{host}"),
            Command::Register {
                host: host.into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                address: format!("{host}:7401"),
                report: healthy("v1"),
            },
        )
    }

    /// What the FleetLock service proposes first for a request of `host` in `group`.
    fn lock_only(&mut self, host: &str, group: &str) -> Response {
        self.apply(
            "fleetlock/127.0.0.1",
            Command::RegisterLockOnly {
                host: host.into(),
                group: group.into(),
            },
        )
    }

    /// `pre-reboot`: register, then acquire a `fleetlock` slot.
    fn pre_reboot(&mut self, host: &str, group: &str) -> Response {
        self.lock_only(host, group)?;
        self.acquire(host, FLEETLOCK)
    }

    fn acquire(&mut self, host: &str, purpose: &str) -> Response {
        self.apply(
            "fleetlock/127.0.0.1",
            Command::Acquire {
                host: host.into(),
                purpose: purpose.into(),
                reason: "FleetLock pre-reboot".into(),
                rollout: String::new(),
                phase: None,
            },
        )
    }

    fn release(&mut self, host: &str, token: u64) -> Response {
        self.apply(
            "fleetlock/127.0.0.1",
            Command::Release {
                host: host.into(),
                token,
            },
        )
    }

    fn view(&self, group: &str) -> GroupView {
        self.sm.group_view(group).unwrap()
    }

    fn host(&self, host: &str) -> &Host {
        self.sm.host(host).unwrap()
    }
}

/// An unknown id becomes a lock-only host of its group: available (it counts in the size and
/// not in Unavailable), reachable, healthy, in rotation; its lock is re-entrant, and it is
/// unavailable only while it holds the slot.
#[test]
fn an_unknown_id_becomes_a_lock_only_host_that_counts_as_available() {
    let mut w = World::new();
    w.group("default", "1");
    w.agent("web-1", &["default"]).unwrap();
    w.lock_only("c988d2509fdf4cdcbed39037c56406fb", "default")
        .unwrap();
    let z = w.host("c988d2509fdf4cdcbed39037c56406fb");
    assert_eq!(z.kind, HostKind::LockOnly);
    assert!(z.is_available(), "{z:?}");
    assert_eq!(z.groups, vec!["default".to_string()]);
    assert_eq!(
        (w.view("default").size, w.view("default").unavailable),
        (2, 0)
    );

    let first = slot(w.acquire("c988d2509fdf4cdcbed39037c56406fb", FLEETLOCK));
    assert_eq!(first.purpose, FLEETLOCK);
    // Re-entrant: the same client asking again (registering again is a no-op) gets the same
    // slot back.
    let again = slot(w.pre_reboot("c988d2509fdf4cdcbed39037c56406fb", "default"));
    assert_eq!(again.token, first.token);
    assert_eq!(
        w.sm.fleetlock_slot("c988d2509fdf4cdcbed39037c56406fb")
            .map(|s| s.token),
        Some(first.token)
    );
    let v = w.view("default");
    assert_eq!((v.size, v.unavailable), (2, 1));
    assert_eq!(v.holders, vec!["c988d2509fdf4cdcbed39037c56406fb"]);

    w.release("c988d2509fdf4cdcbed39037c56406fb", first.token)
        .unwrap();
    assert_eq!(w.view("default").unavailable, 0);
    assert!(w
        .sm
        .fleetlock_slot("c988d2509fdf4cdcbed39037c56406fb")
        .is_none());
    // Granting and creating are audited.
    let actions: Vec<&str> = w.sm.audit().map(|e| e.action.as_str()).collect();
    assert!(actions.contains(&"register_lock_only"), "{actions:?}");
    assert!(actions.contains(&"acquire_fleetlock"), "{actions:?}");
}

/// A FleetLock holder and a deploy share the group's budget: with a budget of 1, a held reboot
/// slot blocks a deploy slot (retryable), and a deploy slot blocks a reboot slot.
#[test]
fn a_fleetlock_holder_blocks_a_deploy_slot_when_the_budget_is_one() {
    let mut w = World::new();
    w.group("web", "1");
    w.agent("web-1", &["web"]).unwrap();
    w.agent("web-2", &["web"]).unwrap();
    let reboot = slot(w.pre_reboot("zincati-1", "web"));
    let e = refusal(w.acquire("web-1", "deploy"));
    assert!(
        matches!(&e, StateError::OverBudget { unavailable, .. } if unavailable == &["zincati-1"]),
        "{e:?}"
    );
    assert!(e.is_retryable());
    w.release("zincati-1", reboot.token).unwrap();
    let deploy = slot(w.acquire("web-1", "deploy"));
    let e = refusal(w.pre_reboot("zincati-1", "web"));
    assert!(matches!(e, StateError::OverBudget { .. }), "{e:?}");
    w.release("web-1", deploy.token).unwrap();
    slot(w.pre_reboot("zincati-1", "web"));
}

/// The registration sticks when the grant is refused: the first host of a FleetLock-only
/// group is its lone host and cannot reboot, but once a second host has asked, one of them may.
#[test]
fn a_refused_grant_keeps_the_registration_so_a_fleetlock_group_can_grow() {
    let mut w = World::new();
    w.group("default", "1");
    let e = refusal(w.pre_reboot("node-a", "default"));
    assert!(matches!(e, StateError::LoneHost { .. }), "{e:?}");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(w.sm.host("node-a").is_some(), "the registration was lost");
    // The second host makes two: it may reboot while node-a serves.
    let b = slot(w.pre_reboot("node-b", "default"));
    let e = refusal(w.pre_reboot("node-a", "default"));
    assert!(matches!(e, StateError::OverBudget { .. }), "{e:?}");
    w.release("node-b", b.token).unwrap();
    slot(w.pre_reboot("node-a", "default"));
}

/// A FleetLock slot of an agent host is an ordinary slot of purpose `fleetlock`: another
/// purpose is refused while it is held, and `fleetlock_slot` finds only FleetLock slots.
#[test]
fn an_agent_host_may_take_a_fleetlock_slot_in_one_of_its_groups() {
    let mut w = World::new();
    w.group("web", "1");
    w.group("db", "1");
    for h in ["web-1", "web-2"] {
        w.agent(h, &["web"]).unwrap();
    }
    let deploy = slot(w.acquire("web-1", "deploy"));
    assert!(w.sm.fleetlock_slot("web-1").is_none(), "a deploy slot");
    w.release("web-1", deploy.token).unwrap();
    // Registering an agent host is a no-op in its own group, refused in another.
    assert_eq!(w.sm.lock_only_plan("web-1", "web"), Ok(LockOnlyPlan::Known));
    let before = w.sm.clone();
    let e = refusal(w.lock_only("web-1", "db"));
    assert!(
        matches!(&e, StateError::NotInGroup { groups, .. } if groups == &["web"]),
        "{e:?}"
    );
    assert!(e.to_string().contains("registered by its agent"), "{e}");
    let mut expected = before.clone();
    expected.skip(w.index);
    assert_eq!(w.sm, expected, "a refusal changed the state");
    assert_eq!(w.host("web-1").kind, HostKind::Agent);
    let held = slot(w.pre_reboot("web-1", "web"));
    let e = refusal(w.acquire("web-1", "deploy"));
    assert!(
        matches!(&e, StateError::HeldForOtherPurpose { holder_purpose, .. } if holder_purpose == FLEETLOCK),
        "{e:?}"
    );
    assert_eq!(
        w.sm.fleetlock_slot("web-1").map(|s| s.token),
        Some(held.token)
    );
}

/// A lock-only host follows its client's group when it holds no slot, and keeps it while it
/// does; an unknown group and bad names are refused, naming them.
#[test]
fn a_lock_only_host_moves_group_only_without_a_slot() {
    let mut w = World::new();
    w.group("a", "1");
    w.group("b", "1");
    w.agent("web-1", &["a"]).unwrap();
    w.agent("web-2", &["b"]).unwrap();
    w.lock_only("node-1", "a").unwrap();
    assert_eq!(
        w.sm.lock_only_plan("node-1", "b"),
        Ok(LockOnlyPlan::Move {
            from: vec!["a".into()]
        })
    );
    let held = slot(w.pre_reboot("node-1", "a"));
    let e = refusal(w.lock_only("node-1", "b"));
    assert!(
        matches!(e, StateError::GroupsChangeWhileHolding { .. }),
        "{e:?}"
    );
    w.release("node-1", held.token).unwrap();
    w.lock_only("node-1", "b").unwrap();
    assert_eq!(w.host("node-1").groups, vec!["b".to_string()]);
    assert_eq!((w.view("a").size, w.view("b").size), (1, 2));

    let e = refusal(w.lock_only("node-1", "nope"));
    assert!(matches!(e, StateError::UnknownGroup { .. }), "{e:?}");
    assert!(w.sm.host("node-2").is_none());
    let e = refusal(w.lock_only("Node_2", "a"));
    assert!(matches!(e, StateError::InvalidName { .. }), "{e:?}");
    let e = refusal(w.lock_only("node-2", "A"));
    assert!(matches!(e, StateError::InvalidName { .. }), "{e:?}");
}

/// A lock-only host carries no agent's facts: reports and reachability changes are refused (so
/// it never turns unreachable or unhealthy by mistake), until an agent registers the id, which
/// turns it into an agent host, slot and all.
#[test]
fn only_an_agent_registering_the_id_gives_a_lock_only_host_facts() {
    let mut w = World::new();
    w.group("web", "1");
    w.agent("web-1", &["web"]).unwrap();
    let held = slot(w.pre_reboot("node-1", "web"));
    let before = w.sm.clone();
    for cmd in [
        Command::MarkUnreachable {
            host: "node-1".into(),
        },
        Command::UpdateReport {
            host: "node-1".into(),
            report: healthy("v2"),
        },
        Command::MarkReachable {
            host: "node-1".into(),
            report: healthy("v2"),
        },
    ] {
        let e = refusal(w.apply("leader", cmd));
        assert!(matches!(e, StateError::LockOnlyHost { .. }), "{e:?}");
    }
    let mut expected = before.clone();
    expected.skip(w.index);
    assert_eq!(w.sm, expected);

    w.agent("node-1", &["web"]).unwrap();
    let h = w.host("node-1");
    assert_eq!((h.kind, h.slot), (HostKind::Agent, Some(held.token)));
    assert_eq!(h.release, "v1");
}

/// `hosts remove` takes a lock-only host without `--force` (it has no heartbeat to lose), and
/// frees its slot.
#[test]
fn a_lock_only_host_is_removed_without_force() {
    let mut w = World::new();
    w.group("web", "1");
    w.agent("web-1", &["web"]).unwrap();
    slot(w.pre_reboot("node-1", "web"));
    w.apply(
        "operator/alice",
        Command::RemoveHost {
            host: "node-1".into(),
            force: false,
        },
    )
    .unwrap();
    assert!(w.sm.host("node-1").is_none());
    assert!(w.sm.slots().is_empty());
    assert_eq!(w.view("web").unavailable, 0);
    // An agent host still needs --force while reachable.
    let e = refusal(w.apply(
        "operator/alice",
        Command::RemoveHost {
            host: "web-1".into(),
            force: false,
        },
    ));
    assert!(matches!(e, StateError::HostReachable { .. }), "{e:?}");
}

/// Rollouts target agent hosts only; lock-only hosts still count in the group's budget.
#[test]
fn a_rollout_targets_agent_hosts_only() {
    let mut w = World::new();
    w.group("web", "50%");
    w.agent("web-1", &["web"]).unwrap();
    w.lock_only("node-1", "web").unwrap();
    let spec = RolloutSpec {
        id: "r1".into(),
        group: "web".into(),
        release: ReleaseSpec {
            id: "v2".into(),
            artifact_url: "file:///releases/v2.tar.gz".into(),
            sha256: "ab".repeat(32),
            signature: String::new(),
        },
        batch: 0,
        canary: 0,
        pause_after_canary: false,
        max_failures: 0,
        auto_rollback: true,
        supersede: false,
        progress_deadline_ms: 0,
    };
    // One agent host and one lock-only host: not a lone host, so the rollout starts.
    w.apply("operator/alice", Command::StartRollout { spec })
        .unwrap();
    let r = w.sm.rollout("r1").unwrap();
    let hosts: Vec<&str> = r.steps.iter().map(|s| s.host.as_str()).collect();
    assert_eq!(hosts, vec!["web-1"]);
    assert!(w.sm.assignment("node-1").is_none());
}

/// A snapshot keeps lock-only hosts; a state without them serializes as before they existed
/// (no `kind` key), so their introduction changes no existing snapshot.
#[test]
fn snapshots_keep_lock_only_hosts_and_old_states_unchanged() {
    let mut w = World::new();
    w.group("web", "1");
    w.agent("web-1", &["web"]).unwrap();
    let old = String::from_utf8(w.sm.snapshot().unwrap()).unwrap();
    assert!(!old.contains("\"kind\""), "{old}");
    slot(w.pre_reboot("node-1", "web"));
    let restored = StateMachine::restore(&w.sm.snapshot().unwrap()).unwrap();
    assert_eq!(restored, w.sm);
    assert_eq!(restored.host("node-1").unwrap().kind, HostKind::LockOnly);
}

/// `RegisterLockOnly` and the `fleetlock` `Acquire` are stamped with [`FLEETLOCK_VERSION`]
/// (other acquires and the release keep the lock's version), this binary can apply them, and a
/// state they changed is refused by a node that knows less.
#[test]
fn fleetlock_commands_are_stamped_with_the_fleetlock_version() {
    let p = Proposal::new(
        None,
        1,
        "fleetlock/127.0.0.1",
        Command::RegisterLockOnly {
            host: "node-1".into(),
            group: "web".into(),
        },
    );
    assert_eq!(p.version, FLEETLOCK_VERSION);
    const { assert!(FLEETLOCK_VERSION > VERSION_GATE_VERSION && FORMAT_VERSION >= FLEETLOCK_VERSION) };
    assert_eq!(Proposal::decode(&p.encode()), Ok(p));
    let acquire = |purpose: &str| Command::Acquire {
        host: "node-1".into(),
        purpose: purpose.into(),
        reason: String::new(),
        rollout: String::new(),
        phase: None,
    };
    assert_eq!(acquire(FLEETLOCK).version(), FLEETLOCK_VERSION);
    assert_eq!(acquire("deploy").version(), BASE_VERSION);
    let release = Command::Release {
        host: "node-1".into(),
        token: 1,
    };
    assert_eq!(release.version(), BASE_VERSION);

    // A deploy slot leaves the state at the lock's version; a FleetLock slot of an agent host
    // (no RegisterLockOnly needed) raises it.
    let mut w = World::new();
    w.group("web", "2");
    w.agent("web-1", &["web"]).unwrap();
    w.agent("web-2", &["web"]).unwrap();
    w.agent("web-3", &["web"]).unwrap();
    slot(w.acquire("web-1", "deploy"));
    assert_eq!(w.sm.format_version(), BASE_VERSION);
    slot(w.acquire("web-2", FLEETLOCK));
    assert_eq!(w.sm.format_version(), FLEETLOCK_VERSION);
    let bytes = w.sm.snapshot().unwrap();
    assert!(StateMachine::restore_known(&bytes, VERSION_GATE_VERSION).is_err());
    assert!(StateMachine::restore_known(&bytes, FLEETLOCK_VERSION).is_ok());
}
