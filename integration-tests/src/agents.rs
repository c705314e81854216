//! A real `hotdeploy-agent` supervising the sample app in `exec` mode.
//!
//! [`AgentProc::start`] gives the agent its own temp dir (service root, data dir, config, log),
//! writes a config keyed as DESIGN §6 — the service is
//! `exec = ["{current}/bin/sample-app", "--dir", "{current}", "--listen", "IP:APP_PORT"]`,
//! verified by `GET http://IP:APP_PORT/health` — and runs `hotdeploy-agent --config FILE`.
//! Every address is on the agent's own loopback IP, at the fixed ports of [`crate::net`]:
//! gRPC on [`AGENT_PORT`], the HAProxy agent-check responder on [`AGENT_CHECK_PORT`], the
//! readiness endpoint on [`AGENT_READY_PORT`] and the app on [`APP_PORT`].
//!
//! [`AgentOpts::grpc_port`] and [`AgentOpts::front_ends`] let a second agent share a host's IP
//! (the agent that upgrades the main one, DESIGN §8), and [`AgentProc::prepare`] writes an
//! agent's config without starting it, for an agent that this second agent supervises.
//!
//! The agent runs the app in a process group of its own, so killing the agent does not kill the
//! app. That is the point of re-adoption tests: [`AgentProc::kill`] kills only the agent.
//! Dropping the `AgentProc` kills both: the agent's group, then every process whose command
//! line mentions the agent's temp dir (the app runs from `<root>/releases/<id>/`).
//!
//! The checks a test makes are from the outside: [`AgentProc::app_version`] asks the app which
//! release it serves, [`AgentProc::current_target`] reads the `current` symlink, and
//! [`AgentProc::ctl`] runs `hotdeployctl --insecure agent --address ADDR ARGS` (with
//! [`AgentOpts::tls`], the operator certificate instead of `--insecure`).

use crate::bins;
use crate::cluster::{parse_json_output, tls_table, Cluster, CtlAuth, CTL_TIMEOUT};
use crate::http_probe;
use crate::net::{
    self, AGENT_CHECK_PORT, AGENT_METRICS_PORT, AGENT_PORT, AGENT_READY_PORT, APP_PORT,
};
use crate::proc::{self, ChildGuard};
use crate::toml_config::AgentConfigFile;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use tempfile::TempDir;

/// Knobs for [`AgentProc::start`].
#[derive(Debug, Clone)]
pub struct AgentOpts {
    /// `host_id`.
    pub host_id: String,
    /// The agent's loopback IP (from [`net::alloc_ips`]).
    pub ip: Ipv4Addr,
    /// `groups`.
    pub groups: Vec<String>,
    /// `coordinators`; empty for a standalone agent.
    pub coordinators: Vec<SocketAddr>,
    /// `[rotation] drain_grace`.
    pub drain_grace: String,
    /// `[rotation] undrain_grace`.
    pub undrain_grace: String,
    /// `[rotation] drain_timeout`.
    pub drain_timeout: Option<String>,
    /// `[rotation] haproxy_socket`; the backend is `web` and the server is the host id.
    pub haproxy_socket: Option<PathBuf>,
    /// `[verify] success_threshold`.
    pub verify_success_threshold: u64,
    /// `[verify] interval`.
    pub verify_interval: String,
    /// `[verify] timeout`.
    pub verify_timeout: String,
    /// `[verify] settle`.
    pub verify_settle: String,
    /// `[service] stop_timeout`.
    pub stop_timeout: String,
    /// `[service] keep_releases`.
    pub keep_releases: u64,
    /// Extra TOML merged into the config.
    pub extra: toml::Table,
    /// How long the agent may take to listen.
    pub start_timeout: Duration,
    /// Extra environment for the agent process (e.g. `HOTDEPLOY_FAILPOINTS`), applied at each
    /// (re)start; empty by default.
    pub env: Vec<(String, String)>,
    /// mTLS instead of `insecure = true`: a `hotdeployctl certs init` directory holding
    /// `ca.pem` and `agent-<host_id>.pem` + key (with the agent's IP as a SAN). The agent uses
    /// it both to listen and to reach the coordinators; [`AgentProc::ctl`] then uses the
    /// operator certificate. `None` by default.
    pub tls: Option<PathBuf>,
    /// `[tls] crl` (with [`AgentOpts::tls`]).
    pub crl: Option<PathBuf>,
    /// The agent binary started at the next (re)start, where it is not the workspace's
    /// ([`bins::agent`]): the "new" binary of an agent upgrade test. `None` by default.
    pub binary: Option<PathBuf>,
    /// The gRPC port on the agent's IP: [`AGENT_PORT`] by default; a second agent on the same
    /// IP (the self-upgrade agent, [`net::SELF_AGENT_PORT`]) needs another.
    pub grpc_port: u16,
    /// Whether the rotation front ends (agent-check responder, `/ready`) listen: `true` by
    /// default. `false` leaves `[rotation]` without listeners, as for an agent no load
    /// balancer watches (and [`AgentProc::ready_status`] answers `None`).
    pub front_ends: bool,
}

