//! gRPC health (`grpc.health.v1`) and server reflection on every gRPC listener, behind the
//! same mTLS as the other services (issue 11 §2; DESIGN §8), called with real tonic clients.
//!
//! `hotdeployctl certs init` makes the fleet's certificates; a 3-node coordinator cluster and
//! one agent, `web-1`, run with them. With the operator certificate:
//!
//! - the agent answers `Check("")` and `Check("hotdeploy.v1.Agent")` with SERVING, and lists
//!   exactly the services it serves through reflection (`hotdeploy.v1.Agent`, health,
//!   reflection), whose descriptors it hands out (`FileContainingSymbol`);
//! - without a client certificate, the same health check is refused (the same mTLS);
//! - each coordinator answers SERVING and lists `hotdeploy.v1.Coordinator`, health and
//!   reflection;
//! - a `Watch` on the agent's health hears SERVING, then NOT_SERVING when the agent is told to
//!   stop (SIGTERM).

mod agent_support;
mod pki_support;

use agent_support::*;
use hotdeploy_integration_tests::agents::AgentProc;
use hotdeploy_integration_tests::cluster::{Cluster, ClusterOpts};
use hotdeploy_integration_tests::net;
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";

/// A channel to `addr` over TLS trusting `pki/ca.pem`, presenting the operator certificate
/// when `operator`.
async fn channel(addr: SocketAddr, pki: &Path, operator: bool) -> Result<Channel, String> {
    let read = |name: &str| {
        std::fs::read(pki.join(name)).map_err(|e| format!("{}: {e}", pki.join(name).display()))
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("ca.pem")?));
    if operator {
        tls = tls.identity(Identity::from_pem(
            read("operator.pem")?,
            read("operator-key.pem")?,
        ));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect {addr}: {e:?}"))
}

/// `Check(service)`: the status, or the error.
async fn check(ch: Channel, service: &str) -> Result<i32, String> {
    HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// One reflection request, its one response.
async fn reflect(ch: Channel, request: MessageRequest) -> Result<MessageResponse, String> {
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let resp = stream
        .message()
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .ok_or("no reflection response")?;
    resp.message_response
        .ok_or_else(|| "an empty reflection response".into())
}

/// The services listed through reflection.
async fn list_services(ch: Channel) -> Result<BTreeSet<String>, String> {
    match reflect(ch, MessageRequest::ListServices(String::new())).await? {
        MessageResponse::ListServicesResponse(l) => {
            Ok(l.service.into_iter().map(|s| s.name).collect())
        }
        other => Err(format!("not a service list: {other:?}")),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
}

#[test]
fn health_and_reflection_over_mtls_on_an_agent_and_the_coordinators() {
    let deadline = Deadline::new("gRPC health and reflection", Duration::from_secs(240));
    let tmp = tempfile::Builder::new()
        .prefix("hd-grpc-health-")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    let pki = tmp.path().join("pki");
    let coord_ips = net::alloc_ips(3);
    let agent_ip = net::alloc_ips(1)[0];
    pki_support::init_fleet(&pki, &coord_ips, &[format!("web-1@{agent_ip}")]);
    let cluster = Cluster::start(
        3,
        &[("web", "1")],
        ClusterOpts {
            tls: Some(pki.clone()),
            ips: Some(coord_ips.clone()),
            ..ClusterOpts::default()
        },
    );
    cluster.wait_leader(deadline.bound(Duration::from_secs(40)), None);
    let mut o = fast_opts("web-1", agent_ip, cluster.coordinator_addrs());
    o.tls = Some(pki.clone());
    let mut agent = AgentProc::start(o);
    let rt = runtime();
    let addr = agent.grpc_addr();
    let serving = ServingStatus::Serving as i32;

    rt.block_on(async {
        // The agent: SERVING, overall and for its service.
        for service in ["", "hotdeploy.v1.Agent"] {
            let ch = channel(addr, &pki, true)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let status = check(ch, service).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(status, serving, "agent health of {service:?}");
        }
        // Exactly what it serves, and the descriptors to call it with.
        let ch = channel(addr, &pki, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let listed = list_services(ch).await.unwrap_or_else(|e| panic!("{e}"));
        let want: BTreeSet<String> = ["hotdeploy.v1.Agent", HEALTH, REFLECTION]
            .map(String::from)
            .into();
        assert_eq!(listed, want, "the agent's reflection lists what it serves");
        let ch = channel(addr, &pki, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        match reflect(
            ch,
            MessageRequest::FileContainingSymbol("hotdeploy.v1.Agent".into()),
        )
        .await
        {
            Ok(MessageResponse::FileDescriptorResponse(f)) => {
                assert!(
                    !f.file_descriptor_proto.is_empty(),
                    "no descriptor for the Agent"
                )
            }
            other => panic!("no descriptor for hotdeploy.v1.Agent: {other:?}"),
        }
        // The same mTLS as the Agent service: no client certificate, no answer.
        let refused = match channel(addr, &pki, false).await {
            Err(e) => Err(e),
            Ok(ch) => check(ch, "").await,
        };
        assert!(
            refused.is_err(),
            "health answered a client without a certificate: {refused:?}"
        );

        // Each coordinator.
        for a in cluster.coordinator_addrs() {
            let ch = channel(a, &pki, true)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(check(ch, "").await, Ok(serving), "coordinator {a} health");
            let ch = channel(a, &pki, true)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let listed = list_services(ch)
                .await
                .unwrap_or_else(|e| panic!("{a}: {e}"));
            for s in ["hotdeploy.v1.Coordinator", HEALTH, REFLECTION] {
                assert!(
                    listed.contains(s),
                    "coordinator {a} does not list {s}: {listed:?}"
                );
            }
            assert!(
                !listed.contains("hotdeploy.v1.Agent"),
                "coordinator {a} lists the agent's service, which it does not serve: {listed:?}"
            );
        }
    });

    // NOT_SERVING on shutdown, heard by a Watch opened before it.
    let statuses = rt.block_on(async {
        let ch = channel(addr, &pki, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut watch = HealthClient::new(ch)
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_or_else(|s| panic!("watch: {s:?}"))
            .into_inner();
        let mut seen = Vec::new();
        let first = tokio::time::timeout(Duration::from_secs(5), watch.message()).await;
        seen.push(first.ok().and_then(|m| m.ok().flatten()).map(|m| m.status));
        agent.signal(Signal::SIGTERM);
        let next = tokio::time::timeout(Duration::from_secs(10), watch.message()).await;
        seen.push(next.ok().and_then(|m| m.ok().flatten()).map(|m| m.status));
        seen
    });
    assert_eq!(
        statuses,
        [Some(serving), Some(ServingStatus::NotServing as i32)],
        "the Watch must hear SERVING, then NOT_SERVING at the shutdown\n{}",
        agent.log_tail()
    );
    assert!(
        agent.wait_exit(Duration::from_secs(30)).is_some(),
        "the agent did not exit after SIGTERM\n{}",
        agent.log_tail()
    );
    deadline.finish();
}
