//! A real HAProxy in front of the fleet, and an observer of its view of the servers.
//!
//! The end-to-end tests (DESIGN §9) put the sample apps behind HAProxy exactly as an operator
//! would: backend `web` with `option httpchk GET /health`, and for every server an
//! `agent-check` against the hotdeploy agent's responder, which reports `ready`, `drain` or
//! `maint`. `option redispatch` and `retries 3` let HAProxy retry a request whose connection to
//! a stopping server failed, which is part of how a rolling deploy stays invisible to clients.
//!
//! [`HaProxy::start`] writes the config into a temp dir (with a `level admin` stats socket
//! there, which agents may use as `haproxy_socket`) and runs `haproxy -db -f cfg` under a
//! [`ChildGuard`]. [`HaProxy::stat`] parses `show stat`. An [`Observer`] polls it every 50 ms
//! and records the largest number of servers not `UP` at the same moment: the measured value of
//! "never more hosts out of rotation than the budget".
//!
//! HAProxy is a Debian package, not a crate. When it is missing, [`HaProxy::require`] (and so
//! `start`) returns an error saying how to install it, and a test must fail on it — an
//! end-to-end test that silently passes without HAProxy proves nothing.

use crate::net;
use crate::proc::ChildGuard;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The error when HAProxy is not installed.
pub const NOT_INSTALLED: &str = "haproxy not installed: apt-get install haproxy";

/// One backend server.
#[derive(Debug, Clone)]
pub struct HaServer {
    /// The server name (the agent's host id).
    pub name: String,
    /// The app's address.
    pub addr: SocketAddr,
    /// The agent-check responder's address.
    pub agent_addr: SocketAddr,
}

/// One server's row of `show stat`.
#[derive(Debug, Clone)]
pub struct ServerStat {
    /// `svname`.
    pub name: String,
    /// `status`: `UP`, `DOWN`, `DRAIN`, `MAINT`, `UP 1/2`, ...
    pub status: String,
    /// `scur`: current sessions.
    pub current_sessions: u64,
    /// Every column by header name.
    pub fields: BTreeMap<String, String>,
}

/// A running HAProxy; killed on drop.
pub struct HaProxy {
    child: ChildGuard,
    frontend: SocketAddr,
    socket: PathBuf,
    config: PathBuf,
    dir: TempDir,
}

