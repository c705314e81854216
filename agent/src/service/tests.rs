//! ServiceController tests with real processes. Every process a test starts runs with its cwd
//! inside the test's temp root; the [`Fixture`] guard SIGKILLs all of them on drop, whatever the
//! test's outcome.

use super::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    events: Arc<Mutex<Vec<Option<ChildRecord>>>>,
    /// When each child was announced started (each `Some` event).
    starts: Arc<Mutex<Vec<Instant>>>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        for r in ["r1", "r2"] {
            std::fs::create_dir_all(root.join("releases").join(r)).unwrap();
        }
        std::os::unix::fs::symlink("releases/r1", root.join("current")).unwrap();
        Self {
            _dir: dir,
            root,
            events: Arc::default(),
            starts: Arc::default(),
        }
    }

    fn cfg(&self, control: ServiceControl, script: &str) -> ServiceConfig {
        let mut env = BTreeMap::new();
        env.insert(
            "OUT".to_string(),
            self.root.join("out").display().to_string(),
        );
        ServiceConfig {
            name: "app".into(),
            root: self.root.clone(),
            control,
            exec: vec!["sh".into(), "-c".into(), script.into()],
            unit: None,
            stop: Vec::new(),
            start: Vec::new(),
            stop_timeout: Duration::from_secs(5),
            keep_releases: 5,
            env,
        }
    }

    fn controller(&self, cfg: &ServiceConfig) -> Arc<ServiceController> {
        let (events, starts) = (self.events.clone(), self.starts.clone());
        ServiceController::new(
            cfg,
            &self.root,
            Arc::new(move |c| {
                if c.is_some() {
                    starts.lock().unwrap().push(Instant::now());
                }
                events.lock().unwrap().push(c);
            }),
        )
    }

    fn starts(&self) -> Vec<Instant> {
        self.starts.lock().unwrap().clone()
    }

    /// Live (non-zombie) processes whose cwd is inside the root.
    fn procs(&self) -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let live = proc::read_stat(*pid).is_some_and(|s| s.state != 'Z');
                let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"));
                live && cwd.is_ok_and(|c| c.starts_with(&self.root))
            })
            .collect()
    }

    async fn wait_file(&self, name: &str) -> String {
        let path = self.root.join(name);
        for _ in 0..100 {
            if let Ok(s) = std::fs::read_to_string(&path) {
                if s.ends_with('\n') {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} never written", path.display());
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for pid in self.procs() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

const SLEEPER: &str = "echo \"$$ $HOTDEPLOY_RELEASE {current}\" > \"$OUT\"; exec sleep 1000";

#[tokio::test]
async fn start_restart_stop_with_substitution() {
    let fx = Fixture::new();
    let svc = fx.controller(&fx.cfg(ServiceControl::Exec, SLEEPER));
    svc.adopt_or_start(None, None).await.unwrap();
    let first = svc.child().unwrap();
    let out = fx.wait_file("out").await;
    let r1 = fx.root.join("releases/r1");
    assert_eq!(out, format!("{} r1 {}\n", first.pid, r1.display()));

    std::fs::remove_file(fx.root.join("out")).unwrap();
    svc.restart("r2").await.unwrap();
    let second = svc.child().unwrap();
    assert_ne!(first.pid, second.pid);
    assert!(!proc::is_alive(&first));
    let out = fx.wait_file("out").await;
    let r2 = fx.root.join("releases/r2");
    assert_eq!(out, format!("{} r2 {}\n", second.pid, r2.display()));
    assert_eq!(fx.procs(), vec![second.pid]);

    svc.stop().await.unwrap();
    assert_eq!(svc.child(), None);
    assert!(fx.procs().is_empty());
    assert!(
        *svc.subscribe_alive().borrow(),
        "a requested stop is not a crash"
    );
    let events = fx.events.lock().unwrap().clone();
    assert_eq!(
        events,
        vec![Some(first.clone()), None, Some(second.clone()), None]
    );
}

#[tokio::test]
async fn restart_to_a_missing_release_keeps_the_old_process() {
    let fx = Fixture::new();
    let svc = fx.controller(&fx.cfg(ServiceControl::Exec, SLEEPER));
    svc.adopt_or_start(None, Some("r1")).await.unwrap();
    let first = svc.child().unwrap();
    let e = svc.restart("nope").await.unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    assert!(proc::is_alive(&first));
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn sigterm_ignoring_child_is_sigkilled_after_stop_timeout() {
    let fx = Fixture::new();
    let mut cfg = fx.cfg(
        ServiceControl::Exec,
        "trap '' TERM; echo $$ > \"$OUT\"; while true; do sleep 0.05; done",
    );
    cfg.stop_timeout = Duration::from_millis(600);
    let svc = fx.controller(&cfg);
    svc.adopt_or_start(None, None).await.unwrap();
    fx.wait_file("out").await; // the trap is in place
    let rec = svc.child().unwrap();
    let t0 = Instant::now();
    svc.stop().await.unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(550),
        "stopped too soon: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    assert!(!proc::is_alive(&rec));
    assert!(fx.procs().is_empty());
}

#[tokio::test]
async fn child_dying_on_its_own_is_restarted_and_alive_flips() {
    let fx = Fixture::new();
    let svc = fx.controller(&fx.cfg(ServiceControl::Exec, SLEEPER));
    svc.adopt_or_start(None, None).await.unwrap();
    let first = svc.child().unwrap();
    let mut alive = svc.subscribe_alive();
    assert!(*alive.borrow_and_update());

    kill(Pid::from_raw(first.pid), Signal::SIGKILL).unwrap();
    tokio::time::timeout(Duration::from_secs(5), alive.wait_for(|a| !*a))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), alive.wait_for(|a| *a))
        .await
        .unwrap()
        .unwrap();
    let second = svc.child().unwrap();
    assert_ne!(first.pid, second.pid);
    assert!(proc::is_alive(&second));
    assert_eq!(fx.procs(), vec![second.pid]);
    svc.stop().await.unwrap();
}

/// A service that keeps crashing is restarted, each time after a longer pause (the backoff
/// ladder: 100, 200, 400 ms, ...), and is reported not alive while it waits. The pauses are
/// lower bounds, which a slow machine only lengthens.
#[tokio::test]
async fn crash_loop_backs_off() {
    let fx = Fixture::new();
    let svc = fx.controller(&fx.cfg(ServiceControl::Exec, "echo x >> \"$OUT\"; exit 1"));
    let mut alive = svc.subscribe_alive();
    svc.adopt_or_start(None, None).await.unwrap();
    wait_until("four starts", || fx.starts().len() >= 4).await;
    let starts = fx.starts();
    let mut backoff = exec::BACKOFF_MIN;
    for (n, pair) in starts.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= backoff,
            "start {} came {gap:?} after the one before, within its backoff {backoff:?}",
            n + 2
        );
        backoff *= 2;
    }
    // Between two starts the service is reported down, and nothing of it runs: every start
    // so far ran (and wrote its line) and is gone.
    tokio::time::timeout(Duration::from_secs(10), alive.wait_for(|a| !*a))
        .await
        .expect("the crashed service was never reported down")
        .unwrap();
    let lines = std::fs::read_to_string(fx.root.join("out"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, fx.starts().len(), "one line per start");
    assert!(fx.procs().is_empty(), "{:?}", fx.procs());
    // A stop is not a crash.
    svc.stop().await.unwrap();
    assert!(*svc.subscribe_alive().borrow());
}

#[tokio::test]
async fn a_restarted_agent_adopts_instead_of_starting_another() {
    let fx = Fixture::new();
    let cfg = fx.cfg(ServiceControl::Exec, SLEEPER);
    let first = fx.controller(&cfg);
    first.adopt_or_start(None, None).await.unwrap();
    let rec = first.child().unwrap();
    fx.wait_file("out").await;
    // The agent goes away: dropping the controller must leave the service running.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(proc::is_alive(&rec));

    let second = fx.controller(&cfg);
    second
        .adopt_or_start(Some(rec.clone()), Some("r1"))
        .await
        .unwrap();
    assert_eq!(second.child(), Some(rec.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fx.procs(), vec![rec.pid], "a second copy was started");

    // Stopping an adopted (non-child) process works too.
    second.stop().await.unwrap();
    assert!(!proc::is_alive(&rec));
    assert!(fx.procs().is_empty());
}

#[tokio::test]
async fn adopted_process_dying_is_noticed_and_restarted() {
    let fx = Fixture::new();
    let cfg = fx.cfg(ServiceControl::Exec, SLEEPER);
    let first = fx.controller(&cfg);
    first.adopt_or_start(None, None).await.unwrap();
    let rec = first.child().unwrap();
    drop(first);
    let second = fx.controller(&cfg);
    second
        .adopt_or_start(Some(rec.clone()), None)
        .await
        .unwrap();
    let mut alive = second.subscribe_alive();
    kill(Pid::from_raw(rec.pid), Signal::SIGKILL).unwrap();
    tokio::time::timeout(Duration::from_secs(5), alive.wait_for(|a| !*a))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), alive.wait_for(|a| *a))
        .await
        .unwrap()
        .unwrap();
    let new = second.child().unwrap();
    assert_ne!(new.pid, rec.pid);
    second.stop().await.unwrap();
}

