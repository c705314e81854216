//! `GET /ready`: the readiness endpoint for everything that is not HAProxy (nginx, Envoy, cloud
//! load balancers, Consul checks).
//!
//! - `GET /ready` (or `HEAD`) → `200 ready` when in rotation and healthy; otherwise `503` with a
//!   one-word reason: `draining`, `out-of-rotation`, `unhealthy` or `unprovisioned` (rotation
//!   reasons win over health reasons: a drained host is "draining" whatever its health).
//! - Another method on `/ready` → 405; any other path → 404.
//!
//! Served with hyper's HTTP/1 server, hardened for hostile clients: request heads are limited
//! to hyper's minimum buffer (8 KiB), headers must arrive within the I/O timeout, every
//! connection is closed after one response and cut off after the timeout in any case, and
//! concurrent connections are capped. Request bodies are never read.

use super::accept::{run_scripted, ScriptedClient};
use super::RotationControl;
use hotdeploy_common::config::RotationConfig;
use hotdeploy_common::proto::{Health, Rotation};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// hyper's smallest allowed read buffer; also our cap on a request head.
const MAX_HEAD: usize = 8192;

/// `Ok` when traffic should come here, else the one-word reason.
pub fn readiness(rotation: Rotation, health: Health) -> Result<(), &'static str> {
    match rotation {
        Rotation::InRotation => {}
        Rotation::Draining => return Err("draining"),
        Rotation::OutOfRotation | Rotation::Unspecified => return Err("out-of-rotation"),
    }
    match health {
        Health::Healthy => Ok(()),
        Health::Unprovisioned => Err("unprovisioned"),
        Health::Unhealthy | Health::Unspecified => Err("unhealthy"),
    }
}

fn respond(ctl: &RotationControl, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = if req.uri().path() != "/ready" {
        (StatusCode::NOT_FOUND, "not found\n".to_string())
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        )
    } else {
        match readiness(ctl.advertised(), ctl.health()) {
            Ok(()) => (StatusCode::OK, "ready\n".into()),
            Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Accepts connections until the process ends.
pub(crate) async fn serve(
    listener: TcpListener,
    ctl: Arc<RotationControl>,
    shutdown: CancellationToken,
) {
    let timeout = ctl.io_timeout;
    super::accept::accept_bounded(listener, "readiness", timeout, shutdown, move |sock| {
        connection(sock, ctl.clone(), timeout)
    })
    .await;
}

/// Serves one connection: at most one request (hyper parses it), then closes.
async fn connection<S>(sock: S, ctl: Arc<RotationControl>, timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let svc = hyper::service::service_fn(move |req| {
        let resp = respond(&ctl, &req);
        async move { Ok::<_, Infallible>(resp) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(sock), svc)
        .await;
}

/// Plays `input` as one client's bytes (in reads of at most `chunk` bytes, then end-of-file) to
/// the handler the endpoint runs on each accepted socket, for a host in `rotation` with
/// `health`, under the same deadline; returns everything it wrote back. Public (and hidden) only
/// for the `ready` fuzz target and its regression test, which must exercise the code a socket
/// would; the daemon never calls it.
#[doc(hidden)]
pub fn exchange(
    input: &[u8],
    chunk: usize,
    rotation: Rotation,
    health: Health,
) -> std::io::Result<Vec<u8>> {
    let (_health_tx, health_rx) = tokio::sync::watch::channel(health);
    let ctl = RotationControl::new(&RotationConfig::default(), "fuzz", rotation, health_rx);
    let mut client = ScriptedClient::new(input, chunk);
    let timeout = ctl.io_timeout;
    run_scripted(timeout, connection(&mut client, ctl, timeout))?;
    Ok(client.output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        use Health::*;
        use Rotation::*;
        assert_eq!(readiness(InRotation, Healthy), Ok(()));
        assert_eq!(readiness(InRotation, Unhealthy), Err("unhealthy"));
        assert_eq!(readiness(InRotation, Unprovisioned), Err("unprovisioned"));
        assert_eq!(readiness(Draining, Healthy), Err("draining"));
        assert_eq!(readiness(OutOfRotation, Healthy), Err("out-of-rotation"));
    }
}
