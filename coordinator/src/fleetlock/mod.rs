//! FleetLock on the coordinator (DESIGN §8): Fedora CoreOS and Flatcar hosts running Zincati
//! take their reboot slots from hotdeploy's lock, so reboots and deploys share one budget.
//!
//! `POST /v1/pre-reboot` and `POST /v1/steady-state` on the HTTP listener (`crate::http`), off
//! unless `[fleetlock] enabled = true`. A request is judged in this order, each check answering
//! at once with its own error kind:
//!
//! 1. the client's address must be in `[fleetlock] allow` (else `client_not_allowed`, 403, and
//!    an audit line in the log); nothing of a refused client's request is read past its head;
//! 2. the `fleet-lock-protocol: true` header (`missing_protocol_header`, 400);
//! 3. the body: at most [`protocol::MAX_BODY`] bytes (`body_too_large`, 413), the protocol's
//!    JSON (`bad_request_body`), a valid host id and group name (`invalid_client_id`,
//!    `invalid_group`);
//! 4. the lock (`lock`): the FleetLock group is the group and the client id the host; an id no
//!    agent has registered becomes a lock-only host of that group; the lock is re-entrant;
//!    `steady-state` frees only a slot taken through FleetLock.
//!
//! It answers at once, 200 or an error, and never waits for the budget: the client retries, as
//! Zincati does. Writes go to the leader; a follower answers `not_leader` (503, with the
//! leader's address in `value`), which Zincati logs and retries. Zincati talks to one base URL,
//! so point it at the leader through a load balancer whose health check is `GET /leader` (200
//! on the leader only); see docs/operations.md.
//!
//! Every answer is counted (`hotdeploy_fleetlock_requests_total{op, result}`) and logged: grants
//! and releases at info, refusals of the lock at info (a waiting client asks every few
//! minutes), refused clients at warn with `audit = true`.

mod lock;
pub mod protocol;

use crate::metrics::Metrics;
use crate::raft::RaftNode;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes};
use ipnet::IpNet;
use lock::Lock;
use protocol::{ErrorKind, Granted, Op, Refusal, MAX_BODY, PROTOCOL_HEADER};
use std::net::IpAddr;
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An answer to send: status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
    /// Whether asking again unchanged may succeed (the answer carries `Retry-After`).
    pub retry: bool,
}

impl Reply {
    fn refused(r: &Refusal) -> Self {
        Self {
            status: r.kind.status(),
            body: r.body(),
            retry: r.kind.is_retryable(),
        }
    }
}

/// The FleetLock endpoints of one coordinator.
pub struct FleetLock {
    lock: Lock,
    allow: Vec<IpNet>,
    metrics: Arc<Metrics>,
}

impl FleetLock {
    /// FleetLock on `node`, for clients in `allow`.
    pub fn new(node: RaftNode, allow: Vec<IpNet>, metrics: Arc<Metrics>) -> Self {
        Self {
            lock: Lock::new(node),
            allow,
            metrics,
        }
    }

    /// Whether `ip` may use FleetLock.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Answers one request for `op` from `remote`.
    pub async fn handle<B>(&self, op: Op, remote: IpAddr, req: http::Request<B>) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let reply = match self.judge(op, remote, req).await {
            Ok(granted) => {
                self.metrics.fleetlock_request(op.label(), "ok");
                Reply {
                    status: StatusCode::OK,
                    body: serde_json::to_string(&granted).unwrap_or_default(),
                    retry: false,
                }
            }
            Err(r) => {
                self.metrics.fleetlock_request(op.label(), r.kind.as_str());
                Reply::refused(&r)
            }
        };
        reply
    }

    async fn judge<B>(
        &self,
        op: Op,
        remote: IpAddr,
        req: http::Request<B>,
    ) -> Result<Granted, Refusal>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        if req.method() != http::Method::POST {
            return Err(Refusal::new(
                ErrorKind::MethodNotAllowed,
                format!("FleetLock's {} takes POST", req.uri().path()),
            ));
        }
        if !self.allows(remote) {
            tracing::warn!(audit = true, client = %remote, op = op.label(), "FleetLock request refused: the client is not in [fleetlock] allow");
            return Err(Refusal::new(
                ErrorKind::ClientNotAllowed,
                format!("client {remote} is not in this coordinator's [fleetlock] allow"),
            ));
        }
        check_protocol_header(req.headers())?;
        let body = read_body(req.into_body()).await?;
        let params = protocol::parse_body(&body)?;
        let actor = format!("fleetlock/{remote}");
        let (id, group) = (params.id, params.group);
        match op {
            Op::PreReboot => match self.lock.pre_reboot(&id, &group, &actor).await {
                Ok(slot) => {
                    tracing::info!(host = %id, %group, token = slot.token, client = %remote, "FleetLock: reboot slot held");
                    Ok(Granted {
                        id,
                        group,
                        token: Some(slot.token),
                        released: None,
                    })
                }
                Err(r) => {
                    tracing::info!(host = %id, %group, client = %remote, kind = r.kind.as_str(), "FleetLock pre-reboot refused: {}", r.value);
                    Err(r)
                }
            },
            Op::SteadyState => match self.lock.steady_state(&id, &group, &actor).await {
                Ok(released) => {
                    match released {
                        Some(token) => {
                            tracing::info!(host = %id, %group, token, client = %remote, "FleetLock: reboot slot released")
                        }
                        None => {
                            tracing::debug!(host = %id, %group, client = %remote, "FleetLock steady-state: no FleetLock slot held")
                        }
                    }
                    Ok(Granted {
                        id,
                        group,
                        token: None,
                        released: Some(released),
                    })
                }
                Err(r) => {
                    tracing::info!(host = %id, %group, client = %remote, kind = r.kind.as_str(), "FleetLock steady-state refused: {}", r.value);
                    Err(r)
                }
            },
        }
    }
}

/// The answer for a FleetLock path while `[fleetlock] enabled` is false.
pub fn disabled() -> Reply {
    Reply::refused(&Refusal::new(
        ErrorKind::FleetLockDisabled,
        "FleetLock is off on this coordinator; set [fleetlock] enabled = true and allow = [CIDRs]",
    ))
}

fn check_protocol_header(headers: &HeaderMap) -> Result<(), Refusal> {
    let ok = headers
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "true");
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorKind::MissingProtocolHeader,
            format!("FleetLock requests need the header `{PROTOCOL_HEADER}: true`"),
        ))
    }
}

/// The whole body, at most [`MAX_BODY`] bytes.
async fn read_body<B>(body: B) -> Result<Bytes, Refusal>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Err(too_large());
    }
    match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Refusal::new(
            ErrorKind::BadRequestBody,
            format!("the request body could not be read: {e}"),
        )),
    }
}

fn too_large() -> Refusal {
    Refusal::new(
        ErrorKind::BodyTooLarge,
        format!("the request body is over {MAX_BODY} bytes"),
    )
}
#[cfg(test)]
mod tests;
