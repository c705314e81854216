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
//! Two values are kept: what the host **reports** ([`RotationControl::state`]: to `Status`, to
//! the coordinators, whose budget counts every host not `in_rotation`), and what the front ends
//! **advertise** to load balancers. They differ only while a change waits for confirmation:
//!
//! - [`RotationControl::drain`] reports `draining` and advertises `drain` at once (leaving is
//!   never reported late), then waits for confirmation, then reports `out_of_rotation`.
//! - [`RotationControl::undrain`] advertises `ready` at once (that is what brings the host
//!   back), but reports `in_rotation` only once the return is confirmed. If it cannot be
//!   confirmed, the change is reverted: the front ends advertise `drain` again (and HAProxy is
//!   told `state drain`), and the host keeps reporting that it is out. So a host is never
//!   reported in rotation, nor counted available, before a load balancer has it back.
//!
//! Confirmation:
//!
//! - With `haproxy_socket`, through HAProxy's runtime API ([`haproxy`]): drain sets `state
//!   drain` and polls `show stat` (every 25 ms) until the server's `scur` (current sessions) is 0, up to
//!   `drain_timeout`. A drain that times out is logged and the deploy goes on: the sessions
//!   left are long-lived ones that would never end by themselves. Undrain sets `state ready`
//!   and polls until the status is `UP` (or `no check`, for a server without health checks);
//!   not getting there within `drain_timeout` is an error, because the caller must not release
//!   its slot while this host is still out.
//! - Without the socket, by waiting: `drain_grace` (the default covers 2 × HAProxy's default
//!   `agent-inter`) and `undrain_grace`.
//!
//! **At start** ([`RotationControl::reassert`]) the agent asserts its state to HAProxy rather
//! than trusting it: a host the journal says is drained is set to `state drain`; otherwise, a
//! server that HAProxy does not have `UP` (still in `DRAIN` or `MAINT`, left so by a previous
//! agent whose journal was lost, say; or `DOWN`, which may hide an admin drain) is reported
//! `out_of_rotation` until an undrain confirms it back, and a server HAProxy cannot be asked
//! about is reported out until it can. Without the socket the
//! front ends advertise the journal's state at once, and the state counts as confirmed after
//! `undrain_grace`.
//!
//! [`RotationControl::settled`] says whether no change is under way and the reported state is
//! confirmed; the engine releases a slot nobody uses only then. One change runs at a time.
//! The front ends run until the agent's shutdown token is cancelled.

pub(crate) mod accept;
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
use tokio_util::sync::CancellationToken;

