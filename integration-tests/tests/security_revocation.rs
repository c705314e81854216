//! Revocation, certificate rotation, peer impersonation and listener limits (DESIGN §7), on
//! real processes with certificates made by `hotdeployctl certs init` and a CRL made by
//! `hotdeployctl certs revoke`.
//!
//! - **Coordinators:** a 3-node cluster with `[tls] crl`. A revoked operator certificate is
//!   refused at the handshake, and the node's log names the reason. Revoking a second one takes
//!   effect at SIGHUP, not before. A node whose certificate is replaced and who gets SIGHUP
//!   keeps its open connections (a channel made before goes on working, on the same TCP
//!   connection) and presents the new certificate to new ones. A peer stream that claims
//!   another node's id, or comes from an operator, is refused. The operator adds and removes a
//!   member over mTLS.
//! - **Agent:** its listener honours the CRL too, and closes connections past
//!   `[limits] max_connections` until some go away.

mod agent_support;
mod pki_support;

use agent_support::*;
use hotdeploy_common::proto::coordinator_client::CoordinatorClient;
use hotdeploy_common::proto::raft_peer_client::RaftPeerClient;
use hotdeploy_common::proto::{PeerFrame, StatusRequest};
use hotdeploy_common::tls_pki::{Subject, Validity};
use hotdeploy_integration_tests::agents::AgentProc;
use hotdeploy_integration_tests::cluster::{Cluster, ClusterOpts, CtlAuth};
use hotdeploy_integration_tests::net;
use nix::sys::signal::Signal;
use pki_support::ctl_local_ok;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Issues an operator certificate `NAME.pem` + `NAME-key.pem` from `dir`'s CA (`certs init`
/// writes one operator certificate per directory; a second identity needs the library).
fn issue_operator(dir: &Path, name: &str) -> CtlAuth {
    let subject = Subject::operator(name).unwrap_or_else(|e| panic!("{e}"));
    let (cert_file, key_file) = (format!("{name}.pem"), format!("{name}-key.pem"));
    pki_support::issue(dir, &subject, Validity::days(30), &cert_file, &key_file);
    CtlAuth::files(dir, &cert_file, &key_file)
}

/// Replaces coordinator `id`'s certificate and key with fresh ones from the same CA.
fn reissue_coordinator(dir: &Path, id: u64, ip: std::net::Ipv4Addr) -> Vec<u8> {
    let subject = Subject::coordinator(&format!("{id}@{ip}")).unwrap_or_else(|e| panic!("{e}"));
    let (cert_file, key_file) = subject.file_names();
    // Issued beside, then renamed over: the daemon never reads half a file.
    let (new_cert, new_key) = (format!("{cert_file}.new"), format!("{key_file}.new"));
    pki_support::issue(dir, &subject, Validity::days(30), &new_cert, &new_key);
    for (from, to) in [(&new_key, &key_file), (&new_cert, &cert_file)] {
        std::fs::rename(dir.join(from), dir.join(to)).unwrap_or_else(|e| panic!("{e}"));
    }
    der_of(&dir.join(cert_file))
}

fn der_of(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem)
        .unwrap_or_else(|e| panic!("{}: {e}", pem.display()))
        .to_vec()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn client_tls(dir: &Path, cert: &str, key: &str) -> ClientTlsConfig {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(read(cert), read(key)))
}

/// A channel to `addr` as the operator whose connector counts the TCP connections it opens.
async fn counting_channel(addr: SocketAddr, dir: &Path, opened: Arc<AtomicUsize>) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .tls_config(client_tls(dir, "operator.pem", "operator-key.pem"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let opened = opened.clone();
            async move {
                opened.fetch_add(1, Ordering::SeqCst);
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tcp))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// The certificate that `addr` presents to a new TLS connection (as the operator).
async fn served_certificate(addr: SocketAddr, dir: &Path) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let chain =
        vec![CertificateDer::from_pem_file(dir.join("operator.pem"))
            .unwrap_or_else(|e| panic!("{e}"))];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("operator-key.pem"))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap_or_else(|e| panic!("{e}"))
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap_or_else(|e| panic!("{e}"));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{addr}: {e}"));
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS to {addr}: {e}"));
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .unwrap_or_else(|| panic!("{addr} presented no certificate"))
        .to_vec()
}

/// One `Send` stream to `addr` as `cert`, carrying a frame that claims to come from `from`.
async fn peer_frame_as(
    addr: SocketAddr,
    dir: &Path,
    cert: &str,
    key: &str,
    from: u64,
) -> tonic::Status {
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .timeout(Duration::from_secs(5))
        .tls_config(client_tls(dir, cert, key))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let frame = PeerFrame {
        cluster_id: 0,
        from,
        from_address: "127.0.0.1:1".into(),
        message: Vec::new(),
        format_version: 0,
    };
    match RaftPeerClient::new(channel)
        .send(tokio_stream::once(frame))
        .await
    {
        Ok(_) => panic!("a peer frame as {from} from {cert} was accepted"),
        Err(s) => s,
    }
}

