//! The randomized run: seeded faults against a random stream of register, acquire, release and
//! force-release commands, with the cluster's invariants checked after every step.
//!
//! Each seed builds a three-node cluster (snapshots every few entries, so that compaction and
//! snapshot installs happen too) and plays [`STEPS`] steps drawn from the seed: ticks (a node
//! may miss one, as a slow clock would), client requests, and faults (partitions, one-way cuts,
//! lost and delayed messages, crashes and restarts from storage, a wiped network queue). Clients
//! act like agents: each host retries its request with the same `(client_id, seq)` after a
//! leader change, a lost answer, or a budget refusal, so dedup is exercised too.
//!
//! After every step, on every running node:
//! - **budget:** no group has more unavailable hosts than its budget (the stream only ever
//!   registers healthy or unprovisioned hosts, so every unavailable host is a slot holder, and
//!   the lock alone decides);
//! - **tokens:** no token is reused: a token always names the same grant (host, purpose, time),
//!   on every replica and in every answer a client got;
//! - **agreement:** replicas agree on the applied prefix: every replica applied the same entry
//!   (term and bytes) at every index, and two nodes at the same applied index hold equal states.
//!
//! At the end the faults stop, and the cluster must converge: every node up, one applied index,
//! one state.
//!
//! A failure panics with its seed and the step; `HOTDEPLOY_SIM_SEED=N` replays exactly that seed
//! (and prints its trace). `HOTDEPLOY_SIM_SEEDS=N` runs N seeds per test instead of the default.

use super::commands::{acquire, agent, force_release, group, operator, register, release};
use super::{Reply, Sim, SimConfig};
use crate::state::{Answer, Command, Health, Response, StateMachine};
use rand::Rng;
use std::collections::BTreeMap;

/// Seeds per test; four tests run 1,000 seeds in all.
const SEEDS_PER_TEST: u64 = 250;
/// Steps per seed.
const STEPS: usize = 200;
const HOSTS: usize = 6;
const GROUPS: [&str; 2] = ["a", "b"];
/// Ticks a client waits for an answer before it asks again.
const PATIENCE: u64 = 40;

/// One host's agent.
#[derive(Default)]
struct Client {
    seq: u64,
    /// The request in flight: its write seq, command, answer and when it was (re)sent.
    pending: Option<Pending>,
    /// The token of the slot it believes it holds.
    held: Option<u64>,
}

struct Pending {
    seq: u64,
    command: Command,
    reply: Option<Reply<Response>>,
    sent_at: u64,
}

/// A grant as every replica and client must see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    host: String,
    purpose: String,
    granted_at_ms: u64,
}

/// What one seed's run did.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Summary {
    pub grants: u64,
    pub refusals: u64,
    pub leader_changes: u64,
    pub crashes: u64,
    pub messages_lost: u64,
}

struct Run {
    sim: Sim,
    clients: Vec<Client>,
    tokens: BTreeMap<u64, Grant>,
    /// (term, hash) of the entry at each index, as the first replica to apply it had it.
    entries: BTreeMap<u64, (u64, u64)>,
    summary: Summary,
    last_leader: Option<u64>,
    /// A broken invariant seen outside `check` (in a client's answer).
    violation: Option<String>,
}

fn host(i: usize) -> String {
    format!("h{i}")
}

/// Runs one seed; `Err` describes the first broken invariant, with the run's trace.
pub(crate) fn run_seed(seed: u64) -> Result<Summary, (String, String)> {
    let (result, trace, _) = play_seed(seed);
    result.map_err(|e| (e, trace))
}

/// Plays one seed's run: its outcome, the trace of its last events, and the messages sent and
/// lost, whatever the outcome.
fn play_seed(seed: u64) -> (Result<Summary, String>, String, (u64, u64)) {
    let sim = Sim::new(
        SimConfig {
            nodes: 3,
            snapshot_every: 8,
        },
        seed,
    );
    let mut run = Run {
        sim,
        clients: (0..HOSTS).map(|_| Client::default()).collect(),
        tokens: BTreeMap::new(),
        entries: BTreeMap::new(),
        summary: Summary::default(),
        last_leader: None,
        violation: None,
    };
    let result = run.play().map(|()| {
        run.summary.messages_lost = run.sim.message_counts().1;
        run.summary
    });
    (result, run.sim.trace(), run.sim.message_counts())
}

impl Run {
    fn play(&mut self) -> Result<(), String> {
        self.setup()?;
        for step in 0..STEPS {
            self.step();
            self.check().map_err(|e| format!("step {step}: {e}"))?;
        }
        self.converge()
    }

