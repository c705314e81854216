//! The lock's invariant while leaders die (DESIGN §3): "at no instant are more hosts of a group
//! out of rotation than its budget".
//!
//! Eight gRPC pseudo-hosts of group `web` (budget 2) loop acquire → hold 20–100 ms → release,
//! each retrying a write with the same `(client_id, seq)` through leader changes, as an agent
//! does. Meanwhile the leader is `kill -9`ed and restarted again and again (at least four times
//! in about 30 s).
//!
//! Every pseudo-host records each hold as it saw it: from the instant `AcquireSlot` returned to
//! the instant before `ReleaseSlot` was sent. That interval lies inside the real hold (grant
//! committed .. release committed), so if the lock is right, no more than 2 recorded intervals
//! ever overlap. The test also checks that no token serves two grants, that each host's tokens
//! strictly increase, that no write got an unexpected refusal, and that every pseudo-host got
//! work done. An observer polling the leader's slot list (a linearizable read) must never see
//! more than 2 slots of the group either.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

mod common;

use common::{pseudo_host_opts, runtime, serial, Deadline};
use hotdeploy_common::proto::ListSlotsRequest;
use hotdeploy_integration_tests::cluster::Cluster;
use hotdeploy_integration_tests::coord_client::{is_retryable, CoordClient, Jitter};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

const HOSTS: usize = 8;
const BUDGET: usize = 2;
/// How long one acquire or release keeps retrying the same write before the test gives up.
const WRITE_BUDGET: Duration = Duration::from_secs(20);

/// One hold as its pseudo-host saw it.
#[derive(Debug, Clone)]
struct Hold {
    host: String,
    token: u64,
    granted_at: Instant,
    released_at: Instant,
}

/// What the pseudo-hosts share with the test thread.
#[derive(Default)]
struct Record {
    holds: Vec<Hold>,
    /// Refusals no correct coordinator gives here (anything but budget waits and retryable
    /// errors), with the host and the step.
    unexpected: Vec<String>,
}

