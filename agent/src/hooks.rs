//! Lifecycle hooks: optional executables the operator plugs into a deploy (DESIGN §4).
//!
//! Each [`HookPoint`] maps to one `[hooks]` key (`before_drain`, `after_drain`, `before_swap`,
//! `after_swap`, `after_verify`, `on_rollback`). A point with no executable configured is a
//! no-op. A configured one runs with no arguments, stdin from `/dev/null`, and the agent's
//! environment plus:
//!
//! | variable                 | value                                   |
//! |--------------------------|-----------------------------------------|
//! | `HOTDEPLOY_HOOK`         | the point, e.g. `before_drain`          |
//! | `HOTDEPLOY_HOST`         | this host's id                          |
//! | `HOTDEPLOY_SERVICE`      | the service name                        |
//! | `HOTDEPLOY_FROM_RELEASE` | the release being replaced (may be "")  |
//! | `HOTDEPLOY_TO_RELEASE`   | the release being deployed              |
//! | `HOTDEPLOY_ROLLOUT`      | the rollout id                          |
//! | `HOTDEPLOY_PHASE`        | the deploy journal phase                |
//!
//! It must exit 0 within `[hooks] timeout`; otherwise its whole process group is killed and the
//! hook fails, with its exit status and the tail of its stderr. What a failure means (abort the
//! deploy, roll back, or just log) is the deploy engine's decision, not this module's.

use crate::cmd::{run, CmdError};
use hotdeploy_common::config::HooksConfig;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Where in a deploy a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookPoint {
    BeforeDrain,
    AfterDrain,
    BeforeSwap,
    AfterSwap,
    AfterVerify,
    OnRollback,
}

impl HookPoint {
    /// The `[hooks]` key, also the value of `HOTDEPLOY_HOOK`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookPoint::BeforeDrain => "before_drain",
            HookPoint::AfterDrain => "after_drain",
            HookPoint::BeforeSwap => "before_swap",
            HookPoint::AfterSwap => "after_swap",
            HookPoint::AfterVerify => "after_verify",
            HookPoint::OnRollback => "on_rollback",
        }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a hook is told about the deploy.
#[derive(Debug, Clone, Default)]
pub struct HookEnv {
    pub host: String,
    pub service: String,
    pub from_release: String,
    pub to_release: String,
    pub rollout: String,
    pub phase: String,
}

/// A hook that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{point} hook {}: cannot run: {reason}", path.display())]
    Run {
        point: HookPoint,
        path: PathBuf,
        reason: String,
    },
    #[error("{point} hook {} was killed after {after:?}", path.display())]
    Timeout {
        point: HookPoint,
        path: PathBuf,
        after: Duration,
    },
    #[error("{point} hook {} failed with {status}; stderr: {stderr}", path.display())]
    Failed {
        point: HookPoint,
        path: PathBuf,
        status: String,
        stderr: String,
    },
}

/// The configured hooks.
#[derive(Debug, Clone)]
pub struct Hooks {
    cfg: HooksConfig,
}

impl Hooks {
    pub fn new(cfg: &HooksConfig) -> Self {
        Self { cfg: cfg.clone() }
    }

    fn path(&self, point: HookPoint) -> Option<&PathBuf> {
        let c = &self.cfg;
        match point {
            HookPoint::BeforeDrain => c.before_drain.as_ref(),
            HookPoint::AfterDrain => c.after_drain.as_ref(),
            HookPoint::BeforeSwap => c.before_swap.as_ref(),
            HookPoint::AfterSwap => c.after_swap.as_ref(),
            HookPoint::AfterVerify => c.after_verify.as_ref(),
            HookPoint::OnRollback => c.on_rollback.as_ref(),
        }
    }

    /// Whether a hook is configured for `point`.
    pub fn configured(&self, point: HookPoint) -> bool {
        self.path(point).is_some()
    }

