//! Agents with a coordinator cluster: registration, the deploy slot, and fencing (DESIGN §3,
//! §4).
//!
//! A 3-node coordinator cluster holds group `web` at budget 1; two agents, `web-1` and `web-2`,
//! run `sample-app` in `exec` mode behind a real HAProxy (agent-inter 500 ms), both first
//! deployed with v1.
//!
//! - **Registration and the slot:** both agents show up in `hosts list` (unprovisioned, then
//!   healthy / in rotation / v1); a deploy through `hotdeployctl agent deploy` takes a `deploy`
//!   slot that `locks list` shows while it runs, and releases it only once the host is back `UP`
//!   in HAProxy; the coordinator's view ends `healthy`, `in_rotation`, release `v2`.
//! - **Fencing:** web-1 holds its slot and is frozen (SIGSTOP) inside a slow `before_drain`
//!   hook; an operator force-releases the slot and web-2 takes one; when web-1 is thawed it must
//!   neither drain (its `/ready` and HAProxy keep it in rotation) nor restart its app, and must
//!   report the stale token (`fenced`, and a failed deploy CLI naming the stale token).
//!
//! The hook runs in a process group of its own, so the SIGSTOP sent to the agent's group does
//! not stop it: the hook finishes while the agent is frozen, and the test thaws the agent only
//! after that, so that the agent resumes exactly at "hook done, about to drain" with a token that
//! went stale meanwhile. That is the worst case for fencing: everything the agent checked before
//! it froze is out of date.

mod agent_support;

use agent_support::*;
use hotdeploy_integration_tests::agents::AgentProc;
use hotdeploy_integration_tests::cluster::Cluster;
use hotdeploy_integration_tests::haproxy::{HaProxy, Observer};
use hotdeploy_integration_tests::net;
use nix::sys::signal::Signal;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct Fleet {
    agents: Vec<AgentProc>,
    haproxy: HaProxy,
    cluster: Cluster,
    v1: Rel,
    v2: Rel,
    _artifacts: tempfile::TempDir,
}

