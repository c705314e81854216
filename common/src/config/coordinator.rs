//! `hotdeploy-coordinator --config FILE`.

use super::{
    check_addr, invalid, parse_toml, read_text, ConfigError, LimitsConfig, MaxUnavailable,
    TlsConfig,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a node with an empty data_dir starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// Bootstrap from `[peers]`, unless a peer already has a cluster.
    #[default]
    New,
    /// Wait, blank, to be added with `hotdeployctl members add`.
    Existing,
}

/// The coordinator's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// This node's raft id (≥ 1).
    pub id: u64,
    /// gRPC address (`host:port`) for agents, operators and peers.
    pub listen: String,
    pub data_dir: PathBuf,
    /// HTTP address for `/metrics` and FleetLock.
    pub http_listen: Option<String>,
    /// The initial cluster: raft id (as a TOML key) to `host:port`.
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    #[serde(default)]
    pub initial_cluster_state: ClusterState,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub raft: RaftConfig,
    #[serde(default)]
    pub liveness: LivenessConfig,
    /// Seeds for the groups of a newly bootstrapped cluster; ignored afterwards.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupSeed>,
    #[serde(default)]
    pub fleetlock: FleetLockConfig,
}

/// `[raft]` timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    pub tick_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
        }
    }
}

/// `[liveness]`: how the leader judges agents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessConfig {
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub unreachable_after: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            unreachable_after: Duration::from_secs(5),
        }
    }
}

/// `[groups.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSeed {
    pub max_unavailable: MaxUnavailable,
    #[serde(default)]
    pub allow_zero_available: bool,
}

/// `[fleetlock]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetLockConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Client CIDRs allowed to call FleetLock.
    #[serde(default)]
    pub allow: Vec<ipnet::IpNet>,
}

impl CoordinatorConfig {
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

    /// The initial peers with numeric ids.
    pub fn peer_map(&self) -> BTreeMap<u64, String> {
        self.peers
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.clone())))
            .collect()
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(invalid(path, "id", "must be a positive integer"));
        }
        check_addr(path, "listen", &self.listen)?;
        if let Some(h) = &self.http_listen {
            check_addr(path, "http_listen", h)?;
        }
        for (k, v) in &self.peers {
            let key = format!("peers.{k}");
            match k.parse::<u64>() {
                Ok(id) if id > 0 => {}
                _ => return Err(invalid(path, &key, "peer ids must be positive integers")),
            }
            check_addr(path, &key, v)?;
        }
        if self.initial_cluster_state == ClusterState::New
            && !self.peers.is_empty()
            && !self.peer_map().contains_key(&self.id)
        {
            return Err(invalid(
                path,
                "peers",
                format!("must include this node's id {}", self.id),
            ));
        }
        self.tls.check().map_err(|m| invalid(path, "tls", m))?;
        if self.limits.max_connections == 0 {
            return Err(invalid(
                path,
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        if self.raft.tick_ms == 0 || self.raft.heartbeat_ticks == 0 {
            return Err(invalid(
                path,
                "raft",
                "tick_ms and heartbeat_ticks must be positive",
            ));
        }
        if self.raft.election_ticks <= self.raft.heartbeat_ticks {
            return Err(invalid(
                path,
                "raft.election_ticks",
                "must be greater than heartbeat_ticks",
            ));
        }
        if self.liveness.unreachable_after <= self.liveness.heartbeat_interval {
            return Err(invalid(
                path,
                "liveness.unreachable_after",
                "must be longer than liveness.heartbeat_interval",
            ));
        }
        for name in self.groups.keys() {
            crate::names::check_group(name)
                .map_err(|e| invalid(path, &format!("groups.{name}"), e.to_string()))?;
        }
        if self.fleetlock.enabled {
            if self.http_listen.is_none() {
                return Err(invalid(
                    path,
                    "fleetlock.enabled",
                    "FleetLock is served on http_listen, which is not set",
                ));
            }
            if self.fleetlock.allow.is_empty() {
                return Err(invalid(
                    path,
                    "fleetlock.allow",
                    "is empty, so no client could use FleetLock; list the CIDRs of the hosts \
                     that may (e.g. [\"10.0.0.0/8\"])",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CoordinatorConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("hd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("c{}.toml", text.len()));
        std::fs::write(&p, text).unwrap();
        CoordinatorConfig::load(&p)
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"
id = 1
listen = "127.0.0.21:7400"
data_dir = "/tmp/x"
http_listen = "127.0.0.21:7480"
[peers]
1 = "127.0.0.21:7400"
"2" = "127.0.0.22:7400"
[tls]
insecure = true
[liveness]
unreachable_after = "3s"
[groups.web]
max_unavailable = "25%"
[groups.db]
max_unavailable = 1
allow_zero_available = true
"#,
        )
        .unwrap();
        assert_eq!(c.peer_map().len(), 2);
        assert_eq!(c.liveness.unreachable_after, Duration::from_secs(3));
        assert_eq!(c.groups["web"].max_unavailable, MaxUnavailable::Percent(25));
        assert!(c.groups["db"].allow_zero_available);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let base = "id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/x\"\n[tls]\ninsecure = true\n";
        let e = parse(&format!("{base}[groups.web]\nmax_unavailable = 0\n")).unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
        let e = parse(&format!("{base}[groups.Web]\nmax_unavailable = 1\n")).unwrap_err();
        assert!(e.to_string().contains("groups.Web"), "{e}");
        let e = parse(&base.replace("listen", "lissten")).unwrap_err();
        assert!(e.to_string().contains("lissten"), "{e}");
        let e = parse("id = 1\nlisten = \"x:1\"\ndata_dir = \"/x\"\n").unwrap_err();
        assert!(e.to_string().contains("insecure"), "{e}");
    }

    #[test]
    fn fleetlock_needs_http_listen_and_an_allow_list() {
        let base = "id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/x\"\n[tls]\ninsecure = true\n";
        let e = parse(&format!(
            "{base}[fleetlock]\nenabled = true\nallow = [\"10.0.0.0/8\"]\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("fleetlock.enabled"), "{e}");
        let with_http = base.replace("[tls]", "http_listen = \"127.0.0.1:2\"\n[tls]");
        let e = parse(&format!("{with_http}[fleetlock]\nenabled = true\n")).unwrap_err();
        assert!(e.to_string().contains("fleetlock.allow"), "{e}");
        let e = parse(&format!(
            "{with_http}[fleetlock]\nenabled = true\nallow = [\"10.0.0.300/8\"]\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("allow"), "{e}");
        let c = parse(&format!(
            "{with_http}[fleetlock]\nenabled = true\nallow = [\"10.0.0.0/8\", \"127.0.0.1/32\"]\n"
        ))
        .unwrap();
        assert_eq!(c.fleetlock.allow.len(), 2);
        // Off, nothing is required.
        parse(&format!("{base}[fleetlock]\nenabled = false\n")).unwrap();
    }
}
