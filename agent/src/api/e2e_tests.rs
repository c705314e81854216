//! End to end, in process: a real standalone agent on 127.0.0.1 supervising a tiny Python HTTP
//! service in `exec` mode, driven through its gRPC API.

use super::Daemon;
use crate::service::ServiceController;
use hotdeploy_common::config::AgentConfig;
use hotdeploy_common::proto::agent_client::AgentClient;
use hotdeploy_common::proto::{
    AgentStatusRequest, DeployRequest, ListReleasesRequest, Outcome, Release,
};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const APP: &str = r#"
import os, sys, signal
from http.server import BaseHTTPRequestHandler, HTTPServer
HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = open(os.path.join(HERE, "VERSION")).read().strip()
FAIL = os.path.exists(os.path.join(HERE, "FAIL_HEALTH"))
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        code, body = ((500, b"failing") if FAIL else (200, b"ok")) if self.path == "/health" else (200, VERSION.encode())
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
HTTPServer.allow_reuse_address = True
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// Kills the supervised service whatever happens to the test.
struct KillService(Arc<ServiceController>);

impl Drop for KillService {
    fn drop(&mut self) {
        if let Some(c) = self.0.child() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(c.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A .tar.gz release with the app; returns (path, sha256).
fn release(dir: &Path, version: &str, fail_health: bool) -> (PathBuf, String) {
    let path = dir.join(format!("app-{version}.tar.gz"));
    let file = std::fs::File::create(&path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut files: Vec<(&str, &[u8])> =
        vec![("app.py", APP.as_bytes()), ("VERSION", version.as_bytes())];
    if fail_health {
        files.push(("FAIL_HEALTH", b"1"));
    }
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
    let sha = hex(&sha2::Sha256::digest(std::fs::read(&path).unwrap()));
    (path, sha)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn app_version(port: u16) -> Option<String> {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    r.status().is_success().then_some(())?;
    r.text().await.ok()
}

async fn deploy(
    client: &mut AgentClient<tonic::transport::Channel>,
    dir: &Path,
    version: &str,
    fail_health: bool,
) -> (Outcome, String, Vec<String>) {
    let (path, sha) = release(dir, version, fail_health);
    let mut stream = client
        .deploy(DeployRequest {
            release: Some(Release {
                id: version.into(),
                artifact_url: format!("file://{}", path.display()),
                sha256: sha,
                signature: String::new(),
            }),
            rollout_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut phases = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        if m.done {
            return (Outcome::try_from(m.outcome).unwrap(), m.error, phases);
        }
        phases.push(m.phase);
    }
    panic!("stream ended without an outcome; phases {phases:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_agent_deploys_and_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = AgentConfig::parse(&format!(
        r#"
host_id = "web-1"
listen = "127.0.0.1:0"
data_dir = "{data}"
[tls]
insecure = true
[service]
name = "app"
root = "{root}"
control = "exec"
exec = ["python3", "{{current}}/app.py", "{port}"]
stop_timeout = "5s"
keep_releases = 3
[rotation]
drain_grace = "100ms"
undrain_grace = "100ms"
[verify]
http = "http://127.0.0.1:{port}/health"
success_threshold = 2
interval = "100ms"
timeout = "10s"
settle = "300ms"
"#,
        data = tmp.path().join("data").display(),
        root = tmp.path().join("srv").display(),
    ))
    .unwrap();
    let daemon = Daemon::start(cfg).await.unwrap();
    let _kill = KillService(daemon.service.clone());
    let mut client = AgentClient::connect(format!("http://{}", daemon.addr))
        .await
        .unwrap();
    let status = |c: &mut AgentClient<_>| {
        let mut c = c.clone();
        async move { c.status(AgentStatusRequest {}).await.unwrap().into_inner() }
    };
    assert_eq!(
        status(&mut client).await.health,
        1,
        "unprovisioned at first"
    );

    let (o, e, phases) = deploy(&mut client, tmp.path(), "v1", false).await;
    assert_eq!(o, Outcome::Succeeded, "v1: {e}");
    assert!(
        !phases.contains(&"draining".to_owned()),
        "a first deploy does not drain"
    );
    assert_eq!(app_version(port).await.as_deref(), Some("v1"));

    let (o, e, phases) = deploy(&mut client, tmp.path(), "v2", false).await;
    assert_eq!(o, Outcome::Succeeded, "v2: {e}");
    assert!(phases.contains(&"draining".to_owned()), "{phases:?}");
    assert_eq!(app_version(port).await.as_deref(), Some("v2"));
    let s = status(&mut client).await;
    assert_eq!((s.current.as_str(), s.previous.as_str()), ("v2", "v1"));
    assert_eq!(s.health, 2, "healthy");
    assert_eq!(s.last_outcome, "succeeded");
    assert!(s.service_pid > 0);

    let (o, e, phases) = deploy(&mut client, tmp.path(), "v3", true).await;
    assert_eq!(o, Outcome::RolledBack, "v3: {e}");
    assert!(e.contains("verify of v3 failed"), "{e}");
    assert!(phases.contains(&"rolling_back".to_owned()), "{phases:?}");
    assert_eq!(app_version(port).await.as_deref(), Some("v2"));
    let s = status(&mut client).await;
    assert_eq!(s.current, "v2");
    assert_eq!(s.last_outcome, "rolled_back");
    assert_eq!(s.rotation, 1, "back in rotation");

    let releases = client
        .list_releases(ListReleasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .releases;
    assert!(releases.iter().any(|r| r.id == "v2" && r.current));

    // Bad input is refused up front.
    let err = client
        .deploy(DeployRequest {
            release: Some(Release {
                id: "v4".into(),
                artifact_url: "file:///nope.tar".into(),
                sha256: "xyz".into(),
                signature: String::new(),
            }),
            rollout_id: String::new(),
        })
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // An oversized request is refused before it is decoded, and nothing changes.
    let err = client
        .deploy(DeployRequest {
            release: Some(Release {
                id: "v5".into(),
                artifact_url: format!("file:///{}", "a".repeat(100 * 1024)),
                sha256: "0".repeat(64),
                signature: String::new(),
            }),
            rollout_id: String::new(),
        })
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert_eq!(app_version(port).await.as_deref(), Some("v2"));

    let service = daemon.service.clone();
    daemon.shutdown().await;
    // The agent stopped; the service did not.
    assert_eq!(app_version(port).await.as_deref(), Some("v2"));
    service.stop().await.unwrap();
}

/// A standalone agent config on `tmp` serving the app on `port`; `top` and `rotation` are
/// extra TOML for the top level and `[rotation]`.
fn config(tmp: &Path, port: u16, top: &str, rotation: &str) -> AgentConfig {
    AgentConfig::parse(&format!(
        r#"
host_id = "web-1"
listen = "127.0.0.1:0"
data_dir = "{data}"
{top}
[tls]
insecure = true
[service]
name = "app"
root = "{root}"
control = "exec"
exec = ["python3", "{{current}}/app.py", "{port}"]
stop_timeout = "5s"
[rotation]
{rotation}
[verify]
http = "http://127.0.0.1:{port}/health"
success_threshold = 2
interval = "100ms"
timeout = "10s"
settle = "300ms"
"#,
        data = tmp.join("data").display(),
        root = tmp.join("srv").display(),
        rotation = if rotation.is_empty() {
            "drain_grace = \"100ms\"\nundrain_grace = \"100ms\""
        } else {
            rotation
        },
    ))
    .unwrap()
}

async fn wait_status(
    client: &mut AgentClient<tonic::transport::Channel>,
    what: &str,
    mut ok: impl FnMut(&hotdeploy_common::proto::AgentStatus) -> bool,
) -> hotdeploy_common::proto::AgentStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = client
            .status(AgentStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes `call` with `msg` under a 300 ms deadline that passes mid-operation, as a client that
/// hangs up does, and asserts the client saw it go.
async fn hang_up<M, R: std::fmt::Debug, F>(
    client: &AgentClient<tonic::transport::Channel>,
    msg: M,
    call: impl FnOnce(AgentClient<tonic::transport::Channel>, tonic::Request<M>) -> F,
) where
    F: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let mut req = tonic::Request::new(msg);
    req.set_timeout(Duration::from_millis(300));
    let err = call(client.clone(), req).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
}

/// An agent on `tmp` under a fake coordinator, with the extra `[rotation]` TOML `rotation`.
async fn coordinated_agent(
    tmp: &Path,
    rotation: &str,
) -> (
    crate::testing::coordinator::FakeCoordinator,
    crate::testing::coordinator::ServeGuard,
    Daemon,
    AgentClient<tonic::transport::Channel>,
) {
    let coord = crate::testing::coordinator::FakeCoordinator::default();
    let (addr, guard) = coord.clone().serve().await;
    let top = format!("groups = [\"web\"]\ncoordinators = [\"{addr}\"]");
    let daemon = Daemon::start(config(tmp, free_port(), &top, rotation))
        .await
        .unwrap();
    let client = AgentClient::connect(format!("http://{}", daemon.addr))
        .await
        .unwrap();
    (coord, guard, daemon, client)
}

/// The hold the agent's journal on `tmp` records, read after the agent stopped.
fn journaled_hold(tmp: &Path) -> Option<crate::journal::Hold> {
    crate::journal::Journal::open(&tmp.join("data"), "web-1")
        .unwrap()
        .hold()
        .unwrap()
}

/// Item 13: Drain runs in a task of the engine's own: a client that hangs up (here, its call
/// deadline passes mid-drain) does not cancel it half done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_whose_client_hangs_up_still_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        free_port(),
        "",
        "drain_grace = \"1500ms\"\nundrain_grace = \"100ms\"",
    );
    let daemon = Daemon::start(cfg).await.unwrap();
    let mut client = AgentClient::connect(format!("http://{}", daemon.addr))
        .await
        .unwrap();
    hang_up(
        &client,
        hotdeploy_common::proto::DrainRequest {},
        |mut c, r| async move { c.drain(r).await },
    )
    .await;
    let s = wait_status(&mut client, "the drain to complete", |s| s.rotation == 3).await;
    assert_eq!(s.rotation, 3, "out of rotation");
    // And its hold was journaled: the host stays out until undrained.
    let err = client
        .deploy(DeployRequest {
            release: Some(Release {
                id: "v1".into(),
                artifact_url: "file:///x.tar".into(),
                sha256: "0".repeat(64),
                signature: String::new(),
            }),
            rollout_id: String::new(),
        })
        .await
        .err()
        .unwrap();
    assert!(err.message().contains("undrain it first"), "{err:?}");
    client
        .undrain(hotdeploy_common::proto::UndrainRequest {})
        .await
        .unwrap();
    daemon.shutdown().await;
}

/// Item 13: Undrain runs in a task of the engine's own: a client that hangs up mid-undrain does
/// not cancel it half done. The host is confirmed back in rotation, the hold cleared from the
/// journal, and the slot released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undrain_whose_client_hangs_up_still_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let rotation = "drain_grace = \"100ms\"\nundrain_grace = \"1500ms\"";
    let (coord, _guard, daemon, mut client) = coordinated_agent(tmp.path(), rotation).await;
    let drained = client
        .drain(hotdeploy_common::proto::DrainRequest {})
        .await
        .unwrap()
        .into_inner();
    let token = drained.slot_token;
    assert!(token != 0 && drained.rotation == 3, "{drained:?}");

    hang_up(
        &client,
        hotdeploy_common::proto::UndrainRequest {},
        |mut c, r| async move { c.undrain(r).await },
    )
    .await;
    let s = client
        .status(AgentStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.rotation, 3, "the hang-up came after the undrain: {s:?}");

    let s = wait_status(&mut client, "the undrain to complete", |s| {
        s.rotation == 1 && s.slot_token == 0
    })
    .await;
    assert!(!s.maintenance, "{s:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !coord.state().released.contains(&token) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot {token} was never released: {:?}",
            coord.state().release_calls
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(coord.state().held, None);
    daemon.shutdown().await;
    assert_eq!(journaled_hold(tmp.path()), None, "the journal still holds");
}

/// Item 13: Maintenance runs in a task of the engine's own: a client that hangs up mid-drain
/// does not cancel it half done. The host holds a maintenance slot, is out of rotation, and the
/// journal holds it for maintenance under that slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_whose_client_hangs_up_still_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let rotation = "drain_grace = \"1500ms\"\nundrain_grace = \"100ms\"";
    let (coord, _guard, daemon, mut client) = coordinated_agent(tmp.path(), rotation).await;
    let reason = "kernel update";

    hang_up(
        &client,
        hotdeploy_common::proto::MaintenanceRequest {
            enable: true,
            reason: reason.into(),
        },
        |mut c, r| async move { c.maintenance(r).await },
    )
    .await;
    let s = wait_status(&mut client, "the maintenance drain to complete", |s| {
        s.rotation == 3
    })
    .await;
    assert!(s.maintenance && s.slot_token != 0, "{s:?}");
    let held = coord.state().held.clone().expect("no slot held");
    assert_eq!(
        (held.token, held.purpose.as_str()),
        (s.slot_token, crate::journal::Purpose::Maintenance.wire())
    );
    daemon.shutdown().await;
    let hold = journaled_hold(tmp.path()).expect("the journal holds nothing");
    assert_eq!(
        (hold.kind, hold.token, hold.note.as_str()),
        (crate::journal::HoldKind::Maintenance, s.slot_token, reason)
    );
}

/// Item 16: an unusable `current` link does not keep the agent from starting: it starts,
/// reports the host unhealthy with the reason, refuses deploys until the link is repaired, and
/// takes them again once it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_current_link_is_reported_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("srv");
    std::fs::create_dir_all(root.join("releases")).unwrap();
    std::os::unix::fs::symlink("releases/gone", root.join("current")).unwrap();
    let port = free_port();
    let daemon = Daemon::start(config(tmp.path(), port, "", ""))
        .await
        .expect("the agent did not start with a broken current link");
    let _kill = KillService(daemon.service.clone());
    let mut client = AgentClient::connect(format!("http://{}", daemon.addr))
        .await
        .unwrap();
    let s = client
        .status(AgentStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.health, 3, "unhealthy: {s:?}");
    assert!(s.last_error.contains("current"), "{s:?}");
    let (path, sha) = release(tmp.path(), "v1", false);
    let req = DeployRequest {
        release: Some(Release {
            id: "v1".into(),
            artifact_url: format!("file://{}", path.display()),
            sha256: sha,
            signature: String::new(),
        }),
        rollout_id: String::new(),
    };
    let err = client.deploy(req.clone()).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("current"), "{err:?}");
    // An operator repairs it (here: removes it; the host is unprovisioned).
    std::fs::remove_file(root.join("current")).unwrap();
    // The engine notices the repair (the error goes) and the report task then publishes the
    // health (`unprovisioned`): two steps, which one Status answer may straddle.
    wait_status(
        &mut client,
        "the repair to be noticed: no `current` error, unprovisioned",
        |s| !s.last_error.contains("current") && s.health == 1,
    )
    .await;
    let (o, e, _) = deploy(&mut client, tmp.path(), "v1", false).await;
    assert_eq!(o, Outcome::Succeeded, "{e}");
    assert_eq!(app_version(port).await.as_deref(), Some("v1"));
    let service = daemon.service.clone();
    daemon.shutdown().await;
    service.stop().await.unwrap();
}

/// Item 10: an agent starting (after a reboot: nothing runs) with a deploy in progress whose
/// `current` may not be verified does not start `current` by itself: recovery does, under a
/// fenced restart. Here the slot was revoked meanwhile, so recovery is fenced and nothing is
/// ever started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reboot_current_is_not_started_outside_a_fence() {
    use crate::journal::{DeployKind, DeployRecord, Journal, Phase};
    use crate::store::ReleaseStore;
    use crate::testing::coordinator::FakeCoordinator;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    // What the previous boot left: v1 and v2 staged, `current` swapped to v2, the journal in
    // `verifying` of v1 → v2 under slot 7.
    let store = ReleaseStore::open(&tmp.path().join("srv"), 5).unwrap();
    for v in ["v1", "v2"] {
        let (path, sha) = release(tmp.path(), v, false);
        let spec = crate::artifact::ArtifactSpec {
            url: format!("file://{}", path.display()),
            sha256: sha,
            signature: None,
        };
        let policy = crate::artifact::ArtifactPolicy::new(1 << 30, false, Vec::new());
        crate::artifact::stage(&store, v, &spec, &policy, &|_| {})
            .await
            .unwrap();
    }
    store.set_current("v2").unwrap();
    {
        let j = Journal::open(&tmp.path().join("data"), "web-1").unwrap();
        j.reconciled().unwrap();
        let mut rec = DeployRecord::new(DeployKind::Deploy, "", Some("v1".into()), "v2", 1);
        rec.phase = Phase::Verifying;
        rec.token = 7;
        j.put_deploy(&rec).unwrap();
    }
    // The coordinators revoked slot 7 meanwhile.
    let coord = FakeCoordinator::default();
    let (addr, _guard) = coord.clone().serve().await;
    let top = format!("groups = [\"web\"]\ncoordinators = [\"{addr}\"]");
    let daemon = Daemon::start(config(tmp.path(), port, &top, ""))
        .await
        .unwrap();
    let _kill = KillService(daemon.service.clone());
    assert_eq!(
        daemon.service.child(),
        None,
        "the agent started the unverified current at start"
    );
    let mut client = AgentClient::connect(format!("http://{}", daemon.addr))
        .await
        .unwrap();
    let s = wait_status(&mut client, "recovery to end", |s| s.phase == "idle").await;
    assert_eq!(s.last_outcome, "fenced", "{s:?}");
    assert_eq!(daemon.service.child(), None, "started outside a fence");
    assert_eq!(app_version(port).await, None);
    assert!(coord.state().report_calls > 0, "no restart fence was tried");
    daemon.shutdown().await;
}