/// How often `show stat` is polled while waiting for confirmation. This is the granularity
/// of a drain's and an undrain's wait, both inside the host's out-of-rotation window, so it is
/// short; one poll is one Unix-socket round trip that HAProxy answers from memory (40 a second
/// per waiting host, only while a change waits).
const POLL: Duration = Duration::from_millis(25);
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
    /// What the host reports; `InRotation` only once confirmed.
    state: watch::Sender<Rotation>,
    /// What the front ends answer; ahead of `state` while an undrain awaits confirmation.
    advertised: watch::Sender<Rotation>,
    /// From when on the reported state counts as confirmed; `None` while a change is under way.
    settled_at: Mutex<Option<Instant>>,
    /// One change (drain, undrain, reassert) at a time.
    change: tokio::sync::Mutex<()>,
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
        let (advertised, _) = watch::channel(initial);
        Arc::new(Self {
            cfg: cfg.clone(),
            server: server_name.to_string(),
            state,
            advertised,
            settled_at: Mutex::new(Some(Instant::now())),
            change: tokio::sync::Mutex::new(()),
            health,
            haproxy: cfg.haproxy_socket.as_deref().map(HaproxyClient::new),
            bound: Mutex::new((None, None)),
            io_timeout,
        })
    }

    /// Binds the configured front ends, spawns their accept loops (which run until `shutdown`
    /// is cancelled) and returns. A bind error names the address.
    pub async fn serve(self: &Arc<Self>, shutdown: CancellationToken) -> Result<(), RotationError> {
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
            tokio::spawn(agent_check::serve(l, self.clone(), shutdown.clone()));
        }
        if let Some(l) = http {
            bound.1 = l.local_addr().ok();
            tracing::info!(addr = ?bound.1, "readiness endpoint listening");
            tokio::spawn(ready::serve(l, self.clone(), shutdown.clone()));
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

    /// What the host reports (to status and the coordinators).
    pub fn state(&self) -> Rotation {
        *self.state.borrow()
    }

    /// What the front ends answer load balancers.
    pub fn advertised(&self) -> Rotation {
        *self.advertised.borrow()
    }

    /// Whether no change is under way and the reported state is confirmed.
    pub fn settled(&self) -> bool {
        self.settled_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| Instant::now() >= t)
    }

    pub(crate) fn health(&self) -> Health {
        *self.health.borrow()
    }

    /// Follows the reported state.
    pub fn subscribe(&self) -> watch::Receiver<Rotation> {
        self.state.subscribe()
    }

    /// Follows the advertised state.
    pub fn subscribe_advertised(&self) -> watch::Receiver<Rotation> {
        self.advertised.subscribe()
    }

    /// Sets the reported and advertised state without waiting for anything (tests).
    pub fn set_state(&self, r: Rotation) {
        self.advertise(r);
        self.report(r);
    }

    fn report(&self, r: Rotation) {
        let old = self.state.send_replace(r);
        if old != r {
            tracing::info!(
                from = old.as_str_name(),
                to = r.as_str_name(),
                "rotation state"
            );
        }
    }

    fn advertise(&self, r: Rotation) {
        self.advertised.send_replace(r);
    }

    fn settle(&self, from: Option<Instant>) {
        *self.settled_at.lock().unwrap_or_else(|e| e.into_inner()) = from;
    }

    /// At start: asserts `drained` (what the journal says) to HAProxy, or learns that HAProxy
    /// holds the server out. See the module docs. Never fails: what cannot be confirmed is
    /// reported out of rotation.
    pub async fn reassert(&self, drained: bool) {
        let _change = self.change.lock().await;
        let Some(h) = &self.haproxy else {
            let grace = if drained {
                Duration::ZERO
            } else {
                self.cfg.undrain_grace
            };
            self.settle(Some(Instant::now() + grace));
            return;
        };
        let backend = match self.backend() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("{e}");
                self.set_state(Rotation::OutOfRotation);
                self.settle(Some(Instant::now()));
                return;
            }
        };
        if drained {
            if let Err(e) = h.set_state(backend, &self.server, "drain").await {
                tracing::warn!(error = %e, "cannot re-assert the drain to HAProxy at start");
            }
        } else if self.health() == Health::Unprovisioned {
            // Nothing is installed: HAProxy has the server in MAINT through the agent-check,
            // as it should; there is no rotation to assert.
        } else {
            match h.server_stat(backend, &self.server).await {
                Ok(stat) if is_up(&stat.status) => {
                    if let Err(e) = h.set_state(backend, &self.server, "ready").await {
                        tracing::warn!(error = %e, "cannot re-assert `ready` to HAProxy at start");
                    }
                }
                Ok(stat) => {
                    tracing::warn!(
                        server = %self.server,
                        status = %stat.status,
                        "HAProxy does not have this server UP (left drained by a previous \
                         agent?): out of rotation until an undrain confirms it back"
                    );
                    self.set_state(Rotation::OutOfRotation);
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "cannot read this server's state from HAProxy at start: out of rotation \
                         until an undrain confirms it back"
                    );
                    self.set_state(Rotation::OutOfRotation);
                }
            }
        }
        self.settle(Some(Instant::now()));
    }

    /// Leaves rotation and waits for confirmation; returns how long it took. See module docs.
    pub async fn drain(&self) -> Result<Duration, RotationError> {
        let _change = self.change.lock().await;
        let t0 = Instant::now();
        self.settle(None);
        self.set_state(Rotation::Draining);
        let r = self.confirm_drain(t0).await;
        if r.is_ok() {
            self.set_state(Rotation::OutOfRotation);
        }
        self.settle(Some(Instant::now()));
        r.map(|()| t0.elapsed())
    }

    async fn confirm_drain(&self, t0: Instant) -> Result<(), RotationError> {
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
        Ok(())
    }

    /// Returns to rotation and waits for confirmation; returns how long it took. The host is
    /// reported `in_rotation` only once confirmed; on failure the change is reverted.
    pub async fn undrain(&self) -> Result<Duration, RotationError> {
        let _change = self.change.lock().await;
        let t0 = Instant::now();
        self.settle(None);
        let before = self.state();
        self.advertise(Rotation::InRotation);
        let mut hook_ran = false;
        let r = self.confirm_undrain(t0, &mut hook_ran).await;
        match &r {
            Ok(()) => self.report(Rotation::InRotation),
            Err(e) => {
                tracing::warn!(error = %e, "undrain not confirmed; advertising drain again");
                let out = if before == Rotation::InRotation {
                    Rotation::OutOfRotation
                } else {
                    before
                };
                self.advertise(out);
                if let (Some(h), Ok(backend)) = (&self.haproxy, self.backend()) {
                    if let Err(e) = h.set_state(backend, &self.server, "drain").await {
                        tracing::warn!(error = %e, "cannot set the server back to drain");
                    }
                }
                if hook_ran {
                    if let Err(e) = self.run_hook("drain_hook", &self.cfg.drain_hook).await {
                        tracing::warn!(error = %e, "drain_hook after a failed undrain");
                    }
                }
                self.report(out);
            }
        }
        self.settle(Some(Instant::now()));
        r.map(|()| t0.elapsed())
    }

    async fn confirm_undrain(&self, t0: Instant, hook_ran: &mut bool) -> Result<(), RotationError> {
        self.run_hook("undrain_hook", &self.cfg.undrain_hook)
            .await?;
        *hook_ran = !self.cfg.undrain_hook.is_empty();
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
        Ok(())
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

/// Whether HAProxy's `status` says the server takes traffic: `UP` (perhaps going down,
/// `UP 1/2`) or `no check`. A `DOWN` server may also be in admin drain (the status does not
/// say), so anything else counts as out until an undrain confirms it.
fn is_up(status: &str) -> bool {
    status.starts_with("UP") || status == "no check"
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