impl Fleet {
    /// Cluster, HAProxy, then web-1 (with `web1_extra` merged into its config) and web-2;
    /// both registered. Does not deploy.
    fn start(deadline: &Deadline, unreachable_after: &str, web1_extra: &str) -> Fleet {
        HaProxy::require().unwrap_or_else(|e| panic!("{e}"));
        let artifacts = tempfile::Builder::new()
            .prefix("hd-fleet-rel-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let v1 = release(artifacts.path(), "v1", false);
        let v2 = release(artifacts.path(), "v2", false);
        let cluster = start_cluster(deadline, unreachable_after, "");
        let ips = net::alloc_ips(3);
        let hosts = ["web-1", "web-2"];
        let servers: Vec<_> = hosts
            .iter()
            .zip(&ips)
            .map(|(h, ip)| ha_server(h, *ip))
            .collect();
        let haproxy = start_haproxy(&servers, ips[2]);
        let agents = hosts
            .iter()
            .zip(&ips)
            .map(|(h, ip)| {
                let mut o = fast_opts(h, *ip, cluster.coordinator_addrs());
                if *h == "web-1" {
                    o.extra = hotdeploy_integration_tests::toml_config::table(web1_extra);
                }
                AgentProc::start(o)
            })
            .collect();
        Fleet {
            agents,
            haproxy,
            cluster,
            v1,
            v2,
            _artifacts: artifacts,
        }
    }

    fn logs(&self) -> String {
        let mut text = format!("---- haproxy ----\n{}", self.haproxy.log_tail());
        for a in &self.agents {
            text.push_str(&format!(
                "\n---- agent {} ----\n{}",
                a.host_id(),
                a.log_tail()
            ));
        }
        text.push('\n');
        text.push_str(&self.cluster.all_logs());
        text
    }

    /// Waits until the coordinator lists `host` with these health, state and release.
    fn wait_host(
        &self,
        deadline: &Deadline,
        host: &str,
        health: &str,
        state: &str,
        release: Option<&str>,
    ) {
        wait_for(
            deadline,
            Duration::from_secs(15),
            &format!("hosts list: {host} {health}/{state}/{release:?}"),
            || {
                let h = host_entry(&self.cluster, host)?;
                let ok = h["reachability"] == "reachable"
                    && h["health"] == health
                    && h["state"] == state
                    && match release {
                        Some(r) => h["release"] == r,
                        None => h["release"].is_null(),
                    }
                    && h["groups"] == serde_json::json!(["web"]);
                if ok {
                    Ok(())
                } else {
                    Err(h.to_string())
                }
            },
            || self.logs(),
        );
    }

    /// First-deploys v1 on both agents; waits for HAProxy and the coordinator to agree.
    fn provision_v1(&self, deadline: &Deadline) {
        for agent in &self.agents {
            deploy_ok(agent, &self.v1);
        }
        assert!(
            self.haproxy
                .wait_all_up(2, deadline.bound(Duration::from_secs(15))),
            "HAProxy does not show both servers UP: {:?}\n{}",
            self.haproxy.stat(),
            self.logs()
        );
        for agent in &self.agents {
            wait_settled(deadline, agent, Some("v1"), Duration::from_secs(10));
            self.wait_host(
                deadline,
                agent.host_id(),
                "healthy",
                "in_rotation",
                Some("v1"),
            );
        }
        let held = locks(&self.cluster).unwrap_or_else(|e| panic!("{e}"));
        assert!(held.is_empty(), "a first deploy took a slot: {held:?}");
    }
}

#[test]
fn agent_registers_and_a_deploy_holds_a_slot_until_it_is_back_up() {
    let deadline = Deadline::new("registration and deploy slot", Duration::from_secs(60));
    let fleet = Fleet::start(&deadline, "5s", "");

    // Registered before anything is deployed.
    for agent in &fleet.agents {
        fleet.wait_host(
            &deadline,
            agent.host_id(),
            "unprovisioned",
            "in_rotation",
            None,
        );
    }
    fleet.provision_v1(&deadline);

    let web1 = &fleet.agents[0];
    let observer = Observer::start(&fleet.haproxy);
    let watched = Instant::now();
    let done = AtomicBool::new(false);
    let (out, seen_slot, status_at_release) = std::thread::scope(|s| {
        let cli = s.spawn(|| {
            let out = deploy(web1, &fleet.v2);
            done.store(true, Ordering::SeqCst);
            out
        });
        let mut seen_slot = None;
        let mut status_at_release = None;
        let until = Instant::now() + deadline.bound(Duration::from_secs(30));
        while Instant::now() < until {
            let finished = done.load(Ordering::SeqCst);
            let Ok(held) = locks(&fleet.cluster) else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            match (held.iter().find(|l| l["host"] == "web-1"), &seen_slot) {
                (Some(slot), None) => seen_slot = Some(slot.clone()),
                (None, Some(_)) if status_at_release.is_none() => {
                    // The slot just went: web-1 must be back in rotation already.
                    status_at_release = Some(fleet.haproxy.server_status("web-1"));
                }
                _ => {}
            }
            if finished {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = cli
            .join()
            .unwrap_or_else(|_| panic!("deploy thread panicked"));
        (out, seen_slot, status_at_release)
    });
    let seen = observer.stop();
    assert_sampled(&seen, watched.elapsed(), "a deploy holding a slot");

    assert!(
        out.status.success(),
        "deploy failed: {}\n{}",
        show(&out),
        fleet.logs()
    );
    let slot = seen_slot.unwrap_or_else(|| {
        panic!(
            "locks list never showed web-1's slot during its deploy\n{}",
            fleet.logs()
        )
    });
    assert_eq!(slot["purpose"], "deploy", "{slot}");
    assert_eq!(slot["groups"], serde_json::json!(["web"]), "{slot}");
    assert!(slot["token"].as_u64().unwrap_or(0) > 0, "{slot}");
    // Released by the time the CLI reports success, and only after HAProxy had it UP again.
    let held = locks(&fleet.cluster).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        held.is_empty(),
        "slot still held after the deploy: {held:?}"
    );
    let at_release = status_at_release.unwrap_or_else(|| {
        panic!(
            "never saw web-1's slot go away during the deploy\n{}",
            fleet.logs()
        )
    });
    assert_eq!(
        at_release, "UP",
        "the slot was released while HAProxy still had web-1 out of rotation"
    );
    assert_eq!(seen.max_not_up, 1, "{:?}", seen.changes);
    fleet.wait_host(&deadline, "web-1", "healthy", "in_rotation", Some("v2"));
    fleet.wait_host(&deadline, "web-2", "healthy", "in_rotation", Some("v1"));
    assert_eq!(web1.app_version().as_deref(), Some("v2"));
    let s = wait_settled(&deadline, web1, Some("v2"), Duration::from_secs(5));
    assert_eq!(s["last_outcome"], "succeeded", "{s}");
    assert_eq!(s["coordinator_connected"], true, "{s}");
    deadline.finish();
}

/// A `before_drain` hook that marks its start, sleeps, and marks its end.
fn slow_hook(dir: &Path) -> std::path::PathBuf {
    let hook = dir.join("before_drain.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ntouch {started}\nsleep 2\ntouch {done}\n",
            started = dir.join("hook-started").display(),
            done = dir.join("hook-done").display()
        ),
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", hook.display()));
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", hook.display()));
    hook
}

#[test]
fn a_frozen_agent_whose_slot_was_revoked_neither_drains_nor_restarts() {
    let deadline = Deadline::new("fencing a frozen agent", Duration::from_secs(60));
    let hooks = tempfile::Builder::new()
        .prefix("hd-fence-hook-")
        .tempdir()
        .unwrap_or_else(|e| panic!("temp dir: {e}"));
    let hook = slow_hook(hooks.path());
    // The freeze must not make web-1 unreachable: that alone would count against the budget
    // and refuse web-2's slot, which is not what this test is about.
    let fleet = Fleet::start(
        &deadline,
        "60s",
        &format!("[hooks]\nbefore_drain = {:?}\n", hook.display().to_string()),
    );
    fleet.provision_v1(&deadline);
    let web1 = &fleet.agents[0];
    let app_pid = one_app_pid(web1);

    let stop_polling = AtomicBool::new(false);
    let until = Instant::now() + deadline.bound(Duration::from_secs(150));
    let (out, ready_answers, seen) = std::thread::scope(|s| {
        let cli = s.spawn(|| deploy(web1, &fleet.v2));
        wait_for(
            &deadline,
            Duration::from_secs(15),
            "web-1's before_drain hook to start",
            || {
                hooks
                    .path()
                    .join("hook-started")
                    .exists()
                    .then_some(())
                    .ok_or_else(|| "not yet".to_string())
            },
            || fleet.logs(),
        );
        let held = locks(&fleet.cluster).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            held.iter()
                .any(|l| l["host"] == "web-1" && l["purpose"] == "deploy"),
            "web-1 is in its before_drain hook without holding a deploy slot: {held:?}"
        );
        web1.signal(Signal::SIGSTOP);

        let forced = fleet.cluster.ctl(&["locks", "release", "web-1", "--force"]);
        assert!(forced.status.success(), "force release: {}", show(&forced));
        let acquired = fleet
            .cluster
            .ctl(&["locks", "acquire", "web-2", "--reason", "test"]);
        assert!(
            acquired.status.success(),
            "web-2 could not take a slot after web-1's was revoked: {}\n{}",
            show(&acquired),
            fleet.logs()
        );
        let held = locks(&fleet.cluster).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            held.len() == 1 && held[0]["host"] == "web-2",
            "only web-2 should hold a slot now: {held:?}"
        );
        // The hook (its own process group) finishes while the agent stays frozen.
        wait_for(
            &deadline,
            Duration::from_secs(10),
            "the hook to finish while the agent is frozen",
            || {
                hooks
                    .path()
                    .join("hook-done")
                    .exists()
                    .then_some(())
                    .ok_or_else(|| "not yet".to_string())
            },
            || fleet.logs(),
        );
        std::thread::sleep(Duration::from_millis(200));

        let observer = Observer::start(&fleet.haproxy);
        let watched = Instant::now();
        // The poller ends on the flag (raised even if what follows panics) or its time bound.
        let stop_guard = RaiseOnDrop(&stop_polling);
        let poller = s.spawn(|| {
            let mut answers = Vec::new();
            while keep_polling(&stop_polling, until) {
                answers.push(web1.ready_status());
                std::thread::sleep(Duration::from_millis(20));
            }
            answers
        });
        web1.signal(Signal::SIGCONT);
        let out = cli
            .join()
            .unwrap_or_else(|_| panic!("deploy thread panicked"));
        // Several agent-checks after the end of the deploy.
        std::thread::sleep(4 * AGENT_INTER);
        drop(stop_guard);
        let answers = poller.join().unwrap_or_else(|_| panic!("poller panicked"));
        let seen = observer.stop();
        (out, answers, (seen, watched.elapsed()))
    });
    let (seen, watched) = seen;
    assert_sampled(&seen, watched, "a thawed, fenced agent");

    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a fenced deploy must exit 1: {}\n{}",
        show(&out),
        fleet.logs()
    );
    assert!(
        text.contains("stale"),
        "the deploy's output does not mention the stale token: {}",
        show(&out)
    );
    let not_ready: Vec<_> = ready_answers.iter().filter(|a| **a != Some(200)).collect();
    assert!(
        not_ready.is_empty(),
        "web-1's /ready left 200 after it was thawed ({} of {} answers: {:?}): a fenced agent \
         drained\n{}",
        not_ready.len(),
        ready_answers.len(),
        not_ready.iter().take(5).collect::<Vec<_>>(),
        fleet.logs()
    );
    assert_eq!(
        seen.max_not_up,
        0,
        "HAProxy saw a server leave rotation after web-1 was thawed: {:?}\n{}",
        seen.changes,
        fleet.logs()
    );
    assert_eq!(web1.app_pids(), vec![app_pid], "web-1's app was restarted");
    assert_eq!(web1.app_version().as_deref(), Some("v1"));
    let s = status(web1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s["last_outcome"], "fenced", "{s}");
    assert_eq!(s["state"], "in_rotation", "{s}");
    assert_eq!(s["current"], "v1", "{s}");
    assert_eq!(s["phase"], "idle", "{s}");
    assert_current_is_complete(web1);
    let held = locks(&fleet.cluster).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        held.len() == 1 && held[0]["host"] == "web-2",
        "web-1 must not have taken a slot again: {held:?}"
    );
    deadline.finish();
}
