//! Rotation: whether load balancers should send this host traffic (DESIGN §4).
//!
//! The state is `in_rotation`, `draining` or `out_of_rotation`, held in a watch channel so the
//! deploy engine, the status API and the front ends all see the same value. Three front ends
//! publish it, each combined with the service's health (a watch receiver supplied by the
//! caller):
//!
//! 1. an HAProxy `agent-check` responder ([`agent_check`], mapping documented there);
//! 2. `GET /ready` over HTTP ([`ready`]);
//! 3. optional `drain_hook` / `undrain_hook` commands (argv arrays, bounded by `drain_timeout`).
//!
//! [`RotationControl::drain`] and [`RotationControl::undrain`] change the state at once (so the
//! front ends answer immediately) and then wait for *confirmation* before returning:
//!
//! - With `haproxy_socket`, through HAProxy's runtime API ([`haproxy`]): drain sets `state
//!   drain` and polls `show stat` until the server's `scur` (current sessions) is 0, up to
//!   `drain_timeout`. A drain that times out is logged and the deploy goes on: the sessions
//!   left are long-lived ones that would never end by themselves. Undrain sets `state ready`
//!   and polls until the status is `UP` (or `no check`, for a server without health checks);
//!   not getting there within `drain_timeout` is an error, because the caller must not release
//!   its slot while this host is still out.
//! - Without the socket, by waiting: `drain_grace` (the default covers 2 × HAProxy's default
//!   `agent-inter`) and `undrain_grace`.

mod accept;
pub mod agent_check;
pub mod haproxy;
pub mod ready;

pub use agent_check::agent_check_reply;
pub use haproxy::{HaproxyClient, HaproxyError, ServerStat};
pub use ready::readiness;

use crate::cmd;
use hotdeploy_common::config::RotationConfig;
use hotdeploy_common::proto::{Health, Rotation};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often `show stat` is polled while waiting for confirmation.
const POLL: Duration = Duration::from_millis(200);
/// The default per-connection bound of the front ends.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a rotation change could not be made or confirmed.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Haproxy(#[from] HaproxyError),
    #[error("rotation.{which} `{argv}`: {reason}")]
    Hook {
        which: &'static str,
        argv: String,
        reason: String,
    },
    #[error("rotation: haproxy_socket is set but haproxy_backend is not")]
    NoBackend,
    #[error("{backend}/{server} not UP in HAProxy within {after:?} of undrain (status: {status})")]
    UndrainTimeout {
        backend: String,
        server: String,
        after: Duration,
        status: String,
    },
}

/// The rotation state and its front ends; shared through an `Arc`.
pub struct RotationControl {
    cfg: RotationConfig,
    server: String,
    state: watch::Sender<Rotation>,
    health: watch::Receiver<Health>,
    haproxy: Option<HaproxyClient>,
    /// The bound addresses of the agent-check and HTTP front ends (after `serve`).
    bound: Mutex<(Option<SocketAddr>, Option<SocketAddr>)>,
    /// Per-connection bound of the front ends (read timeout and total lifetime).
    pub(crate) io_timeout: Duration,
}

impl RotationControl {
    /// `server_name` is this host's server name in HAProxy; `health` is the service's health.
    pub fn new(
        cfg: &RotationConfig,
        server_name: &str,
        initial: Rotation,
        health: watch::Receiver<Health>,
    ) -> Arc<Self> {
        Self::build(cfg, server_name, initial, health, IO_TIMEOUT)
    }

    fn build(
        cfg: &RotationConfig,
        server_name: &str,
        initial: Rotation,
        health: watch::Receiver<Health>,
        io_timeout: Duration,
    ) -> Arc<Self> {
        let (state, _) = watch::channel(initial);
        Arc::new(Self {
            cfg: cfg.clone(),
            server: server_name.to_string(),
            state,
            health,
            haproxy: cfg.haproxy_socket.as_deref().map(HaproxyClient::new),
            bound: Mutex::new((None, None)),
            io_timeout,
        })
    }