#[tokio::test]
async fn stale_record_starts_a_fresh_process() {
    let fx = Fixture::new();
    let svc = fx.controller(&fx.cfg(ServiceControl::Exec, SLEEPER));
    let me = proc::record_of(std::process::id() as i32).unwrap();
    let stale = ChildRecord {
        start_time: me.start_time + 7,
        ..me.clone()
    };
    svc.adopt_or_start(Some(stale), None).await.unwrap();
    let rec = svc.child().unwrap();
    assert_ne!(rec.pid, me.pid);
    wait_until("the fresh child", || fx.procs() == vec![rec.pid]).await;
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn nothing_deployed_starts_nothing() {
    let fx = Fixture::new();
    std::fs::remove_file(fx.root.join("current")).unwrap();
    let svc = fx.controller(&fx.cfg(ServiceControl::Exec, SLEEPER));
    svc.adopt_or_start(None, None).await.unwrap();
    assert_eq!(svc.child(), None);
}

#[tokio::test]
async fn command_mode_runs_stop_then_start() {
    let fx = Fixture::new();
    let log = fx.root.join("log");
    let mut cfg = fx.cfg(ServiceControl::Command, "");
    cfg.stop = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "echo \"stop $HOTDEPLOY_RELEASE {{current}}\" >> {}",
            log.display()
        ),
    ];
    cfg.start = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "echo \"start $HOTDEPLOY_RELEASE {{current}}\" >> {}",
            log.display()
        ),
    ];
    let svc = fx.controller(&cfg);
    svc.adopt_or_start(None, None).await.unwrap();
    assert!(!log.exists(), "command mode starts nothing at agent start");
    svc.restart("r2").await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text,
        format!(
            "stop r1 {}\nstart r2 {}\n",
            fx.root.join("releases/r1").display(),
            fx.root.join("releases/r2").display()
        )
    );
}

