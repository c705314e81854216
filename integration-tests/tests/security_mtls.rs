//! mTLS and signed releases end to end (DESIGN §7), with certificates made by
//! `hotdeployctl certs init` and keys made by `hotdeployctl release keygen`.
//!
//! - **A fleet over mTLS:** a 3-node coordinator cluster (Raft peer streams over mTLS, each
//!   node dialling its peers with its own coordinator certificate) and agent `web-1` form and
//!   work: `status`, registration, and a deploy that takes its slot under the lock.
//! - **Refusals:** a client with no certificate, a plaintext client, a certificate from another
//!   CA and an expired certificate are refused at the handshake; the agent certificate of
//!   `web-1` may not acquire a slot for `web-2`, change a budget, force-release a slot or
//!   remove a host (PERMISSION_DENIED); the operator certificate may make every admin call, but
//!   may not register or heartbeat as a host; `ClusterInfo` answers coordinators only; an
//!   over-long write `client_id` is refused, not cut.
//! - **Signed releases:** with `require_signature = true`, an unsigned artifact and one signed
//!   with an untrusted key fail and swap nothing; a correctly signed one deploys.

mod agent_support;
mod pki_support;

use agent_support::*;
use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
use hotdeploy_common::proto::raft_peer_client::RaftPeerClient;
use hotdeploy_common::proto::{
    AcquireSlotRequest, ClusterInfoRequest, HeartbeatRequest, RegisterRequest, StatusRequest,
    WriteId,
};
use hotdeploy_common::tls_pki::{Subject, Validity};
use hotdeploy_integration_tests::agents::AgentProc;
use hotdeploy_integration_tests::cluster::{Cluster, ClusterOpts, CtlAuth};
use hotdeploy_integration_tests::coord_client::healthy_report;
use hotdeploy_integration_tests::net;
use hotdeploy_integration_tests::pack::{self, ArtifactFormat};
use pki_support::{ctl_local, ctl_local_ok};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Asserts that a hotdeployctl run failed with PERMISSION_DENIED.
fn assert_denied(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("PermissionDenied"),
        "{what} must be refused with PERMISSION_DENIED: {}",
        show(out)
    );
}