#[test]
fn the_budget_holds_while_the_leader_is_killed_repeatedly() {
    let _serial = serial();
    let deadline = Deadline::new("lock under leader kills", Duration::from_secs(120));
    let rt = runtime();

    let mut cluster = Cluster::start(3, &[("web", "2")], pseudo_host_opts());
    cluster.wait_leader(Duration::from_secs(30), None);
    let endpoints = cluster.coordinator_addrs();

    let hosts: Vec<String> = (1..=HOSTS).map(|i| format!("h{i}")).collect();
    let setup = CoordClient::new(&endpoints, "test-chaos-setup");
    rt.block_on(async {
        for host in &hosts {
            setup
                .register(host, &["web"], WRITE_BUDGET)
                .await
                .unwrap_or_else(|e| panic!("register {host}: {e:?}"));
        }
    });

    // The pseudo-hosts.
    let stop = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Record::default()));
    let started = Instant::now();
    let mut clients = Vec::new();
    let tasks: Vec<_> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let client = Arc::new(CoordClient::new(&endpoints, &format!("test-chaos-{host}")));
            clients.push(client.clone());
            rt.spawn(pseudo_host(
                client,
                host.clone(),
                i as u64,
                stop.clone(),
                record.clone(),
            ))
        })
        .collect();

    // An independent observer: the slots the leader lists (a linearizable read) never exceed
    // the budget either.
    let observer = rt.spawn({
        let stop = stop.clone();
        let client = CoordClient::new(&endpoints, "test-chaos-observer");
        async move {
            let (mut samples, mut max_seen, mut worst) = (0u64, 0usize, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let listed = client
                    .call(Duration::from_secs(5), Duration::ZERO, |mut c| async move {
                        c.list_slots(ListSlotsRequest {}).await
                    })
                    .await;
                if let Ok(listed) = listed {
                    samples += 1;
                    let web: Vec<_> = listed
                        .slots
                        .iter()
                        .filter(|s| s.groups.iter().any(|g| g == "web"))
                        .map(|s| (s.host.clone(), s.token))
                        .collect();
                    if web.len() > max_seen {
                        max_seen = web.len();
                        worst = web;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (samples, max_seen, worst)
        }
    });

    // The chaos: kill -9 the leader, restart it, let the cluster settle, again.
    let mut kills = Vec::new();
    while kills.len() < 4 || started.elapsed() < Duration::from_secs(28) {
        deadline.check("kill the next leader");
        let leader = cluster.wait_leader(deadline.bound(Duration::from_secs(20)), None);
        std::thread::sleep(Duration::from_millis(2500));
        cluster.kill(leader);
        kills.push((leader, started.elapsed()));
        std::thread::sleep(Duration::from_millis(1000));
        cluster.restart(leader);
    }
    // A last stretch without faults, so every pseudo-host can finish cleanly.
    cluster.wait_leader(deadline.bound(Duration::from_secs(20)), None);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let ran_for = started.elapsed();
    rt.block_on(async {
        for task in tasks {
            tokio::time::timeout(WRITE_BUDGET * 2, task)
                .await
                .unwrap_or_else(|_| panic!("a pseudo-host did not stop in time"))
                .unwrap_or_else(|e| panic!("a pseudo-host panicked: {e}"));
        }
    });
    let (samples, max_listed, worst) = rt
        .block_on(observer)
        .unwrap_or_else(|e| panic!("the observer panicked: {e}"));
    deadline.check("judge the history");
    eprintln!("observer: {samples} slot listings, at most {max_listed} slots of web at once");
    assert!(
        max_listed <= BUDGET,
        "the leader listed {max_listed} slots of web at once (budget {BUDGET}): {worst:?}"
    );
    assert!(
        samples >= 20,
        "the observer got only {samples} slot listings"
    );

    let record = record.lock().unwrap_or_else(|p| p.into_inner());
    let holds = &record.holds;
    let mut per_host: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
    for hold in holds {
        per_host.entry(hold.host.as_str()).or_default().push(hold);
    }
    eprintln!(
        "{} holds in {ran_for:?} across {} kills {kills:?}; {} retried attempts; per host: {:?}",
        holds.len(),
        kills.len(),
        clients.iter().map(|c| c.retries()).sum::<u64>(),
        per_host
            .iter()
            .map(|(h, v)| (*h, v.len()))
            .collect::<Vec<_>>()
    );

    assert!(kills.len() >= 4, "only {} leader kills", kills.len());
    assert!(
        record.unexpected.is_empty(),
        "unexpected refusals:\n  {}\n{}",
        record.unexpected.join("\n  "),
        cluster.all_logs()
    );

    // 1. At no instant do more than BUDGET recorded holds overlap. Holds are closed intervals;
    //    at equal instants a start counts before an end, so touching intervals count as
    //    overlapping (the recorded intervals are strictly inside the real holds).
    let mut events: Vec<(Instant, i32, usize)> = Vec::new();
    for (i, hold) in holds.iter().enumerate() {
        assert!(hold.released_at >= hold.granted_at);
        events.push((hold.granted_at, 0, i));
        events.push((hold.released_at, 1, i));
    }
    events.sort();
    let mut open: Vec<usize> = Vec::new();
    let mut max_open = 0;
    for (_, kind, i) in &events {
        if *kind == 0 {
            open.push(*i);
            max_open = max_open.max(open.len());
            assert!(
                open.len() <= BUDGET,
                "{} holds overlap at once (budget {BUDGET}): {:#?}",
                open.len(),
                open.iter().map(|&j| &holds[j]).collect::<Vec<_>>()
            );
        } else {
            open.retain(|j| j != i);
        }
    }
    eprintln!("at most {max_open} holds overlapped");

    // 2. No token serves two grants.
    let mut by_token: HashMap<u64, &Hold> = HashMap::new();
    for hold in holds {
        if let Some(other) = by_token.insert(hold.token, hold) {
            panic!(
                "token {} was granted twice: {other:?} and {hold:?}",
                hold.token
            );
        }
    }

    // 3. Each host's tokens strictly increase, and each host got work done.
    for host in &hosts {
        let mine = per_host.get(host.as_str()).cloned().unwrap_or_default();
        assert!(
            mine.len() >= 5,
            "{host} completed only {} acquire/hold/release cycles in {ran_for:?}",
            mine.len()
        );
        for pair in mine.windows(2) {
            assert!(
                pair[0].token < pair[1].token,
                "{host}'s tokens went from {} to {}",
                pair[0].token,
                pair[1].token
            );
            assert!(pair[0].released_at <= pair[1].granted_at);
        }
    }
}

/// One pseudo-host: acquire → hold → release until told to stop. Each write keeps its write id
/// through every retry, so a grant or release that committed before a leader died is answered,
/// not repeated.
async fn pseudo_host(
    client: Arc<CoordClient>,
    host: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
) {
    let mut jitter = Jitter::new(seed + 1);
    let note = |what: String| {
        record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unexpected
            .push(what)
    };
    while !stop.load(Ordering::SeqCst) {
        // Acquire: one write id until it is answered with a slot.
        let write = client.next_write();
        let since = Instant::now();
        let slot = loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            if since.elapsed() > Duration::from_secs(25) {
                note(format!("{host}: no slot for 25 s (write {write:?})"));
                return;
            }
            match client
                .acquire(
                    &write,
                    &host,
                    "deploy",
                    Duration::from_secs(2),
                    WRITE_BUDGET,
                )
                .await
            {
                Ok(slot) => break slot,
                // Budget full until the wait ran out, or a leader change: ask again, same id.
                Err(s) if s.code() == Code::ResourceExhausted || is_retryable(&s) => {}
                Err(s) => {
                    note(format!(
                        "{host}: acquire {write:?}: {:?}: {}",
                        s.code(),
                        s.message()
                    ));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let granted_at = Instant::now();
        if slot.host != host {
            note(format!("{host}: granted a slot for another host: {slot:?}"));
        }
        tokio::time::sleep(jitter.millis(20, 100)).await;

        // Release: one write id until it is answered.
        let released_at = Instant::now();
        let write = client.next_write();
        let since = Instant::now();
        loop {
            match client
                .release(&write, &host, slot.token, WRITE_BUDGET)
                .await
            {
                Ok(()) => break,
                Err(s) if is_retryable(&s) && since.elapsed() < Duration::from_secs(30) => {}
                Err(s) => {
                    note(format!(
                        "{host}: release of token {} ({write:?}): {:?}: {}",
                        slot.token,
                        s.code(),
                        s.message()
                    ));
                    // The slot may still be held: count it as held to the end.
                    let hold = Hold {
                        host: host.clone(),
                        token: slot.token,
                        granted_at,
                        released_at: Instant::now() + Duration::from_secs(3600),
                    };
                    record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .holds
                        .push(hold);
                    return;
                }
            }
        }
        let hold = Hold {
            host: host.clone(),
            token: slot.token,
            granted_at,
            released_at,
        };
        record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .holds
            .push(hold);
    }
}
