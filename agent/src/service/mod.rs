//! Service control: stopping and starting the one service this agent deploys.
//!
//! Three modes, chosen by `[service] control`:
//!
//! - **`exec`** — the agent supervises the service itself ([`exec`]). The process runs in its own
//!   process group with stdin from `/dev/null` and the agent's stdout/stderr (journald), so it
//!   survives the agent: an agent upgrade or crash must not take the service down. Its
//!   `(pid, start_time)` is handed to the caller through `on_child` for the journal, and a
//!   restarted agent re-adopts it ([`ServiceController::adopt_or_start`]) instead of starting a
//!   second copy. A process that dies on its own is restarted with backoff and
//!   [`ServiceController::subscribe_alive`] reports `false` meanwhile.
//! - **`systemd`** — `systemctl restart <unit>`, then `systemctl is-active` until `active`.
//!   systemd owns the process; the unit should `ExecStart` through the `current` symlink.
//! - **`command`** — the user's `stop` argv, then their `start` argv, each bounded in time.
//!
//! In `exec` and `command` mode, `{current}` anywhere in an argv element is replaced by the
//! *resolved* path of the release being (re)started (`root/releases/<id>`, symlinks followed), so
//! a process never keeps a path that the next swap will repoint. The environment is the agent's,
//! plus `[service.env]`, plus `HOTDEPLOY_RELEASE=<id>`. An `exec` service runs with the release
//! directory as its working directory.
//!
//! All operations are serialized by one async mutex: a restart never interleaves with a stop.

mod exec;
mod proc;

#[cfg(test)]
mod tests;

use crate::cmd::run as run_command;

use exec::{Proc, Running, Shared, SpawnSpec};
use hotdeploy_common::config::{ServiceConfig, ServiceControl};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A supervised process, as journaled: `start_time` is field 22 of `/proc/<pid>/stat`, so a
/// reused pid is never mistaken for our child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRecord {
    pub pid: i32,
    pub start_time: u64,
}

/// Why a service operation failed; every variant says which command, unit or process.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service config: {0}")]
    Config(String),
    #[error("release {id}: {} is not usable: {source}", path.display())]
    Release {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Failed { what: String, reason: String },
    #[error("unit {unit} is not active after {after:?} (last state: {state})")]
    NotActive {
        unit: String,
        state: String,
        after: Duration,
    },
}

/// Extra time, on top of `stop_timeout`, given to `systemctl` and `command`-mode scripts.
const COMMAND_SLACK: Duration = Duration::from_secs(30);
const IS_ACTIVE_POLL: Duration = Duration::from_millis(250);

/// Stops and starts the service; see the module docs.
pub struct ServiceController {
    cfg: ServiceConfig,
    root: PathBuf,
    shared: Arc<Shared>,
    /// The `exec` supervisor, if one runs. The mutex also serializes every operation.
    running: tokio::sync::Mutex<Option<Running>>,
}

impl ServiceController {
    /// `root` holds `current` and `releases/`; `on_child` hears every change of the supervised
    /// child (`Some` on spawn/adopt, `None` on stop or death) so the caller can journal it.
    pub fn new(
        cfg: &ServiceConfig,
        root: &Path,
        on_child: Arc<dyn Fn(Option<ChildRecord>) + Send + Sync>,
    ) -> Arc<Self> {
        let (alive, _) = watch::channel(true);
        Arc::new(Self {
            cfg: cfg.clone(),
            root: root.to_path_buf(),
            shared: Arc::new(Shared {
                alive,
                child: Mutex::new(None),
                on_child,
            }),
            running: tokio::sync::Mutex::new(None),
        })
    }

