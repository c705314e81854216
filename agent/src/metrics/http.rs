//! `GET /metrics` on `metrics_listen`: every `hotdeploy_agent_*` metric, OpenMetrics text.
//!
//! - `GET /metrics` (or `HEAD`) → 200 with the metrics; another method → 405; any other path
//!   → 404.
//!
//! Hardened like `/ready`, and through the same accept loop: at most 256 connections at once,
//! a request head within hyper's smallest buffer (8 KiB) and [`TIMEOUT`], one request per
//! connection, the connection cut off after [`TIMEOUT`] whatever happens. Bodies are never
//! read. It stops accepting when the agent's shutdown token is cancelled.

use super::{AgentMetrics, CONTENT_TYPE};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// hyper's smallest allowed read buffer; also our cap on a request head.
const MAX_HEAD: usize = 8192;
/// For the request head, and for the whole connection.
pub const TIMEOUT: Duration = Duration::from_secs(10);

fn respond(metrics: &AgentMetrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if req.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        )
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        )
    } else {
        match metrics.render() {
            Ok(text) => (StatusCode::OK, CONTENT_TYPE, text),
            Err(e) => {
                tracing::error!(error = %e, "cannot render the metrics");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "cannot render the metrics\n".into(),
                )
            }
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Serves `metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, metrics: Arc<AgentMetrics>, shutdown: CancellationToken) {
    crate::rotation::accept::accept_bounded(listener, "metrics", TIMEOUT, shutdown, move |sock| {
        let metrics = metrics.clone();
        async move {
            let svc = hyper::service::service_fn(move |req| {
                let resp = respond(&metrics, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(sock), svc)
                .await;
        }
    })
    .await;
}