/// Waits up to 5 s until `log()` contains every one of `needles`.
fn wait_for_log(deadline: &Deadline, what: &str, needles: &[&str], log: impl Fn() -> String) {
    wait_for(
        deadline,
        Duration::from_secs(5),
        what,
        || {
            let text = log();
            match needles.iter().find(|n| !text.contains(**n)) {
                None => Ok(()),
                Some(n) => Err(format!("no {n:?} in the log yet")),
            }
        },
        &log,
    );
}

/// `Err` if the call worked, with the output; `Ok` with stderr if it was refused.
fn refused(out: &Output) -> Result<String, String> {
    if out.status.success() {
        Err(format!("accepted: {}", show(out)))
    } else {
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn coordinators_honour_the_crl_and_rotate_certificates_on_sighup() {
    let deadline = Deadline::new("coordinator revocation", Duration::from_secs(200));
    let tmp = tempfile::Builder::new()
        .prefix("hd-revoke-")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    let pki = tmp.path().join("pki");
    let ips = net::alloc_ips(4);
    pki_support::init_fleet(&pki, &ips, &[]);
    let mallory = issue_operator(&pki, "mallory");
    let alice = issue_operator(&pki, "alice");
    let revoke = |name: &str| {
        let out = ctl_local_ok(&[
            "-o",
            "json",
            "certs",
            "revoke",
            &pki.display().to_string(),
            &pki.join(format!("{name}.pem")).display().to_string(),
        ]);
        let j: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(j["revoked"].as_array().map(Vec::len), Some(1), "{j}");
        j
    };
    assert_eq!(revoke("mallory")["total"], 1);

    let opts = ClusterOpts {
        tls: Some(pki.clone()),
        crl: Some(pki.join(tls_pki_crl())),
        ips: Some(ips.clone()),
        ..ClusterOpts::default()
    };
    let mut cluster = Cluster::start(3, &[("web", "1")], opts);
    let leader = cluster.wait_leader(deadline.bound(Duration::from_secs(40)), None);

    // The CRL at start: mallory is refused, and the node says why; alice is let in.
    let why = refused(&cluster.ctl_as(&mallory, &["status"]))
        .unwrap_or_else(|e| panic!("a revoked certificate: {e}"));
    eprintln!("revoked certificate refused as expected: {}", why.trim());
    wait_for_log(
        &deadline,
        "the refusal of a revoked certificate in a node's log",
        &["TLS handshake refused", "Revoked"],
        || cluster.all_logs(),
    );
    let ok = cluster.ctl_as(&alice, &["status"]);
    assert!(
        ok.status.success(),
        "alice before her revocation: {}",
        show(&ok)
    );

    // A revocation takes effect at SIGHUP, not before; the nodes keep running and serving.
    assert_eq!(revoke("alice")["total"], 2);
    let ok = cluster.ctl_as(&alice, &["status"]);
    assert!(
        ok.status.success(),
        "alice before the SIGHUP: {}",
        show(&ok)
    );
    for id in cluster.ids() {
        cluster.stop_signal(id, Signal::SIGHUP);
    }
    wait_for(
        &deadline,
        Duration::from_secs(10),
        "alice to be refused after SIGHUP",
        || refused(&cluster.ctl_as(&alice, &["status"])),
        || cluster.all_logs(),
    );
    for id in cluster.ids() {
        assert!(cluster.is_running(id), "node {id} did not survive SIGHUP");
    }
    let status = cluster.ctl_json(&["status"]);
    assert_eq!(status["leader"].as_u64(), Some(leader), "{status}");

    // Rotation: a connection made before keeps working on the same TCP connection; a new one
    // sees the new certificate.
    let rt = runtime();
    let addr = cluster.addr(leader);
    let opened = Arc::new(AtomicUsize::new(0));
    let old_der = der_of(&pki.join(format!("coordinator-{leader}.pem")));
    let channel = rt.block_on(counting_channel(addr, &pki, opened.clone()));
    let mut client = CoordinatorClient::new(channel);
    rt.block_on(client.status(StatusRequest {}))
        .unwrap_or_else(|e| panic!("status before rotation: {e}"));
    assert_eq!(rt.block_on(served_certificate(addr, &pki)), old_der);
    let new_der = reissue_coordinator(&pki, leader, ips[(leader - 1) as usize]);
    assert_ne!(new_der, old_der);
    cluster.stop_signal(leader, Signal::SIGHUP);
    wait_for(
        &deadline,
        Duration::from_secs(10),
        "the leader to present its new certificate",
        || {
            if rt.block_on(served_certificate(addr, &pki)) == new_der {
                Ok(())
            } else {
                Err("still the old certificate".into())
            }
        },
        || cluster.log_tail(leader),
    );
    for _ in 0..3 {
        rt.block_on(client.status(StatusRequest {}))
            .unwrap_or_else(|e| panic!("status on the old connection after rotation: {e}"));
    }
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "the connection made before the rotation was dropped and remade"
    );
    let status = cluster.ctl_json(&["status"]);
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );

    // The peer service: only a coordinator certificate, and only as its own id.
    let other = if leader == 1 { 2 } else { 1 };
    let s = rt.block_on(peer_frame_as(
        addr,
        &pki,
        &format!("coordinator-{other}.pem"),
        &format!("coordinator-{other}-key.pem"),
        leader,
    ));
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    eprintln!("impersonating peer refused as expected: {}", s.message());
    let s = rt.block_on(peer_frame_as(
        addr,
        &pki,
        "operator.pem",
        "operator-key.pem",
        other,
    ));
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");

    // The operator may change membership over mTLS.
    let four = cluster.add_node("existing");
    let four_addr = cluster.addr(four).to_string();
    let out = cluster.ctl(&["members", "add", &four.to_string(), &four_addr]);
    assert!(out.status.success(), "operator members add: {}", show(&out));
    let out = cluster.ctl(&["members", "remove", &four.to_string()]);
    assert!(
        out.status.success(),
        "operator members remove: {}",
        show(&out)
    );
    let status = cluster.ctl_json(&["status"]);
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    deadline.finish();
}

