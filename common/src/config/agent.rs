//! `hotdeploy-agent --config FILE`.

use super::{check_addr, invalid, parse_toml, read_text, ConfigError, LimitsConfig, TlsConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The agent's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub host_id: String,
    /// The groups this host belongs to; they must exist on the coordinators.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Coordinator addresses (`host:port`). Empty: standalone, no lock.
    #[serde(default)]
    pub coordinators: Vec<String>,
    /// The agent's gRPC address.
    pub listen: String,
    /// Where the deploy journal lives.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    pub service: ServiceConfig,
    #[serde(default)]
    pub rotation: RotationConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub artifact: ArtifactConfig,
    #[serde(default)]
    pub hooks: HooksConfig,
    /// Prometheus `GET /metrics` (`host:port`, plain HTTP); unset: no metrics listener.
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

/// How the agent controls its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceControl {
    /// The agent supervises `exec` as a child in its own process group.
    Exec,
    /// `systemctl restart <unit>`.
    Systemd,
    /// User-given `stop` and `start` argv arrays.
    Command,
}

/// `[service]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    /// The release store: `releases/`, `current`, `previous` live here.
    pub root: PathBuf,
    pub control: ServiceControl,
    #[serde(default)]
    pub exec: Vec<String>,
    pub unit: Option<String>,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub start: Vec<String>,
    #[serde(default = "default_stop_timeout", with = "humantime_serde")]
    pub stop_timeout: Duration,
    #[serde(default = "default_keep_releases")]
    pub keep_releases: usize,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_keep_releases() -> usize {
    5
}

/// `[rotation]`: the front ends that tell load balancers whether to send traffic here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// TCP address of the HAProxy agent-check responder.
    pub haproxy_agent_listen: Option<String>,
    /// HTTP address serving `GET /ready`.
    pub http_listen: Option<String>,
    /// Without a runtime socket: how long to wait after draining. The default covers
    /// 2 × HAProxy's default agent-inter (1s).
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// With a runtime socket: the most to wait for current sessions to reach zero.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Without a runtime socket: how long to wait after undraining before the slot is released.
    #[serde(with = "humantime_serde")]
    pub undrain_grace: Duration,
    /// HAProxy's runtime API (stats socket, `level admin`), for confirmed drains.
    pub haproxy_socket: Option<PathBuf>,
    pub haproxy_backend: Option<String>,
    /// Defaults to `host_id`.
    pub haproxy_server: Option<String>,
    /// Optional commands run to drain and undrain (argv arrays).
    #[serde(default)]
    pub drain_hook: Vec<String>,
    #[serde(default)]
    pub undrain_hook: Vec<String>,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            haproxy_agent_listen: None,
            http_listen: None,
            drain_grace: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
            undrain_grace: Duration::from_secs(2),
            haproxy_socket: None,
            haproxy_backend: None,
            haproxy_server: None,
            drain_hook: Vec::new(),
            undrain_hook: Vec::new(),
        }
    }
}

/// `[verify]`: the health probes that decide whether a release is good.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// `http://host:port/path` probe.
    pub http: Option<String>,
    /// `host:port` TCP connect probe.
    pub tcp: Option<String>,
    /// argv probe; exit 0 is healthy.
    pub exec: Vec<String>,
    pub expect_status: u16,
    pub body_contains: Option<String>,
    pub success_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            http: None,
            tcp: None,
            exec: Vec::new(),
            expect_status: 200,
            body_contains: None,
            success_threshold: 3,
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(60),
            settle: Duration::from_secs(2),
        }
    }
}

/// `[health]`: probing the service between deploys (DESIGN §3, §4).
///
/// Every `interval` the agent runs one round of probes (each bounded by `probe_timeout`); after
/// `unhealthy_after` consecutive failed rounds the host reports `unhealthy`, and after
/// `healthy_after` consecutive good rounds it reports `healthy` again. The probes are the
/// `[verify]` ones unless this table names its own (`http`, `tcp`, `exec`): then exactly those,
/// with this table's `expect_status` and `body_contains`. See [`HealthConfig::probes`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Consecutive failed rounds before the host is `unhealthy`.
    pub unhealthy_after: u32,
    /// Consecutive good rounds before an unhealthy host is `healthy` again.
    pub healthy_after: u32,
    /// The most one probe may take; a probe still running then has failed. Default: the
    /// interval.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Option<Duration>,
    /// Own probes (any of the three replaces all of `[verify]`'s).
    pub http: Option<String>,
    pub tcp: Option<String>,
    pub exec: Vec<String>,
    /// With own probes: the `http` probe's expected status [200] and body substring.
    pub expect_status: Option<u16>,
    pub body_contains: Option<String>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            unhealthy_after: 3,
            healthy_after: 2,
            probe_timeout: None,
            http: None,
            tcp: None,
            exec: Vec::new(),
            expect_status: None,
            body_contains: None,
        }
    }
}