impl AgentOpts {
    /// These options with `metrics_listen` on the agent's IP at [`AGENT_METRICS_PORT`]
    /// ([`AgentProc::metrics_addr`], [`AgentProc::scrape`]).
    pub fn with_metrics(mut self) -> AgentOpts {
        let at = net::addr(self.ip, AGENT_METRICS_PORT).to_string();
        self.extra
            .insert("metrics_listen".into(), toml::Value::String(at));
        self
    }

    /// Test-friendly defaults for host `host_id` on `ip`, in group `web`.
    pub fn new(host_id: &str, ip: Ipv4Addr, coordinators: Vec<SocketAddr>) -> AgentOpts {
        AgentOpts {
            host_id: host_id.to_string(),
            ip,
            groups: vec!["web".to_string()],
            coordinators,
            drain_grace: "2s".into(),
            undrain_grace: "2s".into(),
            drain_timeout: None,
            haproxy_socket: None,
            verify_success_threshold: 3,
            verify_interval: "200ms".into(),
            verify_timeout: "15s".into(),
            verify_settle: "500ms".into(),
            stop_timeout: "10s".into(),
            keep_releases: 3,
            extra: toml::Table::new(),
            start_timeout: Duration::from_secs(20),
            env: Vec::new(),
            tls: None,
            crl: None,
            binary: None,
            grpc_port: AGENT_PORT,
            front_ends: true,
        }
    }
}