/// Asserts that a hotdeployctl run was refused (any failure), and says why in the message.
fn assert_refused(what: &str, out: &Output) {
    assert!(
        !out.status.success(),
        "{what} must be refused: {}",
        show(out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "{what}: refused without a message"
    );
    eprintln!(
        "{what}: refused as expected: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A `Status` call over TLS that trusts `ca` and presents `identity` (cert, key files), or no
/// client certificate. The error is the status with its whole source chain (the TLS reason).
fn raw_status(addr: SocketAddr, ca: &Path, identity: Option<(&Path, &Path)>) -> Result<(), String> {
    raw_call(addr, ca, identity, |channel| async move {
        CoordinatorClient::new(channel)
            .status(StatusRequest {})
            .await
            .map(|_| ())
    })
    .map_err(|(code, e)| format!("{code:?}: {e}"))
}

/// One call over TLS (see [`raw_status`]); the error is the status code and its source chain.
fn raw_call<T, F, Fut>(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    call: F,
) -> Result<T, (tonic::Code, String)>
where
    F: FnOnce(tonic::transport::Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (tonic::Code::Unknown, e.to_string()))?;
    let local = |e: String| (tonic::Code::Unknown, e);
    let read = |p: &Path| std::fs::read(p).map_err(|e| local(format!("{}: {e}", p.display())));
    rt.block_on(async {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        if let Some((cert, key)) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| local(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .tls_config(tls)
            .map_err(|e| local(e.to_string()))?
            .connect()
            .await
            .map_err(|e| local(chain(&e)))?;
        call(channel).await.map_err(|s| (s.code(), chain(&s)))
    })
}

/// Asserts that a raw call was refused with `code`.
fn assert_code<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, (tonic::Code, String)>,
    code: tonic::Code,
) {
    match result {
        Err((c, e)) if c == code => eprintln!("{what}: refused as expected: {e}"),
        other => panic!("{what} must be refused with {code:?}, got {other:?}"),
    }
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    text
}

/// Asserts that a raw TLS call was refused. Under TLS 1.3 the server checks the client
/// certificate after the client considers the handshake done, and its alert reaches tonic as a
/// closed connection, so the reason cannot be asserted from the client side; the same call with
/// the operator certificate is the control that it is the certificate being refused.
fn assert_tls_refused(what: &str, result: Result<(), String>) {
    match result {
        Ok(()) => panic!("{what} must be refused"),
        Err(e) => eprintln!("{what}: refused as expected: {e}"),
    }
}

/// Asserts that a deploy failed because of its signature.
fn assert_signature_refused(what: &str, out: &Output) {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && text.to_ascii_lowercase().contains("signature"),
        "{what} must fail on its signature: {}",
        show(out)
    );
    let why = text
        .lines()
        .find(|l| l.to_ascii_lowercase().contains("signature"))
        .unwrap_or("");
    eprintln!("{what}: refused as expected: {}", why.trim());
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn certs_init_writes_the_pki_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path().join("pki");
    let d = dir.to_string_lossy().into_owned();
    ctl_local_ok(&[
        "certs",
        "init",
        &d,
        "--coordinator",
        "1@127.0.0.1",
        "--coordinator",
        "2@coord-2.example",
        "--agent",
        "web-1@127.0.0.9",
        "--agent",
        "web-2",
    ]);
    for f in [
        "ca-key.pem",
        "coordinator-1-key.pem",
        "coordinator-2-key.pem",
        "agent-web-1-key.pem",
        "agent-web-2-key.pem",
        "operator-key.pem",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f} must be mode 0600");
    }
    for f in [
        "ca.pem",
        "coordinator-1.pem",
        "coordinator-2.pem",
        "agent-web-1.pem",
        "agent-web-2.pem",
        "operator.pem",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let before = std::fs::read(dir.join("ca.pem")).unwrap_or_else(|e| panic!("{e}"));
    let out = ctl_local(&["certs", "init", &d, "--agent", "web-3", "--agent", "web-1"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to overwrite") && stderr.contains("agent-web-1.pem"),
        "{stderr}"
    );
    assert!(
        !dir.join("agent-web-3.pem").exists(),
        "a refused init wrote files"
    );
    // The existing CA issues a later host; it is not replaced.
    ctl_local_ok(&["certs", "init", &d, "--agent", "web-3"]);
    assert!(dir.join("agent-web-3.pem").is_file());
    assert_eq!(
        std::fs::read(dir.join("ca.pem")).unwrap_or_else(|e| panic!("{e}")),
        before
    );
    let bad = ctl_local(&["certs", "init", &d, "--coordinator", "one@127.0.0.1"]);
    assert_eq!(bad.status.code(), Some(1), "{}", show(&bad));
}

#[test]
fn mtls_fleet_works_and_refuses_what_it_must() {
    let deadline = Deadline::new("mtls fleet", Duration::from_secs(240));
    let tmp = tempfile::Builder::new()
        .prefix("hd-mtls-")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    let pki = tmp.path().join("pki");
    let coord_ips = net::alloc_ips(3);
    let agent_ips = net::alloc_ips(1);
    pki_support::init_fleet(
        &pki,
        &coord_ips,
        &[format!("web-1@{}", agent_ips[0]), "web-2".into()],
    );
    // Another CA, with its own operator certificate.
    let other = tmp.path().join("other-pki");
    ctl_local_ok(&["certs", "init", &other.display().to_string()]);
    // An expired operator certificate from the right CA.
    pki_support::issue(
        &pki,
        &Subject::operator("late").unwrap_or_else(|e| panic!("{e}")),
        Validity {
            not_before_days: -30,
            not_after_days: -1,
        },
        "expired.pem",
        "expired-key.pem",
    );

    let opts = ClusterOpts {
        tls: Some(pki.clone()),
        ips: Some(coord_ips.clone()),
        ..ClusterOpts::default()
    };
    let cluster = Cluster::start(3, &[("web", "1")], opts);
    // A leader that every node agrees on: the peer streams work over mTLS.
    let leader = cluster.wait_leader(deadline.bound(Duration::from_secs(40)), None);
    let status = cluster.ctl_json(&["status"]);
    assert_eq!(status["leader"].as_u64(), Some(leader), "{status}");
    let members = status["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 3, "{status}");
    for id in cluster.ids() {
        let s = cluster
            .status_of(id)
            .unwrap_or_else(|e| panic!("node {id}: {e}"));
        assert_eq!(s["leader"].as_u64(), Some(leader), "node {id}: {s}");
    }

    // The agent registers with its own certificate.
    let mut o = fast_opts("web-1", agent_ips[0], cluster.coordinator_addrs());
    o.tls = Some(pki.clone());
    let agent = AgentProc::start(o);
    wait_for(
        &deadline,
        Duration::from_secs(20),
        "web-1 registered",
        || host_entry(&cluster, "web-1"),
        || format!("{}\n{}", agent.log_tail(), cluster.all_logs()),
    );

    // A first deploy provisions the host; the next one takes its slot under the lock.
    let rels = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let v1 = release(rels.path(), "v1", false);
    let v2 = release(rels.path(), "v2", false);
    deploy_ok(&agent, &v1);
    wait_settled(&deadline, &agent, Some("v1"), Duration::from_secs(20));
    // web-1 is the group's only host.
    cluster.ctl_json(&["groups", "set", "web", "--allow-zero-available", "true"]);
    let seen_slot = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let out = std::thread::scope(|scope| {
        let (seen, stop2) = (seen_slot.clone(), stop.clone());
        let cluster_ref = &cluster;
        scope.spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(l) = locks(cluster_ref) {
                    if l.iter()
                        .any(|s| s["host"] == "web-1" && s["purpose"] == "deploy")
                    {
                        seen.store(true, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let out = deploy(&agent, &v2);
        stop.store(true, Ordering::Relaxed);
        out
    });
    assert!(
        out.status.success(),
        "deploy over mTLS: {}\n{}",
        show(&out),
        agent.log_tail()
    );
    assert!(
        seen_slot.load(Ordering::Relaxed),
        "the deploy never showed a deploy slot"
    );
    assert_eq!(agent.app_version().as_deref(), Some("v2"));
    wait_for(
        &deadline,
        Duration::from_secs(15),
        "web-1 on v2, slot released",
        || {
            let h = host_entry(&cluster, "web-1")?;
            let free = locks(&cluster)?.is_empty();
            if h["release"] == "v2" && free {
                Ok(())
            } else {
                Err(format!("{h}, locks free: {free}"))
            }
        },
        || cluster.all_logs(),
    );

    // Refused at the handshake.
    let addr = cluster.addr(leader);
    let ca = pki.join("ca.pem");
    assert_tls_refused(
        "a client without a certificate",
        raw_status(addr, &ca, None),
    );
    assert_tls_refused(
        "a certificate from another CA (raw)",
        raw_status(
            addr,
            &ca,
            Some((&other.join("operator.pem"), &other.join("operator-key.pem"))),
        ),
    );
    assert_tls_refused(
        "an expired certificate (raw)",
        raw_status(
            addr,
            &ca,
            Some((&pki.join("expired.pem"), &pki.join("expired-key.pem"))),
        ),
    );
    raw_status(
        addr,
        &ca,
        Some((&pki.join("operator.pem"), &pki.join("operator-key.pem"))),
    )
    .unwrap_or_else(|e| panic!("the operator certificate over the raw client: {e}"));
    assert_refused(
        "a plaintext client",
        &cluster.ctl_as(&CtlAuth::Insecure, &["status"]),
    );
    let other_ca = CtlAuth::Tls {
        ca: pki.join("ca.pem"),
        cert: other.join("operator.pem"),
        key: other.join("operator-key.pem"),
    };
    assert_refused(
        "a certificate from another CA",
        &cluster.ctl_as(&other_ca, &["status"]),
    );
    let expired = CtlAuth::files(&pki, "expired.pem", "expired-key.pem");
    assert_refused(
        "an expired certificate",
        &cluster.ctl_as(&expired, &["status"]),
    );

    // The agent certificate of web-1 acts only as web-1.
    let web1 = CtlAuth::files(&pki, "agent-web-1.pem", "agent-web-1-key.pem");
    assert_denied(
        "web-1 acquiring a slot for web-2",
        &cluster.ctl_as(&web1, &["locks", "acquire", "web-2", "--reason", "x"]),
    );
    assert_denied(
        "web-1 changing a budget",
        &cluster.ctl_as(&web1, &["groups", "set", "web", "--max-unavailable", "3"]),
    );
    assert_denied(
        "web-1 force-releasing a slot",
        &cluster.ctl_as(&web1, &["locks", "release", "web-1", "--force"]),
    );
    assert_denied(
        "web-1 removing a host",
        &cluster.ctl_as(&web1, &["hosts", "remove", "web-2", "--force"]),
    );
    assert_denied(
        "web-1 reading the status",
        &cluster.ctl_as(&web1, &["status"]),
    );
    // The agent's local API belongs to operators: an agent certificate (even the host's own)
    // may neither read nor drive it.
    assert_denied(
        "an agent certificate draining an agent",
        &agent.ctl_as(&web1, &["drain"]),
    );
    assert_denied(
        "an agent certificate reading an agent's status",
        &agent.ctl_as(&web1, &["status"]),
    );
    // One exception: RunMaintenance also takes the host's own agent certificate, which is what
    // `hotdeploy-agent maint` presents (from the daemon's own config); never another host's. (v1
    // and v2 are installed by now, so the run goes all the way: slot, drain, `true`, verify,
    // undrain, release.)
    let web2 = CtlAuth::files(&pki, "agent-web-2.pem", "agent-web-2-key.pem");
    assert_denied(
        "web-2's certificate running maintenance on web-1",
        &agent.ctl_as(&web2, &["maint", "--reason", "x", "--", "true"]),
    );
    let mut local = std::process::Command::new(hotdeploy_integration_tests::bins::agent());
    local
        .arg("maint")
        .arg("--config")
        .arg(agent.dir().join("agent.toml"))
        .args(["--reason", "x", "--", "true"]);
    let own = hotdeploy_integration_tests::proc::run_with_timeout(local, Duration::from_secs(30));
    assert!(
        own.status.success()
            && String::from_utf8_lossy(&own.stdout).contains("maintenance succeeded"),
        "`hotdeploy-agent maint` with web-1's own certificate (from the daemon's config) must be \
         let through, and its maintenance run: {}",
        show(&own)
    );
    wait_for(
        &deadline,
        Duration::from_secs(15),
        "the maintenance slot to be released",
        || match cluster.try_ctl_json(&["locks", "list"]) {
            Ok(v) if v.as_array().is_some_and(|a| a.is_empty()) => Ok(()),
            Ok(v) => Err(format!("locks list: {v}")),
            Err(e) => Err(e),
        },
        || agent.log_tail(),
    );
    let st = agent.ctl_as(&cluster.ctl_auth(), &["-o", "json", "status"]);
    assert!(st.status.success(), "operator agent status: {}", show(&st));
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("in_rotation"),
        "a refused drain took effect: {}",
        show(&st)
    );
    // `max_unavailable` is shown as given (a string: "1", "25%"), `budget` as the integer.
    let groups = cluster.ctl_json(&["groups", "list"]);
    let web = groups
        .as_array()
        .and_then(|all| all.iter().find(|g| g["name"] == "web"))
        .unwrap_or_else(|| panic!("no group web in {groups}"));
    assert_eq!(
        (web["max_unavailable"].as_str(), web["budget"].as_u64()),
        (Some("1"), Some(1)),
        "a refused budget change took effect: {web}"
    );

    // Only a host's own agent may be that host: an operator may not register it or heartbeat
    // for it (it could make a down host look healthy and free budget it still uses).
    let leader = cluster.wait_leader(deadline.bound(Duration::from_secs(20)), None);
    let addr = cluster.addr(leader);
    let operator_id = (pki.join("operator.pem"), pki.join("operator-key.pem"));
    let operator_id = Some((operator_id.0.as_path(), operator_id.1.as_path()));
    assert_code(
        "an operator registering web-1",
        raw_call(addr, &ca, operator_id, |ch| async move {
            CoordinatorClient::new(ch)
                .register(RegisterRequest {
                    host: "web-1".into(),
                    groups: vec!["web".into()],
                    address: "127.0.0.1:1".into(),
                    report: Some(healthy_report("v2")),
                    write: None,
                })
                .await
        }),
        tonic::Code::PermissionDenied,
    );
    assert_code(
        "an operator heartbeating as web-1",
        raw_call(addr, &ca, operator_id, |ch| async move {
            let beat = HeartbeatRequest {
                host: "web-1".into(),
                report: Some(healthy_report("v2")),
            };
            let mut answers = CoordinatorClient::new(ch)
                .heartbeat(tokio_stream::iter(vec![beat]))
                .await?
                .into_inner();
            answers
                .message()
                .await
                .and_then(|m| m.ok_or_else(|| tonic::Status::ok("no answer")))
        }),
        tonic::Code::PermissionDenied,
    );
    // ClusterInfo (what a blank node asks before it bootstraps) answers coordinators only.
    let web1_id = (pki.join("agent-web-1.pem"), pki.join("agent-web-1-key.pem"));
    for (what, who) in [
        ("an operator asking ClusterInfo", operator_id),
        (
            "an agent asking ClusterInfo",
            Some((web1_id.0.as_path(), web1_id.1.as_path())),
        ),
    ] {
        assert_code(
            what,
            raw_call(addr, &ca, who, |ch| async move {
                RaftPeerClient::new(ch)
                    .cluster_info(ClusterInfoRequest { from: 9 })
                    .await
            }),
            tonic::Code::PermissionDenied,
        );
    }
    let coord_id = (
        pki.join(format!("coordinator-{leader}.pem")),
        pki.join(format!("coordinator-{leader}-key.pem")),
    );
    let info = raw_call(
        addr,
        &ca,
        Some((coord_id.0.as_path(), coord_id.1.as_path())),
        |ch| async move {
            RaftPeerClient::new(ch)
                .cluster_info(ClusterInfoRequest { from: leader })
                .await
        },
    )
    .unwrap_or_else(|e| panic!("a coordinator asking ClusterInfo: {e:?}"))
    .into_inner();
    assert_ne!(info.cluster_id, 0);
    assert_eq!(info.members.len(), 3, "{info:?}");
    // An over-long client id is refused, not cut (cutting would merge distinct sessions).
    assert_code(
        "an over-long write client_id",
        raw_call(
            addr,
            &ca,
            Some((web1_id.0.as_path(), web1_id.1.as_path())),
            |ch| async move {
                CoordinatorClient::new(ch)
                    .acquire_slot(AcquireSlotRequest {
                        host: "web-1".into(),
                        purpose: "maintenance".into(),
                        reason: "x".into(),
                        write: Some(WriteId {
                            client_id: format!("agent/web-1/{}", "x".repeat(200)),
                            seq: 1,
                        }),
                        ..Default::default()
                    })
                    .await
            },
        ),
        tonic::Code::InvalidArgument,
    );
    assert!(
        locks(&cluster).unwrap_or_else(|e| panic!("{e}")).is_empty(),
        "a refused acquire took a slot"
    );

    // The operator certificate may make every admin call.
    let op = cluster.ctl_auth();
    for args in [
        vec!["status"],
        vec!["members", "list"],
        vec!["hosts", "list"],
        vec!["hosts", "show", "web-1"],
        vec!["groups", "list"],
        vec!["groups", "set", "web", "--max-unavailable", "2"],
        vec!["groups", "set", "web", "--max-unavailable", "1"],
        vec!["locks", "list"],
        vec!["locks", "acquire", "web-1", "--reason", "maintenance"],
        vec!["locks", "release", "web-1", "--force"],
    ] {
        let out = cluster.ctl_as(&op, &args);
        assert!(
            out.status.success(),
            "operator: {}: {}",
            args.join(" "),
            show(&out)
        );
    }
    // A host that is not registered: refused for what it is, not for who asks.
    let out = cluster.ctl_as(&op, &["hosts", "remove", "web-2", "--force"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"),
        "operator hosts remove: {}",
        show(&out)
    );

    // Every operator action above is in the replicated audit trail, with the identity of the
    // certificate that asked; the refused calls of web-1 are not. An agent may not read it.
    let audit = cluster.ctl_as(&op, &["-o", "json", "audit", "list"]);
    assert!(audit.status.success(), "audit list: {}", show(&audit));
    let events: serde_json::Value =
        serde_json::from_slice(&audit.stdout).unwrap_or_else(|e| panic!("audit JSON: {e}"));
    let events = events.as_array().cloned().unwrap_or_default();
    let by = |action: &str| {
        events
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["actor"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        events.iter().any(|e| e["action"] == "set_group_policy"
            && e["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("max_unavailable 1 -> 2")),
        "{events:?}"
    );
    assert!(
        by("set_group_policy")
            .iter()
            .all(|a| a.starts_with("operator/")),
        "{events:?}"
    );
    assert!(
        by("force_release")
            .iter()
            .all(|a| a.starts_with("operator/")),
        "{events:?}"
    );
    assert!(!by("force_release").is_empty(), "{events:?}");
    assert!(
        events.iter().all(|e| !e["actor"]
            .as_str()
            .unwrap_or_default()
            .starts_with("agent/")),
        "a refused call left an audit event: {events:?}"
    );
    assert_denied(
        "web-1 reading the audit trail",
        &cluster.ctl_as(&web1, &["audit", "list"]),
    );
    deadline.finish();
}

#[test]
fn signed_releases_are_required_and_checked() {
    let deadline = Deadline::new("signed releases", Duration::from_secs(180));
    let tmp = tempfile::Builder::new()
        .prefix("hd-signed-")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    let ip = net::alloc_ips(1)[0];
    let pki = tmp.path().join("pki");
    ctl_local_ok(&[
        "certs",
        "init",
        &pki.display().to_string(),
        "--agent",
        &format!("web-1@{ip}"),
    ]);
    let trusted = tmp.path().join("trusted");
    let untrusted = tmp.path().join("untrusted");
    for dir in [&trusted, &untrusted] {
        ctl_local_ok(&["release", "keygen", &dir.display().to_string()]);
        assert_eq!(mode(&dir.join("release-signing.key")), 0o600);
    }
    let out = ctl_local(&["release", "keygen", &trusted.display().to_string()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a second keygen must refuse: {}",
        show(&out)
    );

    let rels = tmp.path().join("rels");
    std::fs::create_dir_all(&rels).unwrap_or_else(|e| panic!("{e}"));
    let build = |id: &str| -> (PathBuf, Rel) {
        let (path, sha256) = pack::make_sample_release(&rels, id, false, ArtifactFormat::TarGz)
            .unwrap_or_else(|e| panic!("building {id}: {e:#}"));
        let rel = Rel {
            id: id.to_string(),
            url: format!("file://{}", path.display()),
            sha256,
        };
        (path, rel)
    };
    let (v1_path, v1) = build("v1");
    let (v2_path, v2) = build("v2");
    let sign = |artifact: &Path, key_dir: &Path, out: &Path| {
        let printed = ctl_local_ok(&[
            "release",
            "sign",
            &artifact.display().to_string(),
            "--key",
            &key_dir.join("release-signing.key").display().to_string(),
            "--out",
            &out.display().to_string(),
        ]);
        let written = std::fs::read_to_string(out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(printed.trim(), written.trim());
    };
    let v1_good = tmp.path().join("v1.sig");
    let v1_bad = tmp.path().join("v1.untrusted.sig");
    sign(&v1_path, &trusted, &v1_good);
    sign(&v1_path, &untrusted, &v1_bad);
    let v2_bad = tmp.path().join("v2.untrusted.sig");
    sign(&v2_path, &untrusted, &v2_bad);

    let mut o = fast_opts("web-1", ip, Vec::new());
    o.tls = Some(pki.clone());
    o.extra = hotdeploy_integration_tests::toml_config::table(&format!(
        "[artifact]\nrequire_signature = true\ntrusted_keys = [{:?}]\n",
        trusted.join("release-signing.pub").display().to_string()
    ));
    let agent = AgentProc::start(o);
    let deploy_signed = |rel: &Rel, sig: Option<&Path>| {
        let mut args = vec![
            "deploy".to_string(),
            "--release".into(),
            rel.id.clone(),
            "--artifact".into(),
            rel.url.clone(),
            "--sha256".into(),
            rel.sha256.clone(),
        ];
        if let Some(sig) = sig {
            args.push("--signature".into());
            args.push(sig.display().to_string());
        }
        agent.ctl(&args)
    };

    let out = deploy_signed(&v1, None);
    assert_signature_refused("an unsigned artifact", &out);
    assert!(
        agent.current_target().is_none(),
        "an unsigned deploy swapped"
    );
    let out = deploy_signed(&v1, Some(&v1_bad));
    assert_signature_refused("an artifact signed with an untrusted key", &out);
    assert!(agent.current_target().is_none(), "a refused deploy swapped");

    let out = deploy_signed(&v1, Some(&v1_good));
    assert!(
        out.status.success(),
        "a correctly signed deploy: {}\n{}",
        show(&out),
        agent.log_tail()
    );
    wait_settled(&deadline, &agent, Some("v1"), Duration::from_secs(20));
    assert_eq!(assert_current_is_complete(&agent), "v1");

    // Later bad releases leave v1 in place.
    assert_signature_refused("v2 unsigned", &deploy_signed(&v2, None));
    assert_signature_refused("v2 untrusted", &deploy_signed(&v2, Some(&v2_bad)));
    assert_eq!(assert_current_is_complete(&agent), "v1");
    assert_eq!(agent.app_version().as_deref(), Some("v1"));
    // v1's signature does not sign v2.
    assert_signature_refused(
        "v2 with v1's signature",
        &deploy_signed(&v2, Some(&v1_good)),
    );
    assert_eq!(assert_current_is_complete(&agent), "v1");
    deadline.finish();
}