/// The probes the health monitor runs, resolved from `[health]` and `[verify]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthProbes {
    pub http: Option<String>,
    pub tcp: Option<String>,
    pub exec: Vec<String>,
    pub expect_status: u16,
    pub body_contains: Option<String>,
}

impl HealthConfig {
    /// Whether the table names probes of its own.
    pub fn has_own_probes(&self) -> bool {
        self.http.is_some() || self.tcp.is_some() || !self.exec.is_empty()
    }

    /// The probes to run: this table's own if it names any, else `verify`'s.
    pub fn probes(&self, verify: &VerifyConfig) -> HealthProbes {
        if self.has_own_probes() {
            HealthProbes {
                http: self.http.clone(),
                tcp: self.tcp.clone(),
                exec: self.exec.clone(),
                expect_status: self.expect_status.unwrap_or(200),
                body_contains: self.body_contains.clone(),
            }
        } else {
            HealthProbes {
                http: verify.http.clone(),
                tcp: verify.tcp.clone(),
                exec: verify.exec.clone(),
                expect_status: verify.expect_status,
                body_contains: verify.body_contains.clone(),
            }
        }
    }

    /// The per-probe timeout in force: `probe_timeout`, or the interval.
    pub fn probe_timeout(&self) -> Duration {
        self.probe_timeout.unwrap_or(self.interval)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        if self.interval.is_zero() {
            return Err(invalid(path, "health.interval", "must be positive"));
        }
        if self.probe_timeout.is_some_and(|t| t.is_zero()) {
            return Err(invalid(path, "health.probe_timeout", "must be positive"));
        }
        for (key, n) in [
            ("health.unhealthy_after", self.unhealthy_after),
            ("health.healthy_after", self.healthy_after),
        ] {
            if n == 0 {
                return Err(invalid(path, key, "must be at least 1"));
            }
        }
        if !self.has_own_probes() {
            for (key, set) in [
                ("health.expect_status", self.expect_status.is_some()),
                ("health.body_contains", self.body_contains.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        path,
                        key,
                        "only applies to [health]'s own http probe; set health.http too, or \
                         set it in [verify]",
                    ));
                }
            }
        }
        if let Some(u) = &self.http {
            if !u.starts_with("http://") {
                return Err(invalid(path, "health.http", "must be an http:// URL"));
            }
        }
        if let Some(t) = &self.tcp {
            check_addr(path, "health.tcp", t)?;
        }
        Ok(())
    }
}

/// `[artifact]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactConfig {
    /// The most an artifact may weigh, and the most it may expand to.
    pub max_bytes: u64,
    pub require_signature: bool,
    /// Trusted ed25519 public keys: each entry is a base64 key, or a file of base64 keys (one
    /// per line).
    pub trusted_keys: Vec<String>,
}

impl Default for ArtifactConfig {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            require_signature: false,
            trusted_keys: Vec::new(),
        }
    }
}

/// `[hooks]`: optional executables run at lifecycle points, with `HOTDEPLOY_*` environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    pub before_drain: Option<PathBuf>,
    pub after_drain: Option<PathBuf>,
    pub before_swap: Option<PathBuf>,
    pub after_swap: Option<PathBuf>,
    pub after_verify: Option<PathBuf>,
    pub on_rollback: Option<PathBuf>,
    /// The most any hook may run.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            before_drain: None,
            after_drain: None,
            before_swap: None,
            after_swap: None,
            after_verify: None,
            on_rollback: None,
            timeout: Duration::from_secs(30),
        }
    }
}

