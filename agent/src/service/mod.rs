//! Service control: stopping and starting the one service this agent deploys.
//!
//! Three modes, chosen by `[service] control`:
//!
//! - **`exec`** — the agent supervises the service itself ([`exec`]). The process runs in its own
//!   process group with stdin from `/dev/null` and the agent's stdout/stderr (journald), so it
//!   survives the agent: an agent upgrade or crash must not take the service down. Its
//!   `(pid, start_time, boot_id)` is handed to the caller through `on_child` for the journal,
//!   and a restarted agent re-adopts it ([`ServiceController::adopt_or_start`]) instead of
//!   starting a second copy; with the record lost or unreadable, it looks for the service
//!   running from the release store before starting anything (`proc::find_in_store`). A process
//!   that dies on its own is restarted with backoff and [`ServiceController::subscribe_alive`]
//!   reports `false` meanwhile. A stop that fails leaves the process supervised: nothing is
//!   started next to a process that may still run.
//! - **`systemd`** — `systemctl restart <unit>`, then `systemctl is-active` until `active`.
//!   systemd owns the process; the unit should `ExecStart` through the `current` symlink.
//! - **`command`** — the user's `stop` argv, then their `start` argv, each bounded in time.
//!   `stop` runs with `{current}` and `HOTDEPLOY_RELEASE` of the release being stopped: the
//!   one the service was last started on (journaled through `on_release`), not the one
//!   `current` already points at when a deploy restarts the service.
//!
//! In `exec` and `command` mode, `{current}` anywhere in an argv element is replaced by the
//! *resolved* path of the release being (re)started (`root/releases/<id>`, symlinks followed), so
//! a process never keeps a path that the next swap will repoint. The environment is the agent's,
//! plus `[service.env]`, plus `HOTDEPLOY_RELEASE=<id>`. An `exec` service runs with the release
//! directory as its working directory.
//!
//! All operations are serialized by one async mutex: a restart never interleaves with a stop.
//! At the agent's shutdown (the `shutdown` token) supervisors detach and leave the service
//! running.

mod exec;
pub(crate) mod proc;

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
use tokio_util::sync::CancellationToken;

/// A supervised process, as journaled: `start_time` is field 22 of `/proc/<pid>/stat` and
/// `boot_id` names the boot, so a reused pid is never mistaken for our child, not even after a
/// reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRecord {
    pub pid: i32,
    pub start_time: u64,
    /// `None` in records of older agents.
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// What the controller tells, and is told by, the agent's journal.
pub struct ServiceHooks {
    /// Hears every change of the supervised child (`Some` on spawn/adopt, `None` on stop or
    /// death).
    pub on_child: Arc<dyn Fn(Option<ChildRecord>) + Send + Sync>,
    /// Hears the release the service is being (re)started on.
    pub on_release: Arc<dyn Fn(&str) + Send + Sync>,
    /// The release the service was last started on, from the journal; `None`: unknown
    /// (`current` stands in).
    pub last_release: Option<String>,
    /// The agent's shutdown.
    pub shutdown: CancellationToken,
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
    on_release: Arc<dyn Fn(&str) + Send + Sync>,
    /// The release the service was last (re)started on; what `stop` stops.
    live: Mutex<Option<String>>,
    /// The `exec` supervisor, if one runs. The mutex also serializes every operation.
    running: tokio::sync::Mutex<Option<Running>>,
}

impl ServiceController {
    /// `root` holds `current` and `releases/`; `on_child` hears every change of the supervised
    /// child so the caller can journal it. (Tests; the daemon uses [`Self::with_hooks`].)
    pub fn new(
        cfg: &ServiceConfig,
        root: &Path,
        on_child: Arc<dyn Fn(Option<ChildRecord>) + Send + Sync>,
    ) -> Arc<Self> {
        Self::with_hooks(
            cfg,
            root,
            ServiceHooks {
                on_child,
                on_release: Arc::new(|_| {}),
                last_release: None,
                shutdown: CancellationToken::new(),
            },
        )
    }

