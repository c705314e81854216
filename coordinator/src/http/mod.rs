//! The coordinator's HTTP listener on `http_listen`: `/metrics`, FleetLock, and `/leader`.
//!
//! One small hyper HTTP/1.1 server. With `[tls]` configured it speaks HTTPS with the same
//! server certificate, CA and CRL as the gRPC listener (reloaded with them on SIGHUP), but asks
//! for no client certificate: Prometheus and Zincati usually present none. With
//! `insecure = true` it is plain HTTP, like gRPC.
//!
//! | path | method | answer |
//! |---|---|---|
//! | `/metrics` | GET, HEAD | every `hotdeploy_*` metric (OpenMetrics text) |
//! | `/leader` | GET, HEAD | `200 leader`, or `503` with the leader's id and gRPC address |
//! | `/v1/pre-reboot`, `/v1/steady-state` | POST | FleetLock (`crate::fleetlock`) |
//! | anything else | | `404` |
//!
//! Hardened like the other listeners (`accept`): a cap on open connections, a deadline on the
//! TLS handshake, on the request head and on the whole connection, request heads within hyper's
//! smallest buffer, bodies read only by FleetLock and only up to 8 KiB, one request per
//! connection. The shutdown signal stops the accepting, and the connections in flight finish
//! within their deadline.

mod accept;
mod routes;

pub use accept::{serve, Limits};
pub use routes::Routes;

#[cfg(test)]
mod tests;
