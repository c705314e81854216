//! The coordinator's gRPC services and the server that hosts them.
//!
//! One listener serves the public `Coordinator` API, the `RaftPeer` transport, gRPC health
//! (`grpc.health.v1`) and server reflection (so `grpcurl` works). Writes go through raft;
//! reads of replicated state go through a ReadIndex barrier at the leader.
//!
//! Files: `coordinator` (the thin handlers), `heartbeat` (the agents' stream), `rollout` (the
//! rollout RPCs' logic) and `rollout_wire` (its conversions), `members`, `waiters` (the
//! AcquireSlot queue), `leader` (routing and statuses), `auth`, `convert`.

mod auth;
mod convert;
mod coordinator;
mod heartbeat;
mod leader;
mod members;
mod rollout;
mod rollout_wire;
mod waiters;

pub use coordinator::CoordinatorService;

use crate::raft::PeerServer;
use hotdeploy_common::proto::coordinator_server::CoordinatorServer;
use hotdeploy_common::tls::ServerTls;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::Server;

/// Largest request any client may send. Requests are small; this bounds a hostile one.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Concurrent streams per connection, bounding one client's share of the server.
const MAX_STREAMS: u32 = 1024;

/// Serves every gRPC service on `listener` until `shutdown` resolves. `tls` `None` is
/// plaintext; at most `max_connections` connections are open at once.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    max_connections: usize,
    coordinator: CoordinatorService,
    peer: PeerServer,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hotdeploy_common::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let mut server = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .max_concurrent_streams(MAX_STREAMS);
    let api = CoordinatorServer::new(coordinator).max_decoding_message_size(MAX_REQUEST_BYTES);
    server
        .add_service(api)
        .add_service(peer)
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(
            hotdeploy_common::tls::incoming(listener, tls, max_connections),
            shutdown,
        )
        .await?;
    Ok(())
}