#[tokio::test]
async fn command_mode_failure_names_the_command_and_stderr() {
    let fx = Fixture::new();
    let mut cfg = fx.cfg(ServiceControl::Command, "");
    cfg.stop = vec!["true".into()];
    cfg.start = vec![
        "sh".into(),
        "-c".into(),
        "echo port in use >&2; exit 4".into(),
    ];
    let svc = fx.controller(&cfg);
    let e = svc.restart("r1").await.unwrap_err().to_string();
    assert!(e.contains("start command"), "{e}");
    assert!(e.contains("port in use"), "{e}");
    assert!(e.contains('4'), "{e}");
}

fn repoint_current(fx: &Fixture, id: &str) {
    let link = fx.root.join("current");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("releases/{id}"), &link).unwrap();
}

/// Item 4: in `command` mode, `stop` runs with `{current}` and `HOTDEPLOY_RELEASE` of the
/// release being stopped, although a deploy has already swapped `current` to the new one; and a
/// restarted agent knows, from the journal, which release it last started.
#[tokio::test]
async fn command_mode_stops_the_release_that_runs_not_the_new_current() {
    let fx = Fixture::new();
    let log = fx.root.join("log");
    let mut cfg = fx.cfg(ServiceControl::Command, "");
    for (argv, word) in [(&mut cfg.stop, "stop"), (&mut cfg.start, "start")] {
        *argv = vec![
            "sh".into(),
            "-c".into(),
            format!(
                "echo \"{word} $HOTDEPLOY_RELEASE {{current}}\" >> {}",
                log.display()
            ),
        ];
    }
    let started = Arc::new(Mutex::new(Vec::<String>::new()));
    let controller = |last: Option<&str>| {
        let started = started.clone();
        ServiceController::with_hooks(
            &cfg,
            &fx.root,
            ServiceHooks {
                on_child: Arc::new(|_| {}),
                on_release: Arc::new(move |id: &str| started.lock().unwrap().push(id.into())),
                last_release: last.map(str::to_owned),
                shutdown: CancellationToken::new(),
            },
        )
    };
    let r = |id: &str| fx.root.join("releases").join(id).display().to_string();
    let svc = controller(None);
    // The first start, on r1 (what `current` names).
    svc.restart("r1").await.unwrap();
    // A deploy of r2 over r1: the swap comes first, then the restart.
    repoint_current(&fx, "r2");
    svc.restart("r2").await.unwrap();
    // Its rollback: `current` back to r1, then the restart.
    repoint_current(&fx, "r1");
    svc.restart("r1").await.unwrap();
    drop(svc);
    // The agent restarts; a deploy of r2 again.
    let last = started.lock().unwrap().last().cloned();
    let svc = controller(last.as_deref());
    repoint_current(&fx, "r2");
    svc.restart("r2").await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            format!("stop r1 {}", r("r1")),
            format!("start r1 {}", r("r1")),
            format!("stop r1 {}", r("r1")),
            format!("start r2 {}", r("r2")),
            format!("stop r2 {}", r("r2")),
            format!("start r1 {}", r("r1")),
            format!("stop r1 {}", r("r1")),
            format!("start r2 {}", r("r2")),
        ]
    );
    assert_eq!(*started.lock().unwrap(), ["r1", "r2", "r1", "r2"]);
}