    /// At agent start. `exec` mode: adopt `previous_child` if it still runs (same start time);
    /// otherwise start `release_id` (or whatever `current` points at), if anything is deployed.
    /// Other modes manage themselves: nothing to do.
    pub async fn adopt_or_start(
        &self,
        previous_child: Option<ChildRecord>,
        release_id: Option<&str>,
    ) -> Result<(), ServiceError> {
        if self.cfg.control != ServiceControl::Exec {
            return Ok(());
        }
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(());
        }
        let release = release_id
            .map(str::to_string)
            .or_else(|| self.current_release());
        if let Some(rec) = previous_child.filter(proc::is_alive) {
            tracing::info!(pid = rec.pid, "adopting the running service");
            // The spec is only used if the adopted process later dies on its own.
            let spec = match &release {
                Some(id) => self.spec(id).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "release of the adopted service is not usable");
                    self.unresolved_spec(id)
                }),
                None => self.unresolved_spec("current"),
            };
            self.shared.set_child(Some(rec.clone()));
            self.shared.alive.send_replace(true);
            *running = Some(Running::start(
                Proc::Adopted(rec),
                spec,
                self.shared.clone(),
                self.cfg.stop_timeout,
            ));
            return Ok(());
        }
        match release {
            Some(id) => self.start_locked(&mut running, &id),
            None => {
                tracing::info!("nothing deployed yet; not starting the service");
                Ok(())
            }
        }
    }

    /// Stops the service, then starts it on release `release_id`.
    pub async fn restart(&self, release_id: &str) -> Result<(), ServiceError> {
        let mut running = self.running.lock().await;
        match self.cfg.control {
            ServiceControl::Exec => {
                // Resolve first: a missing release must not cost us the running service.
                let spec = self.spec(release_id)?;
                if let Some(r) = running.take() {
                    r.stop().await?;
                }
                self.spawn_locked(&mut running, spec)
            }
            ServiceControl::Systemd => self.systemd_restart().await,
            ServiceControl::Command => {
                let spec = self.spec(release_id)?;
                self.command_stop().await?;
                let argv = substitute(&self.cfg.start, &spec.cwd);
                self.check(&argv, &spec.env, "start").await
            }
        }
    }

    /// Stops the service.
    pub async fn stop(&self) -> Result<(), ServiceError> {
        let mut running = self.running.lock().await;
        match self.cfg.control {
            ServiceControl::Exec => match running.take() {
                Some(r) => r.stop().await,
                None => Ok(()),
            },
            ServiceControl::Systemd => {
                let unit = self.unit()?;
                self.check(&argv(&["systemctl", "stop", unit]), &[], "systemctl")
                    .await
            }
            ServiceControl::Command => self.command_stop().await,
        }
    }

    /// The supervised child (`exec` mode), if one runs.
    pub fn child(&self) -> Option<ChildRecord> {
        self.shared
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `false` while the `exec` child is dead or being restarted after dying on its own.
    pub fn subscribe_alive(&self) -> watch::Receiver<bool> {
        self.shared.alive.subscribe()
    }

    fn start_locked(&self, running: &mut Option<Running>, id: &str) -> Result<(), ServiceError> {
        let spec = self.spec(id)?;
        self.spawn_locked(running, spec)
    }

    fn spawn_locked(
        &self,
        running: &mut Option<Running>,
        spec: SpawnSpec,
    ) -> Result<(), ServiceError> {
        let proc = match exec::spawn(&spec) {
            Ok(p) => p,
            Err(e) => {
                self.shared.alive.send_replace(false);
                return Err(e);
            }
        };
        self.shared.set_child(Some(proc.record().clone()));
        self.shared.alive.send_replace(true);
        *running = Some(Running::start(
            proc,
            spec,
            self.shared.clone(),
            self.cfg.stop_timeout,
        ));
        Ok(())
    }

    /// The release `current` points at, by id (its directory name).
    fn current_release(&self) -> Option<String> {
        let real = std::fs::canonicalize(self.root.join("current")).ok()?;
        Some(real.file_name()?.to_str()?.to_string())
    }

    /// The spawn spec for release `id`, with `{current}` resolved to its real path.
    fn spec(&self, id: &str) -> Result<SpawnSpec, ServiceError> {
        let path = self.root.join("releases").join(id);
        let real = std::fs::canonicalize(&path).map_err(|source| ServiceError::Release {
            id: id.to_string(),
            path: path.clone(),
            source,
        })?;
        if !real.is_dir() {
            return Err(ServiceError::Release {
                id: id.to_string(),
                path,
                source: std::io::Error::other("not a directory"),
            });
        }
        Ok(self.spec_at(id, real))
    }

    fn unresolved_spec(&self, id: &str) -> SpawnSpec {
        self.spec_at(id, self.root.join("releases").join(id))
    }

    fn spec_at(&self, id: &str, dir: PathBuf) -> SpawnSpec {
        let mut env: Vec<(String, String)> = self
            .cfg
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.push(("HOTDEPLOY_RELEASE".into(), id.to_string()));
        SpawnSpec {
            release: id.to_string(),
            argv: substitute(&self.cfg.exec, &dir),
            env,
            cwd: dir,
        }
    }

    fn unit(&self) -> Result<&str, ServiceError> {
        self.cfg
            .unit
            .as_deref()
            .ok_or_else(|| ServiceError::Config("control = \"systemd\" needs a unit".into()))
    }

    fn command_budget(&self) -> Duration {
        self.cfg.stop_timeout + COMMAND_SLACK
    }

    /// Runs the `stop` argv with `{current}` and `HOTDEPLOY_RELEASE` of the live release.
    async fn command_stop(&self) -> Result<(), ServiceError> {
        let (dir, env) = match self.current_release() {
            Some(id) => {
                let spec = self.unresolved_spec(&id);
                let dir = std::fs::canonicalize(&spec.cwd).unwrap_or(spec.cwd);
                (dir, spec.env)
            }
            None => (
                self.root.join("current"),
                self.spec_at("", PathBuf::new()).env,
            ),
        };
        let argv = substitute(&self.cfg.stop, &dir);
        self.check(&argv, &env, "stop").await
    }

    async fn systemd_restart(&self) -> Result<(), ServiceError> {
        let unit = self.unit()?;
        self.check(&argv(&["systemctl", "restart", unit]), &[], "systemctl")
            .await?;
        let budget = self.command_budget();
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            // `is-active` exits non-zero for anything but active; its stdout is the state.
            let state = match run_command(
                &argv(&["systemctl", "is-active", unit]),
                &[],
                None,
                Duration::from_secs(10),
            )
            .await
            {
                Ok(out) if out.status.success() && out.stdout_tail == "active" => return Ok(()),
                Ok(out) => out.stdout_tail,
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(ServiceError::NotActive {
                    unit: unit.to_string(),
                    state,
                    after: budget,
                });
            }
            tokio::time::sleep(IS_ACTIVE_POLL).await;
        }
    }

    /// Runs `argv`; a failure to start, a timeout or a non-zero exit is an error naming `what`.
    async fn check(
        &self,
        argv: &[String],
        env: &[(String, String)],
        what: &str,
    ) -> Result<(), ServiceError> {
        let what = format!("{what} command `{}`", argv.join(" "));
        let out = run_command(argv, env, None, self.command_budget())
            .await
            .map_err(|e| ServiceError::Failed {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ServiceError::Failed {
                what,
                reason: out.describe_failure(),
            })
        }
    }
}

/// Replaces `{current}` in each element of `argv` with `dir`.
pub(crate) fn substitute(argv: &[String], dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    argv.iter().map(|a| a.replace("{current}", &dir)).collect()
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}