/// Item 11: an agent whose journal's child record is unreadable does not start a second copy
/// of a service that still runs: it finds it running from the release store and adopts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_child_record_does_not_start_a_second_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let daemon = Daemon::start(config(tmp.path(), port, "", ""))
        .await
        .unwrap();
    let mut client = AgentClient::connect(format!("http://{}", daemon.addr))
        .await
        .unwrap();
    let (o, e, _) = deploy(&mut client, tmp.path(), "v1", false).await;
    assert_eq!(o, Outcome::Succeeded, "{e}");
    let pid = daemon.service.child().unwrap().pid;
    drop(client);
    daemon.shutdown().await; // the service keeps running
    let kill = scopeguard(pid);
    {
        let j = crate::journal::Journal::open(&tmp.path().join("data"), "web-1").unwrap();
        j.corrupt_child().unwrap();
        assert!(j.child::<crate::service::ChildRecord>().is_err());
    }
    let daemon = Daemon::start(config(tmp.path(), port, "", ""))
        .await
        .unwrap();
    assert_eq!(daemon.service.child().map(|c| c.pid), Some(pid));
    // Adopted, not started afresh: the health it had established stands from the first answer.
    let mut client = AgentClient::connect(format!("http://{}", daemon.addr))
        .await
        .unwrap();
    let s = client
        .status(AgentStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        s.health, 2,
        "an adopted service must not prove itself again: {s:?}"
    );
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let releases = std::fs::canonicalize(tmp.path().join("srv/releases")).unwrap();
    let copies: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|c| c.starts_with(&releases))
                && std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .is_ok_and(|s| !s.contains(") Z "))
        })
        .collect();
    assert_eq!(copies, vec![pid], "a second copy was started");
    assert_eq!(app_version(port).await.as_deref(), Some("v1"));
    daemon.service.stop().await.unwrap();
    daemon.shutdown().await;
    drop(kill);
}