    /// Two groups (budgets 1 and 2), no faults yet.
    fn setup(&mut self) -> Result<(), String> {
        let leader = self.sim.elect();
        for (g, max) in [(GROUPS[0], "1"), (GROUPS[1], "2")] {
            let p = operator(self.sim.now_ms(), group(g, max));
            let mut r = self.sim.propose(leader, &p);
            match self.sim.wait(&mut r, 100) {
                Ok(Ok(_)) => {}
                other => return Err(format!("setting up group {g}: {other:?}")),
            }
        }
        let loss = self.sim.rng().gen_range(0.0..0.08);
        let delay = self.sim.rng().gen_range(0..3);
        self.sim.set_network(loss, delay);
        self.sim.log(format!(
            "network: loss {loss:.3}, delay up to {delay} ticks"
        ));
        Ok(())
    }

    fn step(&mut self) {
        let roll = self.sim.rng().gen_range(0..100);
        match roll {
            0..=39 => {
                let skip: Vec<u64> = self
                    .sim
                    .ids()
                    .into_iter()
                    .filter(|_| self.sim.rng().gen_bool(0.1))
                    .collect();
                self.sim.tick_except(&skip);
            }
            40..=84 => {
                let i = self.sim.rng().gen_range(0..HOSTS);
                self.client(i);
            }
            _ => self.fault(),
        }
        for i in 0..HOSTS {
            self.poll(i);
        }
        let leader = self.sim.leader();
        if leader != self.last_leader {
            self.summary.leader_changes += 1;
            self.last_leader = leader;
        }
    }

