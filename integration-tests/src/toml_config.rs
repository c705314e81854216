//! The daemons' config files, written exactly as DESIGN §6 names the keys.
//!
//! The harness tests the public contract, so it does not reuse the daemons' own config structs:
//! it writes TOML the way an operator would, from the key list in the design. Each file type is
//! a plain struct with the knobs tests turn ([`CoordinatorConfigFile`], [`AgentConfigFile`]), a
//! `render()` that produces the TOML text, and an `extra` table merged in last, so a test can
//! add any key the struct does not know (`[fleetlock]`, `[artifact]`, `[service.env]`, ...)
//! without a harness change.
//!
//! Durations are written as human strings (`"500ms"`), as the design asks. A `max_unavailable`
//! that is a plain number is written as a TOML integer; a percentage as a string (`"25%"`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use toml::{Table, Value};

/// `[raft]` timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftTimings {
    /// `tick_ms`.
    pub tick_ms: u64,
    /// `election_ticks`.
    pub election_ticks: u64,
    /// `heartbeat_ticks`.
    pub heartbeat_ticks: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
        }
    }
}

/// One coordinator's config file.
#[derive(Debug, Clone)]
pub struct CoordinatorConfigFile {
    /// `id`.
    pub id: u64,
    /// `listen`: the Raft and gRPC address.
    pub listen: SocketAddr,
    /// `data_dir`.
    pub data_dir: PathBuf,
    /// `http_listen`: metrics and FleetLock.
    pub http_listen: SocketAddr,
    /// `[peers]`: id to the address this node uses to reach it.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// `initial_cluster_state`: `"new"` or `"existing"`.
    pub initial_cluster_state: String,
    /// `[tls]`; `insecure = true` when empty.
    pub tls: Table,
    /// `[raft]`.
    pub raft: RaftTimings,
    /// `[liveness] heartbeat_interval`.
    pub heartbeat_interval: String,
    /// `[liveness] unreachable_after`.
    pub unreachable_after: String,
    /// `[groups.NAME] max_unavailable`, in order.
    pub groups: Vec<(String, String)>,
    /// Merged in last.
    pub extra: Table,
}

impl CoordinatorConfigFile {
    /// The TOML text.
    pub fn render(&self) -> String {
        let mut root = Table::new();
        root.insert("id".into(), int(self.id));
        root.insert("listen".into(), self.listen.to_string().into());
        root.insert("data_dir".into(), path(&self.data_dir));
        root.insert("http_listen".into(), self.http_listen.to_string().into());
        root.insert(
            "initial_cluster_state".into(),
            self.initial_cluster_state.clone().into(),
        );
        let peers: Table = self
            .peers
            .iter()
            .map(|(id, addr)| (id.to_string(), Value::from(addr.to_string())))
            .collect();
        root.insert("peers".into(), peers.into());
        root.insert("tls".into(), tls_or_insecure(&self.tls).into());
        let mut raft = Table::new();
        raft.insert("tick_ms".into(), int(self.raft.tick_ms));
        raft.insert("election_ticks".into(), int(self.raft.election_ticks));
        raft.insert("heartbeat_ticks".into(), int(self.raft.heartbeat_ticks));
        root.insert("raft".into(), raft.into());
        let mut liveness = Table::new();
        liveness.insert(
            "heartbeat_interval".into(),
            self.heartbeat_interval.clone().into(),
        );
        liveness.insert(
            "unreachable_after".into(),
            self.unreachable_after.clone().into(),
        );
        root.insert("liveness".into(), liveness.into());
        let mut groups = Table::new();
        for (name, max_unavailable) in &self.groups {
            let mut group = Table::new();
            group.insert("max_unavailable".into(), budget(max_unavailable));
            groups.insert(name.clone(), group.into());
        }
        if !groups.is_empty() {
            root.insert("groups".into(), groups.into());
        }
        merge(&mut root, &self.extra);
        toml::to_string(&root).unwrap_or_else(|e| panic!("rendering coordinator config: {e}"))
    }
}

