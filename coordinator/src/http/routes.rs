//! What the HTTP listener answers, by path (see the table in `http/mod.rs`).

use crate::fleetlock::{self, protocol::Op, FleetLock};
use crate::metrics::{self, Metrics};
use crate::raft::RaftNode;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body, Bytes};
use std::net::IpAddr;
use std::sync::Arc;

/// Everything the listener serves.
pub struct Routes {
    node: RaftNode,
    metrics: Arc<Metrics>,
    /// `None` while `[fleetlock] enabled = false`.
    fleetlock: Option<FleetLock>,
}

impl Routes {
    pub fn new(node: RaftNode, metrics: Arc<Metrics>, fleetlock: Option<FleetLock>) -> Self {
        Self {
            node,
            metrics,
            fleetlock,
        }
    }

    /// Answers one request from `remote`.
    pub async fn answer<B>(&self, remote: IpAddr, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path();
        if let Some(op) = Op::from_path(path) {
            let reply = match &self.fleetlock {
                Some(f) => f.handle(op, remote, req).await,
                None => fleetlock::disabled(),
            };
            let mut resp = respond(reply.status, "application/json", reply.body);
            if reply.retry {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            return resp;
        }
        let readable = req.method() == Method::GET || req.method() == Method::HEAD;
        match path {
            "/metrics" | "/leader" if !readable => respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n".into(),
            ),
            "/metrics" => match self.metrics.render() {
                Ok(text) => respond(StatusCode::OK, metrics::CONTENT_TYPE, text),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("cannot encode the metrics: {e}\n"),
                ),
            },
            "/leader" => {
                if self.node.is_leader() {
                    respond(StatusCode::OK, "text/plain", "leader\n".into())
                } else {
                    respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        format!("{}\n", crate::service::leader_hint(&self.node)),
                    )
                }
            }
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
