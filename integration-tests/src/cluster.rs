//! A cluster of real `hotdeploy-coordinator` processes on loopback.
//!
//! [`Cluster::start`] gives each node its own loopback IP (from [`net::alloc_ips`]), its own
//! data dir under one temp dir, and one TOML config keyed exactly as DESIGN §6, then starts
//! `hotdeploy-coordinator --config FILE` for each and waits for every node to listen. Every
//! process is owned by a [`ChildGuard`], so the cluster dies with the test, panics included.
//!
//! With [`ClusterOpts::with_proxies`], every ordered pair of nodes (i → j) gets its own
//! [`FaultProxy`] listening on `ip_i:PROXY_BASE_PORT+j`, and node i's `[peers]` entry for j names
//! that proxy (its own entry stays its real address). All Raft traffic from i to j then crosses
//! proxy i → j, and [`Cluster::partition`] cuts a node off by blocking every proxy to and from
//! it; [`Cluster::heal`] restores them. Clients (`hotdeployctl`) always use the real addresses,
//! so a test can still ask a partitioned node what it thinks.
//!
//! Operator commands go through the real CLI: [`Cluster::ctl`] runs
//! `hotdeployctl --endpoints <all nodes> --insecure ARGS` with a deadline, and
//! [`Cluster::ctl_json`] adds `-o json` and parses the answer. [`Cluster::wait_leader`] polls
//! `status` until a leader is elected and confirmed by the leader itself.
//!
//! Nodes beyond the initial ones can be added with [`Cluster::add_node`] (for `members add`
//! tests); addresses for two spare nodes are reserved up front.
//!
//! A node may run another coordinator binary than the workspace's ([`ClusterOpts::binaries`],
//! [`Cluster::set_binary`]): an old one next to new ones, for mixed-version tests.

use crate::bins;
use crate::fault_proxy::FaultProxy;
use crate::net::{self, COORD_HTTP_PORT, COORD_PORT, PROXY_BASE_PORT};
use crate::proc::{self, ChildGuard};
use crate::toml_config::{CoordinatorConfigFile, RaftTimings};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How many extra node addresses are reserved for [`Cluster::add_node`].
const SPARE_NODES: usize = 2;
/// The deadline of one `hotdeployctl` run.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(30);

/// Knobs for [`Cluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// Put a fault proxy between every ordered pair of nodes.
    pub with_proxies: bool,
    /// `[raft]` timings.
    pub raft: RaftTimings,
    /// `[liveness] heartbeat_interval`.
    pub heartbeat_interval: String,
    /// `[liveness] unreachable_after`.
    pub unreachable_after: String,
    /// How long each node may take to start listening.
    pub start_timeout: Duration,
    /// Extra TOML merged into every node's config.
    pub extra: toml::Table,
    /// mTLS instead of `insecure = true`: a directory written by `hotdeployctl certs init`
    /// holding `ca.pem` and `coordinator-<id>.pem` + `coordinator-<id>-key.pem` for every node
    /// (with the node's IP as a SAN: see [`ClusterOpts::ips`]). `hotdeployctl` then runs with
    /// `--ca ca.pem --cert operator.pem --key operator-key.pem`.
    pub tls: Option<PathBuf>,
    /// `[tls] crl` for every node (with [`ClusterOpts::tls`]).
    pub crl: Option<PathBuf>,
    /// The node IPs to use (node `id` gets `ips[id - 1]`), from [`net::alloc_ips`], when the
    /// test must know them before the start (to put them in certificates). At least `n`
    /// entries; spare nodes need more. `None`: allocated at start.
    pub ips: Option<Vec<Ipv4Addr>>,
    /// The coordinator binary of node `id`, where it is not the workspace's
    /// ([`bins::coordinator`]): an old binary for mixed-version tests.
    pub binaries: BTreeMap<u64, PathBuf>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            with_proxies: false,
            raft: RaftTimings::default(),
            heartbeat_interval: "1s".into(),
            unreachable_after: "5s".into(),
            start_timeout: Duration::from_secs(20),
            extra: toml::Table::new(),
            tls: None,
            crl: None,
            ips: None,
            binaries: BTreeMap::new(),
        }
    }
}

impl ClusterOpts {
    /// The defaults, with a fault proxy between every pair of nodes.
    pub fn with_proxies() -> Self {
        ClusterOpts {
            with_proxies: true,
            ..Self::default()
        }
    }
}

/// One coordinator of the cluster.
struct Node {
    config: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    initial_cluster_state: String,
    child: Option<ChildGuard>,
}