    /// A controller that reports to, and starts from, the journal through `hooks`.
    pub fn with_hooks(cfg: &ServiceConfig, root: &Path, hooks: ServiceHooks) -> Arc<Self> {
        // Nothing runs until a process is started or adopted: no health is vouched for before.
        let (alive, _) = watch::channel(false);
        Arc::new(Self {
            cfg: cfg.clone(),
            root: root.to_path_buf(),
            shared: Arc::new(Shared {
                alive,
                child: Mutex::new(None),
                on_child: hooks.on_child,
                shutdown: hooks.shutdown,
                #[cfg(test)]
                fail_stops: Default::default(),
            }),
            on_release: hooks.on_release,
            live: Mutex::new(hooks.last_release),
            running: tokio::sync::Mutex::new(None),
        })
    }

    /// At agent start. `exec` mode: adopt the service if it still runs, else start
    /// `release_id` (or whatever `current` points at), if anything is deployed. Other modes
    /// manage themselves: nothing to do.
    pub async fn adopt_or_start(
        &self,
        recorded: Option<ChildRecord>,
        release_id: Option<&str>,
    ) -> Result<(), ServiceError> {
        if self.adopt(recorded, release_id).await? || self.cfg.control != ServiceControl::Exec {
            return Ok(());
        }
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(());
        }
        let release = release_id
            .map(str::to_string)
            .or_else(|| self.current_release());
        match release {
            Some(id) => self.start_locked(&mut running, &id),
            None => {
                tracing::info!("nothing deployed yet; not starting the service");
                Ok(())
            }
        }
    }

    /// At agent start, `exec` mode: adopts the service if it still runs, and starts nothing.
    /// The service is the journaled child `recorded` if it is alive (same pid, start time and
    /// boot), else a process group leader running from the release store (the record may be
    /// lost or unreadable). `true` if a process is supervised afterwards.
    pub async fn adopt(
        &self,
        recorded: Option<ChildRecord>,
        release_id: Option<&str>,
    ) -> Result<bool, ServiceError> {
        if self.cfg.control != ServiceControl::Exec {
            return Ok(false);
        }
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(true);
        }
        let found = match recorded.filter(proc::is_alive) {
            Some(rec) => Some(rec),
            None => proc::find_in_store(&self.root.join("releases")).inspect(|rec| {
                tracing::warn!(
                    pid = rec.pid,
                    "the journal names no live service, but one runs from the release store"
                );
            }),
        };
        let Some(rec) = found else {
            return Ok(false);
        };
        tracing::info!(pid = rec.pid, "adopting the running service");
        let release = release_id
            .map(str::to_string)
            .or_else(|| self.release_of(rec.pid))
            .or_else(|| self.current_release());
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
        Ok(true)
    }

    /// Starts the service on `release_id` if it is not running (`exec`); a no-op in the other
    /// modes. Not a restart: nothing that runs is stopped.
    pub async fn start(&self, release_id: &str) -> Result<(), ServiceError> {
        if self.cfg.control != ServiceControl::Exec {
            return Ok(());
        }
        let mut running = self.running.lock().await;
        if running.as_ref().is_some_and(|r| !r.ended()) {
            return Ok(());
        }
        self.start_locked(&mut running, release_id)
    }

    /// Whether the service runs, where the agent can tell: `exec` mode, a supervised process
    /// (alive, or being restarted after it died). `None` in the other modes.
    pub fn running(&self) -> Option<bool> {
        if self.cfg.control != ServiceControl::Exec {
            return None;
        }
        Some(match self.running.try_lock() {
            Ok(r) => r.as_ref().is_some_and(|r| !r.ended()),
            Err(_) => true, // an operation is under way
        })
    }

    /// Stops the service, then starts it on release `release_id`.
    pub async fn restart(&self, release_id: &str) -> Result<(), ServiceError> {
        let mut running = self.running.lock().await;
        match self.cfg.control {
            ServiceControl::Exec => {
                // Resolve first: a missing release must not cost us the running service.
                let spec = self.spec(release_id)?;
                if let Some(r) = running.as_ref() {
                    // On error the old process stays supervised: never start a second copy.
                    r.stop().await?;
                }
                *running = None;
                self.starting(release_id);
                self.spawn_locked(&mut running, spec)
            }
            ServiceControl::Systemd => {
                self.starting(release_id);
                self.systemd_restart().await
            }
            ServiceControl::Command => {
                let spec = self.spec(release_id)?;
                self.command_stop().await?;
                self.starting(release_id);
                let argv = substitute(&self.cfg.start, &spec.cwd);
                self.check(&argv, &spec.env, "start").await
            }
        }
    }

    /// Stops the service.
    pub async fn stop(&self) -> Result<(), ServiceError> {
        let mut running = self.running.lock().await;
        match self.cfg.control {
            ServiceControl::Exec => {
                if let Some(r) = running.as_ref() {
                    r.stop().await?;
                }
                *running = None;
                Ok(())
            }
            ServiceControl::Systemd => {
                let unit = self.unit()?;
                self.check(&argv(&["systemctl", "stop", unit]), &[], "systemctl")
                    .await
            }
            ServiceControl::Command => self.command_stop().await,
        }
    }

    /// After the agent's shutdown token is cancelled: waits up to `bound` for the `exec`
    /// supervisor to detach from the service (which keeps running) and let go of what it holds,
    /// the `on_child` hook and through it the journal. `false` if it did not within `bound`.
    /// Without this, a supervisor still winding down when the agent has "stopped" keeps the
    /// journal open, and an agent started again in the same process cannot open it.
    pub async fn detached(&self, bound: Duration) -> bool {
        if !self.shared.shutdown.is_cancelled() {
            return false; // supervisors detach only at the shutdown
        }
        let ended = async {
            if let Some(r) = self.running.lock().await.take() {
                r.wait_ended().await;
            }
        };
        tokio::time::timeout(bound, ended).await.is_ok()
    }

    /// The supervised child (`exec` mode), if one runs.
    pub fn child(&self) -> Option<ChildRecord> {
        self.shared
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `exec` mode: `true` once a process was started or adopted, `false` before that and while
    /// it is dead or being restarted after dying on its own (a requested stop is not a death).
    /// Meaningless in the other modes, where it stays `false`.
    pub fn subscribe_alive(&self) -> watch::Receiver<bool> {
        self.shared.alive.subscribe()
    }

    /// Test fault: the next `n` stops fail as if the process outlived SIGKILL.
    #[cfg(test)]
    pub(crate) fn fail_next_stops(&self, n: usize) {
        self.shared
            .fail_stops
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Remembers (and journals) the release the service is being started on.
    fn starting(&self, id: &str) {
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.to_owned());
        (self.on_release)(id);
    }

    fn start_locked(&self, running: &mut Option<Running>, id: &str) -> Result<(), ServiceError> {
        let spec = self.spec(id)?;
        self.starting(id);
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

    /// The release an adopted process runs, from its working directory (`releases/<id>`).
    fn release_of(&self, pid: i32) -> Option<String> {
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
        let releases = std::fs::canonicalize(self.root.join("releases")).ok()?;
        if cwd.parent() != Some(releases.as_path()) {
            return None;
        }
        Some(cwd.file_name()?.to_str()?.to_owned())
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

    /// Runs the `stop` argv with `{current}` and `HOTDEPLOY_RELEASE` of the release being
    /// stopped: the one last started, else (unknown) the one `current` names.
    async fn command_stop(&self) -> Result<(), ServiceError> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (dir, env) = match live.or_else(|| self.current_release()) {
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
