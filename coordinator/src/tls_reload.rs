//! Certificate rotation without a restart: on SIGHUP, the node re-reads its `[tls]` files.
//!
//! `systemctl reload hotdeploy-coordinator` (the unit's `ExecReload`) sends SIGHUP; the
//! [`Reloader`] then re-reads `ca`, `cert`, `key` and `crl` for both sides: the listeners'
//! [`ServerTls`] (gRPC and `http_listen` share it) and the peers' [`ClientTls`]. New
//! connections, in and out, use the new files; open ones carry on with what they negotiated.
//!
//! Invariants:
//! - A failed reload (a missing file, a key that does not match its certificate) changes
//!   nothing: the previous settings stay in use, and the log says why.
//! - The server side is reloaded first, the client side only if that worked, so that a bad set
//!   of files never leaves the two sides on different certificates.
//! - The handler is installed by [`Reloader::listen`], before the task runs, so that a SIGHUP
//!   that arrives as the node starts is queued rather than taken for the default action (which
//!   would end the process).
//! - Like every long-lived task of the node, [`Reloader::run`] ends on the one shutdown signal,
//!   and the node awaits it before it exits.
//!
//! Left out: reloading anything but `[tls]` (other config keys need a restart), and reloading
//! a node started with `insecure = true` (it has nothing to reload, and says so).

use hotdeploy_common::tls::{ClientTls, ServerTls};
use std::future::Future;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The SIGHUP handler of one node, and the settings it reloads.
pub struct Reloader {
    hangup: Signal,
    server: Option<ServerTls>,
    client: ClientTls,
}

impl Reloader {
    /// Installs the SIGHUP handler for `server` (`None`: `insecure = true`) and `client`.
    pub fn listen(server: Option<ServerTls>, client: ClientTls) -> std::io::Result<Reloader> {
        Ok(Reloader {
            hangup: signal(SignalKind::hangup())?,
            server,
            client,
        })
    }

    /// Reloads on each SIGHUP, until `shutdown`.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                received = self.hangup.recv() => match received {
                    Some(()) => self.reload(),
                    None => return,
                },
                _ = &mut shutdown => return,
            }
        }
    }

    /// One reload, logged.
    fn reload(&self) {
        let Some(server) = &self.server else {
            tracing::info!("SIGHUP: [tls] insecure = true, nothing to reload");
            return;
        };
        match server.reload().and_then(|()| self.client.reload()) {
            Ok(()) => tracing::info!("SIGHUP: reloaded the [tls] certificates, key, CA and CRL"),
            Err(e) => tracing::error!("SIGHUP: {e}; the previous certificates stay in use"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotdeploy_common::config::TlsConfig;
    use std::time::Duration;

    /// The reloader survives a SIGHUP and ends on the shutdown signal rather than running until
    /// it is aborted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reloader_ends_on_the_shutdown_signal() {
        let insecure = TlsConfig {
            insecure: true,
            ..TlsConfig::default()
        };
        let client = ClientTls::load(&insecure).unwrap();
        let reloader = Reloader::listen(None, client).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(reloader.run(async {
            let _ = stopped.await;
        }));
        // The handler is installed: a SIGHUP to this process is the reloader's, not fatal.
        let hup = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(hup.success(), "kill -HUP: {hup}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!running.is_finished(), "the reloader ended before shutdown");
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the reloader ends on shutdown")
            .unwrap();
    }
}