fn tls_pki_crl() -> PathBuf {
    PathBuf::from(hotdeploy_common::tls_crl::CRL_FILE)
}

#[test]
fn the_agent_listener_honours_the_crl_and_its_connection_cap() {
    let deadline = Deadline::new("agent revocation", Duration::from_secs(90));
    let tmp = tempfile::Builder::new()
        .prefix("hd-revoke-agent-")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    let pki = tmp.path().join("pki");
    let ip = net::alloc_ips(1)[0];
    ctl_local_ok(&[
        "certs",
        "init",
        &pki.display().to_string(),
        "--agent",
        &format!("web-1@{ip}"),
    ]);
    let mallory = issue_operator(&pki, "mallory");
    ctl_local_ok(&[
        "certs",
        "revoke",
        &pki.display().to_string(),
        &pki.join("mallory.pem").display().to_string(),
    ]);

    let mut o = fast_opts("web-1", ip, Vec::new());
    o.tls = Some(pki.clone());
    o.crl = Some(pki.join(tls_pki_crl()));
    let mut limits = toml::Table::new();
    limits.insert("max_connections".into(), 2.into());
    o.extra.insert("limits".into(), limits.into());
    let agent = AgentProc::start(o);
    let op = CtlAuth::operator(&pki);
    let st = agent.ctl_as(&op, &["status"]);
    assert!(st.status.success(), "operator agent status: {}", show(&st));
    let why = refused(&agent.ctl_as(&mallory, &["status"]))
        .unwrap_or_else(|e| panic!("a revoked certificate on the agent: {e}"));
    eprintln!(
        "revoked certificate refused by the agent as expected: {}",
        why.trim()
    );
    wait_for_log(
        &deadline,
        "the agent to log why it refused the revoked certificate",
        &["TLS handshake refused", "Revoked"],
        || agent.log_tail(),
    );

    // Two idle connections fill the cap: a third is closed at once, and the log says why.
    let idle: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(agent.grpc_addr()).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let why = refused(&agent.ctl_as(&op, &["status"]))
        .unwrap_or_else(|e| panic!("a connection past max_connections: {e}"));
    eprintln!(
        "connection past the cap refused as expected: {}",
        why.trim()
    );
    assert!(
        agent.log_tail().contains("max_connections"),
        "no log line for the refused connection:\n{}",
        agent.log_tail()
    );
    drop(idle);
    wait_for(
        &deadline,
        Duration::from_secs(5),
        "the agent to take connections again",
        || {
            let out = agent.ctl_as(&op, &["status"]);
            if out.status.success() {
                Ok(())
            } else {
                Err(show(&out))
            }
        },
        || agent.log_tail(),
    );

    // SIGHUP reloads and the agent keeps running.
    agent.signal(Signal::SIGHUP);
    wait_for_log(
        &deadline,
        "the agent to log its reload",
        &["SIGHUP: reloaded"],
        || agent.log_tail(),
    );
    let st = agent.ctl_as(&op, &["status"]);
    assert!(st.status.success(), "after SIGHUP: {}", show(&st));
    deadline.finish();
}