    /// Runs the hook for `point`, if one is configured.
    pub async fn run(&self, point: HookPoint, env: &HookEnv) -> Result<(), HookError> {
        let Some(path) = self.path(point) else {
            return Ok(());
        };
        let vars = [
            ("HOTDEPLOY_HOOK", point.as_str()),
            ("HOTDEPLOY_HOST", &env.host),
            ("HOTDEPLOY_SERVICE", &env.service),
            ("HOTDEPLOY_FROM_RELEASE", &env.from_release),
            ("HOTDEPLOY_TO_RELEASE", &env.to_release),
            ("HOTDEPLOY_ROLLOUT", &env.rollout),
            ("HOTDEPLOY_PHASE", &env.phase),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let argv = [path.to_string_lossy().into_owned()];
        tracing::info!(hook = %point, path = %path.display(), "running hook");
        let out = run(&argv, &vars, None, self.cfg.timeout)
            .await
            .map_err(|e| match e {
                CmdError::Timeout { after, .. } => HookError::Timeout {
                    point,
                    path: path.clone(),
                    after,
                },
                e => HookError::Run {
                    point,
                    path: path.clone(),
                    reason: e.to_string(),
                },
            })?;
        if !out.stdout_tail.is_empty() {
            tracing::info!(hook = %point, output = %out.stdout_tail, "hook output");
        }
        if out.status.success() {
            Ok(())
        } else {
            Err(HookError::Failed {
                point,
                path: path.clone(),
                status: out.status.to_string(),
                stderr: out.stderr_tail,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn env() -> HookEnv {
        HookEnv {
            host: "web-1".into(),
            service: "app".into(),
            from_release: "r1".into(),
            to_release: "r2".into(),
            rollout: "ro-9".into(),
            phase: "draining".into(),
        }
    }

    #[tokio::test]
    async fn unconfigured_hook_is_ok() {
        Hooks::new(&HooksConfig::default())
            .run(HookPoint::AfterSwap, &env())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn env_reaches_the_hook() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let hook = script(
            dir.path(),
            "h",
            &format!(
                "echo \"$HOTDEPLOY_HOOK $HOTDEPLOY_HOST $HOTDEPLOY_SERVICE $HOTDEPLOY_FROM_RELEASE \
                 $HOTDEPLOY_TO_RELEASE $HOTDEPLOY_ROLLOUT $HOTDEPLOY_PHASE\" > {}",
                out.display()
            ),
        );
        let cfg = HooksConfig {
            before_drain: Some(hook),
            ..HooksConfig::default()
        };
        let hooks = Hooks::new(&cfg);
        hooks.run(HookPoint::BeforeDrain, &env()).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "before_drain web-1 app r1 r2 ro-9 draining\n"
        );
        // Other points are not configured.
        std::fs::remove_file(&out).unwrap();
        hooks.run(HookPoint::AfterDrain, &env()).await.unwrap();
        assert!(!out.exists());
    }

    #[tokio::test]
    async fn nonzero_exit_names_hook_status_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let hook = script(dir.path(), "h", "echo cache flush failed >&2; exit 7");
        let cfg = HooksConfig {
            on_rollback: Some(hook),
            ..HooksConfig::default()
        };
        let e = Hooks::new(&cfg)
            .run(HookPoint::OnRollback, &env())
            .await
            .unwrap_err();
        assert!(matches!(e, HookError::Failed { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("on_rollback"), "{msg}");
        assert!(msg.contains('7'), "{msg}");
        assert!(msg.contains("cache flush failed"), "{msg}");
    }

    #[tokio::test]
    async fn timeout_kills_the_hook() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("finished");
        let hook = script(
            dir.path(),
            "h",
            &format!("sleep 2; touch {}", marker.display()),
        );
        let cfg = HooksConfig {
            after_verify: Some(hook),
            timeout: Duration::from_millis(300),
            ..HooksConfig::default()
        };
        let t0 = std::time::Instant::now();
        let e = Hooks::new(&cfg)
            .run(HookPoint::AfterVerify, &env())
            .await
            .unwrap_err();
        assert!(matches!(e, HookError::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(2300)).await;
        assert!(!marker.exists(), "the hook kept running after its timeout");
    }

    #[tokio::test]
    async fn missing_executable_is_an_error() {
        let cfg = HooksConfig {
            after_swap: Some("/nonexistent/hook".into()),
            ..HooksConfig::default()
        };
        let e = Hooks::new(&cfg)
            .run(HookPoint::AfterSwap, &env())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/hook"), "{e}");
    }
}