/// Item 11: a stop that fails leaves the process supervised, so a restart after it never
/// starts a second copy next to one that may still run.
#[tokio::test]
async fn a_failed_stop_never_leads_to_a_second_copy() {
    let fx = Fixture::new();
    let svc = fx.controller(&fx.cfg(ServiceControl::Exec, SLEEPER));
    svc.adopt_or_start(None, None).await.unwrap();
    let first = svc.child().unwrap();
    svc.fail_next_stops(1);
    assert!(svc.stop().await.is_err());
    assert!(proc::is_alive(&first));
    assert_eq!(
        svc.child(),
        Some(first.clone()),
        "the process is no longer supervised"
    );
    // A restart whose stop fails again does not start anything.
    svc.fail_next_stops(1);
    assert!(svc.restart("r2").await.is_err());
    assert_eq!(fx.procs(), vec![first.pid], "a second copy was started");
    // Once the stop works, the restart does.
    svc.restart("r2").await.unwrap();
    let second = svc.child().unwrap();
    assert!(!proc::is_alive(&first));
    wait_until("only the new process", || fx.procs() == vec![second.pid]).await;
    svc.stop().await.unwrap();
}

/// Item 11: with the journal's record lost (or unreadable), a restarted agent finds the service
/// running from the release store and adopts it instead of starting a second copy.
#[tokio::test]
async fn without_a_record_the_service_running_from_the_store_is_adopted() {
    let fx = Fixture::new();
    let cfg = fx.cfg(ServiceControl::Exec, SLEEPER);
    let first = fx.controller(&cfg);
    first.adopt_or_start(None, None).await.unwrap();
    let rec = first.child().unwrap();
    fx.wait_file("out").await;
    drop(first);
    let second = fx.controller(&cfg);
    second.adopt_or_start(None, None).await.unwrap();
    assert_eq!(second.child().map(|c| c.pid), Some(rec.pid));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fx.procs(), vec![rec.pid], "a second copy was started");
    second.stop().await.unwrap();
    assert!(fx.procs().is_empty());
}