/// SIGKILLs process group `pid` when dropped, whatever happens to the test, if that process is
/// still the one it was (same start time).
fn scopeguard(pid: i32) -> impl Drop {
    fn start_time(pid: i32) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(19).map(str::to_owned)
    }
    struct Kill(i32, Option<String>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if self.1.is_some() && start_time(self.0) == self.1 {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(self.0),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    Kill(pid, start_time(pid))
}

/// The reported health is the monitor's fact with the engine's overrides on top
/// (`health::reported`): a host a deploy left under a `verify_failed` hold reports `unhealthy`
/// however well the probes go, until the hold ends; then the probes decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_failed_hold_is_unhealthy_whatever_the_probes_say() {
    use crate::journal::{Hold, HoldKind, Journal, Purpose};
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let top = "[health]\ninterval = \"100ms\"\nunhealthy_after = 1\nhealthy_after = 1";
    let daemon = Daemon::start(config(tmp.path(), port, top, ""))
        .await
        .unwrap();
    let mut client = AgentClient::connect(format!("http://{}", daemon.addr))
        .await
        .unwrap();
    let (o, e, _) = deploy(&mut client, tmp.path(), "v1", false).await;
    assert_eq!(o, Outcome::Succeeded, "{e}");
    let pid = daemon.service.child().unwrap().pid;
    drop(client);
    daemon.shutdown().await; // the service keeps running
    let kill = scopeguard(pid);
    {
        // What a deploy whose rollback also failed verify leaves (standalone: no token).
        let j = Journal::open(&tmp.path().join("data"), "web-1").unwrap();
        j.set_hold(Some(&Hold {
            kind: HoldKind::VerifyFailed,
            purpose: Purpose::Deploy,
            token: 0,
            note: "deploy of v2 did not end in rotation (verify_failed)".into(),
            since_ms: 1,
        }))
        .unwrap();
    }
    let daemon = Daemon::start(config(tmp.path(), port, top, ""))
        .await
        .unwrap();
    assert_eq!(daemon.service.child().map(|c| c.pid), Some(pid));
    let mut client = AgentClient::connect(format!("http://{}", daemon.addr))
        .await
        .unwrap();
    // The probes pass every 100 ms (one round would bring the fact back): the host still
    // reports unhealthy, from its first answer on. Watched for 1.5 s and at least 10 answers,
    // however long those take on a loaded machine.
    let t0 = tokio::time::Instant::now();
    let mut samples = 0;
    while samples < 10 || t0.elapsed() < Duration::from_millis(1500) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "only {samples} Status answers in 60 s"
        );
        let s = client
            .status(AgentStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.health, 3, "a verify_failed host reported {s:?}");
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app_version(port).await.as_deref(),
        Some("v1"),
        "the app answers"
    );
    // The operator ends the hold: now the probes say how the service is.
    client
        .undrain(hotdeploy_common::proto::UndrainRequest {})
        .await
        .unwrap();
    let s = wait_status(&mut client, "the probes to be believed", |s| s.health == 2).await;
    assert_eq!(s.rotation, 1, "back in rotation: {s:?}");
    daemon.service.stop().await.unwrap();
    daemon.shutdown().await;
    drop(kill);
}