/// A running coordinator cluster; everything is killed and removed on drop.
pub struct Cluster {
    // Field order matters for drop: processes and proxies before the temp dir.
    nodes: BTreeMap<u64, Node>,
    proxies: BTreeMap<(u64, u64), FaultProxy>,
    ips: Vec<Ipv4Addr>,
    groups: Vec<(String, String)>,
    opts: ClusterOpts,
    dir: TempDir,
}

impl Cluster {
    /// Starts nodes `1..=n` seeded with `groups` (`(name, max_unavailable)`), and waits until
    /// each listens. Does not wait for a leader: see [`Cluster::wait_leader`].
    pub fn start(n: usize, groups: &[(&str, &str)], opts: ClusterOpts) -> Cluster {
        assert!(n >= 1, "a cluster needs at least one node");
        let dir = tempfile::Builder::new()
            .prefix("hd-cluster-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create the cluster temp dir: {e}"));
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            proxies: BTreeMap::new(),
            ips: match &opts.ips {
                Some(ips) => {
                    assert!(
                        ips.len() >= n,
                        "ClusterOpts::ips has fewer than {n} addresses"
                    );
                    ips.clone()
                }
                None => net::alloc_ips(n + SPARE_NODES),
            },
            groups: groups
                .iter()
                .map(|(name, budget)| (name.to_string(), budget.to_string()))
                .collect(),
            opts,
            dir,
        };
        for id in 1..=n as u64 {
            cluster.nodes.insert(id, cluster.new_node(id, "new"));
        }
        if cluster.opts.with_proxies {
            cluster.add_missing_proxies();
        }
        let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
        for &id in &ids {
            cluster.write_node_config(id);
            cluster.spawn(id);
        }
        for &id in &ids {
            cluster.wait_listening(id);
        }
        cluster
    }

    /// Adds and starts node `max id + 1` with `initial_cluster_state` (usually `"existing"`),
    /// whose `[peers]` name every node including itself. Returns its id. The test then runs
    /// `members add ID HOST:PORT` with [`Cluster::addr`].
    pub fn add_node(&mut self, initial_cluster_state: &str) -> u64 {
        let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        assert!(
            (id as usize) <= self.ips.len(),
            "add_node: only {SPARE_NODES} spare node addresses were reserved"
        );
        self.nodes
            .insert(id, self.new_node(id, initial_cluster_state));
        if self.opts.with_proxies {
            self.add_missing_proxies();
        }
        self.write_node_config(id);
        self.spawn(id);
        self.wait_listening(id);
        id
    }

    fn new_node(&self, id: u64, initial_cluster_state: &str) -> Node {
        Node {
            config: self.dir.path().join(format!("c{id}.toml")),
            data_dir: self.dir.path().join(format!("data{id}")),
            log: self.dir.path().join(format!("c{id}.log")),
            initial_cluster_state: initial_cluster_state.to_string(),
            child: None,
        }
    }

    fn add_missing_proxies(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for &from in &ids {
            for &to in &ids {
                if from == to || self.proxies.contains_key(&(from, to)) {
                    continue;
                }
                let listen = net::addr(self.ip(from), PROXY_BASE_PORT + to as u16);
                let proxy = FaultProxy::start(listen, self.addr(to))
                    .unwrap_or_else(|e| panic!("fault proxy {from}->{to} on {listen}: {e}"));
                self.proxies.insert((from, to), proxy);
            }
        }
    }

    /// The node ids, in order.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Node `id`'s loopback IP.
    pub fn ip(&self, id: u64) -> Ipv4Addr {
        self.ips[(id - 1) as usize]
    }

    /// Node `id`'s real `listen` address (Raft and gRPC).
    pub fn addr(&self, id: u64) -> SocketAddr {
        net::addr(self.ip(id), COORD_PORT)
    }

    /// Node `id`'s `http_listen` address.
    pub fn http_addr(&self, id: u64) -> SocketAddr {
        net::addr(self.ip(id), COORD_HTTP_PORT)
    }

    /// All nodes' real addresses, comma separated, for `--endpoints` and agent configs.
    pub fn endpoints(&self) -> String {
        self.coordinator_addrs()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// All nodes' real addresses.
    pub fn coordinator_addrs(&self) -> Vec<SocketAddr> {
        self.ids().into_iter().map(|id| self.addr(id)).collect()
    }

    /// The cluster's temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `id`'s data dir.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).data_dir.clone()
    }

    /// Node `id`'s config file.
    pub fn config_path(&self, id: u64) -> PathBuf {
        self.node(id).config.clone()
    }

    /// The end of node `id`'s log.
    pub fn log_tail(&self, id: u64) -> String {
        proc::log_tail(&self.node(id).log, 4000)
    }

    /// The end of every node's log, for failure messages.
    pub fn all_logs(&self) -> String {
        self.ids()
            .into_iter()
            .map(|id| format!("---- coordinator {id} log ----\n{}", self.log_tail(id)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// (Re)writes node `id`'s config with `initial_cluster_state`. Takes effect on the next
    /// start.
    pub fn write_config(&mut self, id: u64, initial_cluster_state: &str) {
        self.node_mut(id).initial_cluster_state = initial_cluster_state.to_string();
        self.write_node_config(id);
    }

    fn write_node_config(&self, id: u64) {
        let node = self.node(id);
        let peers = self
            .ids()
            .into_iter()
            .map(|peer| {
                let addr = match self.proxies.get(&(id, peer)) {
                    Some(proxy) if peer != id => proxy.listen_addr(),
                    _ => self.addr(peer),
                };
                (peer, addr)
            })
            .collect();
        let config = CoordinatorConfigFile {
            id,
            listen: self.addr(id),
            data_dir: node.data_dir.clone(),
            http_listen: self.http_addr(id),
            peers,
            initial_cluster_state: node.initial_cluster_state.clone(),
            tls: match &self.opts.tls {
                Some(dir) => tls_table(
                    dir,
                    &format!("coordinator-{id}.pem"),
                    &format!("coordinator-{id}-key.pem"),
                    self.opts.crl.as_deref(),
                ),
                None => toml::Table::new(),
            },
            raft: self.opts.raft.clone(),
            heartbeat_interval: self.opts.heartbeat_interval.clone(),
            unreachable_after: self.opts.unreachable_after.clone(),
            groups: self.groups.clone(),
            extra: self.opts.extra.clone(),
        };
        std::fs::write(&node.config, config.render())
            .unwrap_or_else(|e| panic!("writing {}: {e}", node.config.display()));
    }

    /// Node `id` runs `binary` from its next start ([`Cluster::restart`]); `None`: the
    /// workspace's coordinator again.
    pub fn set_binary(&mut self, id: u64, binary: Option<PathBuf>) {
        match binary {
            Some(b) => self.opts.binaries.insert(id, b),
            None => self.opts.binaries.remove(&id),
        };
    }

    fn spawn(&mut self, id: u64) {
        let program = self
            .opts
            .binaries
            .get(&id)
            .cloned()
            .unwrap_or_else(bins::coordinator);
        let node = self.node(id);
        let args = [
            "--config".to_string(),
            node.config.to_string_lossy().into_owned(),
        ];
        let child = ChildGuard::spawn(
            &format!("coordinator {id}"),
            &program,
            &args,
            &node.log,
            // A coordinator starts no children of its own; a stray marker here would be the
            // cluster's directory, which every node's command line names, so killing one node
            // would kill them all.
            None,
        );
        self.node_mut(id).child = Some(child);
    }

    fn wait_listening(&mut self, id: u64) {
        let addr = self.addr(id);
        if !net::wait_port(addr, self.opts.start_timeout) {
            panic!(
                "coordinator {id} did not listen on {addr} within {:?}\n{}",
                self.opts.start_timeout,
                self.log_tail(id)
            );
        }
    }

    /// The pid of node `id`'s coordinator process, while it runs under this cluster.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(ChildGuard::pid)
    }

    /// Whether node `id`'s process is alive (a stopped one counts).
    pub fn is_running(&mut self, id: u64) -> bool {
        self.node_mut(id)
            .child
            .as_mut()
            .is_some_and(ChildGuard::is_running)
    }

    /// `kill -9` node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            child.kill();
        }
    }

    /// Kills node `id` if running, then starts it again with its config and waits until it
    /// listens.
    pub fn restart(&mut self, id: u64) {
        self.kill(id);
        self.write_node_config(id);
        self.spawn(id);
        self.wait_listening(id);
    }

    /// Sends `sig` (SIGSTOP, SIGCONT, SIGTERM, ...) to node `id`'s process group.
    pub fn stop_signal(&mut self, id: u64, sig: Signal) {
        let child = self
            .node(id)
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("coordinator {id} is not running"));
        child
            .signal(sig)
            .unwrap_or_else(|e| panic!("signalling coordinator {id} with {sig}: {e}"));
    }

    /// Waits up to `timeout` for node `id` to exit (after SIGTERM, say).
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.node_mut(id).child.as_mut()?;
        child.wait_exit(timeout)
    }

    /// Kills node `id` (if running) and deletes its data dir.
    pub fn wipe(&mut self, id: u64) {
        self.kill(id);
        let data = self.data_dir(id);
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .unwrap_or_else(|e| panic!("wiping {}: {e}", data.display()));
        }
    }

    /// The proxy carrying node `from`'s traffic to node `to`.
    pub fn proxy(&self, from: u64, to: u64) -> &FaultProxy {
        self.proxies.get(&(from, to)).unwrap_or_else(|| {
            panic!("no proxy {from}->{to}: start with ClusterOpts::with_proxies")
        })
    }

    /// Cuts node `id` off from every other node (both directions).
    pub fn partition(&self, id: u64) {
        assert!(
            self.opts.with_proxies,
            "partition needs ClusterOpts::with_proxies"
        );
        for ((from, to), proxy) in &self.proxies {
            if *from == id || *to == id {
                proxy.set_blocked(true);
            }
        }
    }

    /// Unblocks every proxy.
    pub fn heal(&self) {
        for proxy in self.proxies.values() {
            proxy.set_blocked(false);
        }
    }

    /// The `hotdeployctl` credentials the harness uses: `--insecure`, or with
    /// [`ClusterOpts::tls`] the operator certificate.
    pub fn ctl_auth(&self) -> CtlAuth {
        match &self.opts.tls {
            Some(dir) => CtlAuth::operator(dir),
            None => CtlAuth::Insecure,
        }
    }

    /// `hotdeployctl --endpoints <all real addrs> <auth> ARGS` with other credentials than the
    /// harness's own (an agent certificate, another CA's, an expired one), within
    /// [`CTL_TIMEOUT`].
    pub fn ctl_as<S: AsRef<str>>(&self, auth: &CtlAuth, args: &[S]) -> Output {
        let mut command = Command::new(bins::ctl());
        command
            .arg("--endpoints")
            .arg(self.endpoints())
            .args(auth.args())
            .args(args.iter().map(AsRef::as_ref));
        proc::run_with_timeout(command, CTL_TIMEOUT)
    }

    /// `hotdeployctl --endpoints <all real addrs> --insecure ARGS` (or the operator
    /// certificate, with [`ClusterOpts::tls`]), within [`CTL_TIMEOUT`].
    pub fn ctl<S: AsRef<str>>(&self, args: &[S]) -> Output {
        self.ctl_at(&self.endpoints(), args, CTL_TIMEOUT)
    }

    /// `hotdeployctl` against the given endpoints, within `timeout`.
    pub fn ctl_at<S: AsRef<str>>(&self, endpoints: &str, args: &[S], timeout: Duration) -> Output {
        let mut command = Command::new(bins::ctl());
        command
            .arg("--endpoints")
            .arg(endpoints)
            .args(self.ctl_auth().args())
            .args(args.iter().map(AsRef::as_ref));
        proc::run_with_timeout(command, timeout)
    }

    /// `ctl -o json ARGS`, parsed; panics (with the CLI's output) if it fails.
    pub fn ctl_json<S: AsRef<str>>(&self, args: &[S]) -> Value {
        self.try_ctl_json(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ctl -o json ARGS`, parsed, or a message saying what went wrong.
    pub fn try_ctl_json<S: AsRef<str>>(&self, args: &[S]) -> Result<Value, String> {
        let full = with_json(args);
        let output = self.ctl_at(&self.endpoints(), &full, CTL_TIMEOUT);
        parse_json_output(&full.join(" "), &output)
    }

    /// `status` as seen by node `id` alone.
    pub fn status_of(&self, id: u64) -> Result<Value, String> {
        let output = self.ctl_at(
            &self.addr(id).to_string(),
            &with_json(&["status"]),
            Duration::from_secs(10),
        );
        parse_json_output(&format!("status (node {id} only)"), &output)
    }

    /// Polls every node's own `status` until one names a leader (other than `exclude`) that
    /// confirms it is the leader; returns its id. Nodes are asked one by one, because a
    /// partitioned or stale node may answer `null` or an old leader. Panics with the last
    /// answers and the logs at the deadline.
    pub fn wait_leader(&self, timeout: Duration, exclude: Option<u64>) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            last.clear();
            // Ask every node at once: a stopped node must not stall the others' answers.
            let answers: Vec<(u64, Result<Value, String>)> = std::thread::scope(|scope| {
                let asks: Vec<_> = self
                    .ids()
                    .into_iter()
                    .map(|id| (id, scope.spawn(move || self.quick_status(id))))
                    .collect();
                asks.into_iter()
                    .map(|(id, ask)| {
                        let answer = ask
                            .join()
                            .unwrap_or_else(|_| Err("status thread panicked".to_string()));
                        (id, answer)
                    })
                    .collect()
            });
            for (id, answer) in answers {
                let claimed = match answer {
                    Ok(status) => status["leader"].as_u64().filter(|&l| l != 0),
                    Err(e) => {
                        last.push(format!("node {id}: {e}"));
                        continue;
                    }
                };
                match claimed {
                    Some(leader) if Some(leader) != exclude => match self.quick_status(leader) {
                        Ok(own) if own["leader"].as_u64() == Some(leader) => return leader,
                        Ok(own) => last.push(format!(
                            "node {id} names {leader}, which does not confirm: {own}"
                        )),
                        Err(e) => last.push(format!(
                            "node {id} names {leader}, which does not answer: {e}"
                        )),
                    },
                    Some(leader) => last.push(format!("node {id} names the excluded {leader}")),
                    None => last.push(format!("node {id}: leader is null")),
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "no leader (excluding {exclude:?}) within {timeout:?}; last answers:\n  {}\n{}",
            last.join("\n  "),
            self.all_logs()
        );
    }

    /// `status` from node `id` alone, with a deadline (a stopped node must not stall a poll
    /// loop for long).
    fn quick_status(&self, id: u64) -> Result<Value, String> {
        let output = self.ctl_at(
            &self.addr(id).to_string(),
            &with_json(&["status"]),
            Duration::from_secs(10),
        );
        parse_json_output(&format!("status (node {id} only)"), &output)
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no coordinator {id} in this cluster"))
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no coordinator {id} in this cluster"))
    }
}

/// How `hotdeployctl` authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlAuth {
    /// `--insecure`.
    Insecure,
    /// `--ca CA --cert CERT --key KEY`.
    Tls {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

impl CtlAuth {
    /// The operator certificate of a `certs init` directory.
    pub fn operator(dir: &Path) -> CtlAuth {
        CtlAuth::files(dir, "operator.pem", "operator-key.pem")
    }

    /// `dir/ca.pem` with `dir/cert` and `dir/key`.
    pub fn files(dir: &Path, cert: &str, key: &str) -> CtlAuth {
        CtlAuth::Tls {
            ca: dir.join("ca.pem"),
            cert: dir.join(cert),
            key: dir.join(key),
        }
    }

    /// The command-line arguments.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        match self {
            CtlAuth::Insecure => vec!["--insecure".into()],
            CtlAuth::Tls { ca, cert, key } => vec![
                "--ca".into(),
                ca.into(),
                "--cert".into(),
                cert.into(),
                "--key".into(),
                key.into(),
            ],
        }
    }
}

/// A `[tls]` table: `ca = dir/ca.pem`, `cert = dir/cert`, `key = dir/key`, and `crl` if given.
pub fn tls_table(dir: &Path, cert: &str, key: &str, crl: Option<&Path>) -> toml::Table {
    let mut t = toml::Table::new();
    if let Some(crl) = crl {
        t.insert("crl".into(), crl.to_string_lossy().into_owned().into());
    }
    for (k, file) in [("ca", "ca.pem"), ("cert", cert), ("key", key)] {
        t.insert(
            k.into(),
            dir.join(file).to_string_lossy().into_owned().into(),
        );
    }
    t
}

/// Parses the JSON a `hotdeployctl -o json ...` run printed, or says why it cannot.
pub(crate) fn parse_json_output(what: &str, output: &Output) -> Result<Value, String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let mut message = format!(
            "hotdeployctl {what} failed ({}): {}",
            output.status,
            stderr.trim()
        );
        if !stdout.trim().is_empty() {
            message.push_str(&format!("\nstdout: {}", stdout.trim()));
        }
        return Err(message);
    }
    serde_json::from_str(&stdout)
        .map_err(|e| format!("hotdeployctl {what} printed invalid JSON ({e}): {stdout}"))
}

/// `["-o", "json", ARGS...]`.
fn with_json<S: AsRef<str>>(args: &[S]) -> Vec<String> {
    let mut full = vec!["-o".to_string(), "json".to_string()];
    full.extend(args.iter().map(|a| a.as_ref().to_string()));
    full
}