impl AgentConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_toml_str(&read_text(path)?, path)
    }

    /// Parses and checks config text; `origin` names it in errors (the file it was read from,
    /// or a label such as `<config>`).
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = parse_toml(text, origin)?;
        cfg.check(origin)?;
        Ok(cfg)
    }

    /// [`AgentConfig::from_toml_str`] with the origin `<config>` (for tests).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_str(text, Path::new("<config>"))
    }

    /// The HAProxy server name of this host.
    pub fn haproxy_server(&self) -> &str {
        self.rotation
            .haproxy_server
            .as_deref()
            .unwrap_or(&self.host_id)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        crate::names::check_host(&self.host_id)
            .map_err(|e| invalid(path, "host_id", e.to_string()))?;
        for g in &self.groups {
            crate::names::check_group(g).map_err(|e| invalid(path, "groups", e.to_string()))?;
        }
        if !self.coordinators.is_empty() && self.groups.is_empty() {
            return Err(invalid(
                path,
                "groups",
                "a host with coordinators must belong to at least one group",
            ));
        }
        for c in &self.coordinators {
            check_addr(path, "coordinators", c)?;
        }
        check_addr(path, "listen", &self.listen)?;
        if let Some(m) = &self.metrics_listen {
            check_addr(path, "metrics_listen", m)?;
        }
        self.tls.check().map_err(|m| invalid(path, "tls", m))?;
        if self.limits.max_connections == 0 {
            return Err(invalid(
                path,
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        let s = &self.service;
        match s.control {
            ServiceControl::Exec if s.exec.is_empty() => {
                return Err(invalid(
                    path,
                    "service.exec",
                    "control = \"exec\" needs an argv array",
                ))
            }
            ServiceControl::Systemd if s.unit.is_none() => {
                return Err(invalid(
                    path,
                    "service.unit",
                    "control = \"systemd\" needs a unit",
                ))
            }
            ServiceControl::Command if s.start.is_empty() || s.stop.is_empty() => {
                return Err(invalid(
                    path,
                    "service.start",
                    "control = \"command\" needs start and stop argv arrays",
                ))
            }
            _ => {}
        }
        if s.keep_releases < 2 {
            return Err(invalid(
                path,
                "service.keep_releases",
                "must be at least 2 (current and previous)",
            ));
        }
        for (k, v) in [
            (
                "rotation.haproxy_agent_listen",
                &self.rotation.haproxy_agent_listen,
            ),
            ("rotation.http_listen", &self.rotation.http_listen),
        ] {
            if let Some(v) = v {
                check_addr(path, k, v)?;
            }
        }
        if self.rotation.haproxy_socket.is_some() && self.rotation.haproxy_backend.is_none() {
            return Err(invalid(
                path,
                "rotation.haproxy_backend",
                "haproxy_socket needs haproxy_backend",
            ));
        }
        let v = &self.verify;
        if v.http.is_none() && v.tcp.is_none() && v.exec.is_empty() {
            return Err(invalid(
                path,
                "verify",
                "set at least one probe: http, tcp or exec",
            ));
        }
        if let Some(u) = &v.http {
            if !u.starts_with("http://") {
                return Err(invalid(path, "verify.http", "must be an http:// URL"));
            }
        }
        if let Some(t) = &v.tcp {
            check_addr(path, "verify.tcp", t)?;
        }
        if v.success_threshold == 0 {
            return Err(invalid(
                path,
                "verify.success_threshold",
                "must be at least 1",
            ));
        }
        if v.interval.is_zero() || v.timeout.is_zero() {
            return Err(invalid(
                path,
                "verify",
                "interval and timeout must be positive",
            ));
        }
        self.health.check(path)?;
        if self.artifact.require_signature && self.artifact.trusted_keys.is_empty() {
            return Err(invalid(
                path,
                "artifact.trusted_keys",
                "require_signature needs trusted keys",
            ));
        }
        if self.artifact.max_bytes == 0 {
            return Err(invalid(path, "artifact.max_bytes", "must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
host_id = "web-1"
groups = ["web"]
listen = "127.0.0.31:7401"
data_dir = "/tmp/a"
[tls]
insecure = true
[service]
name = "app"
root = "/tmp/a/srv"
control = "exec"
exec = ["python3", "{current}/app.py"]
[verify]
http = "http://127.0.0.31:8080/health"
"#;

    #[test]
    fn metrics_listen_is_off_unless_set_and_a_bad_one_names_the_key() {
        assert_eq!(AgentConfig::parse(MIN).unwrap().metrics_listen, None);
        let with =
            |v: &str| MIN.replacen("data_dir", &format!("metrics_listen = {v:?}\ndata_dir"), 1);
        let c = AgentConfig::parse(&with("127.0.0.31:9101")).unwrap();
        assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.31:9101"));
        for bad in ["9101", "127.0.0.31:", "127.0.0.31:99999", ":9101"] {
            let e = AgentConfig::parse(&with(bad)).unwrap_err().to_string();
            assert!(e.contains("metrics_listen"), "{bad}: {e}");
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = AgentConfig::parse(MIN).unwrap();
        assert_eq!(c.service.keep_releases, 5);
        assert_eq!(c.rotation.drain_grace, Duration::from_secs(2));
        assert_eq!(c.verify.success_threshold, 3);
        assert_eq!(c.haproxy_server(), "web-1");
    }

    #[test]
    fn no_health_table_means_the_verify_probes_at_the_defaults() {
        let c = AgentConfig::parse(MIN).unwrap();
        assert_eq!(c.health.interval, Duration::from_secs(2));
        assert_eq!(c.health.unhealthy_after, 3);
        assert_eq!(c.health.healthy_after, 2);
        assert_eq!(c.health.probe_timeout(), Duration::from_secs(2));
        let p = c.health.probes(&c.verify);
        assert_eq!(p.http.as_deref(), Some("http://127.0.0.31:8080/health"));
        assert_eq!(p.expect_status, 200);
        assert!(p.tcp.is_none() && p.exec.is_empty());
    }

    #[test]
    fn health_table_keys() {
        let c = AgentConfig::parse(&format!(
            "{MIN}[health]\ninterval = \"500ms\"\nunhealthy_after = 5\nhealthy_after = 1\n\
             probe_timeout = \"250ms\"\n"
        ))
        .unwrap();
        assert_eq!(c.health.interval, Duration::from_millis(500));
        assert_eq!(c.health.unhealthy_after, 5);
        assert_eq!(c.health.healthy_after, 1);
        assert_eq!(c.health.probe_timeout(), Duration::from_millis(250));
        // Without probe_timeout, the interval bounds a probe.
        let c = AgentConfig::parse(&format!("{MIN}[health]\ninterval = \"700ms\"\n")).unwrap();
        assert_eq!(c.health.probe_timeout(), Duration::from_millis(700));
        // Own probes replace all of [verify]'s.
        let c = AgentConfig::parse(&format!("{MIN}[health]\ntcp = \"127.0.0.31:8080\"\n")).unwrap();
        let p = c.health.probes(&c.verify);
        assert_eq!(p.tcp.as_deref(), Some("127.0.0.31:8080"));
        assert!(p.http.is_none(), "{p:?}");
    }

    #[test]
    fn the_example_config_parses_with_its_health_table() {
        let c = AgentConfig::parse(include_str!("../../../deploy/agent.toml")).unwrap();
        assert_eq!(c.health.interval, Duration::from_secs(2));
        assert_eq!(c.metrics_listen.as_deref(), Some("10.0.1.21:7404"));
        assert_eq!(c.health.probe_timeout(), Duration::from_secs(2));
        assert!(!c.health.has_own_probes());
    }

    #[test]
    fn bad_health_values_name_the_key() {
        for (extra, key) in [
            ("interval = \"0s\"", "health.interval"),
            ("probe_timeout = \"0s\"", "health.probe_timeout"),
            ("unhealthy_after = 0", "health.unhealthy_after"),
            ("healthy_after = 0", "health.healthy_after"),
            ("http = \"ftp://x\"", "health.http"),
            ("tcp = \"nowhere\"", "health.tcp"),
            ("expect_status = 204", "health.expect_status"),
            ("interval = \"soon\"", "interval"),
            ("unhealthy_afer = 3", "unhealthy_afer"),
        ] {
            let e = AgentConfig::parse(&format!("{MIN}[health]\n{extra}\n")).unwrap_err();
            assert!(e.to_string().contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = AgentConfig::parse(&MIN.replace("web-1", "Web_1")).unwrap_err();
        assert!(e.to_string().contains("host_id"), "{e}");
        let e = AgentConfig::parse(&MIN.replace("control = \"exec\"", "control = \"docker\""))
            .unwrap_err();
        assert!(e.to_string().contains("docker"), "{e}");
        let e = AgentConfig::parse(&format!("{MIN}interval = \"fast\"\n")).unwrap_err();
        assert!(e.to_string().contains("interval"), "{e}");
    }
}