/// One agent's config file.
#[derive(Debug, Clone)]
pub struct AgentConfigFile {
    /// `host_id`.
    pub host_id: String,
    /// `groups`.
    pub groups: Vec<String>,
    /// `coordinators`; the key is left out when empty (a standalone agent).
    pub coordinators: Vec<SocketAddr>,
    /// `listen`: the agent's gRPC address.
    pub listen: SocketAddr,
    /// `data_dir`.
    pub data_dir: PathBuf,
    /// `[tls]`; `insecure = true` when empty.
    pub tls: Table,
    /// `[service] name`.
    pub service_name: String,
    /// `[service] root`.
    pub service_root: PathBuf,
    /// `[service] exec` (control is `"exec"`).
    pub exec: Vec<String>,
    /// `[service] stop_timeout`.
    pub stop_timeout: String,
    /// `[service] keep_releases`.
    pub keep_releases: u64,
    /// `[rotation] haproxy_agent_listen`; left out when `None` (no agent-check responder).
    pub haproxy_agent_listen: Option<SocketAddr>,
    /// `[rotation] http_listen`; left out when `None` (no `/ready`).
    pub http_listen: Option<SocketAddr>,
    /// `[rotation] drain_grace`.
    pub drain_grace: String,
    /// `[rotation] undrain_grace`.
    pub undrain_grace: String,
    /// `[rotation] drain_timeout`, when set.
    pub drain_timeout: Option<String>,
    /// `[rotation] haproxy_socket`, `haproxy_backend`, `haproxy_server`, when set.
    pub haproxy: Option<(PathBuf, String, String)>,
    /// `[verify] http`.
    pub verify_http: String,
    /// `[verify] success_threshold`.
    pub verify_success_threshold: u64,
    /// `[verify] interval`.
    pub verify_interval: String,
    /// `[verify] timeout`.
    pub verify_timeout: String,
    /// `[verify] settle`.
    pub verify_settle: String,
    /// Merged in last.
    pub extra: Table,
}

impl AgentConfigFile {
    /// The TOML text.
    pub fn render(&self) -> String {
        let mut root = Table::new();
        root.insert("host_id".into(), self.host_id.clone().into());
        root.insert("groups".into(), strings(&self.groups));
        if !self.coordinators.is_empty() {
            let coordinators: Vec<String> =
                self.coordinators.iter().map(ToString::to_string).collect();
            root.insert("coordinators".into(), strings(&coordinators));
        }
        root.insert("listen".into(), self.listen.to_string().into());
        root.insert("data_dir".into(), path(&self.data_dir));
        root.insert("tls".into(), tls_or_insecure(&self.tls).into());

        let mut service = Table::new();
        service.insert("name".into(), self.service_name.clone().into());
        service.insert("root".into(), path(&self.service_root));
        service.insert("control".into(), "exec".into());
        service.insert("exec".into(), strings(&self.exec));
        service.insert("stop_timeout".into(), self.stop_timeout.clone().into());
        service.insert("keep_releases".into(), int(self.keep_releases));
        root.insert("service".into(), service.into());

        let mut rotation = Table::new();
        if let Some(at) = self.haproxy_agent_listen {
            rotation.insert("haproxy_agent_listen".into(), at.to_string().into());
        }
        if let Some(at) = self.http_listen {
            rotation.insert("http_listen".into(), at.to_string().into());
        }
        rotation.insert("drain_grace".into(), self.drain_grace.clone().into());
        rotation.insert("undrain_grace".into(), self.undrain_grace.clone().into());
        if let Some(drain_timeout) = &self.drain_timeout {
            rotation.insert("drain_timeout".into(), drain_timeout.clone().into());
        }
        if let Some((socket, backend, server)) = &self.haproxy {
            rotation.insert("haproxy_socket".into(), path(socket));
            rotation.insert("haproxy_backend".into(), backend.clone().into());
            rotation.insert("haproxy_server".into(), server.clone().into());
        }
        root.insert("rotation".into(), rotation.into());

        let mut verify = Table::new();
        verify.insert("http".into(), self.verify_http.clone().into());
        verify.insert(
            "success_threshold".into(),
            int(self.verify_success_threshold),
        );
        verify.insert("interval".into(), self.verify_interval.clone().into());
        verify.insert("timeout".into(), self.verify_timeout.clone().into());
        verify.insert("settle".into(), self.verify_settle.clone().into());
        root.insert("verify".into(), verify.into());

        merge(&mut root, &self.extra);
        toml::to_string(&root).unwrap_or_else(|e| panic!("rendering agent config: {e}"))
    }
}