impl HaProxy {
    /// The `haproxy` executable, or [`NOT_INSTALLED`].
    pub fn require() -> Result<PathBuf, String> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin".into(), "/usr/local/sbin".into(), "/sbin".into()])
            .map(|dir| dir.join("haproxy"))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| NOT_INSTALLED.to_string())
    }

    /// The configuration text for `servers`, serving on `frontend`, with the stats socket at
    /// `socket`.
    pub fn config_text(servers: &[HaServer], frontend: SocketAddr, socket: &Path) -> String {
        let mut text = format!(
            "global\n    \
             stats socket {socket} mode 600 level admin\n    \
             maxconn 4096\n\
             defaults\n    \
             mode http\n    \
             timeout connect 2s\n    \
             timeout client 30s\n    \
             timeout server 30s\n    \
             option redispatch\n    \
             retries 3\n\
             frontend fe\n    \
             bind {frontend}\n    \
             default_backend web\n\
             backend web\n    \
             balance roundrobin\n    \
             option httpchk GET /health\n",
            socket = socket.display()
        );
        for server in servers {
            text.push_str(&format!(
                "    server {name} {addr} check inter 500ms fall 2 rise 2 agent-check \
                 agent-addr {agent_ip} agent-port {agent_port} agent-inter 500ms\n",
                name = server.name,
                addr = server.addr,
                agent_ip = server.agent_addr.ip(),
                agent_port = server.agent_addr.port(),
            ));
        }
        text
    }

    /// Writes the config and starts HAProxy serving on `frontend`; waits until it listens.
    /// Errors if HAProxy is not installed or does not come up (with its log).
    pub fn start(servers: &[HaServer], frontend: SocketAddr) -> Result<HaProxy, String> {
        let program = Self::require()?;
        let dir = tempfile::Builder::new()
            .prefix("hd-haproxy-")
            .tempdir()
            .map_err(|e| format!("cannot create the haproxy temp dir: {e}"))?;
        let socket = dir.path().join("admin.sock");
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, Self::config_text(servers, frontend, &socket))
            .map_err(|e| format!("writing {}: {e}", config.display()))?;
        let log = dir.path().join("haproxy.log");
        let args = [
            "-db".to_string(),
            "-f".to_string(),
            config.to_string_lossy().into_owned(),
        ];
        let child = ChildGuard::spawn("haproxy", &program, &args, &log, Some(dir.path()));
        let haproxy = HaProxy {
            child,
            frontend,
            socket,
            config,
            dir,
        };
        if !net::wait_port(frontend, Duration::from_secs(10)) {
            return Err(format!(
                "haproxy did not listen on {frontend}\n{}",
                haproxy.log_tail()
            ));
        }
        Ok(haproxy)
    }

    /// Where clients connect.
    pub fn frontend_addr(&self) -> SocketAddr {
        self.frontend
    }

    /// The admin stats socket (for an agent's `haproxy_socket`).
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The temp dir holding config, socket and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The end of HAProxy's log.
    pub fn log_tail(&self) -> String {
        self.child.log_tail(4000)
    }

    /// Sends one runtime API command and returns the answer.
    pub fn command(&self, command: &str) -> std::io::Result<String> {
        runtime_command(&self.socket, command)
    }

    /// `show stat` rows of backend `web`'s servers.
    pub fn stat(&self) -> std::io::Result<Vec<ServerStat>> {
        stat_at(&self.socket)
    }

    /// HAProxy's status of one server (`UP`, `DRAIN (agent)`, `MAINT`, ...), or, in
    /// parentheses, why it could not be read: `(no such server)`, `(stat failed: ...)`. The
    /// text never starts with a status word when there is none, so `== "UP"` and
    /// `starts_with("DRAIN")` read a failure as "not that status".
    pub fn server_status(&self, server: &str) -> String {
        match self.stat() {
            Ok(rows) => rows
                .into_iter()
                .find(|r| r.name == server)
                .map(|r| r.status)
                .unwrap_or_else(|| "(no such server)".into()),
            Err(e) => format!("(stat failed: {e})"),
        }
    }

    /// Waits until exactly `n` servers are listed and all are `UP`.
    pub fn wait_all_up(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(rows) = self.stat() {
                if rows.len() == n && rows.iter().all(|r| r.status == "UP") {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One runtime API exchange on `socket`, bounded by a 2 s timeout.
pub fn runtime_command(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// `show stat` on `socket`: the servers of backend `web`.
pub fn stat_at(socket: &Path) -> std::io::Result<Vec<ServerStat>> {
    Ok(parse_stat(&runtime_command(socket, "show stat")?))
}

/// Parses `show stat` CSV into backend `web`'s server rows.
pub fn parse_stat(csv: &str) -> Vec<ServerStat> {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let names: Vec<&str> = header.trim_start_matches('#').trim().split(',').collect();
    lines
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            names
                .iter()
                .zip(line.split(','))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        })
        .filter(|f| {
            f.get("pxname").map(String::as_str) == Some("web")
                && !matches!(
                    f.get("svname").map(String::as_str),
                    Some("FRONTEND" | "BACKEND")
                )
        })
        .map(|fields| ServerStat {
            name: fields.get("svname").cloned().unwrap_or_default(),
            status: fields.get("status").cloned().unwrap_or_default(),
            current_sessions: fields.get("scur").and_then(|s| s.parse().ok()).unwrap_or(0),
            fields,
        })
        .collect()
}

/// What an [`Observer`] saw.
#[derive(Debug, Clone, Default)]
pub struct ObserverReport {
    /// The most servers not `UP` at once.
    pub max_not_up: usize,
    /// Successful polls.
    pub samples: u64,
    /// Polls that failed (socket errors).
    pub errors: u64,
    /// Each time the maximum rose: when (since start) and which servers were not `UP`.
    pub timeline: Vec<(Duration, Vec<String>)>,
    /// Every distinct set of servers not `UP` seen, in order, with when it started.
    pub changes: Vec<(Duration, Vec<String>)>,
}

/// Polls HAProxy every 50 ms on a thread until stopped.
pub struct Observer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ObserverReport>,
}

impl Observer {
    /// Starts observing `haproxy`.
    pub fn start(haproxy: &HaProxy) -> Observer {
        let socket = haproxy.socket_path().to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || observe(&socket, &thread_stop));
        Observer { stop, thread }
    }

    /// Stops polling and returns what was seen.
    pub fn stop(self) -> ObserverReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .unwrap_or_else(|_| panic!("the HAProxy observer thread panicked"))
    }
}

fn observe(socket: &Path, stop: &AtomicBool) -> ObserverReport {
    let started = Instant::now();
    let mut report = ObserverReport::default();
    let mut last: Option<Vec<String>> = None;
    while !stop.load(Ordering::SeqCst) {
        match stat_at(socket) {
            Ok(rows) if !rows.is_empty() => {
                report.samples += 1;
                let not_up: Vec<String> = rows
                    .iter()
                    .filter(|r| r.status != "UP")
                    .map(|r| format!("{}={}", r.name, r.status))
                    .collect();
                if not_up.len() > report.max_not_up {
                    report.max_not_up = not_up.len();
                    report.timeline.push((started.elapsed(), not_up.clone()));
                }
                if last.as_ref() != Some(&not_up) {
                    report.changes.push((started.elapsed(), not_up.clone()));
                    last = Some(not_up);
                }
            }
            _ => report.errors += 1,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    report
}