/// A running agent; the agent and its app are killed on drop.
pub struct AgentProc {
    child: Option<ChildGuard>,
    opts: AgentOpts,
    config: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl AgentProc {
    /// Writes the config, starts the agent, and waits until its gRPC port listens.
    pub fn start(opts: AgentOpts) -> AgentProc {
        let mut agent = AgentProc::prepare(opts);
        agent.spawn();
        agent
    }

    /// Writes the config (temp dir, service root, data dir) without starting the agent: for an
    /// agent that something else starts, e.g. a second agent supervising this one in `exec`
    /// mode with `hotdeploy-agent --config` [`AgentProc::config_path`]. [`AgentProc::pid`] is
    /// then `None`; dropping it still kills every process that mentions its temp dir (the
    /// agent, by its `--config` path, and its app).
    pub fn prepare(opts: AgentOpts) -> AgentProc {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hd-agent-{}-", opts.host_id))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for {}: {e}", opts.host_id));
        let root = dir.path().join("srv");
        std::fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
        let agent = AgentProc {
            child: None,
            config: dir.path().join("agent.toml"),
            log: dir.path().join("agent.log"),
            opts,
            dir,
        };
        agent.write_config();
        agent
    }

    /// The config file contents for the current options.
    pub fn config_file(&self) -> AgentConfigFile {
        let o = &self.opts;
        let app = self.app_addr();
        AgentConfigFile {
            host_id: o.host_id.clone(),
            groups: o.groups.clone(),
            coordinators: o.coordinators.clone(),
            listen: self.grpc_addr(),
            data_dir: self.data_dir(),
            tls: match &o.tls {
                Some(dir) => tls_table(
                    dir,
                    &format!("agent-{}.pem", o.host_id),
                    &format!("agent-{}-key.pem", o.host_id),
                    o.crl.as_deref(),
                ),
                None => toml::Table::new(),
            },
            service_name: "app".into(),
            service_root: self.root(),
            exec: vec![
                "{current}/bin/sample-app".into(),
                "--dir".into(),
                "{current}".into(),
                "--listen".into(),
                app.to_string(),
            ],
            stop_timeout: o.stop_timeout.clone(),
            keep_releases: o.keep_releases,
            haproxy_agent_listen: o.front_ends.then(|| self.agent_check_addr()),
            http_listen: o.front_ends.then(|| self.ready_addr()),
            drain_grace: o.drain_grace.clone(),
            undrain_grace: o.undrain_grace.clone(),
            drain_timeout: o.drain_timeout.clone(),
            haproxy: o
                .haproxy_socket
                .clone()
                .map(|socket| (socket, "web".to_string(), o.host_id.clone())),
            verify_http: format!("http://{app}/health"),
            verify_success_threshold: o.verify_success_threshold,
            verify_interval: o.verify_interval.clone(),
            verify_timeout: o.verify_timeout.clone(),
            verify_settle: o.verify_settle.clone(),
            extra: o.extra.clone(),
        }
    }

    /// (Re)writes the config file from the options.
    pub fn write_config(&self) {
        std::fs::write(&self.config, self.config_file().render())
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.config.display()));
    }

    /// The options, to change before [`AgentProc::write_config`] and a restart.
    pub fn opts_mut(&mut self) -> &mut AgentOpts {
        &mut self.opts
    }

    fn spawn(&mut self) {
        let program = self.opts.binary.clone().unwrap_or_else(bins::agent);
        let mut command = Command::new(program);
        command.arg("--config").arg(&self.config);
        command.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        self.child = Some(ChildGuard::spawn_command(
            &format!("agent {}", self.opts.host_id),
            command,
            &self.log,
            Some(self.dir.path()),
        ));
        if !net::wait_port(self.grpc_addr(), self.opts.start_timeout) {
            panic!(
                "agent {} did not listen on {} within {:?}\n{}",
                self.opts.host_id,
                self.grpc_addr(),
                self.opts.start_timeout,
                self.log_tail()
            );
        }
    }

    /// `kill -9` the agent only; the app it supervises keeps running.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            child.kill_keep_strays();
        }
    }

    /// Kills the agent (not the app) if running, and starts it again.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends `sig` to the agent's process group (not the app's).
    pub fn signal(&self, sig: Signal) {
        let child = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("agent {} is not running", self.opts.host_id));
        child
            .signal(sig)
            .unwrap_or_else(|e| panic!("signalling agent {}: {e}", self.opts.host_id));
    }

    /// The agent process's pid (also its process group id), if it was started and not killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// Waits up to `timeout` for the agent process to exit by itself (a crash point, say);
    /// `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.wait_exit(timeout)
    }

    /// Whether the agent process is alive.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// `hotdeployctl --insecure agent --address ADDR ARGS`, within two minutes (a deploy
    /// streams until it ends).
    pub fn ctl<S: AsRef<str>>(&self, args: &[S]) -> Output {
        self.run_ctl(&[], args, Duration::from_secs(120))
    }

    /// `hotdeployctl --insecure -o json agent --address ADDR ARGS`, parsed.
    pub fn ctl_json<S: AsRef<str>>(&self, args: &[S]) -> Result<Value, String> {
        let output = self.run_ctl(&["-o", "json"], args, CTL_TIMEOUT);
        let what: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        parse_json_output(&format!("-o json agent {}", what.join(" ")), &output)
    }

    /// `hotdeployctl <auth> agent --address ADDR ARGS` with the given credentials, within two
    /// minutes.
    pub fn ctl_as<S: AsRef<str>>(&self, auth: &CtlAuth, args: &[S]) -> Output {
        self.run_ctl_as(auth, &[], args, Duration::from_secs(120))
    }

    fn run_ctl<S: AsRef<str>>(&self, global: &[&str], args: &[S], timeout: Duration) -> Output {
        let auth = match &self.opts.tls {
            Some(dir) => CtlAuth::operator(dir),
            None => CtlAuth::Insecure,
        };
        self.run_ctl_as(&auth, global, args, timeout)
    }

    fn run_ctl_as<S: AsRef<str>>(
        &self,
        auth: &CtlAuth,
        global: &[&str],
        args: &[S],
        timeout: Duration,
    ) -> Output {
        let mut command = Command::new(bins::ctl());
        command
            .args(auth.args())
            .args(global)
            .arg("agent")
            .arg("--address")
            .arg(self.grpc_addr().to_string())
            .args(args.iter().map(AsRef::as_ref));
        proc::run_with_timeout(command, timeout)
    }

    /// The release id the app serves on `GET /`, or `None` if it does not answer 200.
    pub fn app_version(&self) -> Option<String> {
        let reply = http_probe::get(self.app_addr(), "/", Duration::from_secs(2)).ok()?;
        (reply.status == 200).then(|| reply.body.trim().to_string())
    }

    /// The app's `/health` status code, if it answers.
    pub fn app_health(&self) -> Option<u16> {
        http_probe::get(self.app_addr(), "/health", Duration::from_secs(2))
            .ok()
            .map(|r| r.status)
    }

    /// The agent's `GET /ready` status code (200 or 503), if it answers.
    pub fn ready_status(&self) -> Option<u16> {
        http_probe::get(self.ready_addr(), "/ready", Duration::from_secs(2))
            .ok()
            .map(|r| r.status)
    }

    /// Where `<root>/current` points, resolved; `None` if there is no such symlink.
    pub fn current_target(&self) -> Option<PathBuf> {
        resolve_link(&self.root().join("current"))
    }

    /// Where `<root>/previous` points, resolved.
    pub fn previous_target(&self) -> Option<PathBuf> {
        resolve_link(&self.root().join("previous"))
    }

    /// Pids of running sample apps started from this agent's service root.
    pub fn app_pids(&self) -> Vec<u32> {
        let marker = format!("{}/", self.root().join("releases").display());
        proc::pids_matching(&marker)
    }

    /// The host id.
    pub fn host_id(&self) -> &str {
        &self.opts.host_id
    }

    /// The agent's IP.
    pub fn ip(&self) -> Ipv4Addr {
        self.opts.ip
    }

    /// The agent's gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        net::addr(self.opts.ip, self.opts.grpc_port)
    }

    /// The agent's config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The HAProxy agent-check responder's address.
    pub fn agent_check_addr(&self) -> SocketAddr {
        net::addr(self.opts.ip, AGENT_CHECK_PORT)
    }

    /// The readiness endpoint's address.
    pub fn ready_addr(&self) -> SocketAddr {
        net::addr(self.opts.ip, AGENT_READY_PORT)
    }

    /// The `/metrics` address a test may configure as `metrics_listen`
    /// ([`AgentOpts::with_metrics`]).
    pub fn metrics_addr(&self) -> SocketAddr {
        net::addr(self.opts.ip, AGENT_METRICS_PORT)
    }

    /// `GET /metrics` parsed strictly ([`crate::prom_text`]), or why not.
    pub fn scrape(&self) -> Result<crate::prom_text::Scrape, String> {
        let reply = http_probe::get(self.metrics_addr(), "/metrics", Duration::from_secs(3))
            .map_err(|e| format!("GET /metrics: {e}"))?;
        if reply.status != 200 {
            return Err(format!(
                "GET /metrics answered {}: {}",
                reply.status, reply.body
            ));
        }
        crate::prom_text::parse(&reply.body)
    }

    /// The sample app's address.
    pub fn app_addr(&self) -> SocketAddr {
        net::addr(self.opts.ip, APP_PORT)
    }

    /// The service root (`releases/`, `current`, `previous`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("srv")
    }

    /// The agent's data dir (journal).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The agent's temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The end of the agent's log.
    pub fn log_tail(&self) -> String {
        proc::log_tail(&self.log, 4000)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // The agent first (so it cannot restart the app), then its app and any other stray.
        drop(self.child.take());
        proc::kill_strays(self.dir.path());
    }
}

fn resolve_link(link: &Path) -> Option<PathBuf> {
    std::fs::symlink_metadata(link)
        .ok()
        .filter(|m| m.file_type().is_symlink())?;
    std::fs::canonicalize(link).ok()
}

/// Every agent's log tail, then every coordinator's log, for a failure message.
pub fn fleet_logs(agents: &[AgentProc], cluster: &Cluster) -> String {
    let mut text = String::new();
    for a in agents {
        text.push_str(&format!(
            "\n---- agent {} ----\n{}",
            a.host_id(),
            a.log_tail()
        ));
    }
    text.push('\n');
    text.push_str(&cluster.all_logs());
    text
}