/// Item 11: our own child's group is signalled only while its leader is unreaped, so that the
/// group id cannot have been handed to another process: while a straggler that ignores
/// SIGTERM keeps the group alive, the leader that did exit stays a zombie; it is reaped last.
#[tokio::test]
async fn the_leader_is_reaped_only_after_its_group_is_empty() {
    let fx = Fixture::new();
    let mut cfg = fx.cfg(
        ServiceControl::Exec,
        "(trap '' TERM; while :; do sleep 0.05; done) & echo $$ > \"$OUT\"; exec sleep 1000",
    );
    // Long enough that, however loaded the machine, the leader has exited on SIGTERM well
    // before the straggler is killed.
    cfg.stop_timeout = Duration::from_secs(4);
    let svc = fx.controller(&cfg);
    svc.adopt_or_start(None, None).await.unwrap();
    fx.wait_file("out").await;
    let leader = svc.child().unwrap();
    let s2 = svc.clone();
    let stop = tokio::spawn(async move { s2.stop().await });
    // The leader exits on SIGTERM at once; the straggler outlives it until SIGKILL.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let st = loop {
        let st = proc::read_stat(leader.pid);
        if st.as_ref().is_none_or(|s| s.state == 'Z') || tokio::time::Instant::now() >= until {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        st.is_some_and(|s| s.state == 'Z'),
        "the leader was reaped while its group still had members (or never exited): {st:?}"
    );
    assert!(
        proc::group_exists(leader.pid),
        "the straggler is gone already"
    );
    stop.await.unwrap().unwrap();
    assert_eq!(
        proc::read_stat(leader.pid),
        None,
        "the leader was never reaped"
    );
    assert!(fx.procs().is_empty());
}

/// At the agent's shutdown the supervisor detaches, leaving the service running, and
/// `detached` returns only once it has let go of what it held: the `on_child` hook, and
/// through it (in the daemon) the journal, which an agent started again in the same process
/// must be able to open.
#[tokio::test]
async fn detached_returns_once_the_supervisor_has_let_go() {
    let fx = Fixture::new();
    let shutdown = CancellationToken::new();
    let held = Arc::new(()); // stands for the journal the hook writes to
    let hook_holds = held.clone();
    let svc = ServiceController::with_hooks(
        &fx.cfg(ServiceControl::Exec, SLEEPER),
        &fx.root,
        ServiceHooks {
            on_child: Arc::new(move |_| drop(hook_holds.clone())),
            on_release: Arc::new(|_| {}),
            last_release: None,
            shutdown: shutdown.clone(),
        },
    );
    assert!(
        !svc.detached(Duration::from_millis(100)).await,
        "detached before the shutdown"
    );
    svc.adopt_or_start(None, None).await.unwrap();
    let child = svc.child().unwrap();
    assert_eq!(Arc::strong_count(&held), 2);
    shutdown.cancel();
    assert!(svc.detached(Duration::from_secs(10)).await);
    drop(svc);
    assert_eq!(Arc::strong_count(&held), 1, "the hook is still held");
    assert!(
        proc::is_alive(&child),
        "the service did not survive the shutdown"
    );
}
