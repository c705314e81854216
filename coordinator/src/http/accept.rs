//! The HTTP listener's accept loop: a connection cap, TLS with a handshake deadline, one
//! request per connection under a deadline, and a graceful stop.
//!
//! 1. Accept. Past [`Limits::max_connections`] open connections, close the new one at once,
//!    before any TLS work.
//! 2. Under TLS, the handshake runs on the connection's own task within
//!    [`Limits::handshake`]; a refused handshake (a client certificate from another CA, or
//!    revoked) is logged as an audit event with the client's address.
//! 3. hyper reads one request (its head within [`Limits::head`], at most [`MAX_HEAD`] bytes),
//!    [`Routes`] answers, and the connection closes. The whole connection, handshake included,
//!    is cut off after [`Limits::connection`] whatever happens.
//!
//! When `shutdown` resolves, the listener closes at once and the connections in flight get up
//! to [`Limits::connection`] to finish; none is dropped half-answered unless it overstays.

use super::routes::Routes;
use hotdeploy_common::tls::ServerTls;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// hyper's smallest read buffer, and so the most a request head may take.
pub const MAX_HEAD: usize = 8192;

/// How much the listener takes on.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// For the TLS handshake.
    pub handshake: Duration,
    /// For the request head, from the end of the handshake.
    pub head: Duration,
    /// For the whole connection.
    pub connection: Duration,
}

impl Default for Limits {
    /// Generous for a LAN, short enough that slow clients cannot pile up to the cap for long.
    /// A FleetLock write waits at most 5 s for raft, a read barrier 5 s more.
    fn default() -> Self {
        Self {
            max_connections: 256,
            handshake: Duration::from_secs(10),
            head: Duration::from_secs(10),
            connection: Duration::from_secs(30),
        }
    }
}

/// Serves `routes` on `listener` until `shutdown` resolves, then lets the connections in
/// flight finish (see the module docs). `tls` `None` is plain HTTP.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    limits: Limits,
    routes: Arc<Routes>,
    shutdown: impl Future<Output = ()>,
) {
    let cap = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut shutdown => break,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = cap.clone().try_acquire_owned() else {
            tracing::warn!(%remote, max = limits.max_connections, "HTTP connection closed: the listener already holds its most connections");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tls.as_ref().map(ServerTls::http_acceptor);
        let routes = routes.clone();
        tokio::spawn(async move {
            let work = connection(tcp, remote, acceptor, limits, routes);
            if tokio::time::timeout(limits.connection, work).await.is_err() {
                tracing::debug!(%remote, "HTTP connection cut off after {:?}", limits.connection);
            }
            drop(permit);
        });
    }
    drop(listener);
    let all = limits.max_connections as u32;
    let drained = tokio::time::timeout(limits.connection, cap.acquire_many(all)).await;
    match drained {
        Ok(_) => tracing::info!("HTTP listener stopped"),
        Err(_) => tracing::warn!(
            "HTTP listener stopped; some connections were still open after {:?}",
            limits.connection
        ),
    }
}

async fn connection(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    routes: Arc<Routes>,
) {
    let Some(acceptor) = tls else {
        return exchange(tcp, remote, limits, routes).await;
    };
    match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => exchange(stream, remote, limits, routes).await,
        Ok(Err(e)) => tracing::warn!(audit = true, %remote, "HTTPS handshake refused: {e}"),
        Err(_) => {
            tracing::info!(%remote, "HTTPS handshake not finished within {:?}; closed", limits.handshake)
        }
    }
}

/// One request and its answer over `io`.
async fn exchange<S>(io: S, remote: SocketAddr, limits: Limits, routes: Arc<Routes>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ip = remote.ip();
    let svc = hyper::service::service_fn(move |req| {
        let routes = routes.clone();
        async move { Ok::<_, Infallible>(routes.answer(ip, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!(%remote, "HTTP connection: {e}");
    }
}