    /// Binds the configured front ends, spawns their accept loops (which run until the process
    /// ends) and returns. A bind error names the address.
    pub async fn serve(self: &Arc<Self>) -> Result<(), RotationError> {
        let agent = match &self.cfg.haproxy_agent_listen {
            Some(addr) => Some(bind("HAProxy agent-check responder", addr).await?),
            None => None,
        };
        let http = match &self.cfg.http_listen {
            Some(addr) => Some(bind("HTTP readiness endpoint", addr).await?),
            None => None,
        };
        let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = agent {
            bound.0 = l.local_addr().ok();
            tracing::info!(addr = ?bound.0, "agent-check responder listening");
            tokio::spawn(agent_check::serve(l, self.clone()));
        }
        if let Some(l) = http {
            bound.1 = l.local_addr().ok();
            tracing::info!(addr = ?bound.1, "readiness endpoint listening");
            tokio::spawn(ready::serve(l, self.clone()));
        }
        Ok(())
    }

    /// The agent-check responder's bound address, once serving.
    pub fn agent_check_addr(&self) -> Option<SocketAddr> {
        self.bound.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// The readiness endpoint's bound address, once serving.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.bound.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    pub fn state(&self) -> Rotation {
        *self.state.borrow()
    }

    pub(crate) fn health(&self) -> Health {
        *self.health.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Rotation> {
        self.state.subscribe()
    }

    /// Sets the state without waiting for anything (start-up recovery).
    pub fn set_state(&self, r: Rotation) {
        let old = self.state.send_replace(r);
        if old != r {
            tracing::info!(
                from = old.as_str_name(),
                to = r.as_str_name(),
                "rotation state"
            );
        }
    }

    /// Leaves rotation and waits for confirmation; returns how long it took. See module docs.
    pub async fn drain(&self) -> Result<Duration, RotationError> {
        let t0 = Instant::now();
        self.set_state(Rotation::Draining);
        self.run_hook("drain_hook", &self.cfg.drain_hook).await?;
        if let Some(h) = &self.haproxy {
            let backend = self.backend()?;
            h.set_state(backend, &self.server, "drain").await?;
            let deadline = t0 + self.cfg.drain_timeout;
            loop {
                let stat = h.server_stat(backend, &self.server).await?;
                if stat.scur == 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        server = %self.server,
                        sessions = stat.scur,
                        timeout = ?self.cfg.drain_timeout,
                        "drain timed out with sessions still open; continuing"
                    );
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
        } else {
            tokio::time::sleep(self.cfg.drain_grace).await;
        }
        self.set_state(Rotation::OutOfRotation);
        Ok(t0.elapsed())
    }

    /// Returns to rotation and waits for confirmation; returns how long it took.
    pub async fn undrain(&self) -> Result<Duration, RotationError> {
        let t0 = Instant::now();
        self.set_state(Rotation::InRotation);
        self.run_hook("undrain_hook", &self.cfg.undrain_hook)
            .await?;
        if let Some(h) = &self.haproxy {
            let backend = self.backend()?;
            h.set_state(backend, &self.server, "ready").await?;
            let deadline = t0 + self.cfg.drain_timeout;
            loop {
                let stat = h.server_stat(backend, &self.server).await?;
                if stat.status == "UP" || stat.status == "no check" {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(RotationError::UndrainTimeout {
                        backend: backend.to_string(),
                        server: self.server.clone(),
                        after: self.cfg.drain_timeout,
                        status: stat.status,
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        } else {
            tokio::time::sleep(self.cfg.undrain_grace).await;
        }
        Ok(t0.elapsed())
    }

    fn backend(&self) -> Result<&str, RotationError> {
        self.cfg
            .haproxy_backend
            .as_deref()
            .ok_or(RotationError::NoBackend)
    }

    async fn run_hook(&self, which: &'static str, argv: &[String]) -> Result<(), RotationError> {
        if argv.is_empty() {
            return Ok(());
        }
        let err = |reason: String| RotationError::Hook {
            which,
            argv: argv.join(" "),
            reason,
        };
        let env = [("HOTDEPLOY_SERVER".to_string(), self.server.clone())];
        let out = cmd::run(argv, &env, None, self.cfg.drain_timeout)
            .await
            .map_err(|e| err(e.to_string()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(err(out.describe_failure()))
        }
    }
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, RotationError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RotationError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests;