    fn fault(&mut self) {
        let ids = self.sim.ids();
        let pick = ids[self.sim.rng().gen_range(0..ids.len())];
        let down: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| !self.sim.is_up(*id))
            .collect();
        match self.sim.rng().gen_range(0..7) {
            0 => self.sim.partition(&[pick]),
            1 => {
                let to = ids[self.sim.rng().gen_range(0..ids.len())];
                if to != pick {
                    self.sim.cut(pick, to);
                }
            }
            2 | 3 => self.sim.heal(),
            4 if down.is_empty() => {
                self.sim.crash(pick);
                self.summary.crashes += 1;
            }
            4 | 5 => {
                if let Some(id) = down.first() {
                    self.sim.restart(*id);
                }
            }
            _ => self.sim.drop_in_flight(),
        }
    }

    /// Host `i`'s agent does something: asks again, or makes a new request.
    fn client(&mut self, i: usize) {
        if self.clients[i].pending.is_some() {
            self.resend(i, false);
            return;
        }
        let h = host(i);
        let command = match self.sim.rng().gen_range(0..10) {
            0..=2 => {
                let groups: &[&str] = match self.sim.rng().gen_range(0..3) {
                    0 => &GROUPS[..1],
                    1 => &GROUPS[1..],
                    _ => &GROUPS[..],
                };
                let health = if self.sim.rng().gen_bool(0.3) {
                    Health::Unprovisioned
                } else {
                    Health::Healthy
                };
                register(&h, groups, health)
            }
            3..=6 => acquire(&h),
            7 | 8 => match self.clients[i].held {
                Some(token) => release(&h, token),
                // A stale token, as an agent that lost its journal might send.
                None => release(&h, self.sim.rng().gen_range(1..50)),
            },
            _ => {
                // An operator's forced release: no client session, answered or not.
                let p = operator(self.sim.now_ms(), force_release(&h));
                if let Some(leader) = self.sim.leader() {
                    let _ = self.sim.propose(leader, &p);
                }
                return;
            }
        };
        let c = &mut self.clients[i];
        c.seq += 1;
        c.pending = Some(Pending {
            seq: c.seq,
            command,
            reply: None,
            sent_at: 0,
        });
        self.resend(i, true);
    }

    /// (Re)sends host `i`'s pending request, with its write id, to the node it thinks leads.
    fn resend(&mut self, i: usize, fresh: bool) {
        let now = self.sim.now();
        let Some(p) = self.clients[i].pending.as_ref() else {
            return;
        };
        if !fresh && p.reply.is_some() && now.saturating_sub(p.sent_at) < PATIENCE {
            return;
        }
        let to = match self.sim.leader() {
            Some(l) if !self.sim.rng().gen_bool(0.1) => l,
            _ => {
                let ids = self.sim.ids();
                ids[self.sim.rng().gen_range(0..ids.len())]
            }
        };
        let proposal = agent(&host(i), p.seq, self.sim.now_ms(), p.command.clone());
        let reply = self.sim.propose(to, &proposal);
        if let Some(p) = self.clients[i].pending.as_mut() {
            p.reply = Some(reply);
            p.sent_at = now;
        }
    }

    /// Reads host `i`'s answer, if it came.
    fn poll(&mut self, i: usize) {
        let Some(answer) = self.clients[i]
            .pending
            .as_mut()
            .and_then(|p| p.reply.as_mut())
            .and_then(|r| r.try_take())
        else {
            return;
        };
        let h = host(i);
        match answer {
            Ok(Ok(Answer::Slot(slot))) => {
                self.summary.grants += 1;
                let grant = Grant {
                    host: slot.host.clone(),
                    purpose: slot.purpose.clone(),
                    granted_at_ms: slot.granted_at_ms,
                };
                if let Some(e) = self.note_token(slot.token, grant, "a client's answer") {
                    self.violation.get_or_insert(e);
                }
                self.clients[i].held = Some(slot.token);
                self.clients[i].pending = None;
            }
            Ok(Ok(Answer::Released { .. })) => {
                self.clients[i].held = None;
                self.clients[i].pending = None;
            }
            Ok(Ok(_)) => self.clients[i].pending = None,
            Ok(Err(e)) if e.is_retryable() => {
                // Budget full: ask again later with the same write id.
                self.summary.refusals += 1;
                if let Some(p) = self.clients[i].pending.as_mut() {
                    p.reply = None;
                }
            }
            Ok(Err(e)) => {
                self.summary.refusals += 1;
                if matches!(e, crate::state::StateError::StaleToken { .. }) {
                    self.clients[i].held = None;
                }
                self.clients[i].pending = None;
            }
            Err(e) => {
                // Not the leader, leadership lost, a stopped node: ask again, same write id.
                self.sim.log(format!("{h}: {e}; will retry"));
                if let Some(p) = self.clients[i].pending.as_mut() {
                    p.reply = None;
                }
            }
        }
    }

    fn note_token(&mut self, token: u64, grant: Grant, seen_in: &str) -> Option<String> {
        match self.tokens.get(&token) {
            Some(first) if *first != grant => Some(format!(
                "token {token} reused: first {first:?}, now {grant:?} in {seen_in}"
            )),
            Some(_) => None,
            None => {
                self.tokens.insert(token, grant);
                None
            }
        }
    }

    fn check(&mut self) -> Result<(), String> {
        if let Some(err) = self.violation.take() {
            return Err(err);
        }
        let up: Vec<u64> = self
            .sim
            .ids()
            .into_iter()
            .filter(|id| self.sim.is_up(*id))
            .collect();
        for &id in &up {
            // The same entry at every index, on every replica (entries a node skipped by
            // installing a snapshot are checked through the state below).
            for (index, term, hash) in self.sim.take_applied_log(id) {
                match self.entries.get(&index) {
                    Some(first) if *first != (term, hash) => {
                        return Err(format!(
                            "node {id} applied a different entry at index {index} (term \
                             {term}; the first replica applied one of term {})",
                            first.0
                        ))
                    }
                    Some(_) => {}
                    None => {
                        self.entries.insert(index, (term, hash));
                    }
                }
            }
            let (grants, budget) = {
                let st = self.sim.state(id);
                (slot_grants(&st), within_budget(&st))
            };
            budget.map_err(|e| format!("node {id}: {e}"))?;
            for (token, grant) in grants {
                if let Some(e) = self.note_token(token, grant, &format!("node {id}'s slots")) {
                    return Err(e);
                }
            }
        }
        // Replicas at the same applied index hold the same state.
        for (i, &a) in up.iter().enumerate() {
            for &b in &up[i + 1..] {
                if self.sim.applied(a) == self.sim.applied(b)
                    && *self.sim.state(a) != *self.sim.state(b)
                {
                    return Err(format!(
                        "nodes {a} and {b} hold different states at applied index {}",
                        self.sim.applied(a)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Faults stop; every node comes back; the cluster must agree.
    fn converge(&mut self) -> Result<(), String> {
        self.sim.heal();
        self.sim.set_network(0.0, 0);
        for id in self.sim.ids() {
            if !self.sim.is_up(id) {
                self.sim.restart(id);
            }
        }
        let ok = self.sim.run_until(400, |s| {
            let ids = s.ids();
            s.leader().is_some()
                && ids.iter().all(|id| s.is_up(*id))
                && ids
                    .windows(2)
                    .all(|w| s.applied(w[0]) == s.applied(w[1]) && *s.state(w[0]) == *s.state(w[1]))
        });
        if !ok {
            let detail: Vec<String> = self
                .sim
                .ids()
                .into_iter()
                .map(|id| {
                    format!(
                        "node {id}: up {}, applied {}, fatal {:?}",
                        self.sim.is_up(id),
                        self.sim.applied(id),
                        self.sim.fatal(id)
                    )
                })
                .collect();
            return Err(format!(
                "no convergence after the faults: {}",
                detail.join("; ")
            ));
        }
        self.check().map_err(|e| format!("after convergence: {e}"))
    }
}

/// The grants in a replica's slot table.
fn slot_grants(st: &StateMachine) -> Vec<(u64, Grant)> {
    st.slots()
        .into_iter()
        .map(|s| {
            (
                s.token,
                Grant {
                    host: s.host.clone(),
                    purpose: s.purpose.clone(),
                    granted_at_ms: s.granted_at_ms,
                },
            )
        })
        .collect()
}

/// No group has more unavailable hosts than its budget, counted here from the hosts: a host is
/// counted if provisioned or holding a slot, unavailable if counted and holding a slot or out
/// of service.
fn within_budget(st: &StateMachine) -> Result<(), String> {
    for view in st.group_views() {
        let members: Vec<_> = st
            .hosts()
            .filter(|h| h.groups.contains(&view.name))
            .collect();
        let counted =
            |h: &crate::state::Host| h.health != Health::Unprovisioned || h.slot.is_some();
        let size = members.iter().filter(|h| counted(h)).count() as u64;
        let unavailable: Vec<&str> = members
            .iter()
            .filter(|h| counted(h))
            .filter(|h| {
                h.slot.is_some()
                    || h.health == Health::Unhealthy
                    || h.rotation != crate::state::Rotation::InRotation
                    || h.reachability == crate::state::Reachability::Unreachable
            })
            .map(|h| h.id.as_str())
            .collect();
        let budget = view.max_unavailable.budget(size);
        if unavailable.len() as u64 > budget {
            return Err(format!(
                "group {} has {} unavailable hosts {unavailable:?}, over its budget of {budget}",
                view.name,
                unavailable.len()
            ));
        }
    }
    Ok(())
}

/// Seeds to run per test (`HOTDEPLOY_SIM_SEEDS`), or the one seed to replay
/// (`HOTDEPLOY_SIM_SEED`).
fn seeds(part: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("HOTDEPLOY_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // Replay: only the part that holds it runs it.
        return if part == 0 { vec![seed] } else { vec![] };
    }
    let n = std::env::var("HOTDEPLOY_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_PER_TEST);
    (part * n..(part + 1) * n).collect()
}

fn run_part(part: u64) {
    let replay = std::env::var_os("HOTDEPLOY_SIM_SEED").is_some();
    let seeds = seeds(part);
    let mut total = Summary::default();
    for seed in &seeds {
        match run_seed(*seed) {
            Ok(s) => {
                total.grants += s.grants;
                total.refusals += s.refusals;
                total.leader_changes += s.leader_changes;
                total.crashes += s.crashes;
                total.messages_lost += s.messages_lost;
            }
            Err((e, trace)) => {
                let lines: Vec<&str> = trace.lines().collect();
                let shown = if replay {
                    0
                } else {
                    lines.len().saturating_sub(60)
                };
                panic!(
                    "randomized run failed with seed {seed}: {e}\n\
                     last events:\n{}\n\
                     replay it with: HOTDEPLOY_SIM_SEED={seed} cargo nextest run -p \
                     hotdeploy-coordinator -E 'test(random_faults_0)' --no-capture",
                    lines[shown..].join("\n")
                )
            }
        }
        if replay {
            eprintln!("seed {seed} passed: {total:?}");
        }
    }
    eprintln!("{} seeds: {total:?}", seeds.len());
    // A run that granted nothing proved nothing.
    if !seeds.is_empty() && !replay {
        assert!(
            total.grants >= seeds.len() as u64,
            "{} seeds granted only {} slots",
            seeds.len(),
            total.grants
        );
        assert!(total.crashes > 0 && total.leader_changes > seeds.len() as u64);
    }
}

/// A seed is a replayable run (what `HOTDEPLOY_SIM_SEED` relies on): the same seed twice
/// gives the same outcome and the same events, so nothing outside the seed (a clock, a thread,
/// the order of a hash map, a real file sync) reaches the core.
#[test]
fn a_seed_replays_the_same_run_event_for_event() {
    for seed in [0, 17, 901] {
        let (first, first_trace, first_messages) = play_seed(seed);
        let (second, second_trace, second_messages) = play_seed(seed);
        assert!(
            first.as_ref().is_ok_and(|s| s.grants > 0),
            "seed {seed} granted nothing: {first:?}"
        );
        assert!(first_messages.0 > 100, "seed {seed}: {first_messages:?}");
        assert!(
            first_trace.lines().count() > 20,
            "seed {seed} traced too little to compare:\n{first_trace}"
        );
        assert_eq!(first, second, "seed {seed} ran differently the second time");
        assert_eq!(
            first_messages, second_messages,
            "seed {seed}: messages sent and lost"
        );
        assert_eq!(
            first_trace, second_trace,
            "seed {seed}: the same seed gave different events"
        );
    }
}

#[test]
fn random_faults_0() {
    run_part(0);
}

#[test]
fn random_faults_1() {
    run_part(1);
}

#[test]
fn random_faults_2() {
    run_part(2);
}

#[test]
fn random_faults_3() {
    run_part(3);
}