/// Merges `extra` into `root`: tables merge key by key (recursively), anything else replaces.
pub fn merge(root: &mut Table, extra: &Table) {
    for (key, value) in extra {
        match (root.get_mut(key), value) {
            (Some(Value::Table(existing)), Value::Table(more)) => merge(existing, more),
            _ => {
                root.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Parses a TOML snippet into a table for `extra`; panics on bad TOML (a test bug).
pub fn table(text: &str) -> Table {
    text.parse::<Table>()
        .unwrap_or_else(|e| panic!("bad TOML snippet {text:?}: {e}"))
}

fn tls_or_insecure(tls: &Table) -> Table {
    if tls.is_empty() {
        let mut insecure = Table::new();
        insecure.insert("insecure".into(), true.into());
        insecure
    } else {
        tls.clone()
    }
}

fn budget(max_unavailable: &str) -> Value {
    match max_unavailable.trim().parse::<i64>() {
        Ok(n) => Value::Integer(n),
        Err(_) => Value::String(max_unavailable.to_string()),
    }
}

fn int(n: u64) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn path(p: &std::path::Path) -> Value {
    Value::String(p.to_string_lossy().into_owned())
}

fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().cloned().map(Value::String).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_config_has_the_design_keys() {
        let config = CoordinatorConfigFile {
            id: 2,
            listen: "127.9.9.2:7400".parse().unwrap(),
            data_dir: "/tmp/x/data2".into(),
            http_listen: "127.9.9.2:7480".parse().unwrap(),
            peers: [
                (1, "127.9.9.2:7501".parse().unwrap()),
                (2, "127.9.9.2:7400".parse().unwrap()),
            ]
            .into_iter()
            .collect(),
            initial_cluster_state: "new".into(),
            tls: Table::new(),
            raft: RaftTimings::default(),
            heartbeat_interval: "500ms".into(),
            unreachable_after: "3s".into(),
            groups: vec![("web".into(), "1".into()), ("db".into(), "25%".into())],
            extra: table("[fleetlock]\nenabled = true\n[raft]\ntick_ms = 50\n"),
        };
        let parsed: Table = config.render().parse().unwrap();
        assert_eq!(parsed["id"].as_integer(), Some(2));
        assert_eq!(parsed["peers"]["1"].as_str(), Some("127.9.9.2:7501"));
        assert_eq!(parsed["tls"]["insecure"].as_bool(), Some(true));
        assert_eq!(parsed["raft"]["tick_ms"].as_integer(), Some(50));
        assert_eq!(parsed["raft"]["election_ticks"].as_integer(), Some(10));
        assert_eq!(
            parsed["groups"]["web"]["max_unavailable"].as_integer(),
            Some(1)
        );
        assert_eq!(
            parsed["groups"]["db"]["max_unavailable"].as_str(),
            Some("25%")
        );
        assert_eq!(parsed["fleetlock"]["enabled"].as_bool(), Some(true));
        assert_eq!(parsed["initial_cluster_state"].as_str(), Some("new"));
    }
}
