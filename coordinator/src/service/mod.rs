//! The coordinator's gRPC services and the server that hosts them.
//!
//! One listener serves the public `Coordinator` API, the `RaftPeer` transport, gRPC health
//! (`grpc.health.v1`) and server reflection (so `grpcurl` works). Writes go through raft;
//! reads of replicated state go through a ReadIndex barrier at the leader. Health starts
//! `NOT_SERVING`; the supervisor (`crate::supervisor`) sets it from the raft loop's progress.
//! A layer around every service counts refused calls by call and code for the metrics
//! (`crate::metrics::GrpcErrorsLayer`).
//!
//! **Shutdown** (SIGTERM, `systemctl stop`, the restart of a rolling upgrade): the server stops
//! accepting connections and lets the requests in flight finish, for at most
//! [`SHUTDOWN_GRACE`]. Then it closes what is still open: the long-lived streams (the peers'
//! raft frames, the agents' heartbeats, `rollout watch`) never end by themselves, and waiting
//! for them would keep a member of a cluster from ever stopping. Their clients reconnect, to
//! this node once it is back or to another.
//!
//! While a blank node waits to bootstrap, [`serve_blank`] answers only the peers' `ClusterInfo`
//! on the same listen address (see `raft::bootstrap`).
//!
//! Files: `coordinator` (the thin handlers), `acquire` (the AcquireSlot wait loop and its
//! outcome), `heartbeat` (the agents' stream), `host_signals` (which wakes a stream only for
//! its own host's changes), `rollout` (the rollout RPCs' logic) and
//! `rollout_wire` (its conversions), `members`, `snapshot` (the state for `snapshot save`),
//! `waiters` (the AcquireSlot queue), `leader` (routing and statuses), `auth`, `convert`.

mod acquire;
mod auth;
mod convert;
mod coordinator;
mod heartbeat;
mod host_signals;
mod leader;
mod members;
mod rollout;
mod rollout_wire;
mod snapshot;
mod waiters;

pub use coordinator::CoordinatorService;
pub use host_signals::SignalStats;
pub use leader::leader_hint;

use crate::raft::{BlankPeerService, PeerServer};
use hotdeploy_common::proto::coordinator_server::CoordinatorServer;
use hotdeploy_common::tls::ServerTls;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::Stream;
use tonic::transport::Server;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// Largest request any client may send. Requests are small; this bounds a hostile one.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// How long a shutdown waits for the requests in flight before it closes the connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Concurrent streams per connection, bounding one client's share of the server.
const MAX_STREAMS: u32 = 1024;

/// Serves every gRPC service on `listener` until `shutdown` resolves. `tls` `None` is
/// plaintext; at most `max_connections` connections are open at once. `serving` fires once the
/// server is accepting connections.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    max_connections: usize,
    coordinator: CoordinatorService,
    peer: PeerServer,
    health: HealthReporter,
    serving: oneshot::Sender<()>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    crate::supervisor::set_health(&health, false).await;
    let health = HealthServer::new(HealthService::from_health_reporter(health));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hotdeploy_common::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // The descriptor set also holds the agent's service: list only those served here.
        .with_service_name("hotdeploy.v1.Coordinator")
        .with_service_name("hotdeploy.v1.RaftPeer")
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .build_v1()?;
    let refusals = crate::metrics::GrpcErrorsLayer::new(coordinator.grpc_errors());
    let api = CoordinatorServer::new(coordinator).max_decoding_message_size(MAX_REQUEST_BYTES);
    let incoming = FirstPoll {
        inner: hotdeploy_common::tls::incoming(listener, tls, max_connections),
        first: Some(serving),
    };
    let (stopping, stop_requested) = oneshot::channel::<()>();
    let server = builder()
        .layer(refusals)
        .add_service(api)
        .add_service(peer)
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, async {
            shutdown.await;
            let _ = stopping.send(());
        });
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => served?,
        () = async {
            if stop_requested.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::info!(
                grace = ?SHUTDOWN_GRACE,
                "shutting down: closing the streams still open (peers, agents, watches)"
            );
        }
    }
    Ok(())
}

/// Serves only a blank node's `ClusterInfo` (and health, `NOT_SERVING`) until `shutdown`.
pub async fn serve_blank(
    listener: TcpListener,
    tls: Option<ServerTls>,
    max_connections: usize,
    id: u64,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let reporter = HealthReporter::new();
    crate::supervisor::set_health(&reporter, false).await;
    let health = HealthServer::new(HealthService::from_health_reporter(reporter));
    builder()
        .add_service(BlankPeerService::server(id))
        .add_service(health)
        .serve_with_incoming_shutdown(
            hotdeploy_common::tls::incoming(listener, tls, max_connections),
            shutdown,
        )
        .await?;
    Ok(())
}

fn builder() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .max_concurrent_streams(MAX_STREAMS)
}

/// The accepted connections, telling `first` when the server first asks for one: from then on
/// it is serving.
struct FirstPoll<S> {
    inner: S,
    first: Option<oneshot::Sender<()>>,
}

impl<S: Stream + Unpin> Stream for FirstPoll<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if let Some(first) = self.first.take() {
            let _ = first.send(());
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}
